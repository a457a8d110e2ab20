// @vitest-environment happy-dom
import { describe, expect, it } from "vitest";
import { mountStatus } from "./banner";
import { FakeModel } from "./fake_model";
import { CancelledReplyError, RequestClient, StaleReplyError, newViewId } from "./request";

/** How a promise settled: ["ok", value] or ["error", the error]. */
function settle<T>(p: Promise<T>): Promise<["ok", T] | ["error", unknown]> {
  return p.then(
    (v) => ["ok", v] as ["ok", T],
    (e) => ["error", e] as ["error", unknown],
  );
}

describe("RequestClient", () => {
  it("prefixes every request id with its view's id", () => {
    const model = new FakeModel({});
    const client = new RequestClient(model, "viewA");
    void client.request("view", { component: "head_out" });
    void client.request("cell", { row: 0, col: 1 });
    expect(model.sent.map((m) => m.id)).toEqual(["viewA:1", "viewA:2"]);
    expect(model.sent[0]).toEqual({ type: "request", id: "viewA:1", kind: "view", args: { component: "head_out" } });
    const a = newViewId();
    const b = newViewId();
    expect(a).toMatch(/^[0-9a-z-]{8}$/);
    expect(a).not.toBe(b);
  });

  it("two views of one model never take each other's replies", async () => {
    const model = new FakeModel({});
    const one = new RequestClient(model); // two views: two clients on the same model
    const two = new RequestClient(model);
    expect(one.viewId).not.toBe(two.viewId);
    const p1 = settle(one.request("view", { n: 1 }));
    const p2 = settle(two.request("view", { n: 2 }));
    const [r1, r2] = model.requests("view");
    expect(r1.id).not.toBe(r2.id); // before per-view ids both were 1
    // every reply reaches both clients (the kernel sends to every view)
    model.reply({ type: "reply", id: r2.id, kind: "view", result: "for two" });
    model.reply({ type: "reply", id: r1.id, kind: "view", result: "for one" });
    expect(await p1).toEqual(["ok", "for one"]);
    expect(await p2).toEqual(["ok", "for two"]);
    expect(one.isPending(r1.id) || two.isPending(r2.id)).toBe(false);
  });

  it("ignores replies to ids it did not send", async () => {
    const model = new FakeModel({});
    const client = new RequestClient(model, "mine");
    let settled = false;
    const p = client.request("view").finally(() => (settled = true));
    model.reply({ type: "reply", id: "other:1", kind: "view", result: "not mine" });
    model.reply({ type: "reply", id: 1, kind: "view", result: "a number id" });
    await Promise.resolve();
    expect(settled).toBe(false);
    expect(client.isPending("mine:1")).toBe(true);
    model.reply({ type: "reply", id: "mine:1", kind: "view", result: "mine" });
    expect(await p).toBe("mine");
  });

  it("a cancelled reply rejects as a cancel (no banner), an error reply as an error", async () => {
    const model = new FakeModel({});
    const client = new RequestClient(model, "v");
    const cancelled = settle(client.request("evaluate"));
    model.reply({ type: "reply", id: "v:1", kind: "evaluate", cancelled: true, error: "evaluate: history step 2 was restored" });
    const [how, e] = await cancelled;
    expect(how).toBe("error");
    expect(e).toBeInstanceOf(CancelledReplyError);
    expect(e).toBeInstanceOf(StaleReplyError); // what every widget's fail() leaves silent
    expect((e as Error).message).toBe("evaluate: history step 2 was restored");
    const failed = settle(client.request("evaluate"));
    model.reply({ type: "reply", id: "v:2", kind: "evaluate", error: "no node 'output/nope'" });
    const [how2, e2] = await failed;
    expect(how2).toBe("error");
    expect(e2).not.toBeInstanceOf(StaleReplyError);
    expect((e2 as Error).message).toBe("no node 'output/nope'");
  });

  it("a newer request of a kind supersedes the older one at once", async () => {
    const model = new FakeModel({});
    const client = new RequestClient(model, "v");
    const first = settle(client.request("view", { n: 1 }));
    const second = settle(client.request("view", { n: 2 }));
    const [how, e] = await first;
    expect(how).toBe("error");
    expect(e).toBeInstanceOf(StaleReplyError);
    expect(e).not.toBeInstanceOf(CancelledReplyError);
    // the kernel's late answer to the first is ignored; the second's is taken
    model.reply({ type: "reply", id: "v:1", kind: "view", result: "old grid" });
    model.reply({ type: "reply", id: "v:2", kind: "view", result: "new grid" });
    expect(await second).toEqual(["ok", "new grid"]);
  });

  it("a cancel names the request it cancels", () => {
    const model = new FakeModel({});
    const client = new RequestClient(model, "v");
    client.cancel("view", "other:7");
    expect(model.sent).toEqual([{ type: "cancel", kind: "view", id: "other:7" }]);
  });

  it("the progress bar's cancel button sends the running request's kind and id", () => {
    const model = new FakeModel({ error: "", progress: {} });
    const client = new RequestClient(model, "v");
    const el = document.createElement("div");
    const status = mountStatus(model, el, (kind, id) => client.cancel(kind, id));
    model.change("progress", { kind: "view", id: "x1:4", done: 1, total: 3, message: "exact patching" });
    (el.querySelector(".mw-progress button") as HTMLButtonElement).click();
    expect(model.sent).toEqual([{ type: "cancel", kind: "view", id: "x1:4" }]);
    status.dispose();
  });

  it("dispose rejects what is pending and stops listening", async () => {
    const model = new FakeModel({});
    const client = new RequestClient(model, "v");
    const p = settle(client.request("view"));
    client.dispose();
    const [how, e] = await p;
    expect(how).toBe("error");
    expect(e).toBeInstanceOf(StaleReplyError);
    expect(model.listeners.get("msg:custom")?.size ?? 0).toBe(0);
  });
});
