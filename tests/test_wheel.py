"""The wheel holds the built JavaScript (and the zoo), and the installed wheel finds it."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(out), str(ROOT)],
        check=True, capture_output=True, text=True,
    )
    (path,) = out.glob("mechwidgets-*.whl")
    return path


def test_wheel_contains_frontend(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    for built in ("attention.js", "standalone.js", "style.css"):
        assert f"mechwidgets/static/{built}" in names, f"{built} missing from the wheel"
    js = zipfile.ZipFile(wheel).read("mechwidgets/static/attention.js").decode()
    assert "render" in js and len(js) > 1000
    assert not any(n.startswith(("js/", "tests/", "node_modules/")) for n in names)
    # the colour maps, read by the static pictures (the bundles hold their own copy)
    assert "mechwidgets/widgets/colormaps.json" in names


def test_installed_wheel_imports_its_js(wheel: Path, tmp_path: Path) -> None:
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), str(wheel)],
        check=True, capture_output=True, text=True,
    )
    code = (
        "import mechwidgets, pathlib;"
        "from mechwidgets.widgets._base import static_file;"
        "p = static_file('attention.js');"
        f"assert str(p).startswith({str(target)!r}), p;"
        "from mechwidgets.widgets._svg import diverging_rgb;"
        "assert diverging_rgb(1.0) == 'rgb(255,40,40)';"
        "print(len(p.read_text()))"
    )
    env = {**os.environ, "PYTHONPATH": str(target)}
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True, env=env, cwd=tmp_path)
    assert int(out.stdout.strip()) > 1000
