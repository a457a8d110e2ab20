"""The causal-scrubbing widget in real Chromium through the light harness (no Jupyter).

The page imports the built ES module and calls ``render({model, el})`` with a fake model wired to
the real Python :class:`~mechwidgets.ScrubbingWidget`: a click on a node's switch becomes an
``evaluate`` request that the real widget runs (a long job, stepped on the event loop that
Playwright drives), and its trait changes come back to the page.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest
import torch
from harness import MountedWidget, WidgetHarness, js_fmt
from playwright.sync_api import expect

from mechwidgets.analysis.scrubbing import HypothesisNode
from mechwidgets.errors import HypothesisError
from mechwidgets.widgets._base import _Job
from mechwidgets.widgets.scrubbing import ScrubbingWidget, show_scrubbing

HYPOTHESIS = HypothesisNode("output", children=[
    HypothesisNode("L1H0", children=[
        HypothesisNode("q", children=[HypothesisNode("embed", "token")]),
        HypothesisNode("k", children=[HypothesisNode("L0H1", "previous_token")]),
        HypothesisNode("v", children=[HypothesisNode("embed", "token")]),
    ]),
    HypothesisNode("embed", "token"),
    HypothesisNode("resid"),  # every other component of the output's residual stream, as it is
])


@pytest.fixture(scope="module")
def scrub_model(make_model: Callable[..., Any]) -> Any:
    model = make_model()
    with torch.no_grad():
        model.unembed.W_U.mul_(8)  # a confident model: resampling visibly changes its loss
    return model


def model_samples(model: Any, n: int = 64, length: int = 12) -> torch.Tensor:
    """Sequences sampled from the model itself: data it predicts well, so resampling the paths
    that matter raises the loss and the recovered fraction means something."""
    g = torch.Generator().manual_seed(0)
    toks = torch.cat([torch.zeros(n, 1, dtype=torch.long), torch.randint(2, 30, (n, 1), generator=g)], 1)
    with torch.no_grad():
        while toks.shape[1] < length:
            probs = model(toks)[:, -1, 2:30].softmax(-1)
            toks = torch.cat([toks, torch.multinomial(probs, 1, generator=g) + 2], 1)
    return toks


@pytest.fixture
def widget(scrub_model: Any) -> ScrubbingWidget:
    return show_scrubbing(scrub_model, HYPOTHESIS, model_samples(scrub_model), n_seeds=3, min_agreeing=1)


def pct(x: float) -> str:
    return js_fmt(100 * x, 1) + "%"


def finish(m: MountedWidget, w: ScrubbingWidget, timeout_s: float = 60) -> None:
    """Wait until the widget's evaluation has ended and its updates reached the page (where an
    event loop runs, its steps run while Playwright waits)."""
    deadline = time.monotonic() + timeout_s
    m.settle()
    while w._jobs:
        if time.monotonic() > deadline:
            raise TimeoutError("the scrubbing job did not finish")
        m.harness.page.wait_for_timeout(20)
        m.flush()
    m.settle()


def assert_clean(harness: WidgetHarness, m: MountedWidget) -> None:
    assert m.js_errors() == [], "errors in the page"
    assert harness.py_errors == [], "errors in the Python side of the harness"
    assert harness.guard.blocked == [], "rendering made a network request other than to 127.0.0.1"  # type: ignore[attr-defined]


def test_toggle_a_node_and_see_the_bar_and_history_update(
    widget_harness: WidgetHarness, widget: ScrubbingWidget, screenshot: Any
) -> None:
    w = widget
    m = widget_harness.mount(w)
    el = m.el
    expect(el.locator(".mw-scrub-node")).to_have_count(len(w.tree))
    first = w.last_result
    expect(el.get_by_test_id("recovered-text")).to_have_text(f"{pct(first.fraction)} ± {pct(first.fraction_std)}")
    expect(el.locator('[data-testid="history-table"] tbody tr')).to_have_count(1)
    screenshot(el, "initial")

    # switch "the rest of the residual stream" to resampled: Python re-runs the scrubbing
    el.get_by_test_id("toggle-output/resid").click()
    finish(m, w)
    assert len(w.history) == 2 and w.history[-1]["label"] == "output/resid: kept → resampled"
    second = w.last_result
    assert second is not first and w.results[-1] is second
    assert not second.hypothesis.find("output/resid").kept
    assert second.fraction < first.fraction - 0.3  # the rest of the model mattered
    node = el.get_by_test_id("node-output/resid")
    expect(node).to_have_class("mw-scrub-node mw-scrub-resampled mw-scrub-off mw-selected")
    expect(el.get_by_test_id("recovered-text")).to_have_text(f"{pct(second.fraction)} ± {pct(second.fraction_std)}")
    fill = el.get_by_test_id("recovered-fill")
    expect(fill).to_have_attribute("style", f"width:{js_fmt(100 * max(0.0, min(1.0, second.fraction)), 2)}%")
    rows = el.locator('[data-testid="history-table"] tbody tr')
    expect(rows).to_have_count(2)
    expect(rows.nth(1)).to_contain_text("output/resid: kept → resampled")
    expect(rows.nth(1)).to_have_class("mw-selected")
    expect(el.locator('[data-testid^="history-bar-"]')).to_have_count(2)
    expect(el.get_by_test_id("panel-path")).to_have_text("output/resid")

    # give the query's embedding another feature from the panel
    el.get_by_test_id("node-output/L1H0/q/embed").click()
    el.get_by_test_id("feature-select").select_option("position")
    finish(m, w)
    assert w.history[-1]["label"] == "output/L1H0/q/embed: feature token → position"
    expect(rows).to_have_count(3)
    expect(el.get_by_test_id("node-output/L1H0/q/embed")).to_contain_text("position")
    screenshot(el, "refined")

    # go back to the first hypothesis from the history chart: no re-run, the same numbers
    el.get_by_test_id("history-bar-1").click()
    m.settle()
    assert w.last_result is first
    expect(el.get_by_test_id("recovered-text")).to_have_text(f"{pct(first.fraction)} ± {pct(first.fraction_std)}")
    expect(el.get_by_test_id("node-output/resid")).to_have_class("mw-scrub-node mw-scrub-kept")

    # an error from Python shows in the banner; the next success clears it
    banner = el.locator(".mw-error")
    with pytest.raises(HypothesisError) as info:
        w.set_feature("output/embed", "no_such_feature")
    m.flush()
    expect(banner).to_be_visible()
    expect(banner).to_have_text(str(info.value))
    screenshot(el, "error")
    el.get_by_test_id("toggle-output/L1H0/k/L0H1").click()
    finish(m, w)
    expect(banner).to_be_hidden()
    assert len(w.history) == 4
    assert_clean(widget_harness, m)


def test_a_long_evaluation_shows_progress_and_can_be_cancelled(
    widget_harness: WidgetHarness, widget: ScrubbingWidget
) -> None:
    w = widget
    m = widget_harness.mount(w)
    el = m.el
    tree, history = list(w.tree), list(w.history)
    # In a kernel, an evaluation runs a step at a time on the event loop. The harness has none
    # (a request runs to its end at once), so start the job as the kernel would and step it.
    w.scrubber.n_seeds = 50
    w._latest["evaluate"] = 99
    job = w._jobs["evaluate"] = _Job(99, "evaluate", w._handler("evaluate")(nodes={"output/embed": {"kept": False}}))
    for _ in range(3):
        assert w._step(job)
    m.flush()
    progress = el.locator(".mw-progress")
    expect(progress).to_be_visible()
    expect(progress).to_contain_text("scrubbing: seed")
    progress.get_by_role("button", name="cancel").click()
    m.settle()
    assert "evaluate" not in w._jobs and job.cancelled
    expect(progress).to_be_hidden()
    expect(el.locator(".mw-error")).to_be_hidden()
    assert w.tree == tree and w.history == history  # nothing changed
    expect(el.locator('[data-testid="history-table"] tbody tr')).to_have_count(len(history))
    assert_clean(widget_harness, m)


def test_fold_a_node_and_see_python_lay_out_the_tree(widget_harness: WidgetHarness, widget: ScrubbingWidget) -> None:
    """Folding is computed in Python (the layout trait); the page draws the boxes where it says."""
    w = widget
    m = widget_harness.mount(w)
    el = m.el

    def drawn_where_the_layout_says() -> None:
        expect(el.locator(".mw-scrub-node")).to_have_count(len(w.layout["nodes"]))
        for n in w.layout["nodes"]:
            box = el.get_by_test_id(f"node-{w.tree[n['row']]['path']}")
            x, y = n["x"] - w.layout["node_w"] / 2, n["y"] - w.layout["node_h"] / 2
            expect(box).to_have_attribute("transform", f"translate({x:g},{y:g})")

    drawn_where_the_layout_says()
    el.get_by_test_id("fold-output/L1H0").click()
    m.settle()
    assert w.collapsed == ["output/L1H0"] and len(w.layout["nodes"]) == len(w.tree) - 6
    drawn_where_the_layout_says()
    expect(el.get_by_test_id("node-output/L1H0")).to_contain_text("+6")
    el.get_by_test_id("fold-output/L1H0").click()
    m.settle()
    assert w.collapsed == [] and len(w.layout["nodes"]) == len(w.tree)
    drawn_where_the_layout_says()
    assert_clean(widget_harness, m)
