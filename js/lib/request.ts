// The request client: {type: "request", id, kind, args} → {type: "reply", id, kind, result|error}.
// - Every view of a widget (the same output shown twice, a second tab) has a client of its own,
//   whose ids start with a random view id: `${viewId}:${n}`. The kernel's replies reach every
//   view; a client takes only the replies to ids it sent and ignores every other.
// - A newer request of a kind supersedes the older ones: their promises reject at once with a
//   StaleReplyError (the kernel also cancels a long job of that kind).
// - A reply with `cancelled: true` (the user cancelled the job, a newer request superseded it, or
//   a change of its inputs stopped it) rejects with a CancelledReplyError, a StaleReplyError too:
//   widgets show no error banner for either.
// Progress arrives through the `progress` trait, whose `id` names the running request; a cancel
// names that id, so the kernel stops that job only if it is still the one running.

import { putBuffers } from "./array";

export interface Reply {
  type: "reply";
  id: string;
  kind: string;
  result?: unknown;
  error?: string;
  cancelled?: boolean;
}

export interface ModelLike {
  send(content: unknown, callbacks?: unknown, buffers?: ArrayBuffer[]): void;
  on(event: string, cb: (...args: any[]) => void): void;
  off(event: string, cb?: (...args: any[]) => void): void;
}

interface Pending {
  resolve: (v: unknown) => void;
  reject: (e: Error) => void;
  kind: string;
}

/** A request that gets no result and is no error to show: superseded (or cancelled). */
export class StaleReplyError extends Error {
  constructor(kind: string, message = `${kind}: superseded by a newer request`) {
    super(message);
    this.name = "StaleReplyError";
  }
}

/** The kernel cancelled the request's job (the user asked, or a newer request superseded it). */
export class CancelledReplyError extends StaleReplyError {
  constructor(kind: string, reason?: string) {
    super(kind, reason || `${kind}: cancelled`);
    this.name = "CancelledReplyError";
  }
}

/** A random id for one view: the prefix of its request ids. */
export function newViewId(): string {
  const c = (globalThis as { crypto?: { randomUUID?: () => string } }).crypto;
  if (c?.randomUUID) return c.randomUUID().slice(0, 8);
  return Math.random().toString(36).slice(2, 10).padEnd(8, "0");
}

export class RequestClient {
  /** This view's id: every request id it makes starts with it. */
  readonly viewId: string;
  private nextId = 1;
  private latest = new Map<string, string>();
  private pending = new Map<string, Pending>();
  private handler: (msg: unknown, buffers: ReadonlyArray<DataView | ArrayBuffer>) => void;

  constructor(
    private model: ModelLike,
    viewId: string = newViewId(),
  ) {
    this.viewId = viewId;
    this.handler = (msg, buffers) => this.onMessage(msg, buffers ?? []);
    model.on("msg:custom", this.handler);
  }

  /** Send a request; resolves with its result, rejects with its error or a StaleReplyError. */
  request<T = unknown>(kind: string, args: Record<string, unknown> = {}): Promise<T> {
    const id = `${this.viewId}:${this.nextId++}`;
    const older = this.latest.get(kind);
    if (older !== undefined) this.dropPending(older, kind);
    this.latest.set(kind, id);
    return new Promise<T>((resolve, reject) => {
      this.pending.set(id, { resolve: resolve as (v: unknown) => void, reject, kind });
      this.model.send({ type: "request", id, kind, args });
    });
  }

  /** Ask the kernel to stop the long job of request `id` (of this kind), if it still runs. */
  cancel(kind: string, id: unknown): void {
    this.model.send({ type: "cancel", kind, id });
  }

  /** Whether `id` is this client's newest request of `kind`. */
  isLatest(kind: string, id: string): boolean {
    return this.latest.get(kind) === id;
  }

  /** Whether this client sent request `id` and still waits for its reply. */
  isPending(id: unknown): boolean {
    return typeof id === "string" && this.pending.has(id);
  }

  private dropPending(id: string, kind: string): void {
    const p = this.pending.get(id);
    if (p) {
      this.pending.delete(id);
      p.reject(new StaleReplyError(kind));
    }
  }

  private onMessage(msg: unknown, buffers: ReadonlyArray<DataView | ArrayBuffer>): void {
    if (!msg || typeof msg !== "object" || (msg as Reply).type !== "reply") return;
    const id = (msg as Reply).id;
    const p = typeof id === "string" ? this.pending.get(id) : undefined;
    if (!p) return; // another view's, or one already dropped: not ours to take
    const reply = putBuffers(msg, buffers) as Reply;
    this.pending.delete(id);
    if (reply.cancelled) {
      p.reject(new CancelledReplyError(p.kind, reply.error));
    } else if (!this.isLatest(p.kind, id)) {
      p.reject(new StaleReplyError(p.kind));
    } else if (reply.error !== undefined) {
      p.reject(new Error(reply.error));
    } else {
      p.resolve(reply.result);
    }
  }

  dispose(): void {
    this.model.off("msg:custom", this.handler);
    for (const [id, p] of this.pending) {
      this.pending.delete(id);
      p.reject(new StaleReplyError(p.kind));
    }
  }
}
