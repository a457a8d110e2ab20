import { describe, expect, it } from "vitest";
import { decodeArray, isSafePath } from "./array";
import { StaticModel, decodeBase64, decodeHex, putSavedBuffers } from "./static_model";

function b64(bytes: Uint8Array): string {
  let s = "";
  for (const b of bytes) s += String.fromCharCode(b);
  return btoa(s);
}

describe("saved buffers", () => {
  it("decodes base64 and hex", () => {
    expect(Array.from(decodeBase64("AAEC/w=="))).toEqual([0, 1, 2, 255]);
    expect(Array.from(decodeHex("0001 02ff"))).toEqual([0, 1, 2, 255]);
  });

  it("puts DataViews back at nested paths, creating missing containers", () => {
    const f32 = new Uint8Array(new Float32Array([1.5, -2]).buffer);
    const state: Record<string, unknown> = { scores: { induction: { dtype: "float32", shape: [2] } }, keep: 1 };
    putSavedBuffers(state, [
      { path: ["scores", "induction", "buffer"], data: b64(f32), encoding: "base64" },
      { path: ["list", 1, "buffer"], data: "0102", encoding: "hex" },
    ]);
    const enc = (state.scores as any).induction;
    expect(enc.buffer).toBeInstanceOf(DataView);
    expect(Array.from(decodeArray(enc).data)).toEqual([1.5, -2]);
    expect(Array.isArray(state.list)).toBe(true);
    expect(Array.from(new Uint8Array((state.list as any)[1].buffer.buffer))).toEqual([1, 2]);
    expect(state.keep).toBe(1);
  });
});

describe("StaticModel", () => {
  it("gets, sets with change events, and never answers requests", () => {
    const m = new StaticModel({ a: 1 });
    const seen: unknown[] = [];
    const cb = (_m: unknown, v: unknown) => seen.push(v);
    m.on("change:a", cb);
    m.set("a", 2);
    m.set("a", 2); // unchanged: no event
    expect(m.get("a")).toBe(2);
    expect(seen).toEqual([2]);
    m.off("change:a", cb);
    m.set("a", 3);
    expect(seen).toEqual([2]);
    m.send({ type: "request", id: 1, kind: "x", args: {} });
    m.save_changes();
    expect([m.sent, m.saved]).toEqual([1, 1]);
  });

  it("survives a throwing listener", () => {
    const m = new StaticModel({});
    let called = false;
    m.on("change:x", () => {
      throw new Error("boom");
    });
    m.on("change:x", () => {
      called = true;
    });
    const err = console.error;
    console.error = () => {};
    try {
      m.set("x", 1);
    } finally {
      console.error = err;
    }
    expect(called).toBe(true);
  });
});

describe("untrusted buffer paths", () => {
  it("never reach Object.prototype or a constructor", () => {
    const state: Record<string, unknown> = { a: {} };
    putSavedBuffers(state, [
      { path: ["__proto__", "polluted"], data: "AQ==", encoding: "base64" },
      { path: ["a", "__proto__", "polluted2"], data: "AQ==", encoding: "base64" },
      { path: ["constructor", "prototype", "polluted3"], data: "AQ==", encoding: "base64" },
      { path: ["a", "constructor", "prototype", "polluted4"], data: "AQ==", encoding: "base64" },
      { path: ["toString", "x"], data: "AQ==", encoding: "base64" },
      { path: [-1], data: "AQ==", encoding: "base64" },
      { path: [1.5], data: "AQ==", encoding: "base64" },
      { path: [], data: "AQ==", encoding: "base64" },
      { path: "a" as unknown as (string | number)[], data: "AQ==", encoding: "base64" },
    ]);
    const probe: Record<string, unknown> = {};
    for (const k of ["polluted", "polluted2", "polluted3", "polluted4"]) {
      expect(probe[k]).toBeUndefined();
      expect((Object.prototype as Record<string, unknown>)[k]).toBeUndefined();
    }
    expect(typeof Object.prototype.toString).toBe("function");
    // an inherited name is not followed: the state gets its own plain container instead
    expect(Object.prototype.hasOwnProperty.call(state, "toString")).toBe(true);
    expect((state.toString as any).x).toBeInstanceOf(DataView);
    expect(Object.keys(state).sort()).toEqual(["a", "toString"]);
    expect(Object.keys(state.a as object)).toEqual([]);
  });

  it("isSafePath accepts keys and indices only", () => {
    expect(isSafePath(["a", 0, "buffer"])).toBe(true);
    for (const bad of [[], ["__proto__"], ["a", "prototype"], [-1], [0.5], [null], "a", [{}]]) {
      expect(isSafePath(bad)).toBe(false);
    }
  });
});
