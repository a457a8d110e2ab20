"""What a circuit analysis returns: edge scores, a circuit's faithfulness, a node's effects."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Bool, Float, Int

from ..._args import as_int
from .graph import CircuitGraph
from .inputs import CircuitError, check_threshold


@dataclass
class Faithfulness:
    """How much of the clean behaviour a circuit keeps.

    Attributes:
        metric: the metric with every edge outside the circuit patched from the corrupted run.
        normalized: ``(metric - corrupted_metric) / (clean_metric - corrupted_metric)``.
        n_edges: edges in the circuit; ``total_edges``: edges in the graph.
        threshold: the ``|score|`` threshold that chose the circuit, if it was chosen that way.
    """

    metric: float
    normalized: float
    n_edges: int
    total_edges: int
    clean_metric: float
    corrupted_metric: float
    threshold: float | None = None

    @property
    def edge_fraction(self) -> float:
        return self.n_edges / max(1, self.total_edges)


@dataclass
class NodeEffect:
    """Exact patching effect of one node (what the widget shows when a node is clicked).

    Attributes:
        node: the node's name.
        output: metric with every outgoing edge of the node patched (its output replaced by its
            corrupted value everywhere it is read); None for ``logits``.
        inputs: ``{port: metric}`` with every incoming edge of that input patched (``q``, ``k``,
            ``v`` for a head, ``in`` for an MLP or the logits); empty for ``embed``.
        clean_metric, corrupted_metric: the baselines, for normalising.
        kind: ``"embed"``, ``"head"``, ``"mlp"`` or ``"logits"``.
    """

    node: str
    output: float | None
    inputs: dict[str, float]
    clean_metric: float
    corrupted_metric: float
    kind: str = ""

    def normalized(self, value: float) -> float:
        return (value - self.corrupted_metric) / (self.clean_metric - self.corrupted_metric)


@dataclass
class CircuitResult:
    """Scores for every edge of the graph, from EAP or ACDC.

    Attributes:
        method: ``"eap"`` or ``"acdc"``.
        graph: the :class:`CircuitGraph` (edge names: ``graph.edge_name(e)``).
        scores: ``[edge]``. EAP: the linear estimate of the metric's change when the edge alone
            is patched from the corrupted run (negative = the edge supports the clean metric).
            ACDC: the exact change measured when the edge was tried, on top of the edges removed
            before it (signed ACDC: 0 where removing it helped the behaviour).
        metric: the metric's name (``"logit_diff"``, ``"logprob"`` or ``"custom"``).
        clean_metric, corrupted_metric: the metric on the clean and corrupted runs.
        threshold: ACDC's threshold (the circuit it found is ``circuit(threshold)``); None for
            EAP.
        circuit_metric: ACDC only: the metric of the circuit it found.
        signed: ACDC only: whether it pruned by the signed rule (see ``EdgePatcher.acdc_steps``).
        str_tokens: the clean prompts' tokens; ``answers`` / ``wrong_answers``: the answer
            tokens the metric read (one per prompt; ``wrong_answers`` for ``logit_diff``).
    """

    method: str
    graph: CircuitGraph
    scores: Float[torch.Tensor, " edge"]
    metric: str
    clean_metric: float
    corrupted_metric: float
    str_tokens: list[list[str]]
    answers: list[str]
    wrong_answers: list[str] | None = None
    threshold: float | None = None
    circuit_metric: float | None = None
    signed: bool = False

    @property
    def n_edges(self) -> int:
        return self.graph.n_edges

    def circuit(self, threshold: float | None = None) -> Bool[torch.Tensor, " edge"]:
        """Edges with ``|score| >= threshold`` (default: ACDC's own threshold).

        Raises:
            CircuitError: no threshold for EAP scores, or one that is not a finite number >= 0.
        """
        if threshold is None:
            if self.threshold is None:
                raise CircuitError("pass a threshold: EAP scores have no threshold of their own.")
            threshold = self.threshold
        return self.scores.abs() >= check_threshold(threshold)

    def order(self) -> Int[torch.Tensor, " edge"]:
        """Edge indices by decreasing ``|score|`` (ties by edge index)."""
        return torch.argsort(self.scores.abs(), descending=True, stable=True)

    def rank(self, edge: str | int) -> int:
        """0-based rank of an edge by ``|score|`` (0 = the strongest)."""
        e = self.graph.edge_index(edge) if isinstance(edge, str) else int(edge)
        return int((self.order() == e).nonzero()[0, 0])

    def top_edges(self, k: int = 20) -> list[tuple[str, float]]:
        """The ``k`` edges of largest ``|score|``, as ``(name, score)``."""
        return [(self.graph.edge_name(int(e)), float(self.scores[e])) for e in self.order()[:k]]

    def threshold_for(self, n_edges: int) -> float:
        """The threshold that keeps the ``n_edges`` strongest edges (ties may keep more); for 0,
        the next float above the largest ``|score|``."""
        n_edges = as_int(n_edges, "n_edges", lo=0, error=CircuitError)
        if n_edges == 0:
            top = self.scores.abs().max() if self.scores.numel() else torch.tensor(0.0)
            return float(torch.nextafter(top, torch.tensor(math.inf, dtype=top.dtype)))
        n_edges = min(n_edges, self.n_edges)
        return float(self.scores.abs()[self.order()[n_edges - 1]])

    def node_edges(self, node: str, threshold: float, k: int = 8) -> dict[str, Any]:
        """A node's edges at ``threshold``: ``incoming`` / ``outgoing``, its ``k`` strongest
        each way as ``{edge, score, in_circuit}`` by decreasing ``|score|``, and how many there
        are (``n_incoming``, ``n_outgoing``) and how many of them the circuit keeps
        (``n_incoming_kept``, ``n_outgoing_kept``)."""
        graph = self.graph
        idx = graph.node_index(node)
        kept = self.circuit(threshold)
        src_of = torch.tensor(graph.sources)[graph.edge_src]
        dst_of = torch.tensor([graph.dests[int(d)][0] for d in graph.edge_dst])
        out: dict[str, Any] = {}
        for way, mask in (("incoming", dst_of == idx), ("outgoing", src_of == idx)):
            edges = mask.nonzero()[:, 0]
            edges = edges[torch.argsort(self.scores[edges].abs(), descending=True, stable=True)]
            out[way] = [{"edge": graph.edge_name(int(e)), "score": float(self.scores[e]), "in_circuit": bool(kept[e])}
                        for e in edges[:k]]
            out[f"n_{way}"] = int(mask.sum())
            out[f"n_{way}_kept"] = int((mask & kept).sum())
        return out
