"""What fires on a prompt: :class:`FeatureTrace` and :func:`feature_activations` (one forward,
one encode per SAE), with each SAE's reconstruction error.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float, Int

from ..._model import ModelHandle
from ...errors import SAEError
from ..results import PromptResult
from .saes import BoundSAE, _as_bound


@dataclass
class FeatureTrace(PromptResult):
    """The SAE features of one prompt.

    Attributes:
        tokens: ``[pos]`` token ids (BOS first); ``str_tokens`` the same as strings.
        hook_names: the SAEs' hooks in forward order; ``labels`` their short names.
        d_sae: the number of features of each SAE.
        top_k: how many features per token and SAE ``top_indices`` keeps.
        top_indices: ``[sae, pos, top_k]`` the most active features of each token (most active
            first); ``-1`` where fewer than ``top_k`` fire. ``top_values`` their activations
            (0 where the index is -1).
        n_active: ``[sae, pos]`` how many features fire (activation > 0).
        total_activation: ``[sae, pos]`` sum of the feature activations.
        active: per SAE, the non-zero activations as ``(pos, feature, value)`` 1-d tensors
            (sparse: use :meth:`feature_values` or :meth:`dense`).
        error_norm: ``[sae, pos]`` ``||x - decode(encode(x))||`` per token; ``act_norm``
            ``[sae, pos]`` ``||x||``.
        relative_error: ``[sae]`` ``sqrt(sum ||x - x_hat||^2 / sum ||x||^2)`` over the prompt's
            positions after BOS (SAEs are trained without the BOS outlier).
        explained_variance: ``[sae]`` ``1 - sum ||x - x_hat||^2 / sum ||x - mean(x)||^2`` over
            the same positions (sae-lens's definition; NaN for a single position).
        ln_scale: the mean ``1/sigma`` of the final LayerNorm over those positions (used to
            scale logit effects; 1.0 for models without a final norm).
    """

    hook_names: list[str]
    labels: list[str]
    d_sae: list[int]
    top_indices: Int[torch.Tensor, "sae pos k"]
    top_values: Float[torch.Tensor, "sae pos k"]
    top_k: int
    n_active: Int[torch.Tensor, "sae pos"]
    total_activation: Float[torch.Tensor, "sae pos"]
    active: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]
    error_norm: Float[torch.Tensor, "sae pos"]
    act_norm: Float[torch.Tensor, "sae pos"]
    relative_error: Float[torch.Tensor, " sae"]
    explained_variance: Float[torch.Tensor, " sae"]
    ln_scale: float = 1.0

    def index(self, sae: int | str) -> int:
        """The position of an SAE (by index or hook name) in :attr:`hook_names`."""
        return _sae_index(self.hook_names, sae)

    def feature_values(self, sae: int | str, feature: int) -> Float[torch.Tensor, " pos"]:
        """``[pos]`` activation of one feature on every token (0 where it does not fire)."""
        i = self.index(sae)
        _check_feature(self.hook_names[i], self.d_sae[i], feature)
        pos, feat, val = self.active[i]
        out = torch.zeros(len(self.str_tokens))
        mask = feat == feature
        out[pos[mask]] = val[mask]
        return out

    def dense(self, sae: int | str) -> Float[torch.Tensor, "pos d_sae"]:
        """``[pos, d_sae]`` all activations of one SAE."""
        i = self.index(sae)
        pos, feat, val = self.active[i]
        out = torch.zeros(len(self.str_tokens), self.d_sae[i])
        out[pos, feat] = val
        return out


def _sae_index(hook_names: Sequence[str], sae: int | str) -> int:
    if isinstance(sae, str):
        if sae not in hook_names:
            raise SAEError(f"no SAE reads {sae!r}; the SAEs read {list(hook_names)}.")
        return list(hook_names).index(sae)
    if isinstance(sae, bool) or not isinstance(sae, int) or not 0 <= sae < len(hook_names):
        raise SAEError(f"SAE index {sae!r} is out of range: there are {len(hook_names)} SAEs "
                       f"({list(hook_names)}).")
    return sae


def _check_feature(hook: str, d_sae: int, feature: Any) -> int:
    if isinstance(feature, bool) or not isinstance(feature, int) or not 0 <= feature < d_sae:
        raise SAEError(f"feature {feature!r} is out of range: the SAE on {hook!r} has features "
                       f"0..{d_sae - 1}.")
    return feature


def _non_bos(tokens: torch.Tensor, handle: ModelHandle) -> slice:
    """Positions used for summary statistics: all but a leading BOS (when there is more)."""
    bos = handle.bos_token_id
    if tokens.shape[-1] > 1 and bos is not None and int(tokens.reshape(-1)[0]) == int(bos):
        return slice(1, None)
    return slice(0, None)


def _padded_batches(handle: ModelHandle, docs: Sequence[torch.Tensor],
                    batch_size: int) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
    """``(start, batch, keep)`` for each group of ``batch_size`` documents: ``batch``
    ``[docs, length]`` the tokens right-padded with the pad token (causal attention: no real
    token attends to a pad), on the model's device; ``keep`` ``[docs, length]`` (on the CPU)
    marks the real tokens other than a leading BOS."""
    bos = handle.bos_token_id
    pad = getattr(handle.tokenizer, "pad_token_id", None)
    for start in range(0, len(docs), batch_size):
        group = docs[start:start + batch_size]
        length = max(t.shape[0] for t in group)
        batch = torch.full((len(group), length), int(pad) if pad is not None else 0, dtype=torch.long)
        keep = torch.zeros(len(group), length, dtype=torch.bool)
        for r, t in enumerate(group):
            batch[r, : t.shape[0]] = t
            keep[r, : t.shape[0]] = True
            if bos is not None and t.shape[0] > 1 and int(t[0]) == int(bos):
                keep[r, 0] = False
        yield start, batch.to(handle.device), keep


def _final_scale(handle: ModelHandle, resid: torch.Tensor) -> torch.Tensor:
    """``[...]`` the final norm's ``1/sigma`` for residual vectors ``[..., d_model]``."""
    return 1.0 / handle.final_norm().scale(resid.float())[..., 0]


def _encode_all(
    bound: Sequence[BoundSAE], acts: Sequence[torch.Tensor], top_k: int, stats: slice,
    errors: bool = True, outs: Sequence[torch.Tensor | None] | None = None,
) -> dict[str, Any]:
    """Encode each SAE's activation ``[pos, ...]``: top-k, counts, sparse values, and (unless
    ``errors`` is False, when they are NaN) the reconstruction errors, against ``outs[i]`` for a
    transcoder (the activation of the hook it writes)."""
    n_pos = acts[0].shape[0]
    k = max(1, int(top_k))
    top_idx = torch.full((len(bound), n_pos, k), -1, dtype=torch.int32)
    top_val = torch.zeros(len(bound), n_pos, k)
    n_active = torch.zeros(len(bound), n_pos, dtype=torch.int32)
    total = torch.zeros(len(bound), n_pos)
    err_norm = torch.zeros(len(bound), n_pos)
    act_norm = torch.zeros(len(bound), n_pos)
    rel = torch.zeros(len(bound))
    ev = torch.zeros(len(bound))
    active = []
    for i, (b, act) in enumerate(zip(bound, acts, strict=True)):
        b.check_width(act)
        x = b.flat(act)
        f = b.encode(x)
        target = outs[i] if outs is not None and b.is_transcoder else None
        xf = x.float() if target is None else target.reshape(*x.shape[:-1], b.d_out).float()
        err = (xf - b.decode(f).float()) if errors else torch.full_like(xf, math.nan)
        f = f.float()
        kk = min(k, f.shape[-1])
        vals, idx = f.topk(kk, dim=-1)
        on = vals > 0
        top_idx[i, :, :kk] = torch.where(on, idx, -1).to(torch.int32).cpu()
        top_val[i, :, :kk] = torch.where(on, vals, 0.0).cpu()
        fired = f > 0
        n_active[i] = fired.sum(-1).to(torch.int32).cpu()
        total[i] = f.clamp(min=0).sum(-1).cpu()
        pos, feat = fired.nonzero(as_tuple=True)
        active.append((pos.cpu(), feat.cpu(), f[pos, feat].cpu()))
        err_norm[i] = err.norm(dim=-1).cpu()
        act_norm[i] = xf.norm(dim=-1).cpu()
        e2 = err[stats].pow(2).sum()
        x2 = xf[stats].pow(2).sum()
        rel[i] = (e2 / x2).sqrt() if float(x2) > 0 else float("nan")
        xs = xf[stats]
        var = (xs - xs.mean(0, keepdim=True)).pow(2).sum()
        ev[i] = 1 - e2 / var if xs.shape[0] > 1 and float(var) > 0 else float("nan")
    return {
        "top_indices": top_idx, "top_values": top_val, "n_active": n_active,
        "total_activation": total, "active": active, "error_norm": err_norm,
        "act_norm": act_norm, "relative_error": rel, "explained_variance": ev,
    }


def feature_activations(
    model: Any,
    saes: Any,
    prompt: str | torch.Tensor,
    *,
    top_k: int = 10,
    max_positions: int = 512,
) -> FeatureTrace:
    """Run the model once and encode every SAE's hook activation.

    Args:
        model: a TransformerLens model or :class:`~mechwidgets.ModelHandle`.
        saes: SAEs as :func:`bind_saes` takes them (list, dict by hook name, or one SAE).
        prompt: text (BOS is prepended) or a ``[pos]`` / ``[1, pos]`` token tensor.
        top_k: how many of the most active features to keep per token and SAE (default 10).
            Every non-zero activation is kept too, sparsely (:attr:`FeatureTrace.active`).
        max_positions: refuse longer prompts (default 512).

    Returns:
        A :class:`FeatureTrace` (CPU tensors).

    Raises:
        SAEError: see :func:`bind_saes`; also an SAE whose ``d_in`` does not match its hook.
        PromptError: an empty or too long prompt.
    """
    handle = ModelHandle.wrap(model)
    bound = _as_bound(handle, saes)
    tokens = handle.tokens(prompt, max_positions=max_positions)
    final = f"blocks.{handle.n_layers - 1}.hook_resid_post"
    names = [b.hook_name for b in bound]
    outs = [b.hook_out for b in bound if b.is_transcoder]
    want = list(dict.fromkeys([*names, *outs, *([final] if handle.has_hook(final) else [])]))
    with handle.session():
        _, cache = handle.run_with_cache(tokens, want, return_type=None)
        stats = _non_bos(tokens, handle)
        enc = _encode_all(bound, [cache[n][0] for n in names], top_k, stats,
                          outs=[cache[b.hook_out][0] for b in bound])
        ln_scale = float(_final_scale(handle, cache[final][0][stats]).mean()) if final in cache else 1.0
    return FeatureTrace(
        tokens=tokens[0].cpu(),
        str_tokens=handle.str_tokens(tokens),
        hook_names=names,
        labels=[b.label for b in bound],
        d_sae=[b.d_sae for b in bound],
        top_k=int(enc["top_indices"].shape[-1]),
        ln_scale=ln_scale,
        **{k: v for k, v in enc.items()},
    )


