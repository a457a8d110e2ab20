"""The recorded run and the logit lens (see :mod:`mechwidgets.analysis.lens`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from jaxtyping import Float, Int

from ..._fast import FinalNorm
from ..._model import ModelHandle
from ...errors import AnswerError, ComponentError

LnScale = Literal["final", "own"]
DLABy = Literal["component", "head", "position"]
LN_SCALES: tuple[str, ...] = ("final", "own")
DLA_BY: tuple[str, ...] = ("component", "head", "position")


def _unembed_weights(handle: ModelHandle) -> tuple[torch.Tensor, torch.Tensor]:
    return handle.unembedding()


def _w_o(handle: ModelHandle, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``W_O`` (``[head, d_head, d_model]``) and ``b_O`` of a layer."""
    return handle.head_out_weights(layer)


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
        computed_from: the lens is computed at positions ``computed_from:`` (0: every position);
            earlier positions hold zeros until :meth:`LensAnalysis.complete` fills them in.
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
    computed_from: int = 0


def _normed(handle: ModelHandle, norm: FinalNorm, streams: torch.Tensor, final: torch.Tensor, ln_scale: str) -> torch.Tensor:
    """Streams (``[..., pos, d_model]``) through the final norm, with the final stream's scale
    (``final`` ``[pos, d_model]``) or each stream's own."""
    streams = streams.float()
    scale = norm.scale(final.float()) if ln_scale == "final" else norm.scale(streams)
    return norm.linear(streams, scale) + norm.bias(handle.d_model, streams.device)


def lens_logits(
    handle: ModelHandle, streams: torch.Tensor, final_stream: torch.Tensor, ln_scale: str = "own"
) -> torch.Tensor:
    """``[..., pos, d_vocab]`` logits of streams (``[..., pos, d_model]``) through the final norm
    (scale from ``final_stream`` ``[pos, d_model]``, or each stream's own) and the unembedding."""
    w_u, b_u = _unembed_weights(handle)
    x = _normed(handle, handle.final_norm(), streams, final_stream, ln_scale)
    if x.ndim == 2:  # one fused multiply-add: no second pass over [pos, d_vocab] for the bias
        return torch.addmm(b_u, x, w_u)
    return x @ w_u + b_u


#: How many logits the lens holds at once: a ``[rows, pos, chunk]`` block of the vocabulary
#: (about 4 MB) stays in the CPU's cache while every reduction reads it, instead of five passes
#: over ``[rows, pos, d_vocab]`` logits in memory.
LENS_BLOCK = 1 << 20

Row = tuple[torch.Tensor, torch.Tensor, torch.Tensor, "torch.Tensor | None", "torch.Tensor | None"]


def _lens_stats(
    block: Any, vocab: int, cells: int, final_p: torch.Tensor, neg_entropy: torch.Tensor, k: int, answer: int | None,
) -> Row:
    """Lens reductions over the vocabulary, a block of columns at a time: ``block(start, stop)``
    gives the ``[rows, pos, stop - start]`` logits of those tokens (``cells = rows * pos``).
    Returns ``[rows, pos, ...]`` ``(top_ids, top_probs, kl, answer_rank, answer_prob)`` (the last
    two None without an answer): the same numbers as the reductions over the whole
    ``[..., d_vocab]`` logits, ``logsumexp`` accumulated with a running maximum, the top-k merged
    block by block, the rank counted against the answer's logit (its block comes first)."""
    width = max(1024, LENS_BLOCK // max(cells, 1))
    starts = list(range(0, vocab, width))
    if answer is not None:  # the answer's block first: its logit is known before any count
        starts.insert(0, starts.pop(answer // width))
    run_max = run_sum = dot = rank = top_v = top_i = a = None
    for start in starts:
        stop = min(start + width, vocab)
        logits = block(start, stop)
        if a is None and answer is not None:
            a = logits[..., answer - start].clone()
        values, ids = logits.topk(min(k, stop - start), dim=-1)
        block_max = values[..., 0]
        new_max = block_max if run_max is None else torch.maximum(run_max, block_max)
        block_sum = (logits - new_max[..., None]).exp().sum(-1)
        run_sum = block_sum if run_sum is None or run_max is None else run_sum * (run_max - new_max).exp() + block_sum
        run_max = new_max
        block_dot = torch.linalg.vecdot(final_p[:, start:stop], logits)  # sum_v p_final(v) logits(v)
        dot = block_dot if dot is None else dot + block_dot
        if a is not None:
            block_rank = (logits > a[..., None]).sum(-1)
            rank = block_rank if rank is None else rank + block_rank
        if top_v is None or top_i is None:
            top_v, top_i = values, ids + start
        else:
            merged_v, order = torch.cat([top_v, values], -1).topk(k, dim=-1)
            top_i, top_v = torch.cat([top_i, ids + start], -1).gather(-1, order), merged_v
    assert top_v is not None and top_i is not None and run_max is not None and run_sum is not None and dot is not None
    lse = run_max + run_sum.log()
    kl = (neg_entropy - dot + lse).clamp_min(0)
    probs = (top_v - lse[..., None]).exp()
    return top_i, probs, kl, rank, None if a is None else (a - lse).exp()


def _lens_rows(
    handle: ModelHandle, rec: _Record, positions: slice, rows: Sequence[int], *, answer: int | None, k: int,
    ln_scale: str,
) -> Row:
    """The lens's ``rows`` (stream indices: ``n_layers`` is the final stream) at ``positions``,
    ``[len(rows), pos, ...]`` (:func:`_lens_stats`): the layers' streams unembedded together, in
    one pass over the unembedding per vocabulary block."""
    names = _stream_names(handle)
    final = rec.cache[names[-1]][0, positions].float()
    # KL(final || layer) = sum p_f log p_f - sum p_f logits + logsumexp(logits): one dot product
    # per layer over the vocabulary, no second softmax
    own_logits = rec.logits[positions]
    final_logp = own_logits.log_softmax(-1)
    final_p = final_logp.exp()
    neg_entropy = (final_p * final_logp).sum(-1)
    n_pos, vocab = own_logits.shape
    layers = [r for r in rows if r < handle.n_layers]
    parts: list[Row] = []
    if layers:
        norm = handle.final_norm()
        w_u, b_u = _unembed_weights(handle)
        x = torch.cat([_normed(handle, norm, rec.cache[names[r]][0, positions], final, ln_scale) for r in layers])

        def unembedded(start: int, stop: int) -> torch.Tensor:
            return torch.addmm(b_u[start:stop], x, w_u[:, start:stop]).view(len(layers), n_pos, stop - start)

        parts.append(_lens_stats(unembedded, vocab, x.shape[0], final_p, neg_entropy, k, answer))
    if len(layers) < len(rows):
        # the last row is the model's own logits (the final stream through the final norm and
        # the unembedding, whichever scale): reused rather than unembedded again
        def own(start: int, stop: int) -> torch.Tensor:
            return own_logits[None, :, start:stop]

        parts.append(_lens_stats(own, vocab, n_pos, final_p, neg_entropy, k, answer))
    return tuple(  # type: ignore[return-value]
        None if parts[0][i] is None else torch.cat([part[i] for part in parts]).cpu()  # type: ignore[misc]
        for i in range(5)
    )


def _lens_from_record(
    handle: ModelHandle, rec: _Record, *, answer: int | None, top_k: int, ln_scale: str, start: int = 0
) -> LensResult:
    """The lens of a recorded run at positions ``start:`` (earlier ones zeros, ``computed_from``)."""
    k = min(top_k, handle.d_vocab)
    row = _lens_rows(handle, rec, slice(start, None), range(handle.n_layers + 1), answer=answer, k=k, ln_scale=ln_scale)
    n_pos = rec.logits.shape[0]

    def padded(part: torch.Tensor) -> torch.Tensor:
        if not start:
            return part
        out = part.new_zeros((part.shape[0], n_pos, *part.shape[2:]))
        out[:, start:] = part
        return out

    top_ids, top_probs, kl, rank, aprob = row
    return LensResult(
        tokens=rec.tokens[0].cpu(),
        str_tokens=handle.str_tokens(rec.tokens),
        layers=[f"L{i} pre" for i in range(handle.n_layers)] + ["final"],
        ln_scale=ln_scale,
        top_ids=padded(top_ids),
        top_probs=padded(top_probs),
        kl=padded(kl),
        answer=answer,
        answer_rank=None if rank is None else padded(rank),
        answer_prob=None if aprob is None else padded(aprob),
        logits=rec.logits.cpu(),
        computed_from=start,
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


def _answers(handle: ModelHandle, answer: Any, wrong_answer: Any) -> tuple[int, int | None]:
    a = handle.single_token(answer, what="answer")
    w = None if wrong_answer is None else handle.single_token(wrong_answer, what="wrong answer")
    if w is not None and w == a:
        raise AnswerError(
            f"answer and wrong_answer are the same token ({handle.token_str(a)!r}): the logit "
            f"difference would be 0. Pass two different tokens, or wrong_answer=None."
        )
    return a, w
