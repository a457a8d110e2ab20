"""The whole view of the widget, from one run, and its live analysis object (see
:mod:`mechwidgets.analysis.lens`)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, TypedDict

import torch
from jaxtyping import Float

from ..._fingerprint import Stamp
from ..._model import ModelHandle
from ...errors import ComponentError, PromptError
from ..attention import (
    Predictions,
    ablation_hooks,
    check_ablation,
    resample_tokens,
    top_predictions,
)
from .core import (
    DLABy,
    LensResult,
    LnScale,
    _answers,
    _check_options,
    _lens_from_record,
    _lens_rows,
    _Record,
    _record,
    _stream_names,
)
from .dla import DLAResult, _dla_from_record


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
    mode: str = "zero", resample_from: torch.Tensor | None = None, eager_cells: int | None = None,
) -> tuple[LensView, _Record]:
    """:func:`lens_view` on checked arguments (what :func:`check_ablation` returns), and the
    run's streams. With ``eager_cells``, the lens covers only the last positions that fit in
    that many layer × position cells (at least one)."""
    answer_id, wrong_id = answers
    names = _stream_names(handle)
    n_pos = tokens.shape[-1]
    start = 0 if eager_cells is None else max(0, n_pos - max(1, eager_cells // len(names)))
    with handle.session():
        hooks = ablation_hooks(handle, heads, mlps, mode, resample_from)
        rec = _record(handle, tokens, parts=answer_id is not None, patterns=by == "position", fwd_hooks=hooks)
        lens = _lens_from_record(handle, rec, answer=answer_id, top_k=top_k, ln_scale=ln_scale, start=start)
        dla = None
        if answer_id is not None:
            dla = _dla_from_record(handle, rec, answer=answer_id, wrong_answer=wrong_id, by=by)
        norms = torch.stack([rec.cache[n][0].float().norm(dim=-1) for n in names]).cpu()
    streams = _Record(tokens, {n: rec.cache[n] for n in names}, rec.logits)
    return LensView(lens, dla, norms, list(heads), list(mlps), mode), streams


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
                 mode=mode, resample_from=other)[0]


class LensOptions(TypedDict, total=False):
    """The keyword arguments of :class:`LensAnalysis` (its docstring gives their defaults), as
    :func:`mechwidgets.show_logit_lens` passes them through."""

    answer: str | int | None
    wrong_answer: str | int | None
    ablation_prompt: str | torch.Tensor | None
    top_k: int
    ln_scale: LnScale
    max_positions: int


class LensAnalysis:
    """The whole lens view of one prompt (:class:`LensView`: lens, DLA by source position,
    norms), prepared for :class:`~mechwidgets.widgets.lens.LogitLensWidget` or headless use,
    with live ablation of heads and MLPs. Every argument is checked here, once (as
    :func:`lens_view`). The clean view carries a :class:`~mechwidgets._fingerprint.Stamp` of the
    model: :meth:`stale` says when the model changed since, :meth:`recompute` runs it again.

    With ``eager_cells``, a run's lens is computed at first only at the last positions that fit
    in that many layer × position cells (``lens.computed_from``); :meth:`complete` fills in the
    rest from the same run's recorded streams (no second forward pass), as the widget's page
    asks once it has drawn. Everything else (DLA, norms, predictions) is always complete.

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
        eager_cells: int | None = None,
    ) -> None:
        self.handle = handle = ModelHandle.wrap(model)
        self.tokens, self.answers, self.resample_from = _check_view(
            handle, prompt, answer, wrong_answer, ablation_prompt, top_k=top_k, ln_scale=ln_scale,
            by="position", max_positions=max_positions,
        )
        self.top_k, self.ln_scale, self.eager_cells = top_k, ln_scale, eager_cells
        self.has_mlp = handle.has_hook(handle.hook_name("mlp_out", 0))
        self.stamp = Stamp(handle.model)
        self._streams: dict[str, _Record] = {}
        self.view = self._run("clean")
        self.prompt = prompt if isinstance(prompt, str) else "".join(self.view.lens.str_tokens)
        self.last_ablation: LensView | None = None
        self.ablated: dict[str, Any] = {"heads": [], "mlps": [], "mode": "zero"}

    def _run(self, run: str, heads: Sequence[tuple[int, int]] = (), mlps: Sequence[int] = (), mode: str = "zero") -> LensView:
        view, self._streams[run] = _view(
            self.handle, self.tokens, self.answers, top_k=self.top_k, ln_scale=self.ln_scale, by="position",
            heads=heads, mlps=mlps, mode=mode, resample_from=self.resample_from, eager_cells=self.eager_cells,
        )
        return view

    def ablate(self, heads: Sequence[Any] = (), mlps: Sequence[Any] = (), mode: str = "zero") -> LensView | None:
        """Ablate ``heads`` (``(layer, head)`` pairs) and ``mlps`` (layers) with ``mode`` and
        run the view again (:attr:`last_ablation`); nothing to ablate clears it (None)."""
        pairs, layers = check_ablation(self.handle, heads, mlps, mode, resample_from=self.resample_from)
        self.ablated = {"heads": [list(p) for p in pairs], "mlps": layers, "mode": mode}
        self.last_ablation = self._run("ablated", pairs, layers, mode) if pairs or layers else None
        return self.last_ablation

    def stale(self) -> str | None:
        """What changed in the model since the view was computed (None: nothing)."""
        return self.stamp.stale()

    def recompute(self, *, ablation: bool = True) -> None:
        """Run the clean view again on the model as it is now, and (``ablation``) the ablation
        in force."""
        self.view = self._run("clean")
        self.stamp.renew()
        if ablation and self.last_ablation is not None:
            self.ablate(**self.ablated)

    def _of(self, run: str) -> LensView:
        if run not in ("clean", "ablated"):
            raise ComponentError(f"run must be 'clean' or 'ablated', got {run!r}.")
        return self.view if run == "clean" or self.last_ablation is None else self.last_ablation

    def complete(self, run: str = "clean") -> Iterator[dict[str, Any]]:
        """Fill in the lens of ``run`` at the positions not computed yet (``computed_from``),
        one layer at a time from the run's recorded streams; yields progress after each."""
        lens = self._of(run).lens
        stop = lens.computed_from
        for i in range(len(lens.layers) if stop else 0):  # one layer at a time, for the progress
            row = _lens_rows(self.handle, self._streams[run], slice(0, stop), [i], answer=lens.answer,
                             k=lens.top_ids.shape[-1], ln_scale=self.ln_scale)
            for full, part in zip((lens.top_ids, lens.top_probs, lens.kl, lens.answer_rank, lens.answer_prob), row,
                                  strict=True):
                if full is not None and part is not None:
                    full[i, :stop] = part[0]
            yield {"done": i + 1, "total": len(lens.layers), "message": f"logit lens, {run} run: {lens.layers[i]}"}
        lens.computed_from = 0

    def layer_topk(self, layer: Any, run: str = "clean") -> tuple[torch.Tensor, torch.Tensor]:
        """One lens row's ``([pos, k] top ids, [pos, k] probabilities)`` of the clean run or
        (``run="ablated"``, when there is one) the ablated run, completed first if need be."""
        lens = self._of(run).lens
        n = len(lens.layers)
        if not isinstance(layer, int) or isinstance(layer, bool) or not 0 <= layer < n:
            raise ComponentError(f"lens layer {layer!r} is out of range: rows are 0..{n - 1} "
                                 f"({lens.layers[0]} … {lens.layers[-1]}).")
        for _ in self.complete(run if self.last_ablation is not None else "clean"):
            pass
        return lens.top_ids[layer], lens.top_probs[layer]

    def predictions(self, view: LensView, k: int = 8) -> Predictions:
        """The top ``k`` next tokens of ``view``'s run at the last position."""
        assert view.lens.logits is not None
        return top_predictions(self.handle, view.lens.logits[-1], k)
