// The SAE feature widget's frontend: an overview of tokens × SAEs coloured by how many features
// fire (or their total activation), a token's top features per SAE as bars, a feature's
// activation over the prompt, logit effects and lineage across the SAEs (a clickable flow), and
// live ablation / steering with predictions and downstream changes before vs after.
// Everything on screen is drawn from traits (a saved notebook redraws with no kernel); clicks
// that need the model become requests (select_token, select_feature, intervene).

import { decodeArray, isEncoded, type Encoded, type NDArray } from "./lib/array";
import { css, diverging, sequential } from "./lib/colormap";
import { clip, fmt, h, showToken } from "./lib/dom";
import { legend } from "./lib/heatmap";
import { meanLoss, predictionsTable, type Predictions } from "./lib/predictions";
import { Widget, type OrEmpty, type StatusTraits, type WidgetProps } from "./lib/widget";

export interface Intervention {
  sae: number;
  hook_name?: string;
  feature: number;
  mode: "ablate" | "clamp";
  value: number;
  positions: number[] | null;
}

interface Changed {
  sae: number;
  feature: number;
  max_change: number;
  position: number;
  before: number;
  after: number;
  before_total: number;
  after_total: number;
}

interface InterventionState {
  interventions?: Intervention[];
  position?: number;
  before?: Predictions;
  after?: Predictions;
  loss_before?: Encoded;
  loss_after?: Encoded;
  changed?: Changed[];
  overview?: { n_active?: Encoded; total?: Encoded };
  max_logit_change?: number;
}

interface LineageNode {
  sae: number;
  feature: number;
  score: number;
}

interface LineageEdge {
  from: [number, number];
  to: [number, number];
  correlation: number | null;
  cosine: number;
}

interface FeatureDetail {
  sae?: number;
  feature?: number;
  hook_name?: string;
  activations?: Encoded;
  promoted?: { tokens: string[]; values: Encoded };
  suppressed?: { tokens: string[]; values: Encoded };
  lineage?: { nodes: LineageNode[]; edges: LineageEdge[] };
  frequency?: number | null;
  max_activation?: number;
  corpus?: CorpusPanel | null;
}

interface CorpusContext {
  doc: number;
  pos: number;
  tokens: string[];
  highlight: number;
  value?: number;
  q?: number;
  low?: number;
  high?: number;
}

interface CorpusPanel {
  n_tokens: number;
  n_docs: number;
  density: number;
  top: CorpusContext[];
  quantiles: CorpusContext[];
  hist_edges: Encoded;
  hist_counts: Encoded;
}

interface SearchAnswer {
  sae?: number;
  query?: string;
  token?: string;
  feature?: number;
  features?: { feature: number; effect: number }[];
}

/** The synced traits of mechwidgets/widgets/features.py:FeaturesWidget. */
export interface FeaturesTraits extends StatusTraits {
  prompt: string;
  tokens: string[];
  hook_names: string[];
  sae_labels: string[];
  d_sae: number[];
  /** Per SAE and position [saes, positions]: how many features fire, their total activation. */
  overview: { n_active?: Encoded; total?: Encoded };
  colour_by: string;
  /** Each position's top features per SAE, [saes, positions, k] (index -1: none). */
  top: { indices?: Encoded; values?: Encoded };
  /** Reconstruction quality per SAE on the prompt. */
  recon: { explained_variance?: Encoded; relative_error?: Encoded; error_norm?: Encoded; act_norm?: Encoded };
  /** Per SAE: feature → the tokens it promotes most. */
  feature_labels: Record<string, string[]>[];
  selected_token: number;
  selected_feature: OrEmpty<{ sae: number; feature: number }>;
  feature: FeatureDetail;
  interventions: Intervention[];
  intervention: InterventionState;
  links_info: { by?: string; source?: string; n_tokens?: number; n_prompts?: number };
  corpus_info: { n_docs?: number; source?: string; done?: number[] };
  search: SearchAnswer;
}

const SVG_NS = "http://www.w3.org/2000/svg";
/** Explained variance below this marks an SAE as poor on this prompt. */
export const POOR_EV = 0.7;

function svg<K extends keyof SVGElementTagNameMap>(tag: K, attrs: Record<string, string | number> = {}): SVGElementTagNameMap[K] {
  const el = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, String(v));
  return el;
}

/** The ids of a feature: "L1 pre #42". */
export function featureName(labels: string[], sae: number, feature: number): string {
  return `${labels[sae] ?? `SAE ${sae}`} #${feature}`;
}

/** Describe an intervention the way the chips and headers do. */
export function describeIntervention(iv: Intervention, labels: string[], tokens: string[]): string {
  const what = iv.mode === "ablate" ? "ablate" : `clamp to ${fmt(iv.value, 2)}`;
  let where = "all positions";
  if (iv.positions && iv.positions.length === 1) where = `${clip(showToken(tokens[iv.positions[0]] ?? ""), 10)}@${iv.positions[0]}`;
  else if (iv.positions) where = `${iv.positions.length} positions`;
  return `${featureName(labels, iv.sae, iv.feature)}: ${what} (${where})`;
}

export function render({ model, el }: WidgetProps<FeaturesTraits>): () => void {
  const w = new Widget(model, el, "mw-features");
  const { root, client, fail } = w;

  // ------------------------------------------------------------------ state
  const tokens = (): string[] => model.get("tokens") ?? [];
  const labels = (): string[] => model.get("sae_labels") ?? [];
  const nSae = (): number => labels().length;
  let selectedToken: number = model.get("selected_token") ?? -1;
  let selectedFeature: { sae: number; feature: number } | null = null;
  let steerValue: number | null = null;
  let positionsMode: "all" | "token" = "all";

  const decoded = new Map<string, NDArray>();
  const arr = (key: string, enc: unknown): NDArray | null => {
    if (!isEncoded(enc)) return null;
    const hit = decoded.get(key);
    if (hit && (hit as any).__src === enc) return hit;
    const out = decodeArray(enc);
    (out as any).__src = enc;
    decoded.set(key, out);
    return out;
  };
  const overview = () => {
    const o = model.get("overview") ?? {};
    return { count: arr("count", o.n_active), total: arr("total", o.total) };
  };
  const top = () => {
    const t = model.get("top") ?? {};
    return { idx: arr("top_idx", t.indices), val: arr("top_val", t.values) };
  };
  const recon = () => {
    const r = model.get("recon") ?? {};
    return { ev: arr("ev", r.explained_variance), rel: arr("rel", r.relative_error), err: arr("err", r.error_norm), norm: arr("norm", r.act_norm) };
  };
  const featureLabel = (sae: number, feature: number): string[] => {
    const all: Record<string, string[]>[] = model.get("feature_labels") ?? [];
    return all[sae]?.[String(feature)] ?? [];
  };
  const labelText = (sae: number, feature: number): string => featureLabel(sae, feature).map((t) => showToken(t)).join(" ");

  // ------------------------------------------------------------------ layout
  const title = h("div", { class: "mw-title" });
  const colourSelect = h("select", { class: "mw-select", "aria-label": "colour the overview by", "data-testid": "colour-by" });
  colourSelect.append(h("option", { value: "count" }, "features firing"), h("option", { value: "total" }, "total activation"));
  const reconBox = h("div", { class: "mw-feat-recon", "data-testid": "recon" });
  const grid = h("div", { class: "mw-feat-grid", "data-testid": "overview" });
  const gridLegend = h("div", {});
  const tokenPanel = h("div", { class: "mw-feat-token", "data-testid": "token-features" });
  const featurePanel = h("div", { class: "mw-feat-detail", "data-testid": "feature-detail" });
  const controls = h("div", { class: "mw-feat-controls", "data-testid": "controls" });
  const chips = h("div", { class: "mw-chips", "data-testid": "interventions" });
  const results = h("div", { class: "mw-feat-results", "data-testid": "intervention-results" });
  const searchSae = h("select", { class: "mw-select", "aria-label": "SAE to search", "data-testid": "search-sae" }) as HTMLSelectElement;
  const searchBox = h("input", { type: "search", class: "mw-input", placeholder: "#feature or a token", "aria-label": "find a feature", "data-testid": "search" }) as HTMLInputElement;
  const searchResults = h("div", { class: "mw-feat-search", "data-testid": "search-results" });

  root.append(
    h("div", { class: "mw-row mw-controls" }, title, h("label", {}, "colour: ", colourSelect),
      h("label", {}, "find: ", searchSae, searchBox)),
    searchResults,
    reconBox,
    h(
      "div",
      { class: "mw-row" },
      h("div", { class: "mw-col" }, h("div", { class: "mw-subtitle" }, "Tokens × SAEs (click a token)"), h("div", { class: "mw-scroll mw-feat-scroll" }, grid), gridLegend),
      h("div", { class: "mw-col mw-feat-col" }, tokenPanel),
      h("div", { class: "mw-col mw-feat-col-wide" }, featurePanel, controls, chips),
    ),
    results,
  );

  // ------------------------------------------------------------------ drawing: title and recon
  const drawTitle = (): void => {
    const n = tokens().length;
    title.textContent = `SAE features — ${n} tokens, ${nSae()} SAEs`;
    colourSelect.value = model.get("colour_by") ?? "count";
  };

  const drawRecon = (): void => {
    reconBox.replaceChildren();
    const { ev, rel } = recon();
    const ls = labels();
    const items = ls.map((lab, i) => {
      const e = ev ? ev.data[i] : NaN;
      const r = rel ? rel.data[i] : NaN;
      const poor = !(e >= POOR_EV);
      return h(
        "span",
        {
          class: "mw-feat-ev" + (poor ? " mw-feat-poor" : ""),
          "data-testid": `recon-${i}`,
          title: `${model.get("hook_names")?.[i] ?? lab}: explained variance ${fmt(e, 3)}, relative reconstruction error ${fmt(r, 3)} on this prompt (BOS excluded)` + (poor ? ". A poor fit: its features explain little of this activation; read them with care." : ""),
        },
        `${lab}: EV ${fmt(e, 2)} · err ${fmt(r, 2)}${poor ? " ⚠" : ""}`,
      );
    });
    reconBox.append(h("span", { class: "mw-note" }, "Reconstruction on this prompt:"), ...items);
  };

  // ------------------------------------------------------------------ drawing: overview grid
  const drawGrid = (): void => {
    grid.replaceChildren();
    const toks = tokens();
    const n = toks.length;
    const S = nSae();
    const ls = labels();
    const byTotal = (model.get("colour_by") ?? "count") === "total";
    const { count, total } = overview();
    const a = byTotal ? total : count;
    // counts share one scale; total activations are scaled per SAE (their sizes grow with depth)
    const maxOf = new Float64Array(S);
    let max = 0;
    if (a) for (let i = 0; i < S; i++) for (let p = 0; p < n; p++) {
      maxOf[i] = Math.max(maxOf[i], a.data[i * n + p]);
      max = Math.max(max, a.data[i * n + p]);
    }
    max = max || 1;
    const scale = (i: number): number => (byTotal ? maxOf[i] || 1 : max);
    const ivState: InterventionState = model.get("intervention") ?? {};
    const after = ivState.overview ? arr("after_count", ivState.overview.n_active) : null;
    const edited = new Set((model.get("interventions") ?? []).map((iv: Intervention) => iv.sae));
    grid.style.gridTemplateColumns = `auto minmax(60px, max-content) repeat(${S}, 46px)`;
    grid.append(h("div", { class: "mw-axis" }, "pos"), h("div", { class: "mw-axis" }, "token"));
    ls.forEach((lab, i) => grid.append(h("div", { class: "mw-axis mw-feat-colhead" + (edited.has(i) ? " mw-feat-edited" : ""), title: model.get("hook_names")?.[i] ?? lab }, lab)));
    const { ev } = recon();
    for (let p = 0; p < n; p++) {
      const sel = p === selectedToken;
      const rowCls = sel ? " mw-selected" : "";
      const posEl = h("div", { class: "mw-axis mw-feat-pos" + rowCls }, p);
      const tokEl = h("div", { class: "mw-token mw-feat-tok" + rowCls, title: `position ${p}: ${JSON.stringify(toks[p])}`, "data-pos": p, "data-testid": `token-${p}` }, showToken(toks[p]));
      tokEl.addEventListener("click", () => selectToken(p));
      grid.append(posEl, tokEl);
      for (let i = 0; i < S; i++) {
        const v = a ? a.data[i * n + p] : 0;
        const c = count ? count.data[i * n + p] : 0;
        const t = total ? total.data[i * n + p] : 0;
        const changed = after ? after.data[i * n + p] !== c : false;
        const poor = ev ? !(ev.data[i] >= POOR_EV) : false;
        const cell = h(
          "div",
          {
            class: "mw-feat-cell" + rowCls + (changed ? " mw-feat-changed" : "") + (poor ? " mw-feat-cell-poor" : ""),
            "data-testid": `cell-${i}-${p}`,
            title: `${ls[i]} at ${showToken(toks[p])}@${p}: ${c} features fire, total activation ${fmt(t, 2)}` + (changed && after ? `; after the intervention ${after.data[i * n + p]} fire` : ""),
          },
          byTotal ? "" : String(c),
        );
        const u = v / scale(i);
        cell.style.background = css(sequential(u));
        if (u > 0.55) cell.style.color = "#fff";
        cell.addEventListener("click", () => selectToken(p));
        grid.append(cell);
      }
    }
    gridLegend.replaceChildren(
      byTotal ? legend(sequential, 0, 1, "total activation, each SAE scaled to its largest") : legend((x) => sequential(x / max), 0, max, "features firing"),
    );
  };

  // ------------------------------------------------------------------ drawing: token panel
  const drawTokenPanel = (): void => {
    tokenPanel.replaceChildren();
    const toks = tokens();
    const n = toks.length;
    if (selectedToken < 0 || selectedToken >= n) {
      tokenPanel.append(h("div", { class: "mw-subtitle" }, "Token features"), h("div", { class: "mw-note" }, "Click a token (or a cell) to see its most active features in every SAE."));
      return;
    }
    const p = selectedToken;
    const { idx, val } = top();
    tokenPanel.append(h("div", { class: "mw-subtitle", "data-testid": "token-title" }, `Top features on ${showToken(toks[p])}@${p}`));
    if (!idx || !val) return;
    const [S, , k] = idx.shape;
    let max = 0;
    for (let i = 0; i < S; i++) for (let j = 0; j < k; j++) max = Math.max(max, val.data[(i * n + p) * k + j]);
    max = max || 1;
    const ls = labels();
    for (let i = 0; i < S; i++) {
      const block = h("div", { class: "mw-feat-block", "data-testid": `token-sae-${i}` }, h("div", { class: "mw-feat-blocktitle" }, ls[i]));
      let any = false;
      for (let j = 0; j < k; j++) {
        const f = idx.data[(i * n + p) * k + j];
        const v = val.data[(i * n + p) * k + j];
        if (f < 0) continue;
        any = true;
        const isSel = selectedFeature?.sae === i && selectedFeature?.feature === f;
        const bar = h("div", { class: "mw-feat-barfill" });
        bar.style.width = `${Math.max(1, (v / max) * 100).toFixed(1)}%`;
        const lab = labelText(i, f);
        const row = h(
          "button",
          { class: "mw-feat-bar" + (isSel ? " mw-selected" : ""), "data-testid": `bar-${i}-${f}`, title: `${featureName(ls, i, f)}: activation ${fmt(v, 3)}; promotes ${lab}` },
          h("span", { class: "mw-feat-id" }, `#${f}`),
          h("span", { class: "mw-feat-bartrack" }, bar),
          h("span", { class: "mw-num mw-feat-val" }, fmt(v, 2)),
          h("span", { class: "mw-feat-label" }, lab),
        );
        row.addEventListener("click", () => selectFeature(i, f));
        block.append(row);
      }
      if (!any) block.append(h("div", { class: "mw-note" }, "no feature fires"));
      tokenPanel.append(block);
    }
  };

  // ------------------------------------------------------------------ drawing: feature panel
  const drawLineage = (d: FeatureDetail): HTMLElement => {
    const box = h("div", { class: "mw-feat-lineage", "data-testid": "lineage" });
    const lin = d.lineage;
    const ls = labels();
    const info = model.get("links_info") ?? {};
    box.append(h("div", { class: "mw-subtitle" }, "Lineage across SAEs"));
    const byCosine = info.by === "cosine";
    box.append(h("div", { class: "mw-note" }, byCosine
      ? `Links: decoder cosine (line width) between features of adjacent SAEs, from the ${info.source ?? "decoder weights"}. Click a feature to follow it.`
      : `Links: activation correlation (line width) over ${info.n_tokens ?? 0} tokens of ${info.source ?? "a sample"}; hover a link for its decoder cosine. Click a feature to follow it.`));
    if (!lin || !lin.nodes.length) return box;
    const cols = new Map<number, LineageNode[]>();
    for (const nd of lin.nodes) {
      if (!cols.has(nd.sae)) cols.set(nd.sae, []);
      cols.get(nd.sae)!.push(nd);
    }
    const saes = [...cols.keys()].sort((a, b) => a - b);
    for (const s of saes) cols.get(s)!.sort((a, b) => (a.feature === d.feature && s === d.sae ? -1 : b.feature === d.feature && s === d.sae ? 1 : b.score - a.score));
    // fit the flow in ~620px: narrower columns when there are many SAEs
    const colW = Math.max(104, Math.min(150, Math.floor(620 / saes.length)));
    const nodeW = colW - 30;
    const rowH = 30;
    const top0 = 22;
    const rows = Math.max(...saes.map((s) => cols.get(s)!.length));
    const width = saes.length * colW + 10;
    const height = top0 + rows * rowH + 6;
    const pos = new Map<string, { x: number; y: number }>();
    saes.forEach((s, ci) => cols.get(s)!.forEach((nd, ri) => pos.set(`${s}:${nd.feature}`, { x: 4 + ci * colW, y: top0 + ri * rowH })));
    const root = svg("svg", { width, height, viewBox: `0 0 ${width} ${height}`, class: "mw-feat-flow" });
    saes.forEach((s, ci) => {
      const t = svg("text", { x: 4 + ci * colW, y: 12, class: "mw-feat-flowhead" });
      t.textContent = ls[s] ?? `SAE ${s}`;
      root.append(t);
    });
    for (const e of lin.edges) {
      const a = pos.get(`${e.from[0]}:${e.from[1]}`);
      const b = pos.get(`${e.to[0]}:${e.to[1]}`);
      if (!a || !b) continue;
      const x1 = a.x + nodeW;
      const y1 = a.y + 11;
      const x2 = b.x;
      const y2 = b.y + 11;
      const mid = (x1 + x2) / 2;
      const strength = (byCosine ? e.cosine : e.correlation) ?? 0;
      const path = svg("path", {
        d: `M${x1},${y1} C${mid},${y1} ${mid},${y2} ${x2},${y2}`,
        class: "mw-feat-edge",
        "stroke-width": (1 + 5 * Math.min(1, Math.abs(strength))).toFixed(2),
        stroke: css(diverging(strength >= 0 ? 0.35 + 0.65 * Math.min(1, strength) : -0.8)),
        "data-testid": `edge-${e.from[0]}-${e.from[1]}-${e.to[0]}-${e.to[1]}`,
      });
      const tip = svg("title");
      const corr = e.correlation === null ? "" : `correlation ${fmt(e.correlation, 3)}, `;
      tip.textContent = `${featureName(ls, e.from[0], e.from[1])} → ${featureName(ls, e.to[0], e.to[1])}: ${corr}decoder cosine ${fmt(e.cosine, 3)}`;
      path.append(tip);
      root.append(path);
    }
    for (const [s, nodes] of cols) {
      for (const nd of nodes) {
        const p = pos.get(`${s}:${nd.feature}`)!;
        const isSel = s === d.sae && nd.feature === d.feature;
        const g = svg("g", { class: "mw-feat-node" + (isSel ? " mw-selected" : ""), "data-testid": `node-${s}-${nd.feature}`, transform: `translate(${p.x},${p.y})` });
        g.append(svg("rect", { width: nodeW, height: 22, rx: 4 }));
        const t = svg("text", { x: 5, y: 15 });
        t.textContent = clip(`#${nd.feature} ${labelText(s, nd.feature)}`, Math.floor((nodeW - 8) / 6.2));
        const tip = svg("title");
        tip.textContent = `${featureName(ls, s, nd.feature)} — promotes ${labelText(s, nd.feature)}${isSel ? "" : ` (link ${fmt(nd.score, 2)})`}`;
        g.append(t, tip);
        g.addEventListener("click", () => selectFeature(s, nd.feature));
        root.append(g);
      }
    }
    box.append(h("div", { class: "mw-feat-flowbox" }, root));
    return box;
  };

  const effectTable = (name: string, e: { tokens: string[]; values: Encoded } | undefined, testid: string): HTMLElement => {
    const t = h("table", { class: "mw-table mw-feat-effects", "data-testid": testid }, h("thead", {}, h("tr", {}, h("th", {}, name), h("th", {}, "logit"))));
    if (!e) return t;
    const v = decodeArray(e.values);
    let max = 0;
    for (let k = 0; k < v.data.length; k++) max = Math.max(max, Math.abs(v.data[k]));
    const body = h("tbody", {});
    e.tokens.forEach((tok, k) => {
      const cell = h("td", { class: "mw-num" }, fmt(v.data[k], 3));
      cell.style.background = css(diverging((v.data[k] / (max || 1)) * 0.7));
      body.append(h("tr", {}, h("td", { class: "mw-tok", title: JSON.stringify(tok) }, showToken(tok)), cell));
    });
    t.append(body);
    return t;
  };

  const drawFeaturePanel = (): void => {
    featurePanel.replaceChildren();
    const d: FeatureDetail = model.get("feature") ?? {};
    if (d.sae === undefined || d.feature === undefined || !selectedFeature || d.sae !== selectedFeature.sae || d.feature !== selectedFeature.feature) {
      if (selectedFeature) featurePanel.append(h("div", { class: "mw-subtitle", "data-testid": "feature-title" }, `${featureName(labels(), selectedFeature.sae, selectedFeature.feature)}: loading…`));
      else featurePanel.append(h("div", { class: "mw-subtitle" }, "Feature"), h("div", { class: "mw-note" }, "Click a feature bar to see where it fires, what it promotes, where it comes from and goes, and to ablate or steer it."));
      return;
    }
    const toks = tokens();
    const acts = d.activations ? decodeArray(d.activations) : null;
    let nFire = 0;
    let max = 0;
    if (acts) for (let k = 0; k < acts.data.length; k++) {
      if (acts.data[k] > 0) nFire++;
      max = Math.max(max, acts.data[k]);
    }
    const freq = typeof d.frequency === "number" ? `; fires on ${fmt(100 * d.frequency, 1)}% of the link sample` : "";
    featurePanel.append(
      h("div", { class: "mw-subtitle", "data-testid": "feature-title" }, `${featureName(labels(), d.sae, d.feature)} — fires on ${nFire}/${toks.length} tokens, max ${fmt(max, 2)}${freq}`),
    );
    const strip = h("div", { class: "mw-token-strip", "data-testid": "feature-acts" });
    toks.forEach((tok, k) => {
      const v = acts ? acts.data[k] : 0;
      const span = h("span", { class: "mw-token" + (k === selectedToken ? " mw-token-hover" : ""), "data-pos": k, title: `${JSON.stringify(tok)}@${k}: ${fmt(v, 3)}` }, showToken(tok));
      if (v > 0) {
        span.style.background = css(sequential(0.15 + 0.85 * (v / (max || 1))));
        if (v / (max || 1) > 0.6) span.style.color = "#fff";
      }
      span.addEventListener("click", () => selectToken(k));
      strip.append(span);
    });
    featurePanel.append(h("div", { class: "mw-note" }, "Activation on every token of the prompt:"), strip);
    featurePanel.append(
      h("div", { class: "mw-subtitle" }, "Direct logit effects (decoder direction through the final norm and unembedding)"),
      h("div", { class: "mw-row", "data-testid": "logit-effects" }, effectTable("promotes", d.promoted, "promoted"), effectTable("suppresses", d.suppressed, "suppressed")),
    );
    featurePanel.append(drawLineage(d));
    featurePanel.append(drawCorpus(d));
  };

  // ------------------------------------------------------------------ drawing: corpus panel and search
  const contextRow = (c: CorpusContext, testid: string, what: string): HTMLElement => {
    const row = h("div", { class: "mw-feat-context", "data-testid": testid }, h("span", { class: "mw-num" }, what));
    c.tokens.forEach((tok, k) => {
      const span = h("span", { class: "mw-token" + (k === c.highlight ? " mw-feat-hit" : ""), title: JSON.stringify(tok) }, showToken(tok));
      if (k === c.highlight) span.style.background = css(sequential(0.75));
      row.append(span);
    });
    return row;
  };

  const drawCorpus = (d: FeatureDetail): HTMLElement => {
    const box = h("div", { class: "mw-feat-corpus", "data-testid": "corpus" });
    box.append(h("div", { class: "mw-subtitle" }, "Over the corpus"));
    const info = model.get("corpus_info") ?? {};
    const c = d.corpus;
    if (!c) {
      if (!info.n_docs) {
        box.append(h("div", { class: "mw-note" }, "No corpus: pass corpus= to show_features for top-activating contexts, density and histogram."));
        return box;
      }
      const btn = h("button", { class: "mw-btn", "data-testid": "corpus-compute" }, `Compute this SAE's features over ${info.n_docs} documents of ${info.source || "the corpus"}`);
      btn.addEventListener("click", () => w.ask("corpus", { sae: d.sae }));
      box.append(btn);
      return box;
    }
    box.append(h("div", { class: "mw-note", "data-testid": "corpus-density" }, `fires on ${fmt(100 * c.density, 3)}% of ${c.n_tokens} tokens (${c.n_docs} documents)`));
    const edges = decodeArray(c.hist_edges);
    const counts = decodeArray(c.hist_counts);
    let lo = counts.data.length;
    let hi = -1;
    let peak = 0;
    for (let k = 0; k < counts.data.length; k++) if (counts.data[k] > 0) { lo = Math.min(lo, k); hi = k; peak = Math.max(peak, counts.data[k]); }
    if (hi >= 0) {
      const w = 8;
      const H = 40;
      const plot = svg("svg", { width: (hi - lo + 1) * w + 2, height: H + 2, class: "mw-feat-hist", "data-testid": "corpus-hist" });
      for (let k = lo; k <= hi; k++) {
        const bh = (counts.data[k] / (peak || 1)) * H;
        const bar = svg("rect", { x: (k - lo) * w + 1, y: H + 1 - bh, width: w - 1, height: bh, fill: css(sequential(0.6)), "data-count": counts.data[k] });
        const tip = svg("title");
        tip.textContent = `${fmt(edges.data[k], 3)}–${fmt(edges.data[k + 1], 3)}: ${counts.data[k]} tokens`;
        bar.append(tip);
        plot.append(bar);
      }
      box.append(h("div", { class: "mw-note" }, "Histogram of its non-zero activations (log-spaced bins):"), plot);
    }
    const topBox = h("div", { "data-testid": "corpus-top" }, h("div", { class: "mw-note" }, "Top-activating contexts:"));
    c.top.forEach((ctx, k) => topBox.append(contextRow(ctx, `context-${k}`, fmt(ctx.value ?? 0, 2))));
    const qBox = h("div", { "data-testid": "corpus-quantiles" }, h("div", { class: "mw-note" }, "Samples from lower quantiles:"));
    c.quantiles.forEach((ctx, k) => qBox.append(contextRow(ctx, `quantile-${k}`, `q${Math.round(100 * (ctx.q ?? 0))} ${fmt(ctx.low ?? 0, 2)}–${fmt(ctx.high ?? 0, 2)}`)));
    box.append(topBox, qBox);
    return box;
  };

  const drawSearch = (): void => {
    const ls = labels();
    if (searchSae.options.length !== ls.length) {
      searchSae.replaceChildren(...ls.map((lab, i) => h("option", { value: String(i) }, lab)));
    }
    searchResults.replaceChildren();
    const a: SearchAnswer = model.get("search") ?? {};
    if (!a.features || !a.features.length || a.sae === undefined) return;
    const sae = a.sae;
    searchResults.append(h("span", { class: "mw-note" }, `Features of ${ls[sae] ?? sae} promoting ${showToken(a.token ?? "")}: `));
    for (const r of a.features) {
      const btn = h("button", { class: "mw-chip", "data-testid": `found-${sae}-${r.feature}`, title: `direct effect ${fmt(r.effect, 3)}` }, `#${r.feature} ${labelText(sae, r.feature)}`);
      btn.addEventListener("click", () => selectFeature(sae, r.feature));
      searchResults.append(btn);
    }
  };

  searchBox.addEventListener("keydown", (ev: KeyboardEvent) => {
    if (ev.key !== "Enter" || !searchBox.value.trim()) return;
    w.status.setLocalError("");
    const sae = Number(searchSae.value || 0);
    const q = searchBox.value;
    const num = q.trim().replace(/^#/, "");
    if (/^\d+$/.test(num)) {
      selectFeature(sae, Number(num));
      return;
    }
    client.request("search", { sae, query: q }).catch(fail);
  });

  // ------------------------------------------------------------------ controls
  const currentInterventions = (): Intervention[] => (model.get("interventions") ?? []).map((iv: Intervention) => ({ sae: iv.sae, feature: iv.feature, mode: iv.mode, value: iv.value, positions: iv.positions ?? null }));

  const drawControls = (): void => {
    controls.replaceChildren();
    const d: FeatureDetail = model.get("feature") ?? {};
    const ready = !!selectedFeature && d.sae === selectedFeature.sae && d.feature === selectedFeature.feature;
    if (!selectedFeature || !ready) return;
    const { sae, feature } = selectedFeature;
    const name = featureName(labels(), sae, feature);
    const maxAct = Math.max(1, d.max_activation ?? 1);
    const hi = Math.ceil(maxAct * 4);
    const existing = currentInterventions().find((iv) => iv.sae === sae && iv.feature === feature);
    if (steerValue === null) steerValue = existing?.mode === "clamp" ? existing.value : Math.round(maxAct * 2 * 10) / 10;
    const posSelect = h("select", { class: "mw-select", "aria-label": "where to intervene", "data-testid": "positions" });
    posSelect.append(h("option", { value: "all" }, "at all positions"));
    const tok = tokens()[selectedToken];
    posSelect.append(h("option", { value: "token", disabled: selectedToken < 0 }, selectedToken >= 0 ? `at ${clip(showToken(tok ?? ""), 10)}@${selectedToken} only` : "at the selected token only"));
    posSelect.value = selectedToken < 0 ? "all" : positionsMode;
    posSelect.addEventListener("change", () => {
      positionsMode = posSelect.value === "token" ? "token" : "all";
    });
    const positions = (): number[] | null => (positionsMode === "token" && selectedToken >= 0 ? [selectedToken] : null);
    const ablate = h("button", { class: "mw-button", "data-testid": "ablate-button", title: `set ${name} to 0 and re-run the model` }, `Ablate ${name}`);
    ablate.addEventListener("click", () => apply({ sae, feature, mode: "ablate", value: 0, positions: positions() }));
    const slider = h("input", { type: "range", min: -hi, max: hi, step: 0.01, value: steerValue, class: "mw-feat-slider", "data-testid": "steer-slider", "aria-label": "clamp value" }) as HTMLInputElement;
    slider.value = String(steerValue);
    const valueLabel = h("span", { class: "mw-num mw-feat-steerval", "data-testid": "steer-value" }, fmt(steerValue, 2));
    slider.addEventListener("input", () => {
      steerValue = Number(slider.value);
      valueLabel.textContent = fmt(steerValue, 2);
    });
    const steer = () => apply({ sae, feature, mode: "clamp", value: Math.round(Number(slider.value) * 100) / 100, positions: positions() });
    slider.addEventListener("change", steer);
    const steerButton = h("button", { class: "mw-button", "data-testid": "steer-button", title: `clamp ${name} to the slider's value and re-run` }, "Steer");
    steerButton.addEventListener("click", steer);
    controls.append(
      h("div", { class: "mw-row mw-controls" }, ablate, posSelect),
      h("div", { class: "mw-row mw-controls" }, h("span", {}, "Clamp to "), slider, valueLabel, steerButton, h("span", { class: "mw-note" }, `(max on this prompt ${fmt(d.max_activation ?? 0, 2)})`)),
    );
  };

  const drawChips = (): void => {
    chips.replaceChildren();
    const ivs = currentInterventions();
    if (!ivs.length) {
      chips.append(h("span", { class: "mw-note" }, "No intervention: the model runs clean."));
      return;
    }
    for (const iv of ivs) {
      const chip = h("span", { class: "mw-chip", "data-testid": `chip-${iv.sae}-${iv.feature}` }, describeIntervention(iv, labels(), tokens()) + " ");
      const x = h("button", { class: "mw-chip-x", title: "remove this intervention", "data-testid": `remove-${iv.sae}-${iv.feature}` }, "×");
      x.addEventListener("click", () => setInterventions(ivs.filter((o) => !(o.sae === iv.sae && o.feature === iv.feature))));
      chip.append(x);
      chips.append(chip);
    }
    const clear = h("button", { class: "mw-button", "data-testid": "clear-interventions" }, "clear all");
    clear.addEventListener("click", () => setInterventions([]));
    chips.append(clear);
  };

  // ------------------------------------------------------------------ results
  const drawResults = (): void => {
    results.replaceChildren();
    const r: InterventionState = model.get("intervention") ?? {};
    if (!r.before || !r.after) return;
    const ls = labels();
    const toks = tokens();
    const desc = (r.interventions ?? []).map((iv) => describeIntervention(iv, ls, toks)).join("; ");
    const pos = r.position ?? toks.length - 1;
    const nEdits = (r.interventions ?? []).length;
    const table = predictionsTable(
      [
        { label: "before", ...r.before },
        { label: `after (${nEdits} edit${nEdits === 1 ? "" : "s"})`, ...r.after, cellTestid: "after", headerTestid: "after-header" },
      ],
      "predictions",
    );
    let lossNote = "";
    if (r.loss_before && r.loss_after) {
      lossNote = `Mean next-token loss ${fmt(meanLoss(r.loss_before), 3)} → ${fmt(meanLoss(r.loss_after), 3)}; largest logit change ${fmt(r.max_logit_change ?? 0, 3)}.`;
    }
    const changedBox = h("div", { class: "mw-col", "data-testid": "changed-features" }, h("div", { class: "mw-subtitle" }, "Downstream features that changed most (activation before → after, at the position of the largest change)"));
    const changed = r.changed ?? [];
    if (!changed.length) changedBox.append(h("div", { class: "mw-note" }, "none"));
    const maxChange = Math.max(1e-9, ...changed.map((c) => c.max_change));
    for (const c of changed) {
      const up = c.after >= c.before;
      const bar = h("span", { class: "mw-feat-chbar" });
      bar.style.width = `${Math.max(2, (c.max_change / maxChange) * 60).toFixed(1)}px`;
      bar.style.background = css(diverging(up ? 0.7 : -0.7));
      const item = h(
        "button",
        { class: "mw-feat-changed-item", "data-testid": `changed-${c.sae}-${c.feature}`, title: `total over the prompt ${fmt(c.before_total, 2)} → ${fmt(c.after_total, 2)}; click to inspect` },
        h("span", { class: "mw-feat-chtrack" }, bar),
        h("span", { class: "mw-feat-id" }, featureName(ls, c.sae, c.feature)),
        h("span", { class: "mw-num" }, `${fmt(c.before, 2)} → ${fmt(c.after, 2)}`),
        h("span", { class: "mw-feat-at", title: `at ${JSON.stringify(toks[c.position] ?? "")}@${c.position}` }, `at ${clip(showToken(toks[c.position] ?? ""), 8)}@${c.position}`),
        h("span", { class: "mw-feat-label" }, labelText(c.sae, c.feature)),
      );
      item.addEventListener("click", () => selectFeature(c.sae, c.feature));
      changedBox.append(item);
    }
    results.append(
      h("div", { class: "mw-subtitle", "data-testid": "results-title" }, `After ${desc}`),
      h("div", { class: "mw-note" }, `Next-token predictions at ${clip(showToken(toks[pos] ?? ""), 12)}@${pos}. ${lossNote}`),
      h("div", { class: "mw-row" }, table, changedBox),
    );
  };

  const drawAll = (): void => {
    drawTitle();
    drawRecon();
    drawGrid();
    drawTokenPanel();
    drawFeaturePanel();
    drawControls();
    drawChips();
    drawResults();
    drawSearch();
  };

  // ------------------------------------------------------------------ actions
  function selectToken(pos: number): void {
    selectedToken = pos;
    drawGrid();
    drawTokenPanel();
    drawFeaturePanel();
    drawControls();
    client.request("select_token", { pos }).catch(fail);
  }

  function selectFeature(sae: number, feature: number): void {
    selectedFeature = { sae, feature };
    steerValue = null;
    drawTokenPanel();
    drawFeaturePanel();
    drawControls();
    client.request("select_feature", { sae, feature }).catch(fail);
  }

  function setInterventions(ivs: Intervention[]): void {
    w.ask("intervene", { interventions: ivs });
  }

  function apply(iv: Intervention): void {
    const rest = currentInterventions().filter((o) => !(o.sae === iv.sae && o.feature === iv.feature));
    setInterventions([...rest, iv]);
  }

  colourSelect.addEventListener("change", () => {
    w.set("colour_by", colourSelect.value);
    drawGrid();
  });

  // ------------------------------------------------------------------ trait changes
  // One kernel message can change several traits (intervention, interventions, labels): their
  // redraws are coalesced into one pass at the end of the current task.
  const pending = new Set<() => void>();
  let queued = false;
  const later = (...fns: (() => void)[]): void => {
    for (const f of fns) pending.add(f);
    if (queued) return;
    queued = true;
    queueMicrotask(() => {
      queued = false;
      const fns = [...pending];
      pending.clear();
      for (const f of fns) f();
    });
  };
  const onSelectedToken = (): void => {
    const p = model.get("selected_token");
    if (typeof p === "number" && p !== selectedToken) {
      selectedToken = p;
      later(drawGrid, drawTokenPanel, drawFeaturePanel, drawControls);
    }
  };
  const onFeature = (): void => {
    const sf = model.get("selected_feature");
    if (sf && typeof sf.sae === "number" && (selectedFeature?.sae !== sf.sae || selectedFeature?.feature !== sf.feature)) {
      selectedFeature = { sae: sf.sae, feature: sf.feature };
      steerValue = null;
    }
    later(drawTokenPanel, drawFeaturePanel, drawControls);
  };
  const onIntervention = (): void => {
    // a clamp set from Python moves the slider of the selected feature
    const sel = selectedFeature;
    const iv = sel ? currentInterventions().find((o) => o.sae === sel.sae && o.feature === sel.feature && o.mode === "clamp") : undefined;
    if (iv && iv.value !== steerValue) {
      steerValue = iv.value;
      later(drawControls);
    }
    later(drawGrid, drawChips, drawResults);
  };
  const onLabels = (): void => later(drawTokenPanel, drawFeaturePanel, drawResults, drawSearch);
  const onSearch = (): void => later(drawSearch);
  const onColour = (): void => later(drawTitle, drawGrid);
  const onData = (): void => {
    decoded.clear();
    later(drawAll);
  };
  w.on("selected_token", onSelectedToken);
  w.on(["selected_feature", "feature", "corpus_info"], onFeature);
  w.on(["intervention", "interventions"], onIntervention);
  w.on("feature_labels", onLabels);
  w.on("search", onSearch);
  w.on("colour_by", onColour);
  w.on(["overview", "top", "recon", "tokens"], onData);

  const sf = model.get("selected_feature");
  if (sf && typeof sf.sae === "number") selectedFeature = { sae: sf.sae, feature: sf.feature };
  drawAll();

  return w.dispose;
}

export default { render };
