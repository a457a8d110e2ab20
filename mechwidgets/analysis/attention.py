"""Attention patterns, head scores and head ablation.

Attention patterns are the softmaxed query-key scores ``blocks.{l}.attn.hook_pattern``
(``[head, dest, src]``: row ``dest`` says where the token at ``dest`` reads from).

Head scores follow TransformerLens's ``head_detector`` (``error_measure="mul"``): the fraction
of a head's attention, summed over destination positions, that lands where a head of that type
should attend, ``sum(pattern * detection) / sum(pattern)``:

- **previous token**: ``src = dest - 1`` (Olsson et al., 2022; Elhage et al., 2021);
- **duplicate token**: earlier positions holding the same token as ``dest``;
- **induction**: the position *after* an earlier occurrence of the token at ``dest``
  ("A B ... A → attend to B", Olsson et al., 2022);
- **first token**: attention to position 0 (the BOS "attention sink"), a mean over ``dest``.

Head ablation replaces a head's output ``hook_z`` (``[pos, head, d_head]``, before ``W_O``) by
zero, by its mean over positions, or by its value on another prompt of the same length
(resample ablation, which keeps the head's output on-distribution and is preferred; see
Chan et al., 2022 and Heimersheim & Nanda, 2024). The effect is read off the next-token
predictions, the per-token loss and the attention patterns of the downstream heads.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from jaxtyping import Float, Int

from .._args import is_int
from .._model import ModelHandle
from ..errors import ComponentError, PromptError

AblationMode = Literal["zero", "mean", "resample"]
ABLATION_MODES: tuple[str, ...] = ("zero", "mean", "resample")
HEAD_SCORE_NAMES: tuple[str, ...] = ("previous_token", "duplicate_token", "induction", "first_token")


@dataclass
class AttentionPatterns:
    """Attention patterns of one prompt.

    Attributes:
        tokens: ``[pos]`` token ids (BOS first).
        str_tokens: the tokens as strings.
        layers: the layers held, in order; ``patterns[i]`` is layer ``layers[i]``.
        patterns: ``[len(layers), head, dest, src]`` attention probabilities (float32, CPU).
    """

    tokens: Int[torch.Tensor, " pos"]
    str_tokens: list[str]
    layers: list[int]
    patterns: Float[torch.Tensor, "layer head dest src"]


def select_layers(handle: ModelHandle, layers: Sequence[int] | None) -> list[int]:
    """Validate a ``layers=`` budget (None means all layers)."""
    if layers is None:
        return list(range(handle.n_layers))
    if is_int(layers):
        layers = [layers]  # type: ignore[list-item]
    elif isinstance(layers, (str, bytes, dict)) or not hasattr(layers, "__iter__"):
        raise ComponentError(f"layers= must be a list of layer numbers (or None for all), got {layers!r}.")
    chosen = [handle.check_layer(layer) for layer in layers]
    if not chosen:
        raise ComponentError("layers= is empty: pass None for all layers, or a list of layers.")
    return sorted(set(chosen))


def get_attention_patterns(
    model: Any,
    prompt: str | torch.Tensor,
    *,
    layers: Sequence[int] | None = None,
    max_positions: int = 512,
) -> AttentionPatterns:
    """Run the model once and collect the attention patterns of ``layers``.

    Args:
        model: a TransformerLens model or :class:`~mechwidgets._model.ModelHandle`.
        prompt: text (BOS is prepended) or a ``[pos]``/``[1, pos]`` token tensor.
        layers: the layers to keep (default: all).
        max_positions: refuse longer prompts (default 512).
    """
    handle = ModelHandle.wrap(model)
    chosen = select_layers(handle, layers)
    tokens = handle.tokens(prompt, max_positions=max_positions)
    names = [handle.hook_name("pattern", layer) for layer in chosen]
    with handle.session():
        _, cache = handle.run_with_cache(tokens, names, return_type=None)
    patterns = torch.stack([cache[n][0] for n in names]).float().cpu()
    return AttentionPatterns(tokens[0].cpu(), handle.str_tokens(tokens), chosen, patterns)


def detection_patterns(tokens: Int[torch.Tensor, " pos"]) -> dict[str, Float[torch.Tensor, "pos pos"]]:
    """The 0/1 ``[dest, src]`` masks of each head type (TransformerLens's definitions)."""
    tokens = tokens.cpu()
    n = tokens.shape[0]
    prev = torch.zeros(n, n)
    if n > 1:
        prev[1:, :-1] = torch.eye(n - 1)
    dup = (tokens[:, None] == tokens[None, :]).float().tril(-1)
    induction = torch.zeros(n, n)
    if n > 1:
        induction[:, 1:] = dup[:, :-1]
    induction = induction.tril()
    first = torch.zeros(n, n)
    first[:, 0] = 1.0
    return {"previous_token": prev, "duplicate_token": dup, "induction": induction, "first_token": first}


def head_scores(
    patterns: Float[torch.Tensor, "layer head dest src"], tokens: Int[torch.Tensor, " pos"]
) -> dict[str, Float[torch.Tensor, "layer head"]]:
    """Score every head against each detection pattern (see the module docstring).

    Returns:
        ``{name: [layer, head]}`` for the names in :data:`HEAD_SCORE_NAMES`; scores lie in [0, 1].
    """
    masks = detection_patterns(tokens)
    total = patterns.sum(dim=(-1, -2))
    return {name: (patterns * mask).sum(dim=(-1, -2)) / total for name, mask in masks.items()}


@dataclass
class Predictions:
    """Top-k next-token predictions at the last position."""

    token_ids: list[int]
    str_tokens: list[str]
    probs: Float[torch.Tensor, " k"]


@dataclass
class AblationResult:
    """What ablating some heads did.

    Attributes:
        heads: the ablated ``(layer, head)`` pairs.
        mode: ``zero``, ``mean`` or ``resample``.
        before / after: top-k next-token predictions at the last position.
        loss_before / loss_after: ``[pos - 1]`` cross-entropy of predicting token ``t + 1`` at
            position ``t``.
        pattern_change: ``[layer, head]`` mean over destination positions of the total-variation
            distance between each head's pattern before and after (0 for heads upstream).
        patterns_after: ``[layer, head, dest, src]`` patterns of the ablated run.
    """

    heads: list[tuple[int, int]]
    mode: str
    before: Predictions
    after: Predictions
    loss_before: Float[torch.Tensor, " pos_minus_1"]
    loss_after: Float[torch.Tensor, " pos_minus_1"]
    pattern_change: Float[torch.Tensor, "layer head"]
    patterns_after: Float[torch.Tensor, "layer head dest src"]


def top_predictions(handle: ModelHandle, logits: torch.Tensor, k: int = 10) -> Predictions:
    """Top-k of a ``[d_vocab]`` logit vector, as probabilities."""
    probs = logits.float().softmax(-1)
    values, ids = probs.topk(min(k, probs.shape[-1]))
    id_list = [int(i) for i in ids]
    return Predictions(id_list, [handle.token_str(i) for i in id_list], values.cpu())


def per_token_loss(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """``[pos - 1]`` cross-entropy of predicting ``tokens[t + 1]`` from ``logits[t]``."""
    logp = logits[:-1].float().log_softmax(-1)
    return -logp.gather(-1, tokens[1:, None].to(logp.device))[:, 0].cpu()


def head_ablation_hooks(
    handle: ModelHandle,
    heads: Sequence[tuple[int, int]],
    mode: str,
    resample_z: dict[str, torch.Tensor] | None = None,
) -> list[tuple[str, Any]]:
    """Forward hooks on ``hook_z`` that ablate ``heads`` (see the module docstring)."""
    by_layer: dict[int, list[int]] = {}
    for layer, head in heads:
        by_layer.setdefault(layer, []).append(head)
    hooks = []
    for layer, hs in by_layer.items():
        name = handle.hook_name("z", layer)

        def hook(z: torch.Tensor, hook: Any, hs: list[int] = hs, name: str = name) -> torch.Tensor:
            z = z.clone()
            if mode == "zero":
                z[:, :, hs] = 0.0
            elif mode == "mean":
                z[:, :, hs] = z[:, :, hs].mean(dim=1, keepdim=True)
            else:
                assert resample_z is not None
                z[:, :, hs] = resample_z[name][:, :, hs].to(z.dtype)
            return z

        hooks.append((name, hook))
    return hooks


def _pair(item: Any) -> tuple[Any, Any]:
    """A ``(layer, head)`` pair, or a :class:`ComponentError` saying what one is."""
    if isinstance(item, (str, bytes)) or not isinstance(item, Sequence) or len(item) != 2:
        raise ComponentError(f"each head is a (layer, head) pair of integers, e.g. (1, 3); got {item!r}.")
    return item[0], item[1]



def resample_tokens(handle: ModelHandle, ablation_prompt: Any, tokens: torch.Tensor, *,
                    max_positions: int | None) -> torch.Tensor:
    """The ablation prompt's tokens (``[1, pos]``) for resample ablation, which takes each
    ablated activation from that prompt at the same position.

    Raises:
        PromptError: it is not the prompt's (``tokens``) token length (both tokenisations shown).
    """
    other = handle.tokens(ablation_prompt, max_positions=max_positions, what="ablation prompt")
    if other.shape[1] != tokens.shape[-1]:
        raise PromptError(
            f"the ablation prompt is {other.shape[1]} tokens but the prompt is "
            f"{tokens.shape[-1]}: resample ablation needs prompts of the same length. "
            f"Prompt tokens: {handle.str_tokens(tokens)}; ablation prompt tokens: "
            f"{handle.str_tokens(other)}."
        )
    return other


def ablate_heads(
    model: Any,
    prompt: str | torch.Tensor,
    heads: Sequence[tuple[int, int]],
    *,
    mode: AblationMode = "zero",
    ablation_prompt: str | torch.Tensor | None = None,
    top_k: int = 10,
    max_positions: int = 512,
) -> AblationResult:
    """Ablate attention heads and measure the effect.

    Args:
        model: a TransformerLens model or handle.
        prompt: the prompt to run.
        heads: ``(layer, head)`` pairs to ablate (may be empty: then before == after).
        mode: ``"zero"``, ``"mean"`` (mean over positions of this prompt) or ``"resample"``
            (the head's output on ``ablation_prompt``, which must have as many tokens).
        ablation_prompt: the prompt to resample from (``mode="resample"`` only).
        top_k: how many next-token predictions to report.

    Raises:
        ComponentError: a layer or head out of range, or an unknown mode.
        PromptError: a missing resample prompt, or one of another length.
    """
    handle = ModelHandle.wrap(model)
    if mode not in ABLATION_MODES:
        raise ComponentError(f"unknown ablation mode {mode!r}: use one of {ABLATION_MODES}.")
    heads = [handle.check_head(*_pair(item)) for item in heads]
    tokens = handle.tokens(prompt, max_positions=max_positions)
    pattern_names = [handle.hook_name("pattern", layer) for layer in range(handle.n_layers)]
    resample_z = None
    with handle.session():
        if mode == "resample":
            if ablation_prompt is None:
                raise PromptError(
                    "mode='resample' needs ablation_prompt=: a second prompt of the same token "
                    "length to take the heads' outputs from."
                )
            other = resample_tokens(handle, ablation_prompt, tokens, max_positions=max_positions)
            z_names = sorted({handle.hook_name("z", layer) for layer, _ in heads})
            _, resample_z = handle.run_with_cache(other, z_names, return_type=None)
        logits_before, cache_before = handle.run_with_cache(tokens, pattern_names)
        hooks = head_ablation_hooks(handle, heads, mode, resample_z)
        logits_after, cache_after = handle.run_with_cache(tokens, pattern_names, fwd_hooks=hooks)
    before = torch.stack([cache_before[n][0] for n in pattern_names]).float().cpu()
    after = torch.stack([cache_after[n][0] for n in pattern_names]).float().cpu()
    change = 0.5 * (after - before).abs().sum(-1).mean(-1)
    toks = tokens[0]
    return AblationResult(
        heads=heads,
        mode=mode,
        before=top_predictions(handle, logits_before[0, -1], top_k),
        after=top_predictions(handle, logits_after[0, -1], top_k),
        loss_before=per_token_loss(logits_before[0], toks),
        loss_after=per_token_loss(logits_after[0], toks),
        pattern_change=change,
        patterns_after=after,
    )


__all__ = [
    "ABLATION_MODES",
    "HEAD_SCORE_NAMES",
    "AblationResult",
    "AttentionPatterns",
    "Predictions",
    "ablate_heads",
    "detection_patterns",
    "get_attention_patterns",
    "head_scores",
]
