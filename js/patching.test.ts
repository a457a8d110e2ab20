// @vitest-environment happy-dom
import { describe, expect, it } from "vitest";
import { f32, harness, tableText } from "./lib/fake_model";
import { gridKey, render } from "./patching";

const clean = ["<bos>", " Mary", " gave", " John"];
const corrupted = ["<bos>", " Anna", " gave", " John"];

function grid() {
  return {
    attribution: f32([0.5, -0.25, 0, 1, 0.75, 0, 0, 0.25], [2, 4]),
    exact: f32([0.4, -0.2, 0, 0.9, 0.8, 0, 0, 0.3], [2, 4]),
    exact_done: 2,
    rows: ["L0", "L1"],
    cols: corrupted,
    row_axis: "layer",
    col_axis: "position",
    baselines: { clean: 2, corrupted: -1 },
    normalized: true,
    answer: " John",
    wrong_answer: " Mary",
  };
}

const { makeModel, mount, itRemovesItsListeners } = harness(render, () => ({
  clean_tokens: clean,
  corrupted_tokens: corrupted,
  differing: [1],
  answer: " John",
  wrong_answer: " Mary",
  answer_note: "",
  component: "resid_pre",
  direction: "denoising",
  metric: "logit_diff",
  components: ["resid_pre", "attn_out"],
  metrics: ["logit_diff", "kl"],
  grids: { [gridKey("resid_pre", "denoising", "logit_diff")]: grid() },
  candidates: {},
  detail: {},
  n_layers: 2,
  n_heads: 2,
}));

const q = (el: HTMLElement, id: string) => el.querySelector(`[data-testid="${id}"]`) as HTMLElement;

describe("patching frontend", () => {
  it("draws both prompts, marking the differing position, and the baselines", () => {
    const el = mount(makeModel());
    expect(q(el, "clean-tokens").querySelectorAll(".mw-token").length).toBe(4);
    expect(q(el, "corrupted-tokens").querySelectorAll(".mw-token-diff").length).toBe(1);
    expect(q(el, "baselines").textContent).toContain("clean 2.000, corrupted -1.000");
    expect(q(el, "exact-title").textContent).toBe("Exact patching ");
  });

  it("a cached view redraws from the trait without asking the kernel; a missing one is asked for", () => {
    const model = makeModel();
    const el = mount(model);
    const metric = q(el, "metric") as HTMLSelectElement;
    metric.value = "kl";
    metric.dispatchEvent(new Event("change"));
    expect(model.sets).toContainEqual({ metric: "kl" });
    expect(model.last("view").args).toEqual({ component: "resid_pre", direction: "denoising", metric: "kl" });
    expect(q(el, "baselines").textContent).toBe("Computing…");
    model.state.metric = "logit_diff";
    const n = model.requests("view").length;
    metric.value = "logit_diff";
    metric.dispatchEvent(new Event("change"));
    expect(model.requests("view").length).toBe(n);
  });

  it("draws a cell's patched logits as a predictions table", () => {
    const model = makeModel();
    const el = mount(model);
    model.change("detail", {
      title: "L1, position 3",
      kind: "logits",
      base_tokens: [" Mary", " John"],
      base_probs: f32([0.5, 0.25], [2]),
      top_tokens: [" John", "<b>x</b>"],
      top_probs: f32([0.75, 0.125], [2]),
    });
    const table = q(el, "detail-logits");
    expect(tableText(table)).toEqual({
      head: ["#", "unpatched run", "p", "with this patch", "p"],
      rows: [
        ["1", "·Mary", "0.500", "·John", "0.750"],
        ["2", "·John", "0.250", "<b>x</b>", "0.125"],
      ],
    });
    expect(table.querySelector("b")).toBeNull();
  });

  it("a corrupted prompt from the box is asked for, then the current view", async () => {
    const model = makeModel({ grids: {} });
    const el = mount(model);
    (q(el, "corrupted-input") as HTMLInputElement).value = "Anna gave John";
    q(el, "corrupted-apply").click();
    const req = model.last("set_corrupted");
    expect(req.args).toEqual({ text: "Anna gave John" });
    model.reply({ type: "reply", id: req.id, kind: "set_corrupted", result: null });
    await Promise.resolve();
    await Promise.resolve();
    expect(model.last("view").args).toEqual({ component: "resid_pre", direction: "denoising", metric: "logit_diff" });
  });

  itRemovesItsListeners();
});
