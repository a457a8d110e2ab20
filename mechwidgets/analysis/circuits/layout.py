"""Where a circuit is drawn: node positions, edge curves and each edge's stroke (colour tone and
width), computed once here for both pictures: the page (``js/circuit.ts`` draws them as they are
sent) and the static SVG (:func:`mechwidgets.widgets.circuit.circuit_svg`)."""

from __future__ import annotations

from typing import Any

import torch

from .graph import CircuitGraph
from .inputs import CircuitError
from .results import CircuitResult

#: Layout (pixels): column width, row height, node box size, margin.
COL_W, ROW_H, NODE_W, NODE_H, MARGIN = 96, 46, 60, 30, 24
#: Port of a destination as sent to the page: q, k, v of a head, or the single input.
PORT_INDEX = {"q": 0, "k": 1, "v": 2, "in": 3}
#: Tone steps per sign: an edge's colour and width are those of its step (the page strokes all
#: the edges of one step at once, a few dozen canvas calls whatever the number of edges).
LEVELS = 16
#: Stroke width (pixels) of the weakest and of the strongest edge.
MIN_WIDTH, MAX_WIDTH = 0.5, 5.0


def port_y(y: float, port: int) -> float:
    """Where an edge enters a node: q, k, v spread over a head's left side; 'in' at its middle."""
    return y + (port - 1) * 9 if port < 3 else y


def graph_layout(graph: CircuitGraph) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """Node positions (centres), layer by layer from left to right: ``embed``; per layer a
    column of heads, then its MLP; ``logits``. A head also gets ``ports``: the heights of its
    q, k, v inputs. Returns ``(nodes, {width, height, node_w, node_h})``."""
    rows = max(1, graph.n_heads)
    mid = MARGIN + rows * ROW_H / 2
    per_layer = 2 if graph.has_mlp else 1
    nodes = []
    for node in graph.nodes:
        if node.kind == "embed":
            col, y = 0, mid
        elif node.kind == "head":
            col, y = 1 + node.layer * per_layer, MARGIN + (node.head or 0) * ROW_H + ROW_H / 2
        elif node.kind == "mlp":
            col, y = 2 + node.layer * per_layer, mid
        else:
            col, y = 1 + graph.n_layers * per_layer, mid
        info = {"name": node.name, "kind": node.kind, "layer": node.layer, "head": node.head,
                "x": MARGIN + col * COL_W + NODE_W / 2, "y": y}
        if node.kind == "head":
            info["ports"] = [port_y(y, p) for p in range(3)]
        nodes.append(info)
    n_cols = 2 + graph.n_layers * per_layer
    size = {"width": int(2 * MARGIN + (n_cols - 1) * COL_W + NODE_W), "height": int(2 * MARGIN + rows * ROW_H),
            "node_w": NODE_W, "node_h": NODE_H}
    return nodes, size


def edge_path(x1: float, y1: float, x2: float, y2: float) -> str:
    """An SVG path: a cubic curve leaving ``(x1, y1)`` and entering ``(x2, y2)`` horizontally."""
    dx = max(20.0, (x2 - x1) * 0.45)
    return f"M{x1:.1f},{y1:.1f} C{x1 + dx:.1f},{y1:.1f} {x2 - dx:.1f},{y2:.1f} {x2:.1f},{y2:.1f}"


def edge_tones(scores: torch.Tensor, max_abs: float) -> torch.Tensor:
    """``[edge]`` float32 colour tones in -1..1: ``score / max_abs`` rounded to a step of
    ``1 / LEVELS``; a weak nonzero edge keeps its sign (the weakest step), only 0 is 0."""
    scores = scores.float()
    if not max_abs > 0:
        return torch.zeros_like(scores)
    t = (scores / max_abs).clamp(-1, 1)
    level = torch.round(t * LEVELS)
    level = torch.where((level == 0) & (t != 0), torch.sign(t), level)
    return level / LEVELS


def edge_widths(tones: torch.Tensor) -> torch.Tensor:
    """``[edge]`` stroke widths (pixels), linear in ``|tone|``: most edges are weak, so most lines
    are thin."""
    return MIN_WIDTH + (MAX_WIDTH - MIN_WIDTH) * tones.abs()


def edge_drawing(result: CircuitResult, nodes: list[dict[str, Any]], max_edges: int) -> tuple[dict[str, Any], float]:
    """The ``max_edges`` strongest edges as drawn, by decreasing ``|score|``: ``src`` / ``dst``
    (indices into ``nodes``), ``port`` (:data:`PORT_INDEX`), ``score``, ``tone``, ``width`` and
    ``path`` (the SVG curve); and the sum of the scores of the edges left out.

    Raises:
        CircuitError: ``max_edges`` is not a positive integer.
    """
    if not isinstance(max_edges, int) or isinstance(max_edges, bool) or max_edges < 1:
        raise CircuitError(f"max_edges must be a positive integer, got {max_edges!r}.")
    graph, scores = result.graph, result.scores.float()
    order = result.order()
    sent = order[:max_edges]
    src = torch.tensor(graph.sources)[graph.edge_src[sent]]
    dst_port = [graph.dests[int(d)] for d in graph.edge_dst[sent]]
    dst = torch.tensor([d for d, _ in dst_port], dtype=torch.long)
    port = torch.tensor([PORT_INDEX[p] for _, p in dst_port], dtype=torch.uint8)
    tones = edge_tones(scores[sent], float(scores.abs().max()) if scores.numel() else 0.0)
    half = NODE_W / 2
    paths = [edge_path(nodes[a]["x"] + half, nodes[a]["y"], nodes[b]["x"] - half, port_y(nodes[b]["y"], int(p)))
             for a, b, p in zip(src.tolist(), dst.tolist(), port.tolist(), strict=True)]
    drawing = {"src": src.int(), "dst": dst.int(), "port": port, "score": scores[sent], "tone": tones,
               "width": edge_widths(tones), "path": paths}
    return drawing, float(scores[order[max_edges:]].sum())


__all__ = ["LEVELS", "NODE_H", "NODE_W", "PORT_INDEX", "edge_drawing", "edge_path", "edge_tones", "edge_widths",
           "graph_layout", "port_y"]
