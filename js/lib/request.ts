// The request client: {type: "request", id, kind, args} → {type: "reply", id, kind, result|error}.
// A newer request of a kind supersedes the older ones: their replies are dropped here (the
// kernel also cancels a long job of that kind). Progress arrives through the `progress` trait.

import { putBuffers } from "./array";

export interface Reply {
  type: "reply";
  id: number;
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
}

export class StaleReplyError extends Error {
  constructor(kind: string) {
    super(`${kind}: superseded by a newer request`);
    this.name = "StaleReplyError";
  }
}

export class RequestClient {
  private nextId = 1;
  private latest = new Map<string, number>();
  private pending = new Map<number, Pending & { kind: string }>();
  private handler: (msg: unknown, buffers: ReadonlyArray<DataView | ArrayBuffer>) => void;

  constructor(private model: ModelLike) {
    this.handler = (msg, buffers) => this.onMessage(msg, buffers ?? []);
    model.on("msg:custom", this.handler);
  }

  /** Send a request; resolves with its result, rejects with its error or StaleReplyError. */
  request<T = unknown>(kind: string, args: Record<string, unknown> = {}): Promise<T> {
    const id = this.nextId++;
    const older = this.latest.get(kind);
    if (older !== undefined) this.dropPending(older, kind);
    this.latest.set(kind, id);
    return new Promise<T>((resolve, reject) => {
      this.pending.set(id, { resolve: resolve as (v: unknown) => void, reject, kind });
      this.model.send({ type: "request", id, kind, args });
    });
  }

  /** Ask the kernel to stop the long job of this kind. */
  cancel(kind: string): void {
    this.model.send({ type: "cancel", kind });
  }

  isLatest(kind: string, id: number): boolean {
    return this.latest.get(kind) === id;
  }

  private dropPending(id: number, kind: string): void {
    const p = this.pending.get(id);
    if (p) {
      this.pending.delete(id);
      p.reject(new StaleReplyError(kind));
    }
  }

  private onMessage(msg: unknown, buffers: ReadonlyArray<DataView | ArrayBuffer>): void {
    if (!msg || typeof msg !== "object" || (msg as Reply).type !== "reply") return;
    const reply = putBuffers(msg, buffers) as Reply;
    const p = this.pending.get(reply.id);
    if (!p) return; // stale or unknown: dropped
    this.pending.delete(reply.id);
    if (!this.isLatest(reply.kind, reply.id)) {
      p.reject(new StaleReplyError(reply.kind));
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
