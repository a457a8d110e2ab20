// The causal-scrubbing widget's frontend: the hypothesis as a tree (click a node to select it,
// click its corner switch to toggle kept/resampled), the selected node's state and feature, the
// fraction of the loss recovered as a bar with its spread over seeds, and the history of
// refinements as a bar chart and a table. Everything is drawn from traits (so a saved notebook
// renders with no kernel); changes are `evaluate` requests, long jobs with progress and cancel.

import { decodeArray, isEncoded, type Encoded } from "./lib/array";
import { clip, fmt, h } from "./lib/dom";
import { Widget, type StatusTraits, type WidgetProps } from "./lib/widget";

export interface TreeRow {
  path: string;
  component: string;
  feature: string;
  kept: boolean;
  active: boolean;
  depth: number;
  parent: number;
}

export interface FeatureInfo {
  name: string;
  description: string;
}

export interface ResultState {
  clean?: number;
  random?: number;
  scrubbed?: number;
  fraction?: number | null;
  fraction_std?: number | null;
  per_seed?: Encoded;
  metric?: string;
  n_references?: number;
  seconds?: number;
  step?: number;
}

export interface HistoryEntry {
  step: number;
  label: string;
  fraction: number | null;
  fraction_std: number | null;
  scrubbed: number;
  random: number;
  clean: number;
  nodes: Record<string, { kept: boolean; feature: string }>;
}

export interface DatasetInfo {
  n_inputs?: number;
  length?: number;
  positions?: number[];
  metric?: string;
  n_seeds?: number;
  n_references?: number;
}

/** The synced traits of mechwidgets/widgets/scrubbing.py:ScrubbingWidget. */
export interface ScrubbingTraits extends StatusTraits {
  /** The hypothesis, one row per node, parents before children. */
  tree: TreeRow[];
  features: FeatureInfo[];
  result: ResultState;
  history: HistoryEntry[];
  dataset: DatasetInfo;
  live: boolean;
  /** Paths of the folded nodes (Python's; a fold click asks Python). */
  collapsed: string[];
  /** Where each shown node is drawn (mechwidgets/widgets/_scrubbing_tree.py:tree_layout). */
  layout: Layout;
}

/** Where each node not folded away is drawn: the `layout` trait, computed in Python
 * (mechwidgets/widgets/_scrubbing_tree.py:tree_layout). `row` indexes the `tree` trait, `parent`
 * indexes `nodes`, `hidden` counts the nodes folded away under it, `x`/`y` is its box centre. */
export interface Layout {
  nodes: { row: number; parent: number; hidden: number; x: number; y: number }[];
  width: number;
  height: number;
  node_w: number;
  node_h: number;
}

const SVG = "http://www.w3.org/2000/svg";

function s(tag: string, attrs: Record<string, string | number> = {}, ...children: (Node | string)[]): SVGElement {
  const el = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, String(v));
  for (const c of children) el.append(typeof c === "string" ? document.createTextNode(c) : c);
  return el;
}

/** A fraction as a percentage ("n/a" when undefined, e.g. random and clean losses are equal). */
export function pct(x: number | null | undefined, digits = 1): string {
  return x === null || x === undefined || !Number.isFinite(x) ? "n/a" : `${(100 * x).toFixed(digits)}%`;
}

const COMPONENT_HELP: Record<string, string> = {
  output: "the output being explained (always kept)",
  embed: "the token embedding",
  pos_embed: "the positional embedding",
  resid: "the rest of the residual stream (every component its siblings do not name)",
  q: "the head's query input",
  k: "the head's key input",
  v: "the head's value input",
};

function describe(component: string): string {
  if (COMPONENT_HELP[component]) return COMPONENT_HELP[component];
  const head = /^L(\d+)H(\d+)$/.exec(component);
  if (head) return `the output of head ${head[2]} in layer ${head[1]}`;
  const mlp = /^mlp(\d+)$/.exec(component);
  if (mlp) return `the MLP of layer ${mlp[1]}`;
  return component;
}

export function render({ model, el }: WidgetProps<ScrubbingTraits>): () => void {
  const w = new Widget(model, el, "mw-scrubbing");
  const { root } = w;
  const live = (): boolean => model.get("live") !== false;
  const tree = (): TreeRow[] => model.get("tree") ?? [];
  const features = (): FeatureInfo[] => model.get("features") ?? [];
  const history = (): HistoryEntry[] => model.get("history") ?? [];

  let selected: string | null = null;
  let pending = false;

  // ------------------------------------------------------------------ layout
  const title = h("div", { class: "mw-title" });
  const treeBox = h("div", { class: "mw-scrub-tree", "data-testid": "tree" });
  const panel = h("div", { class: "mw-scrub-panel", "data-testid": "node-panel" });
  const resultBox = h("div", { class: "mw-scrub-result", "data-testid": "result" });
  const chartBox = h("div", { class: "mw-scrub-chart", "data-testid": "history-chart" });
  const table = h("table", { class: "mw-table mw-scrub-history", "data-testid": "history-table" });
  root.append(
    title,
    h("div", { class: "mw-row" }, resultBox, panel),
    h("div", { class: "mw-subtitle" }, "Hypothesis (click a node to select it; its corner switch keeps or resamples it; ▾/▸ folds its inputs)"),
    treeBox,
    h(
      "div",
      { class: "mw-row" },
      h("div", { class: "mw-col" }, h("div", { class: "mw-subtitle" }, "History of refinements (click one to go back to it)"), chartBox),
      h("div", { class: "mw-col mw-scroll" }, table),
    ),
  );

  // ------------------------------------------------------------------ actions
  const fail = (e: unknown): void => {
    pending = false;
    drawResult();
    w.fail(e); // no banner when superseded or cancelled (by the user or a restore)
  };

  function evaluate(nodes: Record<string, { kept?: boolean; feature?: string }>): void {
    if (!live()) return;
    pending = true;
    drawResult();
    w.request("evaluate", { nodes })
      .then(() => {
        pending = false;
        drawResult();
      })
      .catch(fail);
  }

  function restore(step: number): void {
    if (!live()) return;
    w.request("restore", { step }).catch(fail);
  }

  function select(path: string): void {
    selected = path;
    drawTree();
    drawPanel();
  }

  // ------------------------------------------------------------------ drawing
  const drawTitle = (): void => {
    const d = model.get("dataset") ?? {};
    title.textContent =
      `Causal scrubbing — ${d.n_inputs ?? "?"} inputs × ${d.length ?? "?"} tokens, ${d.metric ?? "loss"} on ${d.n_references ?? "?"} predictions, ${d.n_seeds ?? "?"} seeds` +
      (live() ? "" : " (static view: no kernel)");
  };

  const drawTree = (): void => {
    treeBox.replaceChildren();
    const lay: Layout | undefined = model.get("layout");
    const pos = (lay?.nodes ?? []).filter((n) => tree()[n.row] !== undefined);
    if (!lay || !pos.length) return;
    const { width, height, node_w: NODE_W, node_h: NODE_H } = lay;
    const rows = pos.map((n) => tree()[n.row]);
    const svg = s("svg", { width, height, viewBox: `0 0 ${width} ${height}`, class: "mw-scrub-svg" });
    rows.forEach((row, i) => {
      if (pos[i].parent < 0) return;
      const a = pos[pos[i].parent];
      const b = pos[i];
      svg.append(s("line", { x1: a.x, y1: a.y + NODE_H / 2, x2: b.x, y2: b.y - NODE_H / 2, class: "mw-scrub-edge" + (row.active ? "" : " mw-scrub-off") }));
    });
    rows.forEach((row, i) => {
      const x = pos[i].x - NODE_W / 2;
      const y = pos[i].y - NODE_H / 2;
      const cls = ["mw-scrub-node", row.kept ? "mw-scrub-kept" : "mw-scrub-resampled"];
      if (!row.active) cls.push("mw-scrub-off");
      if (row.path === selected) cls.push("mw-selected");
      const g = s("g", { class: cls.join(" "), "data-path": row.path, "data-testid": `node-${row.path}`, transform: `translate(${x},${y})` });
      const state = row.kept ? (row.active ? "kept" : "kept, under a resampled node") : "resampled";
      g.append(
        s("title", {}, `${row.path}: ${describe(row.component)}. Feature: ${row.feature}. ${state}.`),
        s("rect", { width: NODE_W, height: NODE_H, rx: 5, class: "mw-scrub-box" }),
        s("text", { x: NODE_W / 2, y: 14, "text-anchor": "middle", class: "mw-scrub-label" }, clip(row.component, 12)),
        s("text", { x: NODE_W / 2, y: 28, "text-anchor": "middle", class: "mw-scrub-feature" }, clip(row.feature, 16)),
      );
      g.addEventListener("click", () => select(row.path));
      const hidden = pos[i].hidden;
      const isCollapsed = hidden > 0;
      if (isCollapsed || pos.some((n) => n.parent === i)) {
        const fold = s(
          "g",
          { class: "mw-scrub-fold", "data-testid": `fold-${row.path}`, transform: `translate(9,9)`, role: "button" },
          s("title", {}, isCollapsed ? `show the ${hidden} nodes under it` : "fold its inputs"),
          s("rect", { x: -7, y: -7, width: 14, height: 14, rx: 3 }),
          s("text", { y: 3.5, "text-anchor": "middle" }, isCollapsed ? "▸" : "▾"),
        );
        fold.addEventListener("click", (ev) => {
          ev.stopPropagation();
          // Python folds it: the `collapsed` and `layout` traits change
          if (live()) w.ask("fold", { path: row.path, folded: !isCollapsed });
        });
        g.append(fold);
      }
      if (isCollapsed) g.append(s("text", { x: NODE_W - 4, y: NODE_H - 4, "text-anchor": "end", class: "mw-scrub-badge" }, `+${hidden}`));
      if (row.parent >= 0) {
        const sw = s(
          "g",
          { class: "mw-scrub-switch", "data-testid": `toggle-${row.path}`, transform: `translate(${NODE_W - 9},9)`, role: "button" },
          s("title", {}, row.kept ? "resample this node" : "keep this node"),
          s("circle", { r: 7 }),
          s("text", { y: 3.5, "text-anchor": "middle" }, row.kept ? "✓" : "×"),
        );
        sw.addEventListener("click", (ev) => {
          ev.stopPropagation();
          selected = row.path;
          evaluate({ [row.path]: { kept: !row.kept } });
          drawTree();
          drawPanel();
        });
        g.append(sw);
      }
      svg.append(g);
    });
    treeBox.append(svg);
  };

  const drawPanel = (): void => {
    panel.replaceChildren();
    const rows = tree();
    const row = rows.find((r) => r.path === selected);
    if (!row) {
      panel.append(h("div", { class: "mw-note" }, "Select a node to switch it between kept and resampled, or to give it another feature."));
      return;
    }
    panel.append(
      h("div", { class: "mw-subtitle", "data-testid": "panel-path" }, row.path),
      h("div", { class: "mw-note" }, describe(row.component)),
    );
    const disabled = !live() || row.parent < 0;
    const kept = h("button", { class: "mw-button" + (row.kept ? " mw-scrub-on" : ""), "data-testid": "node-kept", disabled }, "kept");
    const resampled = h("button", { class: "mw-button" + (!row.kept ? " mw-scrub-on" : ""), "data-testid": "node-resampled", disabled }, "resampled");
    kept.addEventListener("click", () => row.kept || evaluate({ [row.path]: { kept: true } }));
    resampled.addEventListener("click", () => row.kept && evaluate({ [row.path]: { kept: false } }));
    const select = h("select", { class: "mw-select", "data-testid": "feature-select", "aria-label": "feature", disabled: !live() || row.parent < 0 });
    for (const f of features()) select.append(h("option", { value: f.name, title: f.description }, f.name));
    select.value = row.feature;
    select.addEventListener("change", () => evaluate({ [row.path]: { feature: select.value } }));
    const info = features().find((f) => f.name === row.feature);
    panel.append(
      h("div", { class: "mw-scrub-seg" }, kept, resampled),
      h("div", { class: "mw-scrub-featrow" }, "feature ", select),
      h("div", { class: "mw-note", "data-testid": "feature-description" }, info?.description ?? ""),
    );
    if (row.parent < 0) panel.append(h("div", { class: "mw-note" }, "The root is what is being explained: always kept."));
    else if (!row.active && row.kept) panel.append(h("div", { class: "mw-note" }, "An ancestor is resampled, so this node has no effect."));
  };

  const drawResult = (): void => {
    resultBox.replaceChildren();
    const r: ResultState = model.get("result") ?? {};
    if (r.fraction === undefined) return;
    const frac = r.fraction;
    const std = r.fraction_std ?? 0;
    const clamp = (v: number): number => Math.max(0, Math.min(1, v));
    const bar = h("div", { class: "mw-scrub-bar", "data-testid": "recovered-bar" });
    if (frac !== null) {
      bar.append(
        h("div", { class: "mw-scrub-fill", "data-testid": "recovered-fill", style: `width:${(100 * clamp(frac)).toFixed(2)}%` }),
        h("div", { class: "mw-scrub-whisker", "data-testid": "recovered-whisker", style: `left:${(100 * clamp(frac - std)).toFixed(2)}%;width:${(100 * (clamp(frac + std) - clamp(frac - std))).toFixed(2)}%` }),
      );
    }
    for (const t of [0, 0.5, 1]) bar.append(h("span", { class: "mw-scrub-tick", style: `left:${100 * t}%` }, `${100 * t}%`));
    let seeds = "";
    if (isEncoded(r.per_seed)) {
      const a = decodeArray(r.per_seed);
      const n = a.shape[1];
      seeds = Array.from({ length: n }, (_, k) => pct(a.data[2 * n + k])).join(", ");
    }
    const metric = r.metric ?? "loss";
    resultBox.append(
      h("div", { class: "mw-subtitle" }, `Loss recovered (step ${r.step ?? "?"})`),
      h("div", { class: "mw-scrub-big", "data-testid": "recovered-text" }, `${pct(frac)} ± ${pct(std)}`),
      bar,
      h(
        "div",
        { class: "mw-note", "data-testid": "losses" },
        `${metric}: clean ${fmt(r.clean ?? NaN)} · scrubbed ${fmt(r.scrubbed ?? NaN)} · random ${fmt(r.random ?? NaN)}`,
      ),
      h("div", { class: "mw-note" }, `(random − scrubbed) / (random − clean), per seed: ${seeds}`),
      h("div", { class: "mw-note", "data-testid": "pending" }, pending ? "re-running…" : ""),
    );
  };

  const drawHistory = (): void => {
    const hist = history();
    const current = (model.get("result") ?? {}).step;
    // bar chart: one bar per step, with the spread over seeds as a whisker
    chartBox.replaceChildren();
    const barW = 26;
    const gap = 10;
    const left = 36;
    const plotH = 120;
    const top = 10;
    let lo = 0;
    let hi = 1;
    for (const e of hist) {
      if (e.fraction === null) continue;
      lo = Math.min(lo, e.fraction - (e.fraction_std ?? 0));
      hi = Math.max(hi, e.fraction + (e.fraction_std ?? 0));
    }
    const y = (v: number): number => top + plotH * (1 - (v - lo) / (hi - lo));
    const width = left + hist.length * (barW + gap) + gap;
    const svg = s("svg", { width: Math.max(width, 160), height: top + plotH + 22, class: "mw-scrub-svg" });
    for (const t of [0, 0.5, 1]) {
      svg.append(s("line", { x1: left - 3, x2: width, y1: y(t), y2: y(t), class: "mw-scrub-grid" }));
      svg.append(s("text", { x: left - 5, y: y(t) + 3, "text-anchor": "end", class: "mw-scrub-axis" }, `${100 * t}%`));
    }
    hist.forEach((e, k) => {
      const x = left + gap + k * (barW + gap);
      const g = s("g", { class: "mw-scrub-hbar" + (e.step === current ? " mw-selected" : ""), "data-testid": `history-bar-${e.step}` });
      g.append(s("title", {}, `step ${e.step}: ${e.label} — ${pct(e.fraction)} ± ${pct(e.fraction_std)}`));
      if (e.fraction !== null) {
        const y0 = y(0);
        const y1 = y(e.fraction);
        g.append(s("rect", { x, y: Math.min(y0, y1), width: barW, height: Math.max(1, Math.abs(y1 - y0)) }));
        const sd = e.fraction_std ?? 0;
        g.append(s("line", { x1: x + barW / 2, x2: x + barW / 2, y1: y(e.fraction - sd), y2: y(e.fraction + sd), class: "mw-scrub-err" }));
      }
      g.append(s("text", { x: x + barW / 2, y: top + plotH + 14, "text-anchor": "middle", class: "mw-scrub-axis" }, String(e.step)));
      // the whole column is the click target, however short the bar
      g.append(s("rect", { x, y: top, width: barW, height: plotH + 16, class: "mw-scrub-hit" }));
      g.addEventListener("click", () => restore(e.step));
      svg.append(g);
    });
    chartBox.append(svg);

    table.replaceChildren();
    table.append(h("thead", {}, h("tr", {}, h("th", {}, "#"), h("th", {}, "change"), h("th", {}, "loss recovered"), h("th", {}, "scrubbed"))));
    const body = h("tbody", {});
    for (const e of hist) {
      const tr = h(
        "tr",
        { class: e.step === current ? "mw-selected" : "", "data-testid": `history-row-${e.step}`, title: "click to go back to this hypothesis" },
        h("td", { class: "mw-num" }, e.step),
        h("td", { class: "mw-scrub-label-cell" }, e.label),
        h("td", { class: "mw-num" }, `${pct(e.fraction)} ± ${pct(e.fraction_std)}`),
        h("td", { class: "mw-num" }, fmt(e.scrubbed)),
      );
      tr.addEventListener("click", () => restore(e.step));
      body.append(tr);
    }
    table.append(body);
  };

  const drawAll = (): void => {
    drawTitle();
    drawTree();
    drawPanel();
    drawResult();
    drawHistory();
  };

  const onTree = (): void => {
    const paths = new Set(tree().map((r) => r.path));
    if (selected && !paths.has(selected)) selected = null;
    drawTree();
    drawPanel();
  };
  const onResult = (): void => {
    drawResult();
    drawHistory();
  };
  w.on("tree", onTree);
  w.on("layout", drawTree);
  w.on("features", drawPanel);
  w.on("result", onResult);
  w.on("history", drawHistory);
  w.on("dataset", drawTitle);
  drawAll();

  return w.dispose;
}

export default { render };
