"""marimo: ``mo.ui.anywidget(widget)`` works for every widget, and marimo notebooks run headless.

- in process: each widget of tests/test_export.py:WIDGETS wrapped by ``mo.ui.anywidget`` exposes
  its traits as the element's value and renders the ``<marimo-anywidget>`` element;
- the demo ``demo_notebooks/marimo_attention.py`` runs as an app (``app.run()``) with the zoo
  model replaced by a tiny one, so its code is checked even where the zoo is not built;
- ``marimo export html`` (a separate process, as a user runs it) executes a notebook with every
  widget, and the demo on the real ``toy-lm``; the tests read the session stored in the HTML and
  check that no cell failed and that each widget's element is there.

What is NOT checked here: marimo's static HTML export does not embed anywidget models, so its
page cannot draw the widget offline (that is marimo's exporter, not ours). The live page is
checked in tests/browser/test_export_browser.py::test_marimo_anywidget_live (``marimo run`` in
Chromium: the widget draws and a click goes to the kernel and back).
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from test_export import IDS, PROMPT, WIDGETS, WidgetCase

mo = pytest.importorskip("marimo")

REPO = Path(__file__).resolve().parent.parent
DEMO = REPO / "demo_notebooks" / "marimo_attention.py"


@pytest.mark.parametrize("case", WIDGETS, ids=IDS)
def test_mo_ui_anywidget_wraps_each_widget(case: WidgetCase, model: Any) -> None:
    w = case.build(model, PROMPT)
    view = mo.ui.anywidget(w)
    assert view.widget is w
    value = view.value
    synced = {k for k in w.keys if not k.startswith("_") and k not in ("layout", "tabbable", "tooltip")}
    assert synced <= set(value), synced - set(value)
    if case.name == "attention":
        assert value["tokens"] == w.tokens and value["selected"] == w.selected
        assert isinstance(value["thumbnails"]["buffer"], (bytes, memoryview))  # binary, not a list
    assert "<marimo-anywidget" in view.text and w.model_id in view.text


def _load_demo() -> Any:
    spec = importlib.util.spec_from_file_location("marimo_attention_demo", DEMO)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_demo_runs_with_a_stub_model(model: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """The demo's cells, run as marimo runs them, on a tiny model instead of toy-lm."""
    from mechwidgets import zoo

    monkeypatch.setattr(zoo, "load", lambda name, **kw: model)
    _, defs = _load_demo().app.run()
    view, attention = defs["view"], defs["attention"]
    assert view.widget is attention and view.value["tokens"] == attention.tokens
    assert "choice" in defs and len(attention.tokens) > 5


def marimo_session(html: str) -> list[dict[str, Any]]:
    """The cells (with their outputs and console) that ``marimo export html`` stored in the page."""
    key = '"session": '
    start = html.find(key)
    assert start >= 0, "no marimo session in the exported HTML"
    session, _ = json.JSONDecoder().raw_decode(html[start + len(key):])
    return list(session["cells"])


def marimo_export(notebook: Path, out: Path) -> list[dict[str, Any]]:
    proc = subprocess.run(
        [sys.executable, "-m", "marimo", "export", "html", str(notebook), "-o", str(out), "--no-sandbox"],
        capture_output=True, text=True, timeout=600, check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    cells = marimo_session(out.read_text(encoding="utf-8"))
    errors = [o for c in cells for o in c.get("outputs", []) if o.get("type") == "error"]
    errors += [x for c in cells for x in c.get("console", []) if "Traceback" in str(x.get("text", ""))]
    assert not errors, errors
    return cells


def _outputs(cells: list[dict[str, Any]], mime: str) -> list[str]:
    return [str(o["data"][mime]) for c in cells for o in c.get("outputs", []) if mime in (o.get("data") or {})]


EXPORT_NOTEBOOK = '''\
import marimo

app = marimo.App()


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


@app.cell
def _(views):
    [sorted(v.value) for v in views]
    return
'''


def test_marimo_export_html_runs_every_widget(tmp_path: Path) -> None:
    nb = tmp_path / "widgets.py"
    nb.write_text(EXPORT_NOTEBOOK.format(tests=str(Path(__file__).resolve().parent), prompt=PROMPT))
    cells = marimo_export(nb, tmp_path / "widgets.html")
    html = "".join(_outputs(cells, "text/html"))
    assert html.count("<marimo-anywidget") == len(WIDGETS)
    values = json.loads(_outputs(cells, "application/json")[-1])
    for keys in values:
        assert "error" in keys  # every MechWidget's traits reached marimo


def test_demo_marimo_export_html_toy_lm(tmp_path: Path) -> None:

    demo = tmp_path / DEMO.name  # a copy: marimo stores its session in __marimo__/ beside the file
    demo.write_text(DEMO.read_text(encoding="utf-8"), encoding="utf-8")
    cells = marimo_export(demo, tmp_path / "demo.html")
    assert "".join(_outputs(cells, "text/html")).count("<marimo-anywidget") == 1
    assert "Highest induction score" in "".join(_outputs(cells, "text/markdown"))


def test_demo_passes_marimo_check() -> None:
    proc = subprocess.run([sys.executable, "-m", "marimo", "check", str(DEMO)],
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
