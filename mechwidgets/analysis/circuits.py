"""Circuit discovery on the edges of a transformer's computational graph: EAP and ACDC.

**The graph** (as in ACDC, Conmy et al. 2023, "Towards Automated Circuit Discovery for
Mechanistic Interpretability", and EAP, Syed, Rager & Conmy 2023, "Attribution Patching
Outperforms Automated Circuit Discovery"). Every component that writes to the residual stream is
a *source*; every component that reads it is a *destination*:

- sources, in topological order: ``embed`` (the residual stream before layer 0: token plus
  positional embeddings), each attention head ``a{layer}.h{head}`` (its output ``z_h @ W_O[h]``,
  computed from ``hook_z``; the layer's ``b_O`` is a constant, the same in every run), each MLP
  ``m{layer}`` (``hook_mlp_out``);
- destinations: each head's three inputs ``a{layer}.h{head}.q`` / ``.k`` / ``.v`` (separately),
  each MLP's input ``m{layer}``, and ``logits`` (the final residual stream, before ``ln_final``).

An **edge** ``u->v`` is source ``u``'s direct contribution, through the residual stream, to
destination ``v``'s input; there is one between every source and every later destination (the
heads of layer ``l`` feed the MLP of layer ``l`` and everything after it). On ``toy-lm`` (4
layers, 4 heads, MLPs) that is 479 edges.

**Patching an edge** (removing it from the circuit) replaces its contribution by the value it
has on the corrupted run: ``input_v <- input_v - a_u + a_u^corrupted`` where ``a_u`` is ``u``'s
output in the run being computed. A circuit is a set of kept edges; evaluating it is one real
forward pass in which every other edge is patched this way, so effects propagate: a head whose
inputs were patched produces a different output, which is what its kept edges then carry. With
every edge removed each destination reads exactly its corrupted-run input, so the empty circuit
gives the corrupted metric and the full circuit the clean one.

**Edge attribution patching (EAP)** scores every edge from one clean forward with gradients, one
corrupted forward and one backward pass::

    score(u->v) = sum over batch, positions of (a_u^corrupted - a_u^clean) . d metric / d input_v

with the gradient taken on the clean run. *Sign convention*: the score is the first-order
(linear) estimate of ``metric(clean with only u->v patched) - metric(clean)``: the change of the
metric when the edge is corrupted. For a metric the clean run makes large (a logit difference),
edges that carry the behaviour have **negative** scores; an edge with a positive score works
against it. Circuits keep edges by ``|score|``.

**EAP-IG** (Hanna, Pezzelle & Belinkov 2024, "Have Faith in Faithfulness") replaces the clean
run's gradient by its mean over ``steps`` runs whose input embeddings go from the corrupted to
the clean prompts' (``corrupted + k/steps * (clean - corrupted)``, ``k = 1..steps``): the same
linear estimate, integrated along a path, which sees effects that a saturated softmax hides from
the gradient at the clean run. ``steps`` forward and backward passes more than EAP.

**ACDC** prunes with exact patched forwards. It visits destinations in reverse topological order
(``logits`` first, then the last layer's MLP, then its heads' v, k, q inputs, down to layer 0)
and, for each of its incoming edges, latest source first, tries removing it on top of the edges
already removed: if the metric moves by less than ``threshold`` (``|metric(new circuit) -
metric(current circuit)| < threshold``) the edge stays removed. *Signed* ACDC (``signed=True``,
the rule of ACDC's own code, which minimises a loss) removes it when the metric moves *away from
the clean run's value* by less than ``threshold``, so edges that work against the behaviour
(negative heads) always go: smaller circuits, whose faithfulness can exceed 1. The change measured for each
edge is its score. Since every node upstream of the destination being pruned still has all of
its inputs, each step runs the model only from that destination's layer onwards.

**Faithfulness** of a circuit is its metric normalised between the runs:
``(metric_circuit - metric_corrupted) / (metric_clean - metric_corrupted)``: 1 for the full
graph, 0 for the empty one.

Implementation. Head outputs are computed from ``hook_z`` and ``W_O`` (``use_attn_result`` is
never touched), and per-head q/k/v inputs without ``use_split_qkv_input``: a patched head's
``hook_q``/``hook_k``/``hook_v`` is recomputed as ``ln1(input_h) @ W[h] + b[h]``, and EAP maps the
gradients at those hooks back through ``W`` and ``ln1`` (a vector-Jacobian product at
``resid_pre``), which is exactly the gradient a separate per-head input would receive. MLP inputs
use TransformerLens's ``hook_mlp_in``: ``cfg.use_hook_mlp_in`` is switched on for the duration of
one forward pass and the user's value restored in a ``finally``. Hooks never outlive one forward
pass, so a long ACDC run leaves the model usable between its steps. EAP's and EAP-IG's recording
runs skip the hook points where :mod:`mechwidgets._fast` computes a model's forward pass exactly (a plain
pre-norm ``HookedTransformer`` with learned positions and no hooks of its own attached): on a
small model TransformerLens's per-hook bookkeeping is a large share of a forward pass.

On a TransformerLens 4.x ``TransformerBridge`` everything goes through TransformerLens 4's own
hook points, which carry 3.x's names and (after their ``hook_conversion``) shapes; its
``hook_mlp_in`` is switched on the same way. Each patched forward runs from the tokens (a
bridge's ``start_at_layer`` runs the earlier blocks anyway), and the final residual is read at
the last block's ``hook_resid_post``. The scores, ACDC's circuits and faithfulness equal those of
a ``HookedTransformer`` with the same weights (tests/test_circuits_tl4.py).
"""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Generator, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from jaxtyping import Bool, Float, Int

from .. import _fast
from .._fingerprint import JOB_BUDGET, Stamp, check_unchanged
from .._model import ModelHandle
from .._steps import run_to_end
from ..errors import (
    AnswerError,
    ComponentError,
    MechWidgetsError,
    MetricError,
    ModelError,
    PromptError,
)
from .metrics import METRICS, MetricFn, call_metric, kl_div, normalize
from .patching import choose_metric, token_str

MetricName = Literal["logit_diff", "logprob", "prob", "kl"]
METHODS: tuple[str, ...] = ("eap", "eap-ig", "acdc")
#: Interpolation steps of EAP-IG (as in Hanna et al. 2024).
IG_STEPS = 5
#: Input ports of a destination: a head's query, key and value inputs, or the single input of an
#: MLP or of the logits.
PORTS: tuple[str, ...] = ("q", "k", "v", "in")

Prompts = str | Sequence[str] | torch.Tensor
Answers = str | int | Sequence[str | int] | None
MetricArg = str | MetricFn


class CircuitError(MechWidgetsError, ValueError):
    """An unknown method, edge or threshold was given to a circuit analysis."""


# ============================================================================================ graph
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
        n_layers=n_layers,
        n_heads=n_heads,
        has_mlp=has_mlp,
        nodes=nodes,
        sources=sources,
        dests=dests,
        dest_reads=dest_reads,
        dest_layer=dest_layer,
        edge_src=torch.tensor(src_idx, dtype=torch.long),
        edge_dst=torch.tensor(dst_idx, dtype=torch.long),
    )


@functools.lru_cache(maxsize=16)
def _shared_graph(n_layers: int, n_heads: int, has_mlp: bool,
                  parallel_attn_mlp: bool) -> tuple[CircuitGraph, torch.Tensor, torch.Tensor]:
    """:func:`build_graph`, its :meth:`~CircuitGraph.allowed` mask and its ``dest_layer`` as a
    tensor, built once per model shape: every patcher (and its results' ``graph``) of that shape
    shares them, so nothing here modifies them."""
    graph = build_graph(n_layers, n_heads, has_mlp=has_mlp, parallel_attn_mlp=parallel_attn_mlp)
    return graph, graph.allowed(), torch.tensor(graph.dest_layer)


# ============================================================================================ results
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
    """

    node: str
    output: float | None
    inputs: dict[str, float]
    clean_metric: float
    corrupted_metric: float

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
        """Edges with ``|score| >= threshold`` (default: ACDC's own threshold)."""
        if threshold is None:
            if self.threshold is None:
                raise CircuitError("pass a threshold: EAP scores have no threshold of their own.")
            threshold = self.threshold
        return self.scores.abs() >= threshold

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
        """The threshold that keeps the ``n_edges`` strongest edges (ties may keep more)."""
        if n_edges <= 0:
            return math.inf
        n_edges = min(n_edges, self.n_edges)
        return float(self.scores.abs()[self.order()[n_edges - 1]])


# ============================================================================================ inputs
def _prompt_list(prompts: Prompts, what: str) -> list[Any]:
    if isinstance(prompts, str):
        return [prompts]
    if isinstance(prompts, torch.Tensor):
        if prompts.ndim == 1:
            return [prompts]
        if prompts.ndim == 2:
            return list(prompts)
        raise PromptError(f"the {what} tokens must be [pos] or [batch, pos], got shape {tuple(prompts.shape)}.")
    if isinstance(prompts, Sequence) and prompts and all(isinstance(p, str) for p in prompts):
        return list(prompts)
    if isinstance(prompts, Sequence) and prompts and all(isinstance(p, torch.Tensor) for p in prompts):
        return list(prompts)
    raise PromptError(
        f"the {what} prompts must be a string, a list of strings or a token tensor; got "
        f"{type(prompts).__name__}{' (empty)' if isinstance(prompts, Sequence) and not prompts else ''}."
    )


def _answer_list(answers: Answers, n: int, what: str) -> list[str | int | None]:
    if answers is None:
        return [None] * n
    items: list[str | int | None] = [answers] if isinstance(answers, (str, int)) else list(answers)
    if len(items) == 1 and n > 1:
        items = items * n
    if len(items) != n:
        raise AnswerError(
            f"got {len(items)} {what}s for {n} prompts: pass one {what} per prompt, or a single "
            f"one for all of them."
        )
    return items


def _resolve(handle: ModelHandle, answers: list[str | int | None], what: str) -> list[int | None]:
    """Answer strings and ids as checked token ids (``None`` stays: the default answer)."""
    given = [a for a in answers if a is not None]
    ids = iter(handle.single_tokens(given, what=what))
    return [None if a is None else next(ids) for a in answers]


# ============================================================================================ patcher
class EdgePatcher:
    """A model, a batch of clean/corrupted prompt pairs and a metric, ready for edge patching.

    Building it runs the corrupted prompts, then the clean prompts with gradients, and the
    backward pass of EAP (about three forward passes in all); everything later (ACDC, the
    faithfulness of any circuit, node effects) runs exact patched forwards against the cached
    corrupted activations.

    Args:
        model: a TransformerLens 3.x ``HookedTransformer`` or 4.x ``TransformerBridge`` (or a
            handle on one).
        clean: a prompt, a list of prompts, or ``[batch, pos]`` tokens. Prompts of different
            lengths are right-padded (the model is causal, so padding never changes the
            positions the metric reads).
        corrupted: as many prompts, each with exactly as many tokens as its clean twin.
        metric: a metric of :mod:`mechwidgets.analysis.metrics`, at each prompt's last token
            and averaged over the prompts: ``"logit_diff"`` (``logit[answer] -
            logit[wrong_answer]``, the default), ``"logprob"``, ``"prob"``, ``"kl"`` (KL from the
            clean run's distribution; its gradient vanishes at the clean run, so its EAP scores
            are 0: use ACDC with it), or a callable ``[batch, d_vocab] -> [batch]`` (differentiable
            for EAP and EAP-IG; ACDC and faithfulness take any).
        answer: the answer token(s) (strings that are one token, or ids; one per prompt or one
            for all). Default: the clean run's top prediction for each prompt.
        wrong_answer: for ``logit_diff``: default the corrupted run's top prediction (its
            second choice where that is the answer too), as in activation patching.
        max_positions: refuse prompts longer than this (default 512).

    Raises:
        MetricError: unknown metric, a non-finite metric, or equal clean and corrupted metrics
            (and from :meth:`result` / :meth:`eap_ig_scores`: a metric without a gradient).
        PromptError: empty prompts, different numbers of prompts or of tokens in a pair.
        AnswerError: an answer that is not one token, the wrong number of answers, or an answer
            equal to the wrong answer.
        ModelError: a model whose graph this module cannot split into edges.
    """

    def __init__(
        self,
        model: Any,
        clean: Prompts,
        corrupted: Prompts,
        *,
        metric: MetricArg = "logit_diff",
        answer: Answers = None,
        wrong_answer: Answers = None,
        max_positions: int = 512,
    ) -> None:
        handle = ModelHandle.wrap_token_ids(model)  # a model with no tokenizer takes token tensors
        self.handle = handle
        self._check_model()
        if callable(metric) and not isinstance(metric, str):
            self.metric_name = getattr(metric, "__name__", type(metric).__name__)
            self._metric_fn: MetricFn | None = metric
        elif isinstance(metric, str) and metric in METRICS:
            self.metric_name = metric
            self._metric_fn = None
        else:
            raise MetricError(
                f"unknown metric {metric!r}: use one of {list(METRICS)} or a callable mapping "
                f"logits [batch, d_vocab] at the last position to [batch] (one number per prompt)."
            )
        self._metric_arg = metric
        cfg = handle.cfg
        self.graph, self._allowed, self._dest_layer = _shared_graph(
            handle.n_layers, handle.n_heads, not bool(getattr(cfg, "attn_only", False)),
            bool(getattr(cfg, "parallel_attn_mlp", False)),
        )
        self._ig_cache: dict[int, torch.Tensor] = {}
        self._tokenize(clean, corrupted, max_positions)
        answers = _answer_list(answer, self.batch, "answer")
        wrongs = _answer_list(wrong_answer, self.batch, "wrong answer")
        self._setup(answers, wrongs)
        self._given_answers = (answers, wrongs)
        #: the model as the cached runs saw it (see :meth:`refresh`)
        self._stamp = Stamp(handle.model)

    # ------------------------------------------------------------------ the cache's model
    def refresh(self) -> str | None:
        """Recompute the cached runs (the clean and corrupted records, baselines, answers and
        EAP scores) if the model changed since they were taken (its weights, dtype, device or
        hooks: :func:`~mechwidgets._fingerprint.model_fingerprint`). Every public analysis calls
        it first, so no result mixes the old model's runs with the new one's. Returns what
        changed, or ``None`` when nothing did."""
        change = self._stamp.stale()
        if change is not None:
            self._ig_cache.clear()
            for cls in type(self).__mro__:  # every cached property (sources, columns) goes too
                for name, attr in vars(cls).items():
                    if isinstance(attr, functools.cached_property):
                        self.__dict__.pop(name, None)
            self._setup(*self._given_answers)
            self._stamp.renew()
        return change

    # ------------------------------------------------------------------ checks and inputs
    def _check_model(self) -> None:
        handle, cfg = self.handle, self.handle.cfg
        model = handle.model
        attn = getattr(model.blocks[0], "attn", None) if hasattr(model, "blocks") and len(model.blocks) else None
        weights = ("W_Q", "W_K", "W_V", "W_O", "b_Q", "b_K", "b_V")
        if attn is None or not all(hasattr(attn, w) for w in weights):
            raise ModelError(
                "circuit discovery needs a TransformerLens model with blocks whose attention "
                "exposes per-head weights (W_Q, W_K, W_V, W_O and their biases): a "
                "HookedTransformer (3.x) or a TransformerBridge (4.x) of a standard architecture."
            )
        missing = [name for name in self._hook_names() if name not in model.hook_dict]
        if missing:
            raise ModelError(
                f"circuit discovery reads every layer's residual, q/k/v, z and MLP hook points; "
                f"this model lacks {missing[:4]}{' ...' if len(missing) > 4 else ''}."
            )
        if handle.n_kv_heads != handle.n_heads:
            raise ModelError(
                "circuit discovery does not support grouped-query attention yet (this model has "
                f"{handle.n_kv_heads} key/value heads for {handle.n_heads} query heads)."
            )
        if getattr(cfg, "positional_embedding_type", "") == "shortformer" or getattr(cfg, "load_in_4bit", False):
            raise ModelError(
                "circuit discovery does not support shortformer positional embeddings or 4-bit "
                "weights: a head's query/key input could not be recomputed exactly."
            )
        if getattr(cfg, "use_normalization_before_and_after", False) or getattr(cfg, "original_architecture", "") in (
            "Olmo2ForCausalLM", "Olmo3ForCausalLM",
        ):
            raise ModelError(
                "circuit discovery needs a pre-norm model whose attention output is the sum of its "
                "heads' outputs; this model normalises the attention output after the heads."
            )

    def _hook_names(self) -> list[str]:
        """The TransformerLens hook points the analyses hook (the same names in 3.x and 4.x)."""
        cfg = self.handle.cfg
        ports = ["hook_resid_pre", "attn.hook_q", "attn.hook_k", "attn.hook_v", "attn.hook_z"]
        if not getattr(cfg, "attn_only", False):
            ports += ["hook_mlp_in", "hook_mlp_out"]
        last = self.handle.n_layers - 1
        return [f"blocks.{layer}.{p}" for layer in range(last + 1) for p in ports] + [f"blocks.{last}.hook_resid_post"]

    def _tokenize(self, clean: Prompts, corrupted: Prompts, max_positions: int) -> None:
        handle = self.handle
        clean_list = _prompt_list(clean, "clean")
        corrupted_list = _prompt_list(corrupted, "corrupted")
        if len(clean_list) != len(corrupted_list):
            raise PromptError(
                f"got {len(clean_list)} clean prompts but {len(corrupted_list)} corrupted ones: "
                f"pass one corrupted prompt per clean prompt."
            )
        n = len(clean_list)
        names = [f"{kind} prompt {i}" if n > 1 else f"{kind} prompt" for kind in ("clean", "corrupted") for i in range(n)]
        toks = [t[0] for t in handle.tokens_many(clean_list + corrupted_list, max_positions=max_positions, what=names)]
        clean_toks, corrupted_toks = toks[:n], toks[n:]
        for i, (ct, kt) in enumerate(zip(clean_toks, corrupted_toks, strict=True)):
            if ct.shape[0] != kt.shape[0]:
                raise PromptError(
                    f"{names[i]} is {ct.shape[0]} tokens but its corrupted twin is {kt.shape[0]}: edge "
                    f"patching needs pairs with the same number of tokens. Clean tokens: "
                    f"{self._labels(ct)}; corrupted tokens: {self._labels(kt)}."
                )
        lengths = [int(t.shape[0]) for t in clean_toks]
        width = max(lengths)
        device = handle.device
        self.batch = len(clean_toks)
        self.lengths = lengths
        self.last = torch.tensor([n - 1 for n in lengths], device=device)
        self.clean_tokens = torch.stack([self._pad(t, width) for t in clean_toks])
        self.corrupted_tokens = torch.stack([self._pad(t, width) for t in corrupted_toks])
        if getattr(handle.model, "tokenizer", None) is None:
            self.str_tokens = [self._labels(t) for t in clean_toks]
            self.corrupted_str_tokens = [self._labels(t) for t in corrupted_toks]
        else:
            labels = handle.str_tokens_many(clean_toks + corrupted_toks)
            self.str_tokens, self.corrupted_str_tokens = labels[:self.batch], labels[self.batch:]

    def _mask(self, tokens: torch.Tensor) -> dict[str, torch.Tensor]:
        """Forward keyword arguments: with a left-padding tokenizer TransformerLens would mask the
        leading BOS tokens as padding, so every position is marked real (prompts here are
        right-padded, which a causal model never sees)."""
        tok = getattr(self.handle.model, "tokenizer", None)
        if getattr(tok, "padding_side", "right") == "left":
            return {"attention_mask": torch.ones(tokens.shape[0], tokens.shape[1], dtype=torch.long, device=tokens.device)}
        return {}

    def _labels(self, tokens: torch.Tensor) -> list[str]:
        """The tokens as strings (``#id`` for a model without a tokenizer)."""
        if getattr(self.handle.model, "tokenizer", None) is None:
            return [token_str(self.handle, int(t)) for t in tokens]
        return self.handle.str_tokens(tokens)

    @staticmethod
    def _pad(tokens: torch.Tensor, width: int) -> torch.Tensor:
        # right padding with the first token: causal attention keeps it out of earlier positions
        if tokens.shape[0] == width:
            return tokens
        return torch.cat([tokens, tokens[:1].expand(width - tokens.shape[0])])

    # ------------------------------------------------------------------ model mode
    @contextlib.contextmanager
    def _edge_mode(self, *, grad: bool = False) -> Iterator[None]:
        """One run against the model: eval mode, autograd only with ``grad``, and ``hook_mlp_in``
        on (MLP inputs of their own); the user's ``use_hook_mlp_in``, train/eval and grad modes
        are restored afterwards, whatever happens (the parameters' ``.grad`` are never touched:
        gradients come from ``torch.autograd.grad``).

        A model in training mode goes through :meth:`ModelHandle.session`. One already in eval
        mode skips its ``eval()``/``train()`` round trip, which walks every module and costs a
        good share of a small model's forward pass; the rest is restored the same way."""
        model, cfg = self.handle.model, self.handle.cfg
        if model.training:
            outer: contextlib.AbstractContextManager[Any] = self.handle.session(grad=grad)
        else:
            outer = torch.set_grad_enabled(grad)
        with outer:
            if not self.graph.has_mlp:
                yield
                return
            saved = cfg.use_hook_mlp_in
            try:
                cfg.use_hook_mlp_in = True
                yield
            finally:
                cfg.use_hook_mlp_in = saved

    @contextlib.contextmanager
    def _hooks(self, hooks: Sequence[tuple[str, Any]]) -> Iterator[None]:
        """Forward hooks ``fn(activation, hook)`` on TransformerLens hook points, removed on exit
        by their own handles (hooks anyone else attached stay; TransformerLens's ``hooks()``
        context would also walk every hook point of the model to clean up).

        A TransformerBridge hook point may hold a ``hook_conversion`` (``hook_q``/``hook_z`` carry
        ``[batch, pos, n_heads * d_head]``): ``fn`` sees the converted activation
        (``[batch, pos, head, d_head]``, as in 3.x) and a value it returns is reverted, as
        TransformerLens 4's own ``add_hook`` does."""
        hook_dict = self.handle.model.hook_dict
        handles = []
        try:
            for name, fn in hooks:
                point = hook_dict[name]
                conversion = getattr(point, "hook_conversion", None)
                if conversion is None:
                    handles.append(point.register_forward_hook(
                        lambda module, _inputs, output, fn=fn: fn(output, module)))
                    continue

                def converted(module: Any, _inputs: Any, output: torch.Tensor, fn: Any = fn,
                              conversion: Any = conversion) -> Any:
                    out = fn(conversion.convert(output), module)
                    return None if out is None else conversion.revert(out)

                handles.append(point.register_forward_hook(converted))
            yield
        finally:
            for handle in handles:
                handle.remove()

    # ------------------------------------------------------------------ weights and layout
    def _attn(self, layer: int) -> Any:
        return self.handle.model.blocks[layer].attn

    def _head_outs(self, layer: int, z: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """``[head, batch * pos, d_model]`` per-head outputs ``z_h @ W_O[h]`` (no ``b_O``)."""
        w_o = self._attn(layer).W_O  # [head, d_head, d_model]
        zs = z.reshape(-1, z.shape[-2], z.shape[-1]).transpose(0, 1).to(w_o.dtype)  # [head, bp, d_head]
        return torch.bmm(zs, w_o) if out is None else torch.bmm(zs, w_o, out=out)

    def _source_slices(self) -> tuple[list[tuple[int, int]], list[int]]:
        """Per layer: the source index range of its heads, and its MLP's source index (or -1)."""
        H = self.graph.n_heads
        per = H + (1 if self.graph.has_mlp else 0)
        heads = [(1 + layer * per, 1 + layer * per + H) for layer in range(self.graph.n_layers)]
        mlps = [1 + layer * per + H if self.graph.has_mlp else -1 for layer in range(self.graph.n_layers)]
        return heads, mlps

    def _dest_slices(self) -> tuple[list[dict[str, tuple[int, int]]], list[int], int]:
        """Per layer: ``{port: (first, last+1)}`` of its heads' q/k/v destinations; MLP dest; logits."""
        H = self.graph.n_heads
        per = 3 * H + (1 if self.graph.has_mlp else 0)
        heads = []
        for layer in range(self.graph.n_layers):
            base = layer * per
            heads.append({p: (base + i * H, base + (i + 1) * H) for i, p in enumerate(("q", "k", "v"))})
        mlps = [layer * per + 3 * H if self.graph.has_mlp else -1 for layer in range(self.graph.n_layers)]
        return heads, mlps, self.graph.n_dests - 1

    # ------------------------------------------------------------------ readout and metric
    def _last_logits(self, final: torch.Tensor, ids: torch.Tensor | None = None) -> torch.Tensor:
        """Logits at each prompt's last position: ``[batch, d_vocab]``, or ``[batch, k]`` for
        the columns ``ids`` (``[batch, k]``) only (no full unembedding)."""
        x = final[torch.arange(self.batch, device=final.device), self.last]  # [b, d]
        return self.handle.last_logits(x, ids)

    def _metric_values(self, final: torch.Tensor) -> torch.Tensor:
        """``[batch]``: the metric of each prompt, from the final residual stream."""
        name = self.metric_name
        if self._metric_fn is None and name == "logit_diff":
            logits = self._last_logits(final, torch.stack([self.answer_ids, self.wrong_ids], dim=1))
            return (logits[:, 0] - logits[:, 1]).float()
        logits = self._last_logits(final).float()
        if self._metric_fn is not None:
            return call_metric(self._metric_fn, logits, name)
        if name == "kl":
            return kl_div(logits, self._clean_last_logits)
        probs = logits.log_softmax(-1) if name == "logprob" else logits.softmax(-1)
        return probs.gather(-1, self.answer_ids[:, None])[:, 0]

    def _metric(self, final: torch.Tensor) -> torch.Tensor:
        """The metric averaged over the prompts (a scalar)."""
        return self._metric_values(final).mean()

    @staticmethod
    def _finite(value: torch.Tensor, what: str) -> float:
        out = float(value.detach())
        if not math.isfinite(out):
            raise MetricError(f"the metric on the {what} run is {out}: it must be a finite number.")
        return out

    # ------------------------------------------------------------------ set-up (EAP)
    def _record(self, tokens: torch.Tensor, *, grad: bool, resid_pre0: torch.Tensor | None = None) -> dict[str, Any]:
        """One forward pass (to the final residual, no unembedding) that records every source's
        output, each layer's ``resid_pre``/``resid_mid`` and, with ``grad``, the live tensors
        that destination gradients are read from: ``hook_q/k/v`` and ``hook_mlp_in``.
        ``resid_pre0`` (``[batch, pos, d_model]``) replaces the embeddings (EAP-IG's inputs).

        A model :mod:`mechwidgets._fast` covers (:attr:`direct`) is run by it, without hook points: the
        same tensors, from the same arithmetic."""
        if self.direct:
            return _fast.record(self.handle.model, tokens, grad=grad, resid_pre0=resid_pre0)
        L = self.graph.n_layers
        rec: dict[str, Any] = {"z": [None] * L, "mlp": [None] * L, "pre": [None] * L, "mid": [None] * L, "live": {}}
        hooks: list[tuple[str, Any]] = []
        if resid_pre0 is not None:

            def embed(x: torch.Tensor, hook: Any, inputs: torch.Tensor = resid_pre0) -> torch.Tensor:
                return inputs.to(x.dtype)

            hooks.append(("blocks.0.hook_resid_pre", embed))
        if grad:  # a model with frozen parameters still gets its gradients from the embeddings on

            def track(x: torch.Tensor, hook: Any) -> torch.Tensor:
                return x if x.requires_grad else x.detach().requires_grad_(True)

            hooks.append(("blocks.0.hook_resid_pre", track))
        for layer in range(L):

            def pre(x: torch.Tensor, hook: Any, layer: int = layer) -> None:
                rec["pre"][layer] = x.detach()

            def z_hook(z: torch.Tensor, hook: Any, layer: int = layer) -> None:
                rec["z"][layer] = z.detach()

            hooks += [(f"blocks.{layer}.hook_resid_pre", pre), (f"blocks.{layer}.attn.hook_z", z_hook)]
            if grad:
                for port in ("q", "k", "v"):

                    # returned, so that the model goes on with this very tensor (on a
                    # TransformerBridge it is a reshaped view: left unused, its gradient is 0)
                    def keep(x: torch.Tensor, hook: Any, key: str = f"{port}{layer}") -> torch.Tensor:
                        rec["live"][key] = x
                        return x

                    hooks.append((f"blocks.{layer}.attn.hook_{port}", keep))
            if self.graph.has_mlp:

                def mid(x: torch.Tensor, hook: Any, layer: int = layer) -> torch.Tensor:
                    rec["mid"][layer] = x.detach()
                    if not grad:
                        return x
                    # the MLP's input of its own: a TransformerBridge's hook_mlp_in is resid_mid
                    # itself, which the residual sum reads too (3.x's is a clone already)
                    live = rec["live"][f"mlp{layer}"] = x.clone()
                    return live

                def mlp_out(x: torch.Tensor, hook: Any, layer: int = layer) -> None:
                    rec["mlp"][layer] = x.detach()

                hooks += [(f"blocks.{layer}.hook_mlp_in", mid), (f"blocks.{layer}.hook_mlp_out", mlp_out)]
        rec["final"] = self._final_resid(tokens, hooks)
        return rec

    def _final_resid(self, tokens: torch.Tensor, hooks: Sequence[tuple[str, Any]], start: int = 0) -> torch.Tensor:
        """The final residual stream (the last block's output, before ``ln_final``) of a forward
        pass of ``tokens`` with ``hooks``; from layer ``start`` on, entering it with the clean
        run's residual, where nothing before ``start`` is hooked.

        A ``HookedTransformer`` runs from ``start`` and stops after the last block. A
        TransformerBridge returns logits at ``stop_at_layer=n_layers`` and runs every block at
        ``start_at_layer`` anyway: a whole forward pass of the tokens, whose last block's
        ``hook_resid_post`` is read (the blocks before ``start`` compute the clean run)."""
        model, L = self.handle.model, self.graph.n_layers
        mask = self._mask(tokens)
        if start and _fast.restart_hooked(model, start):
            start = 0  # a user's hook there would see the cached residual a second time
        if self.handle.kind == "hooked":
            with self._hooks(hooks):
                if start == 0:
                    return model(tokens, stop_at_layer=L, **mask)
                return model(self._clean_resid_pre[start], start_at_layer=start, stop_at_layer=L, **mask)
        out: dict[str, torch.Tensor] = {}

        def final(x: torch.Tensor, hook: Any) -> None:
            out["final"] = x

        with self._hooks([*hooks, (f"blocks.{L - 1}.hook_resid_post", final)]):
            model(tokens, **mask)
        return out["final"]

    def _sources(self, rec: dict[str, Any], other: dict[str, Any] | None = None) -> torch.Tensor:
        """``[source, batch * pos, d_model]`` source outputs of a recorded run (or, with
        ``other``, their difference ``rec - other``: one ``W_O`` product per layer)."""
        with torch.no_grad():
            def diff(name: str, layer: int) -> torch.Tensor:
                x = rec[name][layer]
                return x if other is None else x - other[name][layer]

            d = self.handle.d_model
            parts = [diff("pre", 0).reshape(1, -1, d)]
            for layer in range(self.graph.n_layers):
                parts.append(self._head_outs(layer, diff("z", layer)))
                if self.graph.has_mlp:
                    parts.append(diff("mlp", layer).reshape(1, -1, d))
            return torch.cat(parts)

    @functools.cached_property
    def _clean_src(self) -> torch.Tensor:
        return self._sources(self._clean_rec)

    @functools.cached_property
    def _corr_src(self) -> torch.Tensor:
        return self._sources(self._corr_rec)

    #: Below this much work per forward pass (prompts x positions x d_model² x layers) the clean
    #: and corrupted prompts run as one batch: a small run costs per operation, not per number,
    #: so the corrupted prompts then come almost free. Above it they run on their own, without
    #: gradients (in a batch, the backward pass would also go through them).
    FUSE_BELOW: float = 4e6

    def _work(self) -> int:
        """The work of one forward pass over the batch, as :attr:`FUSE_BELOW` measures it."""
        return self.batch * int(self.clean_tokens.shape[1]) * self.handle.d_model ** 2 * self.graph.n_layers

    @staticmethod
    def _grads_at(metric: torch.Tensor | None, final: torch.Tensor,
                  live: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Gradients of ``metric`` at the final residual (``"final"``) and at a run's live
        ``hook_q/k/v`` / ``hook_mlp_in`` tensors (:meth:`_record`), detached; zeros where it does
        not reach one, and everywhere for ``metric=None`` (a metric whose gradient is not taken)."""
        names, targets = ["final", *live], [final, *live.values()]
        grads: Sequence[torch.Tensor | None] = (
            torch.autograd.grad(metric, targets, allow_unused=True) if metric is not None else [None] * len(targets)
        )
        return {n: (torch.zeros_like(t) if g is None else g).detach() for n, t, g in zip(names, targets, grads, strict=True)}

    #: The most float32 numbers :meth:`_dest_grads` works on at once (1 MiB: an L2 cache).
    CHUNK_FLOATS: int = 1 << 18

    #: Norms whose backward :func:`mechwidgets._fast.norm_vjp` computes in closed form.
    CLOSED_FORM_NORMS = _fast.TL_NORMS

    def _closed_form(self, ln: Any) -> bool:
        """Whether ``ln`` is one of TransformerLens's own norms that :func:`mechwidgets._fast.norm_vjp` covers
        (weights ``w``, if any, and ``eps``): a ``torch.nn.LayerNorm`` goes through autograd."""
        return _fast.tl_norm(ln, self.CLOSED_FORM_NORMS)

    def _ln1_stack(self) -> tuple[str, float, torch.Tensor | None] | None:
        """``(kind, eps, weights [layer, d] or None)`` when every layer's ``ln1`` is the same
        closed-form norm with the same ``eps`` (its backward then runs for several layers at
        once); None otherwise (:meth:`_ln_vjp` layer by layer)."""
        lns = [block.ln1 for block in self.handle.model.blocks]
        kinds = {type(ln) for ln in lns}
        if len(kinds) != 1 or not all(self._closed_form(ln) for ln in lns) or len({float(ln.eps) for ln in lns}) != 1:
            return None
        w = torch.stack([ln.w.detach().float() for ln in lns]) if hasattr(lns[0], "w") else None  # one class
        return kinds.pop().__name__, float(lns[0].eps), w

    def _ln_vjp(self, layer: int, x: torch.Tensor, upstream: torch.Tensor) -> torch.Tensor:
        """Gradients of each head's own ``ln1`` input from the gradients of its ``ln1`` output:
        ``x`` ``[n, d]`` (``resid_pre`` at ``n`` positions, the same for every head),
        ``upstream`` ``[k, n, d]`` (one row of gradients per head and port; overwritten).

        TransformerLens's LayerNorm / RMSNorm in closed form (:func:`mechwidgets._fast.norm_vjp`); any other
        module through autograd."""
        ln = self.handle.model.blocks[layer].ln1
        kind = type(ln).__name__
        if isinstance(ln, torch.nn.Identity):
            return upstream
        if self._closed_form(ln):
            w = ln.w.detach().float() if hasattr(ln, "w") else None
            return _fast.norm_vjp(kind, float(ln.eps), w, x, upstream)
        with torch.enable_grad():
            xs = x[None].expand_as(upstream).clone().requires_grad_(True)
            (g_in,) = torch.autograd.grad(ln(xs[:, :, None])[:, :, 0], xs, upstream)
        return g_in.detach()

    def _check_direct(self) -> None:
        #: Whether the latest recording runs (EAP's set-up, or EAP-IG's) went through
        #: :mod:`mechwidgets._fast` (no hook points) rather than TransformerLens's forward pass: checked
        #: before each (a hook attached since the set-up turns it off for EAP-IG).
        self.direct = _fast.unsupported(self.handle.model, "record") is None

    def _setup(self, answers: list[Any], wrongs: list[Any]) -> None:
        handle = self.handle
        B = self.batch
        fused = self._work() < self.FUSE_BELOW
        self._check_direct()
        with self._edge_mode(grad=True):
            if fused:  # one forward pass, clean prompts first
                both = self._record(torch.cat([self.clean_tokens, self.corrupted_tokens]), grad=True)
                def half(part: slice) -> dict[str, Any]:
                    return {k: [None if t is None else t[part] for t in v] if isinstance(v, list) else v
                            for k, v in both.items() if k != "final"}

                clean, corr = half(slice(None, B)), half(slice(B, None))
                live_final = both["final"]
                final, corr_final = live_final[:B], live_final[B:].detach()
            else:
                with torch.no_grad():
                    corr = self._record(self.corrupted_tokens, grad=False)
                clean = self._record(self.clean_tokens, grad=True)
                live_final = final = clean["final"]
                corr_final = corr["final"]
            # the full last-token logits are needed for default answers and for the KL metric
            if self._metric_fn is not None:
                needs_logits = False
            elif self.metric_name == "kl":
                needs_logits = True
            else:
                given = answers + wrongs if self.metric_name == "logit_diff" else answers
                needs_logits = any(a is None for a in given)
            with torch.no_grad():
                if needs_logits:
                    corr_last = self._last_logits(corr_final)
                    self._clean_last_logits = self._last_logits(final.detach()).float()
                else:  # explicit answers: the choice needs no logits (nor the cost of unembedding)
                    corr_last = self._clean_last_logits = torch.zeros(B, 1)
            # answers and their defaults exactly as activation patching chooses them (the
            # explicit answers' strings decoded at once, for the descriptions and notes)
            has_tokenizer = getattr(handle.model, "tokenizer", None) is not None
            if has_tokenizer:
                answers = _resolve(handle, answers, "answer")
                wrongs = _resolve(handle, wrongs, "wrong answer")
                handle.token_strs([a for a in answers + wrongs if a is not None])
            answer_ids, wrong_ids, notes = [], [], []
            for i in range(B):
                _, a, w, why = choose_metric(handle, self._metric_arg, self._clean_last_logits[i],
                                             corr_last[i], answers[i], wrongs[i])
                answer_ids.append(a)
                wrong_ids.append(w)
                notes += [f"prompt {i}: {n}" if B > 1 else n for n in why]
            self.notes = notes
            device = final.device
            self.answer_ids = torch.tensor([a if a is not None else 0 for a in answer_ids], device=device)
            self.wrong_ids = torch.tensor([w if w is not None else 0 for w in wrong_ids], device=device)
            if has_tokenizer:
                handle.token_strs([t for t in answer_ids + wrong_ids if t is not None])
            self._answers = [token_str(handle, a) for a in answer_ids if a is not None]
            self._wrong = [token_str(handle, w) for w in wrong_ids if w is not None] or None
            # clean run's metric and its gradient at hook_q/k/v, hook_mlp_in and the final residual
            metric = self._metric(final)
            self.clean_metric = self._finite(metric, "clean")
            # KL's gradient is 0 at the clean run (its EAP scores are 0); a metric with no
            # gradient path at all (detached, argmax) is refused by EAP and EAP-IG (_gradient_metric)
            self.has_gradient = bool(metric.requires_grad)
            takes_grad = self.has_gradient and self.metric_name != "kl"
            live = (both if fused else clean)["live"]
            grad_of = {name: g[:B] for name, g in
                       self._grads_at(metric if takes_grad else None, live_final, live).items()}
        self._clean_rec = {k: v for k, v in clean.items() if k != "live"} | {"final": final.detach()}
        self._corr_rec = {k: v for k, v in corr.items() if k != "live"} | {"final": corr_final}
        self._clean_final = final.detach()
        self._clean_resid_pre = clean["pre"]
        self._corr_final = corr_final
        self._corr_resid_pre = corr["pre"]
        self._corr_resid_mid = corr["mid"]
        with torch.no_grad():
            self.corrupted_metric = self._finite(self._metric(self._corr_final), "corrupted")
            gap = abs(self.clean_metric - self.corrupted_metric)
            if gap <= 1e-6 * max(1.0, abs(self.clean_metric), abs(self.corrupted_metric)):
                raise MetricError(
                    f"the {self.metric_name} is {self.clean_metric:.6g} on the clean run and "
                    f"{self.corrupted_metric:.6g} on the corrupted one: they are equal, so no circuit "
                    f"can be told apart (faithfulness divides by their difference). Use a corrupted "
                    f"prompt that changes the behaviour, or another metric."
                )
            grad_dst = self._dest_grads(grad_of, clean["pre"], 1)  # heads' and the rest's [dst, bp * d]
        # EAP: score[src, dst] = sum over batch, pos, d_model of (a^corr - a^clean)_src * grad_dst
        self.eap_dense, self.eap_scores = self._scores(grad_dst)
        self.fused = fused

    def _dest_grads(self, grad_of: dict[str, torch.Tensor], pre: list[torch.Tensor],
                    reps: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Destination gradients (float32) from the gradients at ``hook_q/k/v``,
        ``hook_mlp_in`` and the final residual (``grad_of``) of a run of ``reps`` copies of the
        batch (whose ``resid_pre`` are ``pre``), summed over the copies: ``(heads [layer * 3 *
        head, batch * pos * d_model], rest [mlp... logits, batch * pos * d_model])``, in the
        order of :meth:`_dest_columns`.

        A head's ``hook_q/k/v`` gradient is mapped back through ``W`` and ``ln1`` to its own
        input (exactly what a separate per-head input would receive): several layers per
        batched product and closed-form norm backward where the norms allow it (a small
        model's cost here is the number of operations, not their size)."""
        L, H = self.graph.n_layers, self.graph.n_heads
        d = self.handle.d_model
        attns = [self._attn(layer) for layer in range(L)]
        first = grad_of["q0"]  # [reps * batch, pos, head, d_head]
        n = first.shape[0] * first.shape[1]
        with torch.no_grad():
            # the gradients of each layer's ln1 output, per head and port, become those of its
            # input in place, a few layers at a time: about as many as fit in CHUNK_FLOATS (a
            # larger block falls out of the cache between the passes over it), at least one
            heads = torch.empty(L, 3 * H, n, d, dtype=torch.float32, device=first.device)
            stack = self._ln1_stack()
            xs = torch.stack(pre).flatten(1, 2) if stack is not None else None
            per = max(1, self.CHUNK_FLOATS // (3 * H * n * d))
            for lo in range(0, L, per):
                hi = min(L, lo + per)
                w_qkv = torch.cat([w for a in attns[lo:hi] for w in (a.W_Q, a.W_K, a.W_V)]).detach().float()
                g_qkv = torch.cat([grad_of[f"{port}{layer}"] for layer in range(lo, hi) for port in ("q", "k", "v")],
                                  dim=2).float().flatten(0, 1).transpose(0, 1)  # [layers * 3H, n, d_head]
                block = heads[lo:hi]
                torch.bmm(g_qkv, w_qkv.transpose(1, 2), out=block.view(-1, n, d))
                if stack is not None and xs is not None:
                    kind, eps, w = stack  # float32 in place: the result is ``block`` itself
                    _fast.norm_vjp(kind, eps, None if w is None else w[lo:hi], xs[lo:hi], block)
                else:
                    for layer in range(lo, hi):
                        view = heads[layer]
                        done = self._ln_vjp(layer, pre[layer].flatten(0, 1), view)
                        if done is not view:
                            view.copy_(done)
            mlps = [grad_of[f"mlp{layer}"] for layer in range(L)] if self.graph.has_mlp else []
            rest = torch.stack([g.float().reshape(-1, d) for g in [*mlps, grad_of["final"]]])
        out = heads.reshape(L * 3 * H, reps, -1), rest.reshape(rest.shape[0], reps, -1)
        return (out[0][:, 0], out[1][:, 0]) if reps == 1 else (out[0].sum(1), out[1].sum(1))

    @functools.cached_property
    def _dest_columns(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The destination indices of :meth:`_dest_grads`'s two blocks: every layer's q, k, v
        inputs of its heads, then every MLP and the logits."""
        heads, mlps, logits = self._dest_slices()
        head_cols = [i for layer in heads for port in ("q", "k", "v") for i in range(*layer[port])]
        rest_cols = [m for m in mlps if m >= 0] + [logits]
        return torch.tensor(head_cols), torch.tensor(rest_cols)

    def _scores(self, grad_dst: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(dense [src, dst], per-edge [edge])`` scores: (corrupted - clean) source outputs,
        summed over batch, positions and d_model against the destination gradients."""
        with torch.no_grad():
            delta = self._sources(self._corr_rec, self._clean_rec).float()  # [src, bp, d]
            flat = delta.reshape(delta.shape[0], -1)
            dense = torch.zeros(self.graph.n_sources, self.graph.n_dests, dtype=torch.float32)
            for cols, grads in zip(self._dest_columns, grad_dst, strict=True):
                dense[:, cols] = (flat @ grads.T).cpu()
        dense = torch.where(self._allowed, dense, torch.zeros_like(dense))
        return dense, dense[self.graph.edge_src, self.graph.edge_dst].contiguous()

    def eap_ig_scores(self, steps: int = IG_STEPS) -> torch.Tensor:
        """``[edge]`` scores by EAP with integrated gradients (EAP-IG; Hanna, Pezzelle &
        Belinkov 2024, "Have Faith in Faithfulness"): as EAP, but each destination's gradient is
        averaged over ``steps`` runs whose input embeddings go from the corrupted prompts' to the
        clean prompts' (``corrupted + k/steps * (clean - corrupted)``, ``k = 1..steps``; the
        last is the clean run, so ``steps=1`` is plain EAP). Where attention saturates, the
        clean run's gradient alone misses edges the path integral sees.

        Costs ``steps`` forward and backward passes (run as one batch for small models)."""
        if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
            raise CircuitError(f"EAP-IG's steps must be an integer >= 1, got {steps!r}.")
        self.refresh()
        self._gradient_metric("EAP-IG")
        if steps in self._ig_cache:
            return self._ig_cache[steps].clone()
        B = self.batch
        self._check_direct()
        clean0, corr0 = self._clean_resid_pre[0], self._corr_resid_pre[0]  # [b, p, d]
        per_run = max(1, min(steps, int(self.FUSE_BELOW // max(self._work(), 1))))
        alphas = torch.arange(1, steps + 1, dtype=torch.float64) / steps
        grad_dst: tuple[torch.Tensor, torch.Tensor] | None = None
        for start in range(0, steps, per_run):
            chunk = alphas[start:start + per_run]
            m = len(chunk)
            a = chunk.to(clean0.dtype).repeat_interleave(B).to(clean0.device)[:, None, None]
            inputs = (corr0.repeat(m, 1, 1) + a * (clean0 - corr0).repeat(m, 1, 1)).requires_grad_(True)
            with self._edge_mode(grad=True):
                rec = self._record(self.clean_tokens.repeat(m, 1), grad=True, resid_pre0=inputs)
                final = rec["final"]
                metric = torch.stack([self._metric(final[k * B:(k + 1) * B]) for k in range(m)]).sum() / steps
                grad_of = self._grads_at(metric, final, rec["live"])
            pre = rec["pre"]
            del rec, final, metric  # the autograd graph goes with them
            part = self._dest_grads(grad_of, pre, m)
            grad_dst = part if grad_dst is None else (grad_dst[0].add_(part[0]), grad_dst[1].add_(part[1]))
        assert grad_dst is not None
        _, scores = self._scores(grad_dst)
        self._ig_cache[steps] = scores
        return scores.clone()

    # ------------------------------------------------------------------ patched forwards
    def _removed_from_kept(self, kept: Bool[torch.Tensor, " edge"]) -> Bool[torch.Tensor, "src dst"]:
        removed = self._allowed.clone()
        removed[self.graph.edge_src[kept], self.graph.edge_dst[kept]] = False
        return removed

    @torch.no_grad()
    def patched_metric(self, removed: Bool[torch.Tensor, "src dst"]) -> float:
        """The metric with the edges marked in ``removed`` (``[n_src, n_dst]``) patched from
        the corrupted run, by one forward pass (from the first layer any removed edge enters)."""
        removed = removed & self._allowed
        dest_removed = removed.any(0)
        if not bool(dest_removed.any()):
            return self.clean_metric
        start = int(self._dest_layer[dest_removed].min())
        final = self._patched_final(removed, start)
        return self._finite(self._metric(final), "patched")

    def _patched_final(self, removed: torch.Tensor, start: int) -> torch.Tensor:
        """The final residual stream of a forward pass (from layer ``start``, whose input is the
        clean run's: nothing before it is patched) with the ``removed`` edges patched.

        Source outputs are kept as ``[source, batch * pos, d_model]``, so that what a
        destination loses, the sum over its removed edges of (current - corrupted) output, is one
        matrix product; every patched q/k/v input of a layer is recomputed at once, at
        ``hook_q``, and written into ``hook_q``/``hook_k``/``hook_v``."""
        handle = self.handle
        L, H, d = self.graph.n_layers, self.graph.n_heads, self.handle.d_model
        head_src, mlp_src = self._source_slices()
        head_dst, mlp_dst, logits_dst = self._dest_slices()
        reads = self.graph.dest_reads
        rm = removed.numpy()  # the plan is made on the CPU, once per forward pass
        cur = self._clean_src.clone()  # sources upstream of `start` keep their clean outputs
        corr = self._corr_src
        device, dtype = cur.device, cur.dtype

        def loss(n: int, weights: np.ndarray) -> torch.Tensor:
            """``[k, bp, d]``: for k destinations reading sources ``0..n-1`` with 0/1 ``weights``
            ``[k, n]`` (1 = removed edge), the sum of (current - corrupted) over removed edges."""
            r = torch.from_numpy(np.ascontiguousarray(weights, dtype=np.float32)).to(device, dtype)
            return (r @ (cur[:n] - corr[:n]).reshape(n, -1)).reshape(len(weights), -1, d)

        hooks: list[tuple[str, Any]] = []
        state: dict[str, Any] = {}
        for layer in range(start, L):

            def pre(x: torch.Tensor, hook: Any, layer: int = layer) -> None:
                state["pre"] = x.reshape(-1, d)
                if layer == 0:
                    cur[0] = state["pre"]

            hooks.append((f"blocks.{layer}.hook_resid_pre", pre))
            lo, hi = head_dst[layer]["q"][0], head_dst[layer]["v"][1]
            n = reads[lo]
            block = rm[:n, lo:hi]  # [n, 3H]: q heads, k heads, v heads
            patched = np.flatnonzero(block.any(0))
            if patched.size:
                full = block[:, patched].all(0)
                split = [int(np.count_nonzero(patched < (i + 1) * H)) for i in range(3)]  # cumulative
                heads = {p: torch.from_numpy(patched[a:b] - i * H).to(device)
                         for i, (p, a, b) in enumerate(zip("qkv", [0, *split[:2]], split, strict=True))}
                spans = {p: (a, b) for p, a, b in zip("qkv", [0, *split[:2]], split, strict=True)}

                def qkv(out: torch.Tensor, hook: Any, port: str, layer: int = layer, n: int = n,
                        weights: np.ndarray = block[:, patched].T, full: Any = full,
                        heads: dict[str, torch.Tensor] = heads, spans: dict[str, tuple[int, int]] = spans) -> torch.Tensor:
                    if port == "q":  # every patched q/k/v input of the layer at once
                        x = state["pre"][None] - loss(n, weights).to(out.dtype)  # [k, bp, d]
                        if full.any():  # every edge into it removed: exactly the corrupted input
                            x[torch.from_numpy(full)] = self._corr_resid_pre[layer].reshape(-1, d).to(x.dtype)
                        attn = self._attn(layer)
                        w = torch.cat([getattr(attn, f"W_{p.upper()}").index_select(0, heads[p]) for p in "qkv"])
                        b = torch.cat([getattr(attn, f"b_{p.upper()}").index_select(0, heads[p]) for p in "qkv"])
                        normed = handle.model.blocks[layer].ln1(x).to(w.dtype)
                        state["new"] = torch.baddbmm(b[:, None], normed, w)  # [k, bp, d_head]
                    a, b_ = spans[port]
                    if b_ > a:
                        out.view(-1, H, out.shape[-1])[:, heads[port]] = state["new"][a:b_].transpose(0, 1).to(out.dtype)
                    return out

                for port in "qkv":
                    hooks.append((f"blocks.{layer}.attn.hook_{port}", functools.partial(qkv, port=port)))

            def z_hook(z: torch.Tensor, hook: Any, layer: int = layer) -> None:
                lo_s, hi_s = head_src[layer]
                self._head_outs(layer, z, out=cur[lo_s:hi_s])

            hooks.append((f"blocks.{layer}.attn.hook_z", z_hook))
            if self.graph.has_mlp:
                dm = mlp_dst[layer]

                def mlp_out(x: torch.Tensor, hook: Any, layer: int = layer) -> None:
                    cur[mlp_src[layer]] = x.reshape(-1, d)

                hooks.append((f"blocks.{layer}.hook_mlp_out", mlp_out))
                column = rm[: reads[dm], dm]
                if column.any():

                    def mlp_in(x: torch.Tensor, hook: Any, layer: int = layer, column: np.ndarray = column) -> torch.Tensor:
                        if column.all():  # exactly the corrupted input
                            return self._corr_resid_mid[layer].to(x.dtype).clone()
                        return x - loss(len(column), column[None])[0].reshape(x.shape).to(x.dtype)

                    hooks.append((f"blocks.{layer}.hook_mlp_in", mlp_in))
        if start < L:
            with self._edge_mode():
                final = self._final_resid(self.clean_tokens, hooks, start)
        else:
            final = self._clean_final
        column = rm[:, logits_dst]
        if not column.any():
            return final
        if column.all():
            return self._corr_final
        return final - loss(len(column), column[None])[0].reshape(final.shape).to(final.dtype)

    # ------------------------------------------------------------------ public analyses
    def normalize(self, value: float) -> float:
        """``(value - corrupted) / (clean - corrupted)``: 1 at the clean run, 0 at the corrupted."""
        out = float(normalize(torch.tensor(value), self.corrupted_metric, self.clean_metric, metric=self.metric_name))
        return out + 0.0  # no -0.0

    def faithfulness(self, kept: Bool[torch.Tensor, " edge"], *, threshold: float | None = None) -> Faithfulness:
        """Exact faithfulness of the circuit ``kept`` (``[edge]`` bool): one patched forward."""
        self.refresh()
        kept = torch.as_tensor(kept, dtype=torch.bool).cpu()
        if kept.shape != (self.graph.n_edges,):
            raise CircuitError(
                f"the circuit must be a [{self.graph.n_edges}] boolean mask over the graph's edges, "
                f"got shape {tuple(kept.shape)}."
            )
        value = self.patched_metric(self._removed_from_kept(kept))
        return Faithfulness(
            metric=value,
            normalized=self.normalize(value),
            n_edges=int(kept.sum()),
            total_edges=self.graph.n_edges,
            clean_metric=self.clean_metric,
            corrupted_metric=self.corrupted_metric,
            threshold=threshold,
        )

    def node_effect(self, node: str) -> NodeEffect:
        """Exact metric with a node's output patched, and with each of its inputs patched."""
        self.refresh()
        g = self.graph
        idx = g.node_index(node)
        output = None
        if idx in g.sources:
            s = g.sources.index(idx)
            removed = torch.zeros_like(self._allowed)
            removed[s] = self._allowed[s]
            output = self.patched_metric(removed)
        inputs = {}
        for d, (n, port) in enumerate(g.dests):
            if n == idx:
                removed = torch.zeros_like(self._allowed)
                removed[:, d] = self._allowed[:, d]
                inputs[port] = self.patched_metric(removed)
        return NodeEffect(g.nodes[idx].name, output, inputs, self.clean_metric, self.corrupted_metric)

    def _gradient_metric(self, method: str) -> None:
        """Raise :class:`MetricError` if the metric has no gradient for ``method`` to follow."""
        if not self.has_gradient:
            raise MetricError(
                f"the metric {self.metric_name!r} returns a value without a gradient (it detaches "
                f"the logits, or goes through .item(), NumPy, argmax or a comparison), so {method} "
                f"would score every edge 0. Write it with differentiable torch operations on the "
                f"logits, or use ACDC (exact patching, no gradients: acdc(), or method='acdc' in "
                f"show_circuit)."
            )

    def result(self, method: str = "eap", scores: torch.Tensor | None = None, *,
               threshold: float | None = None, circuit_metric: float | None = None,
               signed: bool = False) -> CircuitResult:
        """A :class:`CircuitResult` of ``scores`` (EAP's own when None: the metric must have a
        gradient)."""
        if scores is None:
            self.refresh()
            self._gradient_metric("EAP")
        return CircuitResult(
            method=method,
            graph=self.graph,
            scores=self.eap_scores.clone() if scores is None else scores,
            metric=self.metric_name,
            clean_metric=self.clean_metric,
            corrupted_metric=self.corrupted_metric,
            str_tokens=self.str_tokens,
            answers=self._answers,
            wrong_answers=self._wrong,
            threshold=threshold,
            circuit_metric=circuit_metric,
            signed=signed,
        )

    def acdc_order(self) -> list[int]:
        """Edge indices in ACDC's order: destinations in reverse topological order (for a head,
        its v, then k, then q input), and for each its sources latest first."""
        g = self.graph
        head_dst, mlp_dst, logits_dst = self._dest_slices()
        dest_order = [logits_dst]
        for layer in reversed(range(g.n_layers)):
            if g.has_mlp:
                dest_order.append(mlp_dst[layer])
            for h in reversed(range(g.n_heads)):
                for port in ("v", "k", "q"):
                    dest_order.append(head_dst[layer][port][0] + h)
        edge_of = {(int(s), int(d)): e for e, (s, d) in enumerate(zip(g.edge_src, g.edge_dst, strict=True))}
        return [edge_of[(s, d)] for d in dest_order for s in reversed(range(g.dest_reads[d]))]

    def acdc_steps(self, threshold: float, *, signed: bool = False) -> Generator[dict[str, Any], None, CircuitResult]:
        """ACDC as a generator: yields ``{done, total, message}`` after each edge, returns the
        :class:`CircuitResult` (``scores``: the change measured for each edge).

        ``signed=False``: an edge goes when removing it moves the metric by less than
        ``threshold`` either way (``|Δ| < threshold``), so edges that work against the behaviour
        stay in the circuit. ``signed=True`` (the rule of ACDC's own code, which minimises a
        loss): an edge goes when removing it moves the metric *away from the clean behaviour*
        by less than ``threshold``, so edges whose removal helps the behaviour always go (their
        score is then 0: they are not part of the circuit); it needs ``threshold > 0``.

        Closing the generator (cancel) stops between two forward passes; nothing stays hooked.
        A model changed while it runs (weights, hooks: see :meth:`refresh`) stops it within a few
        edges (milliseconds; always before it returns) with
        :class:`~mechwidgets.errors.ModelChangedError`.
        """
        if not isinstance(threshold, (int, float)) or isinstance(threshold, bool) or not threshold >= 0 or not math.isfinite(threshold):
            raise CircuitError(f"the ACDC threshold must be a finite number >= 0, got {threshold!r}.")
        if not isinstance(signed, bool):
            raise CircuitError(f"signed must be true or false, got {signed!r}.")
        if signed and threshold == 0:
            raise CircuitError("signed ACDC needs a threshold > 0 (at 0 it would still remove every edge "
                               "whose removal helps the behaviour); use signed=False to keep the full graph.")
        self.refresh()
        job = self._stamp.fork()  # the model these runs are of, even if a click refreshes them
        g = self.graph
        toward = 1.0 if self.clean_metric >= self.corrupted_metric else -1.0  # the clean behaviour's side
        removed = torch.zeros_like(self._allowed)
        current = self.clean_metric
        scores = torch.zeros(g.n_edges)
        order = self.acdc_order()
        total = len(order)
        kept = total
        for k, e in enumerate(order):
            s, d = int(g.edge_src[e]), int(g.edge_dst[e])
            removed[s, d] = True
            check_unchanged(job, "ACDC", budget=JOB_BUDGET)
            value = self.patched_metric(removed)
            change = value - current
            harm = -change * toward  # how far removing it moved the metric away from the clean run's
            scores[e] = change if not signed or harm > 0 else 0.0
            if (harm < threshold) if signed else (abs(change) < threshold):
                current = value
                kept -= 1
            else:
                removed[s, d] = False
            yield {"done": k + 1, "total": total, "message": f"ACDC: {kept} of {total} edges kept"}
        check_unchanged(job, "ACDC")
        return self.result("acdc", scores, threshold=float(threshold), circuit_metric=current, signed=signed)


# ============================================================================================ functions
def edge_attribution_patching(
    model: Any,
    clean: Prompts,
    corrupted: Prompts,
    *,
    metric: MetricArg = "logit_diff",
    answer: Answers = None,
    wrong_answer: Answers = None,
    max_positions: int = 512,
    ig_steps: int | None = None,
) -> CircuitResult:
    """Score every edge with edge attribution patching (Syed, Rager & Conmy, 2023).

    Costs about three forward passes (clean with gradients, corrupted, one backward). See the
    module docstring for the graph and the sign convention, and :class:`EdgePatcher` for the
    arguments.

    Args:
        ig_steps: with a number, EAP-IG instead (:meth:`EdgePatcher.eap_ig_scores`): the
            gradients averaged over that many runs whose input embeddings go from the corrupted
            to the clean prompts (``ig_steps`` more forward and backward passes).

    Returns:
        A :class:`CircuitResult` with ``method="eap"`` (or ``"eap-ig"``); ``scores[e]``
        estimates the change of the metric when edge ``e`` alone is patched from the
        corrupted run.
    """
    patcher = EdgePatcher(model, clean, corrupted, metric=metric, answer=answer, wrong_answer=wrong_answer,
                          max_positions=max_positions)
    if ig_steps is None:
        return patcher.result("eap")
    return patcher.result("eap-ig", patcher.eap_ig_scores(ig_steps))


def acdc(
    model: Any,
    clean: Prompts,
    corrupted: Prompts,
    *,
    threshold: float,
    metric: MetricArg = "logit_diff",
    answer: Answers = None,
    wrong_answer: Answers = None,
    max_positions: int = 512,
    signed: bool = False,
) -> CircuitResult:
    """Prune the graph with ACDC (Conmy et al., 2023): one exact patched forward per edge.

    Args:
        threshold: an edge is removed when removing it moves the metric by less than this (in
            the metric's units), ``|Δ| < threshold``; 0 keeps every edge.
        signed: remove an edge when removing it moves the metric away from the clean behaviour
            by less than ``threshold`` (edges that work against the behaviour always go), as
            ACDC's own code does; see :meth:`EdgePatcher.acdc_steps`.
        others: as :class:`EdgePatcher`.

    Returns:
        A :class:`CircuitResult` with ``method="acdc"``; ``result.circuit()`` is the circuit
        found and ``result.circuit_metric`` its metric.
    """
    patcher = EdgePatcher(model, clean, corrupted, metric=metric, answer=answer, wrong_answer=wrong_answer,
                          max_positions=max_positions)
    return run_to_end(patcher.acdc_steps(threshold, signed=signed))


def circuit_faithfulness(
    model: Any,
    clean: Prompts,
    corrupted: Prompts,
    edges: Sequence[str] | torch.Tensor,
    *,
    metric: MetricArg = "logit_diff",
    answer: Answers = None,
    wrong_answer: Answers = None,
    max_positions: int = 512,
) -> Faithfulness:
    """Faithfulness of a circuit given as edge names (``["a0.h1->a1.h3.k", ...]``) or an
    ``[edge]`` boolean mask: the metric with every other edge patched from the corrupted run,
    by a real forward pass, normalised to 1 for the full graph and 0 for the empty one."""
    patcher = EdgePatcher(model, clean, corrupted, metric=metric, answer=answer, wrong_answer=wrong_answer,
                          max_positions=max_positions)
    if isinstance(edges, torch.Tensor) and edges.dtype == torch.bool:
        kept = edges
    else:
        kept = torch.zeros(patcher.graph.n_edges, dtype=torch.bool)
        for name in edges:
            kept[patcher.graph.edge_index(str(name))] = True
    return patcher.faithfulness(kept)


__all__ = [
    "IG_STEPS",
    "METHODS",
    "METRICS",
    "PORTS",
    "CircuitError",
    "CircuitGraph",
    "CircuitResult",
    "EdgePatcher",
    "Faithfulness",
    "Node",
    "NodeEffect",
    "acdc",
    "build_graph",
    "circuit_faithfulness",
    "edge_attribution_patching",
]
