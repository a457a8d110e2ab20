"""Regenerate the committed, executed demo notebooks (``demo_notebooks/*.ipynb``).

GitHub and nbviewer run no kernel: they show what a notebook file holds. So the demo notebooks
are committed executed: every code cell's outputs, each widget's saved state (nbclient's
``store_widget_state``, in the notebook's ``metadata.widgets``) and, in every widget output's
mimebundle, the widget's static ``image/svg+xml`` picture, which is what a page without a widget
manager draws.

Usage (from the repository root, offline; the JS must be built: ``npm run build``)::

    python scripts/execute_demos.py                         # every demo notebook
    python scripts/execute_demos.py demo_notebooks/02_patching.ipynb

Each notebook is cleared, executed top to bottom in a fresh ``python3`` kernel that imports
mechwidgets from this checkout, and written back in place. The SHA-256 of every code cell's
source is recorded in ``metadata.mechwidgets.code_cell_sha256``: ``tests/test_notebooks.py``
checks that the committed sources are the ones that were executed (no cell edited afterwards).
Timing metadata is not recorded, so a re-run changes the file only where an output changed.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import time
import uuid
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
DEMOS = REPO / "demo_notebooks"
GENERATOR = "scripts/execute_demos.py"


def source_sha256(source: str) -> str:
    return hashlib.sha256(source.encode("utf-8")).hexdigest()


def code_cell_hashes(nb: Any) -> list[str]:
    """The SHA-256 of each code cell's source, in order."""
    return [source_sha256(c.source) for c in nb.cells if c.cell_type == "code"]


def clear(nb: Any) -> None:
    """Outputs, execution counts, saved widget state and our own record removed."""
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs = []
            cell.execution_count = None
            cell.metadata.pop("execution", None)
    nb.metadata.pop("widgets", None)
    nb.metadata.pop("mechwidgets", None)


def execute(path: Path, timeout: int = 900) -> Any:
    """Execute one notebook in place (cleared first); returns the executed notebook."""
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    clear(nb)
    # nbformat 4.5: every cell has an id (given once; a re-run keeps it)
    nb.nbformat_minor = max(int(nb.nbformat_minor), 5)
    for cell in nb.cells:
        if "id" not in cell:
            cell.id = uuid.uuid4().hex[:8]
    client = NotebookClient(
        nb,
        timeout=timeout,
        kernel_name="python3",
        store_widget_state=True,
        record_timing=False,
        resources={"metadata": {"path": str(path.parent)}},
    )
    client.execute()
    nb.metadata["mechwidgets"] = {"generator": GENERATOR, "code_cell_sha256": code_cell_hashes(nb)}
    nbformat.validate(nb)
    nbformat.write(nb, str(path))
    return nb


def kernel_environment() -> None:
    """The kernel inherits this environment: offline, this checkout first on the path, one thread
    (the same numbers on any machine with the same torch)."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("MKL_NUM_THREADS", "1")
    path = os.environ.get("PYTHONPATH", "")
    os.environ["PYTHONPATH"] = os.pathsep.join([str(REPO), *([path] if path else [])])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("notebooks", nargs="*", type=Path, help="default: demo_notebooks/*.ipynb")
    parser.add_argument("--timeout", type=int, default=900, help="seconds per cell")
    args = parser.parse_args(argv)
    if not (REPO / "mechwidgets" / "static" / "style.css").exists():
        print("mechwidgets/static/ is missing: run `npm run build` first", file=sys.stderr)
        return 2
    kernel_environment()
    paths = args.notebooks or sorted(DEMOS.glob("*.ipynb"))
    for path in paths:
        start = time.monotonic()
        execute(path.resolve(), args.timeout)
        size = path.stat().st_size
        print(f"{path}: executed in {time.monotonic() - start:.0f} s, {size / 1024:.0f} KiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
