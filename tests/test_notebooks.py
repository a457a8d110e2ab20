"""Every demo notebook runs end to end, offline, and its widgets carry a static picture."""

from __future__ import annotations

import os
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = sorted((Path(__file__).resolve().parent.parent / "demo_notebooks").glob("*.ipynb"))

pytestmark = pytest.mark.notebooks


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_demo_notebook_runs(path: Path) -> None:
    nb = nbformat.read(path, as_version=4)
    os.environ["HF_HUB_OFFLINE"] = "1"
    client = NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}})
    client.execute()
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.output_type == "error"]
    assert not errors, errors
    widgets = [
        o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
        if o.output_type in ("display_data", "execute_result") and "application/vnd.jupyter.widget-view+json" in o.get("data", {})
    ]
    assert widgets, "the notebook should display at least one widget"
    for out in widgets:
        svg = out["data"].get("image/svg+xml", "")
        assert svg.lstrip().startswith("<svg"), "every widget output carries a static SVG picture"
