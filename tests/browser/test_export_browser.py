"""Exported HTML, the static SVG and marimo, in real Chromium, with the network cut off.

Each exported file is opened from ``file://`` in a context where every request except the file
itself (and ``data:``/``blob:`` URLs, which never leave the page) is aborted and recorded: the
tests assert that none was made. They check that each widget drew its saved view (token strip,
thumbnails, the head selected before saving, the ablation table), that hostile tokens stay text
and run no script, and save screenshots to ``test-artifacts/``.

Trust: a notebook whose saved state holds hostile code (a third-party anywidget's ``_esm``, and
a mechwidgets widget's own ``_esm`` replaced) leaves the page's title alone and makes no request,
with and without ``--sanitize-html``, while the mechwidgets widget still draws (from the installed
bundle); with ``--trust`` a benign third-party anywidget draws; a Markdown image outside the
notebook's folder stays a link.

The marimo test runs ``marimo run`` on a small notebook and checks ``mo.ui.anywidget(widget)``
draws the widget and that a click reaches the kernel and comes back (binary buffers included).
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from harness import artifact_path, free_port, show_token
from playwright.sync_api import expect

from mechwidgets import _export
from mechwidgets.widgets._base import MechWidget

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import test_export  # the widget registry and notebook helpers
from test_export import IDS, PROMPT, WIDGETS, WidgetCase

SELECTED = re.compile(r"\bmw-selected\b")


@dataclass
class OfflineContext:
    """A browser context that may open the given files and nothing else."""

    context: Any
    allowed: set[str] = field(default_factory=set)
    requests: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def _route(self, route: Any) -> None:
        url = route.request.url
        if url.startswith(("data:", "blob:")) or url in self.allowed:
            route.continue_()
        else:
            self.requests.append(url)
            route.abort()

    def open(self, path: Path) -> Any:
        url = path.resolve().as_uri()
        self.allowed.add(url)
        page = self.context.new_page()
        page.on("pageerror", lambda e: self.errors.append(f"pageerror: {e}"))
        page.on("console", lambda m: self.errors.append(f"console: {m.text}") if m.type == "error" else None)
        page.on("websocket", lambda ws: self.requests.append(ws.url))
        page.goto(url)
        return page


@pytest.fixture
def offline(chromium: Any) -> Iterator[OfflineContext]:
    context = chromium.new_context(viewport={"width": 1400, "height": 1000}, service_workers="block")
    context.set_default_timeout(30_000)
    ctx = OfflineContext(context)
    context.route("**/*", ctx._route)
    try:
        yield ctx
    finally:
        context.close()


@pytest.fixture(autouse=True)
def _to_html(monkeypatch: pytest.MonkeyPatch) -> None:
    test_export.install_to_html(monkeypatch)


def wait_rendered(page: Any) -> list[str]:
    page.wait_for_function("() => document.documentElement.dataset.mwExport === 'done'")
    return list(page.evaluate("() => [...document.querySelectorAll('[data-mw-model-id]')].map(e => e.dataset.mwStatus)"))


def canvas_ink(page: Any, host: Any, selector: str) -> float:
    """Fraction of non-white pixels of the first canvas matching selector in host."""
    return float(host.locator(selector).first.evaluate(
        """c => { const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
                  let ink = 0; for (let i = 0; i < d.length; i += 4) if (d[i] + d[i+1] + d[i+2] < 750) ink++;
                  return ink / (d.length / 4); }"""
    ))


def check_drawn(page: Any, host: Any, case: WidgetCase, w: MechWidget) -> None:
    for selector in case.drawn:
        expect(host.locator(selector).first).to_be_visible()
    for text in case.drawn_text(w):
        expect(host.get_by_text(text).first).to_be_visible()
    if case.name == "attention":
        tokens = host.locator("[data-testid=token-strip] .mw-token")
        expect(tokens).to_have_count(len(w.tokens))
        assert tokens.all_text_contents() == [show_token(t) for t in w.tokens]
        expect(host.locator("[data-testid=thumb-grid] canvas")).to_have_count(len(w.layers) * w.n_heads)
        sel = w.selected
        expect(host.locator(f"[data-testid=thumb-{sel['layer']}-{sel['head']}]")).to_have_class(SELECTED)
        assert canvas_ink(page, host, ".mw-heatmap-canvas") > 0.05, "the selected head's heatmap is blank"
        assert canvas_ink(page, host, "[data-testid=thumb-grid] canvas") > 0.05, "thumbnails are blank"


# ------------------------------------------------------------------------------------ one widget
@pytest.mark.parametrize("case", WIDGETS, ids=IDS)
def test_widget_to_html_offline(case: WidgetCase, model: Any, offline: OfflineContext, tmp_path: Path) -> None:
    w = case.build(model, PROMPT)
    path = tmp_path / f"{case.name}.html"
    w.to_html(path)
    page = offline.open(path)
    assert wait_rendered(page) == ["rendered"]
    host = page.locator("[data-mw-model-id]")
    expect(host.locator(".mw-export-fallback")).to_have_count(0)  # replaced by the live view
    check_drawn(page, host, case, w)
    page.screenshot(path=str(artifact_path(f"export-{case.name}-to_html.png")), full_page=True)
    # no kernel: clicking another head must neither throw nor hang the page
    if case.name == "attention":
        host.locator("[data-testid=thumb-0-1]").click()
        expect(host.locator("[data-testid=detail-title]")).to_contain_text("L0H1")
        assert page.evaluate("() => 1 + 1") == 2
    assert offline.requests == [], f"the export made network requests: {offline.requests}"
    assert offline.errors == []


# ------------------------------------------------------------------------------------ a notebook
@pytest.fixture(scope="module")
def exported_notebook(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("export-nb")
    src = test_export.write_notebook(folder / "demo.ipynb", evil=True)
    out = folder / "demo.html"
    proc = test_export.export_cli(src, out, "--execute")  # nbclient runs it and saves the state
    assert proc.returncode == 0, proc.stderr
    assert "1 shown as static" in proc.stdout, proc.stdout  # the slider
    return out


def test_notebook_export_offline(exported_notebook: Path, offline: OfflineContext, model: Any) -> None:
    page = offline.open(exported_notebook)
    statuses = wait_rendered(page)
    assert statuses == ["rendered"] * (len(WIDGETS) + 1), statuses  # + the hostile-token widget
    expect(page.locator("h1").first).to_contain_text("Export check")
    expect(page.get_by_text("IntSlider(value=7").first).to_be_visible()  # not a mechwidget: its text
    expect(page.get_by_text("printed <b>text</b>").first).to_be_visible()
    hosts = page.locator("[data-mw-model-id]")
    for k, case in enumerate(WIDGETS):
        host = hosts.nth(k)
        host.scroll_into_view_if_needed()
        # the kernel built the same model (tests/conftest.py, seed 0): rebuild the widget here to
        # know what its saved view must show
        check_drawn(page, host, case, case.build(model, PROMPT))
    evil = hosts.nth(len(WIDGETS))
    expect(evil.locator("[data-testid=token-strip] .mw-token")).to_have_count(len(test_export.EVIL_TOKENS) + 2)
    assert page.evaluate("() => window.__xss") is None
    page.screenshot(path=str(artifact_path("export-notebook.png")), full_page=True)
    assert offline.requests == [], f"the export made network requests: {offline.requests}"
    assert offline.errors == []


def test_jupyterlab_saved_state_exports(lab_page: Any, offline: OfflineContext) -> None:
    """JupyterLab's own "save widget state" format: a head clicked in Lab is drawn in the export."""
    lab = lab_page.lab
    save_widget_state(lab.url, True)  # Settings > Save Widget State Automatically
    try:
        _lab_saved_state_exports(lab_page, offline)
    finally:
        save_widget_state(lab.url, False)  # the Lab server is shared with other tests


def save_widget_state(url: str, on: bool) -> None:
    import json
    import urllib.request

    req = urllib.request.Request(
        f"{url}/lab/api/settings/@jupyter-widgets/jupyterlab-manager:plugin",
        data=json.dumps({"raw": json.dumps({"saveState": on})}).encode(), method="PUT",
        headers={"Content-Type": "application/json"},
    )
    urllib.request.urlopen(req, timeout=30).close()


def _lab_saved_state_exports(lab_page: Any, offline: OfflineContext) -> None:
    import json

    lab = lab_page.lab
    setup = test_export.NOTEBOOK_SETUP.format(tests=str(Path(__file__).resolve().parent.parent))
    cell = f"import test_export\nw = test_export.WIDGETS[{IDS.index('attention')}].build(model, {PROMPT!r})\nw"
    lab_page.open("lab_state.ipynb", [setup, cell])
    lab_page.run_cell(0)
    lab_page.run_cell(1)
    view = lab_page.cell(1).locator(".mw-attention")
    view.locator("[data-testid=thumb-0-2]").click()  # a selection made in the browser, synced to Python
    expect(view.locator("[data-testid=detail-title]")).to_contain_text("L0H2 pattern", timeout=60_000)
    # the kernel handled the click (and its trait update reached the page before this cell's output)
    deadline = time.monotonic() + 60
    while lab_page.py_json("w.selected") != {"layer": 0, "head": 2}:
        assert time.monotonic() < deadline, "the click never reached the kernel"
    lab_page.page.evaluate("() => window.jupyterapp.commands.execute('docmanager:save')")
    path = lab.root / "lab_state.ipynb"
    deadline = time.monotonic() + 60
    while "application/vnd.jupyter.widget-state+json" not in path.read_text():
        assert time.monotonic() < deadline, "JupyterLab did not save the widget state"
        time.sleep(0.5)
    time.sleep(0.5)  # the file is written in one go, but be safe with a slow disk
    saved = json.loads(path.read_text())["metadata"]["widgets"]["application/vnd.jupyter.widget-state+json"]
    entry = next(v for v in saved["state"].values() if "_esm" in v["state"])
    assert entry["state"]["selected"] == {"layer": 0, "head": 2}
    assert entry["buffers"] and all(b["encoding"] == "base64" for b in entry["buffers"])
    out = path.with_suffix(".html")
    summary = _export.export_notebook(path, out)
    assert summary.interactive == 1, summary
    page = offline.open(out)
    assert wait_rendered(page) == ["rendered"]
    host = page.locator("[data-mw-model-id]")
    expect(host.locator("[data-testid=detail-title]")).to_contain_text("L0H2 pattern")
    expect(host.locator("[data-testid=thumb-0-2]")).to_have_class(SELECTED)
    assert canvas_ink(page, host, ".mw-heatmap-canvas") > 0.05
    page.screenshot(path=str(artifact_path("export-jupyterlab-saved-state.png")), full_page=True)
    assert offline.requests == [] and offline.errors == []


# ------------------------------------------------------------------------------------ safety
def test_hostile_tokens_stay_text(offline: OfflineContext, tmp_path: Path, widget_harness: Any) -> None:
    w = test_export.evil_widget()
    expected = [show_token(t) for t in w.tokens]

    # exported HTML
    path = tmp_path / "evil.html"
    w.to_html(path)
    page = offline.open(path)
    assert wait_rendered(page) == ["rendered"]
    strip = page.locator("[data-testid=token-strip] .mw-token")
    assert strip.all_text_contents() == expected
    expect(strip.nth(1)).to_be_visible()
    assert page.locator("main img, main svg, main script").count() == 0  # no element from a token
    assert page.evaluate("() => window.__xss") is None
    page.screenshot(path=str(artifact_path("export-hostile-tokens.png")), full_page=True)

    # the static picture, opened on its own (scripts in an SVG document would run here)
    svg_path = tmp_path / "evil.svg"
    svg = w._static_svg()
    assert svg is not None
    svg_path.write_text(svg, encoding="utf-8")
    svg_page = offline.open(svg_path)
    texts = svg_page.locator("text").all_text_contents()
    assert any(t.startswith("<img src=x o") for t in texts), texts
    assert svg_page.evaluate("() => window.__xss") is None
    svg_page.screenshot(path=str(artifact_path("export-hostile-tokens-svg.png")))

    # the live widget (light harness: real Python widget behind the page)
    mounted = widget_harness.mount(w)
    assert mounted.el.locator("[data-testid=token-strip] .mw-token").all_text_contents() == expected
    assert widget_harness.page.evaluate("() => window.__xss") is None
    assert mounted.js_errors() == []
    assert offline.requests == [] and offline.errors == []


# ------------------------------------------------------------------------------------ trust
def host_status(page: Any, model_id: str) -> str | None:
    return page.locator(f'.mw-export-widget[data-mw-model-id="{model_id}"]').get_attribute("data-mw-status")


@pytest.mark.parametrize("sanitize", [False, True], ids=["plain", "sanitize-html"])
def test_hostile_saved_code_never_runs(offline: OfflineContext, tmp_path: Path, sanitize: bool) -> None:
    src, w = test_export.hostile_notebook(tmp_path)
    out = tmp_path / "hostile.html"
    summary = _export.export_notebook(src, out, sanitize_html=sanitize)
    assert (summary.interactive, summary.untrusted) == (1, 1)
    page = offline.open(out)
    wait_rendered(page)
    # the mechwidgets widget is drawn, by the installed bundle, from its saved data
    assert host_status(page, w.model_id) == "rendered"
    host = page.locator(f'.mw-export-widget[data-mw-model-id="{w.model_id}"]')
    assert host.locator("[data-testid=token-strip] .mw-token").all_text_contents() == [show_token(t) for t in w.tokens]
    # the other package's widget shows its saved text; no saved code ran, nothing was requested
    expect(page.get_by_text("fallback of thirdparty1")).to_be_visible()
    time.sleep(0.3)  # a late fetch or title change would land here
    assert page.title() == "hostile"
    assert page.evaluate("() => window.__pwned") is None
    expect(page.get_by_text("HOSTILE CODE RAN")).to_have_count(0)
    page.screenshot(path=str(artifact_path(f"export-hostile-esm-{'sanitized' if sanitize else 'plain'}.png")), full_page=True)
    assert offline.requests == [], f"the export made network requests: {offline.requests}"
    assert offline.errors == []


def test_trusted_third_party_anywidget_renders(offline: OfflineContext, tmp_path: Path) -> None:
    src = test_export.benign_notebook(tmp_path)
    trusted = _export.export_notebook(src, tmp_path / "trusted.html", trust=True)
    assert trusted.path is not None and trusted.interactive == 1
    page = offline.open(trusted.path)
    assert wait_rendered(page) == ["rendered"]
    expect(page.get_by_text("benign third-party widget: 7")).to_be_visible()
    expect(page.get_by_text("fallback of benign1")).to_have_count(0)  # replaced by the live view
    # the same notebook without --trust: its saved text, and its code not run
    default = _export.export_notebook(src, tmp_path / "default.html")
    assert default.path is not None and default.untrusted == 1
    page = offline.open(default.path)
    page.wait_for_load_state("load")
    assert page.locator("[data-mw-model-id], script#mw-export-data").count() == 0  # no runtime at all
    expect(page.get_by_text("fallback of benign1")).to_be_visible()
    expect(page.get_by_text("benign third-party widget")).to_have_count(0)
    assert offline.requests == [] and offline.errors == []


def test_markdown_image_outside_the_folder_is_not_embedded(offline: OfflineContext, tmp_path: Path) -> None:
    src, _ = test_export.image_layout(tmp_path)
    summary = _export.export_notebook(src, src.with_suffix(".html"))  # beside the notebook
    assert summary.path is not None
    page = offline.open(summary.path)
    page.wait_for_load_state("load")

    def image(alt: str) -> tuple[str, int]:
        img = page.locator(f'img[alt="{alt}"]')
        return str(img.get_attribute("src")), int(img.evaluate("i => i.naturalWidth"))

    src_ok, width_ok = image("ok")
    assert src_ok.startswith("data:image/png;base64,") and width_ok == 1  # inside the folder: drawn
    assert image("att")[0].startswith("data:image/png;base64,") and image("att")[1] == 1
    for alt in ("up", "rawup", "link", "fake", "key", "abs"):
        link, width = image(alt)
        assert not link.startswith("data:") and width == 0, (alt, link)  # a link the guard refused
    outside = (tmp_path / "secret.png").resolve().as_uri()
    assert outside in offline.requests, offline.requests  # the page only links to it
    assert all(u.startswith("file://") for u in offline.requests), offline.requests
    page.screenshot(path=str(artifact_path("export-markdown-images.png")), full_page=True)


# ------------------------------------------------------------------------------------ static SVG
@pytest.mark.parametrize("case", WIDGETS, ids=IDS)
def test_static_svg_renders(case: WidgetCase, model: Any, offline: OfflineContext, tmp_path: Path) -> None:
    w = case.build(model, PROMPT)
    svg = w._static_svg()
    assert svg is not None
    path = tmp_path / f"{case.name}.svg"
    path.write_text(svg, encoding="utf-8")
    page = offline.open(path)
    root = page.locator("svg").first
    box = root.bounding_box()
    assert box is not None and box["width"] >= 100 and box["height"] >= 80
    # every label and the title lie inside the picture (none cut off at the right edge)
    overflow = page.evaluate(
        """() => { const svg = document.querySelector('svg'); const w = svg.viewBox.baseVal.width || svg.width.baseVal.value;
                   return [...svg.querySelectorAll('text')].map(t => { const b = t.getBBox(); return [t.textContent, b.x + b.width - w]; })
                          .filter(([, over]) => over > 1); }"""
    )
    assert overflow == [], f"text cut off at the right edge of the static picture: {overflow[:3]}"
    # the title names what is drawn, and every token labels a row
    texts = page.locator("text").all_text_contents()
    if case.name == "attention":
        sel = w.selected
        assert any(f"layer {sel['layer']} head {sel['head']}" in t for t in texts), texts[:3]
    page.screenshot(path=str(artifact_path(f"export-{case.name}-static.png")))
    assert offline.requests == [] and offline.errors == []


# ------------------------------------------------------------------------------------ marimo
MARIMO_NOTEBOOK = '''\
import marimo

app = marimo.App(width="full")


@app.cell
def _():
    import sys, tempfile
    from pathlib import Path
    sys.path.insert(0, {tests!r})
    import marimo as mo
    import test_export
    from support import build_tokenizer, tiny_config
    from transformer_lens import HookedTransformer, HookedTransformerConfig
    tok = build_tokenizer(Path(tempfile.mkdtemp()))
    cfg = tiny_config(); cfg["d_vocab"] = max(cfg["d_vocab"], len(tok))
    model = HookedTransformer(HookedTransformerConfig(**cfg), tokenizer=tok)
    _ = model.eval()
    return mo, model, test_export


@app.cell
def _(mo, model, test_export):
    views = [mo.ui.anywidget(case.build(model, {prompt!r})) for case in test_export.WIDGETS]
    mo.vstack(views)
    return (views,)


if __name__ == "__main__":
    app.run()
'''


def test_marimo_anywidget_live(chromium: Any, tmp_path: Path, model: Any) -> None:
    """``mo.ui.anywidget(widget)`` under ``marimo run``: drawn, and a click reaches the kernel."""
    pytest.importorskip("marimo")
    from harness import new_guarded_context

    nb = tmp_path / "marimo_widgets.py"
    nb.write_text(MARIMO_NOTEBOOK.format(tests=str(Path(__file__).resolve().parent.parent), prompt=PROMPT))
    port = free_port()
    log = (tmp_path / "marimo.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "marimo", "run", str(nb), "--headless", "--host", "127.0.0.1",
         "--port", str(port), "--no-token", "--no-sandbox", "--no-check"],
        stdout=log, stderr=subprocess.STDOUT,
    )
    context, guard = new_guarded_context(chromium)
    context.set_default_timeout(120_000)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2)
                break
            except Exception:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise AssertionError("marimo did not start: " + (tmp_path / "marimo.log").read_text()[-2000:]) from None
                time.sleep(0.3)
        page = context.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(f"http://127.0.0.1:{port}/")
        roots = page.locator(".mw-root")
        expect(roots).to_have_count(len(WIDGETS), timeout=180_000)  # the kernel imports torch first
        att = page.locator(".mw-attention").first
        expect(att.locator("[data-testid=token-strip] .mw-token").first).to_be_visible()
        w = WIDGETS[IDS.index("attention")].build(model, PROMPT)
        expect(att.locator("[data-testid=token-strip] .mw-token")).to_have_count(len(w.tokens))
        expect(att.locator("[data-testid=detail-title]")).to_contain_text(f"L{w.selected['layer']}H{w.selected['head']} pattern")
        # a click is a request to the kernel; the full-precision pattern comes back as a buffer
        att.locator("[data-testid=thumb-0-2]").click()
        expect(att.locator("[data-testid=detail-title]")).to_contain_text("L0H2 pattern", timeout=60_000)
        expect(att.locator("[data-testid=thumb-0-2]")).to_have_class(SELECTED)
        time.sleep(0.5)
        page.screenshot(path=str(artifact_path("export-marimo-live.png")), full_page=True)
        assert [e for e in errors if "service worker" not in e.lower()] == []
        assert guard.blocked == [], f"marimo page requests left the machine: {guard.blocked}"
    finally:
        context.close()
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()

