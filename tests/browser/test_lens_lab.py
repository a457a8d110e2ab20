"""The logit-lens widget on a real JupyterLab page: notebook → kernel → widget → click a head in
the DLA chart → Python ablates it and re-runs → the lens on the page changes.

The model is the zoo's ``toy-lm`` on an IOI prompt. Screenshots:
``test-artifacts/test_lens_in_jupyterlab-*.png``.
"""

from __future__ import annotations

import re
from typing import Any

from harness import LabPage, js_fmt, show_token
from playwright.sync_api import expect

SETUP = """\
import os, warnings
os.environ.setdefault("HF_HUB_OFFLINE", "1")
warnings.filterwarnings("ignore", category=DeprecationWarning)
from mechwidgets import show_logit_lens, zoo
model = zoo.load("toy-lm")
print("model: toy-lm")
w = show_logit_lens(model, "When Olivia and Simon went to the zoo, Simon gave a flower to",
                    answer=" Olivia", wrong_answer=" Simon")
w
"""

BAD_CALL = """\
try:
    w.ablate(heads=[(7, 0)])
except Exception as exc:
    print("raised", type(exc).__name__ + ":", exc)
"""


def clip(text: str, n: int) -> str:
    """js/lib/dom.ts:clip."""
    return text[: n - 1] + "\u2026" if len(text) > n else text


def cell_texts(widget: Any) -> list[str]:
    return [t for t in widget.locator(".mw-lens-cell").all_inner_texts()]


def test_lens_in_jupyterlab(lab_page: LabPage, screenshot: Any) -> None:
    lab = lab_page
    widget = lab.open_widget("lens.ipynb", SETUP, ".mw-lens")
    expect(widget.locator(".mw-lens-cell").first).to_be_visible(timeout=60_000)
    info = lab.py_json("{'tokens': w.tokens, 'layers': w.layers, 'total': w.dla['total']}")
    n_rows, n_pos = len(info["layers"]), len(info["tokens"])
    expect(widget.locator(".mw-lens-cell")).to_have_count(n_rows * n_pos)
    # the final row (drawn on top) is the model's own top prediction at each position
    top_final = lab.py_json("[w.analysis.handle.token_str(int(i)) for i in w.view.lens.top_ids[-1, :, 0]]")
    assert cell_texts(widget)[:n_pos] == [clip(show_token(t), 8) for t in top_final]
    expect(widget.locator('[data-testid="dla-total"]')).to_contain_text(js_fmt(info["total"], 3))
    widget.locator('[data-testid="lens-grid"]').scroll_into_view_if_needed()
    screenshot(widget, "rendered")

    # hover a cell: its top-k (from the state) in the tooltip
    widget.locator(f'[data-testid="cell-{n_rows - 1}-{n_pos - 1}"]').hover()
    expect(widget.locator('[data-testid="tooltip"]')).to_contain_text(f"final, position {n_pos - 1}")

    # click L3H0, the head the card names (largest DLA on IOI): Python ablates it and re-runs
    before = cell_texts(widget), widget.locator('[data-testid="rank-before"]').inner_text()
    row = widget.locator('[data-testid="dla-row-L3H0"]')
    row.scroll_into_view_if_needed()
    row.click()
    expect(widget.locator('[data-testid="show-ablated"]')).to_have_class(re.compile("mw-active"), timeout=60_000)
    state = lab.py_json(
        "{'ablated': w.ablated, 'has_last': w.last_ablation is not None,"
        " 'heads': [list(h) for h in w.last_ablation.ablated_heads],"
        " 'total_after': w.last_ablation.dla.total, 'l3h0': float(w.last_ablation.dla.heads[3, 0]),"
        " 'top_after': [w.analysis.handle.token_str(int(i)) for i in w.last_ablation.lens.top_ids[-1, :, 0]]}"
    )
    assert state["ablated"] == {"heads": [[3, 0]], "mlps": [], "mode": "zero"}
    assert state["has_last"] and state["heads"] == [[3, 0]]
    assert state["l3h0"] == 0.0
    expect(row).to_have_class(re.compile("mw-ablated"))
    expect(widget.locator('[data-testid="dla-total"]')).to_contain_text(f"→ {js_fmt(state['total_after'], 3)} after ablation")
    after = cell_texts(widget), widget.locator('[data-testid="rank-after"]').inner_text()
    # the lens on the page changed: the ablated run is drawn, and the answer's rank row too
    assert after[0] != before[0] or after[1] != before[1]
    expect(widget.locator('[data-testid="after-0"]')).to_be_visible()
    widget.locator('[data-testid="lens-grid"]').scroll_into_view_if_needed()
    screenshot(widget, "ablated")

    # a bad call from Python: raises in the cell, the banner shows it, the kernel lives on
    out = lab.run_code(BAD_CALL)
    assert "raised ComponentError:" in out, out
    banner = widget.locator(".mw-error")
    expect(banner).to_be_visible()
    expect(banner).to_contain_text("out of range")
    lab.wait_idle()
    assert lab.py_json("[1 + 1, w.ablated['heads']]") == [2, [[3, 0]]]

    assert lab.guard.blocked == []  # type: ignore[attr-defined]
