"""Direct logit attribution (see :mod:`mechwidgets.analysis.lens`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float

from ..._fast import FinalNorm
from ..._model import ModelHandle
from .core import (
    DLABy,
    _answers,
    _check_options,
    _Record,
    _record,
    _stream_names,
    _unembed_weights,
    _w_o,
)


# ---------------------------------------------------------------------------- DLA
@dataclass
class DLAResult:
    """Direct logit attribution of ``logit(answer) - logit(wrong_answer)`` at the last position.

    Attributes:
        labels / values: one entry per part, in residual-stream order: ``"embed"``,
            ``"pos_embed"`` (absent with rotary positions), then per layer either ``"L{l} attn"``
            (``by="component"``) or ``"L{l}H{h}"`` for each head and ``"L{l} attn bias"``
            (``by="head"``/``"position"``), and ``"L{l} MLP"``.
        by: ``"component"``, ``"head"`` or ``"position"``.
        heads: ``[layer, head]`` each head's term (always filled).
        attn_bias: ``[layer]`` each attention layer's ``b_O`` term; ``mlps``: ``[layer]`` each
            MLP's term (zeros for an attention-only model, ``has_mlp`` False).
        head_positions: ``[layer, head, pos]`` each head's term by source position (sums to
            ``heads`` over ``pos``), with ``by="position"``; else None.
        total: the model's own logit difference at the last position.
        norm_bias: the final norm's bias and the unembedding's bias, projected on the
            direction: ``sum(values) + norm_bias == total`` (up to float error).
        answer, wrong_answer: token ids (``wrong_answer`` None: the answer's logit alone).
    """

    labels: list[str]
    values: Float[torch.Tensor, " part"]
    by: str
    heads: Float[torch.Tensor, "layer head"]
    attn_bias: Float[torch.Tensor, " layer"]
    mlps: Float[torch.Tensor, " layer"]
    head_positions: Float[torch.Tensor, "layer head pos"] | None
    total: float
    norm_bias: float
    answer: int
    wrong_answer: int | None
    answer_str: str = ""
    wrong_answer_str: str = ""
    has_mlp: bool = True

    def top(self, n: int = 5) -> list[tuple[str, float]]:
        """The ``n`` parts of largest ``|value|``, as ``(label, value)``."""
        order = self.values.abs().argsort(descending=True)[:n]
        return [(self.labels[int(i)], float(self.values[int(i)])) for i in order]


def _dla_from_record(
    handle: ModelHandle, rec: _Record, *, answer: int, wrong_answer: int | None, by: str
) -> DLAResult:
    norm = FinalNorm.of(handle)
    w_u, b_u = _unembed_weights(handle)
    direction = w_u[:, answer] - (w_u[:, wrong_answer] if wrong_answer is not None else 0)
    bias_u = b_u[answer] - (b_u[wrong_answer] if wrong_answer is not None else 0)
    cache = rec.cache
    names = _stream_names(handle)
    final_last = cache[names[-1]][0, -1].float()
    scale = norm.scale(final_last)

    def project(parts: torch.Tensor) -> torch.Tensor:  # [..., d_model] at the last position
        return norm.linear(parts.float(), scale) @ direction

    labels: list[str] = []
    values: list[torch.Tensor] = []
    embed_parts = [n for n in ("hook_embed", "hook_pos_embed") if n in cache]
    resid0 = cache[names[0]][0, -1].float()
    embed_sum = sum((cache[n][0, -1].float() for n in embed_parts), torch.zeros_like(resid0))
    if embed_parts and torch.allclose(embed_sum, resid0, atol=1e-4 * (1 + float(resid0.abs().max()))):
        for n in embed_parts:
            labels.append(n.removeprefix("hook_"))
            values.append(project(cache[n][0, -1]))
    else:  # e.g. a norm after the embedding: the stream entering block 0 as one part
        labels.append("embed")
        values.append(project(resid0))
    n_layers, n_heads = handle.n_layers, handle.n_heads
    heads = torch.zeros(n_layers, n_heads)
    attn_bias = torch.zeros(n_layers)
    mlps = torch.zeros(n_layers)
    head_pos = torch.zeros(n_layers, n_heads, rec.tokens.shape[1]) if by == "position" else None
    has_mlp = False
    for layer in range(n_layers):
        w_o, b_o = _w_o(handle, layer)
        z = cache[handle.hook_name("z", layer)][0, -1].float()  # [head, d_head]
        per_head = project(torch.einsum("hd,hdm->hm", z, w_o))  # [head]
        bias = project(b_o)
        heads[layer], attn_bias[layer] = per_head.cpu(), bias.cpu()
        if by == "component":
            labels.append(f"L{layer} attn")
            values.append(per_head.sum() + bias)
        else:
            labels += [f"L{layer}H{h}" for h in range(n_heads)] + [f"L{layer} attn bias"]
            values += [*per_head, bias]
        if head_pos is not None:
            pattern = cache[handle.hook_name("pattern", layer)][0, :, -1].float()  # [head, src]
            v = cache[handle.hook_name("v", layer)][0].float()  # [src, kv_head, d_head]
            if v.shape[1] != n_heads:
                v = v.repeat_interleave(n_heads // v.shape[1], 1)
            out = torch.einsum("hs,shd,hdm->hsm", pattern, v, w_o)  # [head, src, d_model]
            head_pos[layer] = project(out).cpu()
        mlp_name = f"blocks.{layer}.hook_mlp_out"
        if mlp_name in cache:
            has_mlp = True
            mlps[layer] = project(cache[mlp_name][0, -1]).cpu()
            labels.append(f"L{layer} MLP")
            values.append(mlps[layer].to(direction.device))
    norm_bias = float(norm.bias(handle.d_model, direction.device) @ direction + bias_u)
    logits = rec.logits[-1]
    total = float(logits[answer] - (logits[wrong_answer] if wrong_answer is not None else 0))
    return DLAResult(
        labels=labels,
        values=torch.stack([torch.as_tensor(v).float().reshape(()) for v in values]).cpu(),
        by=by, heads=heads, attn_bias=attn_bias, mlps=mlps, head_positions=head_pos,
        total=total, norm_bias=norm_bias, answer=answer, wrong_answer=wrong_answer,
        answer_str=handle.token_str(answer),
        wrong_answer_str=handle.token_str(wrong_answer) if wrong_answer is not None else "",
        has_mlp=has_mlp,
    )

def direct_logit_attribution(
    model: Any,
    prompt: str | torch.Tensor,
    *,
    answer: str | int,
    wrong_answer: str | int | None = None,
    by: DLABy = "component",
    max_positions: int = 1024,
) -> DLAResult:
    """Direct logit attribution: each part's direct effect on the answer's logit at the last
    position (see the module docstring).

    Args:
        model: a TransformerLens model or handle.
        prompt: text (BOS is prepended) or a token tensor; the last position is read.
        answer: the token whose logit to explain (a single-token string or an id).
        wrong_answer: a second token: explain ``logit(answer) - logit(wrong_answer)`` (the
            usual metric, e.g. IOI's ``logit(IO) - logit(S)``); None for the answer's logit.
        by: ``"component"`` (embeddings, attention layers, MLPs, as TransformerLens's
            ``decompose_resid``), ``"head"`` (each head and each layer's ``b_O`` apart, as
            ``stack_head_results``) or ``"position"`` (heads also split by source position).
        max_positions: refuse longer prompts (default 1024).

    Returns:
        A :class:`DLAResult`; ``values.sum() + norm_bias`` equals the model's logit difference.
    """
    handle = ModelHandle.wrap(model)
    _check_options(by=by)
    tokens = handle.tokens(prompt, max_positions=max_positions)
    a, w = _answers(handle, answer, wrong_answer)
    with handle.session():
        rec = _record(handle, tokens, parts=True, patterns=by == "position")
        return _dla_from_record(handle, rec, answer=a, wrong_answer=w, by=by)
