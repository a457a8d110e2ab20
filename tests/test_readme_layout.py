"""The README's layout section matches the tree: every file and folder it names exists, and every
module of the package's top level and of ``analysis/`` is named there."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _layout() -> str:
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Layout"):]
    return section[section.index("```") + 3:section.index("```", section.index("```") + 3)]


def test_every_name_in_the_layout_exists():
    block = _layout()
    names = set(re.findall(r"(?<![\w*.])[A-Za-z_][\w-]*(?:/[\w.-]+)*\.(?:py|ts|json)\b|(?<![\w.])[A-Za-z_][\w-]+/", block))
    tracked = [p.relative_to(ROOT) for p in ROOT.rglob("*") if ".venv" not in p.parts
               and "node_modules" not in p.parts and ".git" not in p.parts]
    known = {p.name for p in tracked} | {p.name + "/" for p in tracked if (ROOT / p).is_dir()}
    known |= {str(p) for p in tracked} | {str(p) + "/" for p in tracked if (ROOT / p).is_dir()}
    missing = sorted(n for n in names if n not in known)
    assert not missing, missing


def test_every_module_is_in_the_layout():
    block = _layout()
    pkg = ROOT / "mechwidgets"
    modules = [p.name for p in pkg.glob("*.py") if p.name != "__init__.py" and p.name != "__main__.py"]
    modules += [p.name + "/" for p in (pkg / "analysis").iterdir() if p.is_dir() and p.name != "__pycache__"]
    modules += [p.name for p in (pkg / "analysis").glob("*.py") if p.name not in ("__init__.py", "attribution.py")]
    missing = [m for m in modules if m not in block]
    assert not missing, missing
