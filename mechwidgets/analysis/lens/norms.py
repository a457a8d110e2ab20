"""Residual stream norms (see :mod:`mechwidgets.analysis.lens`)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float

from ..._model import ModelHandle
from ...errors import PromptError
from .core import _stream_names


# ---------------------------------------------------------------------------- norms
@dataclass
class NormResult:
    """Residual stream norms over one or more prompts.

    Attributes:
        layers: row labels (``"L0 pre"`` … ``"final"``), as :class:`LensResult`'s.
        norms: one ``[layer, pos]`` tensor of L2 norms per prompt.
        mean: ``[layer]`` the mean norm over prompts and positions, BOS excluded (the first
            position's stream is an outlier in most models).
        growth: ``[layer - 1]`` ``mean[l + 1] / mean[l]``.
        fitted_growth: ``exp`` of the slope of a least-squares line through ``log(mean)``
            against the layer index: the stream's growth factor per layer.
    """

    layers: list[str]
    norms: list[Float[torch.Tensor, "layer pos"]]
    mean: Float[torch.Tensor, " layer"]
    growth: Float[torch.Tensor, " layer_minus_1"]
    fitted_growth: float


def norm_summary(layers: list[str], norms: list[torch.Tensor]) -> NormResult:
    """:class:`NormResult` of per-prompt ``[layer, pos]`` norms."""
    kept = [n[:, 1:] if n.shape[1] > 1 else n for n in norms]
    mean = torch.cat(kept, dim=1).mean(1)
    growth = mean[1:] / mean[:-1]
    logs = mean.clamp_min(1e-30).log()
    x = torch.arange(len(mean), dtype=torch.float32)
    slope = float(((x - x.mean()) * (logs - logs.mean())).sum() / ((x - x.mean()) ** 2).sum().clamp_min(1e-30))
    return NormResult(layers, norms, mean, growth, math.exp(slope))


def residual_norms(
    model: Any, prompts: str | torch.Tensor | Sequence[str | torch.Tensor], *, max_positions: int = 1024
) -> NormResult:
    """The residual stream's L2 norm at every layer and position (Heimersheim & Turner, 2023).

    Args:
        model: a TransformerLens model or handle.
        prompts: one prompt or a list of prompts (each run on its own; lengths may differ).
        max_positions: refuse longer prompts (default 1024).

    Returns:
        A :class:`NormResult`: per-prompt norms, the mean per layer and the fitted growth factor.
    """
    handle = ModelHandle.wrap(model)
    plist = [prompts] if isinstance(prompts, (str, torch.Tensor)) else list(prompts)
    if not plist:
        raise PromptError("prompts is empty: pass a prompt or a list of prompts.")
    toks = handle.tokens_many(plist, max_positions=max_positions)
    names = _stream_names(handle)
    norms = []
    with handle.session():
        for t in toks:
            _, cache = handle.run_with_cache(t, names, return_type=None)
            norms.append(torch.stack([cache[n][0].float().norm(dim=-1) for n in names]).cpu())
    layers = [f"L{i} pre" for i in range(handle.n_layers)] + ["final"]
    return norm_summary(layers, norms)
