"""Editing features: ablate or clamp them with the SAE spliced in with its error term, and what
the edit changed downstream.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from jaxtyping import Float

from ..._model import ModelHandle
from ...errors import ComponentError, PromptError, SAEError
from ..attention import per_token_loss, top_predictions
from ..results import BeforeAfter
from .saes import BoundSAE, _as_bound
from .trace import (
    FeatureTrace,
    _check_feature,
    _encode_all,
    _final_scale,
    _non_bos,
    _sae_index,
    feature_activations,
)

InterventionMode = Literal["ablate", "clamp"]
INTERVENTION_MODES: tuple[str, ...] = ("ablate", "clamp")


@dataclass
class FeatureIntervention:
    """One edit of one feature, applied where its SAE is spliced in.

    Attributes:
        hook_name: the SAE's hook (or its index among the SAEs).
        feature: the feature to edit.
        mode: ``"ablate"`` (set to 0) or ``"clamp"`` (set to ``value``; also where it did not
            fire: steering).
        value: the clamp value (ignored by ``"ablate"``).
        positions: the token positions to edit (negative counts from the end); None: all.
    """

    hook_name: str | int
    feature: int
    mode: InterventionMode = "ablate"
    value: float = 0.0
    positions: Sequence[int] | None = None


@dataclass
class FeatureChange:
    """How much one feature of a downstream SAE changed under an intervention."""

    hook_name: str
    sae: int
    feature: int
    before: Float[torch.Tensor, " pos"]
    after: Float[torch.Tensor, " pos"]
    max_change: float
    position: int


@dataclass
class InterventionResult(BeforeAfter):
    """What editing SAE features did to the model.

    Attributes:
        before / after: top-k next-token predictions at ``position``, of the clean and the
            edited run; ``loss_before`` / ``loss_after`` ``[pos - 1]`` their per-token loss
            (:class:`~mechwidgets.analysis.results.BeforeAfter`).
        interventions: the edits, normalised (hook names, positions as lists).
        position: the position the predictions are read at (default: last).
        logits_before / logits_after: ``[d_vocab]`` logits at ``position``.
        changes: the downstream features (SAEs at or after the first edited hook, the edited
            features excluded) whose activation changed most, largest change first.
        trace_after: the :class:`FeatureTrace` of the edited run (at edited hooks, the edited
            code).
    """

    interventions: list[FeatureIntervention]
    position: int
    logits_before: Float[torch.Tensor, " vocab"]
    logits_after: Float[torch.Tensor, " vocab"]
    changes: list[FeatureChange]
    trace_after: FeatureTrace

    @property
    def max_abs_logit_change(self) -> float:
        return float((self.logits_after - self.logits_before).abs().max())


def normalise_interventions(
    bound: Sequence[BoundSAE], interventions: Iterable[FeatureIntervention | Mapping[str, Any]],
    n_pos: int,
) -> list[FeatureIntervention]:
    """Check and normalise interventions (hook names resolved, positions made non-negative)."""
    names = [b.hook_name for b in bound]
    out = []
    for iv in interventions:
        if isinstance(iv, Mapping):
            iv = FeatureIntervention(**dict(iv))
        if not isinstance(iv, FeatureIntervention):
            raise SAEError(f"an intervention is a FeatureIntervention or a dict, got {iv!r}.")
        i = _sae_index(names, iv.hook_name)
        _check_feature(names[i], bound[i].d_sae, iv.feature)
        if iv.mode not in INTERVENTION_MODES:
            raise SAEError(f"unknown intervention mode {iv.mode!r}: use one of {INTERVENTION_MODES}.")
        value = float(iv.value) if iv.mode == "clamp" else 0.0
        if not math.isfinite(value):
            raise SAEError(f"the clamp value must be a finite number, got {iv.value!r}.")
        positions = None
        if iv.positions is not None:
            positions = []
            for p in iv.positions:
                if isinstance(p, bool) or not isinstance(p, int) or not -n_pos <= p < n_pos:
                    raise ComponentError(
                        f"position {p!r} is out of range: the prompt has positions 0..{n_pos - 1} "
                        f"(or -{n_pos}..-1 from the end)."
                    )
                positions.append(p % n_pos)
            positions = sorted(set(positions))
        out.append(FeatureIntervention(names[i], int(iv.feature), iv.mode, value, positions))
    return out


def splice_hooks(
    bound: Sequence[BoundSAE],
    interventions: Sequence[FeatureIntervention] = (),
    *,
    record: dict[str, torch.Tensor] | None = None,
    splice_all: bool = False,
) -> list[tuple[str, Any]]:
    """Forward hooks that splice SAEs in, with their error term, applying ``interventions``.

    Each hook computes ``f = encode(x)``, edits ``f`` and returns ``x + (decode(f_edit) -
    decode(f))`` (= ``decode(f_edit) + (x - decode(f))``): with no edit it returns ``x`` itself.
    Only SAEs with an intervention are spliced unless ``splice_all``. ``interventions`` must be
    normalised (:func:`normalise_interventions`). The edited code of each spliced SAE is put in
    ``record[hook_name]`` (``[batch, pos, d_sae]``) when ``record`` is given. A transcoder is
    read at its ``hook_name`` and its edit ``decode(f_edit) - decode(f)`` added at its
    ``hook_out`` (the model's own output there stands in for the error term).
    """
    by_hook: dict[str, list[FeatureIntervention]] = {}
    for iv in interventions:
        by_hook.setdefault(str(iv.hook_name), []).append(iv)
    pending: dict[str, torch.Tensor] = {}  # a transcoder's edit, from the hook it reads to the one it writes
    hooks: list[tuple[str, Any]] = []
    for b in bound:
        edits = by_hook.get(b.hook_name, [])
        if not edits and not splice_all:
            continue

        def hook(act: torch.Tensor, hook: Any, b: BoundSAE = b,
                 edits: list[FeatureIntervention] = edits) -> torch.Tensor:
            b.check_width(act)
            x = b.flat(act)
            f = b.encode(x)
            f_edit = f.clone()
            for iv in edits:
                where = slice(None) if iv.positions is None else torch.as_tensor(
                    iv.positions, device=f.device, dtype=torch.long)
                f_edit[..., where, iv.feature] = iv.value if iv.mode == "clamp" else 0.0
            if record is not None:
                record[b.hook_name] = f_edit.detach()
            if not edits:
                return act
            delta = b.decode(f_edit) - b.decode(f)
            if b.is_transcoder:  # the edit reaches the hook the transcoder writes
                pending[b.hook_out] = delta
                return act
            out = x + delta.to(x.dtype)
            return out.reshape(act.shape)

        def write(act: torch.Tensor, hook: Any, b: BoundSAE = b) -> torch.Tensor:
            delta = pending.pop(b.hook_out, None)
            if delta is None:
                return act
            return act + delta.to(act.dtype).reshape(act.shape)

        hooks.append((b.hook_name, hook))
        if b.is_transcoder and edits:
            hooks.append((b.hook_out, write))
    return hooks


def intervene_features(
    model: Any,
    saes: Any,
    prompt: str | torch.Tensor,
    interventions: Iterable[FeatureIntervention | Mapping[str, Any]],
    *,
    top_k: int = 10,
    n_changes: int = 20,
    position: int = -1,
    trace_top_k: int = 10,
    before: FeatureTrace | None = None,
    logits_before: torch.Tensor | None = None,
    max_positions: int = 512,
) -> InterventionResult:
    """Ablate or clamp SAE features and measure what changes downstream.

    The SAEs with an edit are spliced into the forward pass with their error term (see the
    module docstring), every SAE is read on the edited run, and the result is compared with the
    clean run.

    Args:
        model: a TransformerLens model or handle.
        saes: SAEs as :func:`bind_saes` takes them.
        prompt: the prompt to run.
        interventions: :class:`FeatureIntervention` objects or dicts with the same fields (may be
            empty: then before == after).
        top_k: next-token predictions to report (default 10).
        n_changes: downstream features to report (default 20).
        position: where the predictions are read (default -1, the last token).
        trace_top_k: ``top_k`` of the edited run's :class:`FeatureTrace`.
        before: the clean run's trace, if already computed (saves encoding it again).
        logits_before: ``[pos, d_vocab]`` the clean run's logits, if already computed (saves a
            forward pass).
        max_positions: refuse longer prompts (default 512).

    The edited run's trace carries no reconstruction statistics (NaN): the edit, not the SAE's
    fit, is what it shows.

    Raises:
        SAEError: an unknown SAE or feature, a bad mode or clamp value; see also
            :func:`bind_saes`.
        ComponentError: a position out of range.
    """
    handle = ModelHandle.wrap(model)
    bound = _as_bound(handle, saes)
    tokens = handle.tokens(prompt, max_positions=max_positions)
    n_pos = int(tokens.shape[1])
    if isinstance(position, bool) or not isinstance(position, int) or not -n_pos <= position < n_pos:
        raise ComponentError(f"position {position!r} is out of range for a {n_pos}-token prompt.")
    edits = normalise_interventions(bound, interventions, n_pos)
    if before is None:
        before = feature_activations(handle, bound, tokens, top_k=trace_top_k,
                                     max_positions=max_positions)
    names = [b.hook_name for b in bound]
    final = f"blocks.{handle.n_layers - 1}.hook_resid_post"
    with handle.session():
        if logits_before is None:
            logits_before = handle.run(tokens)[0]
        elif tuple(logits_before.shape) != (n_pos, handle.d_vocab):
            raise PromptError(
                f"logits_before has shape {tuple(logits_before.shape)}, not [{n_pos}, "
                f"{handle.d_vocab}] (this prompt's positions × the vocabulary)."
            )
        record: dict[str, torch.Tensor] = {}
        hooks = splice_hooks(bound, edits, record=record)
        # SAEs upstream of the first edit read what they read on the clean run
        first = min((names.index(str(iv.hook_name)) for iv in edits), default=len(names))
        read = names[first:]
        want = [*read, final] if handle.has_hook(final) else read
        logits_after_all, cache = handle.run_with_cache(tokens, want, fwd_hooks=hooks)
        logits_after = logits_after_all[0]
        stats = _non_bos(tokens, handle)
        enc = _encode_all(bound[first:], [cache[n][0] for n in read], trace_top_k, stats,
                          errors=False) if read else None
        # at an edited hook, the code the model was given is the edited one
        for i, b in enumerate(bound[first:]):
            if b.hook_name in record and enc is not None:
                _replace_code(enc, i, record[b.hook_name][0].float(), trace_top_k)
        enc = _merge_upstream(before, first, enc, trace_top_k)
        ln_scale = float(_final_scale(handle, cache[final][0][stats]).mean()) if final in cache else 1.0
    after = FeatureTrace(
        tokens=tokens[0].cpu(), str_tokens=before.str_tokens, hook_names=names,
        labels=[b.label for b in bound], d_sae=[b.d_sae for b in bound],
        top_k=int(enc["top_indices"].shape[-1]), ln_scale=ln_scale, **enc,
    )
    changes = _feature_changes(before, after, bound, edits, n_changes)
    toks = tokens[0]
    return InterventionResult(
        interventions=edits,
        position=position % n_pos,
        before=top_predictions(handle, logits_before[position], top_k),
        after=top_predictions(handle, logits_after[position], top_k),
        logits_before=logits_before[position].float().cpu(),
        logits_after=logits_after[position].float().cpu(),
        loss_before=per_token_loss(logits_before, toks),
        loss_after=per_token_loss(logits_after, toks),
        changes=changes,
        trace_after=after,
    )


def _merge_upstream(before: FeatureTrace, first: int, enc: dict[str, Any] | None,
                    top_k: int) -> dict[str, Any]:
    """The edited run's encodings: SAEs ``< first`` copied from the clean trace, then ``enc``."""
    k = max(1, int(top_k))
    n_pos = before.n_active.shape[1]
    idx = torch.full((first, n_pos, k), -1, dtype=torch.int32)
    val = torch.zeros(first, n_pos, k)
    kk = min(k, before.top_k)
    idx[:, :, :kk] = before.top_indices[:first, :, :kk]
    val[:, :, :kk] = before.top_values[:first, :, :kk]
    nan = torch.full((first,), math.nan)
    up: dict[str, Any] = {
        "top_indices": idx, "top_values": val, "n_active": before.n_active[:first].clone(),
        "total_activation": before.total_activation[:first].clone(),
        "active": list(before.active[:first]),
        "error_norm": torch.full((first, n_pos), math.nan), "act_norm": before.act_norm[:first].clone(),
        "relative_error": nan, "explained_variance": nan.clone(),
    }
    if enc is None:
        return up
    out: dict[str, Any] = {}
    for key, value in up.items():
        out[key] = value + enc[key] if key == "active" else torch.cat([value, enc[key]])
    return out


def _replace_code(enc: dict[str, Any], i: int, f: torch.Tensor, top_k: int) -> None:
    kk = min(max(1, top_k), f.shape[-1])
    vals, idx = f.topk(kk, dim=-1)
    on = vals > 0
    enc["top_indices"][i] = -1
    enc["top_values"][i] = 0.0
    enc["top_indices"][i, :, :kk] = torch.where(on, idx, -1).to(torch.int32).cpu()
    enc["top_values"][i, :, :kk] = torch.where(on, vals, 0.0).cpu()
    fired = f > 0
    enc["n_active"][i] = fired.sum(-1).to(torch.int32).cpu()
    enc["total_activation"][i] = f.clamp(min=0).sum(-1).cpu()
    pos, feat = fired.nonzero(as_tuple=True)
    enc["active"][i] = (pos.cpu(), feat.cpu(), f[pos, feat].cpu())


def _feature_changes(
    before: FeatureTrace, after: FeatureTrace, bound: Sequence[BoundSAE],
    edits: Sequence[FeatureIntervention], n: int,
) -> list[FeatureChange]:
    if not edits:
        return []
    names = [b.hook_name for b in bound]
    first = min(names.index(str(iv.hook_name)) for iv in edits)
    edited = {(names.index(str(iv.hook_name)), iv.feature) for iv in edits}
    cands: list[tuple[float, int, int, int]] = []
    for i in range(first, len(bound)):
        diff = (after.dense(i) - before.dense(i)).abs()  # [pos, d_sae]
        best, where = diff.max(0)
        kk = min(n + len(edited), best.shape[0])
        vals, feats = best.topk(kk)
        for v, f in zip(vals.tolist(), feats.tolist(), strict=True):
            if v > 0 and (i, f) not in edited:
                cands.append((v, i, f, int(where[f])))
    cands.sort(key=lambda t: -t[0])
    out = []
    for v, i, f, p in cands[:n]:
        out.append(FeatureChange(names[i], i, f, before.feature_values(i, f),
                                 after.feature_values(i, f), v, p))
    return out


