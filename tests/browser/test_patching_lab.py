"""The patching widget on a real JupyterLab page: click a token, choose a replacement, see the
attribution and exact grids, switch direction, click a cell, see its detail, and check in the
kernel that Python computed each step.

The model is the zoo's ``toy-lm`` when it loads, otherwise a tiny random model (offline
tokenizer). Screenshots: ``test-artifacts/test_patching_in_jupyterlab-*.png``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from harness import LabPage, js_fmt, show_token
from playwright.sync_api import expect

TESTS = Path(__file__).resolve().parent.parent
PROMPT = "When Mary and John went to the store, John gave a drink to"

SETUP = f"""\
import os, sys, pathlib, tempfile, warnings
os.environ.setdefault("HF_HUB_OFFLINE", "1")
warnings.filterwarnings("ignore", category=DeprecationWarning)
from mechwidgets import show_patching
try:
    from mechwidgets import zoo
    model = zoo.load("toy-lm")
    source = "zoo toy-lm"
except Exception as exc:
    sys.path.insert(0, {str(TESTS)!r})
    from support import build_tokenizer, tiny_model
    model = tiny_model(build_tokenizer(pathlib.Path(tempfile.mkdtemp())))
    source = f"tiny random model (zoo: {{type(exc).__name__}})"
print("model:", source)
w = show_patching(model, {PROMPT!r}, components=["resid_pre", "head_out", "mlp_out"])
w
"""

CHECK = """\
from mechwidgets.analysis.patching import activation_patch

def check():
    \"\"\"The widget's current grid against the headless analysis run here.\"\"\"
    ref = activation_patch(model, w.session.clean, w.session.corrupted, component=w.component,
                           direction=w.direction, metric=w.metric, answer=w.answer,
                           wrong_answer=w.wrong_answer)
    got = w.values()
    return {"max_diff": float((got.reshape(ref.values.shape) - ref.values).abs().max()),
            "shape": list(got.shape)}
"""


def test_patching_in_jupyterlab(lab_page: LabPage, screenshot: Any) -> None:
    lab = lab_page
    widget = lab.open_widget("patching.ipynb", SETUP, ".mw-patching")
    tokens = lab.py_json("w.clean_tokens")
    expect(widget.locator('[data-testid="clean-tokens"] .mw-token')).to_have_count(len(tokens))
    expect(widget.locator('[data-testid="corrupted-tokens"]')).to_contain_text("No corrupted prompt yet")

    # click the first name: replacements are proposed (single tokens, nearest by embedding)
    pos = tokens.index(" Mary")
    widget.locator(f'[data-testid="clean-tokens"] .mw-token[data-pos="{pos}"]').click()
    cands = widget.locator('[data-testid="candidate"]')
    expect(cands.first).to_be_visible(timeout=60_000)
    proposed = lab.py_json("w.candidates")
    assert proposed["pos"] == pos
    assert cands.all_inner_texts() == [show_token(t) for t in proposed["tokens"]]
    screenshot(lab.page, "candidates")

    # choose one: the corrupted prompt is built, the attribution grid comes at once and the
    # exact grid streams in layer by layer
    choice = proposed["tokens"][0]
    cands.first.click()
    n_layers = lab.py_json("w.n_layers")
    expect(widget.locator('[data-testid="corrupted-tokens"] .mw-token-diff')).to_have_text(
        show_token(choice), timeout=60_000)
    expect(widget.locator('[data-testid="attribution-grid"] canvas').first).to_be_visible(timeout=60_000)
    lab.wait_until("w.grids.get('resid_pre|denoising|logit_diff', {}).get('exact_done') == w.n_layers")
    expect(widget.locator('[data-testid="exact-title"]')).to_have_text("Exact patching")
    state = lab.py_json(
        "{'corrupted': w.corrupted_tokens, 'differing': w.differing, 'answer': w.answer,"
        " 'wrong': w.wrong_answer, 'keys': sorted(w.grids),"
        " 'done': w.grids['resid_pre|denoising|logit_diff']['exact_done'],"
        " 'base': w.grids['resid_pre|denoising|logit_diff']['baselines']}"
    )
    assert state["corrupted"][pos] == choice and state["differing"] == [pos]
    assert state["keys"] == ["resid_pre|denoising|logit_diff"] and state["done"] == n_layers
    expect(widget.locator('[data-testid="answer"]')).to_have_value(state["answer"])
    expect(widget.locator('[data-testid="baselines"]')).to_contain_text(
        f"clean {js_fmt(state['base']['clean'], 3)}, corrupted {js_fmt(state['base']['corrupted'], 3)}")
    lab.run_code(CHECK)
    checked = lab.py_json("check()")
    assert checked["max_diff"] <= 1e-5 and checked["shape"] == [n_layers, len(tokens)]
    widget.scroll_into_view_if_needed()
    screenshot(lab.page, "grid")

    # hover a cell: the tooltip reads the kernel's value (no cell runs between hover and check)
    exact = lab.py_json("[float(x) for x in w.values()[0]]")
    cols = lab.py_json("w.grids['resid_pre|denoising|logit_diff']['cols']")
    canvas = widget.locator('[data-testid="exact-grid"] canvas').first
    box = canvas.bounding_box()
    assert box is not None
    canvas.hover(position={"x": (pos + 0.5) * box["width"] / len(tokens), "y": 0.5 * box["height"] / n_layers})
    expect(widget.locator('[data-testid="tooltip"]')).to_have_text(
        f"exact: layer L0, pos {show_token(cols[pos])} → {js_fmt(exact[pos], 4)}")
    assert abs(exact[pos] - 1.0) < 1e-5  # the only differing position at layer 0 restores it all

    # switch to noising, then the head grid; then click a head: its clean and corrupted patterns
    widget.locator('[data-testid="direction"] [data-value="noising"]').click()
    expect(widget.locator('[data-testid="direction-help"]')).to_contain_text("Noising: run the clean prompt")
    lab.wait_until("w.grids.get('resid_pre|noising|logit_diff', {}).get('exact_done') == w.n_layers")
    widget.locator('[data-testid="component"]').select_option("head_out")
    lab.wait_until("w.grids.get('head_out|noising|logit_diff', {}).get('exact_done') == w.n_layers")
    canvas = widget.locator('[data-testid="exact-grid"] canvas').first
    box = canvas.bounding_box()
    assert box is not None
    n_heads = lab.py_json("w.n_heads")
    canvas.click(position={"x": 1.5 * box["width"] / n_heads, "y": (n_layers - 0.5) * box["height"] / n_layers})
    expect(widget.locator('[data-testid="detail-title"]')).to_contain_text(f"attention of L{n_layers - 1}H1", timeout=60_000)
    assert lab.py_json("w.detail['kind']") == "head"
    expect(widget.locator('[data-testid="detail"] canvas')).to_have_count(2)
    widget.locator('[data-testid="detail"]').scroll_into_view_if_needed()
    screenshot(lab.page, "head-detail")

    # toggling back to a cached view needs no kernel call: the grid is there at once
    widget.locator('[data-testid="component"]').select_option("resid_pre")
    expect(widget.locator('[data-testid="exact-title"]')).to_have_text("Exact patching")

    # bad input: a corrupted prompt of another length; the banner names it, the kernel lives on
    widget.locator('[data-testid="corrupted-input"]').fill(PROMPT + " Mary")
    widget.locator('[data-testid="corrupted-apply"]').click()
    banner = widget.locator(".mw-error")
    expect(banner).to_contain_text("same number of tokens", timeout=60_000)
    assert lab.py_json("w.corrupted_tokens")[pos] == choice
    assert lab.guard.blocked == []  # type: ignore[attr-defined]
