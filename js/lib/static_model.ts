// A read-only stand-in for an anywidget model, over saved widget state: what a widget's
// render({model, el}) needs when no kernel and no widget manager exist (exported HTML).
//
// - get/set/on/off work on the saved traits (set fires "change:<name>" and "change" like
//   Backbone, so a widget that writes its own traits still redraws);
// - save_changes and send do nothing (they are counted): requests never get a reply, which the
//   widgets handle, since they draw everything from traits;
// - binary buffers from ipywidgets' saved state (`buffers: [{path, data, encoding}]`) are decoded
//   and put back at their nested path as DataViews (array.ts:putBuffers), as a live widget
//   manager does.

import { isSafePath, putBuffers, type Path } from "./array";

export interface SavedBuffer {
  path: Path;
  data: string;
  encoding?: "base64" | "hex";
}

type Listener = (...args: unknown[]) => void;

/** base64 (standard alphabet, padding optional) → bytes. */
export function decodeBase64(text: string): Uint8Array {
  const bin = atob(text.replace(/\s+/g, ""));
  const out = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
  return out;
}

export function decodeHex(text: string): Uint8Array {
  const clean = text.replace(/\s+/g, "");
  const out = new Uint8Array(clean.length >> 1);
  for (let i = 0; i < out.length; i++) out[i] = parseInt(clean.slice(2 * i, 2 * i + 2), 16);
  return out;
}

export function decodeSavedBuffer(b: SavedBuffer): DataView {
  const bytes = b.encoding === "hex" ? decodeHex(b.data) : decodeBase64(b.data);
  return new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
}

/**
 * Put each saved buffer back into `state` at its path, as DataViews (array.ts:putBuffers: the
 * one decoder of the buffer scheme). Saved state is untrusted: an entry whose path is not safe
 * (array.ts:isSafePath) or that has no data string is skipped before anything is decoded.
 */
export function putSavedBuffers(state: Record<string, unknown>, buffers: readonly SavedBuffer[] = []): Record<string, unknown> {
  const valid = buffers.filter((b) => b && isSafePath(b.path) && typeof b.data === "string");
  return putBuffers(state, valid.map(decodeSavedBuffer), valid.map((b) => b.path));
}

export class StaticModel {
  /** How many times the widget called send / save_changes (tests read it). */
  sent = 0;
  saved = 0;
  private listeners = new Map<string, Set<Listener>>();
  readonly widget_manager = {
    get_model: (id: string): Promise<never> => Promise.reject(new Error(`no widget manager in a static export (model ${id})`)),
  };

  constructor(private state: Record<string, unknown>) {}

  get(name: string): any {
    return this.state[name];
  }

  set(name: string, value: unknown): void {
    if (this.state[name] === value) return;
    this.state[name] = value;
    this.emit(`change:${name}`, this, value);
    this.emit("change", this);
  }

  on(event: string, cb: Listener): void {
    for (const ev of event.split(/\s+/).filter(Boolean)) {
      if (!this.listeners.has(ev)) this.listeners.set(ev, new Set());
      this.listeners.get(ev)!.add(cb);
    }
  }

  off(event?: string | null, cb?: Listener | null): void {
    if (!event) {
      if (!cb) this.listeners.clear();
      else for (const set of this.listeners.values()) set.delete(cb);
      return;
    }
    for (const ev of event.split(/\s+/).filter(Boolean)) {
      if (cb) this.listeners.get(ev)?.delete(cb);
      else this.listeners.delete(ev);
    }
  }

  save_changes(): void {
    this.saved++;
  }

  send(_content?: unknown, _callbacks?: unknown, _buffers?: unknown): void {
    this.sent++;
  }

  private emit(event: string, ...args: unknown[]): void {
    for (const cb of [...(this.listeners.get(event) ?? [])]) {
      try {
        cb(...args);
      } catch (e) {
        console.error(`mechwidgets export: a ${event} listener failed`, e);
      }
    }
  }
}
