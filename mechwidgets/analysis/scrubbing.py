"""Causal scrubbing: test a hypothesis about which paths of a model matter, and through what.

Following "Causal Scrubbing: a method for rigorously testing interpretability hypotheses"
(Chan, Garriga-Alonso, Goldowsky-Dill, Greenblatt, Nitishinskaya, Radhakrishnan, Shlegeris,
Thomas; Redwood Research, 2022) and its worked example "Causal Scrubbing: results on induction
heads" (Alignment Forum / LessWrong, Dec. 2022).

**A hypothesis** is a tree of :class:`Node`. The root is the ``"output"`` being explained (the
next-token loss, or a metric). Below a node stand the model components it reads:

- under ``"output"``, an MLP ``"mlp{l}"`` or a head's ``"q"`` / ``"k"`` / ``"v"`` input: the
  components that write into the residual stream there: ``"embed"`` (token embedding),
  ``"pos_embed"``, a head's output ``"L{l}H{h}"`` (earlier layers only), ``"mlp{l}"``, and
  ``"resid"``, the rest of the residual stream at that point (every component its siblings do
  not name, taken together);
- under a head ``"L{l}H{h}"``: its ``"q"``, ``"k"`` and ``"v"`` inputs.

Each node has a **feature**: a Python function of a dataset input saying which inputs the node
cannot tell apart ("the token at this position", "the previous token", "whether this token
appeared earlier"; see :data:`FEATURES`). The hypothesis claims: the output depends on the input
only through the named paths, and each named node's activation depends on the input only through
its feature.

**Scrubbing** tests that claim by resampling. Each node's activation is computed on another
dataset input that agrees with its parent's input on the node's feature; its own inputs are then
resampled relative to *that* input, recursively. Every path the hypothesis does not name, and
every node switched to "resampled", gets its activation from a random dataset input instead. If
the hypothesis is right, the loss does not change. The result reports the loss on the clean data,
with everything resampled at random, and under the hypothesis, and the **fraction of the loss
recovered**, ``(random - scrubbed) / (random - clean)``, with its spread over several seeds.

Exactly what this implementation does
-------------------------------------

- **Inputs are prefixes.** The dataset is ``N`` token sequences of one length ``P``. A model
  activation at position ``p`` of sequence ``s`` depends only on the prefix ``s[:p + 1]``
  (attention is causal), so a dataset input is a *prefix*, and a feature is a function of the
  prefix, a ``tuple`` of token ids whose last element is the token at the position in question
  (``features.token = prefix[-1]``, ``features.position = len(prefix) - 1``). The pool sampled
  from is all ``N * P`` prefixes. A resampled activation may come from another position:
  include the position in the feature (``features.token_and_position``) to keep it aligned.
- **The loss** is the mean over the ``positions=`` of every sequence of the next-token
  cross-entropy (or ``metric=``) of the output at that prefix.
- **Sampling** draws, for every activation row separately, uniformly with replacement from the
  prefixes whose feature value equals the reference prefix's (the reference itself included, as
  in the paper: the conditional distribution of the dataset given the feature). ``identity``
  keeps the reference itself. A node whose inputs would have fewer than ``min_agreeing``
  agreeing prefixes to draw from is an error: the dataset is too small for that feature.
- **Treeification is exact.** The model graph is unrolled into a tree in which every path from
  the output to the embeddings is separate, and every path gets its own sample: a head's query
  input and its key and value input at *each* key position are separate subtrees, so the key at
  position ``j`` and the key at ``j + 1`` (and the query) are built from independently sampled
  upstream inputs. A node with children is recomputed from its children: a head input is the
  residual stream rebuilt as the sum of its components, each evaluated on its own sample (the
  named ones recursively, the others each on a fresh random prefix), plus the constant output
  biases; the head then applies its own LayerNorm, ``W_Q``, ``W_K``, ``W_V``, causal softmax and
  ``W_O`` to these rebuilt inputs, over the keys of *its* (sampled) prefix. An MLP node with
  children is recomputed by the model's own LayerNorm and MLP modules. The output node rebuilds
  the final residual stream the same way and applies ``ln_final`` and the unembedding.
- **Draws common to several predictions.** Each prediction's tree is treeified as above, but
  trees of *different* predictions may share draws: the key and value rows of a head that occurs
  once in each tree (no key or value edge above it) are drawn once per (sequence, key position)
  and read by every query of that sequence (``share_rows=True``, the default). This leaves each
  prediction's expected loss unchanged (its own paths still have separate draws; common random
  numbers across predictions only correlate their noise, which the spread over seeds shows) and
  divides the rows by the number of scored positions. A head nested under another head's key or
  value occurs many times in one tree, so its rows are never shared. Likewise a leaf whose
  activation is the same on a whole class (the token embedding under ``token``, the positional
  embedding under ``position``) is not drawn at all: every draw would give the same vector.
- **Leaves** (a node with no children, or a resampled one) need no recomputation: a component's
  activation at a prefix is read from one clean forward pass over the dataset, which is exact
  because that activation is a function of the prefix alone. A kept leaf stands for the
  component *and everything upstream of it* evaluated on one agreeing input (the hypothesis
  claims nothing finer inside it). A node whose children are all switched to resampled is not a
  leaf: all its inputs then come from random inputs. A head input (``q``, ``k``, ``v``) that a
  recomputed head does not name is the whole residual stream at a random prefix, per row.
- **Random baseline**: the output with every component of the final residual stream taken from
  its own random prefix (what the hypothesis "nothing matters" gives; a hypothesis with every
  node resampled evaluates to the same thing).
- **No approximation** is made beyond Monte-Carlo sampling: the estimate is unbiased, and the
  spread over ``n_seeds`` seeds shows its noise. Before the first evaluation the recomputation is
  checked against the model's own forward pass (heads, MLPs, final residual stream, logits);
  an architecture it cannot reproduce (rotary or ALiBi positions, parallel attention and MLP,
  attention soft-capping) raises :class:`~mechwidgets.errors.HypothesisError` instead of giving
  a wrong number.

Cost: one clean forward pass over the dataset, then per seed fused gathers from its cache plus
the recomputed nodes; a recomputed head costs one key and one value row per (sequence, key
position), or per (prediction, key position) when nested under another head's key or value
(rows then multiply by the sequence length). Rows are processed in chunks of bounded size.

Example::

    from mechwidgets.analysis.scrubbing import Node, scrub
    from mechwidgets import zoo

    model = zoo.load("induction-2l")
    data = zoo.tasks.induction_sequences(256, length=20, model="induction-2l")
    hypothesis = Node("output", children=[
        Node("L1H2", children=[
            Node("q", children=[Node("embed", "token")]),
            Node("k", children=[Node("L0H2", "previous_token")]),
            Node("v", children=[Node("embed", "token")]),
        ]),
    ])
    result = scrub(model, hypothesis, data)   # ScrubResult: result.fraction, result.fraction_std
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable, Generator, Hashable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int

from .. import _fast
from .._fingerprint import JOB_BUDGET, Stamp, check_unchanged
from .._model import ModelHandle
from .._steps import run_to_end
from ..errors import HypothesisError, MetricError, PromptError

# ------------------------------------------------------------------------------------------------
# Features


Prefix = tuple[int, ...]


@dataclass(frozen=True)
class Feature:
    """A named equivalence feature: inputs with equal values are interchangeable for a node.

    Attributes:
        name: shown in the widget's feature menu; unique among the features of one evaluation.
        fn: ``fn(prefix) -> hashable``. ``prefix`` is a tuple of token ids: the input up to and
            including the position in question (BOS first), so ``prefix[-1]`` is the token there.
        description: one line for tooltips.
    """

    name: str
    fn: Callable[[Prefix], Hashable]
    description: str = ""

    def __call__(self, prefix: Prefix) -> Hashable:
        return self.fn(prefix)


def _identity(prefix: Prefix) -> Hashable:
    return prefix


def _nothing(prefix: Prefix) -> Hashable:
    return None


def _token(prefix: Prefix) -> Hashable:
    return prefix[-1]


def _previous_token(prefix: Prefix) -> Hashable:
    return prefix[-2] if len(prefix) > 1 else None


def _position(prefix: Prefix) -> Hashable:
    return len(prefix) - 1


def _token_and_position(prefix: Prefix) -> Hashable:
    return (len(prefix) - 1, prefix[-1])


def _seen_before(prefix: Prefix) -> Hashable:
    return prefix[-1] in prefix[:-1]


def _induction_target(prefix: Prefix) -> Hashable:
    # the token that followed the latest earlier occurrence of the current token
    last = prefix[-1]
    for i in range(len(prefix) - 2, -1, -1):
        if prefix[i] == last:
            return prefix[i + 1]
    return None


#: The built-in features, by name. ``identity`` keeps the input itself ("this node depends on
#: everything"); ``nothing`` lets every input stand in for every other ("depends on nothing").
FEATURES: dict[str, Feature] = {
    f.name: f
    for f in (
        Feature("identity", _identity, "the full input: the activation is kept as it is"),
        Feature("token", _token, "the token at this position"),
        Feature("previous_token", _previous_token, "the token just before this position"),
        Feature("position", _position, "the position"),
        Feature("token_and_position", _token_and_position, "the token at this position, and the position"),
        Feature("seen_before", _seen_before, "whether this token appeared earlier in the input"),
        Feature(
            "induction_target",
            _induction_target,
            "the token that followed the last earlier occurrence of this token (None if new)",
        ),
        Feature("nothing", _nothing, "nothing: any input will do (random resampling)"),
    )
}


def resolve_feature(spec: Any, extra: Mapping[str, Feature] | None = None, *, where: str = "") -> Feature:
    """A :class:`Feature` from a name, a ``Feature``, a callable, or ``None`` (``identity``)."""
    if spec is None:
        return FEATURES["identity"]
    if isinstance(spec, Feature):
        return spec
    if isinstance(spec, str):
        table = {**FEATURES, **(extra or {})}
        if spec not in table:
            raise HypothesisError(
                f"{where}unknown feature {spec!r}. Known features: {', '.join(table)}; or pass a "
                f"function of the input prefix (a tuple of token ids) returning a hashable value."
            )
        return table[spec]
    if callable(spec):
        name = getattr(spec, "__name__", "") or type(spec).__name__
        doc = (getattr(spec, "__doc__", "") or "").strip().splitlines()
        return Feature(name, spec, doc[0] if doc else "")
    raise HypothesisError(
        f"{where}a feature must be a name (e.g. 'token'), a Feature, or a function of the input "
        f"prefix; got {type(spec).__name__} {spec!r}."
    )


# ------------------------------------------------------------------------------------------------
# Hypotheses

_HEAD_RE = re.compile(r"^L(\d+)H(\d+)$")
_MLP_RE = re.compile(r"^mlp(\d+)$")
QKV = ("q", "k", "v")


@dataclass
class Node:
    """One node of a causal-scrubbing hypothesis.

    Args:
        component: ``"output"`` (the root), ``"embed"``, ``"pos_embed"``, ``"L{layer}H{head}"``
            (a head's output), ``"q"``/``"k"``/``"v"`` (a head's query, key or value input; only
            under a head), ``"mlp{layer}"``, or ``"resid"`` (the rest of the residual stream at
            that point: every component the siblings do not name, together).
        feature: what the node's activation depends on (see :data:`FEATURES`): a name, a
            :class:`Feature`, a function of the input prefix, or ``None`` for ``identity``.
        children: the components this node reads that the hypothesis says matter. A node with
            no children stands for itself and everything upstream, evaluated on one input that
            agrees on its feature.
        kept: ``False`` switches the node (and its subtree) to "resampled": its activation then
            comes from a random input, as if the hypothesis did not name it.
    """

    component: str
    feature: Any = None
    children: list[Node] = field(default_factory=list)
    kept: bool = True

    def __post_init__(self) -> None:
        self.children = list(self.children)

    def walk(self, prefix: str = "") -> Iterator[tuple[str, Node]]:
        """``(path, node)`` for this node and every descendant, depth first; paths look like
        ``"output/L1H2/k/L0H2"``."""
        path = f"{prefix}/{self.component}" if prefix else self.component
        yield path, self
        for child in self.children:
            yield from child.walk(path)

    def find(self, path: str) -> Node:
        """The node at ``path`` (as :meth:`walk` names it)."""
        for p, node in self.walk():
            if p == path:
                return node
        paths = [p for p, _ in self.walk()]
        raise HypothesisError(f"no node {path!r} in the hypothesis; its nodes are {paths}.")

    def copy(self) -> Node:
        """A deep copy of the tree (features are shared, not copied)."""
        return Node(self.component, self.feature, [c.copy() for c in self.children], self.kept)

    def with_changes(self, path: str, *, kept: bool | None = None, feature: Any = None) -> Node:
        """A copy of the tree with the node at ``path`` kept/resampled or given another feature."""
        tree = self.copy()
        node = tree.find(path)
        if kept is not None:
            node.kept = bool(kept)
        if feature is not None:
            node.feature = feature
        return tree


# ------------------------------------------------------------------------------------------------
# Results


@dataclass
class ScrubResult:
    """The outcome of scrubbing one hypothesis.

    Attributes:
        clean: the metric (mean next-token loss by default) on the clean data.
        random: with every path resampled at random (mean over seeds).
        scrubbed: under the hypothesis (mean over seeds).
        fraction: mean over seeds of ``(random - scrubbed) / (random - clean)``: 1 when the
            hypothesis explains all of the loss, 0 when it explains none of it.
        fraction_std: standard deviation over seeds of that fraction (0 with one seed).
        random_per_seed, scrubbed_per_seed, fraction_per_seed: ``[n_seeds]`` values per seed.
        metric: the metric's name (``"loss"`` by default).
        n_inputs: sequences in the dataset; positions: the positions whose output is measured;
            n_references: ``n_inputs * len(positions)``.
        hypothesis: a copy of the hypothesis evaluated.
        seconds: wall time of the evaluation.
    """

    clean: float
    random: float
    scrubbed: float
    fraction: float
    fraction_std: float
    random_per_seed: Float[torch.Tensor, " seed"]
    scrubbed_per_seed: Float[torch.Tensor, " seed"]
    fraction_per_seed: Float[torch.Tensor, " seed"]
    metric: str
    n_inputs: int
    positions: list[int]
    n_references: int
    hypothesis: Node
    seconds: float = 0.0

    def summary(self) -> str:
        return (
            f"{self.metric}: clean {self.clean:.3f}, scrubbed {self.scrubbed:.3f}, random "
            f"{self.random:.3f}; loss recovered {100 * self.fraction:.1f}% "
            f"± {100 * self.fraction_std:.1f}% ({len(self.fraction_per_seed)} seeds, "
            f"{self.n_references} predictions)"
        )


# ------------------------------------------------------------------------------------------------
# Datasets


def dataset_tokens(
    handle: ModelHandle, dataset: Any, *, max_inputs: int = 4096
) -> tuple[Int[torch.Tensor, "n pos"], list[int] | None]:
    """Tokenise a dataset to ``[n, pos]`` (BOS first), with its default measured positions.

    ``dataset`` is a ``[n, pos]`` token tensor, a list of strings of equal token length, or a list
    of :class:`~mechwidgets.zoo.tasks.InductionSequence` (then the default positions are those
    predicting the repeated half, as the zoo's model cards measure it).
    """
    default_positions: list[int] | None = None
    if isinstance(dataset, torch.Tensor):
        toks = dataset.detach().long().cpu()
        if toks.ndim != 2:
            raise PromptError(f"a token dataset must be [n, pos]; got shape {tuple(toks.shape)}.")
        if toks.numel() and (int(toks.min()) < 0 or int(toks.max()) >= handle.d_vocab):
            raise PromptError(f"the dataset holds token ids outside [0, {handle.d_vocab}).")
    else:
        if isinstance(dataset, (str, bytes)) or not isinstance(dataset, Sequence):
            raise PromptError(
                "the dataset must be a list of strings, a [n, pos] token tensor, or a list of "
                "zoo task objects (e.g. zoo.tasks.induction_sequences(...)); got "
                f"{type(dataset).__name__}."
            )
        items = list(dataset)
        if not items:
            raise PromptError("the dataset is empty: causal scrubbing needs inputs to resample from.")
        if len(items) > max_inputs:
            raise PromptError(
                f"the dataset has {len(items)} inputs, more than max_inputs={max_inputs}: pass "
                f"fewer or raise max_inputs= (memory grows with inputs × positions)."
            )
        texts = []
        for i, item in enumerate(items):
            if isinstance(item, str):
                texts.append(item)
            elif isinstance(getattr(item, "text", None), str):
                texts.append(item.text)
            else:
                raise PromptError(
                    f"dataset item #{i} is a {type(item).__name__}: pass strings, a token tensor, "
                    f"or zoo task objects with a .text."
                )
        halves = {getattr(item, "half_length", None) for item in items}
        rows = [handle.tokens(t, what=f"dataset input #{i}")[0].cpu() for i, t in enumerate(texts)]
        lengths = sorted({len(r) for r in rows})
        if len(lengths) > 1:
            first = next(i for i, r in enumerate(rows) if len(r) != len(rows[0]))
            raise PromptError(
                f"dataset inputs must all have the same number of tokens (positions are compared "
                f"across inputs); input #0 has {len(rows[0])} and input #{first} has "
                f"{len(rows[first])} (lengths seen: {lengths})."
            )
        toks = torch.stack(rows)
        if len(halves) == 1 and isinstance(next(iter(halves)), int):
            half = int(next(iter(halves)))  # type: ignore[arg-type]
            if toks.shape[1] == 1 + 2 * half:
                default_positions = list(range(half + 1, 2 * half))
    n, pos = toks.shape
    if n < 2:
        raise PromptError(f"the dataset has {n} input; causal scrubbing needs several to resample from.")
    if n > max_inputs:
        raise PromptError(
            f"the dataset has {n} inputs, more than max_inputs={max_inputs}: pass fewer or raise "
            f"max_inputs= (memory grows with inputs × positions)."
        )
    if pos < 2:
        raise PromptError("dataset inputs need at least 2 tokens (a prediction and its target).")
    if pos > handle.n_ctx:
        raise PromptError(f"dataset inputs are {pos} tokens, more than the model's n_ctx={handle.n_ctx}.")
    return toks, default_positions


# ------------------------------------------------------------------------------------------------
# The engine


@dataclass
class _Classes:
    """Equivalence classes of one feature over the prefix pool, for vectorised sampling."""

    ids: torch.Tensor  # [pool] class of each prefix
    order: torch.Tensor  # [pool] prefix ids sorted by class
    start: torch.Tensor  # [classes] first index of each class in `order`
    size: torch.Tensor  # [classes]
    values: list[Hashable]  # feature value of each class
    _size_of: torch.Tensor | None = None
    _start_of: torch.Tensor | None = None

    def sample(self, refs: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """For each reference, a uniform draw from the prefixes of its class (itself included)."""
        size = self.size_of[refs]
        u = torch.rand(refs.shape, generator=gen, device=refs.device)
        offset = torch.minimum((u * size).long(), size - 1)
        return self.order[self.start_of[refs] + offset]

    @property
    def size_of(self) -> torch.Tensor:
        """``[pool]``: the size of each prefix's class."""
        if self._size_of is None:
            self._size_of = self.size[self.ids]
        return self._size_of

    @property
    def start_of(self) -> torch.Tensor:
        """``[pool]``: where each prefix's class starts in ``order``."""
        if self._start_of is None:
            self._start_of = self.start[self.ids]
        return self._start_of


_Key = tuple[Any, ...]


@dataclass
class _Plan:
    """A compiled, active hypothesis node (resampled nodes are left out: they act as unnamed).

    ``key`` is the residual-stream component (``("embed",)``, ``("head", l, h)``, ``("mlp", l)``),
    ``("q",)``/``("k",)``/``("v",)`` for a head input, ``("resid",)`` or ``("output",)``.
    """

    key: _Key
    path: str
    #: the hypothesis names no children: the node and everything upstream of it are evaluated
    #: whole on one (agreeing) input. A node whose named children are all resampled is not whole:
    #: its inputs all come from random inputs.
    whole: bool = True
    classes: _Classes | None = None  # None: identity (the reference itself)
    #: a leaf whose activation is the same on every prefix of a class: no need to draw
    constant: bool = False
    #: the node occurs once in each prediction's tree (no key or value edge above it)
    once: bool = True
    children: dict[_Key, _Plan] = field(default_factory=dict)
    rest: _Plan | None = None  # a "resid" child: every unnamed component, together

    @property
    def kind(self) -> str:
        return str(self.key[0])


def _component_key(component: str) -> _Key | None:
    if component in ("embed", "pos_embed", "resid", "output") or component in QKV:
        return (component,)
    m = _HEAD_RE.match(component)
    if m:
        return ("head", int(m.group(1)), int(m.group(2)))
    m = _MLP_RE.match(component)
    if m:
        return ("mlp", int(m.group(1)))
    return None


def default_metric_name(metric: Any) -> str:
    return "loss" if metric is None else str(getattr(metric, "__name__", "metric"))


class Scrubber:
    """A model and a dataset prepared for scrubbing. The clean run and the feature classes are
    computed once, so evaluating several hypotheses (as the widget does) costs only resampling.

    Args:
        model: a TransformerLens model or :class:`~mechwidgets._model.ModelHandle`.
        dataset: see :func:`dataset_tokens`.
        positions: positions whose next-token prediction is scored (default: the repeated half
            for zoo induction sequences, else every position but the last).
        metric: ``None`` for the next-token cross-entropy, or ``metric(logits [m, d_vocab],
            targets [m]) -> [m]`` per-prediction values (either direction: only ratios of
            differences are reported).
        features: extra named features offered beside :data:`FEATURES` (``{name: fn}`` or a
            list of :class:`Feature`).
        n_seeds: seeds per evaluation (default 5). seed: the first seed (default 0).
        min_agreeing: every prefix a node may resample must have at least this many agreeing
            prefixes (itself included) in the dataset (default 2), else the dataset is too small.
        max_inputs: refuse larger datasets (default 4096).
        max_floats: bound on the activation floats processed at once (memory; default 8 M).
        share_rows: let the predictions of one sequence share the key and value rows of a head
            that occurs once in each prediction's tree (see :meth:`_head`; unbiased, and about
            ``len(positions)`` times fewer rows). ``False`` draws every row of every prediction
            separately.
    """

    def __init__(
        self,
        model: Any,
        dataset: Any,
        *,
        positions: Sequence[int] | None = None,
        metric: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
        features: Mapping[str, Any] | Sequence[Any] | None = None,
        n_seeds: int = 5,
        seed: int = 0,
        min_agreeing: int = 2,
        max_inputs: int = 4096,
        max_floats: int = 1 << 23,
        share_rows: bool = True,
    ) -> None:
        handle = ModelHandle.wrap(model)
        self.handle = handle
        self.share_rows = bool(share_rows)
        self.n_seeds = _positive_int(n_seeds, "n_seeds")
        self.min_agreeing = _positive_int(min_agreeing, "min_agreeing")
        self.seed = int(seed)
        self.max_rows = max(1, int(max_floats) // handle.d_model)
        self.metric = metric
        self.metric_name = default_metric_name(metric)
        self.feature_table: dict[str, Feature] = dict(FEATURES)
        self._names: dict[Any, str] = {}  # bare callables → their (unique) name
        self._classes: dict[Any, _Classes] = {}  # keyed by the feature function
        self._register_extra(features)

        tokens, default_positions = dataset_tokens(handle, dataset, max_inputs=max_inputs)
        n, P = tokens.shape
        self.tokens = tokens
        self.n_inputs, self.length = n, P
        if positions is None:
            positions = default_positions if default_positions is not None else range(P - 1)
        pos_list = [int(p) for p in positions]
        if not pos_list or any(not 0 <= p <= P - 2 for p in pos_list):
            raise PromptError(
                f"positions must be a non-empty list of positions in 0..{P - 2} (the output at "
                f"position p is scored on the token at p + 1); got {list(positions)[:10]}."
            )
        self.positions = sorted(set(pos_list))
        #: [n_references] flat prefix ids (s * P + p) whose output is scored, and their targets
        self.refs = (torch.arange(n)[:, None] * P + torch.tensor(self.positions)[None, :]).reshape(-1)
        self.targets = tokens.reshape(-1)[self.refs + 1]
        self._prefixes: list[Prefix] | None = None
        self._points: dict[_Key, tuple[list[_Key], torch.Tensor]] = {}
        #: when a list, every draw is recorded as (node path, references, sampled prefixes)
        self._trace: list[tuple[str, torch.Tensor, torch.Tensor]] | None = None
        self._agreeing_ok: set[tuple[Any, bool]] = set()  # (feature fn, scored) checks passed
        self._constant: dict[tuple[_Key, int], bool] = {}  # see _constant_on_classes
        self._prepare()
        #: the model as the clean run saw it (see :meth:`refresh`)
        self._stamp = Stamp(handle.model)

    def refresh(self) -> str | None:
        """Redo the clean run (cached activations, clean metric) if the model
        changed since it was taken (weights, dtype, device or hooks: see
        :func:`~mechwidgets._fingerprint.model_fingerprint`); :meth:`evaluate_steps` calls it
        first. Returns what changed, or ``None`` when nothing did."""
        change = self._stamp.stale()
        if change is not None:
            self._points.clear()
            self._constant.clear()
            self._prepare()
            self._stamp.renew()
        return change

    # ------------------------------------------------------------------ features
    def _register_extra(self, features: Any) -> None:
        if features is None:
            return
        items = list(features.items()) if isinstance(features, Mapping) else [(None, f) for f in features]
        for name, spec in items:
            feat = resolve_feature(spec, self.feature_table)
            if name is not None and feat.name != name:
                feat = Feature(str(name), feat.fn, feat.description)
            known = self.feature_table.get(feat.name)
            if known is not None and known.fn is not feat.fn:
                raise HypothesisError(
                    f"two different features are named {feat.name!r} (one may be built in); give "
                    f"yours another name."
                )
            self.feature_table[feat.name] = feat

    def feature(self, spec: Any, *, where: str = "") -> Feature:
        """Resolve a node's feature spec, registering new ones under a unique name."""
        if callable(spec) and not isinstance(spec, Feature):
            for feat in self.feature_table.values():
                if feat.fn is spec:
                    return feat
            if spec in self._names:
                return self.feature_table[self._names[spec]]
            base = resolve_feature(spec, where=where)
            name = base.name if base.name != "<lambda>" else "custom"
            k = 1
            while name in self.feature_table:
                k += 1
                name = f"{base.name if base.name != '<lambda>' else 'custom'}_{k}"
            feat = Feature(name, spec, base.description)
            self._names[spec] = name
            self.feature_table[name] = feat
            return feat
        feat = resolve_feature(spec, self.feature_table, where=where)
        known = self.feature_table.get(feat.name)
        if known is not None and known.fn is not feat.fn:
            raise HypothesisError(
                f"{where}two different features are named {feat.name!r}; give them distinct names."
            )
        self.feature_table[feat.name] = feat
        return feat

    def prefixes(self) -> list[Prefix]:
        """Every prefix of the pool, indexed by flat id ``s * P + p``."""
        if self._prefixes is None:
            out: list[Prefix] = []
            for row in self.tokens.tolist():
                out += [tuple(row[: p + 1]) for p in range(len(row))]
            self._prefixes = out
        return self._prefixes

    def feature_classes(self, feature: Feature, *, where: str = "") -> _Classes:
        """Evaluate ``feature`` on every prefix of the pool (once) and group equal values."""
        cached = self._classes.get(feature.fn)
        if cached is not None:
            return cached
        P = self.length
        index: dict[Hashable, int] = {}
        ids: list[int] = []
        for i, prefix in enumerate(self.prefixes()):
            try:
                value = feature.fn(prefix)
            except Exception as exc:
                raise HypothesisError(
                    f"{where}feature {feature.name!r} raised {type(exc).__name__}: {exc} on dataset "
                    f"input #{i // P} at position {i % P} (prefix ending {list(prefix[-6:])}). A "
                    f"feature receives the input prefix as a tuple of token ids."
                ) from exc
            try:
                ids.append(index.setdefault(value, len(index)))
            except TypeError as exc:
                raise HypothesisError(
                    f"{where}feature {feature.name!r} returned an unhashable "
                    f"{type(value).__name__} ({_short(value)}) on dataset input #{i // P} at "
                    f"position {i % P}: a feature must return a hashable value (int, str, tuple, "
                    f"frozenset, None), because inputs are grouped by equal values."
                ) from exc
        ids_t = torch.tensor(ids, dtype=torch.long)
        size = torch.bincount(ids_t, minlength=len(index))
        dev = self.device
        classes = _Classes(
            ids=ids_t.to(dev),
            order=torch.argsort(ids_t, stable=True).to(dev),
            start=(torch.cumsum(size, 0) - size).to(dev),
            size=size.to(dev),
            values=list(index),
        )
        self._classes[feature.fn] = classes
        return classes

    # ------------------------------------------------------------------ the clean run
    def _prepare(self) -> None:
        """One clean forward pass over the dataset, caching every component's activation."""
        h = self.handle
        model = h.model
        self.device = h.device
        L, H, d = h.n_layers, h.n_heads, h.d_model
        for name in ("hook_embed", "hook_pos_embed"):
            if not h.has_hook(name):
                raise HypothesisError(
                    f"this model has no {name!r} hook: causal scrubbing needs separate token and "
                    f"positional embeddings (rotary or ALiBi positions are not supported)."
                )
        self.attn_only = bool(getattr(h.cfg, "attn_only", False)) or not all(
            h.has_hook(f"blocks.{layer}.hook_mlp_out") for layer in range(L)
        )
        z_names = [h.hook_name("z", layer) for layer in range(L)]
        names = ["hook_embed", "hook_pos_embed", *z_names]
        names += [h.hook_name("resid_pre", layer) for layer in range(L)]
        names += [h.hook_name("resid_post", L - 1)]
        if not self.attn_only:
            names += [h.hook_name("mlp_out", layer) for layer in range(L)]
        self._check_unhooked()
        self._points = {}  # their biases are the weights' of this preparation
        P = self.length
        NP = self.n_inputs * P
        cache: dict[str, list[torch.Tensor]] = {n: [] for n in names}
        clean: list[torch.Tensor] = []
        batch = max(1, (1 << 15) // P)
        with h.session():
            for start in range(0, self.n_inputs, batch):
                toks = self.tokens[start:start + batch].to(self.device)
                logits, c = h.run_with_cache(toks, names)
                for n_ in names:
                    t = c[n_].float()
                    cache[n_].append(t.expand(len(toks), *t.shape[1:]) if t.shape[0] != len(toks) else t)
                in_batch = (self.refs >= start * P) & (self.refs < (start + len(toks)) * P)
                rows = (self.refs[in_batch] - start * P).to(self.device)
                lg = logits.reshape(-1, logits.shape[-1])[rows]
                clean.append(self._metric_values(lg, self.targets[in_batch].to(self.device)))
        full = {n_: torch.cat(v).reshape(NP, *v[0].shape[2:]) for n_, v in cache.items()}
        del cache
        self.clean_value = float(torch.cat(clean).mean())
        #: each residual-stream component's clean activation at every prefix, [NP, d_model]
        self.comp: dict[_Key, torch.Tensor] = {
            ("embed",): full["hook_embed"],
            ("pos_embed",): full["hook_pos_embed"],
        }
        for layer, z_name in enumerate(z_names):
            w_o = model.blocks[layer].attn.W_O.detach().float()
            out = torch.einsum("nhe,hed->hnd", full[z_name], w_o)
            for head in range(H):
                self.comp[("head", layer, head)] = out[head].contiguous()
            if not self.attn_only:
                self.comp[("mlp", layer)] = full[h.hook_name("mlp_out", layer)]
        self.resid_pre = [full[h.hook_name("resid_pre", layer)] for layer in range(L)]
        self.resid_final = full[h.hook_name("resid_post", L - 1)]
        assert all(t.shape == (NP, d) for t in [*self.comp.values(), *self.resid_pre])
        # every component stacked, so that summing components taken at different prefixes is one
        # fused gather-and-sum (F.embedding_bag) instead of one gather per component
        self._offset = {key: i * NP for i, key in enumerate(self.comp)}
        self._stack = torch.cat(list(self.comp.values()))
        self._self_check()

    def _point(self, point: _Key) -> tuple[list[_Key], torch.Tensor]:
        """The components of the residual stream read at ``point``, and its constant bias.

        ``("final",)``: the unembedding's input; ``("attn_in", l)``: layer l's attention input;
        ``("mlp_in", l)``: layer l's MLP input. Components: the embeddings, the heads (and MLPs)
        of earlier layers (for an MLP input, also the heads of its own layer); the bias is the
        sum of those layers' attention output biases ``b_O`` (MLP biases are in their outputs).
        """
        if point not in self._points:
            L, H = self.handle.n_layers, self.handle.n_heads
            if point[0] == "final":
                heads_upto = mlps_upto = L
            else:
                mlps_upto = point[1]
                heads_upto = point[1] + (point[0] == "mlp_in")
            comps: list[_Key] = [("embed",), ("pos_embed",)]
            for layer in range(heads_upto):
                comps += [("head", layer, head) for head in range(H)]
                if not self.attn_only and layer < mlps_upto:
                    comps.append(("mlp", layer))
            blocks = self.handle.model.blocks
            bias = torch.zeros(self.handle.d_model, device=self.device)
            for layer in range(heads_upto):
                bias = bias + blocks[layer].attn.b_O.detach().float()
            self._points[point] = (comps, bias)
        return self._points[point]

    # ------------------------------------------------------------------ the model's maths
    # (the execution core's arithmetic, mechwidgets._fast, on the live weights, in float32)
    def _check_unhooked(self) -> None:
        """Refuse a model with hooks attached: scrubbing rebuilds every node from its inputs with
        the model's own arithmetic, which a hook (an SAE spliced in, a steering vector) would
        change without it knowing."""
        hooked = _fast.hooked_modules(self.handle.model)
        if hooked:
            raise HypothesisError(
                f"causal scrubbing rebuilds every node from its inputs, so it cannot honour hooks "
                f"attached to the model ({', '.join(hooked[:3])}{', ...' if len(hooked) > 3 else ''}). "
                f"Remove them (e.g. `model.reset_hooks(including_permanent=True)`) or fold what "
                f"they do into the weights, then scrub again."
            )

    def _attn_scale(self, attn: Any) -> float:
        scale = float(getattr(attn, "attn_scale", 0.0) or 0.0)
        if scale <= 0:
            scale = math.sqrt(self.handle.d_head) if getattr(self.handle.cfg, "use_attn_scale", True) else 1.0
        return scale

    def _attend(
        self, layer: int, head: int, q_in: torch.Tensor, k_in: torch.Tensor, v_in: torch.Tensor,
        key_index: torch.Tensor, valid: torch.Tensor,
    ) -> torch.Tensor:
        """A head's output (``z @ W_O``, no bias) for m queries.

        ``q_in [m, d]`` are the queries' residual streams (before ``ln1``), ``k_in``/``v_in
        [r, d]`` key and value residual streams; ``key_index [m, width]`` says which row of those
        each query reads at each key position, and ``valid [m, width]`` which positions are keys
        of its prefix.
        """
        block = self.handle.model.blocks[layer]
        attn = block.attn
        ln1 = block.ln1
        q, k, v = (_fast.head_projection(attn, head, port, _fast.norm(ln1, x.float()))
                   for port, x in zip("QKV", (q_in, k_in, v_in), strict=True))
        k_pad, v_pad = k[key_index], v[key_index]  # [m, width, d_head]
        z = _fast.attend(q[:, None, None, :], k_pad[:, None], v_pad[:, None], self._attn_scale(attn),
                         mask=valid[:, None, None, :])[:, 0, 0]
        return z @ attn.W_O[head].detach().float()

    def _mlp(self, layer: int, resid: torch.Tensor) -> torch.Tensor:
        return _fast.mlp(self.handle.model.blocks[layer], resid).float()

    def _unembed(self, resid: torch.Tensor) -> torch.Tensor:
        return _fast.unembed(self.handle.model, resid).float()

    def _metric_values(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if self.metric is None:
            return F.cross_entropy(logits.float(), targets, reduction="none")
        try:
            out = self.metric(logits, targets)
        except Exception as exc:
            raise MetricError(f"the metric raised {type(exc).__name__}: {exc}") from exc
        out = torch.as_tensor(out, dtype=torch.float32, device=logits.device)
        if out.ndim == 0:
            out = out.expand(len(targets))
        if out.shape != (len(targets),) or not bool(torch.isfinite(out).all()):
            raise MetricError(
                f"the metric must return finite per-prediction values of shape [{len(targets)}] "
                f"(or a finite scalar); got shape {tuple(out.shape)}, finite: "
                f"{bool(torch.isfinite(out).all())}."
            )
        return out

    def _self_check(self) -> None:
        """Rebuild a few inputs' clean run from the cached components; refuse a model whose
        computation this module does not mirror exactly."""
        P = self.length
        x = torch.arange(min(self.n_inputs, 4) * P, device=self.device)
        pos = x % P
        j = torch.arange(P, device=self.device)
        valid = j[None, :] <= pos[:, None]
        keys = (x // P)[:, None] * P + torch.minimum(j[None, :], pos[:, None])  # [m, P]
        checks: list[tuple[str, torch.Tensor, torch.Tensor]] = []
        with torch.no_grad():
            for layer in range(self.handle.n_layers):
                resid = self.resid_pre[layer]
                checks.append((f"the residual stream before layer {layer}",
                               self._rebuild(("attn_in", layer), x), resid[x]))
                for head in range(self.handle.n_heads):
                    got = self._attend(layer, head, resid[x], resid, resid, keys, valid)
                    checks.append((f"head L{layer}H{head}", got, self.comp[("head", layer, head)][x]))
                if not self.attn_only:
                    got = self._mlp(layer, self._rebuild(("mlp_in", layer), x))
                    checks.append((f"the MLP of layer {layer}", got, self.comp[("mlp", layer)][x]))
            checks.append(("the final residual stream", self._rebuild(("final",), x), self.resid_final[x]))
        for where, got, want in checks:
            err = float((got - want).abs().max()) / (1.0 + float(want.abs().max()))
            if not err <= 1e-3:
                raise HypothesisError(
                    f"causal scrubbing rebuilds each node from its inputs, and could not reproduce "
                    f"{where} of this model (relative difference {err:.2e}). Supported: "
                    f"TransformerLens models with absolute positional embeddings, LayerNorm or "
                    f"RMSNorm, and sequential attention and MLP blocks; not rotary or ALiBi "
                    f"positions, parallel attention and MLP, or attention soft-capping."
                )

    def _rebuild(self, point: _Key, x: torch.Tensor) -> torch.Tensor:
        """The clean residual stream at ``point`` rebuilt from its cached components."""
        comps, bias = self._point(point)
        return self._gather_sum([x + self._offset[key] for key in comps]) + bias

    def _gather_sum(self, columns: list[torch.Tensor]) -> torch.Tensor:
        """``sum_i stack[columns[i]]``: components, each at its own prefix, summed in one pass."""
        return F.embedding_bag(torch.stack(columns, 1), self._stack, mode="sum")

    # ------------------------------------------------------------------ compiling
    def check(self, hypothesis: Node) -> None:
        """Validate a hypothesis (every node, kept or not) and evaluate its active features."""
        self.compile(hypothesis)

    def compile(self, hypothesis: Node) -> _Plan:
        """Validate ``hypothesis`` against the model and dataset, and compile its kept part."""
        if not isinstance(hypothesis, Node):
            raise HypothesisError(
                f"a hypothesis is a tree of Node objects with Node('output', ...) at the root; "
                f"got {type(hypothesis).__name__}."
            )
        if hypothesis.component != "output":
            raise HypothesisError(
                f"the root of a hypothesis is Node('output', children=[...]), the output being "
                f"explained; got a root {hypothesis.component!r}."
            )
        if not hypothesis.kept:
            raise HypothesisError(
                "the root 'output' is what is being explained and is always kept; switch its "
                "children to resampled instead."
            )
        self.feature(hypothesis.feature, where="node 'output': ")
        root = _Plan(("output",), "output", whole=not hypothesis.children)
        self._compile_children(hypothesis, root, ("final",), active=True, scored=True)
        return root

    def _compile_children(
        self, node: Node, plan: _Plan, point: _Key | None, *, active: bool, scored: bool
    ) -> None:
        """Check and compile ``node``'s children into ``plan``.

        ``point`` is the residual stream they write into (None under a head: q, k, v).
        ``scored``: the children's references are exactly the scored predictions (used to
        check agreeing inputs only where they are needed).
        """
        seen: set[str] = set()
        for child in node.children:
            if not isinstance(child, Node):
                raise HypothesisError(f"node {plan.path!r}: children must be Node objects, got {child!r}.")
            path = f"{plan.path}/{child.component}"
            if child.component in seen:
                raise HypothesisError(
                    f"node {plan.path!r} names {child.component!r} twice; name each component once "
                    f"per node (a feature can combine several claims)."
                )
            seen.add(child.component)
            key = self._check_component(child.component, path, point, plan)
            feature = self.feature(child.feature, where=f"node {path!r}: ")
            sub = _Plan(key, path, whole=not child.children,
                        once=plan.once and key[0] not in ("k", "v"))
            on = active and child.kept
            kind = key[0]
            # a key or value input is read at every position of its head's prefix
            here_scored = scored and kind not in ("k", "v")
            if on and feature.name != "identity":
                sub.classes = self.feature_classes(feature, where=f"node {path!r}: ")
                self._check_agreeing(sub.classes, feature, path, here_scored)
                sub.constant = not child.children and self._constant_on_classes(key, sub.classes)
            child_scored = here_scored and sub.classes is None
            if kind == "head":
                self._compile_children(child, sub, None, active=on, scored=child_scored)
            elif kind in QKV:
                self._compile_children(child, sub, ("attn_in", plan.key[1]), active=on,
                                       scored=child_scored)
            elif kind == "mlp":
                self._compile_children(child, sub, ("mlp_in", key[1]), active=on, scored=child_scored)
            elif child.children:
                raise HypothesisError(
                    f"node {path!r} cannot have children: {child.component!r} reads no model "
                    f"component (embeddings read the tokens; 'resid' is already the rest)."
                )
            if not on:
                continue  # resampled: acts as if the hypothesis did not name it
            if kind == "resid":
                plan.rest = sub
            else:
                plan.children[key] = sub

    def _check_component(self, comp: Any, path: str, point: _Key | None, parent: _Plan) -> _Key:
        h = self.handle
        key = _component_key(comp) if isinstance(comp, str) else None
        if key is None:
            raise HypothesisError(
                f"node {path!r}: unknown component {comp!r}. Components are 'embed', 'pos_embed', "
                f"'L<layer>H<head>', 'mlp<layer>', 'resid', and under a head 'q', 'k', 'v'."
            )
        if point is None:  # the children of a head are its inputs
            if key[0] not in QKV:
                raise HypothesisError(
                    f"node {path!r}: the children of a head are its inputs 'q', 'k' and 'v' (which "
                    f"then name the components they read); {comp!r} is not one."
                )
            return (key[0], *parent.key[1:])  # ("k", layer, head)
        if key[0] in QKV:
            raise HypothesisError(
                f"node {path!r}: {comp!r} is a head's input and can only stand directly under a "
                f"head node such as 'L1H0'."
            )
        if key[0] == "output":
            raise HypothesisError(f"node {path!r}: 'output' can only be the root.")
        if key[0] == "resid":
            return key
        if key[0] in ("head", "mlp"):
            layer = key[1]
            if layer >= h.n_layers:
                raise HypothesisError(
                    f"node {path!r}: this model has no layer {layer} (layers 0..{h.n_layers - 1})."
                )
            if key[0] == "head" and key[2] >= h.n_heads:
                raise HypothesisError(
                    f"node {path!r}: layer {layer} has no head {key[2]} (heads 0..{h.n_heads - 1})."
                )
            if key[0] == "mlp" and self.attn_only:
                raise HypothesisError(f"node {path!r}: this model is attention-only; it has no MLPs.")
        if key not in self._point(point)[0]:
            reader = {"final": "the output", "attn_in": f"layer {point[-1]}'s attention",
                      "mlp_in": f"layer {point[-1]}'s MLP"}[point[0]]
            raise HypothesisError(
                f"node {path!r}: {comp} does not feed {reader} (a component only writes into the "
                f"residual stream of later layers)."
            )
        return key

    def _constant_on_classes(self, key: _Key, classes: _Classes) -> bool:
        """Whether a component's clean activation is the same for every prefix of each class
        (the token embedding under ``token``, the positional one under ``position``): then every
        draw gives the reference's own activation, and sampling can be skipped (exactly)."""
        comp = self.comp.get(key)
        if comp is None:
            return False
        cache_key = (key, id(classes))
        if cache_key not in self._constant:
            first = classes.order[classes.start_of]  # the first prefix of each prefix's class
            self._constant[cache_key] = bool(torch.equal(comp, comp[first]))
        return self._constant[cache_key]

    def _check_agreeing(self, classes: _Classes, feature: Feature, path: str, scored: bool) -> None:
        """The dataset-too-small check: enough agreeing inputs for every reference."""
        if (feature.fn, scored) in self._agreeing_ok:
            return
        refs = self.refs.to(self.device) if scored else torch.arange(len(classes.ids), device=self.device)
        sizes = classes.size[classes.ids[refs]]
        short = sizes < self.min_agreeing
        n_short = int(short.sum())
        if n_short:
            i = int(torch.nonzero(short)[0, 0])
            flat = int(refs[i])
            cls = int(classes.ids[flat])
            what = "scored predictions" if scored else "dataset prefixes it may have to resample"
            raise HypothesisError(
                f"node {path!r} (feature {feature.name!r}): the dataset is too small to resample "
                f"this node. It needs at least {self.min_agreeing} inputs agreeing on the feature "
                f"for each of the {len(refs)} {what}; {n_short} have fewer (e.g. input "
                f"#{flat // self.length} at position {flat % self.length}, value "
                f"{_short(classes.values[cls])}, {int(classes.size[cls])} agreeing). Pass more "
                f"inputs (now {self.n_inputs} inputs of {self.length} tokens), a coarser feature, or "
                f"min_agreeing=1."
            )
        self._agreeing_ok.add((feature.fn, scored))

    # ------------------------------------------------------------------ evaluation
    def _rows_factor(self, plan: _Plan) -> int:
        """How many activation rows one scored prediction costs at most under ``plan``."""
        kids = [*plan.children.values(), *([plan.rest] if plan.rest else [])]
        if plan.kind == "head" and not plan.whole:
            # every key position is a row, named input or not
            return max([self.length] + [self._rows_factor(c) * (1 if c.kind == "q" else self.length)
                                        for c in kids])
        return max([1] + [self._rows_factor(c) for c in kids])

    def _random(self, refs: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        return torch.randint(0, len(self.resid_final), refs.shape, generator=gen, device=refs.device)

    def _sample(self, plan: _Plan, refs: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        x = refs if plan.classes is None or plan.constant else plan.classes.sample(refs, gen)
        if self._trace is not None:
            self._trace.append((plan.path, refs, x))
        return x

    def _assemble(self, point: _Key, plan: _Plan, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """The residual stream read at ``point`` for references ``x``: the sum of its components,
        each evaluated on its own sample (named ones recursively, the others each on a random
        prefix, or all on one prefix agreeing on the ``resid`` node's feature). Components read
        from the cache are summed in one fused gather."""
        comps, bias = self._point(point)
        columns, random_offsets, recomputed = [], [], []
        if plan.rest is not None:  # every unnamed component at one prefix: one cached sum
            columns.append(self._sample(plan.rest, x, gen) + self._rest_offset(point, plan))
        for key in comps:
            child = plan.children.get(key)
            if child is None:
                if plan.rest is None:
                    random_offsets.append(self._offset[key])
            elif child.whole:
                columns.append(self._sample(child, x, gen) + self._offset[key])
            else:
                recomputed.append(self._component(child, x, gen))
        if random_offsets:  # each unnamed component at its own random prefix
            draws = torch.randint(0, len(self.resid_final), (len(x), len(random_offsets)),
                                  generator=gen, device=x.device)
            columns += list((draws + torch.tensor(random_offsets, device=x.device)).unbind(1))
        total = (self._gather_sum(columns) if columns else torch.zeros(len(x), len(bias), device=x.device)) + bias
        for value in recomputed:
            total += value
        return total

    def _rest_offset(self, point: _Key, plan: _Plan) -> int:
        """Where, in the stacked components, the sum of the components at ``point`` that
        ``plan`` does not name (what its ``resid`` child stands for) starts: computed once, at
        every prefix, and appended to the stack."""
        key = ("rest", point, tuple(sorted(plan.children, key=repr)))
        if key not in self._offset:
            total = torch.zeros_like(self.resid_final)
            for comp in self._point(point)[0]:
                if comp not in plan.children:
                    total += self.comp[comp]
            self._offset[key] = len(self._stack)
            self._stack = torch.cat([self._stack, total])
        return self._offset[key]

    def _component(self, plan: _Plan, refs: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """A recomputed component's activation for references ``refs`` under ``plan``."""
        x = self._sample(plan, refs, gen)
        if plan.kind == "head":
            return self._head(plan, x, gen)
        return self._mlp(plan.key[1], self._assemble(("mlp_in", plan.key[1]), plan, x, gen))

    def _head_input(self, head: _Plan, which: str, refs: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        layer = head.key[1]
        child = head.children.get((which, *head.key[1:]))
        if child is None:  # not named: the whole input from a random prefix
            return self.resid_pre[layer][self._random(refs, gen)]
        x = self._sample(child, refs, gen)
        if child.whole:
            return self.resid_pre[layer][x]
        return self._assemble(("attn_in", layer), child, x, gen)

    def _head(self, plan: _Plan, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """A head's output at prefixes ``x``, recomputed from treeified inputs: the query, and the
        key and the value at every key position of every prefix, are separately sampled rows.

        A head that occurs once in each prediction's tree (no key or value edge above it) shares
        its key and value rows between the predictions of one sequence: row ``j`` of sequence
        ``s`` is drawn once and read by every query of ``s`` at or after ``j``. Each prediction's
        own tree still has a separate draw per path, so its expected loss is unchanged (the
        draws are merely common to several predictions); the rows drop from one per (prediction,
        key) to one per (sequence, key).
        """
        P = self.length
        _, layer, head = plan.key
        pos = x % P
        seq = x // P
        j = torch.arange(int(pos.max()) + 1, device=x.device)
        valid = j[None, :] <= pos[:, None]  # [m, width]: the key positions of each query's prefix
        if plan.once and self.share_rows:
            uniq, inverse = torch.unique(seq, return_inverse=True)
            keys = (uniq[:, None] * P + j[None, :]).reshape(-1)  # every (sequence, key position)
            key_index = inverse[:, None] * len(j) + j[None, :]
        else:
            keys = (seq[:, None] * P + j[None, :])[valid]  # one row per (query, key position)
            key_index = torch.zeros(valid.shape, dtype=torch.long, device=x.device)
            key_index[valid] = torch.arange(len(keys), device=x.device)
        q_in = self._head_input(plan, "q", x, gen)
        k_in = self._head_input(plan, "k", keys, gen)
        v_in = self._head_input(plan, "v", keys, gen)
        return self._attend(layer, head, q_in, k_in, v_in, key_index, valid)

    def _evaluate_once(
        self, plan: _Plan, gen: torch.Generator, progress: dict[str, Any], job: Stamp
    ) -> Generator[dict[str, Any], None, float]:
        """Mean metric under ``plan`` for one seed, chunk by chunk (yields ``progress`` between
        chunks)."""
        refs = self.refs.to(self.device)
        targets = self.targets.to(self.device)
        chunk = max(1, min(self.max_rows // self._rows_factor(plan), (1 << 22) // self.handle.d_vocab))
        total = 0.0
        for start in range(0, len(refs), chunk):
            check_unchanged(job, "scrubbing", budget=JOB_BUDGET)
            r = refs[start:start + chunk]
            with torch.no_grad():
                resid = self.resid_final[r] if plan.whole else self._assemble(("final",), plan, r, gen)
                values = self._metric_values(self._unembed(resid), targets[start:start + chunk])
            total += float(values.sum())
            if start + chunk < len(refs):
                yield progress
        return total / len(refs)

    def evaluate_steps(
        self, hypothesis: Node, *, n_seeds: int | None = None, seed: int | None = None
    ) -> Generator[dict[str, Any], None, ScrubResult]:
        """:meth:`evaluate` as a generator of progress ``{done, total, message}`` (the widget runs
        it one step at a time, so a newer request or a cancel gets in between). A model changed
        while it runs stops it within a few steps (always before it returns) with
        :class:`~mechwidgets.errors.ModelChangedError`."""
        t0 = time.perf_counter()
        self._check_unhooked()
        self.refresh()
        job = self._stamp.fork()  # the model these runs are of, even if a click refreshes them
        n_seeds = self.n_seeds if n_seeds is None else _positive_int(n_seeds, "n_seeds")
        seed = self.seed if seed is None else int(seed)
        plan = self.compile(hypothesis)
        random_plan = _Plan(("output",), "output", whole=False)  # every path from a random input
        random_vals, scrubbed_vals = [], []
        for k in range(n_seeds):
            progress = {"done": k, "total": n_seeds, "message": f"scrubbing: seed {k + 1} of {n_seeds}"}
            yield progress
            gen_random = torch.Generator(device=self.device).manual_seed(_seed(seed, k, 0))
            gen_scrub = torch.Generator(device=self.device).manual_seed(_seed(seed, k, 1))
            random_vals.append((yield from self._evaluate_once(random_plan, gen_random, progress, job)))
            scrubbed_vals.append((yield from self._evaluate_once(plan, gen_scrub, progress, job)))
        check_unchanged(job, "scrubbing")
        rnd = torch.tensor(random_vals)
        scr = torch.tensor(scrubbed_vals)
        denom = rnd - self.clean_value
        frac = (rnd - scr) / torch.where(denom == 0, float("nan"), denom)
        return ScrubResult(
            clean=self.clean_value,
            random=float(rnd.mean()),
            scrubbed=float(scr.mean()),
            fraction=float(frac.mean()),
            fraction_std=float(frac.std()) if n_seeds > 1 else 0.0,
            random_per_seed=rnd,
            scrubbed_per_seed=scr,
            fraction_per_seed=frac,
            metric=self.metric_name,
            n_inputs=self.n_inputs,
            positions=list(self.positions),
            n_references=len(self.refs),
            hypothesis=hypothesis.copy(),
            seconds=time.perf_counter() - t0,
        )

    def evaluate(self, hypothesis: Node, *, n_seeds: int | None = None, seed: int | None = None) -> ScrubResult:
        """Scrub ``hypothesis``: the clean, random and scrubbed metric and the loss recovered."""
        return run_to_end(self.evaluate_steps(hypothesis, n_seeds=n_seeds, seed=seed))


def _positive_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise HypothesisError(f"{name} must be a positive integer, got {value!r}.")
    return value


def _seed(seed: int, k: int, stream: int) -> int:
    return (seed * 1_000_003 + k * 7_919 + stream * 104_729) % (2**63 - 1)


def _short(value: Any, n: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= n else text[: n - 1] + "…"


def induction_heads(
    model: Any, *, n: int = 8, half: int = 30, seed: int = 0, share: float = 0.5
) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """The previous-token heads and the induction heads of a model, by their head scores.

    Runs ``n`` sequences of ``half`` random tokens repeated once and scores every head as
    :func:`mechwidgets.analysis.head_scores` does (TransformerLens's head detector). Induction
    heads: heads of layer 1 and above scoring at least ``share`` of the best induction score;
    previous-token heads: heads below the first induction head's layer scoring at least ``share``
    of the best previous-token score there.

    Returns:
        ``(previous_token_heads, induction_heads)`` as lists of ``(layer, head)``.
    """
    from .attention import head_scores

    handle = ModelHandle.wrap(model)
    gen = torch.Generator().manual_seed(seed)
    bos = getattr(getattr(handle.model, "tokenizer", None), "bos_token_id", None)
    body = torch.randint(1, handle.d_vocab - 1, (n, half), generator=gen)
    toks = torch.cat([torch.full((n, 1), 0 if bos is None else int(bos)), body, body], 1)
    names = [handle.hook_name("pattern", layer) for layer in range(handle.n_layers)]
    with handle.session():
        _, cache = handle.run_with_cache(toks.to(handle.device), names)
    prev = torch.zeros(handle.n_layers, handle.n_heads)
    ind = torch.zeros(handle.n_layers, handle.n_heads)
    for i in range(n):
        pats = torch.stack([cache[name][i] for name in names]).float().cpu()
        scores = head_scores(pats, toks[i])
        prev += scores["previous_token"] / n
        ind += scores["induction"] / n
    ind[0] = 0.0  # an induction head needs an earlier previous-token head
    induction = [(int(l_), int(h)) for l_, h in (ind >= share * ind.max()).nonzero().tolist()]
    first = min(layer for layer, _ in induction)
    below = prev[:first]
    previous = [(int(l_), int(h)) for l_, h in (below >= share * below.max()).nonzero().tolist()]
    return previous, induction


def induction_hypothesis(
    previous: Sequence[tuple[int, int]],
    induction: Sequence[tuple[int, int]],
    *,
    refined: bool = True,
    key_feature: Any = "previous_token",
    n_heads: int | None = None,
) -> Node:
    """The induction circuit (Olsson et al., 2022) as a hypothesis, naive or refined.

    Naive (Redwood's first induction hypothesis): each induction head's query reads the current
    token's embedding, its key the previous-token heads with feature ``key_feature`` (the previous
    token), its value the embedding of the token at the key's position; nothing else matters.

    Refined (what scrubbing small trained models shows the circuit also needs, as Redwood's
    refinements did): the query also reads the position and, as they are, the earlier heads that
    are not previous-token heads, the rest of it depending on the position only; the key also
    reads the token and the position at the key, the rest of it depending on the position only;
    the rest of the value depends only on the token at the key's position.

    Args:
        previous, induction: ``(layer, head)`` pairs, e.g. from :func:`induction_heads`.
        refined: the refined hypothesis (default) or the naive one.
        key_feature: the previous-token heads' feature (``"identity"``: "as they are").
        n_heads: heads per layer (needed for the refined query; default: the largest head index
            seen plus one).
    """
    heads_per_layer = n_heads or 1 + max(h for _, h in [*previous, *induction])
    prev_set = set(previous)
    children = []
    for layer, head in induction:
        key_heads = [Node(f"L{pl}H{ph}", key_feature) for pl, ph in previous if pl < layer]
        if refined:
            others = [Node(f"L{ol}H{oh}") for ol in range(layer) for oh in range(heads_per_layer)
                      if (ol, oh) not in prev_set]
            q = [Node("embed", "token"), Node("pos_embed", "position"), *others, Node("resid", "position")]
            k = [*key_heads, Node("embed", "token"), Node("pos_embed", "position"), Node("resid", "position")]
            v = [Node("embed", "token"), Node("resid", "token")]
        else:
            q, k, v = [Node("embed", "token")], key_heads, [Node("embed", "token")]
        children.append(Node(f"L{layer}H{head}", children=[
            Node("q", children=q), Node("k", children=k), Node("v", children=v)]))
    return Node("output", children=children)


def scrub(
    model: Any,
    hypothesis: Node,
    dataset: Any,
    *,
    positions: Sequence[int] | None = None,
    metric: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    features: Mapping[str, Any] | Sequence[Any] | None = None,
    n_seeds: int = 5,
    seed: int = 0,
    min_agreeing: int = 2,
    max_inputs: int = 4096,
) -> ScrubResult:
    """Causal-scrub ``hypothesis`` on ``model`` over ``dataset`` (see the module docstring).

    Args:
        model: a TransformerLens ``HookedTransformer`` (3.x) or ``TransformerBridge`` (4.x).
        hypothesis: a :class:`Node` tree rooted at ``Node("output", ...)``.
        dataset: ``[n, pos]`` tokens, strings of one token length, or zoo task objects.
        positions: positions whose next-token prediction is scored (default: the repeated half
            of zoo induction sequences, else all but the last).
        metric: ``None`` (next-token loss) or ``metric(logits [m, d_vocab], targets [m]) -> [m]``.
        features: extra named features (``{name: fn}`` or ``Feature`` objects).
        n_seeds: seeds to average over (default 5); seed: the first seed.
        min_agreeing: minimum agreeing inputs per resampled prefix (default 2).
        max_inputs: refuse larger datasets (default 4096).

    Returns:
        A :class:`ScrubResult`.

    Raises:
        HypothesisError: a component the model lacks, a feature that raises or returns an
            unhashable value, a dataset too small to find agreeing inputs (the message names the
            node), or a model architecture the recomputation cannot mirror.
        PromptError: a malformed dataset. MetricError: a metric returning non-finite values.
    """
    scrubber = Scrubber(
        model, dataset, positions=positions, metric=metric, features=features, n_seeds=n_seeds,
        seed=seed, min_agreeing=min_agreeing, max_inputs=max_inputs,
    )
    return scrubber.evaluate(hypothesis)


__all__ = [
    "FEATURES",
    "Feature",
    "Node",
    "ScrubResult",
    "Scrubber",
    "dataset_tokens",
    "induction_heads",
    "induction_hypothesis",
    "resolve_feature",
    "scrub",
]
