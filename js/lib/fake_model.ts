// Test helpers (vitest only; no widget imports them): a fake anywidget model, a harness that
// mounts a widget entry on one and tears it down after each test, and array builders.

import { afterEach, expect, it } from "vitest";

type Listener = (...args: any[]) => void;
type State = Record<string, any>;

/** A fake anywidget model: traits in a map, sent messages recorded, replies pushed by the test.
 * It has AnyModel's methods, so a widget's render takes it as its model. */
export class FakeModel<T extends State = State> {
  state: T;
  /** Every message the widget sent. */
  sent: any[] = [];
  /** Every trait the widget set, in order ({name: value} each). */
  sets: Record<string, unknown>[] = [];
  /** How many times the widget called save_changes. */
  saves = 0;
  listeners = new Map<string, Set<Listener>>();
  widget_manager = {
    get_model: (id: string): Promise<never> => Promise.reject(new Error(`no widget manager in a test (model ${id})`)),
  };
  constructor(state: T) {
    this.state = state;
  }
  get<K extends keyof T>(k: K): T[K] {
    return this.state[k];
  }
  set<K extends keyof T>(k: K, v: T[K]) {
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
  off(ev?: string | null, cb?: Listener | null) {
    if (!ev) this.listeners.clear();
    else if (cb) this.listeners.get(ev)?.delete(cb);
    else this.listeners.delete(ev);
  }
  emit(ev: string, ...args: any[]) {
    for (const cb of this.listeners.get(ev) ?? []) cb(...args);
  }
  /** A trait changed on the Python side. */
  change<K extends keyof T & string>(k: K, v: T[K]) {
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
  /** How many listeners are registered, over all events. */
  listenerCount(): number {
    let n = 0;
    for (const set of this.listeners.values()) n += set.size;
    return n;
  }
}

type Render = (props: { model: any; el: HTMLElement }) => () => void;

export interface Harness {
  /** A fake model with the widget's default traits (fresh each call), `extra` overriding them. */
  makeModel(extra?: State): FakeModel;
  /** Render the widget on `model` into a fresh element in the document; returns the element. */
  mount(model: FakeModel): HTMLElement;
  /** Dispose every mounted view now (afterEach does it otherwise). */
  unmount(): void;
  /** The test that a view's dispose removes every listener it added to the model. */
  itRemovesItsListeners(): void;
}

/** The helpers of one widget entry's tests. `defaults` builds its traits (called once per
 * model, so a test may change them); every model also has `error` "" and `progress` {}. Call it
 * at the top of a test file: it registers an afterEach that disposes the views and empties the
 * document. */
export function harness(render: Render, defaults: () => State): Harness {
  const disposers: (() => void)[] = [];
  const unmount = (): void => {
    for (const dispose of disposers.splice(0)) dispose();
  };
  afterEach(() => {
    unmount();
    document.body.replaceChildren();
  });
  const makeModel = (extra: State = {}): FakeModel => new FakeModel<State>({ error: "", progress: {}, ...defaults(), ...extra });
  const mount = (model: FakeModel): HTMLElement => {
    const el = document.createElement("div");
    document.body.append(el);
    disposers.push(render({ model, el }));
    return el;
  };
  const itRemovesItsListeners = (): void => {
    it("removes its listeners on cleanup", () => {
      const model = makeModel();
      mount(model);
      expect(model.listenerCount()).toBeGreaterThan(0);
      unmount();
      expect(model.listenerCount()).toBe(0);
    });
  };
  return { makeModel, mount, unmount, itRemovesItsListeners };
}

/** The text of a table's cells: its header row, then one list per body row. */
export function tableText(table: Element): { head: string[]; rows: string[][] } {
  const cells = (tr: Element): string[] => Array.from(tr.children, (c) => c.textContent ?? "");
  const head = table.querySelector("thead tr");
  return { head: head ? cells(head) : [], rows: Array.from(table.querySelectorAll("tbody tr"), cells) };
}

export function f32(values: number[], shape: number[]) {
  return { dtype: "float32" as const, shape, buffer: new DataView(new Float32Array(values).buffer) };
}

export function i32(values: number[], shape: number[]) {
  return { dtype: "int32" as const, shape, buffer: new DataView(new Int32Array(values).buffer) };
}
