"""The colour maps are defined once (mechwidgets/widgets/colormaps.json): the static pictures
(``_svg.py``) draw the same colours as the widgets (``js/lib/colormap.ts``, checked against the
same cases by ``js/lib/colormap.test.ts``)."""

from __future__ import annotations

import json
import math
from pathlib import Path

from mechwidgets.widgets._svg import colormaps, colour, diverging_rgb, sequential_rgb

ROOT = Path(__file__).resolve().parent.parent
CASES = json.loads((Path(__file__).parent / "colormap_cases.json").read_text(encoding="utf-8"))["cases"]


def test_python_draws_the_shared_cases() -> None:
    assert len(CASES) > 10
    for case in CASES:
        got = list(colour(case["map"], case["t"]))
        assert got == case["rgb"], case
        draw = sequential_rgb if case["map"] == "sequential" else diverging_rgb
        assert draw(case["t"]) == "rgb({},{},{})".format(*case["rgb"])


def test_one_file_for_both_sides() -> None:
    on_disk = json.loads((ROOT / "mechwidgets" / "widgets" / "colormaps.json").read_text(encoding="utf-8"))
    assert colormaps() == on_disk
    ts = (ROOT / "js" / "lib" / "colormap.ts").read_text(encoding="utf-8")
    assert 'from "../../mechwidgets/widgets/colormaps.json"' in ts
    assert colour("diverging", math.nan) == (255, 255, 255) == colour("sequential", -math.inf)
    assert list(colour("sequential", 1.0)) == on_disk["sequential"]["stops"][-1]
