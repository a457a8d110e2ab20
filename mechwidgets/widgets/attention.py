"""The attention widget: patterns, head scores and live head ablation.

A thin view over an :class:`~mechwidgets.analysis.attention.AttentionAnalysis` (the patterns,
the head scores and the model behind them, if any): the frontend (``js/attention.ts``) draws
what the traits hold (so it survives a save), and every click that needs the analysis goes
through the request protocol of :class:`~mechwidgets.widgets._base.MechWidget`:

- ``layer_patterns {layer}`` → that layer's full patterns (float16, or uint8 when large), sent on
  request so a big model never ships all its attention at once;
- ``select_head {layer, head}`` → the ``selected`` and ``pattern`` traits;
- ``ablate {heads, mode}`` → the ``ablation`` trait (predictions, loss, changed heads).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import traitlets

from .._args import Int, ListOf, Str, Tuple
from ..analysis.attention import (
    ABLATION_MODES,
    AblationResult,
    AttentionAnalysis,
    AttentionOptions,
    LiveAttention,
    Predictions,
    thumbnails,
)
from ._base import MAX_UPDATE_BYTES, MechWidget
from ._requests import page_request
from ._svg import heatmap_svg
from ._traits import Arrays, as_wire

if TYPE_CHECKING:
    from typing_extensions import Unpack

#: How many downstream heads the ablation view lists.
TOP_CHANGED_HEADS = 10

#: The request arguments the page may send (checked before any handler runs), bounded by the
#: analysis (Python-side state, never the page's traits).
_LAYER = Int(0, lambda w: w.analysis.n_layers - 1)
_HEAD = Int(0, lambda w: w.analysis.n_heads - 1)


def _predictions_state(pred: Predictions) -> dict[str, Any]:
    return {"tokens": pred.str_tokens, "token_ids": pred.token_ids, "probs": pred.probs}


class AttentionWidget(MechWidget):
    """Attention patterns of every head, head scores, and live head ablation.

    Build it with :func:`mechwidgets.show_attention` (a model) or
    :func:`mechwidgets.attention_patterns` (precomputed patterns), or as
    ``AttentionWidget(analysis)`` over an :class:`~mechwidgets.analysis.attention.AttentionAnalysis`.
    Traits (all synced):

    - ``prompt``, ``tokens`` (str tokens), ``n_layers``, ``n_heads``, ``layers`` (shown layers)
    - ``ablation_mode``, ``ablated`` (``[[layer, head], ...]``), ``has_ablation_prompt``, ``live``
    - the arrays, as declared below
    """

    _bundle = "attention.js"

    prompt = traitlets.Unicode("").tag(sync=True)
    tokens = traitlets.List(traitlets.Unicode()).tag(sync=True)
    n_layers = traitlets.Int(0).tag(sync=True)
    n_heads = traitlets.Int(0).tag(sync=True)
    layers = traitlets.List(traitlets.Int()).tag(sync=True)
    #: [layer, head, t, t] uint8 max-pooled patterns (t ≤ 32), 255 = attention 1
    thumbnails = Arrays().tag(sync=True)
    #: {name: [layer, head] float32} head scores (previous_token, duplicate_token, induction, first_token)
    scores = Arrays().tag(sync=True)
    #: {"layer", "head"} of the head drawn in full
    selected = traitlets.Dict({}).tag(sync=True)
    #: [dest, src] float32 pattern of the selected head ({} before one is selected)
    pattern = Arrays().tag(sync=True)
    ablation_mode = traitlets.Unicode("zero").tag(sync=True)
    ablated: traitlets.List[list[int]] = traitlets.List([]).tag(sync=True)
    has_ablation_prompt = traitlets.Bool(False).tag(sync=True)
    #: the last ablation: {heads, mode, before/after: {tokens, token_ids, probs [k] float32},
    #: loss_before/loss_after: [pos - 1] float32, changed: [{layer, head, change}]}; {} for none
    ablation = Arrays().tag(sync=True)
    #: False for a widget built from precomputed patterns (no model behind it).
    live = traitlets.Bool(True).tag(sync=True)

    def __init__(self, analysis: AttentionAnalysis, **kwargs: Any) -> None:
        self.analysis = analysis
        self.last_ablation: AblationResult | None = None
        #: what is on screen, as Python recorded it (the traits are the page's to write)
        self._selected_head: tuple[int, int] | None = None
        self._ablated_heads: tuple[list[tuple[int, int]], str] | None = None
        result = analysis.result
        super().__init__(
            prompt=analysis.prompt,
            tokens=result.str_tokens,
            n_layers=analysis.n_layers,
            n_heads=analysis.n_heads,
            layers=result.layers,
            thumbnails=analysis.thumbnails(),
            scores=analysis.scores,
            has_ablation_prompt=analysis.has_ablation_prompt,
            live=analysis.handle is not None,
            **kwargs,
        )

    def _before_request(self, kind: str) -> None:
        """The model changed since the patterns were taken: recompute them, the head scores and
        what is on screen (the selected head's pattern, the ablation in force) before the click
        runs."""

        def redraw() -> None:
            with self.hold_sync():
                self.thumbnails = self.analysis.thumbnails()
                self.scores = self.analysis.scores
            if self._selected_head is not None and kind != "select_head":
                self._req_select_head(*self._selected_head)
            if self._ablated_heads is not None and kind != "ablate":
                self._req_ablate(*self._ablated_heads)

        self._refresh(self.analysis, redraw)

    # ------------------------------------------------------------ the analysis, as tests read it
    @property
    def patterns(self) -> torch.Tensor:
        """``[len(layers), head, dest, src]`` patterns of the clean run (float32)."""
        return self.analysis.patterns

    @property
    def scores_tensors(self) -> dict[str, torch.Tensor]:
        """The head scores as tensors (``{name: [layer, head]}``)."""
        return self.analysis.scores

    @property
    def _seconds(self) -> float:
        """The expected cost of a recompute (the analysis's last), in seconds."""
        return self.analysis.seconds

    @_seconds.setter
    def _seconds(self, value: float) -> None:
        self.analysis.seconds = value

    @staticmethod
    def _thumbnails(patterns: torch.Tensor) -> np.ndarray:
        """What the ``thumbnails`` trait holds for ``patterns``."""
        return as_wire(thumbnails(patterns))  # type: ignore[no-any-return]

    # ------------------------------------------------------------ requests
    @page_request(layer=_LAYER)
    def _req_layer_patterns(self, layer: int) -> dict[str, Any]:
        pats = self.patterns[self.analysis.layer_index(layer)]
        if pats.numel() * 2 <= MAX_UPDATE_BYTES:
            return {"layer": layer, "patterns": as_wire(pats.half()), "scale": 1.0}
        return {"layer": layer, "patterns": as_wire((pats * 255).round().to(torch.uint8)), "scale": 1 / 255}

    @page_request(layer=_LAYER, head=_HEAD)
    def _req_select_head(self, layer: int, head: int) -> dict[str, Any]:
        self.pattern = self.analysis.pattern(layer, head)
        layer, head = int(layer), int(head)
        self.selected = {"layer": layer, "head": head}
        self._selected_head = (layer, head)
        return {"layer": layer, "head": head}

    @page_request(
        heads=ListOf(Tuple(_LAYER, _HEAD, names=("layer", "head")),
                     max_len=lambda w: w.analysis.n_layers * w.analysis.n_heads),
        mode=Str(choices=ABLATION_MODES, optional=True, nullable=True),
    )
    def _req_ablate(self, heads: Sequence[Sequence[int]], mode: str | None = None) -> dict[str, Any]:
        mode = mode or self.ablation_mode
        result = self.analysis.ablate(heads, mode)
        self.last_ablation = result
        pairs = [list(p) for p in result.heads]
        self.ablation_mode = mode
        self.ablated = pairs
        self._ablated_heads = (result.heads, mode)
        self.ablation = {
            "heads": pairs,
            "mode": mode,
            "before": _predictions_state(result.before),
            "after": _predictions_state(result.after),
            "loss_before": result.loss_before,
            "loss_after": result.loss_after,
            "changed": result.top_changed(TOP_CHANGED_HEADS),
        }
        return {"heads": pairs, "mode": mode}

    # ------------------------------------------------------------ Python API
    def select_head(self, layer: int, head: int) -> None:
        """Draw one head's full pattern (as a click on its thumbnail does)."""
        self._call("select_head", layer=layer, head=head)

    def ablate(self, heads: Sequence[tuple[int, int]], *, mode: str | None = None) -> AblationResult:
        """Ablate heads (``[(layer, head), ...]``), re-run the model and show the effect."""
        self._call("ablate", heads=list(heads), mode=mode)
        assert self.last_ablation is not None
        return self.last_ablation

    def clear_ablation(self) -> None:
        """Forget the ablation and show the clean run only."""
        self._call("ablate", heads=[], mode=self.ablation_mode)

    def _static_svg(self) -> str | None:
        layer, head = self._selected_head or (self.analysis.result.layers[0], 0)
        return heatmap_svg(
            self.analysis.pattern(layer, head),
            row_labels=self.tokens,
            col_labels=self.tokens,
            title=f"Attention pattern, layer {layer} head {head} (rows: destination, columns: source)",
            vmin=0.0,
            vmax=1.0,
        )


def show_attention(model: Any, prompt: str | torch.Tensor, **options: Unpack[AttentionOptions]
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
        The :class:`AttentionWidget` over a :class:`~mechwidgets.analysis.attention.LiveAttention`;
        display it (it is the cell's value) or keep a handle to drive it from Python
        (``widget.select_head(1, 3)``, ``widget.ablate([(1, 3)])``).
    """
    return AttentionWidget(LiveAttention(model, prompt, **options))


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
    return AttentionWidget(AttentionAnalysis.from_patterns(tokens, attention, max_positions=max_positions))


__all__ = ["AttentionWidget", "attention_patterns", "show_attention"]
