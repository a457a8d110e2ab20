// @vitest-environment happy-dom
import { describe, expect, it } from "vitest";
import { render } from "./attention";
import { f32, harness } from "./lib/fake_model";

const tokens = ["<bos>", " A", " B", " A"];
const n = tokens.length;
// 1 layer, 2 heads: head 0 previous-token, head 1 attends to BOS
const prev = [1, 0, 0, 0, 1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 0];
const bos = [1, 0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0];

const { makeModel, mount, itRemovesItsListeners } = harness(render, () => {
  const thumbs = new Uint8Array([...prev, ...bos].map((v) => v * 255));
  return {
    tokens,
    n_layers: 1,
    n_heads: 2,
    layers: [0],
    live: true,
    thumbnails: { dtype: "uint8", shape: [1, 2, n, n], buffer: new DataView(thumbs.buffer) },
    scores: { previous_token: f32([0.75, 0], [1, 2]), induction: f32([0, 0.1], [1, 2]), first_token: f32([0.25, 1], [1, 2]) },
    selected: {},
    pattern: {},
    ablated: [],
    ablation: {},
    ablation_mode: "zero",
    has_ablation_prompt: false,
  };
});

describe("attention frontend", () => {
  it("draws a thumbnail per head and tokens as text", () => {
    const el = mount(makeModel());
    expect(el.querySelectorAll(".mw-thumb").length).toBe(2);
    const strip = el.querySelector('[data-testid="token-strip"]')!;
    expect(strip.querySelectorAll(".mw-token").length).toBe(n);
  });

  it("sorts heads by a score when its header is clicked", () => {
    const el = mount(makeModel());
    const header = el.querySelector('th[data-key="first_token"]') as HTMLElement;
    header.click();
    const rows = Array.from(el.querySelectorAll('[data-testid^="score-row-"]')).map((r) => r.getAttribute("data-testid"));
    expect(rows[0]).toBe("score-row-0-1");
    (el.querySelector('th[data-key="previous_token"]') as HTMLElement).click();
    const rows2 = Array.from(el.querySelectorAll('[data-testid^="score-row-"]')).map((r) => r.getAttribute("data-testid"));
    expect(rows2[0]).toBe("score-row-0-0");
  });

  it("sends a select_head request on click and draws the pattern from the trait", () => {
    const model = makeModel();
    const el = mount(model);
    (el.querySelector('[data-testid="thumb-0-1"]') as HTMLElement).click();
    const req = model.sent.find((m) => m.kind === "select_head");
    expect(req.args).toEqual({ layer: 0, head: 1 });
    model.change("pattern", f32(bos, [n, n]));
    model.change("selected", { layer: 0, head: 1 });
    expect(el.querySelector('[data-testid="detail-title"]')!.textContent).toContain("L0H1");
  });

  it("drops stale replies and shows errors from the kernel", async () => {
    const model = makeModel();
    const el = mount(model);
    (el.querySelector('[data-testid="thumb-0-0"]') as HTMLElement).click();
    model.change("error", "head 9 is out of range");
    const banner = el.querySelector(".mw-error") as HTMLElement;
    expect(banner.textContent).toBe("head 9 is out of range");
    expect(banner.style.display).toBe("block");
    model.change("error", "");
    expect(banner.style.display).toBe("none");
  });

  it("asks for an ablation and draws before/after predictions", () => {
    const model = makeModel();
    const el = mount(model);
    (el.querySelector('[data-testid="thumb-0-0"]') as HTMLElement).click();
    (el.querySelector('[data-testid="ablate-button"]') as HTMLElement).click();
    const req = model.sent.find((m) => m.kind === "ablate");
    expect(req.args).toEqual({ heads: [[0, 0]], mode: "zero" });
    model.change("ablated", [[0, 0]]);
    model.change("ablation", {
      heads: [[0, 0]],
      mode: "zero",
      before: { tokens: [" A", " B"], token_ids: [1, 2], probs: f32([0.6, 0.3], [2]) },
      after: { tokens: [" B", " A"], token_ids: [2, 1], probs: f32([0.5, 0.4], [2]) },
      loss_before: f32([1, 2, 3], [3]),
      loss_after: f32([1, 2.5, 3], [3]),
      changed: [],
    });
    const table = el.querySelector('[data-testid="predictions"]')!;
    expect(table.textContent).toContain("0.600");
    expect(el.querySelector('[data-testid="after-0"]')!.textContent).toBe("·B");
    expect(el.querySelector('[data-testid="loss"]')!.textContent).toContain("2.000 → 2.167");
    expect(el.querySelector('[data-testid="ablated-list"]')!.textContent).toContain("L0H0");
  });

  it("inserts hostile tokens as text, never as HTML", () => {
    const evil = ["<img src=x onerror=alert(1)>", "</script><b>x</b>", "\u202eabc"];
    const thumbs = new Uint8Array(2 * 9);
    const el = mount(makeModel({ tokens: evil, thumbnails: { dtype: "uint8", shape: [1, 2, 3, 3], buffer: new DataView(thumbs.buffer) } }));
    expect(el.querySelector("img")).toBeNull();
    expect(el.querySelector("b")).toBeNull();
    const strip = el.querySelector('[data-testid="token-strip"]')!;
    expect(strip.textContent).toContain("<img·src=x·onerror=alert(1)>");
  });

  itRemovesItsListeners();
});
