"""A prompt pair prepared for interactive activation patching: the analysis behind
:func:`mechwidgets.show_patching`.

A :class:`PatchingSession` holds a clean prompt, a corrupted prompt of the same token length (given
at once, typed later, or built by replacing clean tokens with the proposals of
:meth:`PatchingSession.propose`), the answers the metric compares, and every view computed so far:
one per component, direction and metric, each the attribution grid (one backward pass) and the
exact grid (:func:`~.engines.activation_patch`, computed layer by layer so it can stream), drawn
as ``[rows, cols]``. Everything cached carries the fingerprint of the model it was computed on
(:class:`~mechwidgets._fingerprint.Stamp`): :meth:`PatchingSession.refresh` drops it when the
model changed, and a running view stops with
:class:`~mechwidgets.errors.ModelChangedError`. Headless::

    session = PatchingSession(model, "When Mary and John went to the store, John gave a drink to")
    session.set_corrupted("When Mary and John went to the store, Mary gave a drink to")
    view = session.view("head_out", "noising")  # view.exact: [layer, head], view.attribution
"""

from __future__ import annotations

import time
from collections.abc import Generator, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ..._args import as_int
from ..._fingerprint import Stamp, check_unchanged
from ..._model import ModelHandle
from ..._steps import run_to_end
from ...errors import ComponentError, MetricError, ModelChangedError, PromptError
from ..attention import top_predictions
from ..tokens import replace_token, similar_tokens
from .attribution import attribution_patch
from .engines import activation_patch
from .setup import COMPONENTS, DIRECTIONS, PatchingResult, check_same_length, choose_metric

#: Metrics a session computes by name (any callable works with activation_patch headless).
METRICS: tuple[str, ...] = ("logit_diff", "logprob", "prob", "kl")
#: Components offered by default (all of :data:`~.setup.COMPONENTS` work).
DEFAULT_COMPONENTS: tuple[str, ...] = ("resid_pre", "attn_out", "mlp_out", "head_out", "head_out_by_pos")
#: How many replacement tokens :meth:`PatchingSession.propose` returns.
N_CANDIDATES = 8


def view_key(component: str, direction: str, metric: str) -> str:
    """The key of a view in :attr:`PatchingSession.views`: ``"component|direction|metric"``."""
    return f"{component}|{direction}|{metric}"


@dataclass(frozen=True, eq=False)
class PatchingView:
    """One view: a component patched in one direction under one metric, drawn as ``[rows, cols]``
    (``[layer, pos]``, ``[layer, head]``, or ``[layer × head, pos]`` for per-head-per-position
    components).

    Attributes:
        key: ``"component|direction|metric"``.
        attribution: the attribution-patching result (its labels and baselines are the view's).
        exact: ``[rows, cols]`` float32, the exact (activation-patching) values of the layers
            computed so far, NaN in the others.
        exact_done: how many layers (from layer 0) ``exact`` holds.
    """

    key: str
    attribution: PatchingResult
    exact: torch.Tensor
    exact_done: int

    @property
    def rows_per_layer(self) -> int:
        return int(self.attribution.values.shape[1]) if len(self.attribution.axes) == 3 else 1

    @property
    def n_layers(self) -> int:
        return int(self.attribution.values.shape[0])

    @property
    def complete(self) -> bool:
        return self.exact_done == self.n_layers

    @property
    def attribution_grid(self) -> torch.Tensor:
        """``[rows, cols]`` attribution values."""
        return self.attribution.values.reshape(self.exact.shape)

    @property
    def row_labels(self) -> list[str]:
        res = self.attribution
        if len(res.axes) == 2:
            return list(res.labels[res.axes[0]])
        return [f"{a} {b}" for a in res.labels[res.axes[0]] for b in res.labels[res.axes[1]]]

    @property
    def col_labels(self) -> list[str]:
        return list(self.attribution.labels[self.attribution.axes[-1]])


class PatchingSession:
    """A clean prompt, its corrupted counterpart and answers, ready for patching views.

    Args:
        model: a TransformerLens ``HookedTransformer`` (3.x), ``TransformerBridge`` (4.x) or a
            :class:`~mechwidgets._model.ModelHandle`.
        prompt: the clean prompt (text, BOS prepended, or token ids).
        corrupted: the corrupted prompt, of the same token length; None to set it later with
            :meth:`set_corrupted` or :meth:`corrupt`.
        answer / wrong_answer: the tokens the metric compares (None: the clean and the corrupted
            run's top tokens, see :func:`~.setup.choose_metric`).
        max_positions: refuse longer prompts.

    Attributes:
        handle, clean (``[1, pos]``), corrupted (``[1, pos]`` or None); answers (the resolved
        token ids), answer_notes (the defaults chosen, in words); views (every view computed,
        by :func:`view_key`); seconds (how long the last full view took).

    Raises:
        PromptError, AnswerError: as :meth:`set_corrupted` says.
    """

    def __init__(
        self,
        model: Any,
        prompt: str | torch.Tensor,
        corrupted: str | torch.Tensor | None = None,
        *,
        answer: str | int | None = None,
        wrong_answer: str | int | None = None,
        max_positions: int = 256,
    ) -> None:
        self.handle = handle = ModelHandle.wrap(model)
        self.max_positions = max_positions
        self.clean = handle.tokens(prompt, max_positions=max_positions)
        self.corrupted: torch.Tensor | None = None
        self.given_answers: tuple[str | int | None, str | int | None] = (answer, wrong_answer)
        self.answers: tuple[int | None, int | None] = (None, None)
        self.answer_notes: list[str] = []
        self.views: dict[str, PatchingView] = {}
        self.seconds = 0.0
        #: the model as the views, baselines and default answers saw it
        self._stamp = Stamp(handle.model)
        if corrupted is not None:
            self.set_corrupted(corrupted)

    # ------------------------------------------------------------------ checks
    @staticmethod
    def check_components(components: Sequence[str]) -> tuple[str, ...]:
        """``components`` (the views to offer) as a tuple, each a key of :data:`~.setup.COMPONENTS`."""
        comps = tuple(components)
        if not comps:
            raise ComponentError(f"components= is empty: pass some of {sorted(COMPONENTS)}.")
        for comp in comps:
            if comp not in COMPONENTS:
                raise ComponentError(f"unknown component {comp!r}: use one of {sorted(COMPONENTS)}.")
        return comps

    @staticmethod
    def check_view(component: str, direction: str, metric: str) -> None:
        """Raise unless ``component``, ``direction`` and ``metric`` name a view a session computes."""
        if component not in COMPONENTS:
            raise ComponentError(f"unknown component {component!r}: use one of {sorted(COMPONENTS)}.")
        if direction not in DIRECTIONS:
            raise ComponentError(f"direction must be one of {DIRECTIONS}, got {direction!r}.")
        if metric not in METRICS:
            raise MetricError(
                f"the widget offers the metrics {METRICS}; got {metric!r}. Any callable metric "
                f"works with mechwidgets.analysis.activation_patch headless."
            )

    def need_corrupted(self) -> torch.Tensor:
        """The corrupted prompt's tokens, or a :class:`PromptError` saying how to set them."""
        if self.corrupted is None:
            raise PromptError(
                "no corrupted prompt yet: click a token of the clean prompt to replace it, or "
                "type a corrupted prompt with the same number of tokens."
            )
        return self.corrupted

    @property
    def n_pos(self) -> int:
        return int(self.clean.shape[-1])

    @property
    def differing(self) -> list[int]:
        """Positions where the corrupted prompt differs from the clean one."""
        if self.corrupted is None:
            return []
        return [int(i) for i in (self.corrupted[0] != self.clean[0]).nonzero().flatten()]

    # ------------------------------------------------------------------ inputs
    def set_corrupted(self, corrupted: str | torch.Tensor) -> None:
        """Use ``corrupted`` (text or tokens, the clean prompt's token length): the answers are
        resolved again and every view is dropped. Nothing changes if it is refused."""
        tokens = self.handle.tokens(corrupted, max_positions=self.max_positions, what="corrupted prompt")
        check_same_length(self.handle, self.clean, tokens)
        if torch.equal(tokens, self.clean):
            raise PromptError("the corrupted prompt is identical to the clean one: change at least one token.")
        answers = self._resolve_answers(tokens, self.given_answers)  # may raise: nothing changed yet
        self.corrupted = tokens
        self.views = {}
        self.answers, self.answer_notes = answers
        self._stamp.renew()  # every cache starts again from the model as it is now

    def corrupt(self, pos: int, token: str | int) -> None:
        """Replace the token at ``pos`` (of the corrupted prompt, or of the clean one if there is
        none yet) by the single token ``token``, as :meth:`set_corrupted` does."""
        base = self.corrupted if self.corrupted is not None else self.clean
        self.set_corrupted(replace_token(self.handle, base, pos, token))

    def set_answers(self, answer: str | int | None, wrong_answer: str | int | None) -> None:
        """Set the tokens the metric compares (None or "": the runs' top tokens); every view is
        dropped. Nothing changes if they are refused."""
        given = (answer or None, wrong_answer or None)
        answers = self._resolve_answers(self.need_corrupted(), given)  # may raise
        self.given_answers = given
        self.views = {}
        self.answers, self.answer_notes = answers

    def _resolve_answers(
        self, corrupted: torch.Tensor, given: tuple[str | int | None, str | int | None]
    ) -> tuple[tuple[int | None, int | None], list[str]]:
        handle = self.handle
        with handle.session():
            clean_logits = handle.run(self.clean)[0, -1]
            corrupted_logits = handle.run(corrupted)[0, -1]
        _, a, w, notes = choose_metric(handle, "logit_diff", clean_logits, corrupted_logits, *given)
        return (a, w), notes

    def propose(self, pos: int) -> list[str]:
        """Single-token replacements for the clean token at ``pos`` (1.., nearest by embedding
        similarity: symmetric token replacement, see :func:`~..tokens.similar_tokens`)."""
        pos = as_int(pos, "the position to replace", lo=1, hi=self.n_pos - 1, hint=" Position 0 is BOS.")
        ids = similar_tokens(self.handle, int(self.clean[0, pos]), k=N_CANDIDATES)
        return [self.handle.token_str(i) for i in ids]

    # ------------------------------------------------------------------ the model changed
    def stale(self) -> str | None:
        """What changed in the model since the views were computed (words), or None."""
        return self._stamp.stale()

    def refresh(self) -> str | None:
        """If the model changed since the views were computed, drop them and resolve the answers
        again (the defaults are the runs' top tokens). Returns what changed, or None."""
        change = self._stamp.stale()
        if change is not None:
            self.views = {}
            if self.corrupted is not None:
                self.answers, self.answer_notes = self._resolve_answers(self.corrupted, self.given_answers)
            self._stamp.renew()
        return change

    # ------------------------------------------------------------------ views
    def view(self, component: str, direction: str = "denoising", metric: str = "logit_diff") -> PatchingView:
        """A complete view, computed on the model as it is now unless cached."""
        self.refresh()
        return run_to_end(self.view_steps(component, direction, metric))

    def view_steps(self, component: str, direction: str, metric: str) -> Generator[dict[str, Any], None, PatchingView]:
        """Check the view's arguments now, then return the job that completes it: the
        attribution grid at once (if not cached), then the exact grid layer by layer, each step
        stored in :attr:`views` and yielded as progress ``{done, total, message}`` (layers). A
        cached view resumes where it stopped. It stops with :class:`ModelChangedError` if the
        model changes while it runs (the views are dropped), and stores nothing more once the
        prompt or the answers change. Call :meth:`refresh` first."""
        self.check_view(component, direction, metric)
        self.need_corrupted()
        return self._view_steps(view_key(component, direction, metric), component, direction, metric)

    def _view_steps(
        self, key: str, component: str, direction: str, metric: str
    ) -> Generator[dict[str, Any], None, PatchingView]:
        corrupted, (a, w) = self.need_corrupted(), self.answers
        args: dict[str, Any] = dict(component=component, direction=direction, metric=metric, answer=a, wrong_answer=w)
        n_layers = self.handle.n_layers
        t0 = time.perf_counter()
        job = self._stamp.fork()  # the model the views are of, even if a click renews the stamp
        view = self.views.get(key)
        if view is None:
            attr = attribution_patch(self.handle, self.clean, corrupted, **args)
            rows = attr.values.shape[0] * (attr.values.shape[1] if attr.values.ndim == 3 else 1)
            view = PatchingView(key, attr, torch.full((rows, attr.values.shape[-1]), float("nan")), 0)
            self.views[key] = view
            yield {"done": 0, "total": n_layers, "message": "exact patching"}
        for layer in range(view.exact_done, n_layers):
            if self.corrupted is not corrupted or self.answers != (a, w):
                return view  # the inputs changed: this view is of the old ones; store nothing
            try:
                check_unchanged(job, "the exact patching grid")
            except ModelChangedError:
                if self._stamp.fingerprint is job.fingerprint:  # not already refreshed by a click
                    self.views = {}
                raise
            res = activation_patch(self.handle, self.clean, corrupted, layers=[layer], **args)
            exact, rows = view.exact.clone(), view.rows_per_layer  # a new tensor: views are immutable
            exact[layer * rows : (layer + 1) * rows] = res.values[layer].reshape(rows, -1)
            view = self.views[key] = PatchingView(key, view.attribution, exact, layer + 1)
            yield {"done": layer + 1, "total": n_layers, "message": "exact patching"}
        self.seconds = time.perf_counter() - t0
        return view

    # ------------------------------------------------------------------ a cell's detail
    def cell_detail(self, component: str, direction: str, metric: str, row: int, col: int) -> dict[str, Any]:
        """What a click on a cell of a view's ``[rows, cols]`` grid shows: for a head component,
        the head's clean and corrupted attention patterns (``{"kind": "head", "title", "tokens",
        "clean_pattern", "corrupted_pattern"}``, ``[dest, src]``); otherwise the run being
        patched's top-10 next tokens before and with that one patch (``{"kind": "logits",
        "title", "base_tokens", "base_probs", "top_tokens", "top_probs"}``)."""
        view = self.views.get(view_key(component, direction, metric))
        if view is None:
            raise ComponentError("no grid is drawn yet: choose a corrupted prompt first.")
        n_rows, n_cols = view.exact.shape
        row, col = as_int(row, "row"), as_int(col, "col")
        if not (0 <= row < n_rows and 0 <= col < n_cols):
            raise ComponentError(f"cell ({row}, {col}) is outside the {n_rows} × {n_cols} grid.")
        layer, res = row // view.rows_per_layer, view.attribution
        value = float(view.exact[row, col])
        label = f"{view.row_labels[row]}, {res.axes[-1]} {view.col_labels[col]}"
        title = f"{component} {label}: exact {value:.4g}" if value == value else f"{component} {label}"
        if COMPONENTS[component].per_head:
            head = col if res.axes[-1] == "head" else row % view.rows_per_layer
            return self._head_detail(layer, head, title)
        return self._patched_logits_detail(COMPONENTS[component].hook, direction, layer, col, title)

    def _head_detail(self, layer: int, head: int, title: str) -> dict[str, Any]:
        handle = self.handle
        name = handle.hook_name("pattern", layer)
        with handle.session():
            _, clean_cache = handle.run_with_cache(self.clean, [name], return_type=None)
            _, corr_cache = handle.run_with_cache(self.need_corrupted(), [name], return_type=None)
        return {
            "kind": "head",
            "title": f"{title} — attention of L{layer}H{head}",
            "tokens": handle.str_tokens(self.clean),
            "clean_pattern": clean_cache[name][0, head],
            "corrupted_pattern": corr_cache[name][0, head],
        }

    def _patched_logits_detail(self, kind: str, direction: str, layer: int, pos: int, title: str) -> dict[str, Any]:
        handle = self.handle
        name = handle.hook_name(kind, layer)
        denoising = direction == "denoising"
        corrupted = self.need_corrupted()
        base, source = (corrupted, self.clean) if denoising else (self.clean, corrupted)
        with handle.session():
            _, src_cache = handle.run_with_cache(source, [name], return_type=None)

            def patch(act: torch.Tensor, hook: Any) -> torch.Tensor:
                act = act.clone()
                act[:, pos] = src_cache[name][:, pos]
                return act

            base_logits = handle.run(base)
            patched_logits = handle.run(base, fwd_hooks=[(name, patch)])
        before = top_predictions(handle, base_logits[0, -1])
        after = top_predictions(handle, patched_logits[0, -1])
        run = "corrupted" if denoising else "clean"
        return {
            "kind": "logits",
            "title": f"{title} — next-token predictions of the {run} run with this one patch",
            "base_tokens": before.str_tokens,
            "base_probs": before.probs,
            "top_tokens": after.str_tokens,
            "top_probs": after.probs,
        }


__all__ = ["DEFAULT_COMPONENTS", "METRICS", "PatchingSession", "PatchingView", "view_key"]
