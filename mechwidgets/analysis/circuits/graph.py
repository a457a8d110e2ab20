"""The edges of a transformer's computational graph (see :mod:`mechwidgets.analysis.circuits`)."""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import torch
from jaxtyping import Bool, Int

from ...errors import ComponentError

#: Input ports of a destination: a head's query, key and value inputs, or the single input of an
#: MLP or of the logits.
PORTS: tuple[str, ...] = ("q", "k", "v", "in")


@dataclass(frozen=True)
class Node:
    """A component of the graph.

    Attributes:
        name: ``"embed"``, ``"a{layer}.h{head}"``, ``"m{layer}"`` or ``"logits"``.
        kind: ``"embed"``, ``"head"``, ``"mlp"`` or ``"logits"``.
        layer: the block it belongs to (-1 for ``embed``, ``n_layers`` for ``logits``).
        head: the head index for heads, else None.
    """

    name: str
    kind: str
    layer: int
    head: int | None = None


@dataclass
class CircuitGraph:
    """The edges of a model's computational graph (see the module docstring).

    Attributes:
        nodes: every node, in topological order (``embed``, then per layer its heads and MLP,
            then ``logits``).
        sources: node index of each source, in topological order.
        dests: ``(node index, port)`` of each destination, ports from :data:`PORTS`.
        dest_reads: ``[n_dest]``: destination ``d`` reads sources ``0 .. dest_reads[d] - 1``.
        dest_layer: ``[n_dest]``: the block whose forward computes destination ``d``'s input
            (``n_layers`` for ``logits``).
        edge_src, edge_dst: ``[edge]`` source and destination index of every edge.
    """

    n_layers: int
    n_heads: int
    has_mlp: bool
    nodes: list[Node]
    sources: list[int]
    dests: list[tuple[int, str]]
    dest_reads: list[int]
    dest_layer: list[int]
    edge_src: Int[torch.Tensor, " edge"]
    edge_dst: Int[torch.Tensor, " edge"]
    _edge_index: dict[str, int] = field(default_factory=dict, repr=False)

    @property
    def n_edges(self) -> int:
        return int(self.edge_src.shape[0])

    @property
    def n_sources(self) -> int:
        return len(self.sources)

    @property
    def n_dests(self) -> int:
        return len(self.dests)

    def source_name(self, s: int) -> str:
        return self.nodes[self.sources[s]].name

    def dest_name(self, d: int) -> str:
        node, port = self.dests[d]
        name = self.nodes[node].name
        return f"{name}.{port}" if port != "in" else name

    def edge_name(self, e: int) -> str:
        """``"a0.h1->a1.h3.k"``: source, then destination (with the port for head inputs)."""
        return f"{self.source_name(int(self.edge_src[e]))}->{self.dest_name(int(self.edge_dst[e]))}"

    def edge_names(self) -> list[str]:
        return [self.edge_name(e) for e in range(self.n_edges)]

    def edge_index(self, name: str) -> int:
        """The index of an edge named like ``"a0.h1->a1.h3.k"`` (spaces are ignored).

        Raises:
            ComponentError: no such edge (the message shows the naming scheme).
        """
        if not self._edge_index:
            self._edge_index = {n: e for e, n in enumerate(self.edge_names())}
        key = name.replace(" ", "") if isinstance(name, str) else name
        if key not in self._edge_index:
            example = self.edge_name(self.n_edges - 1)
            raise ComponentError(
                f"no edge {name!r} in this graph. Edges are named 'source->destination', e.g. "
                f"{example!r}; sources are 'embed', 'a<layer>.h<head>', 'm<layer>', destinations "
                f"'a<layer>.h<head>.q|k|v', 'm<layer>' and 'logits' (an edge goes forwards only)."
            )
        return self._edge_index[key]

    def node_index(self, name: str) -> int:
        for i, node in enumerate(self.nodes):
            if node.name == name:
                return i
        raise ComponentError(
            f"no node {name!r} in this graph: nodes are 'embed', 'a<layer>.h<head>' (layers "
            f"0..{self.n_layers - 1}, heads 0..{self.n_heads - 1})"
            + (", 'm<layer>'" if self.has_mlp else "")
            + " and 'logits'."
        )

    def allowed(self) -> Bool[torch.Tensor, "src dst"]:
        """``[n_src, n_dst]``: True where an edge exists."""
        mask = torch.zeros(self.n_sources, self.n_dests, dtype=torch.bool)
        mask[self.edge_src, self.edge_dst] = True
        return mask


def build_graph(n_layers: int, n_heads: int, *, has_mlp: bool, parallel_attn_mlp: bool = False) -> CircuitGraph:
    """The graph of a model with ``n_layers`` blocks of ``n_heads`` heads (and MLPs if any).

    With ``parallel_attn_mlp`` (GPT-J, NeoX) the MLP of a layer reads the residual stream before
    that layer's attention, so the layer's heads do not feed its MLP.
    """
    nodes = [Node("embed", "embed", -1)]
    sources = [0]
    dests: list[tuple[int, str]] = []
    dest_reads: list[int] = []
    dest_layer: list[int] = []
    for layer in range(n_layers):
        before_attn = len(sources)
        head_nodes = []
        for head in range(n_heads):
            nodes.append(Node(f"a{layer}.h{head}", "head", layer, head))
            head_nodes.append(len(nodes) - 1)
        for port in ("q", "k", "v"):
            for node in head_nodes:
                dests.append((node, port))
                dest_reads.append(before_attn)
                dest_layer.append(layer)
        sources.extend(head_nodes)
        if has_mlp:
            nodes.append(Node(f"m{layer}", "mlp", layer))
            dests.append((len(nodes) - 1, "in"))
            dest_reads.append(before_attn if parallel_attn_mlp else len(sources))
            dest_layer.append(layer)
            sources.append(len(nodes) - 1)
    nodes.append(Node("logits", "logits", n_layers))
    dests.append((len(nodes) - 1, "in"))
    dest_reads.append(len(sources))
    dest_layer.append(n_layers)
    src_idx, dst_idx = [], []
    for d, n in enumerate(dest_reads):
        for s in range(n):
            src_idx.append(s)
            dst_idx.append(d)
    return CircuitGraph(
        n_layers=n_layers, n_heads=n_heads, has_mlp=has_mlp,
        nodes=nodes, sources=sources, dests=dests, dest_reads=dest_reads, dest_layer=dest_layer,
        edge_src=torch.tensor(src_idx, dtype=torch.long),
        edge_dst=torch.tensor(dst_idx, dtype=torch.long),
    )


@functools.lru_cache(maxsize=16)
def shared_graph(n_layers: int, n_heads: int, has_mlp: bool,
                  parallel_attn_mlp: bool) -> tuple[CircuitGraph, torch.Tensor, torch.Tensor]:
    """:func:`build_graph`, its :meth:`~CircuitGraph.allowed` mask and its ``dest_layer`` as a
    tensor, built once per model shape: every patcher (and its results' ``graph``) of that shape
    shares them, so nothing here modifies them."""
    graph = build_graph(n_layers, n_heads, has_mlp=has_mlp, parallel_attn_mlp=parallel_attn_mlp)
    return graph, graph.allowed(), torch.tensor(graph.dest_layer)
