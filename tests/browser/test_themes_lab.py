"""Every widget follows JupyterLab's dark theme (real Chromium, real JupyterLab).

One JupyterLab server started with the "JupyterLab Dark" theme in its user settings, one notebook
whose cells show the six widgets on the zoo's models. For each widget: a screenshot
(``test-artifacts/test_widgets_follow_the_dark_theme-<widget>.png``), then, read from the page's
computed styles: the widget's root paints a dark background and light text, no element inside it
paints a light box, and all text reads on what is under it: the theme's background, or a
colour-map cell's own colour (colour maps are not themed; their text is dark, or white on a dark
cell).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from harness import DARK_THEME, NO_WINDOWING, JupyterLab, LabPage
from playwright.sync_api import expect

SETUP = """\
import os, warnings
os.environ.setdefault("HF_HUB_OFFLINE", "1")
warnings.filterwarnings("ignore", category=DeprecationWarning)
import torch
from mechwidgets import (show_attention, show_circuit, show_features, show_logit_lens,
                         show_patching, show_scrubbing, zoo)
from mechwidgets.analysis.scrubbing import induction_heads, induction_hypothesis
toy, ind = zoo.load("toy-lm"), zoo.load("induction-2l")
IOI = "When Mary and John went to the store, John gave a drink to"
IOI_CORRUPTED = "When Mary and John went to the store, Mary gave a drink to"
print("models: toy-lm, induction-2l")
"""

#: (name, the cell that shows it, its root's CSS class, its main element)
WIDGETS: list[tuple[str, str, str, str]] = [
    ("attention",
     'w_attention = show_attention(ind, zoo.tasks.induction_sequences(1, length=8, seed=0, model="induction-2l")[0].text)\n'
     "w_attention",
     ".mw-attention", ".mw-thumb"),
    ("patching",
     'w_patching = show_patching(toy, IOI, IOI_CORRUPTED, answer=" Mary", wrong_answer=" John")\n'
     "w_patching",
     ".mw-patching", '[data-testid="exact-grid"] canvas'),
    ("features",
     "w_features = show_features(toy, zoo.load_saes('toy-lm'), IOI)\n"
     "w_features",
     ".mw-features", ".mw-feat-cell"),
    ("circuit",
     "pairs = zoo.tasks.ioi_pairs(4, seed=0)\n"
     "w_circuit = show_circuit(toy, [p.clean for p in pairs], [p.corrupted for p in pairs],\n"
     "                         answer=[p.answer for p in pairs], wrong_answer=[p.wrong_answer for p in pairs])\n"
     "w_circuit",
     ".mw-circuit", ".mw-circuit-node"),
    ("scrubbing",
     'data = zoo.tasks.induction_sequences(64, length=20, seed=1, model="induction-2l")\n'
     "prev, induction = induction_heads(ind)\n"
     "w_scrubbing = show_scrubbing(ind, induction_hypothesis(prev, induction, key_feature='identity',\n"
     "                                                       n_heads=ind.cfg.n_heads), data)\n"
     "w_scrubbing",
     ".mw-scrubbing", ".mw-scrub-node"),
    ("lens",
     'w_lens = show_logit_lens(toy, "When Olivia and Simon went to the zoo, Simon gave a flower to",\n'
     '                         answer=" Olivia", wrong_answer=" Simon")\n'
     "w_lens",
     ".mw-lens", ".mw-lens-cell"),
]

CELLS = [SETUP] + [cell for _, cell, _, _ in WIDGETS]

# Reads a rendered widget's colours from the page. Colours are compared as WCAG relative
# luminance / contrast, with translucent colours blended over the widget's own background.
THEME_REPORT = r"""
(root) => {
  const parse = (c) => {
    let m = /^rgba?\(([^)]*)\)$/.exec(c);
    if (m) {
      const p = m[1].split(/[\s,\/]+/).filter(Boolean).map(Number);
      return [p[0] / 255, p[1] / 255, p[2] / 255, p.length > 3 ? p[3] : 1];
    }
    m = /^color\(srgb ([^)]*)\)$/.exec(c);
    if (m) {
      const p = m[1].split(/[\s\/]+/).filter(Boolean).map(Number);
      return [p[0], p[1], p[2], p.length > 3 ? p[3] : 1];
    }
    return null;
  };
  const lin = (v) => (v <= 0.04045 ? v / 12.92 : Math.pow((v + 0.055) / 1.055, 2.4));
  const lum = (c) => 0.2126 * lin(c[0]) + 0.7152 * lin(c[1]) + 0.0722 * lin(c[2]);
  const over = (c, bg) => [0, 1, 2].map((i) => c[3] * c[i] + (1 - c[3]) * bg[i]).concat([1]);
  const contrast = (a, b) => (Math.max(lum(a), lum(b)) + 0.05) / (Math.min(lum(a), lum(b)) + 0.05);
  const rootStyle = getComputedStyle(root);
  const bg = parse(rootStyle.backgroundColor);
  const fg = parse(rootStyle.color);
  const problems = [];
  if (!bg || !fg) return { bg: rootStyle.backgroundColor, fg: rootStyle.color, problems: ["unparsed root colours"] };
  const describe = (el) => `${el.tagName.toLowerCase()}.${[...el.classList].join(".")}` +
    (el.dataset && el.dataset.testid ? `[${el.dataset.testid}]` : "");
  for (const el of root.querySelectorAll("*")) {
    if (!el.getClientRects().length) continue;  // not displayed
    const cs = getComputedStyle(el);
    if (cs.visibility === "hidden" || Number(cs.opacity) === 0) continue;
    const painted = el.closest('[style*="background"]');  // a colour-map cell (inline colour)
    const isSvg = el instanceof SVGElement;
    const rect = el.getBoundingClientRect();
    const mark = rect.width < 6 || rect.height < 6;  // a line or tick drawn in the text colour
    if (!isSvg && !painted && !mark) {
      const b = parse(cs.backgroundColor);
      if (b === null) problems.push(`${describe(el)}: unparsed background ${cs.backgroundColor}`);
      else if (b[3] >= 0.5 && lum(over(b, bg)) > 0.4) problems.push(`${describe(el)}: light background ${cs.backgroundColor}`);
    }
    if (isSvg && (el.tagName === "rect" || el.tagName === "circle") && !el.hasAttribute("fill")) {
      const f = parse(cs.fill);
      if (f && f[3] >= 0.5 && lum(over(f, bg)) > 0.4) problems.push(`${describe(el)}: light fill ${cs.fill}`);
    }
    const ownText = [...el.childNodes].some((n) => n.nodeType === 3 && n.textContent.trim());
    if (!ownText) continue;
    const colour = parse(isSvg ? cs.fill : cs.color);
    if (colour === null) {
      problems.push(`${describe(el)}: unparsed text colour ${isSvg ? cs.fill : cs.color}`);
      continue;
    }
    // text on a colour-map cell's colour, else on the element's own opaque background if it
    // has one, else on the widget's. WCAG's 3:1 for theme text; on a map cell 2.5:1 (the
    // drawing code switches to white text a little past the map's middle)
    const cell = painted ? parse(getComputedStyle(painted).backgroundColor) : null;
    const own = isSvg ? null : parse(cs.backgroundColor);
    const under = cell && cell[3] >= 0.5 ? over(cell, bg) : own && own[3] >= 0.5 ? over(own, bg) : bg;
    const ratio = contrast(over(colour, under), under);
    if (ratio < (painted ? 2.5 : 3)) problems.push(`${describe(el)}: text contrast ${ratio.toFixed(2)} (${isSvg ? cs.fill : cs.color} on ${under.map((v) => Math.round(255 * v))})`);
  }
  return { bg: rootStyle.backgroundColor, fg: rootStyle.color, bgLum: lum(bg), fgLum: lum(over(fg, bg)), problems };
}
"""


@pytest.fixture(scope="module")
def dark_lab() -> Any:
    lab = JupyterLab(settings={**DARK_THEME, **NO_WINDOWING})
    try:
        yield lab
    finally:
        lab.close()


def test_widgets_follow_the_dark_theme(dark_lab: JupyterLab, net_context: Any, screenshot: Any) -> None:
    page = net_context.new_page()
    page.set_viewport_size({"width": 1400, "height": 2000})  # the tallest widget fits: whole screenshots
    lab = LabPage(dark_lab, page)
    lab.open("themes.ipynb", CELLS)
    assert lab.page.evaluate("() => [document.body.dataset.jpThemeName, document.body.dataset.jpThemeLight]") == [
        "JupyterLab Dark", "false"]
    assert "models:" in lab.run_cell(0, timeout_ms=180_000)
    for i in range(1, len(CELLS)):
        lab.run_cell(i, timeout_ms=180_000)
    reports: dict[str, Any] = {}
    shots: list[Path] = []
    for i, (name, _, root, main) in enumerate(WIDGETS, start=1):
        widget = lab.cell(i).locator(root)
        expect(widget.locator(main).first).to_be_visible(timeout=60_000)
        expect(widget.locator(".mw-error")).to_be_hidden()
        widget.scroll_into_view_if_needed()
        shots.append(screenshot(widget, name))
        reports[name] = widget.evaluate(THEME_REPORT)
    for name, report in reports.items():
        # the widget paints the theme's dark background and light text, not a white box
        assert report["bgLum"] < 0.05 and report["fgLum"] > 0.5, (name, report)
        assert report["problems"] == [], (name, report["problems"][:20])
    assert all(p.stat().st_size > 0 for p in shots)
    assert net_context.guard.blocked == []
