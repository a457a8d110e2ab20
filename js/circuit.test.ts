// @vitest-environment happy-dom
import { describe, expect, it, vi } from "vitest";
import {
  SLIDER_MAX,
  decodeEdges,
  render,
  scaleBounds,
  sliderToThreshold,
  strokes,
  thresholdToSlider,
  visibleCount,
} from "./circuit";
import { css, diverging } from "./lib/colormap";
import { harness } from "./lib/fake_model";

function enc(dtype: string, values: number[]) {
  const arr =
    dtype === "float32" ? new Float32Array(values) : dtype === "int32" ? new Int32Array(values) : new Uint8Array(values);
  return { dtype, shape: [values.length], buffer: new DataView(arr.buffer) };
}

// embed → a0.h0 (q,k,v), a0.h1 (q,k,v) → logits: one attention-only layer with two heads.
const nodes = [
  { name: "embed", kind: "embed", layer: -1, head: null, x: 54, y: 70 },
  { name: "a0.h0", kind: "head", layer: 0, head: 0, x: 150, y: 47, ports: [38, 47, 56] },
  { name: "a0.h1", kind: "head", layer: 0, head: 1, x: 150, y: 93, ports: [84, 93, 102] },
  { name: "logits", kind: "logits", layer: 1, head: null, x: 246, y: 70 },
];
// sorted by decreasing |score|, with the tone, width and curve Python computes for each
const edgeList = [
  { src: 1, dst: 3, port: 3, score: -0.8, tone: -1, width: 5, path: "M180,47 C200,47 196,70 216,70" }, // a0.h0 -> logits
  { src: 0, dst: 3, port: 3, score: 0.4, tone: 0.5, width: 2.75, path: "M84,70 C140,70 160,70 216,70" }, // embed -> logits
  { src: 0, dst: 2, port: 1, score: -0.2, tone: -0.25, width: 1.625, path: "M84,70 C100,70 104,93 120,93" }, // embed -> a0.h1.k
  { src: 2, dst: 3, port: 3, score: 0.05, tone: 0.0625, width: 0.78125, path: "M180,93 C200,93 196,70 216,70" }, // a0.h1 -> logits
  { src: 0, dst: 1, port: 0, score: 0.0, tone: 0, width: 0.5, path: "M84,70 C100,70 104,38 120,38" }, // embed -> a0.h0.q
];

function edgesTrait(list = edgeList) {
  return {
    src: enc("int32", list.map((e) => e.src)),
    dst: enc("int32", list.map((e) => e.dst)),
    port: enc("uint8", list.map((e) => e.port)),
    score: enc("float32", list.map((e) => e.score)),
    tone: enc("float32", list.map((e) => e.tone)),
    width: enc("float32", list.map((e) => e.width)),
    path: list.map((e) => e.path),
  };
}

const { makeModel, mount, itRemovesItsListeners } = harness(render, () => ({
    method: "eap",
    metric: "logit_diff",
    baseline: {
      clean: 2,
      corrupted: -1,
      answers: [" Mary"],
      wrong_answers: [" John"],
      clean_prompt: "<img src=x onerror=window.__xss=1> Mary",
      corrupted_prompt: "When A and B",
      n_prompts: 1,
    },
    nodes,
    size: { width: 320, height: 140, node_w: 60, node_h: 30 },
    edges: edgesTrait(),
    n_edges_total: 5,
    unsent_score_sum: 0,
    threshold: 0.3,
    faithfulness: { threshold: 0.3, metric: 1.7, normalized: 0.9, n_edges: 2, total_edges: 5 },
    acdc_threshold: 0.06,
    selected: "",
    node_detail: {},
}));

const visible = (el: HTMLElement) => Number((el.querySelector(".mw-circuit") as HTMLElement).dataset.visibleEdges);

function moveSlider(el: HTMLElement, pos: number, commit = false) {
  const slider = el.querySelector('[data-testid="threshold-slider"]') as HTMLInputElement;
  slider.value = String(pos);
  slider.dispatchEvent(new Event("input"));
  if (commit) slider.dispatchEvent(new Event("change"));
}

describe("circuit helpers", () => {
  it("counts the edges above a threshold by binary search", () => {
    const abs = new Float32Array([0.8, 0.4, 0.2, 0.05, 0]);
    expect(visibleCount(abs, 0)).toBe(5);
    expect(visibleCount(abs, 0.3)).toBe(2);
    expect(visibleCount(abs, 0.4)).toBe(2);
    expect(visibleCount(abs, 0.41)).toBe(1);
    expect(visibleCount(abs, 1)).toBe(0);
    expect(visibleCount(new Float32Array(0), 0)).toBe(0);
  });

  it("maps the slider logarithmically, with 0 keeping every edge", () => {
    const { lo, hi } = scaleBounds(new Float32Array([0.8, 0.4, 0.2, 0.05, 0]));
    expect([lo, hi]).toEqual([Math.fround(0.05), Math.fround(0.8)]);
    expect(sliderToThreshold(0, lo, hi)).toBe(0);
    expect(sliderToThreshold(1, lo, hi)).toBeCloseTo(lo);
    expect(sliderToThreshold(SLIDER_MAX, lo, hi)).toBeCloseTo(hi);
    for (const pos of [1, 10, 333, 999, SLIDER_MAX]) expect(thresholdToSlider(sliderToThreshold(pos, lo, hi), lo, hi)).toBe(pos);
    expect(thresholdToSlider(0, lo, hi)).toBe(0);
    expect(thresholdToSlider(10, lo, hi)).toBe(SLIDER_MAX);
  });

  it("groups edges into one stroke per tone, with the width Python sent, weakest first", () => {
    const e = decodeEdges(edgesTrait())!;
    const got = strokes(e, [4, 3, 2, 1, 0]);
    expect(got.map((b) => [b.tone, b.width, b.edges])).toEqual([
      [0, 0.5, [4]],
      [0.0625, 0.78125, [3]],
      [-0.25, 1.625, [2]],
      [0.5, 2.75, [1]],
      [-1, 5, [0]],
    ]);
    const same = decodeEdges(edgesTrait(edgeList.map((x) => ({ ...x, tone: 0.5, width: 2.75 }))))!;
    expect(strokes(same, [0, 2]).map((b) => [b.tone, b.width, b.edges])).toEqual([[0.5, 2.75, [0, 2]]]);
  });

  it("decodes edges and their suffix sums", () => {
    const e = decodeEdges(edgesTrait())!;
    expect(Array.from(e.src)).toEqual([1, 0, 0, 2, 0]);
    expect(e.suffix[0]).toBeCloseTo(-0.8 + 0.4 - 0.2 + 0.05);
    expect(e.suffix[2]).toBeCloseTo(-0.15);
    expect(e.suffix[5]).toBe(0);
    expect(Array.from(e.tone)).toEqual([-1, 0.5, -0.25, 0.0625, 0]);
    expect(Array.from(e.width)).toEqual([5, 2.75, 1.625, 0.78125, 0.5]);
    expect(e.path).toEqual(edgeList.map((x) => x.path));
    expect(decodeEdges({})).toBeNull();
    expect(decodeEdges({ ...edgesTrait(), width: undefined })).toBeNull();
  });
});

describe("circuit frontend", () => {
  it("strokes the curves, tones and widths the trait sends", () => {
    // a recording canvas: each stroke's colour, width and the curves it holds
    const drawn: { style: string; width: number; paths: string[] }[] = [];
    class FakePath {
      parts: string[];
      constructor(d?: string) {
        this.parts = d ? [d] : [];
      }
      addPath(p: FakePath) {
        this.parts.push(...p.parts);
      }
    }
    const ctx: any = { setTransform() {}, clearRect() {}, globalAlpha: 1, strokeStyle: "", lineWidth: 0 };
    ctx.stroke = (p: FakePath) => drawn.push({ style: ctx.strokeStyle, width: ctx.lineWidth, paths: p.parts });
    vi.stubGlobal("Path2D", FakePath);
    const spy = vi.spyOn(HTMLCanvasElement.prototype, "getContext").mockReturnValue(ctx);
    try {
      // widths no formula here would give: the page draws what it is sent
      const sent = edgeList.map((x) => ({ ...x, width: 3 * x.width + 1 }));
      const el = mount(makeModel({ threshold: 0.1, edges: edgesTrait(sent) }));
      expect(visible(el)).toBe(3);
      // the last drawing: the 3 edges above 0.1, weakest first
      const last = drawn.slice(-3);
      expect(last).toEqual(
        [2, 1, 0].map((i) => ({ style: css(diverging(sent[i].tone)), width: sent[i].width, paths: [sent[i].path] })),
      );
      // a head's q, k, v ports sit where Python put them
      const ports = el.querySelectorAll('[data-testid="node-a0.h1"] .mw-circuit-port');
      expect(Array.from(ports).map((c) => Number(c.getAttribute("cy")))).toEqual([84, 93, 102]);
    } finally {
      spy.mockRestore();
      vi.unstubAllGlobals();
    }
  });

  it("draws every node and the edges above the threshold", () => {
    const el = mount(makeModel());
    expect(el.querySelectorAll(".mw-circuit-node").length).toBe(4);
    expect(el.querySelector('[data-testid="edge-canvas"]')).not.toBeNull();
    expect(visible(el)).toBe(2);
    expect(el.querySelector('[data-testid="edge-count"]')!.textContent).toBe("2 of 5 edges (40.0%)");
    expect(el.querySelector('[data-testid="faithfulness"]')!.textContent).toContain("faithfulness 0.900");
    // a0.h1 has no visible edge: faded
    expect(el.querySelector('[data-testid="node-a0.h1"]')!.classList.contains("mw-circuit-off")).toBe(true);
    expect(el.querySelector('[data-testid="node-a0.h0"]')!.classList.contains("mw-circuit-off")).toBe(false);
    // a head has three input ports
    expect(el.querySelectorAll('[data-testid="node-a0.h0"] .mw-circuit-port').length).toBe(3);
  });

  it("filters edges as the slider moves, with a linear estimate, and asks Python when it stops", () => {
    const model = makeModel();
    const el = mount(model);
    moveSlider(el, 0);
    expect(visible(el)).toBe(5);
    expect(el.querySelector('[data-testid="node-a0.h1"]')!.classList.contains("mw-circuit-off")).toBe(false);
    expect(el.querySelector('[data-testid="edge-count"]')!.textContent).toBe("5 of 5 edges (100.0%)");
    // the exact faithfulness is for another threshold: an estimate is shown (EAP: 1 at all edges)
    const faith = el.querySelector('[data-testid="faithfulness"]')!;
    expect(faith.textContent).toContain("faithfulness ≈ 1.000");
    expect(faith.classList.contains("mw-circuit-stale")).toBe(true);
    moveSlider(el, SLIDER_MAX);
    expect(visible(el)).toBe(1);
    expect(el.querySelector('[data-testid="node-embed"]')!.classList.contains("mw-circuit-off")).toBe(true);
    // removed: 0.4 - 0.2 + 0.05 + 0 = +0.25 → estimate (2 + 0.25 - (-1)) / (2 - (-1))
    expect(faith.textContent).toContain(`faithfulness ≈ ${((2 + 0.25 + 1) / 3).toFixed(3)}`);
    expect(model.requests("faithfulness").length).toBe(0);
    moveSlider(el, SLIDER_MAX, true);
    const req = model.requests("faithfulness");
    expect(req.length).toBe(1);
    expect(req[0].args.threshold).toBeCloseTo(0.8);
    // Python answers through the traits: the exact value replaces the estimate
    model.change("faithfulness", { threshold: req[0].args.threshold, metric: 0.5, normalized: 0.5, n_edges: 1, total_edges: 5 });
    model.change("threshold", req[0].args.threshold);
    expect(faith.textContent).toContain("faithfulness 0.500");
    expect(faith.classList.contains("mw-circuit-stale")).toBe(false);
    expect(el.dataset.redrawMs ?? el.querySelector(".mw-circuit")!.getAttribute("data-redraw-ms")).toBeTruthy();
  });

  it("follows a threshold set from Python", () => {
    const model = makeModel();
    const el = mount(model);
    model.change("threshold", 0.1);
    expect(visible(el)).toBe(3);
    const slider = el.querySelector('[data-testid="threshold-slider"]') as HTMLInputElement;
    expect(Number(slider.value)).toBe(thresholdToSlider(0.1, Math.fround(0.05), Math.fround(0.8)));
    expect(el.querySelector('[data-testid="threshold-label"]')!.textContent).toBe("0.1000");
  });

  it("asks Python for a node's detail on click and draws the reply", () => {
    const model = makeModel();
    const el = mount(model);
    (el.querySelector('[data-testid="node-a0.h0"]') as any).dispatchEvent(new Event("click"));
    const req = model.requests("select_node");
    expect(req.length).toBe(1);
    expect(req[0].args).toEqual({ node: "a0.h0" });
    // the clicked node is focused at once
    expect(el.querySelector('[data-testid="node-a0.h0"]')!.classList.contains("mw-selected")).toBe(true);
    expect(el.querySelector('[data-testid="graph"]')!.classList.contains("mw-circuit-focus")).toBe(true);
    model.change("node_detail", {
      node: "a0.h0",
      kind: "head",
      output: { metric: -0.4, normalized: 0.2 },
      inputs: { q: { metric: 1.9, normalized: 0.97 }, k: { metric: 2, normalized: 1 }, v: { metric: 0.1, normalized: 0.37 } },
      incoming: [{ edge: "embed->a0.h0.q", score: 0, in_circuit: false }],
      outgoing: [{ edge: "a0.h0->logits", score: -0.8, in_circuit: true }],
      n_incoming: 3,
      n_outgoing: 1,
      n_incoming_kept: 0,
      n_outgoing_kept: 1,
    });
    model.change("selected", "a0.h0");
    // a second click on the focused node unfocuses it locally, without a request
    (el.querySelector('[data-testid="node-a0.h0"]') as any).dispatchEvent(new Event("click"));
    expect(el.querySelector('[data-testid="graph"]')!.classList.contains("mw-circuit-focus")).toBe(false);
    expect(model.requests("select_node").length).toBe(1);
    const detail = el.querySelector('[data-testid="node-detail"]')!;
    expect(detail.querySelector('[data-testid="detail-title"]')!.textContent).toContain("a0.h0");
    expect(detail.textContent).toContain("Patching its output (all 1 outgoing edges): logit_diff → -0.400 (normalised 0.200)");
    expect(detail.textContent).toContain("Patching its v input");
    const rows = detail.querySelectorAll('[data-testid="outgoing"] tbody tr');
    expect(rows.length).toBe(1);
    expect(rows[0].textContent).toContain("a0.h0->logits");
    expect(rows[0].textContent).toContain("in circuit");
  });

  it("runs ACDC as a request with the threshold typed, and redraws its scores", () => {
    const model = makeModel();
    const el = mount(model);
    const input = el.querySelector('[data-testid="acdc-threshold"]') as HTMLInputElement;
    expect(input.value).toBe("0.06");
    input.value = "0.25";
    (el.querySelector('[data-testid="acdc-button"]') as HTMLButtonElement).click();
    expect(model.requests("acdc")[0].args).toEqual({ threshold: 0.25, signed: false });
    (el.querySelector('[data-testid="acdc-signed"]') as HTMLInputElement).checked = true;
    (el.querySelector('[data-testid="acdc-button"]') as HTMLButtonElement).click();
    expect(model.requests("acdc")[1].args).toEqual({ threshold: 0.25, signed: true });
    // progress is drawn from the trait, with a cancel button that sends a cancel message
    model.change("progress", { kind: "acdc", id: 1, done: 2, total: 5, message: "ACDC: 5 of 5 edges kept" });
    const cancel = el.querySelector(".mw-progress button") as HTMLButtonElement;
    expect(el.querySelector(".mw-progress")!.textContent).toContain("2/5");
    cancel.click();
    expect(model.sent.filter((m) => m.type === "cancel")).toEqual([{ type: "cancel", kind: "acdc", id: 1 }]);
    // the job ends: new scores arrive
    model.change("progress", {});
    model.change("method", "acdc");
    model.change("acdc_threshold", 0.25);
    model.change("threshold", 0.25);
    model.change("edges", edgesTrait(edgeList.map((e, i) => ({ ...e, score: i === 0 ? -1.5 : e.score }))));
    expect(el.querySelector('[data-testid="circuit-title"]')!.textContent).toContain("ACDC (threshold 0.250)");
    model.change("acdc_signed", true);
    expect(el.querySelector('[data-testid="circuit-title"]')!.textContent).toContain("ACDC (signed, threshold 0.250)");
    expect((el.querySelector('[data-testid="acdc-signed"]') as HTMLInputElement).checked).toBe(true);
    expect(visible(el)).toBe(2);
    expect((el.querySelector('[data-testid="eap-button"]') as HTMLButtonElement).disabled).toBe(false);
  });

  it("switches between EAP and EAP-IG scores by request", () => {
    const model = makeModel();
    const el = mount(model);
    const eap = el.querySelector('[data-testid="eap-button"]') as HTMLButtonElement;
    const ig = el.querySelector('[data-testid="eap-ig-button"]') as HTMLButtonElement;
    expect(eap.disabled).toBe(true);
    expect(ig.disabled).toBe(false);
    const box = el.querySelector('[data-testid="acdc-signed"]') as HTMLInputElement;
    box.checked = true; // set up for the next ACDC run: new EAP-IG scores leave it ticked
    ig.click();
    expect(model.requests("eap")[0].args).toEqual({ ig: true });
    model.change("method", "eap-ig");
    model.change("edges", model.get("edges"));
    expect(box.checked).toBe(true);
    expect(el.querySelector('[data-testid="circuit-title"]')!.textContent).toContain("integrated gradients (EAP-IG)");
    expect(eap.disabled).toBe(false);
    expect(ig.disabled).toBe(true);
    eap.click();
    expect(model.requests("eap")[1].args).toEqual({ ig: false });
  });

  it("shows errors in the banner and inserts prompts as text", () => {
    const model = makeModel();
    const el = mount(model);
    expect(el.querySelector("img")).toBeNull();
    expect(el.querySelector('[data-testid="prompts"]')!.textContent).toContain("<img src=x onerror=window.__xss=1>");
    const banner = el.querySelector(".mw-error") as HTMLElement;
    expect(banner.style.display).toBe("none");
    model.change("error", "the threshold must be a finite number >= 0, got -1.");
    expect(banner.style.display).toBe("block");
    expect(banner.textContent).toBe("the threshold must be a finite number >= 0, got -1.");
  });

  itRemovesItsListeners();
});
