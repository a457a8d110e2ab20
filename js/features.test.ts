// @vitest-environment happy-dom
import { describe, expect, it } from "vitest";
import { describeIntervention, featureName, render } from "./features";
import { f32, harness, i32 } from "./lib/fake_model";

const HOSTILE = "<img src=x onerror=window.__xss=1>";
const tokens = ["<bos>", " Mary", HOSTILE, " to"];
const n = tokens.length;
const S = 2;
const k = 2;
// top features [sae, pos, k]; -1 = none
const topIdx = [
  [5, 7], [5, -1], [7, 5], [1, -1],
  [3, 9], [9, 3], [3, -1], [9, 4],
];
const topVal = [
  [2, 1], [1.5, 0], [0.5, 0.25], [3, 0],
  [4, 2], [1, 0.5], [2, 0], [6, 1],
];

const { makeModel, mount, itRemovesItsListeners } = harness(render, () => ({
    tokens,
    hook_names: ["blocks.0.hook_resid_pre", "blocks.1.hook_resid_pre"],
    sae_labels: ["L0 pre", "L1 pre"],
    d_sae: [16, 16],
    overview: { n_active: i32([2, 1, 2, 1, 2, 2, 1, 2], [S, n]), total: f32([3, 1.5, 0.75, 3, 6, 1.5, 2, 7], [S, n]) },
    colour_by: "count",
    top: { indices: i32(topIdx.flat(), [S, n, k]), values: f32(topVal.flat(), [S, n, k]) },
    recon: { explained_variance: f32([0.93, 0.4], [S]), relative_error: f32([0.2, 0.8], [S]), error_norm: f32(new Array(S * n).fill(1), [S, n]), act_norm: f32(new Array(S * n).fill(2), [S, n]) },
    feature_labels: [
      { "1": [" a"], "5": [" Mary", " John"], "7": [HOSTILE] },
      { "3": [" store"], "4": [" to"], "9": [" drink", " gave"] },
    ],
    selected_token: -1,
    selected_feature: {},
    feature: {},
    interventions: [],
    intervention: {},
    links_info: { n_tokens: 100, n_prompts: 4, by: "correlation", source: "link_prompts" },
}));

const featureDetail = {
  sae: 0,
  feature: 5,
  hook_name: "blocks.0.hook_resid_pre",
  activations: f32([2, 1.5, 0.25, 0], [n]),
  promoted: { tokens: [" Mary", HOSTILE], values: f32([0.5, 0.25], [2]) },
  suppressed: { tokens: [" the", " a"], values: f32([-0.4, -0.1], [2]) },
  lineage: {
    nodes: [
      { sae: 0, feature: 5, score: 1 },
      { sae: 1, feature: 9, score: 0.8 },
      { sae: 1, feature: 3, score: 0.3 },
    ],
    edges: [
      { from: [0, 5], to: [1, 9], correlation: 0.8, cosine: 0.6 },
      { from: [0, 5], to: [1, 3], correlation: 0.3, cosine: 0.1 },
    ],
  },
  frequency: 0.125,
  max_activation: 2,
};

/** Trait changes redraw at the end of the current task (coalesced): let them run. */
const tick = () => new Promise((r) => setTimeout(r, 0));

const q = (el: HTMLElement, id: string) => el.querySelector(`[data-testid="${id}"]`) as HTMLElement;

describe("features frontend", () => {
  it("draws the overview grid, coloured by count, with tokens as text and poor SAEs flagged", () => {
    const el = mount(makeModel());
    expect(el.querySelector(".mw-title")!.textContent).toBe(`SAE features — ${n} tokens, ${S} SAEs`);
    expect(el.querySelectorAll(".mw-feat-cell").length).toBe(S * n);
    expect(q(el, "cell-1-3").textContent).toBe("2");
    expect(q(el, "token-2").textContent).toBe(HOSTILE.replace(/ /g, "\u00b7"));
    expect(el.querySelectorAll("img").length).toBe(0);
    expect(q(el, "recon-0").className).not.toContain("mw-feat-poor");
    expect(q(el, "recon-1").className).toContain("mw-feat-poor");
    expect(q(el, "recon-1").textContent).toContain("EV 0.40");
    // the darkest cell is the largest count; cells by total activation carry no number
    const model = makeModel({ colour_by: "total" });
    const el2 = mount(model);
    expect(q(el2, "cell-1-3").textContent).toBe("");
  });

  it("sends select_token on a click and draws the token's bars from the top trait", async () => {
    const model = makeModel();
    const el = mount(model);
    q(el, "cell-1-3").click();
    expect(model.last("select_token").args).toEqual({ pos: 3 });
    expect(q(el, "token-title").textContent).toBe("Top features on ·to@3");
    const bars0 = Array.from(q(el, "token-sae-0").querySelectorAll(".mw-feat-bar")).map((b) => b.getAttribute("data-testid"));
    expect(bars0).toEqual(["bar-0-1"]); // the -1 slot is not drawn
    const bars1 = Array.from(q(el, "token-sae-1").querySelectorAll(".mw-feat-bar")).map((b) => b.getAttribute("data-testid"));
    expect(bars1).toEqual(["bar-1-9", "bar-1-4"]);
    expect(q(el, "bar-1-9").querySelector(".mw-feat-label")!.textContent).toBe("·drink ·gave");
    // the largest value at this token fills the bar
    expect((q(el, "bar-1-9").querySelector(".mw-feat-barfill") as HTMLElement).style.width).toBe("100.0%");
    // a selection made from Python is followed
    model.change("selected_token", 1);
    await tick();
    expect(q(el, "token-title").textContent).toBe("Top features on ·Mary@1");
  });

  it("requests a feature on a bar click and draws its detail and lineage", async () => {
    const model = makeModel({ selected_token: 0 });
    const el = mount(model);
    q(el, "bar-0-5").click();
    expect(model.last("select_feature").args).toEqual({ sae: 0, feature: 5 });
    expect(q(el, "feature-title").textContent).toContain("loading");
    model.change("feature", featureDetail);
    model.change("selected_feature", { sae: 0, feature: 5 });
    await tick();
    expect(q(el, "feature-title").textContent).toBe("L0 pre #5 — fires on 3/4 tokens, max 2.00; fires on 12.5% of the link sample");
    expect(q(el, "feature-acts").querySelectorAll(".mw-token").length).toBe(n);
    const promoted = Array.from(q(el, "promoted").querySelectorAll("tbody td.mw-tok")).map((t) => t.textContent);
    expect(promoted).toEqual(["·Mary", HOSTILE.replace(/ /g, "\u00b7")]);
    expect(el.querySelectorAll("img").length).toBe(0);
    expect(q(el, "lineage").querySelectorAll(".mw-feat-node").length).toBe(3);
    expect(q(el, "lineage").querySelectorAll("path.mw-feat-edge").length).toBe(2);
    expect(q(el, "node-0-5").getAttribute("class")).toContain("mw-selected");
    // thicker line for the stronger link
    const w9 = Number(q(el, "edge-0-5-1-9").getAttribute("stroke-width"));
    const w3 = Number(q(el, "edge-0-5-1-3").getAttribute("stroke-width"));
    expect(w9).toBeGreaterThan(w3);
    q(el, "node-1-9").dispatchEvent(new MouseEvent("click", { bubbles: true }));
    expect(model.last("select_feature").args).toEqual({ sae: 1, feature: 9 });
  });

  it("steers with the slider and ablates at the selected token", async () => {
    const model = makeModel({ selected_token: 2, selected_feature: { sae: 0, feature: 5 }, feature: featureDetail });
    const el = mount(model);
    const slider = q(el, "steer-slider") as HTMLInputElement;
    slider.value = "6.5";
    slider.dispatchEvent(new Event("input"));
    expect(q(el, "steer-value").textContent).toBe("6.50");
    slider.dispatchEvent(new Event("change"));
    expect(model.last("intervene").args).toEqual({ interventions: [{ sae: 0, feature: 5, mode: "clamp", value: 6.5, positions: null }] });
    // an intervention in force is kept when another feature is edited
    model.change("interventions", [{ sae: 1, hook_name: "blocks.1.hook_resid_pre", feature: 9, mode: "ablate", value: 0, positions: null }]);
    await tick();
    const pos = q(el, "positions") as HTMLSelectElement;
    pos.value = "token";
    pos.dispatchEvent(new Event("change"));
    q(el, "ablate-button").click();
    expect(model.last("intervene").args.interventions).toEqual([
      { sae: 1, feature: 9, mode: "ablate", value: 0, positions: null },
      { sae: 0, feature: 5, mode: "ablate", value: 0, positions: [2] },
    ]);
  });

  it("draws an intervention's predictions, changes and chips; × removes one", async () => {
    const model = makeModel({ selected_token: 3 });
    const el = mount(model);
    const ivs = [{ sae: 0, hook_name: "blocks.0.hook_resid_pre", feature: 5, mode: "clamp", value: 6.5, positions: [3] }];
    model.change("interventions", ivs);
    model.change("intervention", {
      interventions: ivs,
      position: 3,
      before: { tokens: [" Mary", " John"], token_ids: [1, 2], probs: f32([0.6, 0.3], [2]) },
      after: { tokens: [" John", HOSTILE], token_ids: [2, 3], probs: f32([0.7, 0.1], [2]) },
      loss_before: f32([1, 2, 3], [3]),
      loss_after: f32([1, 2, 4], [3]),
      changed: [
        { sae: 1, feature: 9, max_change: 3, position: 3, before: 6, after: 3, before_total: 7, after_total: 4 },
        { sae: 1, feature: 4, max_change: 1, position: 3, before: 0, after: 1, before_total: 0, after_total: 1 },
      ],
      overview: { n_active: i32([2, 1, 2, 1, 2, 2, 1, 3], [S, n]), total: f32(new Array(S * n).fill(1), [S, n]) },
      max_logit_change: 1.25,
    });
    await tick();
    expect(q(el, "results-title").textContent).toBe("After L0 pre #5: clamp to 6.50 (·to@3)");
    const after = Array.from(q(el, "predictions").querySelectorAll("tbody tr td:nth-child(4)")).map((t) => t.textContent);
    expect(after).toEqual(["·John", HOSTILE.replace(/ /g, "\u00b7")]);
    expect(el.querySelectorAll("img").length).toBe(0);
    expect(el.textContent).toContain("Mean next-token loss 2.000 → 2.333; largest logit change 1.250.");
    expect(q(el, "changed-1-9").textContent).toContain("6.00 → 3.00");
    expect(q(el, "cell-1-3").className).toContain("mw-feat-changed");
    expect(q(el, "cell-1-2").className).not.toContain("mw-feat-changed");
    expect(q(el, "chip-0-5").textContent).toContain("clamp to 6.50 (·to@3)");
    q(el, "changed-1-9").click();
    expect(model.last("select_feature").args).toEqual({ sae: 1, feature: 9 });
    q(el, "remove-0-5").click();
    expect(model.last("intervene").args).toEqual({ interventions: [] });
  });

  it("shows errors in the banner; replies to superseded requests are ignored", async () => {
    const model = makeModel();
    const el = mount(model);
    const banner = el.querySelector(".mw-error") as HTMLElement;
    expect(banner.style.display).toBe("none");
    model.change("error", "feature 99 is out of range");
    expect(banner.style.display).toBe("block");
    expect(banner.textContent).toBe("feature 99 is out of range");
    model.change("error", "");
    q(el, "cell-0-1").click();
    q(el, "cell-0-2").click();
    const [first, second] = model.sent.filter((m) => m.kind === "select_token");
    model.reply({ type: "reply", id: first.id, kind: "select_token", error: "stale" });
    model.reply({ type: "reply", id: second.id, kind: "select_token", result: { pos: 2 } });
    await Promise.resolve();
    expect(banner.style.display).toBe("none");
  });

  it("sets colour_by from the select", () => {
    const model = makeModel();
    const el = mount(model);
    const sel = q(el, "colour-by") as HTMLSelectElement;
    sel.value = "total";
    model.state.colour_by = "total";
    sel.dispatchEvent(new Event("change"));
    expect(model.sets).toContainEqual({ colour_by: "total" });
    expect(q(el, "cell-1-3").textContent).toBe("");
  });

  it("names features and interventions", () => {
    expect(featureName(["L0 pre"], 0, 12)).toBe("L0 pre #12");
    const iv = { sae: 0, feature: 12, mode: "ablate" as const, value: 0, positions: [0, 1] };
    expect(describeIntervention(iv, ["L0 pre"], ["a", "b"])).toBe("L0 pre #12: ablate (2 positions)");
  });

  itRemovesItsListeners();
});
