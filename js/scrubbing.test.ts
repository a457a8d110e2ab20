// @vitest-environment happy-dom
import { describe, expect, it } from "vitest";
import { pct, render, type Layout, type TreeRow } from "./scrubbing";
import { f32, harness } from "./lib/fake_model";

const TREE: TreeRow[] = [
  { path: "output", component: "output", feature: "identity", kept: true, active: true, depth: 0, parent: -1 },
  { path: "output/L1H2", component: "L1H2", feature: "identity", kept: true, active: true, depth: 1, parent: 0 },
  { path: "output/L1H2/q", component: "q", feature: "identity", kept: true, active: true, depth: 2, parent: 1 },
  { path: "output/L1H2/k", component: "k", feature: "identity", kept: true, active: true, depth: 2, parent: 1 },
  { path: "output/L1H2/k/L0H2", component: "L0H2", feature: "previous_token", kept: true, active: true, depth: 3, parent: 3 },
  { path: "output/embed", component: "embed", feature: "token", kept: false, active: false, depth: 1, parent: 0 },
];

const lay = (nodes: number[][], width: number, height: number): Layout => ({
  nodes: nodes.map(([row, parent, hidden, x, y]) => ({ row, parent, hidden, x, y })),
  width,
  height,
  node_w: 96,
  node_h: 36,
});
// the layout trait Python sends for TREE (mechwidgets/widgets/_scrubbing_tree.py:tree_layout), as
// [row, parent, hidden, x, y] per node ...
const LAYOUT = lay([[0, -1, 0, 188, 28], [1, 0, 0, 110, 86], [2, 1, 0, 58, 144], [3, 1, 0, 162, 144], [4, 3, 0, 162, 202], [5, 0, 0, 266, 86]], 324, 230);
// ... and with output/L1H2 folded
const FOLDED = lay([[0, -1, 0, 110, 28], [1, 0, 3, 58, 86], [5, 0, 0, 162, 86]], 220, 114);

const { makeModel, mount, itRemovesItsListeners } = harness(render, () => ({
    live: true,
    tree: TREE,
    collapsed: [],
    layout: LAYOUT,
    features: [
      { name: "identity", description: "the full input" },
      { name: "token", description: "the token at this position" },
      { name: "previous_token", description: "the token just before this position" },
    ],
    dataset: { n_inputs: 256, length: 41, positions: [21, 22], metric: "loss", n_seeds: 2, n_references: 512 },
    result: {
      clean: 0.5,
      random: 4.5,
      scrubbed: 1.0,
      fraction: 0.875,
      fraction_std: 0.025,
      per_seed: f32([4.4, 4.6, 0.9, 1.1, 0.9, 0.85], [3, 2]),
      metric: "loss",
      n_references: 512,
      seconds: 0.5,
      step: 2,
    },
    history: [
      { step: 1, label: "initial hypothesis", fraction: 0.9, fraction_std: 0.01, scrubbed: 0.9, random: 4.5, clean: 0.5, nodes: {} },
      { step: 2, label: "output/embed: kept → resampled", fraction: 0.875, fraction_std: 0.025, scrubbed: 1.0, random: 4.5, clean: 0.5, nodes: {} },
    ],
}));

const node = (el: HTMLElement, path: string) => el.querySelector(`[data-testid="node-${path}"]`) as SVGGElement;
const toggle = (el: HTMLElement, path: string) => el.querySelector(`[data-testid="toggle-${path}"]`) as SVGGElement;
const last = (xs: any[]) => xs[xs.length - 1];
const click = (target: Element) => target.dispatchEvent(new MouseEvent("click", { bubbles: true }));

describe("scrubbing frontend", () => {
  it("draws the hypothesis as a tree: a box per node, an edge per child, a switch on each non-root", () => {
    const el = mount(makeModel());
    expect(el.querySelectorAll(".mw-scrub-node").length).toBe(TREE.length);
    expect(el.querySelectorAll(".mw-scrub-edge").length).toBe(TREE.length - 1);
    expect(el.querySelectorAll(".mw-scrub-switch").length).toBe(TREE.length - 1);
    expect(toggle(el, "output")).toBeNull();
    const k = node(el, "output/L1H2/k/L0H2");
    expect(k.textContent).toContain("L0H2");
    expect(k.textContent).toContain("previous_token");
    expect(k.getAttribute("class")).toContain("mw-scrub-kept");
    expect(node(el, "output/embed").getAttribute("class")).toContain("mw-scrub-resampled");
    expect(node(el, "output/embed").getAttribute("class")).toContain("mw-scrub-off");
    expect(el.querySelector(".mw-title")!.textContent).toBe("Causal scrubbing — 256 inputs × 41 tokens, loss on 512 predictions, 2 seeds");
  });

  it("draws each node and edge where the layout trait puts them", () => {
    const model = makeModel();
    const el = mount(model);
    const svg = el.querySelector('[data-testid="tree"] svg')!;
    expect([svg.getAttribute("width"), svg.getAttribute("height")]).toEqual(["324", "230"]);
    // each box's top-left corner is its centre less half the box size the trait gives
    for (const n of LAYOUT.nodes) expect(node(el, TREE[n.row].path).getAttribute("transform")).toBe(`translate(${n.x - 48},${n.y - 18})`);
    const edge = el.querySelectorAll(".mw-scrub-edge")[3]; // output/L1H2/k -> output/L1H2/k/L0H2
    expect(["x1", "y1", "x2", "y2"].map((a) => edge.getAttribute(a))).toEqual(["162", "162", "162", "184"]);
    // a layout with other numbers moves the boxes: the page computes no layout of its own
    const moved = { ...LAYOUT, node_w: 50, nodes: LAYOUT.nodes.map((n) => ({ ...n, x: n.x + 100 })) };
    model.change("layout", moved);
    expect(node(el, "output").getAttribute("transform")).toBe("translate(263,10)");
    expect(node(el, "output").querySelector("rect")!.getAttribute("width")).toBe("50");
    expect(pct(0.8754)).toBe("87.5%");
    expect(pct(null)).toBe("n/a");
  });

  it("folds a node's inputs through Python and draws only the nodes the layout lists", () => {
    const model = makeModel();
    const el = mount(model);
    expect(el.querySelectorAll(".mw-scrub-node").length).toBe(TREE.length);
    click(el.querySelector('[data-testid="fold-output/L1H2"]')!);
    expect(model.requests("fold").map((m) => m.args)).toEqual([{ path: "output/L1H2", folded: true }]);
    expect(el.querySelectorAll(".mw-scrub-node").length).toBe(TREE.length); // nothing moves until Python answers
    model.change("collapsed", ["output/L1H2"]);
    model.change("layout", FOLDED);
    expect(el.querySelectorAll(".mw-scrub-node").length).toBe(3);
    expect(el.querySelectorAll(".mw-scrub-edge").length).toBe(2);
    expect(node(el, "output/L1H2").textContent).toContain("+3");
    expect(node(el, "output/L1H2").getAttribute("transform")).toBe("translate(10,68)");
    click(el.querySelector('[data-testid="fold-output/L1H2"]')!);
    expect(model.requests("fold")[1].args).toEqual({ path: "output/L1H2", folded: false });
  });

  it("toggles a node with its switch: an evaluate request, a pending note until the reply", () => {
    const model = makeModel();
    const el = mount(model);
    click(toggle(el, "output/L1H2/k/L0H2"));
    const req = model.sent.find((m) => m.type === "request");
    expect(req.kind).toBe("evaluate");
    expect(req.args).toEqual({ nodes: { "output/L1H2/k/L0H2": { kept: false } } });
    expect(el.querySelector('[data-testid="pending"]')!.textContent).toBe("re-running…");
    // the switch also selected the node
    expect(el.querySelector('[data-testid="panel-path"]')!.textContent).toBe("output/L1H2/k/L0H2");
    model.reply({ type: "reply", id: req.id, kind: "evaluate", result: { step: 3 } });
    return Promise.resolve().then(() => {
      expect(el.querySelector('[data-testid="pending"]')!.textContent).toBe("");
    });
  });

  it("selects a node and changes its state or feature from the panel", () => {
    const model = makeModel();
    const el = mount(model);
    click(node(el, "output/embed"));
    expect(el.querySelector('[data-testid="panel-path"]')!.textContent).toBe("output/embed");
    expect(node(el, "output/embed").getAttribute("class")).toContain("mw-selected");
    const kept = el.querySelector('[data-testid="node-kept"]') as HTMLButtonElement;
    expect(kept.className).not.toContain("mw-scrub-on");
    kept.click();
    expect(last(model.sent).args).toEqual({ nodes: { "output/embed": { kept: true } } });
    const select = el.querySelector('[data-testid="feature-select"]') as HTMLSelectElement;
    expect(Array.from(select.options).map((o) => o.value)).toEqual(["identity", "token", "previous_token"]);
    expect(select.value).toBe("token");
    select.value = "previous_token";
    select.dispatchEvent(new Event("change"));
    expect(last(model.sent).args).toEqual({ nodes: { "output/embed": { feature: "previous_token" } } });
    expect(el.querySelector('[data-testid="feature-description"]')!.textContent).toBe("the token at this position");
    // the root cannot be switched
    click(node(el, "output"));
    expect((el.querySelector('[data-testid="node-resampled"]') as HTMLButtonElement).disabled).toBe(true);
    expect((el.querySelector('[data-testid="feature-select"]') as HTMLSelectElement).disabled).toBe(true);
  });

  it("redraws when the kernel writes the new tree, result and history", () => {
    const model = makeModel();
    const el = mount(model);
    click(node(el, "output/L1H2/k/L0H2"));
    const tree = TREE.map((r) => (r.path === "output/L1H2/k/L0H2" ? { ...r, kept: false, active: false } : r));
    model.change("tree", tree);
    expect(node(el, "output/L1H2/k/L0H2").getAttribute("class")).toContain("mw-scrub-resampled");
    expect(el.querySelector('[data-testid="node-resampled"]')!.className).toContain("mw-scrub-on");
    const history = [...model.state.history, { step: 3, label: "output/L1H2/k/L0H2: kept → resampled", fraction: 0.1, fraction_std: 0.05, scrubbed: 4.1, random: 4.5, clean: 0.5, nodes: {} }];
    model.state.history = history;
    model.change("result", { ...model.state.result, fraction: 0.1, fraction_std: 0.05, scrubbed: 4.1, step: 3 });
    expect(el.querySelector('[data-testid="recovered-text"]')!.textContent).toBe("10.0% ± 5.0%");
    expect(el.querySelectorAll('[data-testid="history-table"] tbody tr').length).toBe(3);
    expect(el.querySelector('[data-testid="history-row-3"]')!.className).toContain("mw-selected");
    expect(el.querySelector('[data-testid="history-bar-3"]')!.getAttribute("class")).toContain("mw-selected");
  });

  it("draws the recovered fraction as a bar with its spread, the losses and the per-seed values", () => {
    const el = mount(makeModel());
    expect(el.querySelector('[data-testid="recovered-text"]')!.textContent).toBe("87.5% ± 2.5%");
    expect((el.querySelector('[data-testid="recovered-fill"]') as HTMLElement).style.width).toBe("87.50%");
    const whisker = el.querySelector('[data-testid="recovered-whisker"]') as HTMLElement;
    expect(whisker.style.left).toBe("85.00%");
    expect(whisker.style.width).toBe("5.00%");
    expect(el.querySelector('[data-testid="losses"]')!.textContent).toBe("loss: clean 0.500 · scrubbed 1.000 · random 4.500");
    expect(el.querySelector('[data-testid="result"]')!.textContent).toContain("per seed: 90.0%, 85.0%");
  });

  it("lists the history as a table and a bar chart; clicking one restores it", () => {
    const model = makeModel();
    const el = mount(model);
    const rows = el.querySelectorAll('[data-testid="history-table"] tbody tr');
    expect(rows.length).toBe(2);
    expect(rows[1].textContent).toContain("output/embed: kept → resampled");
    expect(rows[1].textContent).toContain("87.5% ± 2.5%");
    expect(rows[1].className).toContain("mw-selected");
    expect(el.querySelectorAll('[data-testid^="history-bar-"]').length).toBe(2);
    (rows[0] as HTMLElement).click();
    expect(last(model.sent)).toMatchObject({ type: "request", kind: "restore", args: { step: 1 } });
    click(el.querySelector('[data-testid="history-bar-2"]')!);
    expect(last(model.sent)).toMatchObject({ kind: "restore", args: { step: 2 } });
  });

  it("shows the kernel's errors and progress, with a cancel button", () => {
    const model = makeModel();
    const el = mount(model);
    model.change("error", "node 'output/L9H0': this model has no layer 9");
    const banner = el.querySelector(".mw-error") as HTMLElement;
    expect(banner.textContent).toBe("node 'output/L9H0': this model has no layer 9");
    expect(banner.style.display).toBe("block");
    model.change("progress", { kind: "evaluate", id: 3, done: 1, total: 5, message: "scrubbing: seed 2 of 5" });
    expect(el.querySelector(".mw-progress")!.textContent).toContain("scrubbing: seed 2 of 5 1/5");
    (el.querySelector(".mw-progress button") as HTMLButtonElement).click();
    expect(last(model.sent)).toEqual({ type: "cancel", kind: "evaluate", id: 3 });
  });

  it("a cancelled evaluation (the user's cancel, a restore) shows no error banner", async () => {
    const model = makeModel();
    const el = mount(model);
    click(toggle(el, "output/L1H2/k/L0H2"));
    const req = model.requests("evaluate")[0];
    expect(el.querySelector('[data-testid="pending"]')!.textContent).toBe("re-running…");
    model.reply({ type: "reply", id: req.id, kind: "evaluate", cancelled: true, error: "evaluate: history step 2 was restored" });
    await Promise.resolve();
    await Promise.resolve();
    expect(el.querySelector('[data-testid="pending"]')!.textContent).toBe("");
    expect((el.querySelector(".mw-error") as HTMLElement).style.display).toBe("none");
    // an error reply that is no cancel is shown (when the kernel did not set the trait)
    click(toggle(el, "output/L1H2/k/L0H2"));
    const again = model.requests("evaluate")[1];
    model.reply({ type: "reply", id: again.id, kind: "evaluate", error: "evaluate: the kernel died" });
    await Promise.resolve();
    await Promise.resolve();
    expect((el.querySelector(".mw-error") as HTMLElement).textContent).toBe("evaluate: the kernel died");
  });

  it("a static view (no kernel) draws everything but sends nothing", () => {
    const model = makeModel({ live: false });
    const el = mount(model);
    click(toggle(el, "output/L1H2"));
    (el.querySelector('[data-testid="history-table"] tbody tr') as HTMLElement).click();
    expect(model.sent).toEqual([]);
    expect(el.querySelector(".mw-title")!.textContent).toContain("static view");
    expect((el.querySelector('[data-testid="node-kept"]') as HTMLButtonElement).disabled).toBe(true);
  });

  it("inserts hostile names as text, never as HTML", () => {
    const evil = "<img src=x onerror=alert(1)>";
    const tree = TREE.map((r) => (r.path === "output/embed" ? { ...r, feature: evil } : r));
    const model = makeModel({ tree, features: [{ name: evil, description: "</script><b>x</b>" }] });
    model.state.history[0].label = evil;
    const el = mount(model);
    click(node(el, "output/embed"));
    expect(el.querySelector("img")).toBeNull();
    expect(el.querySelector("b")).toBeNull();
    expect(el.querySelector('[data-testid="history-table"]')!.textContent).toContain(evil);
  });

  itRemovesItsListeners();
});
