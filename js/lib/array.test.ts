import { describe, expect, it } from "vitest";
import { decodeArray, halfToFloat, putBuffers } from "./array";

describe("decodeArray", () => {
  it("honours the DataView's byteOffset", () => {
    const backing = new ArrayBuffer(4 + 3 * 4);
    const f = new Float32Array(backing, 4, 3);
    f.set([1.5, -2, 3.25]);
    new Uint8Array(backing, 0, 4).set([9, 9, 9, 9]); // garbage before the array
    const dv = new DataView(backing, 4, 12);
    const arr = decodeArray({ dtype: "float32", shape: [3], buffer: dv });
    expect(Array.from(arr.data)).toEqual([1.5, -2, 3.25]);
  });

  it("widens float16 and keeps the shape", () => {
    const halves = new Uint16Array([0x3c00, 0xc000, 0x3555, 0x0000]); // 1, -2, ~0.333, 0
    const arr = decodeArray({ dtype: "float16", shape: [2, 2], buffer: new DataView(halves.buffer) });
    expect(arr.shape).toEqual([2, 2]);
    expect(arr.data[0]).toBe(1);
    expect(arr.data[1]).toBe(-2);
    expect(arr.data[2]).toBeCloseTo(1 / 3, 3);
    expect(halfToFloat(0x7c00)).toBe(Infinity);
  });

  it("rejects a buffer too short for the shape", () => {
    expect(() => decodeArray({ dtype: "float32", shape: [4], buffer: new ArrayBuffer(8) })).toThrow(/needs 16/);
  });

  it("decodes uint8", () => {
    const arr = decodeArray({ dtype: "uint8", shape: [3], buffer: new Uint8Array([0, 128, 255]) });
    expect(Array.from(arr.data)).toEqual([0, 128, 255]);
  });
});

describe("putBuffers", () => {
  it("puts custom-message buffers back at their buffer_paths", () => {
    const b0 = new DataView(new ArrayBuffer(4));
    const b1 = new DataView(new ArrayBuffer(2));
    // as mechwidgets/_tensor.py:split_buffers sends {"a": [{"buffer": b0}, b1], "n": 1}
    const msg = { a: [{}, null], n: 1, buffer_paths: [["a", 0, "buffer"], ["a", 1]] };
    const out = putBuffers(msg, [b0, b1]) as any;
    expect(out.a[0].buffer).toBe(b0);
    expect(out.a[1]).toBe(b1);
    expect(out.n).toBe(1);
    expect("buffer_paths" in out).toBe(false);
  });

  it("takes explicit paths (saved state) and leaves a message without buffers alone", () => {
    const b0 = new DataView(new ArrayBuffer(4));
    const state = putBuffers({ x: { dtype: "float32", shape: [1] } }, [b0], [["x", "buffer"]]) as any;
    expect(state.x.buffer).toBe(b0);
    const plain = { type: "reply", result: { k: 1 } };
    expect(putBuffers(plain, [])).toEqual(plain);
  });

  it("skips a path that names a property of an array (untrusted state: no throw, no change)", () => {
    const b0 = new DataView(new ArrayBuffer(4));
    const state = { a: [1, 2], m: { n: [3] } };
    const out = putBuffers(state, [b0, b0, b0], [["a", "length"], ["m", "n", "x", "y"], ["a", 1]]) as any;
    expect(out.a.length).toBe(2);
    expect(out.a[1]).toBe(b0); // the valid path still lands
    expect(out.m.n).toEqual([3]);
    expect(() => putBuffers([1], [b0], [["length"]])).not.toThrow();
  });
});
