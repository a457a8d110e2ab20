"""The circuit widget in real Chromium through the light harness (no Jupyter).

The page imports the built ES module and renders it with a fake model wired to the real Python
:class:`~mechwidgets.CircuitWidget`: the slider filters edges in the page, its release asks the
kernel for the exact faithfulness, and a click on a node makes Python patch that node.
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from harness import WidgetHarness, js_fmt
from playwright.sync_api import expect

from mechwidgets.analysis.circuits import IG_STEPS
from mechwidgets.analysis.circuits.layout import NODE_W, PORT_INDEX, port_y
from mechwidgets.widgets.circuit import show_circuit

CLEAN = "When Mary and John went to the store , John gave a drink to"
CORRUPTED = "When A and B went to the store , C gave a drink to"

#: Slider move → painted frame, in the browser (the brief's budget).
REDRAW_BUDGET_MS = 100.0


def visible_edges(el: Any) -> int:
    """How many edges the canvas draws now (the frontend keeps the count on its root)."""
    return int(el.locator(".mw-circuit").get_attribute("data-visible-edges"))


def edge_midpoint(w: Any, e: int) -> tuple[float, float]:
    """The middle of edge ``e``'s curve on the canvas (a symmetric cubic: the chord's middle)."""
    g = w.result.graph
    src, (dst, port) = w.nodes[g.sources[int(g.edge_src[e])]], g.dests[int(g.edge_dst[e])]
    x1, y1 = src["x"] + NODE_W / 2, src["y"]
    x2, y2 = w.nodes[dst]["x"] - NODE_W / 2, port_y(w.nodes[dst]["y"], PORT_INDEX[port])
    return (x1 + x2) / 2, (y1 + y2) / 2


def pixel(el: Any, x: float, y: float) -> list[int]:
    return list(el.locator('[data-testid="edge-canvas"]').evaluate(
        "(c, [x, y]) => { const d = window.devicePixelRatio || 1; "
        "return Array.from(c.getContext('2d').getImageData(Math.round(x * d), Math.round(y * d), 1, 1).data); }",
        [x, y],
    ))


def expected_visible(w: Any) -> int:
    return int((w.result.scores.abs() >= torch.tensor(w.threshold, dtype=w.result.scores.dtype)).sum())


def assert_clean(harness: WidgetHarness, mounted: Any) -> None:
    assert mounted.js_errors() == [], "errors in the page"
    assert harness.py_errors == [], "errors in the Python side of the harness"
    assert harness.guard.blocked == [], "rendering made a network request other than to 127.0.0.1"  # type: ignore[attr-defined]


def pump(mounted: Any, until: Any, timeout_s: float = 60.0) -> None:
    """Let a long job (run step by step on Playwright's event loop here, as on the kernel's in
    Jupyter) go on, delivering what it sends to the page, until ``until()`` holds."""
    deadline = time.monotonic() + timeout_s
    while not until():
        if time.monotonic() > deadline:
            raise TimeoutError("the widget's job did not finish")
        mounted.harness.page.wait_for_timeout(20)
        mounted.flush()
    mounted.settle()


def timed_slider_move(page: Any, mounted: Any, pos: int) -> float:
    """Milliseconds from the slider's input event to the next painted frame."""
    return float(
        page.evaluate(
            """async ([id, pos]) => {
                const el = document.querySelector(`[data-mw-host="${id}"] [data-testid="threshold-slider"]`);
                const t0 = performance.now();
                el.value = String(pos);
                el.dispatchEvent(new Event('input', {bubbles: true}));
                await new Promise((r) => requestAnimationFrame(() => requestAnimationFrame(r)));
                return performance.now() - t0;
            }""",
            [mounted.id, pos],
        )
    )


@pytest.fixture
def widget(model: Any) -> Any:
    return show_circuit(model, CLEAN, CORRUPTED, answer=" Mary", wrong_answer=" John")


def test_slider_faithfulness_and_node_click(widget_harness: WidgetHarness, widget: Any, screenshot: Any) -> None:
    w = widget
    m = widget_harness.mount(w)
    el = m.el
    expect(el.locator(".mw-circuit-node")).to_have_count(len(w.nodes))
    expect(el.locator('[data-testid="circuit-title"]')).to_have_text(f"Circuit — edge attribution patching, {w.n_edges_total} edges")
    assert visible_edges(el) == expected_visible(w) == w.faithfulness["n_edges"]
    faith = el.locator('[data-testid="faithfulness"]')
    expect(faith).to_contain_text(f"faithfulness {js_fmt(w.faithfulness['normalized'], 3)}")
    screenshot(el, "initial")

    # drag the slider to the left: more edges at once, in the page; the kernel measures on release
    slider = el.locator('[data-testid="threshold-slider"]')
    before = (w.threshold, visible_edges(el))
    box = slider.bounding_box()
    assert box is not None
    page = widget_harness.page
    page.mouse.move(box["x"] + box["width"] * 0.6, box["y"] + box["height"] / 2)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] * 0.45, box["y"] + box["height"] / 2, steps=5)
    assert visible_edges(el) > before[1]  # redrawn while dragging, before any reply
    page.mouse.move(box["x"] + box["width"] * 0.3, box["y"] + box["height"] / 2, steps=5)
    page.mouse.up()
    m.settle()
    assert w.threshold < before[0]
    shown = visible_edges(el)
    assert shown == expected_visible(w) > before[1]
    assert w.faithfulness["threshold"] == w.threshold and w.faithfulness["n_edges"] == shown
    exact = w.patcher.faithfulness(w.result.circuit(w.threshold))
    assert w.faithfulness["normalized"] == pytest.approx(exact.normalized, abs=1e-6)
    expect(faith).to_contain_text(f"faithfulness {js_fmt(exact.normalized, 3)}")
    expect(el.locator('[data-testid="edge-count"]')).to_have_text(
        f"{shown} of {w.n_edges_total} edges ({100 * shown / w.n_edges_total:.1f}%)"
    )
    screenshot(el, "dragged")

    # the keyboard moves it too: End keeps only the strongest edge
    slider.focus()
    page.keyboard.press("End")
    m.settle()
    assert visible_edges(el) == 1 == w.faithfulness["n_edges"]
    # the one edge left is drawn in its colour (blue: corrupting it lowers the metric)...
    top = int(w.result.order()[0])
    x, y = edge_midpoint(w, top)
    r, _, b, a = pixel(el, x, y)
    assert a > 0 and (b > r if float(w.result.scores[top]) < 0 else r > b)
    # ...and hovering it names it
    canvas = el.locator('[data-testid="edge-canvas"]')
    canvas.hover(position={"x": x, "y": y})
    expect(el.locator('[data-testid="edge-tooltip"]')).to_have_text(
        f"{w.result.graph.edge_name(top)}: score {js_fmt(float(w.result.scores[top]), 4)}"
    )
    screenshot(el, "one-edge")
    page.keyboard.press("Home")  # back to every edge: the canvas is not blank there any more
    page.mouse.move(0, 0)
    slider.focus()
    page.keyboard.press("End")
    m.settle()

    # click a node: Python patches it and the page shows what Python computed
    assert w.last_node_effect is None
    el.locator('[data-testid="node-a1.h2"]').click()
    title = el.locator('[data-testid="detail-title"]')
    expect(title).to_contain_text("a1.h2 —")
    m.settle()
    effect = w.last_node_effect
    assert effect is not None and effect.node == "a1.h2" and w.selected == "a1.h2"
    effects = el.locator('[data-testid="node-effects"]')
    assert effect.output is not None
    expect(effects).to_contain_text(f"logit_diff → {js_fmt(effect.output, 3)} (normalised {js_fmt(effect.normalized(effect.output), 3)})")
    expect(effects).to_contain_text(f"its k input (all incoming edges): logit_diff → {js_fmt(effect.inputs['k'], 3)}")
    expect(el.locator('[data-testid="node-a1.h2"]')).to_have_class(re.compile(r"\bmw-selected\b"))
    rows = el.locator('[data-testid="incoming"] tbody tr')
    expect(rows.first).to_contain_text(w.node_detail["incoming"][0]["edge"])
    screenshot(el, "node")

    # a bad request shows the banner, and the widget goes on working
    banner = el.locator(".mw-error")
    el.locator('[data-testid="acdc-threshold"]').fill("-1")
    el.locator('[data-testid="acdc-button"]').click()
    pump(m, lambda: bool(w.error))
    expect(banner).to_contain_text("finite number >= 0")
    assert w.method == "eap"
    slider.focus()
    page.keyboard.press("Home")
    m.settle()
    expect(banner).to_be_hidden()
    assert visible_edges(el) == w.n_edges_total and w.faithfulness["normalized"] == 1.0
    assert_clean(widget_harness, m)


def test_saved_state_without_a_kernel(widget_harness: WidgetHarness, widget: Any) -> None:
    """A saved notebook opened with no kernel: the graph, scores and slider all work from the
    saved traits; only the exact faithfulness (which needs the model) cannot be refreshed."""
    w = widget
    w.keep_top(5)
    m = widget_harness.mount(w, kernel=False)
    el = m.el
    expect(el.locator(".mw-circuit-node")).to_have_count(len(w.nodes))
    root = el.locator(".mw-circuit")
    expect(root).to_have_attribute("data-visible-edges", "5")
    expect(el.locator('[data-testid="faithfulness"]')).to_contain_text(f"faithfulness {js_fmt(w.faithfulness['normalized'], 3)}")
    el.locator('[data-testid="threshold-slider"]').focus()
    widget_harness.page.keyboard.press("Home")
    expect(root).to_have_attribute("data-visible-edges", str(w.n_edges_total))
    expect(el.locator('[data-testid="faithfulness"]')).to_contain_text("faithfulness ≈ 1.000")
    assert w.faithfulness["n_edges"] == 5  # nothing reached Python
    assert m.js_errors() == []


def test_acdc_from_the_page(widget_harness: WidgetHarness, make_model: Any, screenshot: Any) -> None:
    small = make_model(n_layers=1, n_heads=2, d_head=16)
    w = show_circuit(small, CLEAN, CORRUPTED, answer=" Mary", wrong_answer=" John")
    m = widget_harness.mount(w)
    el = m.el
    el.locator('[data-testid="acdc-threshold"]').fill("0.02")
    el.locator('[data-testid="acdc-button"]').click()
    pump(m, lambda: w.method == "acdc" and not w.progress)
    expect(el.locator('[data-testid="circuit-title"]')).to_contain_text("ACDC (threshold 0.020)")
    assert w.method == "acdc" and w.acdc_threshold == 0.02
    assert visible_edges(el) == int(w.result.circuit().sum()) == w.faithfulness["n_edges"]
    expect(el.locator('[data-testid="faithfulness"]')).to_contain_text(f"faithfulness {js_fmt(w.faithfulness['normalized'], 3)}")
    screenshot(el, "acdc")
    plain = int(w.result.circuit().sum())
    # signed ACDC: tick the box, run again; edges working against the behaviour go too
    el.locator('[data-testid="acdc-signed"]').check()
    el.locator('[data-testid="acdc-button"]').click()
    pump(m, lambda: w.acdc_signed and not w.progress)
    expect(el.locator('[data-testid="circuit-title"]')).to_contain_text("ACDC (signed, threshold 0.020)")
    assert visible_edges(el) == int(w.result.circuit().sum()) == w.faithfulness["n_edges"] <= plain
    el.locator('[data-testid="eap-button"]').click()
    expect(el.locator('[data-testid="circuit-title"]')).to_contain_text("edge attribution patching")
    m.settle()
    assert w.method == "eap"
    # EAP-IG: the button asks Python, which integrates the gradients; the page draws its scores
    el.locator('[data-testid="eap-ig-button"]').click()
    expect(el.locator('[data-testid="circuit-title"]')).to_contain_text("integrated gradients (EAP-IG)")
    m.settle()
    assert w.method == "eap-ig" and torch.equal(w.result.scores, w.patcher.eap_ig_scores(IG_STEPS))
    expect(el.locator('[data-testid="eap-ig-button"]')).to_be_disabled()
    assert visible_edges(el) == w.faithfulness["n_edges"]
    assert_clean(widget_harness, m)


def test_slider_redraw_is_fast(widget_harness: WidgetHarness, make_model: Any) -> None:
    # a GPT-2-small-shaped graph (12 layers x 12 heads: 32,491 edges; 3,000 drawn)
    big = make_model(n_layers=12, n_heads=12, d_model=48, d_head=4, d_mlp=48)
    w = show_circuit(big, CLEAN, CORRUPTED, answer=" Mary", wrong_answer=" John")
    assert w.n_edges_total == 32491
    m = widget_harness.mount(w, timeout_ms=60_000)
    expect(m.el.locator(".mw-circuit-node")).to_have_count(1 + 12 * 13 + 1)
    page = widget_harness.page
    positions = [0, 900, 1, 500, 1000, 250, 750, 600, 1000, 0] * 2
    times = sorted(timed_slider_move(page, m, pos) for pos in positions)
    assert visible_edges(m.el) == 3000  # the last move (position 0) draws every edge sent
    median, worst = times[len(times) // 2], times[-1]
    print(f"\nslider move → painted frame over up to 3,000 drawn edges: median {median:.1f} ms, worst {worst:.1f} ms")
    # the median is the budget; a busy test machine may stall one frame now and then
    assert median <= REDRAW_BUDGET_MS and worst <= 3 * REDRAW_BUDGET_MS
    assert_clean(widget_harness, m)


LAB_SETUP = f"""\
import os, sys, pathlib, tempfile, warnings
os.environ.setdefault("HF_HUB_OFFLINE", "1")
warnings.filterwarnings("ignore", category=DeprecationWarning)
sys.path.insert(0, {str(Path(__file__).resolve().parent.parent)!r})
from support import build_tokenizer, tiny_config
from transformer_lens import HookedTransformer, HookedTransformerConfig
from mechwidgets.widgets.circuit import show_circuit
tok = build_tokenizer(pathlib.Path(tempfile.mkdtemp()))
cfg = tiny_config()
cfg["d_vocab"] = max(cfg["d_vocab"], len(tok))
model = HookedTransformer(HookedTransformerConfig(**cfg), tokenizer=tok).eval()
w = show_circuit(model, {CLEAN!r}, {CORRUPTED!r}, answer=" Mary", wrong_answer=" John")
print("edges:", w.n_edges_total)
w
"""


def test_circuit_in_jupyterlab(lab_page: Any, screenshot: Any) -> None:
    lab = lab_page
    lab.open("circuit.ipynb", [LAB_SETUP])
    out = lab.run_cell(0, timeout_ms=180_000)
    assert "edges: 110" in out, out
    widget = lab.cell(0).locator(".mw-circuit")
    expect(widget.locator(".mw-circuit-node")).to_have_count(12, timeout=60_000)
    expect(widget).to_have_attribute("data-visible-edges", "11")
    widget.scroll_into_view_if_needed()
    screenshot(lab.page, "rendered")

    # the keyboard on the slider: End keeps the strongest edge; the kernel measures it
    slider = widget.locator('[data-testid="threshold-slider"]')
    slider.focus()
    lab.page.keyboard.press("End")
    expect(widget).to_have_attribute("data-visible-edges", "1")
    expect(widget.locator('[data-testid="faithfulness"]')).to_contain_text("with 1 of 110 edges kept", timeout=60_000)
    faith = lab.py_json('{"n": w.faithfulness["n_edges"], "f": w.faithfulness["normalized"]}')
    assert faith["n"] == 1
    expect(widget.locator('[data-testid="faithfulness"]')).to_contain_text(f"faithfulness {js_fmt(faith['f'], 3)}")

    # a node click runs Python: its effect is what the kernel computed
    widget.locator('[data-testid="node-a1.h2"]').click()
    expect(widget.locator('[data-testid="detail-title"]')).to_contain_text("a1.h2 —", timeout=60_000)
    effect = lab.py_json('{"node": w.selected, "out": w.last_node_effect.output}')
    assert effect["node"] == "a1.h2"
    expect(widget.locator('[data-testid="node-effects"]')).to_contain_text(f"logit_diff → {js_fmt(effect['out'], 3)}")

    # ACDC runs as a job on the kernel's event loop, then its circuit is drawn
    widget.locator('[data-testid="acdc-threshold"]').fill("0.02")
    widget.locator('[data-testid="acdc-button"]').click()
    expect(widget.locator('[data-testid="circuit-title"]')).to_contain_text("ACDC (threshold 0.020)", timeout=120_000)
    kept = lab.py_json('{"method": w.method, "kept": int(w.result.circuit().sum()), "hooks": __import__("mechwidgets._model", fromlist=["x"]).hook_count(model), "split": model.cfg.use_split_qkv_input, "mlp_in": model.cfg.use_hook_mlp_in}')
    assert kept["method"] == "acdc" and kept["hooks"] == 0 and not kept["split"] and not kept["mlp_in"]
    expect(widget).to_have_attribute("data-visible-edges", str(kept["kept"]))
    screenshot(lab.page, "acdc")
