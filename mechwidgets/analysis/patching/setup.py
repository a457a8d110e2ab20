"""What activation patching patches and measures: the components, the checked inputs (model,
prompts, component, direction), the metric with its answers and baselines, and the labelled
:class:`PatchingResult` grid. :mod:`.engines` computes the grids; the technique is described in
:mod:`mechwidgets.analysis.patching`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, TypedDict

import numpy as np
import torch
from jaxtyping import Float, Int

from ..._model import ModelHandle
from ...errors import AnswerError, ComponentError, PromptError
from ..metrics import Metric, MetricFn, normalize, resolve_metric

Direction = Literal["denoising", "noising"]
#: A prompt: text (BOS prepended) or token ids, ``[pos]`` or ``[1, pos]``.
Prompt = str | Int[torch.Tensor, " pos"] | Int[torch.Tensor, "1 pos"]
DIRECTIONS: tuple[str, ...] = ("denoising", "noising")


@dataclass(frozen=True)
class Component:
    """A patchable component: its hook (a :meth:`ModelHandle.hook_name` kind) and grid axes."""

    name: str
    hook: str  # ModelHandle.hook_name kind
    axes: tuple[str, ...]
    what: str

    @property
    def per_head(self) -> bool:
        return "head" in self.axes

    @property
    def by_pos(self) -> bool:
        return "pos" in self.axes


def _components() -> dict[str, Component]:
    comps = [
        Component(
            "resid_pre", "resid_pre", ("layer", "pos"), "the residual stream entering each block"
        ),
        Component(
            "resid_mid",
            "resid_mid",
            ("layer", "pos"),
            "the residual stream between attention and MLP",
        ),
        Component("attn_out", "attn_out", ("layer", "pos"), "each attention layer's output"),
        Component("mlp_out", "mlp_out", ("layer", "pos"), "each MLP layer's output"),
    ]
    for name, hook, what in [
        ("head_out", "z", "output (z, before W_O)"),
        ("head_q", "q", "queries"),
        ("head_k", "k", "keys"),
        ("head_v", "v", "values"),
        ("head_pattern", "pattern", "attention pattern"),
    ]:
        comps.append(
            Component(name, hook, ("layer", "head"), f"each head's {what} at all positions")
        )
        by = "destination position" if hook == "pattern" else "position"
        comps.append(
            Component(
                f"{name}_by_pos", hook, ("layer", "head", "pos"), f"each head's {what} at each {by}"
            )
        )
    return {c.name: c for c in comps}


#: The components that can be patched, with their grid axes.
COMPONENTS: dict[str, Component] = _components()


@dataclass
class PatchingResult:
    """A grid of patching results, with what is needed to read and draw it.

    Attributes:
        values: the grid, float32 on the CPU: ``[layer, pos]``, ``[layer, head]`` or
            ``[layer, head, pos]`` (see ``axes``). Normalised unless ``normalized`` is False:
            0 = the run being patched, 1 = the other run.
        axes: the names of the grid's axes, e.g. ``("layer", "head")``.
        labels: a label per index of each axis: ``labels["layer"] == ["L0", "L1", ...]``,
            ``labels["head"] == ["H0", ...]`` (``"KV0"``... for keys/values under grouped-query
            attention), ``labels["pos"]`` the clean str tokens with position (``"3: ' John'"``,
            and ``"→ ' Mary'"`` added where the corrupted token differs).
        component: what was patched (a key of :data:`COMPONENTS`), ``hook_names`` where.
        patched: one sentence saying what was patched into which run.
        direction: ``"denoising"`` (clean activations into the corrupted run) or ``"noising"``.
        method: ``"activation"`` (exact) or ``"attribution"`` (gradient approximation).
        metric / metric_description: the metric's name and what it measures.
        normalized: whether ``values`` is normalised.
        clean_value / corrupted_value: the metric on the unpatched clean and corrupted runs.
        answer / wrong_answer: token ids the metric reads (None where it reads none), with
            ``answer_str`` / ``wrong_answer_str``.
        clean_tokens / corrupted_tokens: ``[pos]`` token ids; ``clean_str_tokens`` /
            ``corrupted_str_tokens``; ``differing_positions`` where they differ.
        notes: choices made for the user (default answers...), in words.
    """

    values: Float[torch.Tensor, "..."]
    axes: tuple[str, ...]
    labels: dict[str, list[str]]
    component: str
    hook_names: list[str]
    patched: str
    direction: str
    method: str
    metric: str
    metric_description: str
    normalized: bool
    clean_value: float
    corrupted_value: float
    answer: int | None
    wrong_answer: int | None
    answer_str: str | None
    wrong_answer_str: str | None
    clean_tokens: Int[torch.Tensor, " pos"]
    corrupted_tokens: Int[torch.Tensor, " pos"]
    clean_str_tokens: list[str]
    corrupted_str_tokens: list[str]
    differing_positions: list[int]
    notes: list[str] = field(default_factory=list)

    @property
    def baseline(self) -> float:
        """The raw metric of the run being patched (normalised value 0)."""
        return self.corrupted_value if self.direction == "denoising" else self.clean_value

    @property
    def target(self) -> float:
        """The raw metric of the other run (normalised value 1)."""
        return self.clean_value if self.direction == "denoising" else self.corrupted_value

    def top(self, k: int = 10) -> list[tuple[str, float]]:
        """The ``k`` cells with the largest absolute value, as ``("L3 H7", value)``."""
        flat = self.values.flatten()
        order = flat.abs().argsort(descending=True)[:k]
        out = []
        for i in order.tolist():
            index = np.unravel_index(i, tuple(self.values.shape))
            name = " ".join(self.labels[a][int(j)] for a, j in zip(self.axes, index, strict=True))
            out.append((name, float(flat[i])))
        return out


# ---------------------------------------------------------------------------- set-up
def wrap_model(model: Any) -> ModelHandle:
    """A handle for ``model``; models without a tokenizer are accepted (token tensors only)."""
    return ModelHandle.wrap_token_ids(model)


def get_component(handle: ModelHandle, component: str) -> Component:
    """Validate ``component=`` for this model."""
    if not isinstance(component, str) or component not in COMPONENTS:
        raise ComponentError(
            f"unknown component {component!r}: use one of {list(COMPONENTS)} (per [layer, pos]: "
            f"resid_pre, resid_mid, attn_out, mlp_out; per [layer, head]: head_out, head_q, "
            f"head_k, head_v, head_pattern; add _by_pos for [layer, head, pos])."
        )
    comp = COMPONENTS[component]
    cfg = handle.cfg
    if getattr(cfg, "attn_only", False) and comp.hook in ("mlp_out", "resid_mid"):
        raise ComponentError(
            f"this model is attention-only: it has no MLPs, so no {comp.hook!r}. Patch "
            f"'resid_pre', 'attn_out' or a head component instead."
        )
    if getattr(cfg, "parallel_attn_mlp", False) and comp.hook == "resid_mid":
        raise ComponentError(
            "this model runs attention and MLP in parallel (both read resid_pre), so it has no "
            "'resid_mid'. Patch 'resid_pre', 'attn_out' or 'mlp_out' instead."
        )
    for layer in range(handle.n_layers):
        handle.hook_name(comp.hook, layer)
    return comp


def check_direction(direction: str) -> str:
    if direction not in DIRECTIONS:
        raise ComponentError(
            f"unknown direction {direction!r}: use 'denoising' (run the corrupted prompt, patch "
            f"in clean activations: what is sufficient) or 'noising' (run the clean prompt, "
            f"patch in corrupted activations: what is necessary)."
        )
    return direction


def token_pair(
    handle: ModelHandle, clean: Prompt, corrupted: Prompt
) -> tuple[torch.Tensor, torch.Tensor]:
    """Tokenise both prompts (``[1, pos]`` each) and check they line up one-for-one."""
    toks = []
    for prompt, what in ((clean, "clean prompt"), (corrupted, "corrupted prompt")):
        toks.append(handle.tokens(prompt, what=what))
    a, b = toks
    check_same_length(handle, a, b)
    return a, b


class PatchOptions(TypedDict, total=False):
    """The keyword arguments activation and attribution patching share, passed through to
    :func:`prepare`, which declares their defaults (documented on
    :func:`~mechwidgets.analysis.patching.activation_patch`)."""

    metric: str | MetricFn
    direction: Direction
    answer: str | int | None
    wrong_answer: str | int | None
    normalize: bool


def prepare(
    model: Any,
    clean: Prompt,
    corrupted: Prompt,
    component: str,
    *,
    metric: str | MetricFn = "logit_diff",
    direction: str = "denoising",
    answer: str | int | None = None,
    wrong_answer: str | int | None = None,
    normalize: bool = True,
) -> Prepared:
    """Check what activation and attribution patching share (model, prompts of the same token
    length, component, direction) and tokenise the prompts; the metric and the answers are
    resolved from the runs' logits by :meth:`Prepared.measure`."""
    handle = wrap_model(model)
    comp = get_component(handle, component)
    check_direction(direction)
    clean_tokens, corrupted_tokens = token_pair(handle, clean, corrupted)
    return Prepared(
        handle, comp, direction, clean_tokens, corrupted_tokens, metric, (answer, wrong_answer), normalize
    )


def check_same_length(handle: ModelHandle, a: torch.Tensor, b: torch.Tensor) -> None:
    """Raise a :class:`PromptError` naming where they differ unless ``[1, pos]`` ``a`` and ``b``
    have the same number of tokens."""
    if a.shape[1] != b.shape[1]:
        n = min(a.shape[1], b.shape[1])
        differ = [i for i in range(n) if int(a[0, i]) != int(b[0, i])]
        raise PromptError(
            f"the clean prompt is {a.shape[1]} tokens and the corrupted prompt {b.shape[1]}: "
            f"patching swaps activations position by position, so both need the same number "
            f"of tokens. Within the first {n} positions they differ at {differ or 'none'}; "
            f"positions {n}.. exist in only one. Clean tokens: {handle.str_tokens(a)}; "
            f"corrupted tokens: {handle.str_tokens(b)}. Reword one of them so the tokens line "
            f"up (e.g. swap a name for another single-token name)."
        )


#: How many answer tokens each named metric reads (answer, then wrong_answer).
NEEDS_ANSWER = {"logit_diff": 2, "logprob": 1, "prob": 1}


def choose_metric(
    handle: ModelHandle,
    metric: str | MetricFn,
    clean_logits: torch.Tensor,
    corrupted_logits: torch.Tensor,
    answer: str | int | None,
    wrong_answer: str | int | None,
) -> tuple[Metric, int | None, int | None, list[str]]:
    """Resolve the metric and its answers from the runs' last-position logits (``[d_vocab]``).

    Answers default to the clean run's top token and the corrupted run's top token; where these
    coincide the wrong answer is the clean run's next most likely token (and a note says so).
    """
    needs = NEEDS_ANSWER.get(metric, 0) if isinstance(metric, str) else 0
    notes: list[str] = []
    a = w = None
    clean_order = clean_logits.float().argsort(descending=True)
    if needs or answer is not None:
        if answer is None:
            a = int(clean_order[0])
            notes.append(f"answer defaulted to the clean run's top token {handle.token_str(a)!r}.")
        else:
            a = handle.single_token(answer, what="answer")
    if needs == 2 or wrong_answer is not None:
        if wrong_answer is None:
            w = int(corrupted_logits.float().argmax())
            if w == a:
                w = next(int(t) for t in clean_order[:2] if int(t) != a)
                notes.append(
                    f"the corrupted run's top token is the answer {handle.token_str(a)!r} too, so "
                    f"wrong_answer defaulted to the clean run's next most likely token "
                    f"{handle.token_str(w)!r}; pass wrong_answer= to choose."
                )
            else:
                notes.append(
                    f"wrong_answer defaulted to the corrupted run's top token {handle.token_str(w)!r}."
                )
        else:
            w = handle.single_token(wrong_answer, what="wrong answer")
            if w == a:
                how = (
                    "" if answer is not None else " (answer defaulted to the clean run's top token)"
                )
                raise AnswerError(
                    f"answer{how} and wrong_answer are the same token {handle.token_str(w)!r} (id {w}): "
                    f"a logit difference of a token with itself is always 0. Pass two different "
                    f"tokens, e.g. the clean and the corrupted prompt's correct answers."
                )
    resolved = resolve_metric(
        metric,
        answer=a,
        wrong_answer=w,
        clean_logits=clean_logits,
        token_str=handle.token_str,
    )
    return resolved, a, w, notes


def metric_values(metric: Metric, logits: torch.Tensor) -> torch.Tensor:
    """The metric on full ``[batch, d_vocab]`` logits."""
    cols = logits if metric.columns is None else logits[:, list(metric.columns)]
    return metric(cols)


@dataclass(frozen=True)
class Baselines:
    """The metric resolved for one prompt pair, with its answers and its value on both runs.

    Attributes:
        metric: the resolved :class:`~mechwidgets.analysis.metrics.Metric`.
        answer / wrong_answer: the token ids it reads (None where it reads none).
        notes: choices made for the user (default answers), in words.
        clean_value / corrupted_value: the metric on the unpatched clean and corrupted runs.
    """

    metric: Metric
    answer: int | None
    wrong_answer: int | None
    notes: list[str]
    clean_value: float
    corrupted_value: float


@dataclass(frozen=True)
class Prepared:
    """A checked patching problem, shared by activation and attribution patching (built by
    :func:`prepare`): the model's handle, the component, the direction, both prompts' ``[1, pos]``
    tokens (same length), and the metric, answers and normalisation as given."""

    handle: ModelHandle
    comp: Component
    direction: str
    clean_tokens: torch.Tensor
    corrupted_tokens: torch.Tensor
    metric: str | MetricFn
    answers: tuple[str | int | None, str | int | None]  # as given: answer, wrong_answer
    normalize: bool

    @property
    def denoising(self) -> bool:
        return self.direction == "denoising"

    @property
    def base_tokens(self) -> torch.Tensor:
        """The run being patched: the corrupted one for denoising, the clean one for noising."""
        return self.corrupted_tokens if self.denoising else self.clean_tokens

    @property
    def source_tokens(self) -> torch.Tensor:
        """The run whose activations are patched in."""
        return self.clean_tokens if self.denoising else self.corrupted_tokens

    def measure(
        self, clean_logits: torch.Tensor, corrupted_logits: torch.Tensor
    ) -> tuple[Baselines, torch.Tensor]:
        """Resolve the metric and its answers from both runs' ``[1, d_vocab]`` last-position
        logits (see :func:`choose_metric`); returns the baselines and the metric of both runs as
        a ``[2]`` tensor (clean, corrupted) that keeps the logits' autograd graph."""
        resolved, a, w, notes = choose_metric(
            self.handle, self.metric, clean_logits[0].detach(), corrupted_logits[0].detach(),
            *self.answers,
        )
        values = metric_values(resolved, torch.cat([clean_logits, corrupted_logits]))
        clean_value, corrupted_value = values.detach().tolist()
        return Baselines(resolved, a, w, notes, clean_value, corrupted_value), values

    def result(self, values: torch.Tensor, *, method: str, baselines: Baselines) -> PatchingResult:
        """Normalise (if asked) and label a raw grid."""
        handle, comp, direction, m = self.handle, self.comp, self.direction, baselines
        normalized = self.normalize
        base, other = (
            (m.corrupted_value, m.clean_value) if self.denoising else (m.clean_value, m.corrupted_value)
        )
        values = values.float().cpu()
        if normalized:
            values = normalize(values, base, other, metric=f"metric {m.metric.name!r}")
        clean_tokens, corrupted_tokens = self.clean_tokens, self.corrupted_tokens
        clean_str, corr_str = handle.str_tokens(clean_tokens), handle.str_tokens(corrupted_tokens)
        differ = [
            i
            for i, (a, b) in enumerate(
                zip(clean_tokens[0].tolist(), corrupted_tokens[0].tolist(), strict=True)
            )
            if a != b
        ]
        kv = comp.hook in ("k", "v") and handle.n_kv_heads != handle.n_heads
        if kv:
            group = handle.n_heads // handle.n_kv_heads
            heads = [f"KV{g} (H{g * group}-H{(g + 1) * group - 1})" for g in range(handle.n_kv_heads)]
        else:
            heads = [f"H{h}" for h in range(handle.n_heads)]
        pos = [
            f"{i}: {c!r}" + (f" → {k!r}" if i in differ else "")
            for i, (c, k) in enumerate(zip(clean_str, corr_str, strict=True))
        ]
        labels = {"layer": [f"L{layer}" for layer in range(handle.n_layers)], "head": heads, "pos": pos}
        src, dst = ("clean", "corrupted") if direction == "denoising" else ("corrupted", "clean")
        meaning = (
            "restores the clean behaviour" if direction == "denoising" else "breaks the clean behaviour"
        )
        patched = (
            f"{src} activations of {COMPONENTS[comp.name].what} ({comp.name}) patched into the {dst} "
            f"run ({direction}"
            + (f"; 1 = this component alone {meaning}" if normalized else "; raw metric")
            + (", estimated by attribution patching" if method == "attribution" else "")
            + ")."
        )
        return PatchingResult(
            values=values,
            axes=comp.axes,
            labels={a: labels[a] for a in comp.axes},
            component=comp.name,
            hook_names=[handle.hook_name(comp.hook, layer) for layer in range(handle.n_layers)],
            patched=patched,
            direction=direction,
            method=method,
            metric=m.metric.name,
            metric_description=m.metric.description,
            normalized=normalized,
            clean_value=m.clean_value,
            corrupted_value=m.corrupted_value,
            answer=m.answer,
            wrong_answer=m.wrong_answer,
            answer_str=None if m.answer is None else handle.token_str(m.answer),
            wrong_answer_str=None if m.wrong_answer is None else handle.token_str(m.wrong_answer),
            clean_tokens=clean_tokens[0].cpu(),
            corrupted_tokens=corrupted_tokens[0].cpu(),
            clean_str_tokens=clean_str,
            corrupted_str_tokens=corr_str,
            differing_positions=differ,
            notes=list(m.notes),
        )




__all__ = [
    "COMPONENTS",
    "DIRECTIONS",
    "Baselines",
    "Component",
    "Direction",
    "PatchOptions",
    "PatchingResult",
    "Prepared",
    "Prompt",
]
