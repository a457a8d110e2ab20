"""The logit-lens widget in real Chromium through the light harness (no Jupyter): a long
prompt's lens is drawn first at its last positions, and the page then asks Python for the rest
(``complete_lens``), which fills in every cell with the lens's own top token."""

from __future__ import annotations

from typing import Any

from harness import WidgetHarness, clip, show_token
from playwright.sync_api import expect

from mechwidgets import LogitLensWidget
from mechwidgets.analysis.lens import LensAnalysis, logit_lens

PROMPT = "When Mary and John went to the store, John gave a drink to"


def test_the_page_asks_for_the_rest_of_a_long_prompts_lens(widget_harness: WidgetHarness, model: Any) -> None:
    rows = model.cfg.n_layers + 1
    analysis = LensAnalysis(model, PROMPT, answer=" Mary", eager_cells=2 * rows)
    w = LogitLensWidget(analysis)
    n_pos = len(w.tokens)
    assert w.lens["computed_from"] == n_pos - 2
    m = widget_harness.mount(w)
    m.settle()
    # the page asked once it had drawn: Python completed the lens and the grid shows every cell
    assert w.lens["computed_from"] == 0
    full = logit_lens(model, PROMPT, answer=" Mary")
    for i in range(rows):
        for j in (0, n_pos // 2, n_pos - 1):
            word = model.to_single_str_token(int(full.top_ids[i, j, 0]))
            expect(m.el.locator(f'[data-testid="cell-{i}-{j}"]')).to_have_text(clip(show_token(word), 8))
    assert m.js_errors() == [] and widget_harness.py_errors == []
