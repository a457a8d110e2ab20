"""The activation-patching widget: exact and attribution patching, live.

A view over a :class:`~mechwidgets.analysis.patching.PatchingSession` (the prompts, answers and
computed views; :mod:`mechwidgets.analysis.patching` explains the technique). Every view the
session has computed is in the ``grids`` trait, keyed ``"component|direction|metric"``, so
toggling between them needs no kernel call and a saved notebook shows them all. Requests:

- ``propose {pos}`` → the ``candidates`` trait: single-token replacements for a clean token
  (nearest by embedding similarity: symmetric token replacement);
- ``corrupt {pos, token}`` / ``set_corrupted {text}`` → a new corrupted prompt (same length);
- ``set_answers {answer, wrong_answer}``; these three clear the grids and cancel a running
  ``view`` job (its grid is of the old prompt or answers);
- ``view {component, direction, metric}`` → a long job: the attribution grid at once, then the
  exact grid layer by layer (progress, cancel; a newer ``view`` supersedes it);
- ``cell {row, col}`` → the ``detail`` trait: a head's clean and corrupted patterns, or the
  top-10 next tokens with that one patch applied.
"""

from __future__ import annotations

from collections.abc import Generator, Sequence
from typing import Any

import torch
import traitlets

from .._args import Int, OneOf, Str
from .._steps import run_to_end
from ..analysis.patching import COMPONENTS, DIRECTIONS
from ..analysis.patching.session import (
    DEFAULT_COMPONENTS,
    METRICS,
    PatchingSession,
    PatchingView,
    view_key,
)
from ..errors import ModelChangedError, PromptError
from ._base import MechWidget
from ._requests import page_request
from ._svg import heatmap_svg, tokens_svg
from ._traits import Arrays

#: The request arguments the page may send (checked before any handler runs; bounds from the session).
_POS = Int(1, lambda w: w.session.n_pos - 1, note="0 is BOS")
_TOKEN = OneOf(Str(max_len=1000), Int(0, lambda w: w.session.handle.d_vocab - 1))
_ANSWER = OneOf(Str(max_len=1000), Int(0, lambda w: w.session.handle.d_vocab - 1), nullable=True)
_CELL = Int(0, 10**9)  # the grid's own size is checked by the session, from its view


def grid_state(view: PatchingView) -> dict[str, Any]:
    """A view as the page draws it (one entry of the ``grids`` trait): the grids, ``exact_done``
    (layers), the labels and axes, the baselines, the answers and ``rows_per_layer``."""
    res = view.attribution
    return {
        "attribution": view.attribution_grid, "exact": view.exact, "exact_done": view.exact_done,
        "rows": view.row_labels, "cols": view.col_labels, "row_axis": " × ".join(res.axes[:-1]),
        "col_axis": res.axes[-1], "baselines": {"clean": res.clean_value, "corrupted": res.corrupted_value},
        "normalized": res.normalized, "answer": res.answer_str, "wrong_answer": res.wrong_answer_str,
        "rows_per_layer": view.rows_per_layer,
    }


class PatchingWidget(MechWidget):
    """Exact and attribution activation patching of one clean/corrupted prompt pair.

    Build it with :func:`mechwidgets.show_patching`, or ``PatchingWidget(session, *, metric,
    direction, components)`` over a :class:`~mechwidgets.analysis.patching.PatchingSession`,
    offering ``components`` (the first view: ``components[0]``, ``direction``, ``metric``; computed
    at once if the session has a corrupted prompt). Traits (synced): ``clean_tokens``, ``corrupted_tokens``, ``differing`` (positions),
    ``answer``, ``wrong_answer``, ``answer_note``; the current view ``component``, ``direction``,
    ``metric`` and the choices ``components``, ``metrics``; ``grids`` (every computed view);
    ``candidates`` (replacements proposed for a clicked token); ``detail`` (the clicked cell).
    """

    _bundle = "patching.js"

    clean_tokens = traitlets.List(traitlets.Unicode()).tag(sync=True)
    corrupted_tokens = traitlets.List(traitlets.Unicode()).tag(sync=True)
    differing = traitlets.List(traitlets.Int()).tag(sync=True)
    answer = traitlets.Unicode("").tag(sync=True)
    wrong_answer = traitlets.Unicode("").tag(sync=True)
    answer_note = traitlets.Unicode("").tag(sync=True)
    component = traitlets.Unicode("resid_pre").tag(sync=True)
    direction = traitlets.Unicode("denoising").tag(sync=True)
    metric = traitlets.Unicode("logit_diff").tag(sync=True)
    components = traitlets.List(traitlets.Unicode()).tag(sync=True)
    metrics = traitlets.List(traitlets.Unicode()).tag(sync=True)
    #: {"component|direction|metric": grid_state(view)}: "attribution" and "exact" [rows, cols]
    #: float32 (exact: NaN in the layers not computed yet), their labels and baselines
    grids = Arrays().tag(sync=True)
    candidates = traitlets.Dict({}).tag(sync=True)
    #: the clicked cell (PatchingSession.cell_detail): "clean_pattern" and "corrupted_pattern"
    #: [dest, src] float32 of a head, or "base_probs" and "top_probs" [10] float32 with tokens
    detail = Arrays().tag(sync=True)
    n_layers = traitlets.Int(0).tag(sync=True)
    n_heads = traitlets.Int(0).tag(sync=True)

    def __init__(
        self, session: PatchingSession, *, metric: str = "logit_diff", direction: str = "denoising",
        components: Sequence[str] = DEFAULT_COMPONENTS,
    ) -> None:
        comps = session.check_components(components)
        session.check_view(comps[0], direction, metric)
        self.session = session
        self._proposed: int | None = None  # the position of the proposals on screen
        handle = session.handle
        super().__init__(
            clean_tokens=handle.str_tokens(session.clean), components=list(comps), metrics=list(METRICS),
            component=comps[0], direction=direction, metric=metric, n_layers=handle.n_layers,
            n_heads=handle.n_heads,
        )
        self._show_inputs()
        if session.corrupted is not None:
            self.show()

    # the session's state under the names the shared tests read
    _clean = property(lambda self: self.session.clean)
    _answer_ids = property(lambda self: self.session.answers)
    _need_corrupted = property(lambda self: self.session.need_corrupted)

    # ------------------------------------------------------------------ session → traits
    def _show_inputs(self) -> None:
        """The prompts, answers and grids as the session has them now; no detail, no proposals."""
        s, handle = self.session, self.session.handle
        self.corrupted_tokens = [] if s.corrupted is None else handle.str_tokens(s.corrupted)
        self.differing = s.differing
        self.answer, self.wrong_answer = ("" if t is None else handle.token_str(t) for t in s.answers)
        self.answer_note = " ".join(s.answer_notes)
        self._show_grids()
        self.detail = {}

    def _show_grids(self) -> None:
        self.grids = {key: grid_state(view) for key, view in self.session.views.items()}

    def _current(self) -> PatchingView | None:
        return self.session.views.get(view_key(self.component, self.direction, self.metric))

    # ------------------------------------------------------------------ the model changed
    #: Requests that recompute what they show anyway (a new view, a new corrupted prompt or
    #: new answers): the stale grids are only dropped before them.
    _RECOMPUTING_KINDS = ("view", "corrupt", "set_corrupted", "set_corrupted_tokens_", "set_answers")

    def _before_request(self, kind: str) -> None:
        """The model changed since the session's views: the session drops them and resolves the
        answers again; the proposals and (unless this request computes one) the view on screen
        are recomputed."""
        change = self.session.stale()
        if change is None:
            return
        recompute = self._current() is not None and kind not in self._RECOMPUTING_KINDS
        with self._recomputing(change, self.session.seconds if recompute else 0.0):
            self.grids, self.detail = {}, {}
            self.session.refresh()
            self._show_inputs()
            if self._proposed is not None and kind != "propose":  # Python's record, not the trait
                self._req_propose(self._proposed)
            if recompute:
                run_to_end(self._req_view(self.component, self.direction, self.metric))

    # ------------------------------------------------------------------ requests
    @page_request(pos=_POS)
    def _req_propose(self, pos: int) -> dict[str, Any]:
        self.candidates = {"pos": int(pos), "tokens": self.session.propose(pos)}
        self._proposed = int(pos)
        return {"pos": int(pos)}

    def _corrupted_changed(self) -> dict[str, Any]:
        self._invalidate_jobs("the corrupted prompt changed")  # a running grid is of the old one
        self.candidates, self._proposed = {}, None
        self._show_inputs()
        return {"corrupted_tokens": self.corrupted_tokens}

    @page_request(pos=_POS, token=_TOKEN)
    def _req_corrupt(self, pos: int, token: str | int) -> dict[str, Any]:
        self.session.corrupt(pos, token)
        return self._corrupted_changed()

    @page_request(text=Str())
    def _req_set_corrupted(self, text: str) -> dict[str, Any]:
        self.session.set_corrupted(text)
        return self._corrupted_changed()

    def _req_set_corrupted_tokens_(self, corrupted: str | torch.Tensor) -> dict[str, Any]:
        self.session.set_corrupted(corrupted)  # Python only: a tensor may come from Python
        return self._corrupted_changed()

    @page_request(answer=_ANSWER, wrong_answer=_ANSWER)
    def _req_set_answers(self, answer: str | int | None, wrong_answer: str | int | None) -> dict[str, Any]:
        self.session.set_answers(answer, wrong_answer)
        self._invalidate_jobs("the answers changed")  # a running grid measures the old ones
        self._show_inputs()
        return {"answer": self.answer, "wrong_answer": self.wrong_answer}

    @page_request(component=Str(choices=tuple(COMPONENTS)), direction=Str(choices=DIRECTIONS),
                  metric=Str(choices=METRICS))
    def _req_view(self, component: str, direction: str, metric: str) -> Generator[dict[str, Any], None, dict[str, Any]]:
        steps = self.session.view_steps(component, direction, metric)  # checks first
        self.component, self.direction, self.metric = component, direction, metric
        try:
            for step in steps:
                self._show_grids()
                yield step
        except ModelChangedError:  # the session dropped its views: they are the old model's
            self._show_grids()
            self.detail = {}
            raise
        return {"key": view_key(component, direction, metric)}

    @page_request(row=_CELL, col=_CELL)
    def _req_cell(self, row: int, col: int) -> dict[str, Any]:
        self.detail = self.session.cell_detail(self.component, self.direction, self.metric, row, col)
        return {"row": row, "col": col}

    # ------------------------------------------------------------------ Python API
    def set_corrupted(self, corrupted: str | torch.Tensor) -> None:
        """Use ``corrupted`` (same token length as the prompt) and compute the current view."""
        self._call("set_corrupted_tokens_", corrupted=corrupted)
        self.show()

    def corrupt(self, pos: int, token: str) -> None:
        """Replace the token at ``pos`` (a single token, e.g. ``" John"``) and recompute."""
        self._call("corrupt", pos=pos, token=token)
        self.show()

    def set_answers(self, answer: str | int | None, wrong_answer: str | int | None) -> None:
        """Set the answer tokens the metric compares (None: the runs' top tokens)."""
        self._call("set_answers", answer=answer, wrong_answer=wrong_answer)
        self.show()

    def show(self, component: str | None = None, direction: str | None = None, metric: str | None = None) -> None:
        """Switch the view (and compute it fully if it is not cached)."""
        self._call("view", component=component or self.component, direction=direction or self.direction,
                   metric=metric or self.metric)

    def values(self, kind: str = "exact") -> torch.Tensor:
        """The current view's ``[rows, cols]`` grid (``kind``: ``"exact"`` or ``"attribution"``)."""
        view = self._current()
        if view is None:
            raise PromptError("nothing computed yet: set a corrupted prompt first.")
        return view.exact if kind == "exact" else view.attribution_grid

    def select_cell(self, row: int, col: int) -> None:
        """Show a cell's detail (as a click on it does)."""
        self._call("cell", row=row, col=col)

    def _static_svg(self) -> str | None:
        view = self._current()
        if view is None:
            return tokens_svg(self.clean_tokens, title="Activation patching: clean prompt",
                              note="No grid yet: the corrupted prompt is chosen in the live widget.")
        kind = "exact" if view.complete else "attribution"
        normalized = view.attribution.normalized
        return heatmap_svg(
            self.values(kind), row_labels=view.row_labels, col_labels=view.col_labels,
            title=f"{kind} patching, {self.component}, {self.direction}, {self.metric}"
            + (" (normalised)" if normalized else ""),
            diverging=True, vmin=-1.0 if normalized else None, vmax=1.0 if normalized else None,
        )


def show_patching(
    model: Any,
    prompt: str | torch.Tensor,
    corrupted: str | torch.Tensor | None = None,
    *,
    answer: str | int | None = None,
    wrong_answer: str | int | None = None,
    metric: str = "logit_diff",
    direction: str = "denoising",
    components: Sequence[str] = DEFAULT_COMPONENTS,
    max_positions: int = 256,
) -> PatchingWidget:
    """Activation patching of ``prompt`` against a corrupted prompt, live.

    Args:
        model: a TransformerLens ``HookedTransformer`` (3.x) or ``TransformerBridge`` (4.x).
        prompt: the clean prompt.
        corrupted: the corrupted prompt, of the same token length. Leave it out to build it in the
            widget: click a token of the prompt and choose a replacement.
        answer / wrong_answer: the tokens the metric compares (default: the clean and the
            corrupted run's top tokens).
        metric: ``"logit_diff"``, ``"logprob"``, ``"prob"`` or ``"kl"`` (the widget offers these
            by name; a callable of the contract :data:`~mechwidgets.analysis.metrics.MetricFn`
            works headless with :func:`~mechwidgets.analysis.activation_patch`).
        direction: ``"denoising"`` (run corrupted, patch in clean: what is sufficient) or
            ``"noising"`` (run clean, patch in corrupted: what is necessary).
        components: the components offered (the first is shown first).
        max_positions: refuse longer prompts.

    Returns:
        The :class:`PatchingWidget` over a :class:`~mechwidgets.analysis.patching.PatchingSession`
        (``widget.session``). With ``corrupted`` given, the first view is computed before it
        returns (attribution and exact), so ``widget.values()`` is ready.
    """
    session = PatchingSession(model, prompt, corrupted, answer=answer, wrong_answer=wrong_answer,
                              max_positions=max_positions)
    return PatchingWidget(session, metric=metric, direction=direction, components=components)


__all__ = ["PatchingWidget", "show_patching"]
