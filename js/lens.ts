// The logit-lens widget's frontend: a layers × positions grid of the lens's top token (its
// probability as colour, top-k on hover), the answer's rank per layer, a sortable DLA bar chart
// whose heads and MLPs ablate on click, a heads × positions DLA heatmap on request, and the
// residual norm per layer on a log scale. Everything is drawn from traits (a saved notebook
// redraws with no kernel); clicks become requests to the kernel. Before vs after an ablation:
// the grid shows either run (a toggle), the rank row, the bars, the norms and the predictions
// show both.

import { decodeArray, isEncoded, type Encoded, type NDArray } from "./lib/array";
import { css, diverging, sequential } from "./lib/colormap";
import { clip, fmt, h, showToken } from "./lib/dom";
import { HeatmapView, legend } from "./lib/heatmap";
import { predictionsTable, type Predictions, type PredictionsColumn } from "./lib/predictions";
import { Widget, type OrEmpty, type StatusTraits, type WidgetProps } from "./lib/widget";

interface LensState {
  vocab?: string[];
  top1?: Encoded;
  top1_prob?: Encoded;
  kl?: Encoded;
  answer_rank?: Encoded | Record<string, never>;
  answer_prob?: Encoded | Record<string, never>;
  topk_ids?: Encoded | Record<string, never>;
  topk_probs?: Encoded | Record<string, never>;
  computed_from?: number;
}

interface DLAState {
  labels?: string[];
  values?: Encoded;
  heads?: Encoded;
  mlps?: Encoded;
  head_positions?: Encoded;
  total?: number;
  norm_bias?: number;
}

interface ViewState {
  lens?: LensState;
  dla?: DLAState;
  norms?: { values?: Encoded; mean?: Encoded; fitted_growth?: number };
  predictions?: OrEmpty<Predictions>;
  predictions_before?: Predictions;
  heads?: number[][];
  mlps?: number[];
  mode?: string;
}

/** The synced traits of mechwidgets/widgets/lens.py:LogitLensWidget. */
export interface LensTraits extends StatusTraits {
  prompt: string;
  tokens: string[];
  /** The rows of the grid, first to final ("L0 pre", ..., "final"). */
  layers: string[];
  n_layers: number;
  n_heads: number;
  has_mlp: boolean;
  answer: string;
  wrong_answer: string;
  top_k: number;
  ln_scale: string;
  lens: LensState;
  dla: DLAState;
  norms: NonNullable<ViewState["norms"]>;
  predictions: OrEmpty<Predictions>;
  ablation_mode: string;
  ablated: { heads?: number[][]; mlps?: number[]; mode?: string };
  has_ablation_prompt: boolean;
  /** The ablated run's views (empty when nothing is ablated). */
  ablation: ViewState;
  live: boolean;
}

type Run = "clean" | "ablated";

/** A DLA part label → what clicking it ablates ("L1H2" → head, "L3 MLP" → MLP), or null. */
export function parsePart(label: string): { head?: [number, number]; mlp?: number } | null {
  const hm = /^L(\d+)H(\d+)$/.exec(label);
  if (hm) return { head: [Number(hm[1]), Number(hm[2])] };
  const mm = /^L(\d+) MLP$/.exec(label);
  if (mm) return { mlp: Number(mm[1]) };
  return null;
}

/** Order of the DLA bars: as in the residual stream, by value, or by |value|. */
export function sortParts(values: ArrayLike<number>, key: string): number[] {
  const idx = Array.from({ length: values.length }, (_, i) => i);
  if (key === "value") idx.sort((a, b) => values[b] - values[a]);
  else if (key === "abs") idx.sort((a, b) => Math.abs(values[b]) - Math.abs(values[a]));
  return idx;
}

/** Points of a log-scale line through `values` in a box of `width` × `height`. */
export function logLine(values: ArrayLike<number>, lo: number, hi: number, width: number, height: number): [number, number][] {
  const n = values.length;
  const l0 = Math.log(Math.max(lo, 1e-30));
  const l1 = Math.log(Math.max(hi, lo * 1.0001, 1e-30));
  return Array.from(values, (v, i) => {
    const x = n > 1 ? (i / (n - 1)) * width : width / 2;
    const y = height - ((Math.log(Math.max(v, 1e-30)) - l0) / (l1 - l0 || 1)) * height;
    return [x, y];
  });
}

const SVG = "http://www.w3.org/2000/svg";
function svg<K extends keyof SVGElementTagNameMap>(tag: K, attrs: Record<string, string | number> = {}, text?: string): SVGElementTagNameMap[K] {
  const el = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, String(v));
  if (text !== undefined) el.textContent = text;
  return el;
}

export function render({ model, el }: WidgetProps<LensTraits>): () => void {
  const w = new Widget(model, el, "mw-lens");
  const { root, client, fail } = w;
  const live = (): boolean => model.get("live") !== false;

  let run: Run = "clean";
  let sortKey = "order";
  let showHeatmap = false;
  const topkCache = new Map<string, { probs: NDArray; strs: string[][] }>();

  const title = h("div", { class: "mw-title", "data-testid": "title" });
  const runToggle = h("div", { class: "mw-toggle", "data-testid": "run-toggle" });
  const grid = h("div", { class: "mw-scroll mw-lens-grid", "data-testid": "lens-grid" });
  const tooltip = h("div", { class: "mw-tooltip", "data-testid": "tooltip" });
  const rankRow = h("div", { class: "mw-lens-rank", "data-testid": "rank-row" });
  const sortSelect = h("select", { class: "mw-select", "aria-label": "order the parts" });
  for (const [k, label] of [["order", "stream order"], ["value", "by value"], ["abs", "by |value|"]]) sortSelect.append(h("option", { value: k }, label));
  const modeSelect = h("select", { class: "mw-select", "aria-label": "ablation mode" });
  for (const m of ["zero", "mean", "resample"]) modeSelect.append(h("option", { value: m }, `${m} ablation`));
  const clearButton = h("button", { class: "mw-button", "data-testid": "clear-ablation" }, "Clear ablation");
  const bars = h("div", { class: "mw-lens-bars", "data-testid": "dla-bars" });
  const dlaNote = h("div", { class: "mw-note", "data-testid": "dla-total" });
  const heatButton = h("button", { class: "mw-button", "data-testid": "heatmap-button" }, "Heads × positions");
  const heatmap = new HeatmapView();
  const heatBox = h("div", { class: "mw-detail-plot mw-empty", "data-testid": "head-heatmap" }, heatmap.el, legend((v) => diverging(v), -1, 1, "DLA by source position (scaled to the largest |value|)"));
  const normBox = h("div", { class: "mw-lens-norms", "data-testid": "norms" });
  const preds = h("div", { "data-testid": "predictions" });

  root.append(
    title,
    h("div", { class: "mw-row mw-controls" }, h("span", { class: "mw-subtitle" }, "Logit lens (top token per layer and position) — show "), runToggle),
    grid,
    legend(sequential, 0, 1, "probability of the top token"),
    tooltip,
    rankRow,
    h(
      "div",
      { class: "mw-row" },
      h(
        "div",
        { class: "mw-col" },
        h("div", { class: "mw-subtitle" }, "Direct logit attribution — ", sortSelect, " (click a head or MLP to ablate it)"),
        h("div", { class: "mw-row mw-controls" }, modeSelect, clearButton, heatButton),
        dlaNote,
        h("div", { class: "mw-scroll" }, bars),
      ),
      h("div", { class: "mw-col" }, h("div", { class: "mw-subtitle" }, "Residual stream norm per layer (log scale, mean over positions, BOS excluded)"), normBox, preds),
    ),
    heatBox,
  );

  // ------------------------------------------------------------------ data
  const tokens = (): string[] => model.get("tokens") ?? [];
  const layers = (): string[] => model.get("layers") ?? [];
  const ablation = (): ViewState => model.get("ablation") ?? {};
  const hasAblation = (): boolean => !!ablation().lens;
  const viewOf = (which: Run): ViewState =>
    which === "ablated" && hasAblation()
      ? ablation()
      : { lens: model.get("lens"), dla: model.get("dla"), norms: model.get("norms"), predictions: model.get("predictions") };
  const dec = (x: unknown): NDArray | null => (isEncoded(x) ? decodeArray(x) : null);

  // ------------------------------------------------------------------ drawing
  const drawTitle = (): void => {
    const answer = model.get("answer");
    const wrong = model.get("wrong_answer");
    title.textContent = `${clip(model.get("prompt") ?? "", 120)}${answer ? ` — answer ${showToken(answer)}` : ""}${wrong ? ` vs ${showToken(wrong)}` : ""}`;
  };

  const drawToggle = (): void => {
    runToggle.replaceChildren();
    if (!hasAblation()) run = "clean";
    for (const which of ["clean", "ablated"] as Run[]) {
      const b = h("button", { class: `mw-button${run === which ? " mw-active" : ""}`, "data-testid": `show-${which}` }, which === "clean" ? "clean run" : "after ablation");
      b.disabled = which === "ablated" && !hasAblation();
      b.addEventListener("click", () => {
        run = which;
        drawToggle();
        drawGrid();
      });
      runToggle.append(b);
    }
  };

  const drawGrid = (): void => {
    const lens = viewOf(run).lens ?? {};
    grid.replaceChildren();
    const top1 = dec(lens.top1);
    const prob = dec(lens.top1_prob);
    const vocab = lens.vocab ?? [];
    const toks = tokens();
    const rows = layers();
    if (!top1 || !prob) return;
    const nPos = toks.length;
    const table = h("table", { class: "mw-table mw-lens-table" });
    const head = h("tr", {}, h("th", {}, ""));
    for (let j = 0; j < nPos; j++) head.append(h("th", { class: "mw-tok", title: toks[j] }, clip(showToken(toks[j]), 8)));
    const body = h("tbody", {});
    // the final layer on top, as the stream flows upwards
    for (let i = rows.length - 1; i >= 0; i--) {
      const tr = h("tr", {}, h("th", {}, rows[i]));
      for (let j = 0; j < nPos; j++) {
        if (j < (lens.computed_from ?? 0)) {
          tr.append(h("td", { class: "mw-lens-cell", "data-testid": `cell-${i}-${j}`, title: "computing…" }, ""));
          continue;
        }
        const p = prob.data[i * nPos + j];
        const word = vocab[top1.data[i * nPos + j]] ?? "";
        const td = h("td", { class: "mw-lens-cell", "data-testid": `cell-${i}-${j}`, "data-layer": i, "data-pos": j }, clip(showToken(word), 8));
        td.style.background = css(sequential(p));
        td.style.color = p > 0.6 ? "white" : "black";
        td.addEventListener("mouseenter", () => hover(i, j));
        td.addEventListener("mouseleave", () => {
          tooltip.textContent = "";
        });
        tr.append(td);
      }
      body.append(tr);
    }
    table.append(h("thead", {}, head), body);
    grid.append(table);
  };

  const showTopk = (layer: number, pos: number, strs: string[], probs: ArrayLike<number>): void => {
    const toks = tokens();
    const lens = viewOf(run).lens ?? {};
    const kl = dec(lens.kl);
    const lines = strs.map((s, k) => `${k + 1}. ${showToken(s)}  ${fmt(probs[k], 3)}`);
    tooltip.textContent = `${layers()[layer]}, position ${pos} (${showToken(toks[pos] ?? "")})${run === "ablated" ? ", after ablation" : ""}: ` +
      lines.join("   ") + (kl ? `   KL from final ${fmt(kl.data[layer * toks.length + pos], 3)}` : "");
  };

  const hover = (layer: number, pos: number): void => {
    const lens = viewOf(run).lens ?? {};
    const ids = dec(lens.topk_ids);
    const probs = dec(lens.topk_probs);
    if (ids && probs) {
      const k = ids.shape[2];
      const off = (layer * ids.shape[1] + pos) * k;
      const vocab = lens.vocab ?? [];
      showTopk(layer, pos, Array.from(ids.data.subarray(off, off + k), (v) => vocab[v] ?? ""), probs.data.subarray(off, off + k));
      return;
    }
    const key = `${run}:${layer}`;
    const cached = topkCache.get(key);
    if (cached) {
      const k = cached.probs.shape[1];
      showTopk(layer, pos, cached.strs[pos], cached.probs.data.subarray(pos * k, pos * k + k));
      return;
    }
    tooltip.textContent = live() ? "loading top tokens…" : "top-k not saved with this page (a long prompt): open it with a kernel";
    if (!live()) return;
    const asked = run;
    client
      .request<{ probs: Encoded; strs: string[][] }>("layer_topk", { layer, run: asked })
      .then((r) => {
        topkCache.set(`${asked}:${layer}`, { probs: decodeArray(r.probs), strs: r.strs });
        if (asked === run) hover(layer, pos);
      })
      .catch(fail);
  };

  const drawRank = (): void => {
    rankRow.replaceChildren();
    const rows = layers();
    const nPos = tokens().length;
    const before = dec(viewOf("clean").lens?.answer_rank);
    if (!before) return;
    const after = hasAblation() ? dec(ablation().lens?.answer_rank) : null;
    const table = h("table", { class: "mw-table" });
    const head = h("tr", {}, h("th", {}, `rank of ${showToken(model.get("answer") ?? "")} at the last position`));
    const r0 = h("tr", { "data-testid": "rank-before" }, h("th", {}, "clean"));
    const r1 = h("tr", { "data-testid": "rank-after" }, h("th", {}, "after ablation"));
    for (let i = 0; i < rows.length; i++) {
      head.append(h("th", {}, rows[i]));
      const rank = before.data[i * nPos + nPos - 1];
      const td = h("td", { class: "mw-num" }, String(rank));
      td.style.background = css(sequential(1 / (1 + rank)));
      if (1 / (1 + rank) > 0.6) td.style.color = "white"; // as the lens cells: white on dark
      r0.append(td);
      if (after) {
        const ra = after.data[i * nPos + nPos - 1];
        const ta = h("td", { class: "mw-num" }, String(ra));
        ta.style.background = css(sequential(1 / (1 + ra)));
        if (1 / (1 + ra) > 0.6) ta.style.color = "white";
        r1.append(ta);
      }
    }
    table.append(head, r0);
    if (after) table.append(r1);
    rankRow.append(table);
  };

  const isAblated = (label: string): boolean => {
    const part = parsePart(label);
    const ab = model.get("ablated") ?? {};
    if (part?.head) return (ab.heads ?? []).some((p: number[]) => p[0] === part.head![0] && p[1] === part.head![1]);
    if (part?.mlp !== undefined) return (ab.mlps ?? []).includes(part.mlp);
    return false;
  };

  const drawBars = (): void => {
    bars.replaceChildren();
    const dla = viewOf("clean").dla ?? {};
    const values = dec(dla.values);
    const labels = dla.labels ?? [];
    if (!values) {
      dlaNote.textContent = "No answer given: pass answer= (and wrong_answer=) to show_logit_lens for direct logit attribution.";
      return;
    }
    const afterDla = hasAblation() ? ablation().dla ?? {} : null;
    const after = afterDla ? dec(afterDla.values) : null;
    const wrong = model.get("wrong_answer");
    const metric = wrong ? `logit(${showToken(model.get("answer"))}) − logit(${showToken(wrong)})` : `logit(${showToken(model.get("answer"))})`;
    dlaNote.textContent = `${metric} = ${fmt(dla.total ?? NaN)} (parts + norm bias ${fmt(dla.norm_bias ?? NaN)})` +
      (afterDla ? ` → ${fmt(afterDla.total ?? NaN)} after ablation` : "");
    let scale = 0;
    for (const v of values.data) scale = Math.max(scale, Math.abs(v));
    if (after) for (const v of after.data) scale = Math.max(scale, Math.abs(v));
    scale = scale || 1;
    for (const i of sortParts(values.data, sortKey)) {
      const label = labels[i];
      const part = parsePart(label);
      const v = values.data[i];
      const bar = (x: number, cls: string) => {
        const fill = h("div", { class: `mw-lens-barfill ${cls}` });
        const w = (50 * Math.abs(x)) / scale;
        fill.style.width = `${w}%`;
        fill.style.left = x >= 0 ? "50%" : `${50 - w}%`;
        fill.style.background = css(diverging(x / scale));
        return fill;
      };
      const track = h("div", { class: "mw-lens-bartrack" }, bar(v, "mw-lens-before"));
      if (after) track.append(bar(after.data[i], "mw-lens-after"));
      const row = h(
        "div",
        {
          class: `mw-lens-bar${part && live() ? " mw-lens-clickable" : ""}${isAblated(label) ? " mw-ablated" : ""}`,
          "data-testid": `dla-row-${label.replace(/ /g, "_")}`,
          title: part ? (live() ? `click to ${isAblated(label) ? "restore" : "ablate"} ${label}` : "no kernel: ablation unavailable") : label,
        },
        h("span", { class: "mw-lens-barlabel" }, label),
        track,
        h("span", { class: "mw-num" }, fmt(v) + (after ? ` → ${fmt(after.data[i])}` : "")),
      );
      if (part && live()) row.addEventListener("click", () => toggle(label));
      bars.append(row);
    }
  };

  const drawHeatmap = (): void => {
    heatBox.classList.toggle("mw-empty", !showHeatmap);
    heatButton.textContent = showHeatmap ? "Hide heads × positions" : "Heads × positions";
    if (!showHeatmap) return;
    const dla = viewOf(run).dla ?? {};
    const hp = dec(dla.head_positions);
    if (!hp) return;
    const [nL, nH, nPos] = hp.shape;
    let scale = 0;
    for (const v of hp.data) scale = Math.max(scale, Math.abs(v));
    scale = scale || 1;
    const rowLabels: string[] = [];
    for (let l = 0; l < nL; l++) for (let hd = 0; hd < nH; hd++) rowLabels.push(`L${l}H${hd}`);
    heatmap.draw({ rows: nL * nH, cols: nPos, value: (i, j) => hp.data[i * nPos + j] / scale, color: diverging, rowLabels, colLabels: tokens() });
    heatmap.onHover = (c) => {
      if (c) tooltip.textContent = `${rowLabels[c.i]} reading position ${c.j} (${showToken(tokens()[c.j] ?? "")}): ${fmt(hp.data[c.i * nPos + c.j])}`;
    };
    heatmap.onClick = (c) => toggle(rowLabels[c.i]);
  };

  const drawNorms = (): void => {
    normBox.replaceChildren();
    const clean = dec(viewOf("clean").norms?.mean);
    if (!clean) return;
    const after = hasAblation() ? dec(ablation().norms?.mean) : null;
    const all = [...clean.data, ...(after ? after.data : [])].filter((v) => v > 0);
    const lo = Math.min(...all);
    const hi = Math.max(...all);
    const W = 260;
    const H = 120;
    const pad = 30;
    const box = svg("svg", { width: W + pad + 10, height: H + 40, class: "mw-lens-normsvg" });
    const line = (vals: ArrayLike<number>, colour: string, id: string) => {
      const pts = logLine(vals, lo, hi, W, H).map(([x, y]) => `${(x + pad).toFixed(1)},${(y + 10).toFixed(1)}`);
      box.append(svg("polyline", { points: pts.join(" "), fill: "none", stroke: colour, "stroke-width": 2, "data-testid": id }));
    };
    box.append(svg("text", { x: 0, y: 14, "font-size": 10 }, fmt(hi, 1)), svg("text", { x: 0, y: H + 10, "font-size": 10 }, fmt(lo, 1)));
    const rows = layers();
    rows.forEach((r, i) => {
      const x = pad + (rows.length > 1 ? (i / (rows.length - 1)) * W : W / 2);
      box.append(svg("text", { x: x - 10, y: H + 30, "font-size": 9 }, r.replace(" pre", "")));
    });
    line(clean.data, "#1f6feb", "norm-clean");
    if (after) line(after.data, "#d1242f", "norm-after");
    const growth = viewOf("clean").norms?.fitted_growth;
    normBox.append(box, h("div", { class: "mw-note" }, `fitted growth ×${fmt(growth ?? NaN, 3)} per layer` + (after ? " — blue: clean, red: after ablation" : "")));
  };

  const drawPredictions = (): void => {
    preds.replaceChildren();
    const before = viewOf("clean").predictions;
    if (!before?.tokens) return;
    const after = hasAblation() ? ablation().predictions : null;
    const columns: PredictionsColumn[] = [{ label: "next token", ...before }];
    if (after?.tokens) columns.push({ label: "after ablation", ...after, cellTestid: "after" });
    preds.append(h("div", { class: "mw-subtitle" }, "Next-token predictions at the last position"), predictionsTable(columns));
  };

  const drawControls = (): void => {
    modeSelect.value = model.get("ablation_mode") ?? "zero";
    const resample = modeSelect.querySelector('option[value="resample"]') as HTMLOptionElement;
    resample.disabled = !model.get("has_ablation_prompt");
    resample.title = "needs ablation_prompt= in show_logit_lens";
    const ab = model.get("ablated") ?? {};
    clearButton.disabled = !live() || !((ab.heads ?? []).length || (ab.mlps ?? []).length);
    modeSelect.disabled = !live();
  };

  const drawAll = (): void => {
    drawTitle();
    drawToggle();
    drawGrid();
    drawRank();
    drawBars();
    drawHeatmap();
    drawNorms();
    drawPredictions();
    drawControls();
  };

  // ------------------------------------------------------------------ actions
  function setAblation(heads: number[][], mlps: number[]): void {
    w.ask("ablate", { heads, mlps, mode: modeSelect.value });
  }

  function toggle(label: string): void {
    const part = parsePart(label);
    if (!part || !live()) return;
    const ab = model.get("ablated") ?? {};
    let heads: number[][] = [...(ab.heads ?? [])];
    let mlps: number[] = [...(ab.mlps ?? [])];
    if (part.head) {
      const [l, hd] = part.head;
      heads = heads.some((p) => p[0] === l && p[1] === hd) ? heads.filter((p) => !(p[0] === l && p[1] === hd)) : [...heads, [l, hd]];
    } else if (part.mlp !== undefined) {
      mlps = mlps.includes(part.mlp) ? mlps.filter((m) => m !== part.mlp) : [...mlps, part.mlp];
    }
    setAblation(heads, mlps);
  }

  sortSelect.addEventListener("change", () => {
    sortKey = sortSelect.value;
    drawBars();
  });
  modeSelect.addEventListener("change", () => {
    const ab = model.get("ablated") ?? {};
    if ((ab.heads ?? []).length || (ab.mlps ?? []).length) setAblation(ab.heads ?? [], ab.mlps ?? []);
    else {
      w.set("ablation_mode", modeSelect.value);
    }
  });
  clearButton.addEventListener("click", () => setAblation([], []));
  heatButton.addEventListener("click", () => {
    showHeatmap = !showHeatmap;
    drawHeatmap();
  });

  const onAblation = (): void => {
    topkCache.clear();
    // show the ablated run as soon as there is one
    run = hasAblation() ? "ablated" : "clean";
    drawAll();
  };
  const onData = (): void => {
    topkCache.clear();
    drawAll();
  };
  // a long prompt's lens comes first at its last positions: ask for the rest once drawn
  const complete = (): void => {
    const partial = (model.get("lens")?.computed_from ?? 0) > 0 || (ablation().lens?.computed_from ?? 0) > 0;
    if (partial && live()) w.ask("complete_lens", {});
  };
  w.on("ablation", onAblation);
  const onAblated = (): void => {
    drawBars();
    drawControls();
  };
  w.on("ablated", onAblated);
  w.on(["lens", "dla", "norms"], onData);
  w.on(["lens", "ablation"], complete);
  if (hasAblation()) run = "ablated";
  drawAll();
  complete();

  return w.dispose;
}

export default { render };
