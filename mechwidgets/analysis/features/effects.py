"""A feature's direct effect on the next-token logits: its decoder direction read through the
unembedding.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float, Int

from ..._model import ModelHandle
from ...errors import SAEError
from .saes import BoundSAE, bind_saes
from .trace import _check_feature


@dataclass
class LogitEffects:
    """Direct effect of features on the logits (see :func:`feature_logit_effects`).

    Attributes:
        hook_name: the SAE's hook; ``features`` the features, in the order asked.
        promoted_ids / promoted_tokens / promoted_values: ``[feature, k]`` the tokens whose
            logits the feature raises most, and by how much (per unit of activation).
        suppressed_ids / suppressed_tokens / suppressed_values: the same for the most lowered
            (most negative first).
        ln_scale: the constant ``1/sigma`` the effects were multiplied by.
    """

    hook_name: str
    features: list[int]
    promoted_ids: Int[torch.Tensor, "feature k"]
    promoted_tokens: list[list[str]]
    promoted_values: Float[torch.Tensor, "feature k"]
    suppressed_ids: Int[torch.Tensor, "feature k"]
    suppressed_tokens: list[list[str]]
    suppressed_values: Float[torch.Tensor, "feature k"]
    ln_scale: float


def residual_directions(model: Any, sae: BoundSAE, features: Sequence[int]) -> torch.Tensor:
    """``[n, d_model]`` what a unit of each feature adds to the residual stream.

    ``W_dec[f]`` for SAEs on residual-width hooks (``resid_*``, ``attn_out``, ``mlp_out``);
    ``W_dec[f] @ W_out`` for ``mlp.hook_post``; ``W_dec[f]`` (as ``[head, d_head]``) through
    ``W_O`` for ``attn.hook_z``.
    """
    handle = ModelHandle.wrap(model)
    w = sae.W_dec[torch.as_tensor(list(features), dtype=torch.long, device=sae.W_dec.device)]
    return _to_residual(handle, sae, w.detach().float())


def _to_residual(handle: ModelHandle, sae: BoundSAE, w: torch.Tensor) -> torch.Tensor:
    """Decoder rows ``[n, d_out]`` (float) as what they add to the residual stream ``[n, d_model]``."""
    if sae.d_out == handle.d_model and not sae.hook_out.endswith(("attn.hook_z", "mlp.hook_post")):
        return w
    m = re.match(r"blocks\.(\d+)\.(mlp\.hook_post|attn\.hook_z)$", sae.hook_out)
    if m and m.group(2) == "mlp.hook_post":  # (a hook only TransformerLens models have)
        return w @ handle.model.blocks[int(m.group(1))].mlp.W_out.detach().float()
    if m and m.group(2) == "attn.hook_z":
        w_o = handle.head_out_weights(int(m.group(1)))[0]  # [head, d_head, d_model]
        return w @ w_o.reshape(-1, w_o.shape[-1])
    raise SAEError(
        f"the SAE on {sae.hook_out!r} writes {sae.d_out}-wide vectors, not the residual stream's "
        f"{handle.d_model}: its logit effects are only defined for residual-stream, attn_out, "
        f"mlp_out, mlp.hook_post and attn.hook_z SAEs."
    )


def _through_final_norm(handle: ModelHandle, d: torch.Tensor) -> torch.Tensor:
    """Residual directions ``[n, d_model]`` through the final norm's linear part at scale 1
    (centred for LayerNorm, times the norm's weight where it has one)."""
    return handle.final_norm().linear(d, torch.ones(()))


def logit_effect_matrix(
    model: Any, sae: BoundSAE, features: Sequence[int], *, ln_scale: float = 1.0
) -> Float[torch.Tensor, "feature vocab"]:
    """``[n, d_vocab]`` direct logit effect of a unit of each feature (see
    :func:`feature_logit_effects` for the convention)."""
    return logit_effects_of(model, residual_directions(model, sae, features), ln_scale=ln_scale)


def logit_effects_of(
    model: Any, directions: Float[torch.Tensor, "n d_model"], *, ln_scale: float = 1.0
) -> Float[torch.Tensor, "n vocab"]:
    """``[n, d_vocab]`` direct logit effect of residual directions (e.g. several SAEs' features
    from :func:`residual_directions`, concatenated: one pass over ``W_U`` for all of them)."""
    handle = ModelHandle.wrap(model)
    d = _through_final_norm(handle, directions.float())
    w_u = handle.unembedding()[0]
    return (d @ w_u) * float(ln_scale)


def features_promoting(
    model: Any, sae: Any, token: int, *, k: int = 10, ln_scale: float = 1.0, chunk: int = 4096,
) -> tuple[Int[torch.Tensor, " k"], Float[torch.Tensor, " k"]]:
    """The ``k`` features whose direct logit effect (as :func:`feature_logit_effects`) raises
    ``token`` most: one column of the effect matrix, computed a chunk of features at a time.

    Returns:
        ``(features, effects)``, largest effect first.
    """
    handle = ModelHandle.wrap(model)
    b = sae if isinstance(sae, BoundSAE) else bind_saes(handle, [sae])[0]
    if isinstance(token, bool) or not isinstance(token, int) or not 0 <= token < handle.d_vocab:
        raise SAEError(f"token id {token!r} is out of range: the vocabulary has ids 0..{handle.d_vocab - 1}.")
    col = handle.unembedding()[0][:, token]
    with torch.no_grad():
        scores = torch.cat([
            _through_final_norm(handle, _to_residual(handle, b, b.W_dec[lo:lo + chunk].detach().float())) @ col
            for lo in range(0, b.d_sae, chunk)
        ]) * float(ln_scale)
    v, f = scores.topk(min(int(k), b.d_sae))
    return f, v


def feature_logit_effects(
    model: Any,
    sae: Any,
    features: int | Sequence[int],
    *,
    k: int = 10,
    ln_scale: float = 1.0,
) -> LogitEffects:
    """Top promoted and suppressed next-token logits of features (direct effect).

    The effect of a unit of feature ``f`` is its decoder direction through the unembedding,
    ``W_dec[f] @ W_U`` (the standard, e.g. Neuronpedia's), passed through the final norm's
    *linear* part: the direction is centred (LayerNorm removes the mean) and multiplied by the
    norm's weight ``ln_final.w`` when the model has one unfolded, which is exactly what
    TransformerLens's ``fold_ln`` bakes into ``W_U``. The norm's division by ``sigma`` depends on
    the whole residual stream, not on the feature, so it is *approximated* by a constant:
    ``ln_scale`` (default 1.0, i.e. not applied; :attr:`FeatureTrace.ln_scale` is the mean
    ``1/sigma`` over a prompt). The ranking of tokens never depends on it. Effects through later
    layers (indirect effects) are not included: for those, use :func:`intervene_features`.

    Args:
        model: a TransformerLens model or handle.
        sae: one SAE (or a :class:`BoundSAE`).
        features: one feature or several.
        k: tokens to keep in each direction (default 10).
        ln_scale: constant ``1/sigma`` of the final norm (default 1.0).
    """
    handle = ModelHandle.wrap(model)
    bound = sae if isinstance(sae, BoundSAE) else bind_saes(handle, [sae])[0]
    feats = [features] if isinstance(features, int) else list(features)
    for f in feats:
        _check_feature(bound.hook_name, bound.d_sae, f)
    with torch.no_grad():
        eff = logit_effect_matrix(handle, bound, feats, ln_scale=ln_scale)
    kk = min(int(k), eff.shape[-1])
    pv, pi = eff.topk(kk, dim=-1)
    sv, si = (-eff).topk(kk, dim=-1)
    vocab_str = _token_strs(handle, set(pi.flatten().tolist()) | set(si.flatten().tolist()))
    return LogitEffects(
        hook_name=bound.hook_name,
        features=feats,
        promoted_ids=pi.cpu(),
        promoted_tokens=[[vocab_str[int(t)] for t in row] for row in pi],
        promoted_values=pv.cpu(),
        suppressed_ids=si.cpu(),
        suppressed_tokens=[[vocab_str[int(t)] for t in row] for row in si],
        suppressed_values=(-sv).cpu(),
        ln_scale=float(ln_scale),
    )


def _token_strs(handle: ModelHandle, ids: Iterable[int]) -> dict[int, str]:
    ids = sorted(set(int(i) for i in ids))
    if not ids:
        return {}
    return dict(zip(ids, handle.token_strs(ids), strict=True))


