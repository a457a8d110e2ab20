"""From a hypothesis to a plan: features evaluated on the dataset's prefixes (equivalence
classes for sampling), and the hypothesis checked against the model and compiled into a tree of
:class:`_Plan` nodes that :class:`~mechwidgets.analysis.scrubbing.Scrubber` evaluates.

:class:`_Planner` is the part of the ``Scrubber`` that does this (a mixin: the attributes it
reads are set by ``Scrubber.__init__`` and the clean run).
"""

from __future__ import annotations

import re
from collections.abc import Hashable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from ..._model import ModelHandle
from ...errors import HypothesisError
from .hypothesis import Feature, HypothesisNode, Prefix, resolve_feature

_HEAD_RE = re.compile(r"^L(\d+)H(\d+)$")
_MLP_RE = re.compile(r"^mlp(\d+)$")
QKV = ("q", "k", "v")


# ------------------------------------------------------------------------------------------------
# Plans


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



class _Planner:
    """Features, equivalence classes and compiling: the planning half of a ``Scrubber``."""

    handle: ModelHandle
    device: torch.device
    tokens: torch.Tensor
    n_inputs: int
    length: int
    refs: torch.Tensor
    min_agreeing: int
    attn_only: bool
    comp: dict[_Key, torch.Tensor]
    feature_table: dict[str, Feature]
    _names: dict[Any, str]
    _classes: dict[Any, _Classes]
    _prefixes: list[Prefix] | None
    _points: dict[_Key, tuple[list[_Key], torch.Tensor]]
    _agreeing_ok: set[tuple[Any, bool]]
    _constant: dict[tuple[_Key, int], bool]

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

    def with_states(
        self, hypothesis: HypothesisNode, nodes: Mapping[str, Any]
    ) -> tuple[HypothesisNode, list[tuple[str, str]]]:
        """A copy of ``hypothesis`` with ``{path: {"kept": bool, "feature": spec}}`` applied (a
        missing or ``None`` entry leaves that part as it is), and the changes it makes, as
        ``(path, "kept → resampled")`` or ``(path, "feature token → position")`` pairs. The
        copy is checked when it is compiled (:meth:`compile`)."""
        if not isinstance(nodes, Mapping):
            raise HypothesisError(f"nodes must map node paths to {{kept, feature}}; got {nodes!r}.")
        tree = hypothesis.copy()
        changes = []
        for path, state in nodes.items():
            if not isinstance(state, Mapping):
                raise HypothesisError(f"node {path!r}: expected {{kept, feature}}; got {state!r}.")
            node = tree.find(str(path))
            kept = state.get("kept")
            if kept is not None and bool(kept) != node.kept:
                node.kept = bool(kept)
                changes.append((str(path), "resampled → kept" if node.kept else "kept → resampled"))
            feature = state.get("feature")
            if feature is not None:
                old = self.feature(node.feature).name
                new = self.feature(feature, where=f"node {path!r}: ").name
                if new != old:
                    node.feature = feature
                    changes.append((str(path), f"feature {old} → {new}"))
        return tree, changes

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


    # ------------------------------------------------------------------ compiling
    def check(self, hypothesis: HypothesisNode) -> None:
        """Validate a hypothesis (every node, kept or not) and evaluate its active features."""
        self.compile(hypothesis)

    def compile(self, hypothesis: HypothesisNode) -> _Plan:
        """Validate ``hypothesis`` against the model and dataset, and compile its kept part."""
        if not isinstance(hypothesis, HypothesisNode):
            raise HypothesisError(
                f"a hypothesis is a tree of HypothesisNode objects with HypothesisNode('output', ...) at the root; "
                f"got {type(hypothesis).__name__}."
            )
        if hypothesis.component != "output":
            raise HypothesisError(
                f"the root of a hypothesis is HypothesisNode('output', children=[...]), the output being "
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
        self, node: HypothesisNode, plan: _Plan, point: _Key | None, *, active: bool, scored: bool
    ) -> None:
        """Check and compile ``node``'s children into ``plan``.

        ``point`` is the residual stream they write into (None under a head: q, k, v).
        ``scored``: the children's references are exactly the scored predictions (used to
        check agreeing inputs only where they are needed).
        """
        seen: set[str] = set()
        for child in node.children:
            if not isinstance(child, HypothesisNode):
                raise HypothesisError(f"node {plan.path!r}: children must be HypothesisNode objects, got {child!r}.")
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



def _short(value: Any, n: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= n else text[: n - 1] + "…"
