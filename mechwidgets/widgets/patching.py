"""The activation-patching widget: exact and attribution patching, live.

See :mod:`mechwidgets.analysis.patching` for the technique (denoising vs noising, normalised
metrics). The widget holds every computed view in the ``grids`` trait, keyed
``"component|direction|metric"``, so toggling between cached views needs no kernel call and a
saved notebook shows them all. Requests from the frontend:

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

import time
from collections.abc import Generator, Sequence
from typing import Any

import torch
import traitlets

from .._args import Int, OneOf, Str, as_int
from .._fingerprint import Stamp, check_unchanged
from .._model import ModelHandle
from .._steps import run_to_end
from .._tensor import encode_array
from ..analysis.attention import top_predictions
from ..analysis.attribution import attribution_patch
from ..analysis.patching import (
    COMPONENTS,
    DIRECTIONS,
    PatchingResult,
    activation_patch,
    check_same_length,
    choose_metric,
)
from ..analysis.tokens import replace_token, similar_tokens
from ..errors import ComponentError, MetricError, ModelChangedError, PromptError
from ._base import MechWidget
from ._requests import page_request
from ._svg import heatmap_svg, tokens_svg

#: Metrics offered by name in the widget (any callable works headless).
METRICS: tuple[str, ...] = ("logit_diff", "logprob", "prob", "kl")
#: Components shown by default (all of :data:`~mechwidgets.analysis.patching.COMPONENTS` work).
DEFAULT_COMPONENTS: tuple[str, ...] = ("resid_pre", "attn_out", "mlp_out", "head_out", "head_out_by_pos")
#: How many replacement tokens a click on a clean token proposes.
N_CANDIDATES = 8


def grid_key(component: str, direction: str, metric: str) -> str:
    return f"{component}|{direction}|{metric}"


def _n_pos(w: PatchingWidget) -> int:
    """Positions of the clean prompt (Python-side state, never the page's traits)."""
    return int(w._clean.shape[-1])


#: The request arguments the page may send (checked before any handler runs).
_POS = Int(1, lambda w: _n_pos(w) - 1, note="0 is BOS")
_TOKEN = OneOf(Str(max_len=1000), Int(0, lambda w: w._handle.d_vocab - 1))
_ANSWER = OneOf(Str(max_len=1000), Int(0, lambda w: w._handle.d_vocab - 1), nullable=True)
_CELL = Int(0, 10**9)  # the grid's own size is checked by the handler, from its PatchingResult


class PatchingWidget(MechWidget):
    """Exact and attribution activation patching of one clean/corrupted prompt pair.

    Build it with :func:`mechwidgets.show_patching`. Traits (synced): ``clean_tokens``,
    ``corrupted_tokens``, ``differing`` (positions), ``answer``, ``wrong_answer``,
    ``answer_note``; the current view ``component``, ``direction``, ``metric`` and the choices
    ``components``, ``metrics``; ``grids`` (every computed view: ``attribution`` and ``exact``
    ``[rows, cols]`` float32 arrays, ``exact_done`` layers, labels, baselines); ``candidates``
    (replacements proposed for a clicked token); ``detail`` (the clicked cell).
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
    grids = traitlets.Dict({}).tag(sync=True)
    candidates = traitlets.Dict({}).tag(sync=True)
    detail = traitlets.Dict({}).tag(sync=True)
    n_layers = traitlets.Int(0).tag(sync=True)
    n_heads = traitlets.Int(0).tag(sync=True)

    def __init__(
        self,
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
    ) -> None:
        handle = ModelHandle.wrap(model)
        comps = list(components)
        if not comps:
            raise ComponentError(f"components= is empty: pass some of {sorted(COMPONENTS)}.")
        for comp in comps:
            if comp not in COMPONENTS:
                raise ComponentError(f"unknown component {comp!r}: use one of {sorted(COMPONENTS)}.")
        self._check_view(comps[0], direction, metric)
        self._handle = handle
        self._max_positions = max_positions
        self._clean = handle.tokens(prompt, max_positions=max_positions)
        self._corrupted: torch.Tensor | None = None
        self._user_answers: tuple[str | int | None, str | int | None] = (answer, wrong_answer)
        self.results: dict[str, dict[str, PatchingResult]] = {}
        self._proposed: int | None = None  # the position of the proposals on screen
        #: the model as the grids, baselines and default answers saw it
        self._stamp = Stamp(handle.model)
        self._view_seconds = 0.0  # how long the last full view took: a recompute's expected cost
        super().__init__(
            clean_tokens=handle.str_tokens(self._clean),
            components=comps,
            metrics=list(METRICS),
            component=comps[0],
            direction=direction,
            metric=metric,
            n_layers=handle.n_layers,
            n_heads=handle.n_heads,
        )
        if corrupted is not None:
            self.set_corrupted(corrupted)

    # ------------------------------------------------------------------ checks
    def _check_view(self, component: str, direction: str, metric: str) -> None:
        if component not in COMPONENTS:
            raise ComponentError(f"unknown component {component!r}: use one of {sorted(COMPONENTS)}.")
        if direction not in DIRECTIONS:
            raise ComponentError(f"direction must be one of {DIRECTIONS}, got {direction!r}.")
        if metric not in METRICS:
            raise MetricError(
                f"the widget offers the metrics {METRICS}; got {metric!r}. Any callable metric "
                f"works with mechwidgets.analysis.activation_patch headless."
            )

    def _need_corrupted(self) -> torch.Tensor:
        if self._corrupted is None:
            raise PromptError(
                "no corrupted prompt yet: click a token of the clean prompt to replace it, or "
                "type a corrupted prompt with the same number of tokens."
            )
        return self._corrupted

    # ------------------------------------------------------------------ state changes
    def _set_corrupted_tokens(self, tokens: torch.Tensor) -> None:
        clean = self._clean
        handle = self._handle
        check_same_length(handle, clean, tokens)
        if torch.equal(tokens, clean):
            raise PromptError("the corrupted prompt is identical to the clean one: change at least one token.")
        answers = self._resolve_answers(tokens, self._user_answers)  # may raise: nothing changed yet
        self._invalidate_jobs("the corrupted prompt changed")  # a running grid is of the old one
        self._corrupted = tokens
        self.results = {}
        self.grids = {}
        self.detail = {}
        self.candidates = {}
        self._proposed = None
        self.corrupted_tokens = handle.str_tokens(tokens)
        self.differing = [int(i) for i in (tokens[0] != clean[0]).nonzero().flatten()]
        self._set_answers(*answers)
        self._stamp.renew()  # every cache starts again from the model as it is now

    def _resolve_answers(
        self, corrupted: torch.Tensor, answers: tuple[str | int | None, str | int | None]
    ) -> tuple[int | None, int | None, list[str]]:
        """Resolve the answers (defaults: the clean and the corrupted run's top tokens)."""
        handle = self._handle
        with handle.session():
            clean_logits = handle.run(self._clean)[0, -1]
            corrupted_logits = handle.run(corrupted)[0, -1]
        _, a, w, notes = choose_metric(handle, "logit_diff", clean_logits, corrupted_logits, *answers)
        return a, w, notes

    def _set_answers(self, a: int | None, w: int | None, notes: list[str]) -> None:
        self._answer_ids = (a, w)
        self.answer = self._handle.token_str(a) if a is not None else ""
        self.wrong_answer = self._handle.token_str(w) if w is not None else ""
        self.answer_note = " ".join(notes)

    # ------------------------------------------------------------------ the model changed
    #: Requests that recompute what they show anyway (a new view, a new corrupted prompt or
    #: new answers): the stale grids are only dropped before them.
    _RECOMPUTING_KINDS = ("view", "corrupt", "set_corrupted", "set_corrupted_tokens_", "set_answers")

    def _forget_grids(self) -> None:
        self.results = {}
        self.grids = {}
        self.detail = {}

    def _before_request(self, kind: str) -> None:
        """The model changed since the grids were computed: drop them, re-resolve the answers
        (the defaults are the runs' top tokens) and, unless this request computes a view itself,
        recompute the view on screen (its attribution and exact grids) and the proposals."""
        change = self._stamp.stale()
        if change is None:
            return
        key = grid_key(self.component, self.direction, self.metric)
        shown = key in self.grids
        self._forget_grids()
        recompute = shown and kind not in self._RECOMPUTING_KINDS
        with self._recomputing(change, self._view_seconds if recompute else 0.0):
            if self._corrupted is not None:
                self._set_answers(*self._resolve_answers(self._corrupted, self._user_answers))
            self._stamp.renew()
            if self._proposed is not None and kind != "propose":  # Python's record, not the trait
                self._req_propose(self._proposed)
            if recompute:
                run_to_end(self._req_view(self.component, self.direction, self.metric))

    def _check_model(self, job: Stamp) -> None:
        """Stop a running view whose model changed since it started (the grids so far are
        dropped: they are the old model's); the next click recomputes."""
        try:
            check_unchanged(job, "the exact patching grid")
        except ModelChangedError:
            if self._stamp.fingerprint is job.fingerprint:  # not already recomputed by a click
                self._forget_grids()
            raise

    # ------------------------------------------------------------------ requests
    @page_request(pos=_POS)
    def _req_propose(self, pos: int) -> dict[str, Any]:
        n = self._clean.shape[-1]
        pos = as_int(pos, "the position to replace", lo=1, hi=n - 1, hint=" Position 0 is BOS.")
        ids = similar_tokens(self._handle, int(self._clean[0, pos]), k=N_CANDIDATES)
        self.candidates = {"pos": pos, "tokens": [self._handle.token_str(i) for i in ids]}
        self._proposed = pos
        return {"pos": pos}

    @page_request(pos=_POS, token=_TOKEN)
    def _req_corrupt(self, pos: int, token: str) -> dict[str, Any]:
        base = self._corrupted if self._corrupted is not None else self._clean
        self._set_corrupted_tokens(replace_token(self._handle, base, pos, token))
        return {"corrupted_tokens": self.corrupted_tokens}

    @page_request(text=Str())
    def _req_set_corrupted(self, text: str) -> dict[str, Any]:
        tokens = self._handle.tokens(text, max_positions=self._max_positions, what="corrupted prompt")
        self._set_corrupted_tokens(tokens)
        return {"corrupted_tokens": self.corrupted_tokens}

    @page_request(answer=_ANSWER, wrong_answer=_ANSWER)
    def _req_set_answers(self, answer: str | int | None, wrong_answer: str | int | None) -> dict[str, Any]:
        answers = (answer or None, wrong_answer or None)
        resolved = self._resolve_answers(self._need_corrupted(), answers)  # may raise
        self._invalidate_jobs("the answers changed")  # a running grid measures the old ones
        self._user_answers = answers
        self.results = {}
        self.grids = {}
        self.detail = {}
        self._set_answers(*resolved)
        return {"answer": self.answer, "wrong_answer": self.wrong_answer}

    def _patch_args(self) -> dict[str, Any]:
        return {"answer": self._answer_ids[0], "wrong_answer": self._answer_ids[1]}

    @page_request(component=Str(choices=tuple(COMPONENTS)), direction=Str(choices=DIRECTIONS),
                  metric=Str(choices=METRICS))
    def _req_view(self, component: str, direction: str, metric: str) -> Generator[dict[str, Any], None, dict[str, Any]]:
        self._check_view(component, direction, metric)
        corrupted = self._need_corrupted()
        self.component, self.direction, self.metric = component, direction, metric
        key = grid_key(component, direction, metric)
        n_layers = self._handle.n_layers
        grid = dict(self.grids.get(key, {}))
        t0 = time.perf_counter()
        job = self._stamp.fork()  # the model the grids are of, even if a click renews the stamp
        if not grid:
            attr = attribution_patch(
                self._handle, self._clean, corrupted, component=component, metric=metric,
                direction=direction, **self._patch_args(),  # type: ignore[arg-type]
            )
            values = attr.values.reshape(attr.values.shape[0] * (attr.values.shape[1] if attr.values.ndim == 3 else 1), -1)
            rows_per_layer = values.shape[0] // n_layers
            row_labels = self._row_labels(attr)
            col_labels = attr.labels[attr.axes[-1]]
            grid = {
                "attribution": encode_array(values),
                "exact": encode_array(torch.full_like(values, float("nan"))),
                "exact_done": 0,
                "rows": row_labels,
                "cols": col_labels,
                "row_axis": " × ".join(attr.axes[:-1]),
                "col_axis": attr.axes[-1],
                "baselines": {"clean": attr.clean_value, "corrupted": attr.corrupted_value},
                "normalized": attr.normalized,
                "answer": attr.answer_str,
                "wrong_answer": attr.wrong_answer_str,
                "rows_per_layer": rows_per_layer,
            }
            self.results.setdefault(key, {})["attribution"] = attr
            self.grids = {**self.grids, key: grid}
            yield {"done": 0, "total": n_layers, "message": "exact patching"}
        exact = self._decode(grid["exact"])
        for layer in range(int(grid["exact_done"]), n_layers):
            self._check_model(job)
            res = activation_patch(
                self._handle, self._clean, corrupted, component=component, metric=metric,
                direction=direction, layers=[layer], **self._patch_args(),  # type: ignore[arg-type]
            )
            rows = grid["rows_per_layer"]
            exact[layer * rows : (layer + 1) * rows] = res.values[layer].reshape(rows, -1)
            grid = {**grid, "exact": encode_array(exact), "exact_done": layer + 1}
            self.grids = {**self.grids, key: grid}
            yield {"done": layer + 1, "total": n_layers, "message": "exact patching"}
        self._view_seconds = time.perf_counter() - t0
        return {"key": key}

    @staticmethod
    def _decode(enc: dict[str, Any]) -> torch.Tensor:
        from .._tensor import decode_array

        return torch.from_numpy(decode_array(enc).copy())

    @staticmethod
    def _row_labels(res: PatchingResult) -> list[str]:
        if len(res.axes) == 2:
            return list(res.labels[res.axes[0]])
        return [f"{a} {b}" for a in res.labels[res.axes[0]] for b in res.labels[res.axes[1]]]

    @page_request(row=_CELL, col=_CELL)
    def _req_cell(self, row: int, col: int) -> dict[str, Any]:
        key = grid_key(self.component, self.direction, self.metric)
        grid = self.grids.get(key)
        attr = self.results.get(key, {}).get("attribution")
        if not grid or attr is None:
            raise ComponentError("no grid is drawn yet: choose a corrupted prompt first.")
        rows_per_layer = int(grid["rows_per_layer"])
        shape = attr.values.shape  # the grid's size from its PatchingResult, not from the page
        n_rows, n_cols = shape[0] * (shape[1] if len(shape) == 3 else 1), shape[-1]
        row, col = as_int(row, "row"), as_int(col, "col")
        if not (0 <= row < n_rows and 0 <= col < n_cols):
            raise ComponentError(f"cell ({row}, {col}) is outside the {n_rows} × {n_cols} grid.")
        layer = row // rows_per_layer
        value = float(self._decode(grid["exact"])[row, col])
        label = f"{grid['rows'][row]}, {grid['col_axis']} {grid['cols'][col]}"
        title = f"{self.component} {label}: exact {value:.4g}" if value == value else f"{self.component} {label}"
        if self.component.startswith("head"):
            head = col if grid["col_axis"] == "head" else row % rows_per_layer
            self.detail = self._head_detail(layer, head, title)
        else:
            self.detail = self._patched_logits_detail(layer, col, title)
        return {"row": row, "col": col}

    def _head_detail(self, layer: int, head: int, title: str) -> dict[str, Any]:
        handle = self._handle
        name = handle.hook_name("pattern", layer)
        with handle.session():
            _, clean_cache = handle.run_with_cache(self._clean, [name], return_type=None)
            _, corr_cache = handle.run_with_cache(self._need_corrupted(), [name], return_type=None)
        return {
            "kind": "head",
            "title": f"{title} — attention of L{layer}H{head}",
            "tokens": self.clean_tokens,
            "clean_pattern": encode_array(clean_cache[name][0, head]),
            "corrupted_pattern": encode_array(corr_cache[name][0, head]),
        }

    def _patched_logits_detail(self, layer: int, pos: int, title: str) -> dict[str, Any]:
        handle = self._handle
        kind = self.component
        name = handle.hook_name(kind, layer)
        denoising = self.direction == "denoising"
        corrupted = self._need_corrupted()
        base, source = (corrupted, self._clean) if denoising else (self._clean, corrupted)
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
            "base_probs": encode_array(before.probs),
            "top_tokens": after.str_tokens,
            "top_probs": encode_array(after.probs),
        }

    # ------------------------------------------------------------------ Python API
    def set_corrupted(self, corrupted: str | torch.Tensor) -> None:
        """Use ``corrupted`` (same token length as the prompt) and compute the current view."""
        toks = self._handle.tokens(corrupted, max_positions=self._max_positions, what="corrupted prompt")
        self._call("set_corrupted_tokens_", tokens=toks)
        self.show(self.component, self.direction, self.metric)

    def _req_set_corrupted_tokens_(self, tokens: torch.Tensor) -> dict[str, Any]:
        self._set_corrupted_tokens(tokens)
        return {}

    def corrupt(self, pos: int, token: str) -> None:
        """Replace the token at ``pos`` (a single token, e.g. ``" John"``) and recompute."""
        self._call("corrupt", pos=pos, token=token)
        self.show(self.component, self.direction, self.metric)

    def set_answers(self, answer: str | int | None, wrong_answer: str | int | None) -> None:
        """Set the answer tokens the metric compares (None: the runs' top tokens)."""
        self._call("set_answers", answer=answer, wrong_answer=wrong_answer)
        self.show(self.component, self.direction, self.metric)

    def show(self, component: str | None = None, direction: str | None = None, metric: str | None = None) -> None:
        """Switch the view (and compute it fully if it is not cached)."""
        self._call(
            "view",
            component=component or self.component,
            direction=direction or self.direction,
            metric=metric or self.metric,
        )

    def values(self, kind: str = "exact") -> torch.Tensor:
        """The current view's ``[rows, cols]`` grid (``kind``: ``"exact"`` or ``"attribution"``)."""
        grid = self.grids.get(grid_key(self.component, self.direction, self.metric))
        if not grid:
            raise PromptError("nothing computed yet: set a corrupted prompt first.")
        return self._decode(grid[kind])

    def select_cell(self, row: int, col: int) -> None:
        """Show a cell's detail (as a click on it does)."""
        self._call("cell", row=row, col=col)

    def _static_svg(self) -> str | None:
        grid = self.grids.get(grid_key(self.component, self.direction, self.metric))
        if not grid:
            return tokens_svg(
                self.clean_tokens, title="Activation patching: clean prompt",
                note="No grid yet: the corrupted prompt is chosen in the live widget.",
            )
        exact = self._decode(grid["exact"])
        done = int(grid["exact_done"]) * int(grid["rows_per_layer"]) >= exact.shape[0]
        values = exact if done else self._decode(grid["attribution"])
        kind = "exact" if done else "attribution"
        return heatmap_svg(
            values,
            row_labels=grid["rows"],
            col_labels=grid["cols"],
            title=f"{kind} patching, {self.component}, {self.direction}, {self.metric}"
            + (" (normalised)" if grid["normalized"] else ""),
            diverging=True,
            vmin=-1.0 if grid["normalized"] else None,
            vmax=1.0 if grid["normalized"] else None,
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
        The :class:`PatchingWidget`. With ``corrupted`` given, the first view is computed before
        it returns (attribution and exact), so ``widget.values()`` is ready.
    """
    return PatchingWidget(
        model, prompt, corrupted, answer=answer, wrong_answer=wrong_answer, metric=metric,
        direction=direction, components=components, max_positions=max_positions,
    )


__all__ = ["PatchingWidget", "show_patching"]
