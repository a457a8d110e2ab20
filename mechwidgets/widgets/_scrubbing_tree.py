"""What the scrubbing widget draws, computed once in Python: the hypothesis as rows, which of
them are folded, the tree's layout in pixels, and the static SVG picture.

The layout is a view concern (box sizes in pixels), so it lives beside the widget, not in
:mod:`mechwidgets.analysis.scrubbing`. The widget sends :func:`tree_layout` in its ``layout``
trait and ``js/scrubbing.ts`` draws the boxes where it says; :func:`scrubbing_svg` draws the
same layout for places without a widget manager.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from html import escape
from typing import Any

from ..analysis.scrubbing import HypothesisNode
from ._svg import _label

#: Tree layout (pixels): box size, gap between leaves, distance between levels, margin.
NODE_W, NODE_H, GAP_X, LEVEL_H, MARGIN = 96, 36, 8, 58, 10
#: Trees with more leaves than this open with the head inputs' subtrees folded.
COLLAPSE_LEAVES = 12


def tree_rows(hypothesis: HypothesisNode, feature_name: Callable[[Any], str]) -> list[dict[str, Any]]:
    """The ``tree`` trait: the hypothesis depth first, one ``{path, component, feature, kept,
    active, depth, parent}`` per node (``active``: kept, and every ancestor kept; ``parent``:
    the parent's row, -1 for the root)."""
    rows: list[dict[str, Any]] = []
    index: dict[str, int] = {}
    for path, node in hypothesis.walk():
        parent = index.get(path.rpartition("/")[0], -1)
        index[path] = len(rows)
        active = bool(node.kept) and (parent < 0 or rows[parent]["active"])
        rows.append(dict(path=path, component=node.component, feature=feature_name(node.feature),
                         kept=bool(node.kept), active=active, depth=path.count("/"), parent=parent))
    return rows


def _children(parents: Sequence[int]) -> list[list[int]]:
    children: list[list[int]] = [[] for _ in parents]
    for i, p in enumerate(parents):
        if p >= 0:
            children[p].append(i)
    return children


def initial_collapsed(tree: Sequence[Mapping[str, Any]]) -> list[str]:
    """The nodes folded when a tree first shows: the head inputs (``q``, ``k``, ``v``) that have
    children, in a tree with more than :data:`COLLAPSE_LEAVES` leaves (too wide to read at once)."""
    children = _children([int(r["parent"]) for r in tree])
    if sum(not c for c in children) <= COLLAPSE_LEAVES:
        return []
    return [r["path"] for r, c in zip(tree, children, strict=True) if r["component"] in ("q", "k", "v") and c]


def tree_layout(tree: Sequence[Mapping[str, Any]], collapsed: Sequence[str] = ()) -> dict[str, Any]:
    """The ``layout`` trait: where each node of ``tree`` (the ``tree`` trait) not hidden under a
    folded node (``collapsed``: paths) is drawn.

    Leaves side by side in depth-first order, each parent centred over its children, one level
    per depth. Returns ``{"nodes": [{row, parent, hidden, x, y}], "width", "height", "node_w",
    "node_h"}``: ``row`` is the node's index in ``tree``, ``parent`` its parent's index in
    ``nodes`` (-1 for the root), ``hidden`` how many nodes are folded away under it, ``x``/``y``
    its box centre in pixels.
    """
    folded = set(collapsed)
    shown: dict[int, int] = {}  # tree row -> index in nodes
    hider = [-1] * len(tree)  # the shown, folded ancestor hiding a row
    nodes: list[dict[str, Any]] = []
    for i, row in enumerate(tree):
        p = int(row["parent"])
        if p >= 0 and (hider[p] >= 0 or tree[p]["path"] in folded):
            hider[i] = hider[p] if hider[p] >= 0 else p
            nodes[shown[hider[i]]]["hidden"] += 1
            continue
        shown[i] = len(nodes)
        nodes.append({"row": i, "parent": shown[p] if p >= 0 else -1, "hidden": 0})
    children = _children([n["parent"] for n in nodes])
    leaves = 0

    def place(k: int) -> float:
        nonlocal leaves
        if children[k]:
            xs = [place(c) for c in children[k]]
            x = (xs[0] + xs[-1]) / 2
        else:
            x = MARGIN + NODE_W / 2 + leaves * (NODE_W + GAP_X)
            leaves += 1
        nodes[k]["x"] = x
        return x

    if nodes:
        place(0)
    depth = 0
    for n in nodes:
        d = int(tree[n["row"]]["depth"])
        n["y"] = MARGIN + NODE_H / 2 + d * LEVEL_H
        depth = max(depth, d)
    return {
        "nodes": nodes,
        "width": float(2 * MARGIN + max(1, leaves) * (NODE_W + GAP_X) - GAP_X),
        "height": float(2 * MARGIN + depth * LEVEL_H + NODE_H),
        "node_w": NODE_W,
        "node_h": NODE_H,
    }


def _pct(x: Any) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def scrubbing_svg(tree: Sequence[Mapping[str, Any]], layout: Mapping[str, Any], result: Mapping[str, Any],
                  history: Sequence[Mapping[str, Any]]) -> str:
    """The hypothesis tree (as ``layout`` places it), the recovered-loss bar and the history
    chart as one SVG document."""
    nodes = layout.get("nodes", [])
    bar_w = 320
    width = int(max(layout.get("width", 0), bar_w + 200, 60 + 34 * len(history)) + 2 * MARGIN)
    top = 30
    bar_y = top + layout.get("height", 0) + 20
    hist_y = bar_y + 70
    hist_h = 110 if history else 0
    height = int(hist_y + hist_h + 30)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="11">',
        f'<rect width="{width}" height="{height}" fill="white"/>',
        '<text x="8" y="18" font-size="13" font-weight="bold">Causal scrubbing: hypothesis</text>',
    ]
    for n in nodes:
        if n["parent"] >= 0:
            a = nodes[n["parent"]]
            parts.append(
                f'<line x1="{a["x"]:.1f}" y1="{top + a["y"] + NODE_H / 2:.1f}" x2="{n["x"]:.1f}" '
                f'y2="{top + n["y"] - NODE_H / 2:.1f}" stroke="#8c959f"/>'
            )
    for n in nodes:
        row = tree[n["row"]]
        x, y = n["x"] - NODE_W / 2, top + n["y"] - NODE_H / 2
        kept, active = row["kept"], row["active"]
        fill = "#dafbe1" if active else "#f6f8fa"
        stroke = "#1a7f37" if active else "#8c959f"
        dash = "" if kept else ' stroke-dasharray="4 3"'
        opacity = "1" if active or not kept else "0.5"
        state = "kept" if kept else "resampled"
        folded = (f'<text x="{x + NODE_W - 4:.1f}" y="{y + NODE_H - 4:.1f}" text-anchor="end" font-size="9">'
                  f'+{n["hidden"]}</text>') if n["hidden"] else ""
        parts.append(
            f'<g opacity="{opacity}"><rect x="{x:.1f}" y="{y:.1f}" width="{NODE_W}" height="{NODE_H}" '
            f'rx="5" fill="{fill}" stroke="{stroke}"{dash}/>'
            f'<text x="{x + NODE_W / 2:.1f}" y="{y + 14:.1f}" text-anchor="middle" font-weight="bold">'
            f'{_label(str(row["component"]), 14)}</text>'
            f'<text x="{x + NODE_W / 2:.1f}" y="{y + 28:.1f}" text-anchor="middle" font-size="9" '
            f'fill="#57606a">{_label(str(row["feature"]) + " · " + state, 22)}</text>{folded}</g>'
        )
    # the recovered-loss bar, with its spread over seeds
    frac, std = result.get("fraction"), result.get("fraction_std") or 0.0
    bx = MARGIN + 8
    parts.append(f'<text x="{bx}" y="{bar_y - 4}" font-weight="bold">Loss recovered: {_pct(frac)}'
                 f' ± {_pct(std)} (scrubbed {result.get("scrubbed", 0):.3f}, clean '
                 f'{result.get("clean", 0):.3f}, random {result.get("random", 0):.3f})</text>')
    parts.append(f'<rect x="{bx}" y="{bar_y + 4}" width="{bar_w}" height="16" fill="#eaeef2"/>')
    if frac is not None:
        f = max(0.0, min(1.0, frac))
        parts.append(f'<rect x="{bx}" y="{bar_y + 4}" width="{bar_w * f:.1f}" height="16" fill="#0969da"/>')
        lo, hi = max(0.0, min(1.0, frac - std)), max(0.0, min(1.0, frac + std))
        parts.append(f'<line x1="{bx + bar_w * lo:.1f}" y1="{bar_y + 12}" x2="{bx + bar_w * hi:.1f}" '
                     f'y2="{bar_y + 12}" stroke="#1f2328" stroke-width="2"/>')
    for t in (0.0, 0.5, 1.0):
        parts.append(f'<text x="{bx + bar_w * t:.1f}" y="{bar_y + 34}" text-anchor="middle" '
                     f'font-size="9" fill="#57606a">{int(t * 100)}%</text>')
    # the history as bars
    if history:
        parts.append(f'<text x="{bx}" y="{hist_y}" font-weight="bold">History of refinements</text>')
        base = hist_y + hist_h
        scale = hist_h - 30
        for k, entry in enumerate(history):
            fr = entry.get("fraction")
            x = bx + 10 + 34 * k
            hgt = scale * max(0.0, min(1.0, fr if fr is not None else 0.0))
            parts.append(f'<rect x="{x}" y="{base - hgt:.1f}" width="24" height="{hgt:.1f}" fill="#0969da">'
                         f'<title>{escape(str(entry.get("label", "")))}</title></rect>')
            parts.append(f'<text x="{x + 12}" y="{base + 12}" text-anchor="middle" font-size="9">'
                         f'{int(entry.get("step", k + 1))}</text>')
            parts.append(f'<text x="{x + 12}" y="{base - hgt - 3:.1f}" text-anchor="middle" '
                         f'font-size="9">{_pct(fr)}</text>')
        parts.append(f'<line x1="{bx}" y1="{base}" x2="{bx + 20 + 34 * len(history)}" y2="{base}" stroke="#8c959f"/>')
    parts.append("</svg>")
    return "".join(parts)


__all__ = ["initial_collapsed", "scrubbing_svg", "tree_layout", "tree_rows"]
