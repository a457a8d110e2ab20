// The attention widget's frontend: token strip, layer × head thumbnails, sortable head scores,
// a selected head's full pattern, and live ablation. Everything on screen is drawn from traits
// (so saved notebooks render with no kernel); clicks become requests to the kernel.

import { decodeArray, isEncoded, type Encoded, type NDArray } from "./lib/array";
import { sequential, diverging, css } from "./lib/colormap";
import { clip, fmt, h, showToken } from "./lib/dom";
import { HeatmapView, legend } from "./lib/heatmap";
import { meanLoss, predictionsTable, type Predictions } from "./lib/predictions";
import { Widget, type OrEmpty, type StatusTraits, type WidgetProps } from "./lib/widget";

interface Ablation {
  heads?: number[][];
  mode?: string;
  before?: Predictions;
  after?: Predictions;
  loss_before?: Encoded;
  loss_after?: Encoded;
  changed?: { layer: number; head: number; change: number }[];
}

/** The synced traits of mechwidgets/widgets/attention.py:AttentionWidget. */
export interface AttentionTraits extends StatusTraits {
  prompt: string;
  tokens: string[];
  n_layers: number;
  n_heads: number;
  /** The layers shown (rows of thumbnails and scores). */
  layers: number[];
  /** uint8 [layers, heads, t, t] thumbnails of every pattern (255 = probability 1). */
  thumbnails: OrEmpty<Encoded>;
  /** Head scores by name, each [layers, heads]. */
  scores: Record<string, Encoded>;
  selected: OrEmpty<{ layer: number; head: number }>;
  /** The selected head's float32 [dest, src] pattern. */
  pattern: OrEmpty<Encoded>;
  ablation_mode: string;
  ablated: number[][];
  has_ablation_prompt: boolean;
  ablation: Ablation;
  live: boolean;
}

const SCORE_LABELS: Record<string, string> = {
  previous_token: "prev token",
  duplicate_token: "duplicate",
  induction: "induction",
  first_token: "first token",
};

export function render({ model, el }: WidgetProps<AttentionTraits>): () => void {
  const w = new Widget(model, el, "mw-attention");
  const { root, client, fail } = w;
  const live = (): boolean => model.get("live") !== false;

  // ------------------------------------------------------------------ state
  const layerCache = new Map<number, { data: NDArray; scale: number }>();
  let selected: { layer: number; head: number } | null = null;
  let selectedPattern: (NDArray & { approx?: boolean }) | null = null;
  let sortKey = "induction";
  let hoverToken: number | null = null;
  const tokens = (): string[] => model.get("tokens") ?? [];
  const nHeads = (): number => model.get("n_heads");
  const layers = (): number[] => model.get("layers") ?? [];

  // ------------------------------------------------------------------ layout
  const title = h("div", { class: "mw-title" });
  const strip = h("div", { class: "mw-token-strip", "data-testid": "token-strip" });
  const stripNote = h("div", { class: "mw-note" });
  const grid = h("div", { class: "mw-thumb-grid", "data-testid": "thumb-grid" });
  const sortSelect = h("select", { class: "mw-select", "aria-label": "sort heads by" });
  for (const [key, label] of Object.entries(SCORE_LABELS)) sortSelect.append(h("option", { value: key }, label));
  const scoreTable = h("table", { class: "mw-table mw-scores", "data-testid": "score-table" });
  const detailTitle = h("div", { class: "mw-subtitle", "data-testid": "detail-title" }, "Click a head to see its pattern");
  const heatmap = new HeatmapView();
  // hidden until a head is drawn (an empty canvas would show as a blank 300×150 box)
  const detailPlot = h("div", { class: "mw-detail-plot mw-empty" }, heatmap.el, legend(sequential, 0, 1, "attention probability"));
  const tooltip = h("div", { class: "mw-tooltip", "data-testid": "tooltip" });
  const modeSelect = h("select", { class: "mw-select", "aria-label": "ablation mode" });
  for (const m of ["zero", "mean", "resample"]) modeSelect.append(h("option", { value: m }, `${m} ablation`));
  const ablateButton = h("button", { class: "mw-button", "data-testid": "ablate-button" }, "Ablate this head");
  const ablatedList = h("div", { class: "mw-chips", "data-testid": "ablated-list" });
  const results = h("div", { class: "mw-ablation-results", "data-testid": "ablation-results" });

  root.append(
    title,
    strip,
    stripNote,
    h(
      "div",
      { class: "mw-row" },
      h("div", { class: "mw-col" }, h("div", { class: "mw-subtitle" }, "Layers × heads (click to inspect)"), grid),
      h(
        "div",
        { class: "mw-col" },
        h("div", { class: "mw-subtitle" }, "Head scores — sort by ", sortSelect),
        h("div", { class: "mw-scroll" }, scoreTable),
      ),
      h(
        "div",
        { class: "mw-col" },
        detailTitle,
        detailPlot,
        tooltip,
      ),
    ),
    h("div", { class: "mw-row mw-controls" }, modeSelect, ablateButton, ablatedList),
    results,
  );

  // ------------------------------------------------------------------ helpers
  const scores = (): Record<string, NDArray> => {
    const out: Record<string, NDArray> = {};
    const raw = model.get("scores") ?? {};
    for (const k of Object.keys(raw)) if (isEncoded(raw[k])) out[k] = decodeArray(raw[k]);
    return out;
  };

  const requestLayer = (layer: number): Promise<void> => {
    // Patterns need the kernel, not a model: a view of precomputed patterns (live = false) asks too.
    if (layerCache.has(layer)) return Promise.resolve();
    return client
      .request<{ layer: number; patterns: Encoded; scale: number }>(`layer_patterns`, { layer })
      .then((r) => {
        layerCache.set(r.layer, { data: decodeArray(r.patterns), scale: r.scale });
        // a click that came before its layer is answered by the layer (which the kernel sends
        // first), not by the select_head reply queued behind it
        if (selected?.layer === r.layer && (!selectedPattern || selectedPattern.approx)) drawDetail();
      });
  };

  /** A head's [dest, src] pattern; `approx` when it is the 8-bit thumbnail, not the float data. */
  const patternOf = (layer: number, head: number): (NDArray & { approx?: boolean }) | null => {
    // the kernel's float32 `pattern` trait first (exact), then the layer cache (float16)
    const sel = model.get("selected");
    const pat = model.get("pattern");
    if (sel && sel.layer === layer && sel.head === head && isEncoded(pat)) return decodeArray(pat);
    const cached = layerCache.get(layer);
    if (cached) {
      const n = tokens().length;
      const size = n * n;
      const out = new Float32Array(size);
      const off = head * size;
      for (let k = 0; k < size; k++) out[k] = cached.data.data[off + k] * cached.scale;
      return { dtype: "float32", shape: [n, n], data: out };
    }
    // With no kernel (a saved notebook, an HTML export) the thumbnails are all there is; for a
    // prompt of at most THUMBNAIL_SIZE tokens they hold the whole pattern, in 8 bits.
    const thumbsRaw = model.get("thumbnails");
    const li = layers().indexOf(layer);
    if (isEncoded(thumbsRaw) && li >= 0) {
      const [, nH, t] = thumbsRaw.shape;
      const n = tokens().length;
      if (t === n && head < nH) {
        const thumbs = decodeArray(thumbsRaw);
        const out = new Float32Array(n * n);
        const off = (li * nH + head) * n * n;
        for (let k = 0; k < n * n; k++) out[k] = thumbs.data[off + k] / 255;
        return { dtype: "float32", shape: [n, n], data: out, approx: true };
      }
    }
    return null;
  };

  // ------------------------------------------------------------------ drawing
  const drawTitle = (): void => {
    const n = tokens().length;
    const plural = (k: number, word: string): string => `${k} ${word}${k === 1 ? "" : "s"}`;
    title.textContent = `Attention — ${plural(n, "token")}, ${plural(model.get("n_layers"), "layer")} × ${plural(nHeads(), "head")}` + (live() ? "" : " (static view: no model)");
  };

  // The token spans are built once per token list and repainted in place on hover: rebuilding
  // them under the pointer detaches the hovered span (its mouseleave never fires) and makes the
  // browser fire mouseenter on the new one, redrawing the strip in a loop.
  let stripSpans: HTMLSpanElement[] = [];
  let stripTokens: string[] | null = null;
  const buildStrip = (): void => {
    const toks = tokens();
    if (stripTokens === toks && stripSpans.length === toks.length) return;
    stripTokens = toks;
    stripSpans = toks.map((tok, k) => {
      const span = h("span", { class: "mw-token", title: `position ${k}: ${JSON.stringify(tok)}`, "data-pos": k }, showToken(tok));
      span.addEventListener("mouseenter", () => {
        hoverToken = k;
        drawStrip();
        heatmap.highlight(selectedPattern ? { row: k } : null);
      });
      span.addEventListener("mouseleave", () => {
        if (hoverToken !== k) return;
        hoverToken = null;
        drawStrip();
        heatmap.highlight(null);
      });
      return span;
    });
    strip.replaceChildren(...stripSpans);
  };

  const drawStrip = (): void => {
    buildStrip();
    const toks = tokens();
    const pat = selectedPattern;
    const n = toks.length;
    if (hoverToken !== null && hoverToken >= n) hoverToken = null;
    stripSpans.forEach((span, k) => {
      let bg = "";
      if (pat && hoverToken !== null) {
        if (k <= hoverToken) bg = css(sequential(pat.data[hoverToken * n + k])); // what hover attends to
        if (k > hoverToken) bg = css(diverging(-pat.data[k * n + hoverToken])); // what attends to hover
      }
      span.style.background = bg;
      span.classList.toggle("mw-token-hover", k === hoverToken);
    });
    if (!pat) stripNote.textContent = "Select a head, then hover a token: blue = what it attends to, violet = what attends to it.";
    else if (hoverToken === null) stripNote.textContent = `Hover a token to see, for L${selected?.layer}H${selected?.head}, what it attends to (blue, earlier tokens) and what attends to it (violet, later tokens).`;
    else {
      const row = Array.from({ length: hoverToken + 1 }, (_, k) => [k, pat.data[hoverToken! * n + k]] as const).sort((a, b) => b[1] - a[1]);
      const best = row.slice(0, 3).map(([k, p]) => `${clip(showToken(toks[k]), 12)}@${k} ${fmt(p, 2)}`);
      stripNote.textContent = `${showToken(toks[hoverToken])}@${hoverToken} attends most to: ${best.join(", ")}`;
    }
  };

  // The grid's canvases are painted once per thumbnails value; selection, ablation and sorting
  // only update classes and labels (a GPT-2-sized grid has 144 canvases).
  let gridCells: { layer: number; head: number; idx: number; cell: HTMLDivElement; score: HTMLSpanElement }[] = [];
  let gridThumbs: unknown = null;
  const buildGrid = (): void => {
    const thumbsRaw = model.get("thumbnails");
    if (thumbsRaw === gridThumbs && gridCells.length) return;
    gridThumbs = thumbsRaw;
    gridCells = [];
    grid.replaceChildren();
    if (!isEncoded(thumbsRaw)) return;
    const thumbs = decodeArray(thumbsRaw);
    const [nL, nH, t] = thumbs.shape;
    const ls = layers();
    grid.style.gridTemplateColumns = `auto repeat(${nH}, 44px)`;
    grid.append(h("div", {}));
    for (let hd = 0; hd < nH; hd++) grid.append(h("div", { class: "mw-axis" }, `H${hd}`));
    for (let li = 0; li < nL; li++) {
      const layer = ls[li];
      grid.append(h("div", { class: "mw-axis" }, `L${layer}`));
      for (let hd = 0; hd < nH; hd++) {
        const canvas = h("canvas", { width: t, height: t, class: "mw-thumb-canvas" });
        const ctx = canvas.getContext("2d");
        if (ctx) {
          const img = ctx.createImageData(t, t);
          const off = (li * nH + hd) * t * t;
          for (let k = 0; k < t * t; k++) {
            const [r, g, b] = sequential(thumbs.data[off + k] / 255);
            img.data[4 * k] = r;
            img.data[4 * k + 1] = g;
            img.data[4 * k + 2] = b;
            img.data[4 * k + 3] = 255;
          }
          ctx.putImageData(img, 0, 0);
        }
        const score = h("span", { class: "mw-thumb-score" });
        const cell = h(
          "div",
          { class: "mw-thumb", "data-layer": layer, "data-head": hd, "data-testid": `thumb-${layer}-${hd}` },
          canvas,
          score,
        );
        cell.addEventListener("mouseenter", () => void requestLayer(layer).catch(fail));
        cell.addEventListener("click", () => selectHead(layer, hd));
        grid.append(cell);
        gridCells.push({ layer, head: hd, idx: li * nH + hd, cell, score });
      }
    }
  };

  const drawGrid = (): void => {
    buildGrid();
    const sc = scores()[sortKey];
    const ablated: number[][] = model.get("ablated") ?? [];
    for (const g of gridCells) {
      const value = sc ? sc.data[g.idx] : NaN;
      g.cell.classList.toggle("mw-selected", selected?.layer === g.layer && selected?.head === g.head);
      g.cell.classList.toggle("mw-ablated", ablated.some((p) => p[0] === g.layer && p[1] === g.head));
      g.cell.title = `L${g.layer}H${g.head} — ${SCORE_LABELS[sortKey]} score ${fmt(value, 2)}`;
      g.score.textContent = Number.isFinite(value) ? fmt(value, 2) : "";
    }
  };

  /** Mark the selected head's row in the score table (without rebuilding the table). */
  const markScoreRows = (): void => {
    for (const tr of Array.from(scoreTable.querySelectorAll<HTMLTableRowElement>("tbody tr"))) {
      const on = !!selected && tr.dataset.testid === `score-row-${selected.layer}-${selected.head}`;
      tr.classList.toggle("mw-selected", on);
    }
  };

  const drawScores = (): void => {
    scoreTable.replaceChildren();
    const sc = scores();
    const keys = Object.keys(SCORE_LABELS).filter((k) => sc[k]);
    const head = h("tr", {}, h("th", {}, "head"));
    for (const k of keys) {
      const th = h("th", { class: "mw-sortable" + (k === sortKey ? " mw-sorted" : ""), "data-key": k, title: `sort by ${SCORE_LABELS[k]}` }, SCORE_LABELS[k] + (k === sortKey ? " ▼" : ""));
      th.addEventListener("click", () => setSort(k));
      head.append(th);
    }
    scoreTable.append(h("thead", {}, head));
    const body = h("tbody", {});
    const ls = layers();
    const nH = nHeads();
    const rows: { layer: number; head: number; idx: number }[] = [];
    ls.forEach((layer, li) => {
      for (let hd = 0; hd < nH; hd++) rows.push({ layer, head: hd, idx: li * nH + hd });
    });
    const key = sc[sortKey];
    if (key) rows.sort((a, b) => key.data[b.idx] - key.data[a.idx]);
    for (const r of rows) {
      const tr = h("tr", { class: selected?.layer === r.layer && selected?.head === r.head ? "mw-selected" : "", "data-testid": `score-row-${r.layer}-${r.head}` }, h("td", {}, `L${r.layer}H${r.head}`));
      for (const k of keys) {
        const v = sc[k].data[r.idx];
        const td = h("td", { class: "mw-num" }, fmt(v, 2));
        td.style.background = css(sequential(v * 0.8));
        tr.append(td);
      }
      tr.addEventListener("click", () => selectHead(r.layer, r.head));
      body.append(tr);
    }
    scoreTable.append(body);
  };

  const drawDetail = (): void => {
    const n = tokens().length;
    if (!selected) return;
    const pat = patternOf(selected.layer, selected.head);
    selectedPattern = pat;
    if (!pat) {
      detailTitle.textContent = `L${selected.layer}H${selected.head}: loading…`;
      return;
    }
    detailTitle.textContent = `L${selected.layer}H${selected.head} pattern (rows: destination token, columns: source token)` + (pat.approx ? " — 8-bit copy from the thumbnails" : "");
    detailPlot.classList.remove("mw-empty");
    heatmap.draw({
      rows: n,
      cols: n,
      value: (i, j) => pat.data[i * n + j],
      color: sequential,
      rowLabels: tokens(),
      colLabels: tokens(),
      masked: (i, j) => j > i,
    });
    drawStrip();
  };

  heatmap.onHover = (c) => {
    if (!c || !selectedPattern) {
      tooltip.textContent = "";
      return;
    }
    const toks = tokens();
    const n = toks.length;
    tooltip.textContent = `${showToken(toks[c.i])}@${c.i} → ${showToken(toks[c.j])}@${c.j}: ${fmt(selectedPattern.data[c.i * n + c.j], 4)}`;
  };

  const drawAblation = (): void => {
    const ablated: number[][] = model.get("ablated") ?? [];
    ablatedList.replaceChildren();
    if (ablated.length === 0) ablatedList.append(h("span", { class: "mw-note" }, live() ? "No head ablated." : "No model behind this view (a saved or exported page, or precomputed patterns): ablation is unavailable."));
    for (const [l, hd] of ablated) {
      const chip = h("span", { class: "mw-chip" }, `L${l}H${hd} `);
      const x = h("button", { class: "mw-chip-x", title: "restore this head", "data-testid": `unablate-${l}-${hd}` }, "×");
      x.addEventListener("click", () => setAblation(ablated.filter((p) => !(p[0] === l && p[1] === hd))));
      chip.append(x);
      ablatedList.append(chip);
    }
    const isAbl = selected && ablated.some((p) => p[0] === selected!.layer && p[1] === selected!.head);
    ablateButton.textContent = !selected ? "Select a head to ablate it" : isAbl ? `Restore L${selected.layer}H${selected.head}` : `Ablate L${selected.layer}H${selected.head}`;
    ablateButton.disabled = !selected || !live();
    modeSelect.value = model.get("ablation_mode") ?? "zero";
    const resampleOption = modeSelect.querySelector('option[value="resample"]') as HTMLOptionElement;
    resampleOption.disabled = !model.get("has_ablation_prompt");
    resampleOption.title = "needs ablation_prompt= in show_attention";

    results.replaceChildren();
    const ab: Ablation = model.get("ablation") ?? {};
    if (!ab.before || !ab.after) return;
    const heads = (ab.heads ?? []).map(([l, hd]) => `L${l}H${hd}`).join(", ") || "none";
    const predTable = predictionsTable(
      [
        { label: "before", ...ab.before },
        { label: `after (${ab.mode}: ${heads})`, ...ab.after, cellTestid: "after" },
      ],
      "predictions",
    );
    // per-token loss, before vs after
    const lossBox = h("div", { class: "mw-loss", "data-testid": "loss" });
    if (ab.loss_before && ab.loss_after) {
      const lb = decodeArray(ab.loss_before);
      const la = decodeArray(ab.loss_after);
      const toks = tokens();
      lossBox.append(h("div", { class: "mw-subtitle" }, `Per-token loss (predicting the next token): mean ${fmt(meanLoss(ab.loss_before), 3)} → ${fmt(meanLoss(ab.loss_after), 3)}`));
      const row = h("div", { class: "mw-token-strip" });
      for (let k = 0; k < lb.data.length; k++) {
        const d = la.data[k] - lb.data[k];
        const span = h("span", { class: "mw-token", title: `predicting ${JSON.stringify(toks[k + 1])} at position ${k}: loss ${fmt(lb.data[k])} → ${fmt(la.data[k])} (${d >= 0 ? "+" : ""}${fmt(d)})` }, showToken(toks[k + 1] ?? ""));
        span.style.background = css(diverging(d / 2));
        row.append(span);
      }
      lossBox.append(row, legend((v) => diverging(v / 2), -2, 2, "loss change (red: worse after ablation)"));
    }
    const changed = h("div", { class: "mw-changed", "data-testid": "changed-heads" }, h("div", { class: "mw-subtitle" }, "Downstream heads whose pattern changed most (mean total-variation distance)"));
    const changedList = ab.changed ?? [];
    if (changedList.length === 0) changed.append(h("div", { class: "mw-note" }, "none"));
    for (const c of changedList) {
      const item = h("div", { class: "mw-changed-item", title: "click to inspect" }, `L${c.layer}H${c.head}: ${fmt(c.change, 3)}`);
      item.addEventListener("click", () => selectHead(c.layer, c.head));
      changed.append(item);
    }
    results.append(h("div", { class: "mw-row" }, predTable, h("div", { class: "mw-col" }, lossBox, changed)));
  };

  const drawAll = (): void => {
    drawTitle();
    drawGrid();
    drawScores();
    drawDetail();
    drawStrip();
    drawAblation();
  };

  // ------------------------------------------------------------------ actions
  function selectHead(layer: number, head: number): void {
    selected = { layer, head };
    // ask first, so the kernel works while this redraws
    client
      .request("select_head", { layer, head })
      .then(() => requestLayer(layer))
      .catch(fail);
    drawGrid();
    markScoreRows();
    drawDetail(); // from the layer cache when we have it: no kernel round trip
    drawAblation();
  }

  function setSort(key: string): void {
    sortKey = key;
    sortSelect.value = key;
    drawScores();
    drawGrid();
  }

  function setAblation(heads: number[][]): void {
    w.ask("ablate", { heads, mode: modeSelect.value });
  }

  sortSelect.value = sortKey;
  sortSelect.addEventListener("change", () => setSort(sortSelect.value));
  modeSelect.addEventListener("change", () => {
    const ablated: number[][] = model.get("ablated") ?? [];
    if (ablated.length) setAblation(ablated);
    else {
      w.set("ablation_mode", modeSelect.value);
    }
  });
  ablateButton.addEventListener("click", () => {
    if (!selected) return;
    const ablated: number[][] = model.get("ablated") ?? [];
    const on = ablated.some((p) => p[0] === selected!.layer && p[1] === selected!.head);
    setAblation(on ? ablated.filter((p) => !(p[0] === selected!.layer && p[1] === selected!.head)) : [...ablated, [selected.layer, selected.head]]);
  });

  // ------------------------------------------------------------------ trait changes
  const onSelected = (): void => {
    const sel = model.get("selected");
    if (sel && typeof sel.layer === "number" && (selected?.layer !== sel.layer || selected?.head !== sel.head)) {
      selected = { layer: sel.layer, head: sel.head };
      drawGrid();
      markScoreRows();
      drawAblation();
    }
    drawDetail();
  };
  const onAblation = (): void => {
    drawGrid();
    drawAblation();
  };
  const onData = (): void => {
    layerCache.clear();
    drawAll();
  };
  w.on(["selected", "pattern"], onSelected);
  w.on(["ablation", "ablated"], onAblation);
  w.on(["thumbnails", "scores"], onData);

  const sel = model.get("selected");
  if (sel && typeof sel.layer === "number") selected = { layer: sel.layer, head: sel.head };
  drawAll();
  if (selected) void requestLayer(selected.layer).catch(fail);

  return w.dispose;
}

export default { render };
