"""Static SVG pictures of widget views, for places where no widget manager runs.

GitHub's notebook view, nbviewer and ``nbconvert --to markdown/pdf`` show the ``image/svg+xml``
entry of a widget's MIME bundle. Every text (tokens, titles) is escaped: it is drawn as text,
never interpreted as markup.
"""

from __future__ import annotations

import functools
import json
import math
import re
from collections.abc import Sequence
from html import escape
from importlib import resources
from typing import Any

import torch
import torch.nn.functional as F

#: Larger grids are max-pooled (by magnitude) down to this many rows and columns.
MAX_CELLS = 64
CELL = 10


# Controls, invisible and bidirectional-formatting characters (as js/lib/dom.ts:showToken): a
# right-to-left override in a token must not reorder the picture's labels.
_INVISIBLE = re.compile(
    "[\u0000-\u0008\u000b-\u001f\u007f-\u009f\u00ad\u061c\u180e\u200b-\u200f"
    "\u2028-\u202e\u2060-\u206f\ufeff\ufff9-\ufffb]"
)


def _label(text: str, limit: int = 14) -> str:
    text = text.replace("\n", "\\n").replace("\t", "\\t").replace("\r", "\\r")
    text = _INVISIBLE.sub(lambda m: f"\\u{ord(m.group()):04X}", text)
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    return escape(text, quote=True)


@functools.cache
def colormaps() -> dict[str, Any]:
    """The colour maps (``mechwidgets/widgets/colormaps.json``), the same file the widgets'
    bundle holds (``js/lib/colormap.ts`` imports it)."""
    text = resources.files(__package__).joinpath("colormaps.json").read_text(encoding="utf-8")
    return json.loads(text)  # type: ignore[no-any-return]


def colour(name: str, t: float) -> tuple[int, int, int]:
    """The RGB of map ``name`` at ``t``: its stops spaced evenly over its domain, linearly
    interpolated; ``t`` outside the domain clamped, non-finite taken as 0; rounded half up
    (as JavaScript's ``Math.round``), so the page and the picture agree channel for channel."""
    cmap = colormaps()[name]
    lo, hi = cmap["domain"]
    stops = cmap["stops"]
    t = t if math.isfinite(t) else 0.0
    u = (min(hi, max(lo, t)) - lo) / (hi - lo) * (len(stops) - 1)
    i = min(math.floor(u), len(stops) - 2)
    f = u - i
    a, b = stops[i], stops[i + 1]
    r, g, bl = (math.floor(a[c] + (b[c] - a[c]) * f + 0.5) for c in range(3))
    return r, g, bl


def diverging_rgb(t: float) -> str:
    """Blue (-1) → white (0) → red (+1), as ``rgb(r,g,b)``."""
    return "rgb({},{},{})".format(*colour("diverging", t))


def sequential_rgb(t: float) -> str:
    """White (0) → deep blue (1), as ``rgb(r,g,b)``."""
    return "rgb({},{},{})".format(*colour("sequential", t))


def heatmap_svg(
    values: torch.Tensor,
    *,
    row_labels: Sequence[str],
    col_labels: Sequence[str],
    title: str,
    vmin: float | None = None,
    vmax: float | None = None,
    diverging: bool = False,
) -> str:
    """A labelled heatmap of a 2-d tensor as a standalone SVG document."""
    vals = values.detach().float().cpu()
    rows, cols = vals.shape
    if rows > MAX_CELLS or cols > MAX_CELLS:
        out = (min(rows, MAX_CELLS), min(cols, MAX_CELLS))
        # keep, in each block, the value of largest magnitude (its sign included)
        _, idx = F.adaptive_max_pool2d(vals.abs()[None, None], out, return_indices=True)
        vals = vals.flatten()[idx.flatten()].reshape(out)
        row_labels = [""] * out[0] if rows > MAX_CELLS else list(row_labels)
        col_labels = [""] * out[1] if cols > MAX_CELLS else list(col_labels)
        rows, cols = out
    lo = float(vals.min()) if vmin is None else vmin
    hi = float(vals.max()) if vmax is None else vmax
    scale = max(abs(lo), abs(hi)) if diverging else (hi - lo)
    scale = scale or 1.0
    left, top = 100, 110
    # wide enough for the title (12 px sans-serif: under 7 px a character)
    width, height = max(left + cols * CELL + 20, 8 + 7 * len(title)), top + rows * CELL + 20
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="9">',
        f'<rect width="{width}" height="{height}" fill="white"/>',
        f'<text x="4" y="14" font-size="12">{escape(title)}</text>',
    ]
    for i, text in enumerate(row_labels):
        if text:
            parts.append(f'<text x="{left - 4}" y="{top + i * CELL + 8}" text-anchor="end">{_label(text)}</text>')
    for j, text in enumerate(col_labels):
        if text:
            x, y = left + j * CELL + 7, top - 4
            parts.append(f'<text transform="translate({x},{y}) rotate(-60)">{_label(text)}</text>')
    for i in range(rows):
        for j in range(cols):
            v = float(vals[i, j])
            colour = diverging_rgb(v / scale) if diverging else sequential_rgb((v - lo) / scale)
            parts.append(
                f'<rect x="{left + j * CELL}" y="{top + i * CELL}" width="{CELL}" height="{CELL}" fill="{colour}"/>'
            )
    parts.append("</svg>")
    return "".join(parts)


def tokens_svg(tokens: Sequence[str], *, title: str, note: str = "") -> str:
    """A row of token boxes (wrapped) under a title, e.g. a prompt before anything is computed."""
    width, x, y, line = 640, 4, 40, 18
    boxes = []
    for tok in tokens:
        text = _label(tok.replace(" ", "·"), 16)
        w = 7 * len(tok[:16].replace(" ", "·")) + 10
        if x + w > width - 4:
            x, y = 4, y + line + 4
        boxes.append(f'<rect x="{x}" y="{y - 13}" width="{w}" height="{line}" rx="3" fill="#f6f8fa" '
                     f'stroke="#d0d7de"/><text x="{x + 5}" y="{y}">{text}</text>')
        x += w + 3
    height = y + line + (22 if note else 6)
    note_svg = f'<text x="4" y="{y + line + 10}" fill="#57606a">{_label(note, 200)}</text>' if note else ""
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="monospace" font-size="11">'
        f'<text x="4" y="16" font-weight="bold" font-family="sans-serif" font-size="13">'
        f'{_label(title, 200)}</text>{"".join(boxes)}{note_svg}</svg>'
    )
