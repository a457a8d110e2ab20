// The scaffold every widget entry (js/attention.ts, patching.ts, features.ts, circuit.ts,
// scrubbing.ts, lens.ts) stands on: a root element with the error banner and progress bar, the
// request client, trait listeners that are removed on dispose, and one way to show a failed
// request. An entry's render is
//
//   export function render({ model, el }: WidgetProps<MyTraits>): () => void {
//     const w = new Widget(model, el, "mw-mine");
//     ... draw into w.root; w.on("trait", redraw); w.ask("kind", args) ...
//     return w.dispose;
//   }
//
// where MyTraits (extends StatusTraits) names every synced trait the entry reads or sets, with
// the type Python sends (mechwidgets/widgets/<name>.py).

import type { AnyModel } from "@anywidget/types";
import { mountStatus, type Status, type StatusTraits } from "./banner";
import { h } from "./dom";
import { CancelledReplyError, RequestClient, StaleReplyError } from "./request";

export type { StatusTraits } from "./banner";

/** What render gets: the widget's model (typed by its traits) and the element to draw into. */
export interface WidgetProps<T extends StatusTraits> {
  model: AnyModel<T>;
  el: HTMLElement;
}

/** A dict trait that Python sends empty ({}) until it holds a T. */
export type OrEmpty<T> = T | { [K in keyof T]?: undefined };

/** A trait name of T. */
export type TraitName<T> = keyof T & string;

/** Whether a failed request is no error to show: superseded by a newer request of its kind
 * (StaleReplyError), or its job was cancelled (CancelledReplyError: the user's cancel, a
 * restore, a change of its inputs). */
export function isQuiet(e: unknown): boolean {
  return e instanceof CancelledReplyError || e instanceof StaleReplyError;
}

export class Widget<T extends StatusTraits> {
  /** The element everything is drawn into (`mw-root` plus the entry's own class). */
  readonly root: HTMLDivElement;
  readonly client: RequestClient;
  readonly status: Status;
  private readonly listeners: [string, () => void][] = [];

  constructor(
    readonly model: AnyModel<T>,
    el: HTMLElement,
    className: string,
  ) {
    this.client = new RequestClient(model);
    this.root = h("div", { class: `mw-root ${className}` });
    el.append(this.root);
    this.status = mountStatus(model, this.root, (kind, id) => this.client.cancel(kind, id));
  }

  /** Call `cb` whenever one of `traits` changes; every listener is removed on dispose. */
  on(traits: TraitName<T> | TraitName<T>[], cb: () => void): void {
    for (const trait of Array.isArray(traits) ? traits : [traits]) {
      const event = `change:${trait}`;
      this.model.on(event, cb);
      this.listeners.push([event, cb]);
    }
  }

  /** Set a trait from the page and send it to the kernel. */
  set<K extends TraitName<T>>(trait: K, value: T[K]): void {
    this.model.set(trait, value);
    this.model.save_changes();
  }

  /** Show a failed request's message in the banner, unless it is quiet (superseded or
   * cancelled). The kernel also writes its message to the `error` trait, which the banner shows
   * first; this covers a request that never reached a live kernel. */
  readonly fail = (e: unknown): void => {
    if (isQuiet(e)) return;
    if (!this.model.get("error")) this.status.setLocalError(e instanceof Error ? e.message : String(e));
  };

  /** Send a request whose answer arrives through traits: clear the page's own error first; a
   * failure goes to `fail`. */
  readonly ask = (kind: string, args: Record<string, unknown> = {}): void => {
    this.request(kind, args).catch(this.fail);
  };

  /** Like `ask`, but the caller gets the result (and handles the failure, usually with `fail`). */
  request<R = unknown>(kind: string, args: Record<string, unknown> = {}): Promise<R> {
    this.status.setLocalError("");
    return this.client.request<R>(kind, args);
  }

  /** The one teardown: remove every listener, drop pending requests, unbind the banner. */
  readonly dispose = (): void => {
    for (const [event, cb] of this.listeners.splice(0)) this.model.off(event, cb);
    this.client.dispose();
    this.status.dispose();
  };
}
