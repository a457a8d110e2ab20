"""The residual stream layer by layer: the logit lens, direct logit attribution, stream norms.

A transformer's residual stream is a sum: the embeddings, then every attention layer's and MLP's
output added in turn. Three standard readings of that sum need no training and one forward pass:

- **The logit lens** (nostalgebraist, 2020, "interpreting GPT: the logit lens"): stop after any
  layer, put the stream through the final norm and the unembedding, and read the distribution
  the model "would" predict there. :func:`logit_lens` does it for every layer's ``resid_pre``
  and the final ``resid_post`` at every position: the top-k tokens, the answer's rank and
  probability, and the KL divergence from the model's final distribution (how far from done the
  prediction is at that layer).
- **Direct logit attribution** (Elhage et al., 2021, "A Mathematical Framework for Transformer
  Circuits"; Wang et al., 2022, "Interpretability in the Wild" use it to find IOI's name movers):
  the final stream is ``embed + pos_embed + sum_l (attn_l + mlp_l)`` and each head's share of
  ``attn_l`` is ``z_h W_O[h]``, so the logit difference ``logit(answer) - logit(wrong)`` splits
  exactly into one term per part once the final norm is frozen (its scale taken from the final
  stream). :func:`direct_logit_attribution` returns those terms; they add up to the model's own
  logit difference, apart from the norm's bias and the unembedding's bias (reported as
  ``norm_bias``). By source position, a head's term splits further through its attention
  pattern: ``z_h[dest] = sum_src pattern[dest, src] v_h[src]``.
- **Residual stream norms** (Heimersheim & Turner, 2023, "Residual stream norms grow
  exponentially over the forward pass"): :func:`residual_norms` measures the stream's L2 norm per
  layer and position and fits the growth factor per layer.

**The norm's scale.** The final LayerNorm (or RMSNorm) divides by the stream's own scale, which
makes the map from stream to logits nonlinear. The lens's ``ln_scale`` names the choice:
``"own"`` (the default) puts each layer's stream through the final norm with its own statistics,
each layer's prediction as if it were the last (nostalgebraist's lens, and what TransformerLens
3.9's ``accumulated_resid(apply_ln=True)`` computes); ``"final"`` divides every layer's stream
by the *final* stream's scale at that position, as ``apply_ln_to_stack`` does with its default
``recompute_ln=False`` (a linear map: early layers, whose streams are small, then read as nearly
uniform). The last layer is the model's own logits either way. Direct logit attribution always
uses the final scale: only then is the map linear and do the parts add up. The norm's weight
and bias are applied in all cases (TransformerLens's ``logit_attrs`` leaves them out because it
expects them folded into the unembedding: ``fold_ln=True``).

Everything is read from one run of the model, through
:meth:`~mechwidgets._model.ModelHandle.run_with_cache`, optionally with the hooks of
:func:`~mechwidgets.analysis.attention.ablation_hooks` (heads on ``hook_z``, MLPs on
``hook_mlp_out``; zero, mean or resample), so an ablated view is the same computation on the
ablated run.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from jaxtyping import Float, Int

from .._fast import FinalNorm
from .._fingerprint import Stamp
from .._model import ModelHandle
from ..errors import AnswerError, ComponentError, PromptError
from .attention import Predictions, ablation_hooks, check_ablation, resample_tokens, top_predictions

LnScale = Literal["final", "own"]
DLABy = Literal["component", "head", "position"]
LN_SCALES: tuple[str, ...] = ("final", "own")
DLA_BY: tuple[str, ...] = ("component", "head", "position")


def _unembed_weights(handle: ModelHandle) -> tuple[torch.Tensor, torch.Tensor]:
    model = handle.model
    w_u = model.unembed.W_U if hasattr(model.unembed, "W_U") else model.W_U
    b_u = getattr(model.unembed, "b_U", None)
    if b_u is None:
        b_u = getattr(model, "b_U", None)
    w_u = w_u.detach().float()
    b_u = torch.zeros(w_u.shape[1], device=w_u.device) if b_u is None else b_u.detach().float()
    return w_u, b_u


def _w_o(handle: ModelHandle, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``W_O`` (``[head, d_head, d_model]``) and ``b_O`` of a layer."""
    attn = handle.model.blocks[layer].attn
    w_o = attn.W_O if hasattr(attn, "W_O") else handle.model.W_O[layer]
    b_o = getattr(attn, "b_O", None)
    if b_o is None:
        b_o = handle.model.b_O[layer]
    return w_o.detach().float(), b_o.detach().float()


# ---------------------------------------------------------------------------- one recorded run
@dataclass
class _Record:
    tokens: torch.Tensor  # [1, pos]
    cache: dict[str, torch.Tensor]
    logits: torch.Tensor  # [pos, d_vocab] the model's own (float32)


def _stream_names(handle: ModelHandle) -> list[str]:
    names = [handle.hook_name("resid_pre", layer) for layer in range(handle.n_layers)]
    return [*names, handle.hook_name("resid_post", handle.n_layers - 1)]


def _record(
    handle: ModelHandle,
    tokens: torch.Tensor,
    *,
    parts: bool,
    patterns: bool = False,
    fwd_hooks: Sequence[tuple[str, Any]] = (),
) -> _Record:
    """One forward pass keeping every stream (and with ``parts`` every part written into it).
    Call inside ``handle.session()``."""
    names = _stream_names(handle)
    if parts:
        names += [n for n in ("hook_embed", "hook_pos_embed") if handle.has_hook(n)]
        for layer in range(handle.n_layers):
            names.append(handle.hook_name("z", layer))
            if handle.has_hook(f"blocks.{layer}.hook_mlp_out"):
                names.append(f"blocks.{layer}.hook_mlp_out")
            if patterns:
                names += [handle.hook_name("pattern", layer), handle.hook_name("v", layer)]
    logits, cache = handle.run_with_cache(tokens, names, fwd_hooks=fwd_hooks)
    return _Record(tokens, cache, logits[0].detach().float())


# ---------------------------------------------------------------------------- logit lens
@dataclass
class LensResult:
    """The logit lens of one prompt.

    Attributes:
        tokens: ``[pos]`` token ids (BOS first); ``str_tokens`` the same as strings.
        layers: row labels: ``"L0 pre"`` … for each block's ``resid_pre``, then ``"final"`` (the
            last block's ``resid_post``); ``len(layers) == n_layers + 1``.
        ln_scale: ``"final"`` or ``"own"`` (see the module docstring).
        top_ids / top_probs: ``[layer, pos, k]`` the lens's top-k tokens and probabilities.
        kl: ``[layer, pos]`` KL(final distribution ‖ this layer's), in nats (0 on the last row).
        answer: the answer token id, or None; ``answer_rank`` (0 = top) and ``answer_prob``:
            ``[layer, pos]`` where an answer was given.
        logits: ``[pos, d_vocab]`` the model's own logits (float32; the last row equals the
            lens's last layer up to float error, except that a model's output soft cap, as
            Gemma 2 has, applies to these and not to the lens).
    """

    tokens: Int[torch.Tensor, " pos"]
    str_tokens: list[str]
    layers: list[str]
    ln_scale: str
    top_ids: Int[torch.Tensor, "layer pos k"]
    top_probs: Float[torch.Tensor, "layer pos k"]
    kl: Float[torch.Tensor, "layer pos"]
    answer: int | None = None
    answer_rank: Int[torch.Tensor, "layer pos"] | None = None
    answer_prob: Float[torch.Tensor, "layer pos"] | None = None
    logits: Float[torch.Tensor, "pos vocab"] | None = field(default=None, repr=False)


def lens_logits(
    handle: ModelHandle, streams: torch.Tensor, final_stream: torch.Tensor, ln_scale: str = "own"
) -> torch.Tensor:
    """``[..., pos, d_vocab]`` logits of streams (``[..., pos, d_model]``) through the final norm
    (scale from ``final_stream`` ``[pos, d_model]``, or each stream's own) and the unembedding."""
    norm = FinalNorm.of(handle)
    w_u, b_u = _unembed_weights(handle)
    streams = streams.float()
    scale = norm.scale(final_stream.float()) if ln_scale == "final" else norm.scale(streams)
    x = norm.linear(streams, scale) + norm.bias(handle.d_model, streams.device)
    if x.ndim == 2:  # one fused multiply-add: no second pass over [pos, d_vocab] for the bias
        return torch.addmm(b_u, x, w_u)
    return x @ w_u + b_u


#: How many vocabulary entries the lens unembeds at once, per position: a ``[pos, chunk]``
#: block of logits (about 4 MB) stays in the CPU's cache while every reduction reads it, instead
#: of five passes over a ``[pos, d_vocab]`` matrix in memory.
LENS_BLOCK = 1 << 20


def _lens_stats(
    block: Any, vocab: int, n_pos: int, final_p: torch.Tensor, neg_entropy: torch.Tensor,
    k: int, answer: int | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """One layer's lens reductions over the vocabulary, a block of columns at a time:
    ``block(start, stop)`` gives the ``[pos, stop - start]`` logits of those tokens. Returns
    ``(top_ids, top_probs, kl, answer_rank, answer_prob)`` (the last two None without an
    answer); the same numbers as the reductions over the whole ``[pos, d_vocab]`` logits:
    ``logsumexp`` accumulated with a running maximum, the top-k merged block by block, the rank
    counted against the answer's logit (its block comes first)."""
    width = max(1024, LENS_BLOCK // max(n_pos, 1))
    starts = list(range(0, vocab, width))
    if answer is not None:  # the answer's block first: its logit is known before any count
        starts.insert(0, starts.pop(answer // width))
    dev = final_p.device
    run_max = torch.full((n_pos,), -math.inf, device=dev)
    run_sum = torch.zeros(n_pos, device=dev)
    dot = torch.zeros(n_pos, device=dev)  # sum_v p_final(v) logits(v)
    rank = torch.zeros(n_pos, dtype=torch.long, device=dev)
    top_v = top_i = a = None
    for start in starts:
        stop = min(start + width, vocab)
        logits = block(start, stop)
        if a is None and answer is not None:
            a = logits[:, answer - start].clone()
        values, ids = logits.topk(min(k, stop - start), dim=-1)
        new_max = torch.maximum(run_max, values[:, 0])
        run_sum = run_sum * (run_max - new_max).exp() + (logits - new_max[:, None]).exp().sum(-1)
        run_max = new_max
        dot += torch.linalg.vecdot(final_p[:, start:stop], logits)
        if a is not None:
            rank += (logits > a[:, None]).sum(-1)
        if top_v is None or top_i is None:
            top_v, top_i = values, ids + start
        else:
            merged_v, order = torch.cat([top_v, values], 1).topk(k, dim=-1)
            top_i, top_v = torch.cat([top_i, ids + start], 1).gather(1, order), merged_v
    assert top_v is not None and top_i is not None
    lse = run_max + run_sum.log()
    kl = (neg_entropy - dot + lse).clamp_min(0)
    if a is None:
        return top_i, (top_v - lse[:, None]).exp(), kl, None, None
    return top_i, (top_v - lse[:, None]).exp(), kl, rank, (a - lse).exp()


def _lens_from_record(
    handle: ModelHandle, rec: _Record, *, answer: int | None, top_k: int, ln_scale: str
) -> LensResult:
    names = _stream_names(handle)
    final = rec.cache[names[-1]][0].float()
    # KL(final || layer) = sum p_f log p_f - sum p_f logits + logsumexp(logits): one dot product
    # per layer over the vocabulary, no second softmax
    final_logp = rec.logits.log_softmax(-1)
    final_p = final_logp.exp()
    neg_entropy = (final_p * final_logp).sum(-1)
    k = min(top_k, handle.d_vocab)
    norm = FinalNorm.of(handle)
    w_u, b_u = _unembed_weights(handle)
    n_pos, vocab = rec.logits.shape
    rows = []
    for name in names:  # one layer at a time, a block of the vocabulary at a time
        x = None
        if name != names[-1]:
            stream = rec.cache[name][0].float()
            scale = norm.scale(final) if ln_scale == "final" else norm.scale(stream)
            x = norm.linear(stream, scale) + norm.bias(handle.d_model, stream.device)

        def block(start: int, stop: int, x: torch.Tensor | None = x) -> torch.Tensor:
            # the last row is the model's own logits (the final stream through the final norm
            # and the unembedding, whichever scale): reused rather than unembedded again
            return rec.logits[:, start:stop] if x is None else torch.addmm(b_u[start:stop], x, w_u[:, start:stop])

        rows.append(_lens_stats(block, vocab, n_pos, final_p, neg_entropy, k, answer))
    tops, probs, kls, ranks, aprobs = zip(*rows, strict=True)
    layers = [f"L{i} pre" for i in range(handle.n_layers)] + ["final"]
    return LensResult(
        tokens=rec.tokens[0].cpu(),
        str_tokens=handle.str_tokens(rec.tokens),
        layers=layers,
        ln_scale=ln_scale,
        top_ids=torch.stack(tops).cpu(),
        top_probs=torch.stack(probs).cpu(),
        kl=torch.stack(kls).cpu(),
        answer=answer,
        answer_rank=torch.stack(ranks).cpu() if answer is not None else None,
        answer_prob=torch.stack(aprobs).cpu() if answer is not None else None,
        logits=rec.logits.cpu(),
    )


def _check_options(top_k: Any = 1, ln_scale: str = "final", by: str = "component") -> None:
    if not isinstance(top_k, int) or isinstance(top_k, bool) or top_k < 1:
        raise ComponentError(f"top_k must be a positive integer, got {top_k!r}.")
    if ln_scale not in LN_SCALES:
        raise ComponentError(f"ln_scale must be one of {LN_SCALES}, got {ln_scale!r}.")
    if by not in DLA_BY:
        raise ComponentError(f"by must be one of {DLA_BY}, got {by!r}.")


def logit_lens(
    model: Any,
    prompt: str | torch.Tensor,
    *,
    answer: str | int | None = None,
    top_k: int = 5,
    ln_scale: LnScale = "own",
    max_positions: int = 1024,
) -> LensResult:
    """The logit lens: what the model would predict after each layer, at every position.

    Args:
        model: a TransformerLens model (3.x ``HookedTransformer``, 4.x ``TransformerBridge``) or
            a :class:`~mechwidgets._model.ModelHandle`.
        prompt: text (BOS is prepended) or a token tensor.
        answer: a single token (``" Mary"``) or id whose rank and probability to follow; None
            for none.
        top_k: how many top tokens to keep per layer and position (default 5).
        ln_scale: ``"own"`` (default: each layer's stream through the final norm with its own
            statistics, as TransformerLens's ``accumulated_resid(apply_ln=True)``) or
            ``"final"`` (the final stream's scale, as ``apply_ln_to_stack``); see the module
            docstring.
        max_positions: refuse longer prompts (default 1024).

    Returns:
        A :class:`LensResult` with ``[n_layers + 1, pos, ...]`` arrays.

    Raises:
        PromptError, AnswerError, ComponentError: a bad prompt, answer or option.
    """
    handle = ModelHandle.wrap(model)
    _check_options(top_k, ln_scale)
    tokens = handle.tokens(prompt, max_positions=max_positions)
    answer_id = None if answer is None else handle.single_token(answer)
    with handle.session():
        rec = _record(handle, tokens, parts=False)
        return _lens_from_record(handle, rec, answer=answer_id, top_k=top_k, ln_scale=ln_scale)


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
        by=by,
        heads=heads,
        attn_bias=attn_bias,
        mlps=mlps,
        head_positions=head_pos,
        total=total,
        norm_bias=norm_bias,
        answer=answer,
        wrong_answer=wrong_answer,
        answer_str=handle.token_str(answer),
        wrong_answer_str=handle.token_str(wrong_answer) if wrong_answer is not None else "",
        has_mlp=has_mlp,
    )


def _answers(handle: ModelHandle, answer: Any, wrong_answer: Any) -> tuple[int, int | None]:
    a = handle.single_token(answer, what="answer")
    w = None if wrong_answer is None else handle.single_token(wrong_answer, what="wrong answer")
    if w is not None and w == a:
        raise AnswerError(
            f"answer and wrong_answer are the same token ({handle.token_str(a)!r}): the logit "
            f"difference would be 0. Pass two different tokens, or wrong_answer=None."
        )
    return a, w


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


# ---------------------------------------------------------------------------- the whole view
@dataclass
class LensView:
    """Everything :class:`~mechwidgets.widgets.lens.LogitLensWidget` draws, from one run: the
    lens, the DLA (None without an answer), the stream norms ``[layer, pos]`` and what was
    ablated."""

    lens: LensResult
    dla: DLAResult | None
    norms: Float[torch.Tensor, "layer pos"]
    ablated_heads: list[tuple[int, int]] = field(default_factory=list)
    ablated_mlps: list[int] = field(default_factory=list)
    mode: str = "zero"


def _view(
    handle: ModelHandle, tokens: torch.Tensor, answers: tuple[int | None, int | None], *, top_k: int,
    ln_scale: str, by: str, heads: Sequence[tuple[int, int]] = (), mlps: Sequence[int] = (),
    mode: str = "zero", resample_from: torch.Tensor | None = None,
) -> LensView:
    """:func:`lens_view` on checked arguments (what :func:`check_ablation` returns)."""
    answer_id, wrong_id = answers
    with handle.session():
        hooks = ablation_hooks(handle, heads, mlps, mode, resample_from)
        rec = _record(handle, tokens, parts=answer_id is not None, patterns=by == "position", fwd_hooks=hooks)
        lens = _lens_from_record(handle, rec, answer=answer_id, top_k=top_k, ln_scale=ln_scale)
        dla = None
        if answer_id is not None:
            dla = _dla_from_record(handle, rec, answer=answer_id, wrong_answer=wrong_id, by=by)
        norms = torch.stack([rec.cache[n][0].float().norm(dim=-1) for n in _stream_names(handle)]).cpu()
    return LensView(lens, dla, norms, list(heads), list(mlps), mode)


def _check_view(
    handle: ModelHandle, prompt: Any, answer: Any, wrong_answer: Any, ablation_prompt: Any, *,
    top_k: Any, ln_scale: str, by: str, max_positions: int | None,
) -> tuple[torch.Tensor, tuple[int | None, int | None], torch.Tensor | None]:
    """The checks of a whole view's arguments: ``(tokens, (answer, wrong_answer) ids, the
    ablation prompt's tokens or None)``."""
    _check_options(top_k, ln_scale, by)
    tokens = handle.tokens(prompt, max_positions=max_positions)
    if answer is None and wrong_answer is not None:
        raise PromptError("wrong_answer= needs answer= too: the logit difference compares the two.")
    answers = (None, None) if answer is None else _answers(handle, answer, wrong_answer)
    other = None if ablation_prompt is None else resample_tokens(handle, ablation_prompt, tokens, max_positions=max_positions)
    return tokens, answers, other


def lens_view(
    model: Any,
    prompt: str | torch.Tensor,
    *,
    answer: str | int | None = None,
    wrong_answer: str | int | None = None,
    top_k: int = 5,
    ln_scale: LnScale = "own",
    by: DLABy = "position",
    ablate_heads: Sequence[tuple[int, int]] = (),
    ablate_mlps: Sequence[int] = (),
    mode: str = "zero",
    ablation_prompt: str | torch.Tensor | None = None,
    max_positions: int = 1024,
) -> LensView:
    """:func:`logit_lens`, :func:`direct_logit_attribution` and the stream norms of one run of
    the model, optionally with heads and MLPs ablated (``mode`` zero, mean or resample from
    ``ablation_prompt``): the numbers equal those functions' on the same (ablated) run."""
    handle = ModelHandle.wrap(model)
    tokens, answers, other = _check_view(handle, prompt, answer, wrong_answer, ablation_prompt, top_k=top_k,
                                         ln_scale=ln_scale, by=by, max_positions=max_positions)
    heads, mlps = check_ablation(handle, ablate_heads, ablate_mlps, mode, resample_from=other)
    return _view(handle, tokens, answers, top_k=top_k, ln_scale=ln_scale, by=by, heads=heads, mlps=mlps,
                 mode=mode, resample_from=other)


class LensAnalysis:
    """The whole lens view of one prompt (:class:`LensView`: lens, DLA by source position,
    norms), prepared for :class:`~mechwidgets.widgets.lens.LogitLensWidget` or headless use,
    with live ablation of heads and MLPs. Every argument is checked here, once (as
    :func:`lens_view`). The clean view carries a :class:`~mechwidgets._fingerprint.Stamp` of the
    model: :meth:`stale` says when the model changed since, :meth:`recompute` runs it again.

    Attributes:
        view: the clean run's :class:`LensView`; ``last_ablation`` the ablated run's (None when
            nothing is ablated); ``ablated``: ``{heads, mlps, mode}`` in force.
        prompt: the prompt as text; ``tokens``: ``[1, pos]``; ``answers``: the (answer,
            wrong answer) ids, None where not given.
    """

    def __init__(
        self,
        model: Any,
        prompt: str | torch.Tensor,
        *,
        answer: str | int | None = None,
        wrong_answer: str | int | None = None,
        ablation_prompt: str | torch.Tensor | None = None,
        top_k: int = 5,
        ln_scale: LnScale = "own",
        max_positions: int = 512,
    ) -> None:
        self.handle = handle = ModelHandle.wrap(model)
        self.tokens, self.answers, self.resample_from = _check_view(
            handle, prompt, answer, wrong_answer, ablation_prompt, top_k=top_k, ln_scale=ln_scale,
            by="position", max_positions=max_positions,
        )
        self.top_k, self.ln_scale = top_k, ln_scale
        self.has_mlp = handle.has_hook(handle.hook_name("mlp_out", 0))
        self.stamp = Stamp(handle.model)
        self.view = self._run()
        self.prompt = prompt if isinstance(prompt, str) else "".join(self.view.lens.str_tokens)
        self.last_ablation: LensView | None = None
        self.ablated: dict[str, Any] = {"heads": [], "mlps": [], "mode": "zero"}

    def _run(self, heads: Sequence[tuple[int, int]] = (), mlps: Sequence[int] = (), mode: str = "zero") -> LensView:
        return _view(self.handle, self.tokens, self.answers, top_k=self.top_k, ln_scale=self.ln_scale,
                     by="position", heads=heads, mlps=mlps, mode=mode, resample_from=self.resample_from)

    def ablate(self, heads: Sequence[Any] = (), mlps: Sequence[Any] = (), mode: str = "zero") -> LensView | None:
        """Ablate ``heads`` (``(layer, head)`` pairs) and ``mlps`` (layers) with ``mode`` and
        run the view again (:attr:`last_ablation`); nothing to ablate clears it (None)."""
        pairs, layers = check_ablation(self.handle, heads, mlps, mode, resample_from=self.resample_from)
        self.ablated = {"heads": [list(p) for p in pairs], "mlps": layers, "mode": mode}
        self.last_ablation = self._run(pairs, layers, mode) if pairs or layers else None
        return self.last_ablation

    def stale(self) -> str | None:
        """What changed in the model since the view was computed (None: nothing)."""
        return self.stamp.stale()

    def recompute(self, *, ablation: bool = True) -> None:
        """Run the clean view again on the model as it is now, and (``ablation``) the ablation
        in force."""
        self.view = self._run()
        self.stamp.renew()
        if ablation and self.last_ablation is not None:
            self.ablate(**self.ablated)

    def layer_topk(self, layer: Any, run: str = "clean") -> tuple[torch.Tensor, torch.Tensor]:
        """One lens row's ``([pos, k] top ids, [pos, k] probabilities)`` of the clean run or
        (``run="ablated"``, when there is one) the ablated run."""
        n = len(self.view.lens.layers)
        if not isinstance(layer, int) or isinstance(layer, bool) or not 0 <= layer < n:
            raise ComponentError(f"lens layer {layer!r} is out of range: rows are 0..{n - 1} "
                                 f"({self.view.lens.layers[0]} … {self.view.lens.layers[-1]}).")
        if run not in ("clean", "ablated"):
            raise ComponentError(f"run must be 'clean' or 'ablated', got {run!r}.")
        view = self.view if run == "clean" or self.last_ablation is None else self.last_ablation
        return view.lens.top_ids[layer], view.lens.top_probs[layer]

    def predictions(self, view: LensView, k: int = 8) -> Predictions:
        """The top ``k`` next tokens of ``view``'s run at the last position."""
        assert view.lens.logits is not None
        return top_predictions(self.handle, view.lens.logits[-1], k)


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


__all__ = [
    "DLA_BY",
    "LN_SCALES",
    "DLAResult",
    "FinalNorm",
    "LensAnalysis",
    "LensResult",
    "LensView",
    "NormResult",
    "ablation_hooks",
    "direct_logit_attribution",
    "lens_logits",
    "lens_view",
    "logit_lens",
    "norm_summary",
    "residual_norms",
]
