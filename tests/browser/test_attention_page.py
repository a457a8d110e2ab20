"""The attention widget in real Chromium through the light harness (no Jupyter, ~1 s a test).

The page imports the built ES module and calls ``render({model, el})`` with a fake model wired to
the real Python :class:`~mechwidgets.AttentionWidget`: clicks become requests handled by the real
``_on_frontend_message``, and the widget's trait changes and replies are pushed back to the page.
"""

from __future__ import annotations

import re
from typing import Any

import pytest
import torch
from harness import WidgetHarness, clip, js_fmt, show_token
from playwright.sync_api import expect

import mechwidgets
from mechwidgets.errors import ComponentError

PROMPT = "When Mary and John went to the store , John gave a drink to Mary . A B C D A B C D"


def detail_title(layer: int, head: int) -> re.Pattern[str]:
    """The detail title once the head's float pattern (not its 8-bit thumbnail) is drawn."""
    return re.compile(rf"^L{layer}H{head} pattern \(rows: destination token, columns: source token\)$")


def thumbs(el: Any) -> Any:
    return el.locator('[data-testid="thumb-grid"] .mw-thumb')


def table_column(table: Any, col: int) -> list[str]:
    return [t.strip() for t in table.locator(f"tbody tr td:nth-child({col})").all_inner_texts()]


def cell_center(canvas: Any, n: int, i: int, j: int) -> dict[str, float]:
    box = canvas.bounding_box()
    assert box is not None
    return {"x": (j + 0.5) * box["width"] / n, "y": (i + 0.5) * box["height"] / n}


def assert_clean(harness: WidgetHarness, mounted: Any) -> None:
    assert mounted.js_errors() == [], "errors in the page"
    assert harness.py_errors == [], "errors in the Python side of the harness"
    assert harness.guard.blocked == [], "rendering made a network request other than to 127.0.0.1"  # type: ignore[attr-defined]


@pytest.fixture
def widget(model: Any) -> mechwidgets.AttentionWidget:
    return mechwidgets.show_attention(model, PROMPT)


def test_select_ablate_hover_and_errors(widget_harness: WidgetHarness, widget: Any, screenshot: Any) -> None:
    w = widget
    n, n_layers, n_heads = len(w.tokens), w.n_layers, w.n_heads
    m = widget_harness.mount(w)
    el = m.el
    expect(thumbs(el)).to_have_count(n_layers * n_heads)
    expect(el.locator(".mw-title")).to_have_text(f"Attention — {n} tokens, {n_layers} layers × {n_heads} heads")
    expect(el.locator('[data-testid="token-strip"] .mw-token')).to_have_count(n)
    expect(el.locator('[data-testid="score-table"] tbody tr')).to_have_count(n_layers * n_heads)

    # click a head: its full pattern is drawn, and Python knows the selection
    layer, head = n_layers - 1, 2
    el.locator(f'[data-testid="thumb-{layer}-{head}"]').click()
    title = el.locator('[data-testid="detail-title"]')
    expect(title).to_have_text(detail_title(layer, head))
    m.settle()
    assert w.selected == {"layer": layer, "head": head}
    canvas = el.locator(".mw-heatmap-canvas")
    assert canvas.evaluate("c => [c.width, c.height]") == [n, n]
    expect(el.locator(f'[data-testid="thumb-{layer}-{head}"]')).to_have_class(re.compile("mw-selected"))
    # the pixels are the pattern: the diagonal cell of the last row has the colour of its value
    pat = w.patterns[w.layers.index(layer), head]
    rgb = canvas.evaluate(f"c => Array.from(c.getContext('2d').getImageData({n - 1}, {n - 1}, 1, 1).data.slice(0, 3))")
    u = float(pat[n - 1, n - 1])
    assert rgb == [round(255 - 225 * u), round(255 - 180 * u), round(255 - 75 * u)]

    # hover a heatmap cell: the tooltip names both tokens and the probability
    i, j = n - 1, 3
    canvas.hover(position=cell_center(canvas, n, i, j))
    toks = w.tokens
    expect(el.locator('[data-testid="tooltip"]')).to_have_text(
        f"{show_token(toks[i])}@{i} → {show_token(toks[j])}@{j}: {js_fmt(float(pat[i, j]), 4)}"
    )

    # hover a token: the note lists what it attends to most
    k = n - 1
    el.locator(f'[data-testid="token-strip"] .mw-token[data-pos="{k}"]').hover()
    row = sorted(((p, float(pat[k, p])) for p in range(k + 1)), key=lambda t: -t[1])[:3]
    best = ", ".join(f"{clip(show_token(toks[p]), 12)}@{p} {js_fmt(v, 2)}" for p, v in row)
    expect(el.locator(".mw-note").first).to_have_text(f"{show_token(toks[k])}@{k} attends most to: {best}")
    expect(el.locator(".mw-token-hover")).to_have_count(1)
    el.locator(".mw-title").hover()
    expect(el.locator(".mw-token-hover")).to_have_count(0)

    # ablate it: predictions before/after appear, and match Python's
    assert w.last_ablation is None
    button = el.locator('[data-testid="ablate-button"]')
    expect(button).to_have_text(f"Ablate L{layer}H{head}")
    button.click()
    table = el.locator('[data-testid="predictions"]')
    expect(table).to_be_visible()
    m.settle()
    assert w.ablated == [[layer, head]]
    res = w.last_ablation
    assert res is not None and res.heads == [(layer, head)]
    assert table_column(table, 2) == [show_token(t) for t in res.before.str_tokens]
    assert table_column(table, 3) == [js_fmt(float(p), 3) for p in res.before.probs]
    assert table_column(table, 4) == [show_token(t) for t in res.after.str_tokens]
    assert table_column(table, 5) == [js_fmt(float(p), 3) for p in res.after.probs]
    # the ablation changed the predictions, and the page shows the change
    assert not torch.allclose(res.before.probs, res.after.probs)
    assert (table_column(table, 2), table_column(table, 3)) != (table_column(table, 4), table_column(table, 5))
    expect(table.locator("thead")).to_contain_text(f"after (zero: L{layer}H{head})")
    expect(el.locator(f'[data-testid="thumb-{layer}-{head}"]')).to_have_class(re.compile("mw-ablated"))
    expect(el.locator('[data-testid="ablated-list"]')).to_contain_text(f"L{layer}H{head}")
    expect(el.locator('[data-testid="loss"] .mw-token')).to_have_count(n - 1)
    expect(button).to_have_text(f"Restore L{layer}H{head}")
    screenshot(el, "ablated")

    # a bad call from Python: raises there, and the banner shows the same message
    banner = el.locator(".mw-error")
    expect(banner).to_be_hidden()
    with pytest.raises(ComponentError) as info:
        w.ablate([(9, 0)])
    m.flush()
    expect(banner).to_be_visible()
    expect(banner).to_have_text(str(info.value))
    assert "layer 9" in str(info.value)
    # a malformed request from the page: answered with an error, never a crash
    widget_harness.page.evaluate(
        "id => window.__mw.widgets[id].model.send({type: 'request', id: 999, kind: 'select_head', args: {layer: 0, head: 99}})",
        m.id,
    )
    expect(banner).to_contain_text("'head' takes an integer in 0..3; got 99, out of range")
    screenshot(el, "error")

    # the widget still works, and a successful request clears the banner
    button.click()  # restore the head
    expect(el.locator('[data-testid="ablated-list"]')).to_have_text("No head ablated.")
    expect(banner).to_be_hidden()
    m.settle()
    assert w.ablated == []
    assert_clean(widget_harness, m)


def test_python_driven_updates_reach_the_page(widget_harness: WidgetHarness, widget: Any) -> None:
    w = widget
    m = widget_harness.mount(w)
    expect(thumbs(m.el)).to_have_count(w.n_layers * w.n_heads)
    w.select_head(0, 1)
    w.ablate([(0, 1), (1, 0)], mode="mean")
    m.flush()
    expect(m.el.locator('[data-testid="detail-title"]')).to_have_text(detail_title(0, 1))
    expect(m.el.locator('[data-testid="predictions"] thead')).to_contain_text("after (mean: L0H1, L1H0)")
    expect(m.el.locator('[data-testid="ablated-list"] .mw-chip')).to_have_count(2)
    # the chip's × restores one head, through the kernel
    m.el.locator('[data-testid="unablate-0-1"]').click()
    expect(m.el.locator('[data-testid="ablated-list"] .mw-chip')).to_have_count(1)
    m.settle()
    assert w.ablated == [[1, 0]]
    assert w.ablation_mode == "mean"
    # sorting the score table by another score reorders its rows
    m.el.locator('[data-testid="score-table"] th[data-key="first_token"]').click()
    first = w.scores_tensors["first_token"].flatten()
    top = int(first.argmax())
    expect(m.el.locator('[data-testid="score-table"] tbody tr').first).to_have_attribute(
        "data-testid", f"score-row-{top // w.n_heads}-{top % w.n_heads}"
    )
    assert_clean(widget_harness, m)


def test_static_patterns_without_a_model(widget_harness: WidgetHarness, screenshot: Any) -> None:
    torch.manual_seed(0)
    n_heads, n = 3, 10
    tokens = [f"tok{k}" for k in range(n)]
    att = torch.rand(n_heads, n, n).tril()
    att = att / att.sum(-1, keepdim=True)
    w = mechwidgets.attention_patterns(tokens, att)
    m = widget_harness.mount(w)
    el = m.el
    expect(thumbs(el)).to_have_count(n_heads)
    expect(el.locator(".mw-title")).to_contain_text("static view: no model")
    expect(el.locator('[data-testid="ablate-button"]')).to_be_disabled()
    el.locator('[data-testid="thumb-0-2"]').click()
    expect(el.locator('[data-testid="detail-title"]')).to_have_text(detail_title(0, 2))
    canvas = el.locator(".mw-heatmap-canvas")
    canvas.hover(position=cell_center(canvas, n, 7, 4))
    expect(el.locator('[data-testid="tooltip"]')).to_have_text(f"tok7@7 → tok4@4: {js_fmt(float(att[2, 7, 4]), 4)}")
    m.settle()
    assert w.selected == {"layer": 0, "head": 2}
    screenshot(el, "static")
    assert_clean(widget_harness, m)


def test_saved_state_without_a_kernel(widget_harness: WidgetHarness, widget: Any) -> None:
    """A saved notebook opened with no kernel: everything drawn from traits; a head's pattern
    comes from its thumbnail (exact to 8 bits for a prompt of at most 32 tokens)."""
    w = widget
    w.select_head(1, 1)
    w.ablate([(1, 1)])
    m = widget_harness.mount(w, kernel=False)
    el = m.el
    expect(thumbs(el)).to_have_count(w.n_layers * w.n_heads)
    expect(el.locator('[data-testid="detail-title"]')).to_have_text(detail_title(1, 1))  # saved pattern trait
    expect(el.locator('[data-testid="predictions"] thead')).to_contain_text("after (zero: L1H1)")
    el.locator('[data-testid="thumb-0-3"]').click()  # never answered: falls back to the thumbnail
    expect(el.locator('[data-testid="detail-title"]')).to_have_text(re.compile(r"^L0H3 pattern .*8-bit copy from the thumbnails$"))
    n = len(w.tokens)
    canvas = el.locator(".mw-heatmap-canvas")
    canvas.hover(position=cell_center(canvas, n, n - 1, 2))
    value = round(float(w.patterns[0, 3, n - 1, 2]) * 255) / 255
    expect(el.locator('[data-testid="tooltip"]')).to_contain_text(f"@2: {js_fmt(value, 4)}")
    assert_clean(widget_harness, m)


HOSTILE = [
    "<img src=x onerror=window.__xss=1>",
    "</script><script>window.__xss=2</script>",
    "\"'`&amp;&lt;",
    "\u202eevil\u202c",
    "abc\u200fdef",
    "x" * 300,
    "<b>bold</b>",
    "line\nbreak\u0000\u200b",
]


def test_hostile_tokens_are_text(widget_harness: WidgetHarness, screenshot: Any) -> None:
    requests: list[str] = []
    widget_harness.page.on("request", lambda r: requests.append(r.url))
    tokens = ["<|bos|>", *HOSTILE]
    n = len(tokens)
    att = torch.eye(n)[None].repeat(2, 1, 1)
    att[1] = torch.full((n, n), 1.0).tril()
    att[1] = att[1] / att[1].sum(-1, keepdim=True)
    w = mechwidgets.attention_patterns(tokens, att)
    m = widget_harness.mount(w)
    el = m.el
    strip = el.locator('[data-testid="token-strip"] .mw-token')
    expect(strip).to_have_count(n)
    assert strip.evaluate_all("els => els.map(e => e.textContent)") == [show_token(t) for t in tokens]
    assert strip.evaluate_all("els => els.map(e => e.title)") == [
        f"position {k}: {_json_string(t)}" for k, t in enumerate(tokens)
    ]
    # a right-to-left override cannot reorder what is shown: it is shown as an escape
    rtl = strip.nth(tokens.index("\u202eevil\u202c"))
    assert rtl.inner_text() == "\\u202Eevil\\u202C"
    # the detail view's labels and the tooltip are text too
    el.locator('[data-testid="thumb-0-1"]').click()
    expect(el.locator('[data-testid="detail-title"]')).to_have_text(detail_title(0, 1))
    rows = el.locator(".mw-heatmap-rowlabel")
    if rows.count():
        assert rows.evaluate_all("els => els.map(e => e.title)") == tokens
        assert rows.evaluate_all("els => els.map(e => e.textContent)") == [clip(show_token(t), 14) for t in tokens]
    canvas = el.locator(".mw-heatmap-canvas")
    canvas.hover(position=cell_center(canvas, n, 1, 1))
    expect(el.locator('[data-testid="tooltip"]')).to_contain_text(f"{show_token(tokens[1])}@1 → {show_token(tokens[1])}@1:")
    el.locator('[data-testid="token-strip"] .mw-token[data-pos="2"]').hover()
    expect(el.locator(".mw-note").first).to_contain_text(f"{clip(show_token(tokens[2]), 12)}@2")
    screenshot(widget_harness.page, "hostile")
    # nothing was parsed as markup, nothing ran, nothing was fetched
    assert el.locator("img, script, b").count() == 0
    assert widget_harness.page.evaluate("() => window.__xss") is None
    harness_urls = re.compile(r"^(blob:.*|http://127\.0\.0\.1:\d+/(harness\.js|buf/[0-9a-f]+)?)$")
    assert [u for u in requests if not harness_urls.match(u)] == []  # e.g. no <img src=x> fetch
    # the long token is clipped by CSS, not by changing its text
    long_tok = strip.nth(tokens.index("x" * 300))
    assert long_tok.evaluate("e => e.scrollWidth > e.clientWidth")
    assert_clean(widget_harness, m)


def _json_string(s: str) -> str:
    """JSON.stringify of a string (as the frontend writes it into titles)."""
    import json

    return json.dumps(s, ensure_ascii=False)
