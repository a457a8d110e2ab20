"""The attention widget on a real JupyterLab page, end to end: notebook → kernel → widget → clicks
→ Python state → back to the page.

The model is the zoo's ``induction-2l`` when it loads, otherwise a tiny random model built from
``tests/conftest.py`` (offline tokenizer). Screenshots: ``test-artifacts/test_attention_in_jupyterlab-*.png``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from harness import LabPage, js_fmt, show_token
from playwright.sync_api import expect

TESTS = Path(__file__).resolve().parent.parent
PROMPT = "When Mary and John went to the store , John gave a drink to Mary . A B C D A B C D"

SETUP = f"""\
import os, sys, pathlib, tempfile, warnings
os.environ.setdefault("HF_HUB_OFFLINE", "1")
warnings.filterwarnings("ignore", category=DeprecationWarning)
import torch
from mechwidgets import show_attention
try:
    from mechwidgets import zoo
    model = zoo.load("induction-2l")
    prompt = zoo.tasks.induction_sequences(1, length=8, seed=0, model="induction-2l")[0].text
    source = "zoo induction-2l"
except Exception as exc:
    sys.path.insert(0, {str(TESTS)!r})
    from support import build_tokenizer, tiny_model
    model = tiny_model(build_tokenizer(pathlib.Path(tempfile.mkdtemp())))
    prompt = {PROMPT!r}
    source = f"tiny random model (zoo: {{type(exc).__name__}})"
print("model:", source)
w = show_attention(model, prompt)
w
"""

BAD_CALL = """\
try:
    w.ablate([(9, 0)])
except Exception as exc:
    print("raised", type(exc).__name__ + ":", exc)
"""


def column(table: Any, col: int) -> list[str]:
    return [t.strip() for t in table.locator(f"tbody tr td:nth-child({col})").all_inner_texts()]


def test_attention_in_jupyterlab(lab_page: LabPage, screenshot: Any) -> None:
    lab = lab_page
    widget = lab.open_widget("attention.ipynb", SETUP, ".mw-attention")
    expect(widget.locator('[data-testid="thumb-grid"] .mw-thumb').first).to_be_visible(timeout=60_000)
    info = lab.py_json(
        '{"n_layers": w.n_layers, "n_heads": w.n_heads, "tokens": w.tokens, "layers": w.layers,'
        ' "best": int(w.scores_tensors["induction"][-1].argmax()), "source": source}'
    )
    n_layers, n_heads, toks = info["n_layers"], info["n_heads"], info["tokens"]
    n = len(toks)
    assert info["layers"] == list(range(n_layers))
    expect(widget.locator('[data-testid="thumb-grid"] .mw-thumb')).to_have_count(n_layers * n_heads)
    expect(widget.locator('[data-testid="token-strip"] .mw-token')).to_have_count(n)
    widget.scroll_into_view_if_needed()
    screenshot(lab.page, "rendered")

    # click the last layer's most induction-like head: its full pattern is drawn
    layer, head = info["layers"][-1], info["best"]
    widget.locator(f'[data-testid="thumb-{layer}-{head}"]').click()
    expect(widget.locator('[data-testid="detail-title"]')).to_have_text(
        f"L{layer}H{head} pattern (rows: destination token, columns: source token)"
    )
    assert lab.py_json("w.selected") == {"layer": layer, "head": head}

    # hover a heatmap cell and a token: tooltip and note text match the kernel's pattern
    # (no cell runs in between: running one scrolls the notebook away from the pointer)
    i, j = n - 1, n // 2
    pat = lab.py_json(f"[float(x) for x in w.patterns[w.layers.index({layer}), {head}, {i}]]")
    canvas = widget.locator(".mw-heatmap-canvas")
    canvas.scroll_into_view_if_needed()
    box = canvas.bounding_box()
    assert box is not None
    canvas.hover(position={"x": (j + 0.5) * box["width"] / n, "y": (i + 0.5) * box["height"] / n})
    # the value may come from the float16 layer prefetch or the float32 pattern: compare numbers
    tooltip = widget.locator('[data-testid="tooltip"]')
    prefix = f"{show_token(toks[i])}@{i} → {show_token(toks[j])}@{j}: "
    # (fmt: 4 decimals, or 3 significant digits in exponent form below 1e-3)
    expect(tooltip).to_have_text(re.compile(rf"^{re.escape(prefix)}(\d\.\d{{4}}|\d\.\d\de-\d+)$"))
    shown_value = float(tooltip.inner_text().strip()[len(prefix):])
    assert abs(shown_value - pat[j]) <= 1e-4 + 2**-9 * pat[j]
    widget.locator(f'[data-testid="token-strip"] .mw-token[data-pos="{i}"]').hover()
    note = widget.locator(".mw-note").first
    expect(note).to_have_text(re.compile(rf"^{re.escape(show_token(toks[i]))}@{i} attends most to: "))
    shown = [(int(p), float(v)) for p, v in re.findall(r"@(\d+) (\d\.\d+(?:e-\d+)?)(?:,|$)", note.inner_text())]
    assert len(shown) == min(3, i + 1)
    for p, v in shown:  # the three largest, in order
        assert abs(v - pat[p]) <= 0.006
    assert sorted(pat[: i + 1], reverse=True)[0] - pat[shown[0][0]] <= 2e-3

    # ablate it: predictions before/after appear; the kernel holds the ablation
    widget.locator('[data-testid="ablate-button"]').click()
    table = widget.locator('[data-testid="predictions"]')
    expect(table.locator("thead")).to_contain_text(f"after (zero: L{layer}H{head})", timeout=60_000)
    state = lab.py_json(
        "{'ablated': w.ablated, 'has_last': w.last_ablation is not None,"
        " 'heads': [list(h) for h in w.last_ablation.heads],"
        " 'before': [w.last_ablation.before.str_tokens, [float(p) for p in w.last_ablation.before.probs]],"
        " 'after': [w.last_ablation.after.str_tokens, [float(p) for p in w.last_ablation.after.probs]]}"
    )
    assert state["ablated"] == [[layer, head]]
    assert state["has_last"] and state["heads"] == [[layer, head]]
    before_toks, before_p = state["before"]
    after_toks, after_p = state["after"]
    assert column(table, 2) == [show_token(t) for t in before_toks]
    assert column(table, 3) == [js_fmt(p, 3) for p in before_p]
    assert column(table, 4) == [show_token(t) for t in after_toks]
    assert column(table, 5) == [js_fmt(p, 3) for p in after_p]
    # the predictions shown changed
    assert (column(table, 2), column(table, 3)) != (column(table, 4), column(table, 5))
    expect(widget.locator(f'[data-testid="thumb-{layer}-{head}"]')).to_have_class(re.compile("mw-ablated"))
    widget.locator('[data-testid="ablation-results"]').scroll_into_view_if_needed()
    screenshot(lab.page, "ablated")

    # a bad call from Python: raises in the cell, the banner shows it, the kernel lives on
    out = lab.run_code(BAD_CALL)
    assert "raised ComponentError:" in out, out
    message = out.split("raised ComponentError:", 1)[1].strip()
    banner = widget.locator(".mw-error")
    expect(banner).to_be_visible()
    expect(banner).to_have_text(message)
    assert "layer 9" in message
    lab.wait_idle()
    assert lab.py_json("[1 + 1, w.ablated]") == [2, [[layer, head]]]
    banner.scroll_into_view_if_needed()
    screenshot(lab.page, "error")

    # rendering made no network request other than to 127.0.0.1
    assert lab.guard.blocked == []  # type: ignore[attr-defined]
