"""Activation patching: which activations carry the behaviour from one prompt to another.

Take two prompts of the same token length that differ in a detail the model's answer depends on:
a *clean* one ("When Mary and John went to the store, John gave a drink to" → " Mary") and a
*corrupted* one (" Mary" and " John" swapped in one place). Run the model on one of them and swap
in a single activation (a layer's residual stream at one position, one attention head's output...)
from the run on the other, then measure how far the answer moves (Vig et al. 2020; Meng et al.
2022, "causal tracing"; Wang et al. 2022). Repeating this for every layer, position or head gives
a map of where the information the answer depends on lives.

Two directions, which answer different questions (Heimersheim & Nanda 2024, "How to use and
interpret activation patching"):

- **denoising** (the default; TransformerLens's ``get_act_patch_*`` functions do this): run the
  *corrupted* prompt and patch in *clean* activations. A high value means the activation is
  *sufficient*: on its own it restores the clean behaviour.
- **noising**: run the *clean* prompt and patch in *corrupted* activations. A high value means
  the activation is *necessary*: replacing it alone breaks the behaviour.

The value of each patched run is a metric of its last-position logits (see
:mod:`mechwidgets.analysis.metrics`; the logit difference between the right and the wrong answer
by default), normalised so that 0 is the run being patched and 1 the other run: 1 always means
"this component alone does the whole job" (restores for denoising, breaks for noising).
Values outside [0, 1] are real: a component can overshoot, or push the other way.

Components (``component=``): the residual stream before a block (``resid_pre``), between attention
and MLP (``resid_mid``), and the attention and MLP outputs (``attn_out``, ``mlp_out``), each per
``[layer, pos]``; per head ``[layer, head]`` over all positions the head's output ``z``
(``head_out``), queries (``head_q``), keys (``head_k``), values (``head_v``) or attention pattern
(``head_pattern``); and the same heads per position, ``[layer, head, pos]`` (``head_out_by_pos``,
...; for the pattern, the destination position). Under grouped-query attention keys and values
are per key/value head, so their grids have ``n_key_value_heads`` heads, as in TransformerLens.

How it is computed, exactly (every value equals TransformerLens's one-forward-per-cell
``transformer_lens.patching`` result to float precision) but with much less work:

- a cell whose clean and corrupted activations are identical is a no-op: its value is the
  baseline, with no forward (this covers every position before the first token that differs,
  and at layer 0 every position whose token is the same in both prompts);
- a patch at layer ``L`` and position ``p`` changes nothing before layer ``L`` nor, since
  attention is causal, at any position before ``p``: the patched runs start at layer ``L`` from
  the cached residual and compute only positions ``p..``, reading the keys and values of earlier
  positions from the cached run; they are batched, many patches per forward;
- a head's output enters the residual stream as ``z_h W_O[h]``, so a patched head needs no
  attention recomputed: the run starts at that layer's MLP;
- in the last layer only the last position's query, attention and MLP are computed, and the
  metric reads only the columns of ``W_U`` it needs (two for a logit difference); a patch there
  that changes only other positions (e.g. ``attn_out`` at an earlier position) is a no-op;
- a residual-stream patch that leaves the patched run's residual equal to the other run's at
  every position is the other run: its value is the other baseline.

Where the model is not a TransformerLens 3.x ``HookedTransformer`` of a supported kind (e.g. a 4.x
``TransformerBridge``), the same results come from batched hooked forward passes.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from jaxtyping import Float, Int

from .._args import is_int
from .._model import ModelHandle
from ..errors import AnswerError, ComponentError, PromptError
from .metrics import Metric, MetricFn, normalize, resolve_metric

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
        if isinstance(prompt, str) and getattr(handle.model, "tokenizer", None) is None:
            raise PromptError(
                f"the model has no tokenizer, so the {what} must be a token tensor, not text: "
                f"pass e.g. torch.tensor([...]) or attach a tokenizer to the model."
            )
        toks.append(handle.tokens(prompt, what=what))
    a, b = toks
    check_same_length(handle, a, b)
    return a, b


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
            f"positions {n}.. exist in only one. Clean tokens: {str_tokens(handle, a)}; "
            f"corrupted tokens: {str_tokens(handle, b)}. Reword one of them so the tokens line "
            f"up (e.g. swap a name for another single-token name)."
        )


def str_tokens(handle: ModelHandle, tokens: torch.Tensor) -> list[str]:
    if getattr(handle.model, "tokenizer", None) is None:
        return [f"#{int(t)}" for t in tokens.flatten()]
    return handle.str_tokens(tokens)


def token_str(handle: ModelHandle, token: int) -> str:
    if getattr(handle.model, "tokenizer", None) is None:
        return f"#{int(token)}"
    return handle.token_str(token)


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
            notes.append(f"answer defaulted to the clean run's top token {token_str(handle, a)!r}.")
        else:
            a = handle.single_token(answer, what="answer")
    if needs == 2 or wrong_answer is not None:
        if wrong_answer is None:
            w = int(corrupted_logits.float().argmax())
            if w == a:
                w = next(int(t) for t in clean_order[:2] if int(t) != a)
                notes.append(
                    f"the corrupted run's top token is the answer {token_str(handle, a)!r} too, so "
                    f"wrong_answer defaulted to the clean run's next most likely token "
                    f"{token_str(handle, w)!r}; pass wrong_answer= to choose."
                )
            else:
                notes.append(
                    f"wrong_answer defaulted to the corrupted run's top token {token_str(handle, w)!r}."
                )
        else:
            w = handle.single_token(wrong_answer, what="wrong answer")
            if w == a:
                how = (
                    "" if answer is not None else " (answer defaulted to the clean run's top token)"
                )
                raise AnswerError(
                    f"answer{how} and wrong_answer are the same token {token_str(handle, w)!r} (id {w}): "
                    f"a logit difference of a token with itself is always 0. Pass two different "
                    f"tokens, e.g. the clean and the corrupted prompt's correct answers."
                )
    resolved = resolve_metric(
        metric,
        answer=a,
        wrong_answer=w,
        clean_logits=clean_logits,
        token_str=lambda t: token_str(handle, t),
    )
    return resolved, a, w, notes


def metric_values(metric: Metric, logits: torch.Tensor) -> torch.Tensor:
    """The metric on full ``[batch, d_vocab]`` logits."""
    cols = logits if metric.columns is None else logits[:, list(metric.columns)]
    return metric(cols)


def make_result(
    handle: ModelHandle,
    comp: Component,
    values: torch.Tensor,
    *,
    direction: str,
    method: str,
    metric: Metric,
    normalized: bool,
    clean_value: float,
    corrupted_value: float,
    answer: int | None,
    wrong_answer: int | None,
    clean_tokens: torch.Tensor,
    corrupted_tokens: torch.Tensor,
    notes: list[str],
) -> PatchingResult:
    """Normalise (if asked) and label a raw grid."""
    base, other = (
        (corrupted_value, clean_value)
        if direction == "denoising"
        else (clean_value, corrupted_value)
    )
    values = values.float().cpu()
    if normalized:
        values = normalize(values, base, other, metric=f"metric {metric.name!r}")
    clean_str, corr_str = str_tokens(handle, clean_tokens), str_tokens(handle, corrupted_tokens)
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
        metric=metric.name,
        metric_description=metric.description,
        normalized=normalized,
        clean_value=clean_value,
        corrupted_value=corrupted_value,
        answer=answer,
        wrong_answer=wrong_answer,
        answer_str=None if answer is None else token_str(handle, answer),
        wrong_answer_str=None if wrong_answer is None else token_str(handle, wrong_answer),
        clean_tokens=clean_tokens[0].cpu(),
        corrupted_tokens=corrupted_tokens[0].cpu(),
        clean_str_tokens=clean_str,
        corrupted_str_tokens=corr_str,
        differing_positions=differ,
        notes=notes,
    )


# ---------------------------------------------------------------------------- cells
def grid_shape(handle: ModelHandle, comp: Component, n_pos: int) -> tuple[int, ...]:
    n_heads = handle.n_kv_heads if comp.hook in ("k", "v") else handle.n_heads
    sizes = {"layer": handle.n_layers, "head": n_heads, "pos": n_pos}
    return tuple(sizes[a] for a in comp.axes)


def cell_index(comp: Component, head: int, pos: int) -> tuple[Any, ...]:
    """Where a cell sits in one run's activation at its hook (batch axis dropped)."""
    if comp.hook == "pattern":  # [head, dest, src]
        return (head, pos) if comp.by_pos else (head,)
    if comp.per_head:  # [pos, head, d_head]
        return (pos, head) if comp.by_pos else (slice(None), head)
    return (pos,)  # [pos, d_model]


@dataclass
class _Cell:
    flat: int  # index into values.flatten()
    layer: int
    index: tuple[Any, ...]  # into the activation at this layer's hook (no batch axis)
    pos: int  # first position whose residual the patch can change


#: Components whose patch, within its block, changes only the residual at the patched positions
#: (unlike resid_pre, keys and values, which later positions attend to).
POSITION_LOCAL = ("resid_mid", "attn_out", "mlp_out", "z", "q", "pattern")


def cells_to_run(
    comp: Component,
    shape: tuple[int, ...],
    base: dict[str, torch.Tensor],
    source: dict[str, torch.Tensor],
    names: list[str],
) -> tuple[list[_Cell], list[int], list[int]]:
    """Split the grid into cells to compute, no-ops (value = baseline) and, for residual-stream
    patches that turn the run being patched into the other run, full restores (value = target).

    A patch is a no-op where the two runs' activations are equal there, and in the last block
    where it only changes positions other than the last (the only one the metric reads)."""
    n_layers = shape[0]
    last = base[names[0]].shape[2 if comp.hook == "pattern" else 1] - 1
    todo, noop, restore = [], [], []
    for flat, idx in enumerate(itertools.product(*map(range, shape))):
        layer = idx[0]
        head = idx[1] if comp.per_head else 0
        pos = idx[-1] if comp.by_pos else 0
        index = cell_index(comp, head, pos)
        b, s = base[names[layer]][0], source[names[layer]][0]
        if torch.equal(b[index], s[index]):
            noop.append(flat)
            continue
        if comp.hook in ("resid_pre", "resid_mid"):
            same = (b == s).all(-1)
            same[pos] = True
            if bool(same.all()):
                restore.append(flat)
                continue
        if not comp.by_pos:  # first position where the patched slice differs
            changed = (b[index] != s[index]).flatten(1).any(1)
            pos = int(changed.nonzero()[0, 0])
        if layer == n_layers - 1 and comp.hook in POSITION_LOCAL:
            if (pos != last) if comp.by_pos else not bool(changed[last]):
                noop.append(flat)
                continue
        todo.append(_Cell(flat, layer, index, pos))
    return todo, noop, restore


def patch_hook(cells: Sequence[_Cell], source_act: torch.Tensor) -> Any:
    """A forward hook that patches, in batch row ``i``, ``cells[i]``'s slice from ``source_act``.

    It writes in place (no autograd runs here): where a hook sees a view, e.g. a
    TransformerBridge's ``hook_resid_mid``, which is the MLP norm's input, the write reaches the
    tensor the rest of the model reads too, as in a HookedTransformer."""

    def hook(act: torch.Tensor, hook: Any) -> torch.Tensor:
        for row, cell in enumerate(cells):
            target, origin = (row, *cell.index), (0, *cell.index)
            act[target] = source_act[origin]
        return act

    return hook


def chunks(items: list[Any], size: int) -> list[list[Any]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


# ---------------------------------------------------------------------------- engines
def names_needed(handle: ModelHandle, comp: Component, fast: bool) -> tuple[list[str], list[str]]:
    """Hook names to cache on the run being patched (base) and on the other run (source)."""
    layers = range(handle.n_layers)
    source = [handle.hook_name(comp.hook, layer) for layer in layers]
    base = [*source, *(handle.hook_name("resid_pre", layer) for layer in layers)]
    if fast:
        kinds = ["resid_post", "k", "v"]
        if comp.hook in ("resid_mid", "attn_out", "mlp_out", "z"):
            kinds += ["attn_out"]
            if not handle.cfg.attn_only:
                kinds += ["mlp_out"] + ([] if handle.cfg.parallel_attn_mlp else ["resid_mid"])
        base += [handle.hook_name(kind, layer) for kind in kinds for layer in layers]
    return sorted(set(base)), source


def run_generic(
    handle: ModelHandle,
    comp: Component,
    cells: list[_Cell],
    base_tokens: torch.Tensor,
    base: dict[str, torch.Tensor],
    source: dict[str, torch.Tensor],
    metric: Metric,
    max_batch: int,
) -> dict[int, torch.Tensor]:
    """Each patch as a hooked forward pass, batched per layer (starting at the layer if the model
    can): the reference engine, used where the fast one is not supported."""
    out: dict[int, torch.Tensor] = {}
    for layer in range(handle.n_layers):
        name = handle.hook_name(comp.hook, layer)
        resid = base[handle.hook_name("resid_pre", layer)]
        for chunk in chunks([c for c in cells if c.layer == layer], max_batch):
            hook = patch_hook(chunk, source[name])
            x = resid.repeat(len(chunk), 1, 1)  # a copy: hooks write in place
            logits = handle.run_patched(
                base_tokens, x, layer, fwd_hooks=[(name, hook)], columns=metric.columns
            )
            for cell, value in zip(chunk, metric(logits), strict=True):
                out[cell.flat] = value
    return out


@dataclass
class _Entry:
    """A patched run, from the first block it has to go through: ``rows`` is the residual
    entering block ``layer`` (``n_layers``: after the last block) at positions ``pos..``."""

    flat: int
    pos: int
    layer: int
    rows: torch.Tensor  # [n_pos - pos, d_model]


def entries_for_layer(
    handle: ModelHandle,
    runner: Any,
    comp: Component,
    layer: int,
    cells: list[_Cell],
    base: dict[str, torch.Tensor],
    source: dict[str, torch.Tensor],
) -> list[_Entry]:
    """The residual stream after each patch, at the first block the patch has not yet been
    through (see the module docstring for why each step is exact)."""
    cfg = handle.cfg
    n_pos = base[handle.hook_name("resid_pre", 0)].shape[1]

    def act(kind: str, layer: int = layer, cache: dict[str, torch.Tensor] = base) -> torch.Tensor:
        return cache[handle.hook_name(kind, layer)][0]

    def after_attention(positions: Any, attn_out: torch.Tensor) -> torch.Tensor:
        """resid_post at ``positions`` given a (patched) attention output there."""
        resid_pre = act("resid_pre")[positions]
        if cfg.attn_only:
            return resid_pre + attn_out
        if cfg.parallel_attn_mlp:
            return resid_pre + attn_out + act("mlp_out")[positions]
        return runner(layer, resid_pre + attn_out, mid=True)

    def spliced(row: torch.Tensor, cell: _Cell) -> torch.Tensor:
        """The base run's resid_post from the cell's position on, the first position replaced."""
        rows = act("resid_post")[cell.pos :].clone()
        rows[0] = row
        return rows

    if comp.hook == "resid_pre":
        entries = []
        for cell in cells:
            rows = act("resid_pre")[cell.pos :].clone()
            rows[0] = act("resid_pre", cache=source)[cell.pos]
            entries.append(_Entry(cell.flat, cell.pos, layer, rows))
        return entries
    if comp.hook in ("resid_mid", "attn_out", "mlp_out") or (comp.hook == "z" and comp.by_pos):
        # Within this block only the residual at the cell's position changes: one row each.
        p = torch.tensor([c.pos for c in cells])
        if comp.hook == "resid_mid":
            post = runner(layer, act("resid_mid", cache=source)[p], mid=True)
        elif comp.hook == "mlp_out":
            before_mlp = (
                act("resid_pre")[p] + act("attn_out")[p]
                if cfg.parallel_attn_mlp
                else act("resid_mid")[p]
            )
            post = before_mlp + act("mlp_out", cache=source)[p]
        elif comp.hook == "attn_out":
            post = after_attention(p, act("attn_out", cache=source)[p])
        else:  # z at one position of one head
            z = act("z")[p].clone()  # [cells, head, d_head]
            for row, cell in enumerate(cells):
                z[row, cell.index[1]] = act("z", cache=source)[cell.index]
            post = after_attention(p, handle.attn_out_from_z(layer, z[:, None])[:, 0])
        return [_Entry(c.flat, c.pos, layer + 1, spliced(post[i], c)) for i, c in enumerate(cells)]
    if comp.hook == "z":  # one head at all positions: attn_out from z, no attention recomputed
        # (after the last block only the last position is read)
        start = min(c.pos for c in cells) if layer < handle.n_layers - 1 else n_pos - 1
        z = act("z")[start:].repeat(len(cells), 1, 1, 1)
        for row, cell in enumerate(cells):
            z[row, :, cell.index[1]] = act("z", cache=source)[start:, cell.index[1]]
        post = after_attention(slice(start, None), handle.attn_out_from_z(layer, z))
        firsts = [max(c.pos, start) for c in cells]
        return [
            _Entry(c.flat, q, layer + 1, post[i, q - start :])
            for i, (c, q) in enumerate(zip(cells, firsts, strict=True))
        ]
    # q, k, v, pattern: run this block with a patching hook, then continue from the next block.
    name = handle.hook_name(comp.hook, layer)
    x = act("resid_pre").expand(len(cells), -1, -1)
    hook = patch_hook(cells, source[name])
    out = handle.run_layers(x, layer, layer + 1, fwd_hooks=[(name, hook)])
    return [_Entry(c.flat, c.pos, layer + 1, out[i, c.pos :]) for i, c in enumerate(cells)]


#: Per-block-call overhead of a batch, in token rows: reading a block's weights and launching its
#: operations costs about as much as computing this many more rows (measured on CPU).
CALL_COST_ROWS = 24.0


def batches(entries: list[_Entry], n_layers: int, n_pos: int) -> list[tuple[int, list[_Entry]]]:
    """Group entries into batches that compute the same positions, ``pos..``.

    Entries starting at the same position share a batch. Neighbouring batches are merged (the
    later entries then also compute a few positions that their patch leaves unchanged) where that
    saves more per-call overhead than the extra positions cost: small batches near the end of the
    prompt."""

    def cost(pos: int, first_layer: int, row_layers: int) -> float:
        return (n_layers - first_layer) * CALL_COST_ROWS + row_layers * (n_pos - pos)

    by_pos: dict[int, list[_Entry]] = {}
    for entry in entries:
        by_pos.setdefault(entry.pos, []).append(entry)
    merged: list[tuple[int, list[_Entry], int, int]] = []  # pos, entries, first layer, row-layers
    for pos, group in sorted(by_pos.items(), reverse=True):  # shortest suffixes first
        first = min(e.layer for e in group)
        row_layers = sum(max(0, n_layers - e.layer) for e in group)
        if merged:
            last_pos, last, last_first, last_rows = merged[-1]
            both_first, both_rows = min(first, last_first), row_layers + last_rows
            if cost(pos, both_first, both_rows) <= cost(last_pos, last_first, last_rows) + cost(
                pos, first, row_layers
            ):
                merged[-1] = (pos, last + group, both_first, both_rows)
                continue
        merged.append((pos, group, first, row_layers))
    return [(pos, group) for pos, group, _, _ in reversed(merged)]


def run_fast(
    handle: ModelHandle,
    comp: Component,
    cells: list[_Cell],
    base: dict[str, torch.Tensor],
    source: dict[str, torch.Tensor],
    metric: Metric,
    max_batch: int,
) -> dict[int, torch.Tensor]:
    """Batched patched runs that start at the patched layer and position (module docstring)."""
    n_layers = handle.n_layers
    runner = handle.block_runner()
    entries: list[_Entry] = []
    for layer in range(n_layers):
        layer_cells = [c for c in cells if c.layer == layer]
        for chunk in chunks(layer_cells, max_batch):
            entries += entries_for_layer(handle, runner, comp, layer, chunk, base, source)
    keys = [base[handle.hook_name("k", layer)] for layer in range(n_layers)]
    values = [base[handle.hook_name("v", layer)] for layer in range(n_layers)]
    out: dict[int, torch.Tensor] = {}
    resid_pre = [base[handle.hook_name("resid_pre", layer)][0] for layer in range(n_layers)]
    for pos, group in batches(entries, n_layers, resid_pre[0].shape[0]):
        for entry in group:  # rows from `pos` on (positions before the entry's are the base run's)
            if entry.pos > pos and entry.layer < n_layers:
                entry.rows = torch.cat([resid_pre[entry.layer][pos : entry.pos], entry.rows])
        group.sort(key=lambda e: e.layer)
        for chunk in chunks(group, max_batch):
            finals = []
            x: torch.Tensor | None = None
            done = 0  # entries of the chunk already in x
            for layer in range(chunk[0].layer, n_layers):
                start = done
                while done < len(chunk) and chunk[done].layer == layer:
                    done += 1
                if done > start:
                    new = torch.stack([e.rows for e in chunk[start:done]])
                    x = new if x is None else torch.cat([x, new])
                if x is not None:
                    x = runner(
                        layer,
                        x,
                        keys[layer][:, :pos],
                        values[layer][:, :pos],
                        last_only=layer == n_layers - 1,
                    )
            if x is not None:
                finals.append(x[:, -1])
            finals += [e.rows[-1:] for e in chunk[done:]]  # patched after the last block
            logits = handle.last_logits(torch.cat(finals), metric.columns)
            for entry, value in zip(chunk, metric(logits), strict=True):
                out[entry.flat] = value
    return out


# ---------------------------------------------------------------------------- public API
def check_layers(handle: ModelHandle, layers: Sequence[int] | None) -> set[int] | None:
    """``layers`` as a set, each checked against the model (None: every layer)."""
    if layers is None:
        return None
    if is_int(layers):
        layers = [layers]  # type: ignore[list-item]
    elif isinstance(layers, (str, bytes, dict)) or not hasattr(layers, "__len__"):
        raise ComponentError(f"layers= must be a list of layer numbers (or None for all), got {layers!r}.")
    if not len(layers):
        raise ComponentError("layers= is empty: pass some layers, or None for all of them.")
    for layer in layers:
        handle.check_layer(layer)
    return {int(layer) for layer in layers}


def activation_patch(
    model: Any,
    clean: Prompt,
    corrupted: Prompt,
    *,
    component: str,
    metric: str | MetricFn = "logit_diff",
    direction: Direction = "denoising",
    answer: str | int | None = None,
    wrong_answer: str | int | None = None,
    normalize: bool = True,
    max_batch: int = 256,
    engine: Literal["auto", "hooks"] = "auto",
    layers: Sequence[int] | None = None,
) -> PatchingResult:
    """Patch every cell of ``component`` and measure the metric (see the module docstring).

    Args:
        model: a TransformerLens model or :class:`~mechwidgets._model.ModelHandle`.
        clean / corrupted: text (BOS prepended) or ``[pos]``/``[1, pos]`` token tensors, of the
            same token length.
        component: a key of :data:`COMPONENTS`, e.g. ``"resid_pre"`` or ``"head_out"``.
        metric: ``"logit_diff"`` (default), ``"logprob"``, ``"prob"``, ``"kl"`` or a callable
            ``logits[batch, d_vocab] -> [batch]`` (see :data:`~.metrics.MetricFn`).
        direction: ``"denoising"`` (default: run corrupted, patch in clean; what is sufficient)
            or ``"noising"`` (run clean, patch in corrupted; what is necessary).
        answer / wrong_answer: single tokens (text or ids). Default: the clean run's top token
            and the corrupted run's top token (see ``result.notes``).
        normalize: 0 = run being patched, 1 = other run (default); False: the raw metric.
        max_batch: at most this many patched runs per batched forward (memory budget).
        engine: ``"auto"`` (fastest exact method the model supports) or ``"hooks"`` (one hooked
            forward per patch, batched; the reference, for checking).
        layers: compute only these layers' cells (the others are NaN); default all. The widget
            streams a grid layer by layer with it.

    Returns:
        A :class:`PatchingResult` with a ``[layer, pos]``, ``[layer, head]`` or
        ``[layer, head, pos]`` grid.

    Raises:
        PromptError: prompts of different token lengths (with both tokenisations), empty, or
            longer than ``n_ctx``.
        AnswerError: an answer that is not one token, or answer == wrong_answer.
        ComponentError: unknown component or direction, or one the model lacks.
        MetricError: unknown metric, a metric returning NaN or not one value per run, or equal
            baselines with ``normalize=True``.
    """
    handle = wrap_model(model)
    comp = get_component(handle, component)
    check_direction(direction)
    if engine not in ("auto", "hooks"):
        raise ComponentError(f"unknown engine {engine!r}: use 'auto' or 'hooks'.")
    if not isinstance(max_batch, int) or max_batch < 1:
        raise ComponentError(f"max_batch must be a positive integer, got {max_batch!r}.")
    wanted = check_layers(handle, layers)
    clean_tokens, corrupted_tokens = token_pair(handle, clean, corrupted)
    fast = engine == "auto" and handle.supports_partial_blocks()
    base_names, source_names = names_needed(handle, comp, fast)
    denoising = direction == "denoising"
    with handle.session():
        # Both runs as one batch of two.
        both, cache = handle.run_last_logits(
            torch.cat([clean_tokens, corrupted_tokens]), sorted({*base_names, *source_names})
        )
        clean_logits, corrupted_logits = both[0:1], both[1:2]
        clean_cache = {name: act[0:1] for name, act in cache.items()}
        corrupted_cache = {name: act[1:2] for name, act in cache.items()}
        resolved, answer_id, wrong_id, notes = choose_metric(
            handle, metric, clean_logits[0], corrupted_logits[0], answer, wrong_answer
        )
        clean_value, corrupted_value = metric_values(
            resolved, torch.cat([clean_logits, corrupted_logits])
        ).tolist()
        base_tokens = corrupted_tokens if denoising else clean_tokens
        base, source = (
            (corrupted_cache, clean_cache) if denoising else (clean_cache, corrupted_cache)
        )
        base_value = corrupted_value if denoising else clean_value
        target_value = clean_value if denoising else corrupted_value
        shape = grid_shape(handle, comp, clean_tokens.shape[1])
        todo, noop, restore = cells_to_run(comp, shape, base, source, source_names)
        if wanted is not None:
            per_layer = int(torch.tensor(shape[1:]).prod())
            todo = [cell for cell in todo if cell.layer in wanted]
            noop = [flat for flat in noop if flat // per_layer in wanted]
            restore = [flat for flat in restore if flat // per_layer in wanted]
        if fast:
            computed = run_fast(handle, comp, todo, base, source, resolved, max_batch)
        else:
            computed = run_generic(
                handle, comp, todo, base_tokens, base, source, resolved, max_batch
            )
    values = torch.full((int(torch.tensor(shape).prod()),), float("nan"))
    values[noop] = base_value
    values[restore] = target_value
    for flat, value in computed.items():
        values[flat] = float(value)
    return make_result(
        handle,
        comp,
        values.view(shape),
        direction=direction,
        method="activation",
        metric=resolved,
        normalized=normalize,
        clean_value=clean_value,
        corrupted_value=corrupted_value,
        answer=answer_id,
        wrong_answer=wrong_id,
        clean_tokens=clean_tokens,
        corrupted_tokens=corrupted_tokens,
        notes=notes,
    )


__all__ = [
    "COMPONENTS",
    "DIRECTIONS",
    "Component",
    "Direction",
    "PatchingResult",
    "Prompt",
    "activation_patch",
]
