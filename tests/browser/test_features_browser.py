"""The SAE feature widget in real Chromium through the light harness (no Jupyter).

The page imports the built ES module and renders it with a fake model wired to the real Python
:class:`~mechwidgets.FeaturesWidget`: clicks become requests handled by the real
``_on_frontend_message``, trait changes and replies are pushed back to the page. Uses the zoo's
toy-lm and its SAEs when they are shipped, else a tiny random model with small SAEs.
"""

from __future__ import annotations

import re
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from harness import WidgetHarness, clip, js_fmt, show_token
from playwright.sync_api import expect

from mechwidgets._model import hook_count
from mechwidgets._tensor import decode_array
from mechwidgets.errors import SAEError
from mechwidgets.widgets._base import MAX_UPDATE_BYTES
from mechwidgets.widgets.features import show_features
from mechwidgets.zoo import SimpleSAE, SimpleSAEConfig

PROMPT = "When Mary and John went to the store , John gave a drink to Mary"
HOOKS = ["blocks.0.hook_resid_pre", "blocks.1.hook_resid_pre", "blocks.1.hook_resid_post"]
#: Steering, click to updated view, browser-timed (the brief's budget).
STEER_BUDGET_MS = 300


def tiny_saes() -> list[SimpleSAE]:
    out = []
    for i, hook in enumerate(HOOKS):
        g = torch.Generator().manual_seed(i)
        sae = SimpleSAE(SimpleSAEConfig(d_in=32, d_sae=48, architecture="topk", k=6,
                                        metadata=SimpleNamespace(hook_name=hook)))
        with torch.no_grad():
            sae.W_enc.copy_(torch.randn(32, 48, generator=g) * 0.4)
            sae.W_dec.copy_(torch.nn.functional.normalize(torch.randn(48, 32, generator=g), dim=-1))
        out.append(sae.eval())
    return out


@pytest.fixture(scope="module")
def setup(model: Any) -> tuple[Any, Any, str, Any]:
    from mechwidgets import zoo

    if (zoo.model_dir("toy-lm") / "config.json").is_file() and zoo.load_saes("toy-lm"):
        toy = zoo.load("toy-lm")
        return toy, zoo.load_saes("toy-lm"), "When Mary and John went to the store, John gave a drink to", None
    return model, tiny_saes(), PROMPT, [PROMPT, "the cat sat on the mat and then ran to the store", "A B C D A B C D"]


def assert_clean(harness: WidgetHarness, mounted: Any) -> None:
    assert mounted.js_errors() == [], "errors in the page"
    assert harness.py_errors == [], "errors in the Python side of the harness"
    assert harness.guard.blocked == [], "rendering made a network request other than to 127.0.0.1"  # type: ignore[attr-defined]


def test_click_token_feature_lineage_steer_ablate(widget_harness: WidgetHarness, setup: Any, screenshot: Any) -> None:
    model, saes, prompt, link_prompts = setup
    hooks_before = hook_count(model)
    w = show_features(model, saes, prompt, link_prompts=link_prompts)
    n, S = len(w.tokens), len(w.sae_labels)
    m = widget_harness.mount(w)
    el = m.el
    expect(el.locator(".mw-title")).to_have_text(f"SAE features — {n} tokens, {S} SAEs")
    expect(el.locator(".mw-feat-cell")).to_have_count(n * S)
    expect(el.locator('[data-testid="recon"] .mw-feat-ev')).to_have_count(S)
    ev = float(w.trace.explained_variance[0])
    expect(el.locator('[data-testid="recon-0"]')).to_contain_text(f"EV {js_fmt(ev, 2)}")
    # TopK SAEs fire k features everywhere: the overview is coloured by total activation then
    assert w.colour_by == ("total" if bool((w.trace.n_active[:, 1:] == w.trace.n_active[:, 1:2]).all()) else "count")
    expect(el.locator('[data-testid="colour-by"]')).to_have_value(w.colour_by)
    screenshot(el, "overview")

    # click a token: its top features per SAE as bars, labelled by their top promoted tokens
    pos = n - 2
    el.locator(f'[data-testid="token-{pos}"]').click()
    expect(el.locator('[data-testid="token-title"]')).to_have_text(f"Top features on {show_token(w.tokens[pos])}@{pos}")
    m.settle()
    assert w.selected_token == pos
    expect(el.locator(f'[data-testid="token-{pos}"]')).to_have_class(re.compile("mw-selected"))
    sae_i = 1
    idx = [int(f) for f in w.trace.top_indices[sae_i, pos] if f >= 0]
    bars = el.locator(f'[data-testid="token-sae-{sae_i}"] .mw-feat-bar')
    expect(bars).to_have_count(len(idx))
    assert bars.evaluate_all("els => els.map(e => e.dataset.testid)") == [f"bar-{sae_i}-{f}" for f in idx]
    f0 = idx[0]
    label = " ".join(show_token(t) for t in w.feature_labels[sae_i][str(f0)])
    expect(bars.first.locator(".mw-feat-label")).to_have_text(label)
    expect(bars.first.locator(".mw-feat-val")).to_have_text(js_fmt(float(w.trace.top_values[sae_i, pos, 0]), 2))

    # click a feature: its activation over the prompt, logit effects and lineage
    bars.first.click()
    title = el.locator('[data-testid="feature-title"]')
    expect(title).to_contain_text(f"{w.sae_labels[sae_i]} #{f0} — fires on")
    m.settle()
    assert w.selected_feature == {"sae": sae_i, "feature": f0}
    acts = w.trace.feature_values(sae_i, f0)
    expect(title).to_contain_text(f"fires on {int((acts > 0).sum())}/{n} tokens, max {js_fmt(float(acts.max()), 2)}")
    expect(el.locator('[data-testid="feature-acts"] .mw-token')).to_have_count(n)
    expect(el.locator('[data-testid="promoted"] tbody tr').first.locator("td").first).to_have_text(
        show_token(w.feature["promoted"]["tokens"][0]))
    nodes = w.feature["lineage"]["nodes"]
    expect(el.locator('[data-testid="lineage"] .mw-feat-node')).to_have_count(len(nodes))
    expect(el.locator(f'[data-testid="node-{sae_i}-{f0}"]')).to_have_class(re.compile("mw-selected"))
    edges = w.feature["lineage"]["edges"]
    expect(el.locator('[data-testid="lineage"] path.mw-feat-edge')).to_have_count(len(edges))
    assert edges, "the lineage links the feature to its neighbours"
    screenshot(el, "feature")

    # follow the lineage: click a successor (or predecessor) node, then come back
    other = next(nd for nd in nodes if (nd["sae"], nd["feature"]) != (sae_i, f0))
    el.locator(f'[data-testid="node-{other["sae"]}-{other["feature"]}"]').click()
    expect(title).to_contain_text(f"{w.sae_labels[other['sae']]} #{other['feature']} — fires on")
    m.settle()
    assert w.selected_feature == {"sae": other["sae"], "feature": other["feature"]}
    # links are top-k each way, so the way back is not always drawn: return through the bars
    el.locator(f'[data-testid="bar-{sae_i}-{f0}"]').click()
    expect(title).to_contain_text(f"{w.sae_labels[sae_i]} #{f0} — fires on")
    m.settle()

    # steer: move the slider, the model re-runs; time the click to the updated view
    assert w.last_intervention is None
    value = round(float(acts.max()) * 3 + 1, 1)
    slider = el.locator('[data-testid="steer-slider"]')
    expect(slider).to_be_visible()
    elapsed = widget_harness.page.evaluate(
        """async ([id, value, expected]) => {
            const root = document.querySelector(`[data-mw-host="${id}"]`);
            const slider = root.querySelector('[data-testid="steer-slider"]');
            slider.value = String(value);
            const t0 = performance.now();
            slider.dispatchEvent(new Event('input'));
            slider.dispatchEvent(new Event('change'));
            while (true) {
                const t = root.querySelector('[data-testid="results-title"]');
                if (t && t.textContent.includes(expected)) return performance.now() - t0;
                if (performance.now() - t0 > 10000) return -1;
                await new Promise(r => requestAnimationFrame(r));
            }
        }""",
        [m.id, value, f"clamp to {js_fmt(value, 2)}"],
    )
    m.settle()
    res = w.last_intervention
    assert res is not None, "Python ran the intervention"
    assert [(iv.hook_name, iv.feature, iv.mode, iv.value, iv.positions) for iv in res.interventions] == [
        (w.hook_names[sae_i], f0, "clamp", pytest.approx(value, abs=1e-6), None)]
    assert 0 < elapsed, "the view did not update"
    # the time is reported by benchmarks/bench_features.py (budget STEER_BUDGET_MS on an idle
    # machine); a shared CI machine is too noisy to assert it here
    print(f"steer click → updated view: {elapsed:.1f} ms (budget {STEER_BUDGET_MS} ms)")
    table = el.locator('[data-testid="predictions"]')
    cols = [[t.strip() for t in table.locator(f"tbody tr td:nth-child({c})").all_inner_texts()] for c in (2, 3, 4, 5)]
    assert cols[0] == [show_token(t) for t in res.before.str_tokens]
    assert cols[1] == [js_fmt(float(p), 3) for p in res.before.probs]
    assert cols[2] == [show_token(t) for t in res.after.str_tokens]
    assert cols[3] == [js_fmt(float(p), 3) for p in res.after.probs]
    assert not torch.allclose(res.before.probs, res.after.probs)
    changed = el.locator('[data-testid="changed-features"] .mw-feat-changed-item')
    expect(changed).to_have_count(len(res.changes))
    assert res.changes and changed.evaluate_all("els => els.map(e => e.dataset.testid)") == [
        f"changed-{w.hook_names.index(c.hook_name)}-{c.feature}" for c in res.changes]
    c0 = res.changes[0]
    expect(changed.first).to_contain_text(f"{js_fmt(float(c0.before[c0.position]), 2)} → {js_fmt(float(c0.after[c0.position]), 2)}")
    expect(changed.first).to_contain_text(f"@{c0.position}")
    expect(el.locator(f'[data-testid="chip-{sae_i}-{f0}"]')).to_contain_text(f"clamp to {js_fmt(value, 2)} (all positions)")
    screenshot(el, "steered")

    # a changed downstream feature is clickable
    changed.first.click()
    expect(title).to_contain_text(f"{w.sae_labels[w.hook_names.index(c0.hook_name)]} #{c0.feature}")
    m.settle()
    back_sae = w.hook_names.index(c0.hook_name)
    assert w.selected_feature == {"sae": back_sae, "feature": c0.feature}

    # ablate it at the selected token only: a second intervention; then remove one with its ×
    el.locator('[data-testid="positions"]').select_option("token")
    el.locator('[data-testid="ablate-button"]').click()
    expect(el.locator('[data-testid="interventions"] .mw-chip')).to_have_count(2)
    m.settle()
    assert w.last_intervention is not None and len(w.last_intervention.interventions) == 2
    ablated = next(iv for iv in w.last_intervention.interventions if iv.mode == "ablate")
    assert ablated.positions == [pos] and ablated.feature == c0.feature
    expect(el.locator(f'[data-testid="chip-{back_sae}-{c0.feature}"]')).to_contain_text(
        f"ablate ({clip(show_token(w.tokens[pos]), 10)}@{pos})")
    el.locator(f'[data-testid="remove-{sae_i}-{f0}"]').click()
    expect(el.locator('[data-testid="interventions"] .mw-chip')).to_have_count(1)
    m.settle()
    assert [iv["feature"] for iv in w.interventions] == [c0.feature]
    el.locator('[data-testid="clear-interventions"]').click()
    expect(el.locator('[data-testid="intervention-results"]')).to_be_empty()
    m.settle()
    assert w.interventions == [] and w.last_intervention is None

    # colour by count / total activation: a trait the page sets; a count cell shows the count
    el.locator('[data-testid="colour-by"]').select_option("count")
    m.settle()
    assert w.colour_by == "count"
    assert el.locator('[data-testid="cell-0-3"]').inner_text() == str(int(w.trace.n_active[0, 3]))
    el.locator('[data-testid="colour-by"]').select_option("total")
    m.settle()
    assert w.colour_by == "total"
    assert el.locator('[data-testid="cell-0-3"]').inner_text() == ""

    # errors: a bad call from Python raises there, and the banner shows the same message
    banner = el.locator(".mw-error")
    expect(banner).to_be_hidden()
    with pytest.raises(SAEError) as info:
        w.select_feature(0, 10**6)
    m.flush()
    expect(banner).to_be_visible()
    expect(banner).to_have_text(str(info.value))
    widget_harness.page.evaluate(
        "id => window.__mw.widgets[id].model.send({type: 'request', id: 999, kind: 'intervene', "
        "args: {interventions: [{sae: 0, feature: 1, mode: 'clamp', value: 1, positions: [9999]}]}})",
        m.id,
    )
    expect(banner).to_contain_text("'positions'[0] takes an integer in")
    expect(banner).to_contain_text("got 9999, out of range")
    screenshot(el, "error")
    el.locator(f'[data-testid="token-{pos}"]').click()
    expect(banner).to_be_hidden()
    m.settle()

    # nothing over the update budget; nothing left hooked
    assert m.initial.nbytes <= MAX_UPDATE_BYTES
    assert max(u.nbytes for u in m.updates) <= MAX_UPDATE_BYTES
    assert hook_count(model) == hooks_before
    assert_clean(widget_harness, m)


def test_python_driven_updates_reach_the_page(widget_harness: WidgetHarness, setup: Any) -> None:
    model, saes, prompt, link_prompts = setup
    w = show_features(model, saes, prompt, link_prompts=link_prompts)
    m = widget_harness.mount(w)
    pos = 3
    f = int(w.trace.top_indices[0, pos, 0])
    w.select_token(pos)
    w.select_feature(0, f)
    w.steer(0, f, 5.0, positions=[pos])
    m.flush()
    expect(m.el.locator('[data-testid="token-title"]')).to_contain_text(f"@{pos}")
    expect(m.el.locator('[data-testid="feature-title"]')).to_contain_text(f"{w.sae_labels[0]} #{f}")
    expect(m.el.locator('[data-testid="results-title"]')).to_contain_text(f"clamp to {js_fmt(5.0, 2)} ({clip(show_token(w.tokens[pos]), 10)}@{pos})")
    # cells whose count changed under the intervention are outlined
    res = w.last_intervention
    assert res is not None
    changed = int((res.trace_after.n_active != w.trace.n_active).sum())
    expect(m.el.locator(".mw-feat-changed")).to_have_count(changed)
    assert_clean(widget_harness, m)


def open_feature(harness: WidgetHarness, w: Any, pos: int = 5, sae: int = 1) -> Any:
    """Mount the widget, click a token, then its SAE's top feature; the mounted widget."""
    m = harness.mount(w)
    m.el.locator(f'[data-testid="token-{pos}"]').click()
    m.settle()
    f0 = int(w.trace.top_indices[sae, pos, 0])
    m.el.locator(f'[data-testid="bar-{sae}-{f0}"]').click()
    expect(m.el.locator('[data-testid="feature-title"]')).to_contain_text(f"{w.sae_labels[sae]} #{f0} — fires on")
    m.settle()
    return m


def test_lazy_cosine_links_drawn_on_click(widget_harness: WidgetHarness, model: Any) -> None:
    w = show_features(model, tiny_saes(), PROMPT, link_by="cosine")
    m = open_feature(widget_harness, w)
    el = m.el
    expect(el.locator('[data-testid="lineage"] .mw-note')).to_contain_text("decoder cosine (line width)")
    edges = w.feature["lineage"]["edges"]
    assert edges and all(e["correlation"] is None for e in edges)
    paths = el.locator('[data-testid="lineage"] path.mw-feat-edge')
    expect(paths).to_have_count(len(edges))
    widths = paths.evaluate_all("els => els.map(e => Number(e.getAttribute('stroke-width')))")
    want = sorted(round(1 + 5 * min(1.0, abs(e["cosine"])), 2) for e in edges)
    assert sorted(round(x, 2) for x in widths) == want
    tip = paths.first.locator("title").text_content() or ""
    assert "decoder cosine" in tip and "correlation" not in tip
    assert_clean(widget_harness, m)


def test_corpus_panel_and_search_box(widget_harness: WidgetHarness, model: Any) -> None:
    corpus = [PROMPT, "the cat sat on the mat and then ran to the store", "A B C D A B C D", "Mary gave a drink to John"]
    w = show_features(model, tiny_saes(), PROMPT, link_by="cosine", corpus=corpus)
    m = open_feature(widget_harness, w)
    el = m.el
    button = el.locator('[data-testid="corpus-compute"]')
    expect(button).to_contain_text(f"over {len(corpus)} documents")
    button.click()
    m.settle()  # the job's progress and result reach the page
    expect(el.locator('[data-testid="corpus-density"]')).to_be_visible()
    panel = w.feature["corpus"]
    assert panel is not None and w.corpus_info["done"] == [1]
    expect(el.locator('[data-testid="corpus-density"]')).to_contain_text(f"of {panel['n_tokens']} tokens")
    contexts = el.locator('[data-testid="corpus-top"] .mw-feat-context')
    expect(contexts).to_have_count(len(panel["top"]))
    first = panel["top"][0]
    expect(contexts.first.locator(".mw-feat-hit")).to_have_text(show_token(first["tokens"][first["highlight"]]))
    expect(el.locator('[data-testid="corpus-quantiles"] .mw-feat-context')).to_have_count(len(panel["quantiles"]))
    counts = [int(c) for c in decode_array(panel["hist_counts"]) if c > 0]
    bars = el.locator('[data-testid="corpus-hist"] rect')
    assert [int(x) for x in bars.evaluate_all("els => els.map(e => e.dataset.count)") if int(x) > 0] == counts
    # the search box: a token lists the features promoting it; a click selects one
    el.locator('[data-testid="search-sae"]').select_option("1")
    box = el.locator('[data-testid="search"]')
    box.fill(" Mary")
    box.press("Enter")
    found = el.locator('[data-testid="search-results"] button')
    expect(found).to_have_count(10)
    m.settle()
    assert w.search["query"] == " Mary"
    ids = found.evaluate_all("els => els.map(e => e.dataset.testid)")
    assert ids == [f"found-1-{x['feature']}" for x in w.search["features"]]
    g = w.search["features"][0]["feature"]
    found.first.click()
    expect(el.locator('[data-testid="feature-title"]')).to_contain_text(f"{w.sae_labels[1]} #{g} — fires on")
    m.settle()
    assert w.selected_feature == {"sae": 1, "feature": g}
    # a number jumps to that feature
    box.fill("#7")
    box.press("Enter")
    expect(el.locator('[data-testid="feature-title"]')).to_contain_text(f"{w.sae_labels[1]} #7 — fires on")
    m.settle()
    assert w.selected_feature == {"sae": 1, "feature": 7}
    assert_clean(widget_harness, m)
