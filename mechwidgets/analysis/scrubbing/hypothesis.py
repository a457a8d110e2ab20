"""What a causal-scrubbing hypothesis is made of: features, the tree of nodes, and its result.

A :class:`HypothesisNode` names a model component and a :class:`Feature` (what the component's
activation depends on); a tree of them rooted at ``HypothesisNode("output", ...)`` is a
hypothesis (see :mod:`mechwidgets.analysis.scrubbing`). :class:`ScrubResult` holds what scrubbing
one hypothesis gives.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from jaxtyping import Float

from ..._fingerprint import Fingerprint
from ...errors import HypothesisError

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

@dataclass
class HypothesisNode:
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
    children: list[HypothesisNode] = field(default_factory=list)
    kept: bool = True

    def __post_init__(self) -> None:
        self.children = list(self.children)

    def walk(self, prefix: str = "") -> Iterator[tuple[str, HypothesisNode]]:
        """``(path, node)`` for this node and every descendant, depth first; paths look like
        ``"output/L1H2/k/L0H2"``."""
        path = f"{prefix}/{self.component}" if prefix else self.component
        yield path, self
        for child in self.children:
            yield from child.walk(path)

    def find(self, path: str) -> HypothesisNode:
        """The node at ``path`` (as :meth:`walk` names it)."""
        for p, node in self.walk():
            if p == path:
                return node
        paths = [p for p, _ in self.walk()]
        raise HypothesisError(f"no node {path!r} in the hypothesis; its nodes are {paths}.")

    def copy(self) -> HypothesisNode:
        """A deep copy of the tree (features are shared, not copied)."""
        return HypothesisNode(self.component, self.feature, [c.copy() for c in self.children], self.kept)

    def with_changes(self, path: str, *, kept: bool | None = None, feature: Any = None) -> HypothesisNode:
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
    """The outcome of scrubbing one hypothesis (each attribute is documented where declared)."""

    #: the metric (mean next-token loss by default) on the clean data
    clean: float
    #: with every path resampled at random (mean over seeds)
    random: float
    #: under the hypothesis (mean over seeds)
    scrubbed: float
    #: mean over seeds of ``(random - scrubbed) / (random - clean)``: 1 when the hypothesis
    #: explains all of the loss, 0 when it explains none of it (NaN when random equals clean)
    fraction: float
    #: standard deviation over seeds of that fraction (0 with one seed)
    fraction_std: float
    #: ``[3, n_seeds]``: ``random``, ``scrubbed`` and ``fraction`` of each seed (also as
    #: :attr:`random_per_seed`, :attr:`scrubbed_per_seed`, :attr:`fraction_per_seed`)
    per_seed: Float[torch.Tensor, "3 seed"]
    #: the metric's name (``"loss"`` by default)
    metric: str
    #: sequences in the dataset
    n_inputs: int
    #: the positions whose output is measured
    positions: list[int]
    #: predictions scored: ``n_inputs * len(positions)``
    n_references: int
    #: a copy of the hypothesis evaluated
    hypothesis: HypothesisNode
    #: wall time of the evaluation
    seconds: float = 0.0
    #: the model the numbers are of (see :meth:`Scrubber.is_current
    #: <mechwidgets.analysis.scrubbing.Scrubber.is_current>`)
    fingerprint: Fingerprint | None = field(default=None, repr=False, compare=False)

    @property
    def random_per_seed(self) -> Float[torch.Tensor, " seed"]:
        return self.per_seed[0]

    @property
    def scrubbed_per_seed(self) -> Float[torch.Tensor, " seed"]:
        return self.per_seed[1]

    @property
    def fraction_per_seed(self) -> Float[torch.Tensor, " seed"]:
        return self.per_seed[2]

    def summary(self) -> str:
        return (
            f"{self.metric}: clean {self.clean:.3f}, scrubbed {self.scrubbed:.3f}, random "
            f"{self.random:.3f}; loss recovered {100 * self.fraction:.1f}% "
            f"± {100 * self.fraction_std:.1f}% ({len(self.fraction_per_seed)} seeds, "
            f"{self.n_references} predictions)"
        )

