// Binary arrays from Python: {dtype, shape, buffer}. Binary values travel in ONE scheme,
// ipywidgets' own: they are lifted out of the JSON (a dict's key removed, a list's item set to
// null) and sent beside it as buffers, each with its path. Widget state arrives with the buffers
// already put back (as DataViews) by the widget manager; custom messages carry
// `buffer_paths` (mechwidgets/_tensor.py:split_buffers) and saved state `[{path, data}]`
// (js/lib/static_model.ts): both are put back by putBuffers below.

export type DType = "float32" | "float16" | "uint8" | "int32" | "uint16";

export interface Encoded {
  dtype: DType;
  shape: number[];
  buffer: DataView | ArrayBuffer | Uint8Array;
}

export interface NDArray {
  dtype: DType;
  shape: number[];
  data: Float32Array | Uint8Array | Int32Array | Uint16Array;
}

const BYTES: Record<DType, number> = { float32: 4, float16: 2, uint8: 1, int32: 4, uint16: 2 };

function toBytes(buffer: Encoded["buffer"]): Uint8Array {
  if (buffer instanceof Uint8Array) return buffer;
  if (buffer instanceof ArrayBuffer) return new Uint8Array(buffer);
  // A DataView may be a window into a larger buffer: honour byteOffset and byteLength.
  return new Uint8Array(buffer.buffer, buffer.byteOffset, buffer.byteLength);
}

/** IEEE 754 half → float. */
export function halfToFloat(h: number): number {
  const sign = h & 0x8000 ? -1 : 1;
  const exp = (h >> 10) & 0x1f;
  const frac = h & 0x3ff;
  if (exp === 0) return sign * 2 ** -14 * (frac / 1024);
  if (exp === 31) return frac ? NaN : sign * Infinity;
  return sign * 2 ** (exp - 15) * (1 + frac / 1024);
}

let HALF_TABLE: Float32Array | null = null;

/** float16 bit pattern → float32 value, for all 65536 patterns (built on first use). */
function halfTable(): Float32Array {
  if (!HALF_TABLE) {
    HALF_TABLE = new Float32Array(65536);
    for (let bits = 0; bits < 65536; bits++) HALF_TABLE[bits] = halfToFloat(bits);
  }
  return HALF_TABLE;
}

function size(shape: number[]): number {
  return shape.reduce((a, b) => a * b, 1);
}

/** Decode an encoded array. float16 is widened to float32; the data is copied so it is aligned. */
export function decodeArray(enc: Encoded): NDArray {
  const bytes = toBytes(enc.buffer);
  const n = size(enc.shape);
  const need = n * BYTES[enc.dtype];
  if (bytes.byteLength < need) {
    throw new Error(`array buffer holds ${bytes.byteLength} bytes, shape ${enc.shape} needs ${need}`);
  }
  const copy = bytes.slice(0, need); // aligned, owned copy
  const dv = new DataView(copy.buffer);
  switch (enc.dtype) {
    case "float32":
      return { dtype: "float32", shape: enc.shape, data: new Float32Array(copy.buffer) };
    case "float16": {
      // a 65536-entry table: a 12-head × 512² layer (3M values) decodes in milliseconds
      const table = halfTable();
      const out = new Float32Array(n);
      for (let i = 0; i < n; i++) out[i] = table[dv.getUint16(2 * i, true)];
      return { dtype: "float32", shape: enc.shape, data: out };
    }
    case "uint8":
      return { dtype: "uint8", shape: enc.shape, data: copy };
    case "int32":
      return { dtype: "int32", shape: enc.shape, data: new Int32Array(copy.buffer) };
    case "uint16":
      return { dtype: "uint16", shape: enc.shape, data: new Uint16Array(copy.buffer) };
    default:
      throw new Error(`unknown dtype ${String(enc.dtype)}`);
  }
}

/** True for a non-empty encoded array (an empty trait is `{}`). */
export function isEncoded(x: unknown): x is Encoded {
  return !!x && typeof x === "object" && "dtype" in x && "shape" in x && "buffer" in x;
}

/** Keys a buffer path may never hold: they reach an object's prototype (prototype pollution). */
const UNSAFE_KEYS = new Set(["__proto__", "constructor", "prototype"]);

export type Path = (string | number)[];

/** A path of plain string keys and non-negative integer indices, none of them UNSAFE_KEYS. */
export function isSafePath(path: unknown): path is Path {
  if (!Array.isArray(path) || path.length === 0) return false;
  return path.every((key) =>
    typeof key === "number" ? Number.isInteger(key) && key >= 0 : typeof key === "string" && !UNSAFE_KEYS.has(key),
  );
}

function own(obj: object, key: string | number): unknown {
  return Object.prototype.hasOwnProperty.call(obj, key) ? (obj as Record<string | number, unknown>)[key] : undefined;
}

/**
 * Put binary buffers back at their paths (the inverse of ipywidgets' remove_buffers), creating
 * missing containers. `paths` defaults to the object's own `buffer_paths` (a custom message
 * carries them), which is left out of the result. A path that is not safe (isSafePath) is
 * skipped, and only own properties are followed, so no path reaches Object.prototype (saved
 * state is untrusted).
 */
export function putBuffers<T = unknown>(obj: T, buffers: ReadonlyArray<DataView | ArrayBuffer>, paths?: unknown): T {
  if (paths === undefined && obj && typeof obj === "object" && !Array.isArray(obj) && "buffer_paths" in obj) {
    const { buffer_paths, ...rest } = obj as Record<string, unknown>;
    return putBuffers(rest as T, buffers, buffer_paths);
  }
  if (!Array.isArray(paths)) return obj;
  paths.forEach((path, k) => {
    if (!isSafePath(path) || k >= buffers.length || !obj || typeof obj !== "object") return;
    let at = obj as Record<string | number, unknown>;
    // an array takes only index keys ("length" or another name on an array would throw or
    // corrupt it): such a path is skipped
    const fits = (container: unknown, key: string | number): boolean => !Array.isArray(container) || typeof key === "number";
    if (!fits(at, path[0])) return;
    for (let i = 0; i < path.length - 1; i++) {
      let next = own(at, path[i]);
      if (next === undefined || next === null || typeof next !== "object") {
        next = typeof path[i + 1] === "number" ? [] : {};
        at[path[i]] = next;
      }
      at = next as Record<string | number, unknown>;
      if (!fits(at, path[i + 1])) return;
    }
    at[path[path.length - 1]] = buffers[k];
  });
  return obj;
}

/** Element (i, j) of a 2-d slice starting at `offset`, row length `cols`. */
export function at2(a: NDArray, offset: number, cols: number, i: number, j: number): number {
  return a.data[offset + i * cols + j];
}
