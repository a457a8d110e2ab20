// @vitest-environment happy-dom
import { describe, expect, it } from "vitest";
import { FakeModel, f32, harness, tableText } from "./fake_model";
import { meanLoss, predictionsTable } from "./predictions";
import { CancelledReplyError, StaleReplyError } from "./request";
import { Widget, isQuiet, type StatusTraits, type WidgetProps } from "./widget";

interface Traits extends StatusTraits {
  count: number;
  label: string;
}

let calls: string[] = [];
let last: Widget<Traits> | null = null;

/** A tiny widget entry on the scaffold: redraws on `count` and `label`, asks on click. */
function render({ model, el }: WidgetProps<Traits>): () => void {
  const w = new Widget(model, el, "mw-test");
  last = w;
  const out = document.createElement("span");
  w.root.append(out);
  const draw = (): void => {
    calls.push(`${model.get("count")}:${model.get("label")}`);
    out.textContent = `${model.get("label")} ${model.get("count")}`;
  };
  w.on(["count", "label"], draw);
  draw();
  return w.dispose;
}

const { makeModel, mount, unmount } = harness(render, () => ({ count: 1, label: "a" }));

const banner = (el: HTMLElement) => el.querySelector(".mw-error") as HTMLElement;
const flush = async () => {
  await Promise.resolve();
  await Promise.resolve();
};

describe("Widget scaffold", () => {
  it("draws into a root with the banner and redraws on the traits it listens to", () => {
    calls = [];
    const model = makeModel();
    const el = mount(model);
    expect(el.querySelector(".mw-root.mw-test")).not.toBeNull();
    expect(banner(el).style.display).toBe("none");
    model.change("count", 2);
    model.change("label", "b");
    expect(calls).toEqual(["1:a", "2:a", "2:b"]);
    expect(el.textContent).toContain("b 2");
  });

  it("removes every listener it added on dispose, the banner's and the client's too", () => {
    const model = makeModel();
    mount(model);
    // count, label, error, progress and msg:custom
    expect([...model.listeners.keys()].sort()).toEqual(["change:count", "change:error", "change:label", "change:progress", "msg:custom"]);
    unmount();
    expect(model.listenerCount()).toBe(0);
    calls = [];
    model.change("count", 5);
    expect(calls).toEqual([]);
  });

  it("set sends a trait to the kernel", () => {
    const model = makeModel();
    mount(model);
    last!.set("label", "z");
    expect(model.sets).toEqual([{ label: "z" }]);
    expect(model.saves).toBe(1);
  });

  it("fail shows an error reply, and nothing for a superseded or cancelled one", async () => {
    const model = makeModel();
    const el = mount(model);
    const w = last!;
    // superseded: a newer request of the same kind
    w.ask("view", { n: 1 });
    w.ask("view", { n: 2 });
    const [older, newer] = model.requests("view");
    model.reply({ type: "reply", id: older.id, kind: "view", error: "too late" });
    // cancelled: the kernel stopped the job
    model.reply({ type: "reply", id: newer.id, kind: "view", cancelled: true, error: "view: cancelled by the user" });
    await flush();
    expect(banner(el).style.display).toBe("none");
    // an error reply is shown, unless the kernel already set the error trait
    w.ask("view", { n: 3 });
    model.reply({ type: "reply", id: model.requests("view")[2].id, kind: "view", error: "view: the kernel died" });
    await flush();
    expect(banner(el).textContent).toBe("view: the kernel died");
    // a new request clears the page's own error
    w.ask("view", { n: 4 });
    expect(banner(el).style.display).toBe("none");
  });

  it("fail leaves the kernel's own message in place", () => {
    const model = makeModel({ error: "layer 9 is out of range" });
    const el = mount(model);
    last!.fail(new Error("request failed"));
    expect(banner(el).textContent).toBe("layer 9 is out of range");
  });

  it("isQuiet: stale and cancelled replies are quiet, other errors are not", () => {
    expect(isQuiet(new StaleReplyError("view"))).toBe(true);
    expect(isQuiet(new CancelledReplyError("view", "restored"))).toBe(true);
    expect(isQuiet(new Error("view: bad"))).toBe(false);
    expect(isQuiet("a string")).toBe(false);
  });

  it("the fake model's listeners are the ones a widget can remove", () => {
    const model = new FakeModel({ x: 1 });
    const cb = () => undefined;
    model.on("change:x", cb);
    model.off("change:x", cb);
    expect(model.listenerCount()).toBe(0);
  });
});

describe("predictions table", () => {
  it("puts runs side by side, one row per rank, tokens as text", () => {
    const table = predictionsTable(
      [
        { label: "before", tokens: [" A", "<b>x</b>"], probs: f32([0.5, 0.25], [2]) },
        { label: "after", tokens: [" B", " C"], probs: f32([0.75, 0.125], [2]), cellTestid: "after", headerTestid: "after-header" },
      ],
      "predictions",
    );
    expect(table.dataset.testid).toBe("predictions");
    expect(tableText(table).head).toEqual(["#", "before", "p", "after", "p"]);
    expect(tableText(table).rows).toEqual([
      ["1", "·A", "0.500", "·B", "0.750"],
      ["2", "<b>x</b>", "0.250", "·C", "0.125"],
    ]);
    expect(table.querySelector("b")).toBeNull();
    expect(table.querySelector('[data-testid="after-1"]')!.textContent).toBe("·C");
    expect(table.querySelector('[data-testid="after-header"]')!.textContent).toBe("after");
  });

  it("a run without probabilities leaves its p cells empty; the longest run sets the rows", () => {
    const table = predictionsTable([
      { label: "unpatched run", tokens: [] },
      { label: "with this patch", tokens: [" x", " y"], probs: f32([0.5, 0.5], [2]) },
    ]);
    expect(tableText(table).rows).toEqual([
      ["1", "", "", "·x", "0.500"],
      ["2", "", "", "·y", "0.500"],
    ]);
  });

  it("meanLoss is the mean per-token loss", () => {
    expect(meanLoss(f32([1, 2, 4.5], [3]))).toBeCloseTo(2.5, 6);
    expect(meanLoss(f32([], [0]))).toBe(0);
  });
});
