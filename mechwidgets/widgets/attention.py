"""The attention widget: patterns, head scores and live head ablation.

Python owns the model; the frontend (``js/attention.ts``) draws. State on screen lives in traits
(so it survives a save); everything that runs the model goes through the request protocol of
:class:`~mechwidgets.widgets._base.MechWidget`:

- ``layer_patterns {layer}`` → that layer's full patterns (float16, or uint8 when large), sent on
  request so a big model never ships all its attention at once;
- ``select_head {layer, head}`` → the ``selected`` and ``pattern`` traits;
- ``ablate {heads, mode}`` → the ``ablation`` trait (predictions, loss, changed heads).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
import traitlets

from .._args import Int, ListOf, Str, Tuple, as_int
from .._fingerprint import Stamp
from .._model import ModelHandle
from .._tensor import encode_array
from ..analysis.attention import (
    ABLATION_MODES,
    AblationResult,
    AttentionPatterns,
    ablate_heads,
    get_attention_patterns,
    head_scores,
)
from ..errors import ComponentError, PromptError
from ._base import MAX_UPDATE_BYTES, MechWidget
from ._requests import page_request
from ._svg import heatmap_svg

#: Side of the thumbnail grid cells (thumbnails are max-pooled to at most this many rows/cols).
THUMBNAIL_SIZE = 32
#: How many downstream heads the ablation view lists.
TOP_CHANGED_HEADS = 10


def _n_layers(w: AttentionWidget) -> int:
    """Layers of the model behind the view (Python-side state, never the page's traits)."""
    return w._handle.n_layers if w._handle is not None else max(w._result.layers) + 1


def _n_heads(w: AttentionWidget) -> int:
    return int(w._result.patterns.shape[1])


#: The request arguments the page may send (checked before any handler runs).
_LAYER = Int(0, lambda w: _n_layers(w) - 1)
_HEAD = Int(0, lambda w: _n_heads(w) - 1)


def _predictions_state(pred: Any) -> dict[str, Any]:
    return {"tokens": pred.str_tokens, "token_ids": pred.token_ids, "probs": encode_array(pred.probs)}


class AttentionWidget(MechWidget):
    """Attention patterns of every head, head scores, and live head ablation.

    Build it with :func:`mechwidgets.show_attention`. Traits (all synced):

    - ``prompt``, ``tokens`` (str tokens), ``n_layers``, ``n_heads``, ``layers`` (shown layers)
    - ``thumbnails``: ``[layer, head, t, t]`` uint8 max-pooled patterns (t ≤ 32)
    - ``scores``: ``{name: [layer, head] float32}`` head scores (previous_token, duplicate_token,
      induction, first_token)
    - ``selected``: ``{"layer", "head"}`` of the head drawn in full, ``pattern`` its
      ``[dest, src]`` float32 pattern
    - ``ablation_mode``, ``ablated`` (``[[layer, head], ...]``), ``has_ablation_prompt``
    - ``ablation``: the last ablation's predictions, per-token loss and changed heads
    """

    _bundle = "attention.js"

    prompt = traitlets.Unicode("").tag(sync=True)
    tokens = traitlets.List(traitlets.Unicode()).tag(sync=True)
    n_layers = traitlets.Int(0).tag(sync=True)
    n_heads = traitlets.Int(0).tag(sync=True)
    layers = traitlets.List(traitlets.Int()).tag(sync=True)
    thumbnails = traitlets.Dict({}).tag(sync=True)
    scores = traitlets.Dict({}).tag(sync=True)
    selected = traitlets.Dict({}).tag(sync=True)
    pattern = traitlets.Dict({}).tag(sync=True)
    ablation_mode = traitlets.Unicode("zero").tag(sync=True)
    ablated: traitlets.List[list[int]] = traitlets.List([]).tag(sync=True)
    has_ablation_prompt = traitlets.Bool(False).tag(sync=True)
    ablation = traitlets.Dict({}).tag(sync=True)
    #: False for a widget built from precomputed patterns (no model behind it).
    live = traitlets.Bool(True).tag(sync=True)

    def __init__(
        self,
        model: Any,
        prompt: str | torch.Tensor,
        *,
        ablation_prompt: str | torch.Tensor | None = None,
        max_positions: int = 512,
        layers: Sequence[int] | None = None,
        **kwargs: Any,
    ) -> None:
        handle = ModelHandle.wrap(model)
        t0 = time.perf_counter()
        result = get_attention_patterns(handle, prompt, layers=layers, max_positions=max_positions)
        self._seconds = time.perf_counter() - t0  # a recompute's expected cost
        if ablation_prompt is not None:
            other = handle.tokens(ablation_prompt, max_positions=max_positions, what="ablation prompt")
            if other.shape[1] != result.tokens.shape[0]:
                raise PromptError(
                    f"ablation_prompt is {other.shape[1]} tokens but the prompt is "
                    f"{result.tokens.shape[0]}: resample ablation needs prompts of the same "
                    f"length. Prompt tokens: {result.str_tokens}; ablation prompt tokens: "
                    f"{handle.str_tokens(other)}."
                )
        self._setup(handle, result, prompt, ablation_prompt, max_positions, **kwargs)

    def _setup(
        self,
        handle: ModelHandle | None,
        result: AttentionPatterns,
        prompt: str | torch.Tensor,
        ablation_prompt: str | torch.Tensor | None,
        max_positions: int,
        **kwargs: Any,
    ) -> None:
        self._handle = handle
        self._result = result
        #: the model as the patterns and scores saw it (None: precomputed patterns, no model)
        self._stamp = Stamp(handle.model) if handle is not None else None
        self._prompt_input = prompt
        self._ablation_prompt = ablation_prompt
        self._max_positions = max_positions
        self.last_ablation: AblationResult | None = None
        #: what is on screen, as Python recorded it (the traits are the page's to write)
        self._selected_head: tuple[int, int] | None = None
        self._ablated_heads: tuple[list[tuple[int, int]], str] | None = None
        self.scores_tensors = head_scores(result.patterns, result.tokens)
        n_layers = handle.n_layers if handle else max(result.layers) + 1
        MechWidget.__init__(
            self,
            prompt=prompt if isinstance(prompt, str) else "".join(result.str_tokens),
            tokens=result.str_tokens,
            n_layers=n_layers,
            n_heads=int(result.patterns.shape[1]),
            layers=result.layers,
            thumbnails=self._thumbnails(result.patterns),
            scores={k: encode_array(v) for k, v in self.scores_tensors.items()},
            has_ablation_prompt=ablation_prompt is not None,
            live=handle is not None,
            **kwargs,
        )

    @classmethod
    def from_patterns(cls, result: AttentionPatterns, *, max_positions: int = 512) -> AttentionWidget:
        """A widget over precomputed patterns, with no model (ablation is unavailable).

        Raises:
            PromptError: more than ``max_positions`` positions (a hovered layer of a long prompt
                would send hundreds of MB).
        """
        n = int(result.patterns.shape[-1])
        if n > max_positions:
            raise PromptError(
                f"the attention covers {n} positions, more than max_positions={max_positions}: "
                f"pass fewer positions (e.g. attention[..., :{max_positions}, :{max_positions}] "
                f"and as many tokens) or a larger max_positions= (larger views take longer to "
                f"send and draw; each reply stays under {MAX_UPDATE_BYTES // 2**20} MiB)."
            )
        widget = cls.__new__(cls)
        widget._setup(None, result, "".join(result.str_tokens), None, max_positions)
        return widget

    def _before_request(self, kind: str) -> None:
        """The model changed since the patterns were taken: recompute them, the head scores and
        what is on screen (the selected head's pattern, the ablation in force) before the click
        runs."""
        if self._stamp is None or self._handle is None:
            return
        change = self._stamp.stale()
        if change is None:
            return
        with self._recomputing(change, getattr(self, "_seconds", 0.0)):
            t0 = time.perf_counter()
            result = get_attention_patterns(self._handle, self._prompt_input, layers=self._result.layers,
                                            max_positions=self._max_positions)
            self._result = result
            self.scores_tensors = head_scores(result.patterns, result.tokens)
            self._stamp.renew()
            self._seconds = time.perf_counter() - t0
            with self.hold_sync():
                self.thumbnails = self._thumbnails(result.patterns)
                self.scores = {k: encode_array(v) for k, v in self.scores_tensors.items()}
            if self._selected_head is not None and kind != "select_head":
                self._req_select_head(*self._selected_head)
            if self._ablated_heads is not None and kind != "ablate":
                self._req_ablate(*self._ablated_heads)

    # ------------------------------------------------------------ helpers
    @property
    def patterns(self) -> torch.Tensor:
        """``[len(layers), head, dest, src]`` patterns of the clean run (float32)."""
        return self._result.patterns

    @staticmethod
    def _thumbnails(patterns: torch.Tensor) -> dict[str, Any]:
        n_layers, n_heads, pos, _ = patterns.shape
        size = min(pos, THUMBNAIL_SIZE)
        flat = patterns.reshape(n_layers * n_heads, 1, pos, pos)
        pooled = F.adaptive_max_pool2d(flat, size) if size < pos else flat
        thumbs = (pooled.reshape(n_layers, n_heads, size, size) * 255).round().clamp(0, 255)
        return encode_array(thumbs, "uint8")

    def _model(self) -> ModelHandle:
        if self._handle is None:
            raise ComponentError(
                "this view was built from precomputed patterns, with no model behind it, so it "
                "cannot run ablations. Use show_attention(model, prompt) for a live view."
            )
        return self._handle

    def _check_head(self, layer: Any, head: Any) -> tuple[int, int]:
        """``(layer, head)`` as plain ints (numpy integers too), in range."""
        n_layers, n_heads = _n_layers(self), _n_heads(self)
        return (as_int(layer, "layer", lo=0, hi=n_layers - 1), as_int(head, "head", lo=0, hi=n_heads - 1))

    def _layer_index(self, layer: Any) -> int:
        layer, _ = self._check_head(layer, 0)
        if layer not in self._result.layers:
            raise ComponentError(
                f"layer {layer} is not shown: this widget was built with layers="
                f"{self._result.layers}. Pass layers=None to show_attention for all layers."
            )
        return self._result.layers.index(layer)

    # ------------------------------------------------------------ requests
    @page_request(layer=_LAYER)
    def _req_layer_patterns(self, layer: int) -> dict[str, Any]:
        pats = self.patterns[self._layer_index(layer)]
        n_bytes = pats.numel() * 2
        dtype = "float16" if n_bytes <= MAX_UPDATE_BYTES else "uint8"
        data = pats if dtype == "float16" else (pats * 255).round()
        return {"layer": layer, "patterns": encode_array(data, dtype), "scale": 1.0 if dtype == "float16" else 1 / 255}

    @page_request(layer=_LAYER, head=_HEAD)
    def _req_select_head(self, layer: int, head: int) -> dict[str, Any]:
        layer, head = self._check_head(layer, head)
        pat = self.patterns[self._layer_index(layer), head]
        self.pattern = encode_array(pat)
        self.selected = {"layer": layer, "head": head}
        self._selected_head = (layer, head)
        return {"layer": layer, "head": head}

    @page_request(
        heads=ListOf(Tuple(_LAYER, _HEAD, names=("layer", "head")), max_len=lambda w: _n_layers(w) * _n_heads(w)),
        mode=Str(choices=ABLATION_MODES, optional=True, nullable=True),
    )
    def _req_ablate(self, heads: Sequence[Sequence[int]], mode: str | None = None) -> dict[str, Any]:
        mode = mode or self.ablation_mode
        if mode not in ABLATION_MODES:
            raise ComponentError(f"unknown ablation mode {mode!r}: use one of {ABLATION_MODES}.")
        pairs = []
        for item in heads:
            if not isinstance(item, (list, tuple)) or len(item) != 2:
                raise ComponentError(f"each ablated head is a (layer, head) pair, got {item!r}.")
            pairs.append((item[0], item[1]))
        handle = self._model()
        pairs = [handle.check_head(layer, head) for layer, head in pairs]  # plain ints (numpy too)
        if mode == "resample" and self._ablation_prompt is None:
            raise PromptError(
                "resample ablation needs a second prompt: pass ablation_prompt= (same token "
                "length) to show_attention, or choose zero or mean ablation."
            )
        result = ablate_heads(
            handle,
            self._prompt_input,
            pairs,
            mode=mode,  # type: ignore[arg-type]
            ablation_prompt=self._ablation_prompt,
            max_positions=self._max_positions,
        )
        self.last_ablation = result
        change = result.pattern_change
        order = change.flatten().argsort(descending=True)[:TOP_CHANGED_HEADS]
        changed = [
            {"layer": int(i) // change.shape[1], "head": int(i) % change.shape[1], "change": float(change.flatten()[i])}
            for i in order
            if float(change.flatten()[i]) > 0
        ]
        self.ablation_mode = mode
        self.ablated = [list(p) for p in pairs]
        self._ablated_heads = (pairs, mode)
        self.ablation = {
            "heads": [list(p) for p in pairs],
            "mode": mode,
            "before": _predictions_state(result.before),
            "after": _predictions_state(result.after),
            "loss_before": encode_array(result.loss_before),
            "loss_after": encode_array(result.loss_after),
            "changed": changed,
        }
        return {"heads": [list(p) for p in pairs], "mode": mode}

    # ------------------------------------------------------------ Python API
    def select_head(self, layer: int, head: int) -> None:
        """Draw one head's full pattern (as a click on its thumbnail does)."""
        self._call("select_head", layer=layer, head=head)

    def ablate(self, heads: Sequence[tuple[int, int]], *, mode: str | None = None) -> AblationResult:
        """Ablate heads (``[(layer, head), ...]``), re-run the model and show the effect."""
        self._call("ablate", heads=[list(h) for h in heads], mode=mode)
        assert self.last_ablation is not None
        return self.last_ablation

    def clear_ablation(self) -> None:
        """Forget the ablation and show the clean run only."""
        self._call("ablate", heads=[], mode=self.ablation_mode)

    def _static_svg(self) -> str | None:
        layer, head = self._selected_head or (self._result.layers[0], 0)
        pat = self.patterns[self._result.layers.index(layer), head]
        return heatmap_svg(
            pat,
            row_labels=self.tokens,
            col_labels=self.tokens,
            title=f"Attention pattern, layer {layer} head {head} (rows: destination, columns: source)",
            vmin=0.0,
            vmax=1.0,
        )


def show_attention(
    model: Any,
    prompt: str | torch.Tensor,
    *,
    ablation_prompt: str | torch.Tensor | None = None,
    max_positions: int = 512,
    layers: Sequence[int] | None = None,
) -> AttentionWidget:
    """Show every head's attention pattern on ``prompt``, with head scores and live ablation.

    Args:
        model: a TransformerLens ``HookedTransformer`` (3.x) or ``TransformerBridge`` (4.x).
        prompt: the text to analyse (BOS is prepended), or a token tensor.
        ablation_prompt: a second prompt of the same token length; enables resample ablation
            (a head's output replaced by its output on this prompt).
        max_positions: refuse prompts longer than this (default 512).
        layers: the layers to show (default: all).

    Returns:
        The :class:`AttentionWidget`; display it (it is the cell's value) or keep a handle to
        drive it from Python (``widget.select_head(1, 3)``, ``widget.ablate([(1, 3)])``).
    """
    return AttentionWidget(
        model, prompt, ablation_prompt=ablation_prompt, max_positions=max_positions, layers=layers
    )




def attention_patterns(
    tokens: Sequence[str],
    attention: torch.Tensor,
    *,
    max_positions: int = 512,
) -> AttentionWidget:
    """Draw precomputed attention patterns, with no model (CircuitsVis's call shape).

    Args:
        tokens: the str tokens, one per position.
        attention: ``[head, dest, src]`` (one layer, as CircuitsVis takes it) or
            ``[layer, head, dest, src]``; numpy arrays are accepted too.
        max_positions: refuse more positions than this (default 512, as
            :func:`show_attention`).

    Returns:
        An :class:`AttentionWidget` that draws the same view as :func:`show_attention`, offline;
        head scores use the str tokens for duplicate detection, and ablation is unavailable.
    """
    att = torch.as_tensor(attention).detach().float().cpu()
    if att.ndim == 3:
        att = att[None]
    if att.ndim != 4 or att.shape[-1] != att.shape[-2]:
        raise PromptError(
            f"attention must be [head, dest, src] or [layer, head, dest, src] with dest == src, "
            f"got shape {tuple(att.shape)}."
        )
    tokens = [str(t) for t in tokens]
    if len(tokens) != att.shape[-1]:
        raise PromptError(
            f"got {len(tokens)} tokens but attention covers {att.shape[-1]} positions: pass one "
            f"str token per position."
        )
    if not tokens:
        raise PromptError("tokens is empty: pass one str token per position.")
    # duplicate detection needs ids: number the distinct strings
    ids: dict[str, int] = {}
    token_ids = torch.tensor([ids.setdefault(t, len(ids)) for t in tokens])
    result = AttentionPatterns(token_ids, tokens, list(range(att.shape[0])), att)
    return AttentionWidget.from_patterns(result, max_positions=max_positions)


__all__ = ["AttentionWidget", "attention_patterns", "show_attention"]
