"""The logit-lens widget: the residual stream layer by layer, direct logit attribution, and live
ablation of heads and MLPs.

A thin view over a :class:`~mechwidgets.analysis.lens.LensAnalysis` (the model, the prompt, the
answers and the lens, DLA and norms of the clean and the ablated run): the frontend
(``js/lens.ts``) draws what the traits hold (a saved notebook redraws it with no kernel); work
against the model goes through the request protocol of
:class:`~mechwidgets.widgets._base.MechWidget`:

- ``layer_topk {layer, run}`` → one layer's top-k tokens and probabilities at every position
  (``run`` ``"clean"`` or ``"ablated"``), for the hover tooltip of prompts too long to carry
  every layer's top-k in the state;
- ``ablate {heads, mlps, mode}`` → the ``ablated`` and ``ablation`` traits: the lens, the DLA,
  the norms and the predictions of the ablated run, shown beside the clean ones;
- ``complete_lens {}`` → a long prompt's lens is computed first at its last positions (so the
  widget shows in about a forward pass); this job fills in the rest, layer by layer, from the
  same run's recorded streams, and rewrites the ``lens`` (and the ablation's) trait.

The maths is in :mod:`mechwidgets.analysis.lens`.
"""

from __future__ import annotations

from collections.abc import Generator, Sequence
from typing import TYPE_CHECKING, Any

import torch
import traitlets

from .._args import Int, ListOf, Str, Tuple
from ..analysis.attention import ABLATION_MODES
from ..analysis.lens import LensAnalysis, LensResult, LensView, norm_summary
from ..analysis.lens.view import LensOptions
from ._base import MechWidget
from ._lens_picture import lens_svg
from ._requests import page_request
from ._traits import Arrays, as_wire
from .attention import _predictions_state

if TYPE_CHECKING:
    from typing_extensions import Unpack

# arguments of the page's requests, bounds from the Python side (the model, the clean view)
_LAYER = Int(0, lambda w: w.analysis.handle.n_layers - 1)
_HEAD = Int(0, lambda w: w.analysis.handle.n_heads - 1)
_ROW = Int(0, lambda w: len(w.view.lens.layers) - 1)

#: Next-token predictions listed before / after an ablation.
N_PREDICTIONS = 8
#: Lens cells (layers × positions) computed before the widget is shown: a longer prompt's lens
#: starts at its last positions, and the page asks ``complete_lens`` for the rest once drawn.
FIRST_VIEW_CELLS = 416


class LogitLensWidget(MechWidget):
    """The logit lens, direct logit attribution and residual norms of one prompt, live.

    Build it with :func:`mechwidgets.show_logit_lens`, or as ``LogitLensWidget(analysis)`` over a
    :class:`~mechwidgets.analysis.lens.LensAnalysis`. Traits (all synced):

    - ``prompt``, ``tokens`` (str tokens), ``layers`` (row labels ``"L0 pre"`` … ``"final"``),
      ``n_layers``, ``n_heads``, ``has_mlp``, ``answer``/``wrong_answer`` (strings, "" for none),
      ``top_k``, ``ln_scale``
    - ``ablation_mode``, ``ablated`` (``{heads, mlps, mode}``), ``has_ablation_prompt``
    - the arrays, as declared below
    """

    _bundle = "lens.js"

    prompt = traitlets.Unicode("").tag(sync=True)
    tokens = traitlets.List(traitlets.Unicode()).tag(sync=True)
    layers = traitlets.List(traitlets.Unicode()).tag(sync=True)
    n_layers = traitlets.Int(0).tag(sync=True)
    n_heads = traitlets.Int(0).tag(sync=True)
    has_mlp = traitlets.Bool(True).tag(sync=True)
    answer = traitlets.Unicode("").tag(sync=True)
    wrong_answer = traitlets.Unicode("").tag(sync=True)
    top_k = traitlets.Int(5).tag(sync=True)
    ln_scale = traitlets.Unicode("own").tag(sync=True)
    #: {vocab: the distinct top tokens as strings, top1: [layer, pos] int32 indices into vocab,
    #: top1_prob, kl: [layer, pos] float32, answer_rank: [layer, pos] int32 and answer_prob
    #: ({} without an answer), topk_ids/topk_probs: [layer, pos, k] (indices into vocab) when
    #: the prompt is short enough (max_inline_cells), else {}: the page asks layer_topk per layer;
    #: computed_from: cells at earlier positions are not computed yet (zeros), see complete_lens}
    lens = Arrays().tag(sync=True)
    #: {labels, values: [part], heads: [layer, head], mlps, attn_bias: [layer],
    #: head_positions: [layer, head, pos] float32, total, norm_bias}; {} without an answer
    dla = Arrays().tag(sync=True)
    #: {values: [layer, pos], mean: [layer] (BOS excluded) float32, fitted_growth}
    norms = Arrays().tag(sync=True)
    #: the model's top next tokens at the last position: {tokens, token_ids, probs: [k] float32}
    predictions = Arrays().tag(sync=True)
    ablation_mode = traitlets.Unicode("zero").tag(sync=True)
    ablated = traitlets.Dict({"heads": [], "mlps": [], "mode": "zero"}).tag(sync=True)
    has_ablation_prompt = traitlets.Bool(False).tag(sync=True)
    #: the ablated run's {lens, dla, norms, predictions} (as above) and the clean
    #: predictions_before, heads, mlps, mode; {} when nothing is ablated
    ablation = Arrays().tag(sync=True)
    live = traitlets.Bool(True).tag(sync=True)

    def __init__(self, analysis: LensAnalysis, *, max_inline_cells: int = 2048, **kwargs: Any) -> None:
        self.analysis = analysis
        self._max_inline_cells = max_inline_cells
        handle, dla = analysis.handle, analysis.view.dla
        super().__init__(
            prompt=analysis.prompt,
            tokens=analysis.view.lens.str_tokens,
            layers=analysis.view.lens.layers,
            n_layers=handle.n_layers,
            n_heads=handle.n_heads,
            has_mlp=analysis.has_mlp,
            answer=dla.answer_str if dla is not None else "",
            wrong_answer=dla.wrong_answer_str if dla is not None else "",
            top_k=analysis.top_k,
            ln_scale=analysis.ln_scale,
            has_ablation_prompt=analysis.resample_from is not None,
            **self._view_state(analysis.view),
            **kwargs,
        )

    @property
    def view(self) -> LensView:
        """The clean run's :class:`~mechwidgets.analysis.lens.LensView` (the analysis's)."""
        return self.analysis.view

    @property
    def last_ablation(self) -> LensView | None:
        """The ablated run's view, None when nothing is ablated (the analysis's)."""
        return self.analysis.last_ablation

    # ------------------------------------------------------------ helpers
    def _lens_state(self, lens: LensResult) -> dict[str, Any]:
        inline = lens.top_ids.shape[0] * lens.top_ids.shape[1] <= self._max_inline_cells
        ids = lens.top_ids if inline else lens.top_ids[..., :1]
        uniq, inverse = torch.unique(ids, return_inverse=True)
        return {
            "vocab": self.analysis.handle.token_strs(uniq.tolist()),
            "top1": inverse[..., 0],
            "top1_prob": lens.top_probs[..., 0],
            "kl": lens.kl,
            "answer_rank": {} if lens.answer_rank is None else lens.answer_rank,
            "answer_prob": {} if lens.answer_prob is None else lens.answer_prob,
            "topk_ids": inverse if inline else {},
            "topk_probs": lens.top_probs if inline else {},
            "computed_from": lens.computed_from,
        }

    def _view_state(self, view: LensView) -> dict[str, Any]:
        dla = view.dla
        dla_state: dict[str, Any] = {}
        if dla is not None:
            dla_state = {"labels": dla.labels, "values": dla.values, "heads": dla.heads, "mlps": dla.mlps,
                         "attn_bias": dla.attn_bias, "head_positions": dla.head_positions,
                         "total": dla.total, "norm_bias": dla.norm_bias}
        summary = norm_summary(view.lens.layers, [view.norms])
        return {
            "lens": self._lens_state(view.lens),
            "dla": dla_state,
            "norms": {"values": view.norms, "mean": summary.mean, "fitted_growth": summary.fitted_growth},
            "predictions": _predictions_state(self.analysis.predictions(view, N_PREDICTIONS)),
        }

    def _show_ablation(self) -> dict[str, Any]:
        """Write the ablation in force (the analysis's) into the traits; returns it."""
        state = self.analysis.ablated
        after: dict[str, Any] = {}
        if self.analysis.last_ablation is not None:
            after = self._view_state(self.analysis.last_ablation)
            after.update(predictions_before=self.predictions, **state)
        self.ablation_mode = state["mode"]
        self.ablation = after
        self.ablated = state
        return state

    def _before_request(self, kind: str) -> None:
        """The model changed since the view was computed (a weight edited, a hook attached):
        recompute it, and the ablation in force, before the click runs."""
        change = self.analysis.stale()
        if change is None:
            return
        with self._recomputing(change, 0.0):
            self.analysis.recompute(ablation=kind != "ablate")
            with self.hold_sync():
                for name, value in self._view_state(self.analysis.view).items():
                    setattr(self, name, value)
            if kind != "ablate":
                self._show_ablation()

    # ------------------------------------------------------------ requests
    @page_request(layer=_ROW, run=Str(choices=("clean", "ablated"), optional=True))
    def _req_layer_topk(self, layer: int, run: str = "clean") -> dict[str, Any]:
        ids, probs = self.analysis.layer_topk(layer, run)
        strs = self.analysis.handle.token_strs(ids.flatten().tolist())
        k = ids.shape[1]
        return {"layer": layer, "run": run, "ids": as_wire(ids), "probs": as_wire(probs),
                "strs": [strs[i * k:(i + 1) * k] for i in range(ids.shape[0])]}

    @page_request(
        heads=ListOf(Tuple(_LAYER, _HEAD, names=("layer", "head")), optional=True,
                     max_len=lambda w: w.analysis.handle.n_layers * w.analysis.handle.n_heads),
        mlps=ListOf(_LAYER, optional=True, max_len=lambda w: w.analysis.handle.n_layers),
        mode=Str(choices=ABLATION_MODES, optional=True, nullable=True),
    )
    def _req_ablate(self, heads: Sequence[Any] = (), mlps: Sequence[Any] = (), mode: str | None = None) -> dict[str, Any]:
        self.analysis.ablate(heads, mlps, mode or self.ablation_mode)
        return self._show_ablation()

    @page_request()
    def _req_complete_lens(self) -> Generator[dict[str, Any], None, dict[str, Any]]:
        runs = ["clean"] + (["ablated"] if self.last_ablation is not None else [])
        for run in runs:
            yield from self.analysis.complete(run)
        with self.hold_sync():
            self.lens = self._lens_state(self.view.lens)
            if self.last_ablation is not None:
                self.ablation = {**self.ablation, "lens": self._lens_state(self.last_ablation.lens)}
        return {"runs": runs}

    # ------------------------------------------------------------ Python API
    def ablate(
        self, heads: Sequence[tuple[int, int]] = (), mlps: Sequence[int] = (), *, mode: str | None = None
    ) -> LensView:
        """Ablate heads (``[(layer, head), ...]``) and MLPs (``[layer, ...]``) with ``mode``
        (zero, mean, resample; default the widget's), re-run the view and show it beside the
        clean one. Returns the ablated :class:`~mechwidgets.analysis.lens.LensView`."""
        self._call("ablate", heads=list(heads), mlps=list(mlps), mode=mode)
        assert self.last_ablation is not None
        return self.last_ablation

    def complete_lens(self) -> None:
        """Compute the lens at every position (as the page asks once it has drawn a long prompt)."""
        self._call("complete_lens")

    def clear_ablation(self) -> None:
        """Forget the ablation and show the clean run only."""
        self._call("ablate", heads=[], mlps=[], mode=self.ablation_mode)

    def _static_svg(self) -> str | None:
        ids = self.view.lens.top_ids[..., 0].unique().tolist()
        return lens_svg(self.view, self.prompt, dict(zip(ids, self.analysis.handle.token_strs(ids), strict=True)))


def show_logit_lens(
    model: Any, prompt: str | torch.Tensor, *, max_inline_cells: int = 2048, **options: Unpack[LensOptions]
) -> LogitLensWidget:
    """Show the residual stream of ``prompt`` layer by layer: the logit lens, direct logit
    attribution and the stream's norm, with live ablation of heads and MLPs.

    Args:
        model: a TransformerLens ``HookedTransformer`` (3.x) or ``TransformerBridge`` (4.x).
        prompt: the text to analyse (BOS is prepended), or a token tensor.
        answer: the expected next token (a single-token string such as ``" Mary"``, or an id):
            its rank per layer and the DLA are drawn; None for the lens and norms only.
        wrong_answer: a second token: DLA explains ``logit(answer) - logit(wrong_answer)``.
        ablation_prompt: a prompt of the same token length; enables resample ablation.
        top_k: top tokens per layer and position shown on hover (default 5).
        ln_scale: ``"own"`` (each layer through the final norm with its own scale) or
            ``"final"`` (the final stream's scale); see :mod:`mechwidgets.analysis.lens`.
        max_positions: refuse longer prompts (default 512).
        max_inline_cells: up to this many layer × position cells, every cell's top-k travels in
            the widget's state (and survives a save); beyond, the frontend asks per layer.

    A prompt of more than :data:`FIRST_VIEW_CELLS` layer × position cells shows its lens at the
    last positions first; the page then asks for the rest (``complete_lens``), which comes from
    the same forward pass. ``widget.complete_lens()`` does it from Python.

    Returns:
        The :class:`LogitLensWidget` over a :class:`~mechwidgets.analysis.lens.LensAnalysis`;
        display it, or drive it from Python (``widget.ablate(heads=[(3, 0)], mode="mean")``).
    """
    analysis = LensAnalysis(model, prompt, eager_cells=FIRST_VIEW_CELLS, **options)
    return LogitLensWidget(analysis, max_inline_cells=max_inline_cells)


__all__ = ["LogitLensWidget", "lens_svg", "show_logit_lens"]
