"""The causal-scrubbing widget: a hypothesis tree, the loss it recovers, and its refinements.

A view over a prepared :class:`~mechwidgets.analysis.scrubbing.Scrubber` (the model, the
dataset and the cached clean run; every argument is checked there). The frontend
(``js/scrubbing.ts``) draws the hypothesis as a tree where the ``layout`` trait places it, the
fraction of the loss recovered as a bar with its spread over seeds, and the history of
refinements as a table and a bar chart (as the causal-scrubbing write-ups show successive
hypotheses). Requests:

- ``evaluate {nodes: {path: {kept, feature}}, label}`` → a long job (progress per seed, cancel)
  that re-scrubs the hypothesis with those node states and writes ``tree``, ``result`` and a new
  ``history`` entry;
- ``restore {step}`` → the hypothesis and result of an earlier history step, without re-running
  unless the model changed since that step (then it is scrubbed again, as a job); a running
  evaluation is cancelled (it would overwrite them);
- ``fold {path, folded}`` → fold or unfold the inputs of a node: ``collapsed`` and the tree's
  ``layout`` (computed in Python, :func:`~mechwidgets.widgets._scrubbing_tree.tree_layout`) change.
"""

from __future__ import annotations

from collections.abc import Generator, Mapping, Sequence
from typing import Any

import traitlets

from .._args import Bool, Int, MapOf, Record, Str, as_int
from ..analysis.scrubbing import HypothesisNode, Scrubber, ScrubResult
from ..errors import HypothesisError
from ._base import MechWidget
from ._requests import page_request
from ._scrubbing_tree import initial_collapsed, scrubbing_svg, tree_layout, tree_rows
from ._traits import Arrays

#: The request arguments the page may send (checked before any handler runs): node paths and
#: feature names are looked up in the hypothesis and the scrubber by the handler.
_NODE_STATE = Record({"kept": Bool(optional=True, nullable=True),
                      "feature": Str(max_len=200, optional=True, nullable=True)})


class ScrubbingWidget(MechWidget):
    """Causal scrubbing of a hypothesis, with live refinement and a history.

    Build it with :func:`mechwidgets.show_scrubbing`, or as ``ScrubbingWidget(scrubber,
    hypothesis)`` over a prepared :class:`~mechwidgets.analysis.scrubbing.Scrubber`: the
    hypothesis is scrubbed at once (its errors are raised here, before anything is shown).
    """

    _bundle = "scrubbing.js"

    #: the hypothesis, depth first: ``{path, component, feature, kept, active, depth, parent}``
    #: per node (``active``: kept, and every ancestor kept); see ``_scrubbing_tree.tree_rows``
    tree: traitlets.List[dict[str, Any]] = traitlets.List([]).tag(sync=True)
    #: paths of the nodes whose inputs are folded away (view state; ``fold`` requests change it)
    collapsed = traitlets.List(traitlets.Unicode()).tag(sync=True)
    #: where the page draws each node not folded away: ``tree_layout(tree, collapsed)``
    layout = traitlets.Dict({}).tag(sync=True)
    #: ``{name, description}`` of the features a node can be given
    features: traitlets.List[dict[str, Any]] = traitlets.List([]).tag(sync=True)
    #: the last evaluation: ``clean``, ``random``, ``scrubbed``, ``fraction``, ``fraction_std``,
    #: ``per_seed`` (``[3, n_seeds]`` float32: random, scrubbed, fraction), ``metric``,
    #: ``n_references``, ``seconds``, ``step``
    result = Arrays().tag(sync=True)
    #: one entry per evaluation: ``step``, ``label`` (what changed), ``fraction``,
    #: ``fraction_std``, ``scrubbed``, ``random``, ``clean`` and the node states ``nodes``
    history: traitlets.List[dict[str, Any]] = traitlets.List([]).tag(sync=True)
    #: ``n_inputs``, ``length``, ``positions``, ``metric``, ``n_seeds``, ``n_references``
    dataset = traitlets.Dict({}).tag(sync=True)
    #: False in a static export (no kernel: controls are disabled)
    live = traitlets.Bool(True).tag(sync=True)

    def __init__(self, scrubber: Scrubber, hypothesis: HypothesisNode, **kwargs: Any) -> None:
        first = scrubber.evaluate(hypothesis)
        #: the prepared :class:`~mechwidgets.analysis.scrubbing.Scrubber` (clean run cached)
        self.scrubber = scrubber
        #: the ScrubResult of every history step, in order (``results[step - 1]``)
        self.results: list[ScrubResult] = []
        self._last = first
        MechWidget.__init__(
            self,
            dataset={
                "n_inputs": scrubber.n_inputs,
                "length": scrubber.length,
                "positions": scrubber.positions,
                "metric": scrubber.metric_name,
                "n_seeds": scrubber.n_seeds,
                "n_references": len(scrubber.refs),
            },
            **kwargs,
        )
        self._show(first, "initial hypothesis", new_step=True)

    @property
    def last_result(self) -> ScrubResult:
        """The :class:`~mechwidgets.analysis.scrubbing.ScrubResult` on screen."""
        return self._last

    @property
    def hypothesis(self) -> HypothesisNode:
        """The hypothesis on screen (a copy; change it through set_kept / set_feature / update)."""
        return self._last.hypothesis

    # ------------------------------------------------------------------ traits
    def _show(self, result: ScrubResult, label: str, *, new_step: bool, step: int = 0) -> int:
        """Put ``result`` on screen; as a new history step, or as the earlier ``step``."""
        tree = tree_rows(result.hypothesis, lambda spec: self.scrubber.feature(spec).name)
        if new_step:
            self.results.append(result)
            step = len(self.results)
            nodes = {r["path"]: {"kept": r["kept"], "feature": r["feature"]} for r in tree}
            self.history = [*self.history, {"step": step, "label": label, **_numbers(result), "nodes": nodes}]
        self._last = result
        same = [r["path"] for r in tree] == [r["path"] for r in self.tree]
        collapsed = list(self.collapsed) if same else initial_collapsed(tree)  # a new tree folds afresh
        with self.hold_sync():
            self.features = [{"name": f.name, "description": f.description}
                             for f in self.scrubber.feature_table.values()]
            self.tree = tree
            self.collapsed = collapsed
            self.layout = tree_layout(tree, collapsed)
            self.result = {**_numbers(result), "per_seed": result.per_seed, "metric": result.metric,
                           "n_references": result.n_references, "seconds": result.seconds, "step": step}
        return step

    # ------------------------------------------------------------------ requests
    @page_request(
        nodes=MapOf(Str(max_len=1000), _NODE_STATE, max_len=1000, optional=True, nullable=True),
        label=Str(max_len=1000, optional=True, nullable=True),
    )  # ``hypothesis`` (a HypothesisNode) is for Python only
    def _req_evaluate(
        self,
        nodes: Mapping[str, Any] | None = None,
        label: str | None = None,
        hypothesis: HypothesisNode | None = None,
    ) -> Generator[dict[str, Any], None, dict[str, Any]]:
        """Re-scrub with some nodes changed (or, from Python, a whole new ``hypothesis``)."""
        if hypothesis is not None:
            auto = "new hypothesis"
            self.scrubber.check(hypothesis)
        else:
            hypothesis, changes = self.scrubber.with_states(self.hypothesis, nodes or {})
            auto = _describe(changes)
        return self._evaluate_steps(hypothesis, str(label) if label else auto)

    def _evaluate_steps(self, hypothesis: HypothesisNode, label: str) -> Generator[dict[str, Any], None, dict[str, Any]]:
        result = yield from self.scrubber.evaluate_steps(hypothesis)
        step = self._show(result, label, new_step=True)
        return {"step": step, "fraction": _finite(result.fraction)}

    @page_request(step=Int(1, lambda w: len(w.results)))
    def _req_restore(self, step: int) -> Any:
        step = as_int(step, "history step", lo=1, hi=len(self.results), error=HypothesisError)
        self._invalidate_jobs(f"history step {step} was restored")  # a running evaluation would overwrite it
        if not self.scrubber.is_current(self.results[step - 1]):
            return self._reevaluate(step)  # that step's numbers are an earlier model's
        self._show(self.results[step - 1], "", new_step=False, step=step)
        return {"step": step}

    def _reevaluate(self, step: int) -> Generator[dict[str, Any], None, dict[str, Any]]:
        """Scrub history step ``step``'s hypothesis again on the model as it is now, and show
        it (in place of that step's earlier numbers)."""
        result = yield from self.scrubber.evaluate_steps(self.results[step - 1].hypothesis)
        self.results[step - 1] = result
        history = [dict(h) for h in self.history]
        history[step - 1].update(_numbers(result))
        self.history = history
        self._show(result, "", new_step=False, step=step)
        return {"step": step}

    @page_request(path=Str(max_len=1000), folded=Bool())
    def _req_fold(self, path: str, folded: bool) -> dict[str, Any]:
        """Fold (hide) or unfold the inputs of the node at ``path``."""
        self.hypothesis.find(path)  # an unknown path is an error that names the nodes
        collapsed = [p for p in self.collapsed if p != path] + ([path] if folded else [])
        with self.hold_sync():
            self.collapsed = collapsed
            self.layout = tree_layout(self.tree, collapsed)
        return {}

    # ------------------------------------------------------------------ Python API
    def evaluate(self, hypothesis: HypothesisNode | None = None, *, label: str | None = None) -> ScrubResult:
        """Scrub ``hypothesis`` (default: the one on screen, again) as a new history step."""
        self._call("evaluate", hypothesis=hypothesis, label=label)
        return self._last

    def update(self, nodes: Mapping[str, Mapping[str, Any]], *, label: str | None = None) -> ScrubResult:
        """Change several nodes at once (``{path: {"kept": bool, "feature": name}}``) and re-run."""
        self._call("evaluate", nodes=dict(nodes), label=label)
        return self._last

    def set_kept(self, path: str, kept: bool = True) -> ScrubResult:
        """Switch the node at ``path`` (e.g. ``"output/L1H2/k/L0H2"``) to kept or resampled; re-run."""
        return self.update({path: {"kept": kept}})

    def set_feature(self, path: str, feature: Any) -> ScrubResult:
        """Give the node at ``path`` another feature (a name on offer, or a function); re-run."""
        return self.update({path: {"feature": feature}})

    def restore(self, step: int) -> ScrubResult:
        """Show history step ``step`` (1-based) again; later changes start from its hypothesis."""
        self._call("restore", step=step)
        return self._last

    def fold(self, path: str, folded: bool = True) -> None:
        """Fold (or unfold) the inputs of the node at ``path`` in the drawing."""
        self._call("fold", path=path, folded=folded)

    # ------------------------------------------------------------------ picture
    def _static_svg(self) -> str | None:
        return scrubbing_svg(self.tree, self.layout, self.result, self.history)


def _numbers(result: ScrubResult) -> dict[str, Any]:
    """The numbers of a result that the history and the result traits both show."""
    return {"fraction": _finite(result.fraction), "fraction_std": _finite(result.fraction_std),
            "scrubbed": result.scrubbed, "random": result.random, "clean": result.clean}


def _describe(changes: Sequence[tuple[str, str]]) -> str:
    """A history label: ``path: change`` each, or one line per change made to several nodes."""
    groups: dict[str, list[str]] = {}
    for path, what in changes:
        groups.setdefault(what, []).append(path)
    parts = []
    for what, paths in groups.items():
        if len(paths) <= 2:
            parts += [f"{p}: {what}" for p in paths]
        else:
            shown = ", ".join(p.removeprefix("output/") for p in paths[:2])
            parts.append(f"{len(paths)} nodes ({shown}, …): {what}")
    return "; ".join(parts) or "re-run"


def _finite(x: float) -> float | None:
    return float(x) if x == x and abs(x) != float("inf") else None


def show_scrubbing(model: Any, hypothesis: HypothesisNode, dataset: Any, **options: Any) -> ScrubbingWidget:
    """Causal-scrub ``hypothesis`` on ``dataset`` and show it as a tree you can refine:
    ``ScrubbingWidget(Scrubber(model, dataset, **options), hypothesis)``.

    Args:
        model: a TransformerLens ``HookedTransformer`` (3.x) or ``TransformerBridge`` (4.x).
        hypothesis: a :class:`~mechwidgets.analysis.scrubbing.HypothesisNode` tree rooted at
            ``HypothesisNode("output", ...)``.
        dataset: ``[n, pos]`` tokens, strings of one token length, or zoo task objects (e.g.
            ``zoo.tasks.induction_sequences(256, model="induction-2l")``).
        **options: the keyword options of :class:`~mechwidgets.analysis.scrubbing.Scrubber`,
            declared and documented there: ``positions`` (scored positions), ``metric``,
            ``features`` (extra features offered in each node's menu, ``{name: fn}``),
            ``n_seeds`` (default 5), ``seed``, ``min_agreeing`` (default 2), ``max_inputs``.

    Returns:
        The :class:`ScrubbingWidget`. Click a node to switch it between kept and resampled or to
        give it another feature; each change re-runs and adds a row to the history. From Python:
        ``w.set_kept("output/L1H2/k", False)``, ``w.set_feature(path, "token")``,
        ``w.last_result`` (a :class:`~mechwidgets.analysis.scrubbing.ScrubResult`).
    """
    return ScrubbingWidget(Scrubber(model, dataset, **options), hypothesis)


__all__ = ["ScrubbingWidget", "scrubbing_svg", "show_scrubbing", "tree_layout"]
