// @vitest-environment happy-dom
import { describe, expect, it } from "vitest";
import { logLine, parsePart, render, sortParts } from "./lens";
import { f32, harness, i32 } from "./lib/fake_model";

const tokens = ["<bos>", " A", " B"];
const layers = ["L0 pre", "final"];
// [layer, pos] top-1 indices into vocab, their probabilities
const vocab = [" x", " y", "<b>"];

function lens(extra: Record<string, any> = {}) {
  return {
    vocab,
    top1: i32([0, 1, 2, 1, 1, 0], [2, 3]),
    top1_prob: f32([0.1, 0.2, 0.3, 0.9, 0.8, 0.7], [2, 3]),
    kl: f32([1, 1, 1, 0, 0, 0], [2, 3]),
    answer_rank: i32([5, 4, 3, 0, 0, 1], [2, 3]),
    answer_prob: f32([0, 0, 0, 1, 1, 1], [2, 3]),
    topk_ids: i32([0, 1, 1, 0, 2, 0, 1, 0, 1, 2, 0, 1], [2, 3, 2]),
    topk_probs: f32([0.1, 0.05, 0.2, 0.1, 0.3, 0.2, 0.9, 0.05, 0.8, 0.1, 0.7, 0.2], [2, 3, 2]),
    ...extra,
  };
}

const dla = {
  labels: ["embed", "pos_embed", "L0H0", "L0H1", "L0 attn bias", "L0 MLP"],
  values: f32([0.5, -0.2, 2.0, -1.0, 0.1, 0.3], [6]),
  heads: f32([2.0, -1.0], [1, 2]),
  mlps: f32([0.3], [1]),
  head_positions: f32([1.0, 0.5, 0.5, -1.0, 0, 0], [1, 2, 3]),
  total: 1.9,
  norm_bias: 0.2,
};

const { makeModel, mount, itRemovesItsListeners } = harness(render, () => ({
    prompt: "A B",
    tokens,
    layers,
    n_layers: 1,
    n_heads: 2,
    has_mlp: true,
    answer: " A",
    wrong_answer: " B",
    top_k: 2,
    lens: lens(),
    dla,
    norms: { values: f32([1, 2, 3, 4, 8, 16], [2, 3]), mean: f32([2.5, 12], [2]), fitted_growth: 4.8 },
    predictions: { tokens: [" x", " y"], token_ids: [0, 1], probs: f32([0.7, 0.2], [2]) },
    ablation_mode: "zero",
    ablated: { heads: [], mlps: [], mode: "zero" },
    has_ablation_prompt: false,
    ablation: {},
    live: true,
}));

describe("lens helpers", () => {
  it("parses clickable parts", () => {
    expect(parsePart("L3H0")).toEqual({ head: [3, 0] });
    expect(parsePart("L2 MLP")).toEqual({ mlp: 2 });
    expect(parsePart("embed")).toBeNull();
    expect(parsePart("L0 attn bias")).toBeNull();
  });
  it("sorts parts", () => {
    expect(sortParts([1, -3, 2], "order")).toEqual([0, 1, 2]);
    expect(sortParts([1, -3, 2], "value")).toEqual([2, 0, 1]);
    expect(sortParts([1, -3, 2], "abs")).toEqual([1, 2, 0]);
  });
  it("draws a log-scale line: equal ratios are equal steps", () => {
    const pts = logLine([1, 10, 100], 1, 100, 100, 100);
    expect(pts[0][1]).toBeCloseTo(100);
    expect(pts[1][1]).toBeCloseTo(50);
    expect(pts[2][1]).toBeCloseTo(0);
  });
});

describe("lens frontend", () => {
  it("draws the grid with the final layer on top, tokens as text", () => {
    const el = mount(makeModel());
    const cells = el.querySelectorAll(".mw-lens-cell");
    expect(cells.length).toBe(6);
    const firstRow = el.querySelector("tbody tr")!;
    expect(firstRow.querySelector("th")!.textContent).toBe("final");
    // "<b>" is text, not markup
    const cell = el.querySelector('[data-testid="cell-0-2"]')!;
    expect(cell.textContent).toBe("<b>");
    expect(cell.querySelector("b")).toBeNull();
  });

  it("shows the inline top-k on hover without asking the kernel", () => {
    const model = makeModel();
    const el = mount(model);
    el.querySelector('[data-testid="cell-1-0"]')!.dispatchEvent(new Event("mouseenter"));
    const tip = el.querySelector('[data-testid="tooltip"]')!.textContent!;
    expect(tip).toContain("final, position 0");
    expect(tip).toContain("1. ·y  0.900");
    expect(model.requests("layer_topk").length).toBe(0);
  });

  it("asks for a layer's top-k when the prompt is long, and uses the reply", async () => {
    const model = makeModel({ lens: lens({ topk_ids: {}, topk_probs: {} }) });
    const el = mount(model);
    el.querySelector('[data-testid="cell-0-1"]')!.dispatchEvent(new Event("mouseenter"));
    const req = model.last("layer_topk");
    expect(req.args).toEqual({ layer: 0, run: "clean" });
    // as the kernel sends it: the array's bytes as a message buffer
    const probs = new Float32Array([0.5, 0.1, 0.4, 0.3, 0.2, 0.1]);
    model.reply(
      { type: "reply", id: req.id, kind: "layer_topk", result: { layer: 0, run: "clean", probs: { dtype: "float32", shape: [3, 2] }, strs: [["a", "b"], ["c", "d"], ["e", "f"]] }, buffer_paths: [["result", "probs", "buffer"]] },
      [new DataView(probs.buffer)],
    );
    await new Promise((r) => setTimeout(r, 0));
    expect(el.querySelector('[data-testid="tooltip"]')!.textContent).toContain("1. c  0.400");
  });

  it("shows the answer's rank per layer at the last position", () => {
    const el = mount(makeModel());
    const cells = Array.from(el.querySelectorAll('[data-testid="rank-before"] td')).map((c) => c.textContent);
    expect(cells).toEqual(["3", "1"]);
  });

  it("sorts the DLA bars and ablates a head or MLP on click", () => {
    const model = makeModel();
    const el = mount(model);
    const order = () => Array.from(el.querySelectorAll('[data-testid^="dla-row-"]')).map((r) => r.getAttribute("data-testid"));
    expect(order()[0]).toBe("dla-row-embed");
    const select = el.querySelector('select[aria-label="order the parts"]') as HTMLSelectElement;
    select.value = "value";
    select.dispatchEvent(new Event("change"));
    expect(order()[0]).toBe("dla-row-L0H0");
    expect(order()[order().length - 1]).toBe("dla-row-L0H1");
    (el.querySelector('[data-testid="dla-row-L0H0"]') as HTMLElement).click();
    expect(model.last("ablate").args).toEqual({ heads: [[0, 0]], mlps: [], mode: "zero" });
    (el.querySelector('[data-testid="dla-row-L0_MLP"]') as HTMLElement).click();
    expect(model.last("ablate").args).toEqual({ heads: [], mlps: [0], mode: "zero" });
    // embeddings are not ablatable
    (el.querySelector('[data-testid="dla-row-embed"]') as HTMLElement).click();
    expect(model.requests("ablate").length).toBe(2);
  });

  it("draws before vs after once the kernel sends the ablated run", () => {
    const model = makeModel();
    const el = mount(model);
    model.change("ablated", { heads: [[0, 0]], mlps: [], mode: "zero" });
    model.change("ablation", {
      lens: lens({ top1_prob: f32([0.5, 0.5, 0.5, 0.5, 0.5, 0.5], [2, 3]), answer_rank: i32([9, 9, 9, 7, 7, 7], [2, 3]) }),
      dla: { ...dla, values: f32([0.5, -0.2, 0, -1.0, 0.1, 0.3], [6]), total: -0.1 },
      norms: { values: f32([1, 1, 1, 2, 2, 2], [2, 3]), mean: f32([1, 2], [2]), fitted_growth: 2 },
      predictions: { tokens: [" y", " x"], token_ids: [1, 0], probs: f32([0.6, 0.3], [2]) },
      predictions_before: { tokens: [" x", " y"], token_ids: [0, 1], probs: f32([0.7, 0.2], [2]) },
    });
    expect(el.querySelector('[data-testid="show-ablated"]')!.className).toContain("mw-active");
    const after = Array.from(el.querySelectorAll('[data-testid="rank-after"] td')).map((c) => c.textContent);
    expect(after).toEqual(["9", "7"]);
    expect(el.querySelector('[data-testid="dla-row-L0H0"]')!.className).toContain("mw-ablated");
    expect(el.querySelector('[data-testid="dla-row-L0H0"]')!.textContent).toContain("2.000 → 0.000");
    expect(el.querySelector('[data-testid="norm-after"]')).not.toBeNull();
    expect(el.querySelector('[data-testid="after-0"]')!.textContent).toBe("·y");
    expect(el.querySelector('[data-testid="dla-total"]')!.textContent).toContain("→ -0.100");
    (el.querySelector('[data-testid="show-clean"]') as HTMLElement).click();
    expect((el.querySelector('[data-testid="cell-0-0"]') as HTMLElement).style.background).not.toBe(
      "",
    );
    (el.querySelector('[data-testid="clear-ablation"]') as HTMLElement).click();
    expect(model.last("ablate").args).toEqual({ heads: [], mlps: [], mode: "zero" });
  });

  it("draws the heads × positions heatmap on request and the norm line", () => {
    const el = mount(makeModel());
    expect(el.querySelector('[data-testid="head-heatmap"]')!.className).toContain("mw-empty");
    (el.querySelector('[data-testid="heatmap-button"]') as HTMLElement).click();
    expect(el.querySelector('[data-testid="head-heatmap"]')!.className).not.toContain("mw-empty");
    expect(el.querySelector('[data-testid="norm-clean"]')!.getAttribute("points")).toBeTruthy();
    expect(el.querySelector('[data-testid="norms"]')!.textContent).toContain("×4.800");
  });

  it("without a kernel (saved page) nothing asks the model", () => {
    const model = makeModel({ live: false, lens: lens({ topk_ids: {}, topk_probs: {} }) });
    const el = mount(model);
    (el.querySelector('[data-testid="dla-row-L0H0"]') as HTMLElement).click();
    el.querySelector('[data-testid="cell-0-1"]')!.dispatchEvent(new Event("mouseenter"));
    expect(model.sent.length).toBe(0);
    expect(el.querySelector('[data-testid="tooltip"]')!.textContent).toContain("not saved");
  });

  it("explains the missing DLA without an answer", () => {
    const el = mount(makeModel({ dla: {}, answer: "", wrong_answer: "", lens: lens({ answer_rank: {}, answer_prob: {} }) }));
    expect(el.querySelector('[data-testid="dla-total"]')!.textContent).toContain("pass answer=");
    expect(el.querySelector('[data-testid="rank-row"]')!.textContent).toBe("");
  });

  it("shows errors from the kernel in the banner", () => {
    const model = makeModel();
    const el = mount(model);
    model.change("error", "layer 9 is out of range");
    expect(el.querySelector(".mw-error")!.textContent).toContain("out of range");
  });

  itRemovesItsListeners();
});
