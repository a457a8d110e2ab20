// The activation-patching widget's frontend. The attribution grid (a gradient approximation) is
// drawn at once; the exact grid streams in layer by layer. Toggling direction, metric or
// component redraws from the `grids` trait when that view is cached (no kernel round trip).

import { decodeArray, isEncoded, type Encoded, type NDArray } from "./lib/array";
import { css, diverging, sequential } from "./lib/colormap";
import { clip, fmt, h, showToken } from "./lib/dom";
import { HeatmapView, legend } from "./lib/heatmap";
import { predictionsTable } from "./lib/predictions";
import { Widget, type StatusTraits, type WidgetProps } from "./lib/widget";

export interface Grid {
  attribution?: Encoded;
  exact?: Encoded;
  exact_done?: number;
  rows: string[];
  cols: string[];
  row_axis: string;
  col_axis: string;
  baselines: { clean: number; corrupted: number };
  normalized: boolean;
  answer?: string;
  wrong_answer?: string;
}

interface Detail {
  title?: string;
  kind?: "head" | "logits";
  tokens?: string[];
  clean_pattern?: Encoded;
  corrupted_pattern?: Encoded;
  top_tokens?: string[];
  top_probs?: Encoded;
  base_tokens?: string[];
  base_probs?: Encoded;
  value?: number;
}

/** The synced traits of mechwidgets/widgets/patching.py:PatchingWidget. */
export interface PatchingTraits extends StatusTraits {
  clean_tokens: string[];
  corrupted_tokens: string[];
  /** Positions where the corrupted prompt differs from the clean one. */
  differing: number[];
  answer: string;
  wrong_answer: string;
  answer_note: string;
  component: string;
  direction: string;
  metric: string;
  components: string[];
  metrics: string[];
  /** Computed views by gridKey(component, direction, metric). */
  grids: Record<string, Grid>;
  /** Replacement tokens proposed for the clicked clean position. */
  candidates: { pos?: number; tokens?: string[] };
  detail: Detail;
  n_layers: number;
  n_heads: number;
}

const DIRECTION_HELP: Record<string, string> = {
  denoising:
    "Denoising: run the corrupted prompt and patch in one clean activation. 1 = this component alone restores the clean behaviour (it is sufficient).",
  noising:
    "Noising: run the clean prompt and patch in one corrupted activation. 1 = this component alone breaks the behaviour (it is necessary).",
};

const METRIC_LABELS: Record<string, string> = {
  logit_diff: "logit difference",
  logprob: "log prob of answer",
  prob: "prob of answer",
  kl: "KL to clean",
};

export function gridKey(component: string, direction: string, metric: string): string {
  return `${component}|${direction}|${metric}`;
}

/** A standalone SVG document of a grid (for download and the static picture). */
export function gridSvg(values: NDArray, rows: string[], cols: string[], title: string, scale: number): string {
  const [nr, nc] = values.shape;
  const cell = 14;
  const left = 90;
  const top = 110;
  const w = left + nc * cell + 20;
  const hgt = top + nr * cell + 20;
  const esc = (s: string) => s.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;").replace(/"/g, "&quot;");
  const parts = [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${w}" height="${hgt}" font-family="sans-serif" font-size="9">`,
    `<rect width="${w}" height="${hgt}" fill="white"/>`,
    `<text x="4" y="14" font-size="12">${esc(title)}</text>`,
  ];
  rows.forEach((r, i) => parts.push(`<text x="${left - 4}" y="${top + i * cell + 10}" text-anchor="end">${esc(clip(r, 14))}</text>`));
  cols.forEach((c, j) => parts.push(`<text transform="translate(${left + j * cell + 9},${top - 4}) rotate(-60)">${esc(clip(showToken(c), 14))}</text>`));
  for (let i = 0; i < nr; i++) {
    for (let j = 0; j < nc; j++) {
      const v = values.data[i * nc + j];
      const fill = Number.isFinite(v) ? css(diverging(v / scale)) : "#f0f0f0";
      parts.push(`<rect x="${left + j * cell}" y="${top + i * cell}" width="${cell}" height="${cell}" fill="${fill}"><title>${esc(`${rows[i]}, ${cols[j]}: ${fmt(v)}`)}</title></rect>`);
    }
  }
  parts.push("</svg>");
  return parts.join("");
}

function download(name: string, blob: Blob): void {
  const url = URL.createObjectURL(blob);
  const a = h("a", { href: url, download: name });
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 1000);
}

export function render({ model, el }: WidgetProps<PatchingTraits>): () => void {
  const w = new Widget(model, el, "mw-patching");
  const { root, ask } = w;
  // A new corrupted prompt or new answers clear the grids: compute the current view again.
  const askThenView = (kind: string, args: Record<string, unknown>): void => {
    w.request(kind, args)
      .then(() => setView({}))
      .catch(w.fail);
  };

  // ------------------------------------------------------------------ layout
  const title = h("div", { class: "mw-title" }, "Activation patching");
  const cleanStrip = h("div", { class: "mw-token-strip", "data-testid": "clean-tokens" });
  const corruptStrip = h("div", { class: "mw-token-strip", "data-testid": "corrupted-tokens" });
  const candidates = h("div", { class: "mw-candidates", "data-testid": "candidates" });
  const corruptInput = h("input", { class: "mw-input", type: "text", placeholder: "or type a full corrupted prompt (same number of tokens)", "data-testid": "corrupted-input" });
  const corruptButton = h("button", { class: "mw-button", "data-testid": "corrupted-apply" }, "Use corrupted prompt");
  const answerInput = h("input", { class: "mw-input mw-input-short", type: "text", "aria-label": "answer", "data-testid": "answer" });
  const wrongInput = h("input", { class: "mw-input mw-input-short", type: "text", "aria-label": "wrong answer", "data-testid": "wrong-answer" });
  const answerButton = h("button", { class: "mw-button", "data-testid": "answers-apply" }, "Set answers");
  const answerNote = h("span", { class: "mw-note" });
  const directionBox = h("div", { class: "mw-toggle", role: "radiogroup", "data-testid": "direction" });
  const metricSelect = h("select", { class: "mw-select", "aria-label": "metric", "data-testid": "metric" });
  const componentSelect = h("select", { class: "mw-select", "aria-label": "component", "data-testid": "component" });
  const directionHelp = h("div", { class: "mw-note", "data-testid": "direction-help" });
  const baselines = h("div", { class: "mw-note", "data-testid": "baselines" });
  const exactTitle = h("div", { class: "mw-subtitle", "data-testid": "exact-title" }, "Exact patching");
  const attribTitle = h("div", { class: "mw-subtitle" }, "Attribution patching (gradient approximation)");
  const exactMap = new HeatmapView();
  const attribMap = new HeatmapView();
  exactMap.el.setAttribute("data-testid", "exact-grid");
  attribMap.el.setAttribute("data-testid", "attribution-grid");
  const tooltip = h("div", { class: "mw-tooltip", "data-testid": "tooltip" });
  const legendBox = h("div", {});
  const scatter = h("canvas", { class: "mw-scatter", width: 220, height: 220, "data-testid": "scatter" });
  const scatterNote = h("div", { class: "mw-note" });
  const svgButton = h("button", { class: "mw-button", "data-testid": "download-svg" }, "Download SVG");
  const pngButton = h("button", { class: "mw-button", "data-testid": "download-png" }, "Download PNG");
  const detail = h("div", { class: "mw-detail", "data-testid": "detail" });

  root.append(
    title,
    h("div", { class: "mw-subtitle" }, "Clean prompt — click a token to corrupt it"),
    cleanStrip,
    candidates,
    h("div", { class: "mw-row mw-controls" }, corruptInput, corruptButton),
    h("div", { class: "mw-subtitle" }, "Corrupted prompt"),
    corruptStrip,
    h("div", { class: "mw-row mw-controls" }, "answer ", answerInput, " vs wrong answer ", wrongInput, answerButton, answerNote),
    h("div", { class: "mw-row mw-controls" }, directionBox, metricSelect, componentSelect, svgButton, pngButton),
    directionHelp,
    baselines,
    h(
      "div",
      { class: "mw-row" },
      h("div", { class: "mw-col" }, exactTitle, exactMap.el),
      h("div", { class: "mw-col" }, attribTitle, attribMap.el),
      h("div", { class: "mw-col" }, h("div", { class: "mw-subtitle" }, "Attribution vs exact"), scatter, scatterNote),
    ),
    legendBox,
    tooltip,
    detail,
  );

  // ------------------------------------------------------------------ helpers
  const current = (): { key: string; grid: Grid | undefined } => {
    const key = gridKey(model.get("component"), model.get("direction"), model.get("metric"));
    return { key, grid: (model.get("grids") ?? {})[key] };
  };
  const decoded = (g: Grid | undefined, which: "exact" | "attribution"): NDArray | null => {
    const enc = g?.[which];
    return isEncoded(enc) ? decodeArray(enc) : null;
  };
  const scaleOf = (...arrays: (NDArray | null)[]): number => {
    let m = 0;
    for (const a of arrays) if (a) for (const v of a.data) if (Number.isFinite(v)) m = Math.max(m, Math.abs(v));
    return m || 1;
  };

  // ------------------------------------------------------------------ drawing
  const drawTokens = (): void => {
    const clean: string[] = model.get("clean_tokens") ?? [];
    const corrupted: string[] = model.get("corrupted_tokens") ?? [];
    const diff = new Set<number>(model.get("differing") ?? []);
    cleanStrip.replaceChildren();
    clean.forEach((tok, k) => {
      const span = h("button", { class: "mw-token mw-token-button" + (diff.has(k) ? " mw-token-diff" : ""), title: `position ${k}: ${JSON.stringify(tok)} — click to replace`, "data-pos": k }, showToken(tok));
      span.addEventListener("click", () => ask("propose", { pos: k }));
      cleanStrip.append(span);
    });
    corruptStrip.replaceChildren();
    if (corrupted.length === 0) corruptStrip.append(h("span", { class: "mw-note" }, "No corrupted prompt yet: click a clean token above, or type one."));
    corrupted.forEach((tok, k) => corruptStrip.append(h("span", { class: "mw-token" + (diff.has(k) ? " mw-token-diff" : ""), title: `position ${k}` }, showToken(tok))));
    if (document.activeElement !== answerInput) answerInput.value = model.get("answer") ?? "";
    if (document.activeElement !== wrongInput) wrongInput.value = model.get("wrong_answer") ?? "";
    answerNote.textContent = model.get("answer_note") ?? "";
  };

  const drawCandidates = (): void => {
    candidates.replaceChildren();
    const c = model.get("candidates") ?? {};
    if (typeof c.pos !== "number") return;
    const clean: string[] = model.get("clean_tokens") ?? [];
    candidates.append(h("span", { class: "mw-note" }, `Replace ${showToken(clean[c.pos] ?? "")}@${c.pos} with: `));
    for (const tok of (c.tokens ?? []) as string[]) {
      const b = h("button", { class: "mw-button mw-candidate", "data-testid": "candidate" }, showToken(tok));
      b.addEventListener("click", () => askThenView("corrupt", { pos: c.pos, token: tok }));
      candidates.append(b);
    }
    const free = h("input", { class: "mw-input mw-input-short", type: "text", placeholder: "any single token", "data-testid": "candidate-free" });
    const go = h("button", { class: "mw-button" }, "Replace");
    go.addEventListener("click", () => askThenView("corrupt", { pos: c.pos, token: free.value }));
    free.addEventListener("keydown", (e) => {
      if ((e as KeyboardEvent).key === "Enter") askThenView("corrupt", { pos: c.pos, token: free.value });
    });
    candidates.append(free, go);
  };

  const drawControls = (): void => {
    const dir = model.get("direction");
    directionBox.replaceChildren();
    for (const d of ["denoising", "noising"]) {
      const b = h("button", { class: "mw-button" + (d === dir ? " mw-active" : ""), role: "radio", "aria-checked": d === dir ? "true" : "false", "data-value": d }, d);
      b.addEventListener("click", () => setView({ direction: d }));
      directionBox.append(b);
    }
    directionHelp.textContent = DIRECTION_HELP[dir] ?? "";
    const fill = (sel: HTMLSelectElement, options: string[], value: string, labels: Record<string, string> = {}) => {
      if (sel.options.length !== options.length) {
        sel.replaceChildren(...options.map((o) => h("option", { value: o }, labels[o] ?? o)));
      }
      sel.value = value;
    };
    fill(metricSelect, model.get("metrics") ?? [], model.get("metric"), METRIC_LABELS);
    fill(componentSelect, model.get("components") ?? [], model.get("component"));
  };

  const drawGrids = (): void => {
    const { grid } = current();
    const exact = decoded(grid, "exact");
    const attrib = decoded(grid, "attribution");
    if (!grid) {
      baselines.textContent = (model.get("corrupted_tokens") ?? []).length ? "Computing…" : "";
      exactMap.el.style.visibility = "hidden";
      attribMap.el.style.visibility = "hidden";
      legendBox.replaceChildren();
      return;
    }
    exactMap.el.style.visibility = "visible";
    attribMap.el.style.visibility = "visible";
    const b = grid.baselines;
    const metricName = METRIC_LABELS[model.get("metric")] ?? model.get("metric");
    baselines.textContent =
      `${metricName} (${grid.answer ?? "?"} vs ${grid.wrong_answer ?? "?"}): clean ${fmt(b.clean)}, corrupted ${fmt(b.corrupted)}.` +
      (grid.normalized ? ` Normalised: 0 = the patched run's own value, 1 = the other run's value.` : " Raw metric values.");
    const scale = grid.normalized ? 1 : scaleOf(exact, attrib);
    const spec = (arr: NDArray) => ({
      rows: arr.shape[0],
      cols: arr.shape[1],
      value: (i: number, j: number) => arr.data[i * arr.shape[1] + j],
      color: (v: number) => (Number.isFinite(v) ? diverging(v / scale) : ([240, 240, 240] as [number, number, number])),
      rowLabels: grid.rows,
      colLabels: grid.cols,
      cell: Math.max(10, Math.min(22, Math.floor(420 / Math.max(arr.shape[0], arr.shape[1])))),
    });
    const total = grid.rows.length;
    const done = grid.exact_done ?? 0;
    exactTitle.textContent = `Exact patching ${done < total ? `(${done}/${total} layers)` : ""}`;
    if (exact) exactMap.draw(spec(exact));
    if (attrib) attribMap.draw(spec(attrib));
    legendBox.replaceChildren(legend((v) => diverging(v / scale), -Number(fmt(scale, 2)), Number(fmt(scale, 2)), grid.normalized ? "normalised effect (0 = no effect, 1 = full)" : "metric change"));
    drawScatter(exact, attrib);
  };

  const drawScatter = (exact: NDArray | null, attrib: NDArray | null): void => {
    const ctx = scatter.getContext("2d");
    if (!ctx) return;
    const W = scatter.width;
    const H = scatter.height;
    // the theme's colours (js/lib/style.css: --mw-*) once the canvas is in the page (before,
    // mid-tones that read on light and dark); the background is the element's own (CSS)
    const theme = getComputedStyle(scatter);
    ctx.clearRect(0, 0, W, H);
    if (!exact || !attrib) return;
    const pts: [number, number][] = [];
    for (let k = 0; k < exact.data.length; k++) {
      if (Number.isFinite(exact.data[k]) && Number.isFinite(attrib.data[k])) pts.push([attrib.data[k], exact.data[k]]);
    }
    // a loop, not Math.max(...spread): a spread of a very large grid overflows the call stack
    let m = 1e-9;
    for (const [x, y] of pts) m = Math.max(m, Math.abs(x), Math.abs(y));
    const px = (v: number) => ((v / m + 1) / 2) * (W - 20) + 10;
    const py = (v: number) => H - (((v / m + 1) / 2) * (H - 20) + 10);
    ctx.strokeStyle = theme.getPropertyValue("--mw-border-strong") || "#8c959f";
    ctx.beginPath();
    ctx.moveTo(px(-m), py(-m));
    ctx.lineTo(px(m), py(m));
    ctx.moveTo(px(0), py(-m));
    ctx.lineTo(px(0), py(m));
    ctx.moveTo(px(-m), py(0));
    ctx.lineTo(px(m), py(0));
    ctx.stroke();
    ctx.fillStyle = theme.getPropertyValue("--mw-accent") || "#1f6feb";
    for (const [x, y] of pts) {
      ctx.beginPath();
      ctx.arc(px(x), py(y), 2.5, 0, 2 * Math.PI);
      ctx.fill();
    }
    let sxy = 0, sxx = 0, syy = 0, sx = 0, sy = 0;
    for (const [x, y] of pts) {
      sx += x; sy += y; sxy += x * y; sxx += x * x; syy += y * y;
    }
    const n = pts.length;
    const r = n > 1 ? (n * sxy - sx * sy) / Math.sqrt((n * sxx - sx * sx) * (n * syy - sy * sy) || 1) : NaN;
    scatterNote.textContent = `${n} cells; x = attribution, y = exact; correlation ${fmt(r, 3)}`;
  };

  const drawDetail = (): void => {
    detail.replaceChildren();
    const d: Detail = model.get("detail") ?? {};
    if (!d.title) return;
    detail.append(h("div", { class: "mw-subtitle", "data-testid": "detail-title" }, d.title));
    if (d.kind === "head" && isEncoded(d.clean_pattern) && isEncoded(d.corrupted_pattern)) {
      const toks = d.tokens ?? [];
      const row = h("div", { class: "mw-row" });
      for (const [label, enc] of [["clean", d.clean_pattern], ["corrupted", d.corrupted_pattern]] as const) {
        const arr = decodeArray(enc);
        const n = arr.shape[0];
        const view = new HeatmapView();
        view.draw({ rows: n, cols: n, value: (i, j) => arr.data[i * n + j], color: sequential, rowLabels: toks, colLabels: toks, masked: (i, j) => j > i, cell: Math.max(6, Math.min(16, Math.floor(260 / n))) });
        row.append(h("div", { class: "mw-col" }, h("div", { class: "mw-note" }, `${label} pattern`), view.el));
      }
      detail.append(row);
    } else if (d.kind === "logits" && d.top_tokens && isEncoded(d.top_probs)) {
      const table = predictionsTable(
        [
          { label: "unpatched run", tokens: d.base_tokens ?? [], probs: d.base_probs },
          { label: "with this patch", tokens: d.top_tokens, probs: d.top_probs },
        ],
        "detail-logits",
      );
      detail.append(table);
    }
  };

  const drawAll = (): void => {
    drawTokens();
    drawCandidates();
    drawControls();
    drawGrids();
    drawDetail();
  };

  // ------------------------------------------------------------------ interactions
  const hover = (which: "exact" | "attribution") => (c: { i: number; j: number } | null) => {
    const { grid } = current();
    const arr = decoded(grid, which);
    if (!c || !grid || !arr) {
      tooltip.textContent = "";
      return;
    }
    const v = arr.data[c.i * arr.shape[1] + c.j];
    tooltip.textContent = `${which}: ${grid.row_axis} ${grid.rows[c.i]}, ${grid.col_axis} ${showToken(grid.cols[c.j])} → ${Number.isFinite(v) ? fmt(v, 4) : "not computed yet"}`;
    (which === "exact" ? attribMap : exactMap).highlight({ row: c.i, col: c.j });
  };
  exactMap.onHover = hover("exact");
  attribMap.onHover = hover("attribution");
  const click = (c: { i: number; j: number }) => {
    exactMap.highlight({ row: c.i, col: c.j });
    ask("cell", { row: c.i, col: c.j });
  };
  exactMap.onClick = click;
  attribMap.onClick = click;

  function setView(change: Record<string, string>): void {
    const next = {
      component: model.get("component"),
      direction: model.get("direction"),
      metric: model.get("metric"),
      ...change,
    };
    // Cached views redraw at once from the trait; the kernel computes only what is missing.
    model.set("component", next.component);
    model.set("direction", next.direction);
    model.set("metric", next.metric);
    model.save_changes();
    drawControls();
    drawGrids();
    const grid = (model.get("grids") ?? {})[gridKey(next.component, next.direction, next.metric)] as Grid | undefined;
    const complete = grid && isEncoded(grid.exact) && (grid.exact_done ?? 0) >= grid.rows.length;
    if (!complete && (model.get("corrupted_tokens") ?? []).length) ask("view", next);
  }
  metricSelect.addEventListener("change", () => setView({ metric: metricSelect.value }));
  componentSelect.addEventListener("change", () => setView({ component: componentSelect.value }));
  corruptButton.addEventListener("click", () => askThenView("set_corrupted", { text: corruptInput.value }));
  answerButton.addEventListener("click", () => askThenView("set_answers", { answer: answerInput.value, wrong_answer: wrongInput.value }));

  const exportGrid = (): { svg: string; arr: NDArray; grid: Grid } | null => {
    const { key, grid } = current();
    const arr = decoded(grid, "exact") ?? decoded(grid, "attribution");
    if (!grid || !arr) return null;
    const scale = grid.normalized ? 1 : scaleOf(arr);
    return { svg: gridSvg(arr, grid.rows, grid.cols, `Activation patching: ${key.replace(/\|/g, ", ")}`, scale), arr, grid };
  };
  svgButton.addEventListener("click", () => {
    const g = exportGrid();
    if (g) download("patching.svg", new Blob([g.svg], { type: "image/svg+xml" }));
  });
  pngButton.addEventListener("click", () => {
    const g = exportGrid();
    if (!g) return;
    const img = new Image();
    img.onload = () => {
      const c = document.createElement("canvas");
      c.width = img.width * 2;
      c.height = img.height * 2;
      const ctx = c.getContext("2d");
      if (!ctx) return;
      ctx.scale(2, 2);
      ctx.drawImage(img, 0, 0);
      c.toBlob((b) => b && download("patching.png", b), "image/png");
    };
    img.src = "data:image/svg+xml;charset=utf-8," + encodeURIComponent(g.svg);
  });

  // ------------------------------------------------------------------ trait changes
  const onView = (): void => {
    drawControls();
    drawGrids();
  };
  w.on(["clean_tokens", "corrupted_tokens", "differing", "answer", "wrong_answer", "answer_note"], drawTokens);
  w.on("candidates", drawCandidates);
  w.on("grids", drawGrids);
  w.on(["component", "direction", "metric"], onView);
  w.on("detail", drawDetail);
  drawAll();

  return w.dispose;
}

export default { render };
