// Test helper (vitest only; no widget imports it): a fake anywidget model and array builders.

type Listener = (...args: any[]) => void;

/** A fake anywidget model: traits in a map, sent messages recorded, replies pushed by the test. */
export class FakeModel {
  state: Record<string, any>;
  /** Every message the widget sent. */
  sent: any[] = [];
  /** Every trait the widget set, in order ({name: value} each). */
  sets: Record<string, unknown>[] = [];
  /** How many times the widget called save_changes. */
  saves = 0;
  listeners = new Map<string, Set<Listener>>();
  constructor(state: Record<string, any>) {
    this.state = state;
  }
  get(k: string) {
    return this.state[k];
  }
  set(k: string, v: unknown) {
    this.state[k] = v;
    this.sets.push({ [k]: v });
  }
  save_changes() {
    this.saves++;
  }
  send(content: any) {
    this.sent.push(content);
  }
  on(ev: string, cb: Listener) {
    if (!this.listeners.has(ev)) this.listeners.set(ev, new Set());
    this.listeners.get(ev)!.add(cb);
  }
  off(ev: string, cb?: Listener) {
    if (cb) this.listeners.get(ev)?.delete(cb);
    else this.listeners.delete(ev);
  }
  emit(ev: string, ...args: any[]) {
    for (const cb of this.listeners.get(ev) ?? []) cb(...args);
  }
  /** A trait changed on the Python side. */
  change(k: string, v: unknown) {
    this.state[k] = v;
    this.emit(`change:${k}`);
  }
  /** A custom message from Python. */
  reply(content: any, buffers: any[] = []) {
    this.emit("msg:custom", content, buffers);
  }
  /** The newest message of a request kind. */
  last(kind: string) {
    return [...this.sent].reverse().find((m) => m.kind === kind);
  }
  /** Every request of a kind. */
  requests(kind: string) {
    return this.sent.filter((m) => m.type === "request" && m.kind === kind);
  }
}

export function f32(values: number[], shape: number[]) {
  return { dtype: "float32", shape, buffer: new DataView(new Float32Array(values).buffer) };
}

export function i32(values: number[], shape: number[]) {
  return { dtype: "int32", shape, buffer: new DataView(new Int32Array(values).buffer) };
}
