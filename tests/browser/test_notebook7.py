"""Every widget in Jupyter Notebook 7 (the ``notebook`` package), in real Chromium.

One Notebook 7 server on 127.0.0.1, one notebook with the six widgets of ``test_themes_lab``
(the zoo's ``toy-lm`` and ``induction-2l``). Each widget renders (its main element, no error
banner); then one click per widget whose answer only the kernel can compute: the page changes
and the kernel holds the new state. Screenshots:
``test-artifacts/test_six_widgets_in_notebook7-<widget>.png``.
"""

from __future__ import annotations

import re
from typing import Any

import pytest
from harness import NO_WINDOWING, JupyterLab, Notebook7Page, js_fmt
from playwright.sync_api import expect
from test_themes_lab import CELLS, WIDGETS

pytest.importorskip("notebook", reason="Jupyter Notebook 7 (`pip install notebook`)")

CHECK_PATCHING = """\
from mechwidgets.analysis.patching import activation_patch
ref = activation_patch(toy, IOI, IOI_CORRUPTED, component="resid_pre", direction="noising",
                       answer=" Mary", wrong_answer=" John")
"""


@pytest.fixture(scope="module")
def notebook7() -> Any:
    server = JupyterLab(settings=NO_WINDOWING, app="notebook")
    try:
        yield server
    finally:
        server.close()


def test_six_widgets_in_notebook7(notebook7: JupyterLab, net_context: Any, screenshot: Any) -> None:
    nb = Notebook7Page(notebook7, net_context.new_page())
    nb.open("six.ipynb", CELLS)
    # this is Notebook 7's single-document page, not JupyterLab
    assert nb.page.evaluate("() => window.jupyterapp.name") == "Jupyter Notebook"
    assert "models:" in nb.run_cell(0, timeout_ms=180_000)
    widgets: dict[str, Any] = {}
    for i, (name, _, root, main) in enumerate(WIDGETS, start=1):
        nb.run_cell(i, timeout_ms=180_000)
        widget = nb.cell(i).locator(root)
        expect(widget.locator(main).first).to_be_visible(timeout=60_000)
        expect(widget.locator(".mw-error")).to_be_hidden()
        widgets[name] = widget

    # attention: select the last layer's most induction-like head, ablate it: the predictions
    # after the ablation come from a forward pass in the kernel
    w = widgets["attention"]
    layer, head = nb.py_json('[w_attention.layers[-1], int(w_attention.scores_tensors["induction"][-1].argmax())]')
    w.locator(f'[data-testid="thumb-{layer}-{head}"]').click()
    expect(w.locator('[data-testid="detail-title"]')).to_contain_text(f"L{layer}H{head} pattern")
    w.locator('[data-testid="ablate-button"]').click()
    expect(w.locator('[data-testid="predictions"] thead')).to_contain_text(f"after (zero: L{layer}H{head})",
                                                                           timeout=60_000)
    assert nb.py_json("w_attention.ablated") == [[layer, head]]
    w.scroll_into_view_if_needed()
    screenshot(w, "attention")

    # patching: switch to noising; the kernel computes the noising grid, equal to the headless
    # analysis run here
    w = widgets["patching"]
    w.locator('[data-testid="direction"] [data-value="noising"]').click()
    expect(w.locator('[data-testid="direction-help"]')).to_contain_text("Noising")
    nb.wait_until("w_patching.grids.get('resid_pre|noising|logit_diff', {}).get('exact_done') == w_patching.n_layers")
    nb.run_code(CHECK_PATCHING)
    diff = nb.py_json("float((w_patching.values().reshape(ref.values.shape) - ref.values).abs().max())")
    assert diff <= 1e-5, diff
    w.scroll_into_view_if_needed()
    screenshot(w, "patching")

    # features: click the last token: its top features, from the kernel's trace
    w = widgets["features"]
    toks = nb.py_json("w_features.tokens")
    pos = len(toks) - 1
    w.locator(f'[data-testid="token-{pos}"]').click()
    expect(w.locator('[data-testid="token-title"]')).to_contain_text(f"@{pos}")
    w.scroll_into_view_if_needed()
    screenshot(w, "features")

    # circuit: click the head with the strongest edge into the logits: the kernel patches it
    w = widgets["circuit"]
    top = nb.py_json(
        "next(e.split('->')[0] for e, _ in w_circuit.result.top_edges(200) if e.startswith('a') and e.endswith('->logits'))"
    )
    w.locator(f'[data-testid="node-{top}"]').click()
    expect(w.locator('[data-testid="detail-title"]')).to_contain_text(f"{top} —", timeout=60_000)
    nb.wait_until(f"w_circuit.selected == {top!r}")
    w.scroll_into_view_if_needed()
    screenshot(w, "circuit")

    # scrubbing: resample the first node under the output: the kernel re-runs the scrubbing
    w = widgets["scrubbing"]
    path = nb.py_json("[r['path'] for r in w_scrubbing.tree if r['path'].count('/') == 1][0]")
    w.get_by_test_id(f"toggle-{path}").click()
    nb.wait_until("len(w_scrubbing.history) == 2 and not w_scrubbing._jobs")
    second = nb.py_json("{'f': w_scrubbing.last_result.fraction, 's': w_scrubbing.last_result.fraction_std}")
    expect(w.get_by_test_id("recovered-text")).to_have_text(
        f"{js_fmt(100 * second['f'], 1)}% ± {js_fmt(100 * second['s'], 1)}%")
    w.scroll_into_view_if_needed()
    screenshot(w, "scrubbing")

    # lens: click L3H0 in the DLA chart: the kernel ablates it and re-runs the lens
    w = widgets["lens"]
    row = w.locator('[data-testid="dla-row-L3H0"]')
    row.scroll_into_view_if_needed()
    row.click()
    expect(w.locator('[data-testid="show-ablated"]')).to_have_class(re.compile("mw-active"), timeout=60_000)
    assert nb.py_json("w_lens.ablated['heads']") == [[3, 0]]
    w.scroll_into_view_if_needed()
    screenshot(w, "lens")

    assert net_context.guard.blocked == []
