// The circuit widget's frontend: the model's edge graph drawn layer by layer (SVG), edges
// coloured and sized by score, a threshold slider that filters edges instantly here (the
// exact faithfulness is asked of the kernel when the slider stops), node details on click, and
// ACDC as a long job with progress and cancel. Everything on screen is drawn from traits, so a
// saved notebook renders with no kernel.

import { decodeArray, isEncoded, type Encoded } from "./lib/array";
import { css, diverging } from "./lib/colormap";
import { clip, fmt, h } from "./lib/dom";
import { Widget, type OrEmpty, type StatusTraits, type WidgetProps } from "./lib/widget";

/** The synced traits of mechwidgets/widgets/circuit.py:CircuitWidget. */
export interface CircuitTraits extends StatusTraits {
  method: string;
  metric: string;
  baseline: OrEmpty<Baseline>;
  nodes: NodeInfo[];
  /** The drawing's size and a node's box, in pixels. */
  size: { node_w?: number; node_h?: number; width?: number; height?: number };
  /** The edges sent, sorted by decreasing |score| (see decodeEdges). */
  edges: { src?: Encoded; dst?: Encoded; port?: Encoded; score?: Encoded };
  n_edges_total: number;
  /** Sum of the scores of the edges not sent. */
  unsent_score_sum: number;
  threshold: number;
  faithfulness: OrEmpty<Faithfulness>;
  acdc_threshold: number;
  acdc_signed: boolean;
  selected: string;
  node_detail: NodeDetail;
}

interface Baseline {
  clean: number;
  corrupted: number;
  answers?: string[];
  wrong_answers?: string[] | null;
  clean_prompt?: string;
  corrupted_prompt?: string;
  n_prompts?: number;
}

/** The exact faithfulness at a threshold. */
interface Faithfulness {
  threshold: number;
  metric: number;
  normalized: number;
  n_edges: number;
  total_edges: number;
}

interface NodeInfo {
  name: string;
  kind: "embed" | "head" | "mlp" | "logits";
  layer: number;
  head: number | null;
  x: number;
  y: number;
  /** a head's q, k, v input heights */
  ports?: number[];
}

interface MetricValue {
  metric: number;
  normalized: number;
}

interface EdgeRow {
  edge: string;
  score: number;
  in_circuit: boolean;
}

interface NodeDetail {
  node?: string;
  kind?: string;
  output?: MetricValue | null;
  inputs?: Record<string, MetricValue>;
  incoming?: EdgeRow[];
  outgoing?: EdgeRow[];
  n_incoming?: number;
  n_outgoing?: number;
  n_incoming_kept?: number;
  n_outgoing_kept?: number;
}

/** Edges sorted by decreasing |score|, drawn as Python sends them (curve, tone, width). */
export interface EdgeData {
  src: Int32Array;
  dst: Int32Array;
  port: Uint8Array;
  score: Float32Array;
  tone: Float32Array;
  width: Float32Array;
  path: string[];
  abs: Float32Array;
  /** suffix[k] = sum of score[i] for i >= k (float64). */
  suffix: Float64Array;
}

const SVG_NS = "http://www.w3.org/2000/svg";
export const SLIDER_MAX = 1000;
const PORT_NAMES = ["q", "k", "v", "in"];

function s<K extends keyof SVGElementTagNameMap>(tag: K, attrs: Record<string, string | number> = {}): SVGElementTagNameMap[K] {
  const el = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, String(v));
  return el;
}

/** How many edges have |score| >= t, for |scores| sorted in decreasing order (binary search). */
export function visibleCount(abs: Float32Array, t: number): number {
  let lo = 0;
  let hi = abs.length;
  while (lo < hi) {
    const mid = (lo + hi) >> 1;
    if (abs[mid] >= t) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

/** The slider's scale: position 0 keeps every edge; 1..SLIDER_MAX is logarithmic in |score|. */
export function scaleBounds(abs: Float32Array): { lo: number; hi: number } {
  const hi = abs.length ? abs[0] : 0;
  let lo = hi;
  for (let i = abs.length - 1; i >= 0; i--) {
    if (abs[i] > 0) {
      lo = abs[i];
      break;
    }
  }
  lo = Math.max(lo, hi * 1e-6);
  return { lo, hi };
}

export function sliderToThreshold(pos: number, lo: number, hi: number): number {
  if (pos <= 0 || !(hi > 0)) return 0;
  if (hi <= lo || pos >= SLIDER_MAX) return hi;
  if (pos <= 1) return lo;
  return lo * Math.pow(hi / lo, (pos - 1) / (SLIDER_MAX - 1));
}

export function thresholdToSlider(t: number, lo: number, hi: number): number {
  if (!(t > 0) || !(hi > 0)) return 0;
  if (t <= lo) return 1;
  if (t >= hi) return SLIDER_MAX;
  return Math.min(SLIDER_MAX, Math.max(1, Math.round(1 + ((SLIDER_MAX - 1) * Math.log(t / lo)) / Math.log(hi / lo))));
}

export function decodeEdges(raw: any): EdgeData | null {
  if (!raw || !["src", "dst", "port", "score", "tone", "width"].every((k) => isEncoded(raw[k])) || !Array.isArray(raw.path)) return null;
  const score = decodeArray(raw.score).data as Float32Array;
  const n = score.length;
  const abs = new Float32Array(n);
  for (let i = 0; i < n; i++) abs[i] = Math.abs(score[i]);
  const suffix = new Float64Array(n + 1);
  for (let i = n - 1; i >= 0; i--) suffix[i] = suffix[i + 1] + score[i];
  return {
    src: decodeArray(raw.src).data as Int32Array,
    dst: decodeArray(raw.dst).data as Int32Array,
    port: decodeArray(raw.port).data as Uint8Array,
    score,
    tone: decodeArray(raw.tone).data as Float32Array,
    width: decodeArray(raw.width).data as Float32Array,
    path: raw.path as string[],
    abs,
    suffix,
  };
}

/** The strokes that draw edges ``indices``: one per tone (its width is the tone's), weakest
 * first so that the strongest edges are drawn on top. */
export function strokes(edges: EdgeData, indices: Iterable<number>): { tone: number; width: number; edges: number[] }[] {
  const byTone = new Map<number, { tone: number; width: number; edges: number[] }>();
  for (const i of indices) {
    let b = byTone.get(edges.tone[i]);
    if (!b) byTone.set(edges.tone[i], (b = { tone: edges.tone[i], width: edges.width[i], edges: [] }));
    b.edges.push(i);
  }
  return [...byTone.values()].sort((a, b) => Math.abs(a.tone) - Math.abs(b.tone));
}

export function render({ model, el }: WidgetProps<CircuitTraits>): () => void {
  const w = new Widget(model, el, "mw-circuit");
  const { root, ask } = w;

  // ------------------------------------------------------------------ state
  let edges: EdgeData | null = null;
  let nodes: NodeInfo[] = [];
  let edgePaths: Path2D[] = [];
  let nodeEls: SVGGElement[] = [];
  let degree = new Int32Array(0);
  let incident: number[][] = [];
  let shown = 0;
  let threshold: number = model.get("threshold") ?? 0;
  let bounds = { lo: 0, hi: 0 };
  let maxAbs = 0;
  let focus: number | null = null;
  let built = false;

  // ------------------------------------------------------------------ layout
  const title = h("div", { class: "mw-title", "data-testid": "circuit-title" });
  const prompts = h("div", { class: "mw-note mw-circuit-prompts", "data-testid": "prompts" });
  const baseline = h("div", { class: "mw-note", "data-testid": "baseline" });
  const slider = h("input", { type: "range", min: 0, max: SLIDER_MAX, step: 1, class: "mw-circuit-slider", "data-testid": "threshold-slider", "aria-label": "edge score threshold" });
  const thresholdLabel = h("span", { class: "mw-circuit-threshold", "data-testid": "threshold-label" });
  const countLabel = h("span", { class: "mw-circuit-count", "data-testid": "edge-count" });
  const faithLine = h("div", { class: "mw-circuit-faith", "data-testid": "faithfulness" });
  const acdcInput = h("input", { type: "number", min: 0, step: "any", class: "mw-circuit-tau", "data-testid": "acdc-threshold", "aria-label": "ACDC threshold" });
  const signedBox = h("input", { type: "checkbox", "data-testid": "acdc-signed", "aria-label": "signed ACDC" });
  const signedLabel = h("label", { class: "mw-note", title: "remove every edge whose removal moves the metric toward the clean run's, as ACDC's own code does: smaller circuits, faithfulness can exceed 1" }, signedBox, " signed");
  const acdcButton = h("button", { class: "mw-button", "data-testid": "acdc-button" }, "Run ACDC");
  const eapButton = h("button", { class: "mw-button", "data-testid": "eap-button" }, "Show EAP scores");
  const igButton = h("button", { class: "mw-button", "data-testid": "eap-ig-button", title: "EAP with integrated gradients: the gradients averaged along the path from the corrupted to the clean input" }, "EAP-IG");
  const graphBox = h("div", { class: "mw-circuit-graph", "data-testid": "graph" });
  const plot = h("div", { class: "mw-circuit-plot" });
  const canvas = h("canvas", { class: "mw-circuit-canvas", "data-testid": "edge-canvas" });
  const tooltip = h("div", { class: "mw-tooltip", "data-testid": "edge-tooltip" });
  const legendBox = h("div", { class: "mw-legend", "data-testid": "legend" });
  const detail = h("div", { class: "mw-circuit-detail", "data-testid": "node-detail" });
  graphBox.append(plot);

  root.append(
    title,
    prompts,
    baseline,
    h("div", { class: "mw-row mw-controls" }, h("span", {}, "threshold |score| ≥"), slider, thresholdLabel, countLabel),
    faithLine,
    graphBox,
    tooltip,
    legendBox,
    h("div", { class: "mw-row mw-controls" }, h("span", {}, "ACDC threshold"), acdcInput, signedLabel, acdcButton, eapButton, igButton),
    detail,
  );

  const total = (): number => model.get("n_edges_total") ?? 0;
  const method = (): string => model.get("method") ?? "eap";

  // ------------------------------------------------------------------ text
  const drawText = (): void => {
    const acdc = method() === "acdc";
    const named = acdc ? `ACDC (${model.get("acdc_signed") ? "signed, " : ""}threshold ${fmt(model.get("acdc_threshold") ?? 0, 3)})` : method() === "eap-ig" ? "edge attribution patching with integrated gradients (EAP-IG)" : "edge attribution patching";
    title.textContent = `Circuit — ${named}, ${total()} edges`;
    const b = model.get("baseline") ?? {};
    const n = b.n_prompts ?? 1;
    prompts.textContent = `clean: ${clip(String(b.clean_prompt ?? ""), 120)}  |  corrupted: ${clip(String(b.corrupted_prompt ?? ""), 120)}${n > 1 ? `  (+${n - 1} more pairs)` : ""}`;
    const ans = (b.answers ?? []) as string[];
    const wrong = (b.wrong_answers ?? null) as string[] | null;
    const metric = model.get("metric") ?? "";
    const what = wrong ? ` (${JSON.stringify(ans[0] ?? "")} − ${JSON.stringify(wrong[0] ?? "")}${n > 1 ? ", …" : ""})` : ans.length ? ` (${JSON.stringify(ans[0])}${n > 1 ? ", …" : ""})` : "";
    baseline.textContent = `metric ${metric}${what}: clean ${fmt(b.clean ?? NaN)}, corrupted ${fmt(b.corrupted ?? NaN)}. Edge score: ${acdc ? "the exact change of the metric when ACDC removed the edge" : "linear estimate of the metric's change when the edge is patched from the corrupted run"}.`;
    eapButton.disabled = method() === "eap";
    igButton.disabled = method() === "eap-ig";
    if (document.activeElement !== acdcInput) acdcInput.value = String(model.get("acdc_threshold") ?? 0);
  };

  const drawCounts = (): void => {
    const k = visibleCount(edges?.abs ?? new Float32Array(0), threshold);
    const sentAll = (edges?.abs.length ?? 0) >= total();
    const n = total();
    thresholdLabel.textContent = fmt(threshold, 4);
    countLabel.textContent = `${k}${sentAll ? "" : "+"} of ${n} edges (${n ? ((100 * k) / n).toFixed(1) : "0"}%)`;
  };

  const drawFaith = (): void => {
    const f = model.get("faithfulness") ?? {};
    const b = model.get("baseline") ?? {};
    const exact = typeof f.threshold === "number" && Math.abs(f.threshold - threshold) <= 1e-9 * Math.max(1, Math.abs(threshold));
    faithLine.replaceChildren();
    if (exact) {
      faithLine.classList.remove("mw-circuit-stale");
      faithLine.append(
        h("b", {}, `faithfulness ${fmt(f.normalized, 3)}`),
        ` — ${model.get("metric")} ${fmt(f.metric, 3)} with ${f.n_edges} of ${f.total_edges} edges kept, every other edge patched from the corrupted run (exact forward pass; 1 = clean ${fmt(b.clean ?? NaN)}, 0 = corrupted ${fmt(b.corrupted ?? NaN)})`,
      );
      return;
    }
    faithLine.classList.add("mw-circuit-stale");
    if (edges && method() !== "acdc" && typeof b.clean === "number") {
      const k = visibleCount(edges.abs, threshold);
      const est = b.clean + edges.suffix[k] + (model.get("unsent_score_sum") ?? 0);
      const norm = (est - b.corrupted) / (b.clean - b.corrupted);
      faithLine.append(h("b", {}, `faithfulness ≈ ${fmt(norm, 3)}`), " (linear estimate from the scores; the exact value is computed when the slider stops…)");
    } else {
      faithLine.append("computing the exact faithfulness…");
    }
  };

  // ------------------------------------------------------------------ graph
  // Edges are drawn on a canvas (thousands of SVG paths made each slider move cost a full style
  // and paint pass); the nodes, which are clicked, are SVG on top of it.
  const setFocusClasses = (): void => {
    nodeEls.forEach((g, i) => g.classList.toggle("mw-selected", i === focus));
    graphBox.classList.toggle("mw-circuit-focus", focus !== null);
    drawEdges();
  };

  /** Edges are drawn in one stroke per tone (colour and width as Python sent them): a few dozen
   * canvas calls whatever the number of edges. */
  const drawEdges = (): void => {
    const ctx = canvas.getContext ? canvas.getContext("2d") : null;
    root.dataset.visibleEdges = String(shown);
    if (!ctx || !edges || typeof Path2D === "undefined") return;
    const dpr = window.devicePixelRatio || 1;
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.clearRect(0, 0, canvas.width / dpr, canvas.height / dpr);
    const near = focus === null ? null : new Set(incident[focus] ?? []);
    const pass = (alpha: number, keep: (i: number) => boolean) => {
      const visible: number[] = [];
      for (let i = shown - 1; i >= 0; i--) if (edgePaths[i] && keep(i)) visible.push(i);
      ctx.globalAlpha = alpha;
      for (const stroke of strokes(edges!, visible)) {
        const path = new Path2D();
        for (const i of stroke.edges) path.addPath(edgePaths[i]);
        ctx.strokeStyle = css(diverging(stroke.tone));
        ctx.lineWidth = stroke.width;
        ctx.stroke(path);
      }
    };
    if (near === null) pass(0.8, () => true);
    else {
      pass(0.2, (i) => !near.has(i));
      pass(0.95, (i) => near.has(i));
    }
    ctx.globalAlpha = 1;
  };

  /** Show exactly the edges with |score| >= threshold. Node fading is updated only for the edges
   * between the old and the new count; the canvas redraw costs O(visible edges). */
  const applyThreshold = (): void => {
    if (!edges) return;
    const k = visibleCount(edges.abs, threshold);
    const lo = Math.min(k, shown);
    const hi = Math.max(k, shown);
    const step = k > shown ? 1 : -1;
    const touched = new Set<number>();
    for (let i = lo; i < hi; i++) {
      const a = edges.src[i];
      const b = edges.dst[i];
      degree[a] += step;
      degree[b] += step;
      touched.add(a);
      touched.add(b);
    }
    for (const n of touched) nodeEls[n]?.classList.toggle("mw-circuit-off", degree[n] === 0);
    shown = k;
    drawEdges();
  };

  /** The visible edge under a point (the strongest one there), or -1. */
  const edgeAt = (x: number, y: number): number => {
    const ctx = canvas.getContext ? canvas.getContext("2d") : null;
    if (!ctx || !edges) return -1;
    ctx.setTransform(1, 0, 0, 1, 0, 0);
    for (let i = 0; i < shown; i++) {
      const p = edgePaths[i];
      if (!p) continue;
      ctx.lineWidth = Math.max(6, edges.width[i] + 4);
      if (ctx.isPointInStroke(p, x, y)) return i;
    }
    return -1;
  };

  const edgeLabel = (i: number): string => {
    if (!edges) return "";
    const a = nodes[edges.src[i]];
    const b = nodes[edges.dst[i]];
    const port = edges.port[i];
    return `${a?.name}->${b?.name}${port < 3 ? "." + PORT_NAMES[port] : ""}`;
  };

  let hoverPending = false;
  canvas.addEventListener("mousemove", (ev: MouseEvent) => {
    if (hoverPending) return;
    hoverPending = true;
    const { offsetX, offsetY } = ev;
    requestAnimationFrame(() => {
      hoverPending = false;
      const i = edgeAt(offsetX, offsetY);
      tooltip.textContent = i >= 0 && edges ? `${edgeLabel(i)}: score ${fmt(edges.score[i], 4)}` : "";
      canvas.style.cursor = i >= 0 ? "help" : "";
    });
  });
  canvas.addEventListener("click", () => {
    if (focus === null) return;
    focus = null; // a click beside the nodes shows the whole circuit again
    setFocusClasses();
  });
  canvas.addEventListener("mouseleave", () => {
    tooltip.textContent = "";
  });

  const buildGraph = (): void => {
    // the focused node stays focused across a redraw (new scores); at first, the selected one
    const keep = built ? (focus !== null ? nodes[focus]?.name : null) : model.get("selected");
    built = true;
    nodes = model.get("nodes") ?? [];
    edges = decodeEdges(model.get("edges"));
    const size = model.get("size") ?? {};
    const nw: number = size.node_w ?? 60;
    const nh: number = size.node_h ?? 30;
    const width: number = size.width ?? 400;
    const height: number = size.height ?? 200;
    const dpr = window.devicePixelRatio || 1;
    canvas.width = Math.round(width * dpr);
    canvas.height = Math.round(height * dpr);
    canvas.style.width = `${width}px`;
    canvas.style.height = `${height}px`;
    plot.style.width = `${width}px`;
    plot.style.height = `${height}px`;
    const svgEl = s("svg", { width, height, class: "mw-circuit-svg", "data-testid": "circuit-svg" });
    incident = nodes.map(() => []);
    degree = new Int32Array(nodes.length);
    shown = 0;
    maxAbs = edges && edges.abs.length ? edges.abs[0] : 0;
    bounds = scaleBounds(edges?.abs ?? new Float32Array(0));
    const n = edges?.score.length ?? 0;
    edgePaths = new Array(n);
    const canPath = typeof Path2D !== "undefined";
    if (edges) {
      for (let i = 0; i < n; i++) {
        const a = nodes[edges.src[i]];
        const b = nodes[edges.dst[i]];
        if (!a || !b) continue;
        if (canPath) edgePaths[i] = new Path2D(edges.path[i]);
        incident[edges.src[i]].push(i);
        incident[edges.dst[i]].push(i);
      }
    }
    nodeEls = nodes.map((node, idx) => {
      const g = s("g", { class: `mw-circuit-node mw-circuit-${node.kind} mw-circuit-off`, "data-node": node.name, "data-testid": `node-${node.name}` });
      const rect = s("rect", { x: node.x - nw / 2, y: node.y - nh / 2, width: nw, height: nh, rx: 4 });
      const label = s("text", { x: node.x, y: node.y + 3.5, "text-anchor": "middle" });
      label.textContent = node.kind === "mlp" ? `MLP ${node.layer}` : node.name;
      const tip = s("title");
      tip.textContent = `${node.name}: click for its patching detail`;
      g.append(rect, label, tip);
      if (node.kind === "head") {
        for (let port = 0; port < 3; port++) {
          const dot = s("circle", { cx: node.x - nw / 2, cy: node.ports?.[port] ?? node.y, r: 2, class: "mw-circuit-port" });
          const t = s("title");
          t.textContent = `${node.name}.${PORT_NAMES[port]}`;
          dot.append(t);
          g.append(dot);
        }
      }
      g.addEventListener("click", () => selectNode(idx));
      svgEl.append(g);
      return g;
    });
    plot.replaceChildren(canvas, svgEl);
    slider.value = String(thresholdToSlider(threshold, bounds.lo, bounds.hi));
    const idx = keep ? nodes.findIndex((nd) => nd.name === keep) : -1;
    focus = idx >= 0 ? idx : null;
    nodeEls.forEach((g, i) => g.classList.toggle("mw-selected", i === focus));
    graphBox.classList.toggle("mw-circuit-focus", focus !== null);
    applyThreshold();
    drawLegend();
  };

  const drawLegend = (): void => {
    const stops = Array.from({ length: 21 }, (_, k) => `${css(diverging(-1 + k / 10))} ${k * 5}%`);
    legendBox.replaceChildren(
      h("span", {}, fmt(-maxAbs, 3)),
      h("div", { class: "mw-legend-bar", style: `background:linear-gradient(to right, ${stops.join(",")})` }),
      h("span", {}, fmt(maxAbs, 3)),
      h("span", { class: "mw-legend-label" }, `edge score: blue = corrupting the edge lowers ${model.get("metric") ?? "the metric"}, red = raises it; width ∝ |score|`),
    );
  };

  // ------------------------------------------------------------------ node detail
  const metricText = (v: MetricValue | null | undefined): string => (v ? `${fmt(v.metric, 3)} (normalised ${fmt(v.normalized, 3)})` : "—");

  const edgeTable = (rows: EdgeRow[], caption: string, testid: string): HTMLElement => {
    const body = h("tbody");
    for (const r of rows) {
      const chip = h("span", { class: "mw-circuit-chip" });
      chip.style.background = css(diverging(maxAbs ? r.score / maxAbs : 0));
      body.append(
        h(
          "tr",
          { class: r.in_circuit ? "mw-circuit-kept" : "" },
          h("td", { class: "mw-tok" }, r.edge),
          h("td", { class: "mw-num" }, chip, fmt(r.score, 4)),
          h("td", {}, r.in_circuit ? "in circuit" : ""),
        ),
      );
    }
    return h(
      "div",
      { class: "mw-col" },
      h("div", { class: "mw-subtitle" }, caption),
      h("table", { class: "mw-table", "data-testid": testid }, h("thead", {}, h("tr", {}, h("th", {}, "edge"), h("th", {}, "score"), h("th", {}, ""))), body),
    );
  };

  const drawDetail = (): void => {
    const d: NodeDetail = model.get("node_detail") ?? {};
    detail.replaceChildren();
    if (!d.node) {
      detail.append(h("div", { class: "mw-note" }, "Click a node to see its patching detail: its exact effect when patched from the corrupted run, and its strongest edges."));
      return;
    }
    const lines = h("div", { class: "mw-circuit-effects", "data-testid": "node-effects" });
    if (d.output) lines.append(h("div", {}, `Patching its output (all ${d.n_outgoing} outgoing edges): ${model.get("metric")} → ${metricText(d.output)}`));
    for (const [port, v] of Object.entries(d.inputs ?? {})) {
      const what = port === "in" ? "its input" : `its ${port} input`;
      lines.append(h("div", {}, `Patching ${what} (all incoming edges): ${model.get("metric")} → ${metricText(v)}`));
    }
    detail.append(
      h("div", { class: "mw-subtitle", "data-testid": "detail-title" }, `${d.node} — ${d.n_incoming_kept ?? 0}/${d.n_incoming ?? 0} incoming and ${d.n_outgoing_kept ?? 0}/${d.n_outgoing ?? 0} outgoing edges in the circuit`),
      lines,
      h(
        "div",
        { class: "mw-row" },
        (d.incoming ?? []).length ? edgeTable(d.incoming ?? [], "strongest incoming edges", "incoming") : null,
        (d.outgoing ?? []).length ? edgeTable(d.outgoing ?? [], "strongest outgoing edges", "outgoing") : null,
      ),
    );
  };

  // ------------------------------------------------------------------ actions
  function selectNode(idx: number): void {
    if (focus === idx) {
      // a second click on the focused node lets the whole circuit show again (detail stays)
      focus = null;
      setFocusClasses();
      return;
    }
    focus = idx;
    setFocusClasses();
    const name = nodes[idx]?.name;
    if (!name) return;
    detail.prepend(h("div", { class: "mw-note" }, `patching ${name}…`));
    ask("select_node", { node: name });
  }

  const redraw = (): void => {
    const t0 = performance.now();
    applyThreshold();
    drawCounts();
    drawFaith();
    root.dataset.redrawMs = (performance.now() - t0).toFixed(2);
  };

  slider.addEventListener("input", () => {
    threshold = sliderToThreshold(Number(slider.value), bounds.lo, bounds.hi);
    redraw();
  });
  slider.addEventListener("change", () => {
    threshold = sliderToThreshold(Number(slider.value), bounds.lo, bounds.hi);
    redraw();
    ask("faithfulness", { threshold });
  });
  acdcButton.addEventListener("click", () => {
    const tau = Number(acdcInput.value);
    ask("acdc", { threshold: tau, signed: signedBox.checked });
  });
  eapButton.addEventListener("click", () => {
    ask("eap", { ig: false });
  });
  igButton.addEventListener("click", () => {
    ask("eap", { ig: true });
  });

  // ------------------------------------------------------------------ trait changes
  const onEdges = (): void => {
    threshold = model.get("threshold") ?? threshold;
    buildGraph();
    drawText();
    drawCounts();
    drawFaith();
  };
  const onThreshold = (): void => {
    const t = model.get("threshold") ?? 0;
    if (t === threshold) return;
    threshold = t;
    slider.value = String(thresholdToSlider(threshold, bounds.lo, bounds.hi));
    redraw();
  };
  const onFaith = (): void => drawFaith();
  let lastSelected: string = model.get("selected") ?? "";
  const onDetail = (): void => {
    const sel: string = model.get("selected") ?? "";
    if (sel !== lastSelected) {
      // a newly selected node (from a click or from Python) is focused; a refresh of the same
      // node's detail (after a threshold change) leaves the focus as the user set it
      lastSelected = sel;
      const idx = nodes.findIndex((nd) => nd.name === sel);
      focus = idx >= 0 ? idx : null;
      setFocusClasses();
    }
    drawDetail();
  };
  const onText = (): void => drawText();
  // the box shows how the last ACDC run pruned; ticking it only sets up the next run, and new
  // scores arriving (EAP, EAP-IG) leave it as the user set it
  const onSigned = (): void => {
    signedBox.checked = Boolean(model.get("acdc_signed"));
    drawText();
  };
  w.on(["edges", "nodes"], onEdges);
  w.on("threshold", onThreshold);
  w.on("faithfulness", onFaith);
  w.on(["node_detail", "selected"], onDetail);
  w.on(["method", "acdc_threshold"], onText);
  w.on("acdc_signed", onSigned);

  buildGraph();
  onSigned(); // the box and the text
  drawCounts();
  drawFaith();
  drawDetail();

  return w.dispose;
}

export default { render };
