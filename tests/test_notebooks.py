"""The demo notebooks: committed executed (so GitHub and nbviewer show them), and they still run.

- Fast, no kernel: each committed notebook is the output of ``scripts/execute_demos.py``: the
  SHA-256 of every code cell's source equals the one recorded when it was executed (no cell edited
  since), the cells ran in order in one kernel, no error, and every widget output carries its
  static ``image/svg+xml`` picture and its saved widget state (with the widget's JS).
- Slow (executes each notebook offline): no error, every widget output carries a picture, and the
  outputs have the committed ones' shape (the same output types, MIME types and printed text up to
  its digits): a change to the widgets that changes what the demos show needs
  ``python scripts/execute_demos.py`` (see its docstring) run and committed.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = sorted((Path(__file__).resolve().parent.parent / "demo_notebooks").glob("*.ipynb"))
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
WIDGET_STATE = "application/vnd.jupyter.widget-state+json"
MAX_BYTES = 2 * 1024 * 1024
REGENERATE = "regenerate it: python scripts/execute_demos.py {}"

pytestmark = pytest.mark.notebooks


def code_cells(nb: Any) -> list[Any]:
    return [c for c in nb.cells if c.cell_type == "code"]


def widget_outputs(nb: Any) -> list[Any]:
    return [
        o for c in code_cells(nb) for o in c.get("outputs", [])
        if o.output_type in ("display_data", "execute_result") and WIDGET_VIEW in o.get("data", {})
    ]


def shape(nb: Any) -> list[list[tuple[str, ...]]]:
    """Per code cell, its outputs as (type, stream name or MIME types, text with numbers masked).
    Consecutive pieces of one stream are joined (how a kernel splits its output into messages
    depends on timing)."""
    out = []
    for cell in code_cells(nb):
        rows: list[tuple[str, ...]] = []
        for o in cell.get("outputs", []):
            if o.output_type == "stream":
                text = re.sub(r"-?\d+", "#", o.text)
                if rows and rows[-1][:2] == ("stream", o.name):
                    rows[-1] = ("stream", o.name, rows[-1][2] + text)
                else:
                    rows.append(("stream", o.name, text))
            elif o.output_type in ("display_data", "execute_result"):
                rows.append((o.output_type, *sorted(o.data)))
            else:
                rows.append((o.output_type,))
        out.append(rows)
    return out


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_committed_notebook_is_executed(path: Path) -> None:
    nb = nbformat.read(path, as_version=4)
    hint = REGENERATE.format(path.relative_to(path.parent.parent))
    record = nb.metadata.get("mechwidgets", {})
    assert record.get("generator") == "scripts/execute_demos.py", f"not committed executed: {hint}"
    cells = code_cells(nb)
    executed = record["code_cell_sha256"]
    assert len(executed) == len(cells), f"code cells added or removed since it was executed: {hint}"
    for i, (cell, sha) in enumerate(zip(cells, executed, strict=True)):
        assert hashlib.sha256(cell.source.encode("utf-8")).hexdigest() == sha, \
            f"code cell {i} was edited after it was executed: {hint}"
    # one kernel, top to bottom, every cell ran; no error
    assert [c.execution_count for c in cells] == list(range(1, len(cells) + 1)), hint
    errors = [o for c in cells for o in c.outputs if o.output_type == "error"]
    assert not errors, errors
    # every widget output: a static picture and its saved state (the model and its JS)
    widgets = widget_outputs(nb)
    assert widgets, "the notebook should display at least one widget"
    state = nb.metadata["widgets"][WIDGET_STATE]["state"]
    for out in widgets:
        assert out.data.get("image/svg+xml", "").lstrip().startswith("<svg"), "a widget output without its picture"
        model = state[out.data[WIDGET_VIEW]["model_id"]]
        assert model["model_name"] == "AnyModel", model["model_name"]
        assert re.search(r"\bexport\s*(\{|default\b|function\b)", model["state"].get("_esm", "")), \
            "a widget's saved state without its JS module"
        assert ".mw-root" in model["state"].get("_css", ""), "a widget's saved state without its style sheet"
    size = path.stat().st_size
    assert size <= MAX_BYTES, f"{path.name} is {size / 1e6:.1f} MB"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_demo_notebook_runs(path: Path) -> None:
    committed = nbformat.read(path, as_version=4)
    nb = copy.deepcopy(committed)
    os.environ["HF_HUB_OFFLINE"] = "1"
    client = NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}})
    client.execute()
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.output_type == "error"]
    assert not errors, errors
    widgets = widget_outputs(nb)
    assert widgets, "the notebook should display at least one widget"
    for out in widgets:
        svg = out["data"].get("image/svg+xml", "")
        assert svg.lstrip().startswith("<svg"), "every widget output carries a static SVG picture"
    # what it shows now is what is committed (up to the digits of printed numbers)
    now, then = shape(nb), shape(committed)
    assert len(now) == len(then)
    for i, (a, b) in enumerate(zip(now, then, strict=True)):
        assert a == b, (f"code cell {i} shows something else than the committed notebook: "
                        + REGENERATE.format(path.name) + "\n" + json.dumps([a, b], indent=1)[:3000])
