"""The logit-lens widget: the residual stream layer by layer, direct logit attribution, and live
ablation of heads and MLPs.

Python owns the model; the frontend (``js/lens.ts``) draws. What is on screen lives in traits
(a saved notebook redraws it with no kernel); work against the model goes through the request
protocol of :class:`~mechwidgets.widgets._base.MechWidget`:

- ``layer_topk {layer, run}`` → one layer's top-k tokens and probabilities at every position
  (``run`` ``"clean"`` or ``"ablated"``), for the hover tooltip of prompts too long to carry
  every layer's top-k in the state;
- ``ablate {heads, mlps, mode}`` → the ``ablated`` and ``ablation`` traits: the lens, the DLA,
  the norms and the predictions of the ablated run, shown beside the clean ones.

The maths is in :mod:`mechwidgets.analysis.lens`.
"""

from __future__ import annotations

from collections.abc import Sequence
from html import escape
from typing import Any

import torch
import traitlets

from .._args import Int, ListOf, Str, Tuple
from .._fingerprint import Stamp
from .._model import ModelHandle
from .._tensor import encode_array
from ..analysis.attention import ABLATION_MODES, resample_tokens, top_predictions
from ..analysis.lens import LensResult, LensView, lens_view, norm_summary
from ..errors import ComponentError, PromptError
from ._base import MechWidget
from ._requests import page_request
from ._svg import _label, diverging_rgb, sequential_rgb
from .attention import _predictions_state

# arguments of the page's requests, bounds from the Python side (the model, the clean view)
_LAYER = Int(0, lambda w: w._handle.n_layers - 1)
_HEAD = Int(0, lambda w: w._handle.n_heads - 1)
_ROW = Int(0, lambda w: len(w.view.lens.layers) - 1)

#: Next-token predictions listed before / after an ablation.
N_PREDICTIONS = 8


class LogitLensWidget(MechWidget):
    """The logit lens, direct logit attribution and residual norms of one prompt, live.

    Build it with :func:`mechwidgets.show_logit_lens`. Traits (all synced):

    - ``prompt``, ``tokens`` (str tokens), ``layers`` (row labels ``"L0 pre"`` … ``"final"``),
      ``n_layers``, ``n_heads``, ``has_mlp``, ``answer``/``wrong_answer`` (strings, "" for none),
      ``top_k``, ``ln_scale``
    - ``lens``: ``vocab`` (the distinct top tokens as strings), ``top1`` (``[layer, pos]`` int32
      indices into ``vocab``), ``top1_prob``, ``kl`` (float32), ``answer_rank`` (int32) and
      ``answer_prob`` (``{}`` without an answer), and ``topk_ids``/``topk_probs``
      (``[layer, pos, k]``, indices into ``vocab``) when the prompt is short enough
      (``max_inline_cells``), else ``{}``: the frontend asks ``layer_topk`` per layer
    - ``dla``: ``labels``, ``values``, ``heads`` ``[layer, head]``, ``mlps``, ``attn_bias``,
      ``head_positions`` ``[layer, head, pos]``, ``total``, ``norm_bias``; ``{}`` without an answer
    - ``norms``: ``values`` ``[layer, pos]``, ``mean`` ``[layer]`` (BOS excluded),
      ``fitted_growth``
    - ``predictions``: the model's top next tokens at the last position
    - ``ablation_mode``, ``ablated`` (``{heads, mlps, mode}``), ``has_ablation_prompt``
    - ``ablation``: the ablated run's ``lens``, ``dla``, ``norms``, ``predictions`` and the clean
      ``predictions_before``; ``{}`` when nothing is ablated
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
    lens = traitlets.Dict({}).tag(sync=True)
    dla = traitlets.Dict({}).tag(sync=True)
    norms = traitlets.Dict({}).tag(sync=True)
    predictions = traitlets.Dict({}).tag(sync=True)
    ablation_mode = traitlets.Unicode("zero").tag(sync=True)
    ablated = traitlets.Dict({"heads": [], "mlps": [], "mode": "zero"}).tag(sync=True)
    has_ablation_prompt = traitlets.Bool(False).tag(sync=True)
    ablation = traitlets.Dict({}).tag(sync=True)
    live = traitlets.Bool(True).tag(sync=True)

    def __init__(
        self,
        model: Any,
        prompt: str | torch.Tensor,
        *,
        answer: str | int | None = None,
        wrong_answer: str | int | None = None,
        ablation_prompt: str | torch.Tensor | None = None,
        top_k: int = 5,
        ln_scale: str = "own",
        max_positions: int = 512,
        max_inline_cells: int = 2048,
        **kwargs: Any,
    ) -> None:
        handle = ModelHandle.wrap(model)
        self._handle = handle
        self._prompt_input = prompt
        self._answer, self._wrong = answer, wrong_answer
        self._ablation_prompt = ablation_prompt
        self._options = {"top_k": top_k, "ln_scale": ln_scale, "max_positions": max_positions}
        self._max_inline_cells = max_inline_cells
        view = self._run()
        self._stamp = Stamp(handle.model)  # the model the view was computed on
        if ablation_prompt is not None:  # checked now, not at the first resample click
            resample_tokens(handle, ablation_prompt, view.lens.tokens, max_positions=max_positions)
        self.view = view
        self.last_ablation: LensView | None = None
        self._ablated: dict[str, Any] = {"heads": [], "mlps": [], "mode": "zero"}
        dla = view.dla
        super().__init__(
            prompt=prompt if isinstance(prompt, str) else "".join(view.lens.str_tokens),
            tokens=view.lens.str_tokens,
            layers=view.lens.layers,
            n_layers=handle.n_layers,
            n_heads=handle.n_heads,
            has_mlp=dla.has_mlp if dla is not None else not bool(getattr(handle.cfg, "attn_only", False)),
            answer=dla.answer_str if dla is not None else "",
            wrong_answer=dla.wrong_answer_str if dla is not None else "",
            top_k=top_k,
            ln_scale=ln_scale,
            has_ablation_prompt=ablation_prompt is not None,
            **self._view_state(view),
            **kwargs,
        )

    # ------------------------------------------------------------ helpers
    def _run(self, heads: Sequence[tuple[int, int]] = (), mlps: Sequence[int] = (), mode: str = "zero") -> LensView:
        return lens_view(
            self._handle, self._prompt_input, answer=self._answer, wrong_answer=self._wrong,
            ablate_heads=heads, ablate_mlps=mlps, mode=mode, ablation_prompt=self._ablation_prompt,
            by="position", **self._options,  # type: ignore[arg-type]
        )

    def _lens_state(self, lens: LensResult) -> dict[str, Any]:
        inline = lens.top_ids.shape[0] * lens.top_ids.shape[1] <= self._max_inline_cells
        ids = lens.top_ids if inline else lens.top_ids[..., :1]
        uniq, inverse = torch.unique(ids, return_inverse=True)
        state: dict[str, Any] = {
            "vocab": self._handle.token_strs(uniq.tolist()),
            "top1": encode_array(inverse[..., 0], "int32"),
            "top1_prob": encode_array(lens.top_probs[..., 0]),
            "kl": encode_array(lens.kl),
            "answer_rank": {} if lens.answer_rank is None else encode_array(lens.answer_rank, "int32"),
            "answer_prob": {} if lens.answer_prob is None else encode_array(lens.answer_prob),
            "topk_ids": encode_array(inverse, "int32") if inline else {},
            "topk_probs": encode_array(lens.top_probs) if inline else {},
        }
        return state

    def _view_state(self, view: LensView) -> dict[str, Any]:
        dla = view.dla
        dla_state: dict[str, Any] = {}
        if dla is not None:
            assert dla.head_positions is not None
            dla_state = {
                "labels": dla.labels,
                "values": encode_array(dla.values),
                "heads": encode_array(dla.heads),
                "mlps": encode_array(dla.mlps),
                "attn_bias": encode_array(dla.attn_bias),
                "head_positions": encode_array(dla.head_positions),
                "total": dla.total,
                "norm_bias": dla.norm_bias,
            }
        summary = norm_summary(view.lens.layers, [view.norms])
        assert view.lens.logits is not None
        pred = top_predictions(self._handle, view.lens.logits[-1], N_PREDICTIONS)
        return {
            "lens": self._lens_state(view.lens),
            "dla": dla_state,
            "norms": {"values": encode_array(view.norms), "mean": encode_array(summary.mean),
                      "fitted_growth": summary.fitted_growth},
            "predictions": _predictions_state(pred),
        }

    def _check_layer_row(self, layer: Any) -> int:
        n = len(self.layers)
        if not isinstance(layer, int) or isinstance(layer, bool) or not 0 <= layer < n:
            raise ComponentError(f"lens layer {layer!r} is out of range: rows are 0..{n - 1} ({self.layers[0]} … {self.layers[-1]}).")
        return layer

    def _before_request(self, kind: str) -> None:
        """The model changed since the view was computed (a weight edited, a hook attached):
        recompute it, and the ablation in force, before the click runs."""
        change = self._stamp.stale()
        if change is None:
            return
        with self._recomputing(change, 0.0):
            self.view = view = self._run()
            self._stamp.renew()
            with self.hold_sync():
                for name, value in self._view_state(view).items():
                    setattr(self, name, value)
            ablated = self._ablated  # Python's own record (the trait is the page's to write)
            if (ablated["heads"] or ablated["mlps"]) and kind != "ablate":
                self._req_ablate(ablated["heads"], ablated["mlps"], ablated["mode"])

    # ------------------------------------------------------------ requests
    @page_request(layer=_ROW, run=Str(choices=("clean", "ablated"), optional=True))
    def _req_layer_topk(self, layer: int, run: str = "clean") -> dict[str, Any]:
        self._check_layer_row(layer)
        if run not in ("clean", "ablated"):
            raise ComponentError(f"run must be 'clean' or 'ablated', got {run!r}.")
        view = self.view if run == "clean" or self.last_ablation is None else self.last_ablation
        ids = view.lens.top_ids[layer]
        strs = self._handle.token_strs(ids.flatten().tolist())
        k = ids.shape[1]
        return {
            "layer": layer,
            "run": run,
            "ids": encode_array(ids, "int32"),
            "probs": encode_array(view.lens.top_probs[layer]),
            "strs": [strs[i * k:(i + 1) * k] for i in range(ids.shape[0])],
        }

    @page_request(
        heads=ListOf(Tuple(_LAYER, _HEAD, names=("layer", "head")), optional=True,
                     max_len=lambda w: w._handle.n_layers * w._handle.n_heads),
        mlps=ListOf(_LAYER, optional=True, max_len=lambda w: w._handle.n_layers),
        mode=Str(choices=ABLATION_MODES, optional=True, nullable=True),
    )
    def _req_ablate(self, heads: Sequence[Any] = (), mlps: Sequence[Any] = (), mode: str | None = None) -> dict[str, Any]:
        mode = mode or self.ablation_mode
        if mode not in ABLATION_MODES:
            raise ComponentError(f"unknown ablation mode {mode!r}: use one of {ABLATION_MODES}.")
        pairs = []
        for item in heads:
            if not isinstance(item, (list, tuple)) or len(item) != 2:
                raise ComponentError(f"each ablated head is a (layer, head) pair, got {item!r}.")
            pairs.append(self._handle.check_head(item[0], item[1]))
        layers = [self._handle.check_layer(m) for m in mlps]
        if layers and not self.has_mlp:
            raise ComponentError("this model has no MLPs (attention-only): ablate heads instead.")
        if mode == "resample" and self._ablation_prompt is None and (pairs or layers):
            raise PromptError(
                "resample ablation needs a second prompt: pass ablation_prompt= (same token "
                "length) to show_logit_lens, or choose zero or mean ablation."
            )
        self.ablation_mode = mode
        state: dict[str, Any] = {"heads": [list(p) for p in pairs], "mlps": layers, "mode": mode}
        if not pairs and not layers:
            self.last_ablation = None
            self.ablation = {}
            self.ablated = self._ablated = state
            return state
        view = self._run(pairs, layers, mode)
        self.last_ablation = view
        after = self._view_state(view)
        after["predictions_before"] = self.predictions
        after["heads"], after["mlps"], after["mode"] = state["heads"], layers, mode
        self.ablation = after
        self.ablated = self._ablated = state
        return state

    # ------------------------------------------------------------ Python API
    def ablate(
        self, heads: Sequence[tuple[int, int]] = (), mlps: Sequence[int] = (), *, mode: str | None = None
    ) -> LensView:
        """Ablate heads (``[(layer, head), ...]``) and MLPs (``[layer, ...]``) with ``mode``
        (zero, mean, resample; default the widget's), re-run the view and show it beside the
        clean one. Returns the ablated :class:`~mechwidgets.analysis.lens.LensView`."""
        self._call("ablate", heads=[list(h) for h in heads], mlps=list(mlps), mode=mode)
        assert self.last_ablation is not None
        return self.last_ablation

    def clear_ablation(self) -> None:
        """Forget the ablation and show the clean run only."""
        self._call("ablate", heads=[], mlps=[], mode=self.ablation_mode)

    def _static_svg(self) -> str | None:
        ids = self.view.lens.top_ids[..., 0].unique().tolist()
        return lens_svg(self.view, self.prompt, dict(zip(ids, self._handle.token_strs(ids), strict=True)))


def lens_svg(view: LensView, prompt: str, token_strs: dict[int, str], *, max_cols: int = 48) -> str:
    """The lens grid (top token per layer and position, coloured by its probability) and the
    largest DLA terms, as one SVG document (``token_strs``: the top tokens' ids to strings). Long
    prompts show their last ``max_cols`` positions."""
    lens = view.lens
    n_rows, n_pos = lens.top_ids.shape[:2]
    first = max(0, n_pos - max_cols)
    cols = list(range(first, n_pos))
    cw, ch, left, top = 46, 18, 70, 96
    grid_w = left + len(cols) * cw + 10
    bars = view.dla.top(12) if view.dla is not None else []
    bar_x = grid_w + 20
    width = bar_x + (260 if bars else 0)
    height = max(top + n_rows * ch + 30, 60 + 16 * len(bars))
    title = f"Logit lens: top token per layer (rows) and position (columns), colour = its probability; {prompt}"
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="9">',
        f'<rect width="{width}" height="{height}" fill="white"/>',
        f'<text x="4" y="14" font-size="12">{_label(title, 160)}</text>',
    ]
    if first:
        parts.append(f'<text x="4" y="30" fill="#57606a">(last {len(cols)} of {n_pos} positions)</text>')
    for j, pos in enumerate(cols):
        x, y = left + j * cw + cw // 2, top - 4
        parts.append(f'<text transform="translate({x},{y}) rotate(-45)">{_label(lens.str_tokens[pos], 10)}</text>')
    for i in range(n_rows):
        y = top + (n_rows - 1 - i) * ch  # the final layer on top
        parts.append(f'<text x="{left - 4}" y="{y + 12}" text-anchor="end">{escape(lens.layers[i])}</text>')
        for j, pos in enumerate(cols):
            p = float(lens.top_probs[i, pos, 0])
            tok = int(lens.top_ids[i, pos, 0])
            parts.append(
                f'<rect x="{left + j * cw}" y="{y}" width="{cw - 1}" height="{ch - 1}" fill="{sequential_rgb(p)}"/>'
            )
            text = _label(token_strs.get(tok, str(tok)).replace(" ", "·"), 7)
            colour = "white" if p > 0.6 else "black"
            parts.append(f'<text x="{left + j * cw + 2}" y="{y + 12}" fill="{colour}">{text}</text>')
    if bars:
        scale = max(abs(v) for _, v in bars) or 1.0
        dla = view.dla
        assert dla is not None
        what = f"logit({dla.answer_str}) - logit({dla.wrong_answer_str})" if dla.wrong_answer is not None else f"logit({dla.answer_str})"
        parts.append(f'<text x="{bar_x}" y="{top - 30}" font-size="11">DLA to {_label(what, 40)}: largest parts</text>')
        for k, (name, v) in enumerate(bars):
            y = top - 16 + k * 16
            w = 50 * abs(v) / scale
            centre = bar_x + 122  # positive parts to the right of the axis, negative to the left
            x0 = centre if v >= 0 else centre - w
            parts.append(f'<text x="{bar_x + 64}" y="{y + 10}" text-anchor="end">{escape(name)}</text>')
            parts.append(f'<rect x="{x0:.1f}" y="{y}" width="{w:.1f}" height="12" fill="{diverging_rgb(v / scale)}"/>')
            parts.append(f'<line x1="{centre}" x2="{centre}" y1="{y}" y2="{y + 14}" stroke="#8c959f"/>')
            parts.append(f'<text x="{bar_x + 180}" y="{y + 10}">{v:+.3f}</text>')
    parts.append("</svg>")
    return "".join(parts)


def show_logit_lens(
    model: Any,
    prompt: str | torch.Tensor,
    *,
    answer: str | int | None = None,
    wrong_answer: str | int | None = None,
    ablation_prompt: str | torch.Tensor | None = None,
    top_k: int = 5,
    ln_scale: str = "own",
    max_positions: int = 512,
    max_inline_cells: int = 2048,
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

    Returns:
        The :class:`LogitLensWidget`; display it, or drive it from Python
        (``widget.ablate(heads=[(3, 0)], mode="mean")``).
    """
    return LogitLensWidget(
        model, prompt, answer=answer, wrong_answer=wrong_answer, ablation_prompt=ablation_prompt,
        top_k=top_k, ln_scale=ln_scale, max_positions=max_positions, max_inline_cells=max_inline_cells,
    )


__all__ = ["LogitLensWidget", "lens_svg", "show_logit_lens"]
