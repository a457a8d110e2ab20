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

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypedDict

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int

from .._args import as_int, is_int
from .._fingerprint import Stamp
from .._model import ModelHandle
from ..errors import ComponentError, PromptError

AblationMode = Literal["zero", "mean", "resample"]
ABLATION_MODES: tuple[str, ...] = ("zero", "mean", "resample")
HEAD_SCORE_NAMES: tuple[str, ...] = ("previous_token", "duplicate_token", "induction", "first_token")
#: Side of the thumbnail grid cells (thumbnails are max-pooled to at most this many rows/cols).
THUMBNAIL_SIZE = 32


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
    max_positions: int | None = 512,
) -> AttentionPatterns:
    """Run the model once and collect the attention patterns of ``layers``.

    Args:
        model: a TransformerLens model or :class:`~mechwidgets._model.ModelHandle`.
        prompt: text (BOS is prepended) or a ``[pos]``/``[1, pos]`` token tensor.
        layers: the layers to keep (default: all).
        max_positions: refuse longer prompts (default 512; None: the model's context only).
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
        heads: the ablated ``(layer, head)`` pairs; ``mode``: ``zero``, ``mean`` or ``resample``.
        pattern_change: ``[layer, head]`` mean over destination positions of the total-variation
            distance between each head's pattern before and after (0 for heads upstream).
        patterns_after: ``[layer, head, dest, src]`` patterns of the ablated run.
        before / after: top-k next-token predictions at the last position, each followed by its
            run's ``[pos - 1]`` cross-entropy of predicting token ``t + 1`` at position ``t``
            (``loss_before`` / ``loss_after``).
    """

    heads: list[tuple[int, int]]
    mode: str
    pattern_change: Float[torch.Tensor, "layer head"]
    patterns_after: Float[torch.Tensor, "layer head dest src"]
    before: Predictions
    loss_before: Float[torch.Tensor, " pos_minus_1"]
    after: Predictions
    loss_after: Float[torch.Tensor, " pos_minus_1"]

    def top_changed(self, n: int) -> list[dict[str, Any]]:
        """The ``n`` heads whose pattern changed most (``{layer, head, change}``, largest first;
        unchanged heads left out)."""
        flat = self.pattern_change.flatten()
        n_heads = self.pattern_change.shape[1]
        order = flat.argsort(descending=True)[:n]
        return [{"layer": int(i) // n_heads, "head": int(i) % n_heads, "change": float(flat[i])}
                for i in order if float(flat[i]) > 0]


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


def check_ablation(
    handle: ModelHandle,
    heads: Sequence[Any],
    mlps: Sequence[Any] = (),
    mode: str = "zero",
    *,
    resample_from: torch.Tensor | None = None,
) -> tuple[list[tuple[int, int]], list[int]]:
    """Check an ablation: ``heads`` as ``(layer, head)`` pairs and ``mlps`` as layers, in
    range (plain ints back, numpy integers too), ``mode`` one of :data:`ABLATION_MODES`, and for
    resample ablation (of anything) a prompt to resample from (``resample_from``, its tokens).

    Raises:
        ComponentError: an unknown mode, a malformed pair, a layer or head out of range, an MLP
            of a model without MLPs.
        PromptError: resample ablation with no prompt to resample from.
    """
    if mode not in ABLATION_MODES:
        raise ComponentError(f"unknown ablation mode {mode!r}: use one of {ABLATION_MODES}.")
    pairs = [handle.check_head(*_pair(item)) for item in heads]
    layers = [handle.check_layer(layer) for layer in mlps]
    if layers and not handle.has_hook(handle.hook_name("mlp_out", layers[0])):
        raise ComponentError("this model has no MLPs (attention-only): ablate heads instead.")
    if mode == "resample" and resample_from is None and (pairs or layers):
        raise PromptError(
            "resample ablation needs ablation_prompt=: a second prompt of the same token length "
            "to take the ablated outputs from; or choose zero or mean ablation."
        )
    return pairs, layers


def ablation_hooks(
    handle: ModelHandle,
    heads: Sequence[tuple[int, int]],
    mlps: Sequence[int] = (),
    mode: str = "zero",
    resample_from: torch.Tensor | None = None,
) -> list[tuple[str, Any]]:
    """Forward hooks that ablate ``heads`` (on ``hook_z``, ``[pos, head, d_head]``) and ``mlps``
    (on ``hook_mlp_out``): zero, mean over positions, or (``resample``) the value on the
    ``resample_from`` tokens, whose run this records first. Takes what :func:`check_ablation`
    returns; call inside ``handle.session()``."""
    by_layer: dict[int, list[int]] = {}
    for layer, head in heads:
        by_layer.setdefault(layer, []).append(head)
    head_names = {handle.hook_name("z", layer): hs for layer, hs in by_layer.items()}
    mlp_names = [handle.hook_name("mlp_out", layer) for layer in mlps]
    other: dict[str, torch.Tensor] = {}
    if mode == "resample" and (head_names or mlp_names):
        assert resample_from is not None
        _, other = handle.run_with_cache(resample_from, sorted({*head_names, *mlp_names}), return_type=None)

    def replacement(act: torch.Tensor, name: str, hs: list[int] | None = None) -> torch.Tensor:
        part = act if hs is None else act[:, :, hs]  # act: [batch, pos, ...]
        if mode == "zero":
            return torch.zeros_like(part)
        if mode == "mean":
            return part.mean(dim=1, keepdim=True).expand_as(part)
        source = other[name] if hs is None else other[name][:, :, hs]
        return source.to(act.dtype)

    hooks: list[tuple[str, Any]] = []
    for name, hs in head_names.items():

        def head_hook(z: torch.Tensor, hook: Any, hs: list[int] = hs, name: str = name) -> torch.Tensor:
            z = z.clone()
            z[:, :, hs] = replacement(z, name, hs)
            return z

        hooks.append((name, head_hook))
    for name in mlp_names:

        def mlp_hook(out: torch.Tensor, hook: Any, name: str = name) -> torch.Tensor:
            return replacement(out, name).clone()

        hooks.append((name, mlp_hook))
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


def _ablate(
    handle: ModelHandle, tokens: torch.Tensor, heads: list[tuple[int, int]], mode: str,
    resample_from: torch.Tensor | None, top_k: int,
) -> AblationResult:
    """:func:`ablate_heads` on checked arguments (``tokens`` ``[1, pos]``)."""
    pattern_names = [handle.hook_name("pattern", layer) for layer in range(handle.n_layers)]
    with handle.session():
        hooks = ablation_hooks(handle, heads, (), mode, resample_from)
        logits_before, cache_before = handle.run_with_cache(tokens, pattern_names)
        logits_after, cache_after = handle.run_with_cache(tokens, pattern_names, fwd_hooks=hooks)
    before = torch.stack([cache_before[n][0] for n in pattern_names]).float().cpu()
    after = torch.stack([cache_after[n][0] for n in pattern_names]).float().cpu()
    toks = tokens[0]
    return AblationResult(
        heads=heads,
        mode=mode,
        pattern_change=0.5 * (after - before).abs().sum(-1).mean(-1),
        patterns_after=after,
        before=top_predictions(handle, logits_before[0, -1], top_k),
        loss_before=per_token_loss(logits_before[0], toks),
        after=top_predictions(handle, logits_after[0, -1], top_k),
        loss_after=per_token_loss(logits_after[0], toks),
    )


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
    tokens = handle.tokens(prompt, max_positions=max_positions)
    other = None
    if mode == "resample" and ablation_prompt is not None:
        other = resample_tokens(handle, ablation_prompt, tokens, max_positions=max_positions)
    pairs, _ = check_ablation(handle, heads, (), mode, resample_from=other)
    return _ablate(handle, tokens, pairs, mode, other, top_k)


def thumbnails(patterns: Float[torch.Tensor, "layer head dest src"]) -> torch.Tensor:
    """``[layer, head, t, t]`` uint8 thumbnails of patterns: max-pooled to ``t =
    min(pos, THUMBNAIL_SIZE)`` rows and columns, scaled to 0..255."""
    n_layers, n_heads, pos, _ = patterns.shape
    size = min(pos, THUMBNAIL_SIZE)
    flat = patterns.reshape(n_layers * n_heads, 1, pos, pos)
    pooled = F.adaptive_max_pool2d(flat, size) if size < pos else flat
    return (pooled.reshape(n_layers, n_heads, size, size) * 255).round().clamp(0, 255).to(torch.uint8)


# ---------------------------------------------------------------------------- analysis objects
class AttentionAnalysis:
    """Attention patterns of one prompt with their head scores, prepared for a view
    (:class:`~mechwidgets.widgets.attention.AttentionWidget`) or headless use. This base holds
    patterns given to it (e.g. precomputed, :meth:`from_patterns`): no model stands behind them,
    so nothing is recomputed and :meth:`ablate` is unavailable; :class:`LiveAttention` runs a model.

    Attributes:
        result: the :class:`AttentionPatterns` (tokens, str tokens, layers shown, patterns).
        scores: ``{name: [layer, head]}`` head scores of :data:`HEAD_SCORE_NAMES`.
        prompt: the prompt as text; ``n_layers`` / ``n_heads``: the model's (the layers shown are
            ``result.layers``).
        seconds: how long computing the patterns took (a recompute's expected cost).
    """

    handle: ModelHandle | None = None
    has_ablation_prompt = False

    def __init__(self, result: AttentionPatterns, *, prompt: str | None = None, n_layers: int | None = None) -> None:
        self.result = result
        self.scores = head_scores(result.patterns, result.tokens)
        self.prompt = "".join(result.str_tokens) if prompt is None else prompt
        self.n_layers = max(result.layers) + 1 if n_layers is None else n_layers
        self.n_heads = int(result.patterns.shape[1])
        self.seconds = 0.0

    @classmethod
    def from_patterns(
        cls, tokens: Sequence[str], attention: Any, *, max_positions: int = 512
    ) -> AttentionAnalysis:
        """Precomputed patterns (CircuitsVis's call shape): ``attention`` ``[head, dest, src]``
        (one layer) or ``[layer, head, dest, src]`` (a tensor or numpy array) and one str token
        per position; head scores detect duplicates by the str tokens.

        Raises:
            PromptError: a bad shape, a token count that does not match, no tokens, or more than
                ``max_positions`` positions (a hovered layer of a long prompt would send
                hundreds of MB).
        """
        att = torch.as_tensor(attention).detach().float().cpu()
        if att.ndim == 3:
            att = att[None]
        if att.ndim != 4 or att.shape[-1] != att.shape[-2]:
            raise PromptError(
                f"attention must be [head, dest, src] or [layer, head, dest, src] with dest == src, "
                f"got shape {tuple(att.shape)}."
            )
        strs = [str(t) for t in tokens]
        if len(strs) != att.shape[-1]:
            raise PromptError(
                f"got {len(strs)} tokens but attention covers {att.shape[-1]} positions: pass one "
                f"str token per position."
            )
        if not strs:
            raise PromptError("tokens is empty: pass one str token per position.")
        n = len(strs)
        if n > max_positions:
            raise PromptError(
                f"the attention covers {n} positions, more than max_positions={max_positions}: "
                f"pass fewer positions (e.g. attention[..., :{max_positions}, :{max_positions}] "
                f"and as many tokens) or a larger max_positions= (larger views take longer to "
                f"send and draw)."
            )
        ids: dict[str, int] = {}  # duplicate detection needs ids: number the distinct strings
        token_ids = torch.tensor([ids.setdefault(t, len(ids)) for t in strs])
        return cls(AttentionPatterns(token_ids, strs, list(range(att.shape[0])), att))

    @property
    def patterns(self) -> Float[torch.Tensor, "layer head dest src"]:
        """``[len(layers), head, dest, src]`` patterns (float32)."""
        return self.result.patterns

    def layer_index(self, layer: Any) -> int:
        """Where ``layer`` is in :attr:`patterns` (a layer of the model that is shown)."""
        layer = as_int(layer, "layer", lo=0, hi=self.n_layers - 1)
        if layer not in self.result.layers:
            raise ComponentError(
                f"layer {layer} is not shown: this view was built with layers="
                f"{self.result.layers}. Pass layers=None to show_attention for all layers."
            )
        return self.result.layers.index(layer)

    def pattern(self, layer: Any, head: Any) -> Float[torch.Tensor, "dest src"]:
        """One head's ``[dest, src]`` pattern."""
        index = self.layer_index(layer)
        return self.patterns[index, as_int(head, "head", lo=0, hi=self.n_heads - 1)]

    def thumbnails(self) -> torch.Tensor:
        """:func:`thumbnails` of the patterns."""
        return thumbnails(self.patterns)

    def stale(self) -> str | None:
        """What changed in the model since the patterns were taken (None: nothing, or no model)."""
        return None

    def recompute(self) -> None:
        """Take the patterns and scores again, of the model as it is now."""

    def ablate(self, heads: Sequence[Any], mode: str = "zero", *, top_k: int = 10) -> AblationResult:
        """Ablate heads and re-run the model (see :class:`LiveAttention`); unavailable here."""
        raise ComponentError(
            "this view was built from precomputed patterns, with no model behind it, so it "
            "cannot run ablations. Use show_attention(model, prompt) for a live view."
        )


class AttentionOptions(TypedDict, total=False):
    """The keyword arguments of :class:`LiveAttention` (its docstring gives their defaults), as
    :func:`mechwidgets.show_attention` passes them through."""

    ablation_prompt: str | torch.Tensor | None
    max_positions: int
    layers: Sequence[int] | None


class LiveAttention(AttentionAnalysis):
    """The attention of ``prompt`` on a model, with head ablation: every argument is checked
    here, once. The patterns carry a :class:`~mechwidgets._fingerprint.Stamp` of the model:
    :meth:`stale` says when the model changed since, :meth:`recompute` takes them again.

    Args:
        model: a TransformerLens model or :class:`~mechwidgets._model.ModelHandle`.
        prompt: text (BOS is prepended) or a token tensor.
        ablation_prompt: a second prompt of the same token length, for resample ablation.
        max_positions: refuse longer prompts (default 512).
        layers: the layers to show (default: all).
    """

    def __init__(
        self,
        model: Any,
        prompt: str | torch.Tensor,
        *,
        ablation_prompt: str | torch.Tensor | None = None,
        max_positions: int = 512,
        layers: Sequence[int] | None = None,
    ) -> None:
        handle = ModelHandle.wrap(model)
        chosen = select_layers(handle, layers)
        self.tokens = handle.tokens(prompt, max_positions=max_positions)  # [1, pos]
        self.resample_from = (None if ablation_prompt is None else
                              resample_tokens(handle, ablation_prompt, self.tokens, max_positions=max_positions))
        self.handle = handle
        self.has_ablation_prompt = ablation_prompt is not None
        self.stamp = Stamp(handle.model)
        t0 = time.perf_counter()
        result = get_attention_patterns(handle, self.tokens, layers=chosen, max_positions=max_positions)
        text = prompt if isinstance(prompt, str) else "".join(result.str_tokens)
        super().__init__(result, prompt=text, n_layers=handle.n_layers)
        self.seconds = time.perf_counter() - t0

    def stale(self) -> str | None:
        return self.stamp.stale()

    def recompute(self) -> None:
        assert self.handle is not None
        t0 = time.perf_counter()
        self.result = get_attention_patterns(self.handle, self.tokens, layers=self.result.layers, max_positions=None)
        self.scores = head_scores(self.result.patterns, self.result.tokens)
        self.stamp.renew()
        self.seconds = time.perf_counter() - t0

    def ablate(self, heads: Sequence[Any], mode: str = "zero", *, top_k: int = 10) -> AblationResult:
        """Ablate ``heads`` (``(layer, head)`` pairs; may be empty) with ``mode`` and re-run the
        model (:func:`ablate_heads` on this prompt)."""
        assert self.handle is not None
        pairs, _ = check_ablation(self.handle, heads, (), mode, resample_from=self.resample_from)
        return _ablate(self.handle, self.tokens, pairs, mode, self.resample_from, top_k)


__all__ = [
    "ABLATION_MODES",
    "HEAD_SCORE_NAMES",
    "AblationResult",
    "AttentionAnalysis",
    "AttentionPatterns",
    "LiveAttention",
    "Predictions",
    "ablate_heads",
    "ablation_hooks",
    "check_ablation",
    "detection_patterns",
    "get_attention_patterns",
    "head_scores",
    "thumbnails",
]
