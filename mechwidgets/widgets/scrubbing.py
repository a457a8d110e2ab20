"""The causal-scrubbing widget: a hypothesis tree, the loss it recovers, and its refinements.

Python owns the model, the dataset and the cached clean run
(:class:`~mechwidgets.analysis.scrubbing.Scrubber`); the frontend (``js/scrubbing.ts``) draws the
hypothesis as a tree, the fraction of the loss recovered as a bar with its spread over seeds, and
the history of refinements as a table and a bar chart (as the causal-scrubbing write-ups show
successive hypotheses). Requests:

- ``evaluate {nodes: {path: {kept, feature}}, label}`` → a long job (progress per seed, cancel)
  that re-scrubs the hypothesis with those node states and writes ``tree``, ``result`` and a new
  ``history`` entry;
- ``restore {step}`` → the hypothesis and result of an earlier history step, without re-running
  unless the model changed since that step (then it is scrubbed again, as a job); a running
  evaluation is cancelled (it would overwrite them).
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Mapping, Sequence
from html import escape
from typing import Any

import torch
import traitlets

from .._args import Bool, Int, MapOf, Record, Str, as_int
from .._fingerprint import Fingerprint, model_fingerprint
from .._tensor import encode_array
from ..analysis.scrubbing import Node, Scrubber, ScrubResult
from ..errors import HypothesisError
from ._base import MechWidget
from ._requests import page_request
from ._svg import _label

#: Tree layout (pixels), shared by the frontend and the static SVG.
NODE_W, NODE_H, GAP_X, LEVEL_H, MARGIN = 96, 36, 8, 58, 10


def tree_layout(tree: Sequence[Mapping[str, Any]]) -> tuple[list[dict[str, float]], dict[str, float]]:
    """Positions (box centres) of the nodes of ``tree`` (the ``tree`` trait: depth-first rows
    with ``depth`` and ``parent`` indices): leaves side by side in depth-first order, each parent
    centred over its children, one level per depth. ``js/scrubbing.ts:layout`` is its twin."""
    children: list[list[int]] = [[] for _ in tree]
    for i, row in enumerate(tree):
        if row["parent"] >= 0:
            children[int(row["parent"])].append(i)
    xs = [0.0] * len(tree)
    next_leaf = [0]

    def place(i: int) -> None:
        if not children[i]:
            xs[i] = MARGIN + NODE_W / 2 + next_leaf[0] * (NODE_W + GAP_X)
            next_leaf[0] += 1
            return
        for c in children[i]:
            place(c)
        xs[i] = (xs[children[i][0]] + xs[children[i][-1]]) / 2

    if tree:
        place(0)
    depth = max((int(r["depth"]) for r in tree), default=0)
    pos = [{"x": xs[i], "y": MARGIN + NODE_H / 2 + int(r["depth"]) * LEVEL_H} for i, r in enumerate(tree)]
    size = {
        "width": float(2 * MARGIN + max(1, next_leaf[0]) * (NODE_W + GAP_X) - GAP_X),
        "height": float(2 * MARGIN + depth * LEVEL_H + NODE_H),
    }
    return pos, size


#: The request arguments the page may send (checked before any handler runs): node paths and
#: feature names are looked up in the hypothesis and the scrubber by the handler.
_NODE_STATE = Record({"kept": Bool(optional=True, nullable=True),
                      "feature": Str(max_len=200, optional=True, nullable=True)})


class ScrubbingWidget(MechWidget):
    """Causal scrubbing of a hypothesis, with live refinement and a history.

    Build it with :func:`mechwidgets.show_scrubbing`. Traits (all synced):

    - ``tree``: the hypothesis, depth first: ``{path, component, feature, kept, active, depth,
      parent}`` per node (``active``: kept, and every ancestor kept)
    - ``features``: ``{name, description}`` of the features a node can be given
    - ``result``: the last evaluation: ``clean``, ``random``, ``scrubbed``, ``fraction``,
      ``fraction_std``, ``per_seed`` (``[3, n_seeds]`` float32: random, scrubbed, fraction),
      ``metric``, ``n_references``, ``seconds``, ``step``
    - ``history``: one entry per evaluation: ``step``, ``label`` (what changed), ``fraction``,
      ``fraction_std``, ``scrubbed``, ``random``, ``clean`` and the node states ``nodes``
    - ``dataset``: ``n_inputs``, ``length``, ``positions``, ``metric``, ``n_seeds``
    - ``live``: False in a static export (no kernel: controls are disabled)
    """

    _bundle = "scrubbing.js"

    tree: traitlets.List[dict[str, Any]] = traitlets.List([]).tag(sync=True)
    features: traitlets.List[dict[str, Any]] = traitlets.List([]).tag(sync=True)
    result = traitlets.Dict({}).tag(sync=True)
    history: traitlets.List[dict[str, Any]] = traitlets.List([]).tag(sync=True)
    dataset = traitlets.Dict({}).tag(sync=True)
    live = traitlets.Bool(True).tag(sync=True)

    def __init__(
        self,
        model: Any,
        hypothesis: Node,
        dataset: Any,
        *,
        positions: Sequence[int] | None = None,
        metric: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
        features: Mapping[str, Any] | Sequence[Any] | None = None,
        n_seeds: int = 5,
        seed: int = 0,
        min_agreeing: int = 2,
        max_inputs: int = 4096,
        **kwargs: Any,
    ) -> None:
        scrubber = Scrubber(
            model, dataset, positions=positions, metric=metric, features=features,
            n_seeds=n_seeds, seed=seed, min_agreeing=min_agreeing, max_inputs=max_inputs,
        )
        first = scrubber.evaluate(hypothesis)  # errors are raised here, before anything is shown
        self._scrubber = scrubber
        #: the hypothesis on screen (a copy; edit it through set_kept / set_feature / update)
        self.hypothesis: Node = first.hypothesis
        #: the ScrubResult of every history step, in order (``results[step - 1]``)
        self.results: list[ScrubResult] = []
        self._fingerprints: list[Fingerprint] = []  # the model each result was computed on
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
    def scrubber(self) -> Scrubber:
        """The prepared :class:`~mechwidgets.analysis.scrubbing.Scrubber` (clean run cached)."""
        return self._scrubber

    # ------------------------------------------------------------------ traits
    def _tree_state(self, hypothesis: Node) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = []
        index: dict[str, int] = {}
        for path, node in hypothesis.walk():
            parent_path = path.rsplit("/", 1)[0] if "/" in path else ""
            parent = index.get(parent_path, -1)
            index[path] = len(rows)
            rows.append({
                "path": path,
                "component": node.component,
                "feature": self._scrubber.feature(node.feature).name,
                "kept": bool(node.kept),
                "active": bool(node.kept) and (parent < 0 or rows[parent]["active"]),
                "depth": path.count("/"),
                "parent": parent,
            })
        return rows

    def _result_state(self, result: ScrubResult, step: int) -> dict[str, Any]:
        per_seed = torch.stack([result.random_per_seed, result.scrubbed_per_seed,
                                result.fraction_per_seed])
        return {
            "clean": result.clean,
            "random": result.random,
            "scrubbed": result.scrubbed,
            "fraction": _finite(result.fraction),
            "fraction_std": _finite(result.fraction_std),
            "per_seed": encode_array(per_seed),
            "metric": result.metric,
            "n_references": result.n_references,
            "seconds": result.seconds,
            "step": step,
        }

    def _show(self, result: ScrubResult, label: str, *, new_step: bool, step: int = 0) -> int:
        """Put ``result`` on screen; as a new history step, or as the earlier ``step``."""
        tree = self._tree_state(result.hypothesis)
        if new_step:
            self.results.append(result)
            self._fingerprints.append(self._scrubber._stamp.fingerprint)
            step = len(self.results)
            entry = {
                "step": step,
                "label": label,
                "fraction": _finite(result.fraction),
                "fraction_std": _finite(result.fraction_std),
                "scrubbed": result.scrubbed,
                "random": result.random,
                "clean": result.clean,
                "nodes": {r["path"]: {"kept": r["kept"], "feature": r["feature"]} for r in tree},
            }
            self.history = [*self.history, entry]
        self._last = result
        self.hypothesis = result.hypothesis
        self.features = [
            {"name": f.name, "description": f.description}
            for f in self._scrubber.feature_table.values()
        ]
        self.tree = tree
        self.result = self._result_state(result, step)
        return step

    # ------------------------------------------------------------------ changes
    def _apply_states(self, nodes: Mapping[str, Any]) -> tuple[Node, str]:
        """A copy of the hypothesis with ``{path: {kept?, feature?}}`` applied, and a label."""
        if not isinstance(nodes, Mapping):
            raise HypothesisError(f"nodes must map node paths to {{kept, feature}}; got {nodes!r}.")
        tree = self.hypothesis.copy()
        changes = []
        for path, state in nodes.items():
            if not isinstance(state, Mapping):
                raise HypothesisError(f"node {path!r}: expected {{kept, feature}}; got {state!r}.")
            node = tree.find(str(path))
            kept = state.get("kept")
            if kept is not None and bool(kept) != node.kept:
                if node is tree:
                    raise HypothesisError(
                        "the root 'output' is what is being explained and is always kept; switch "
                        "its children to resampled instead."
                    )
                node.kept = bool(kept)
                changes.append((str(path), "resampled → kept" if node.kept else "kept → resampled"))
            feature = state.get("feature")
            if feature is not None:
                old = self._scrubber.feature(node.feature).name
                new = self._scrubber.feature(feature, where=f"node {path!r}: ").name
                if new != old:
                    node.feature = feature
                    changes.append((str(path), f"feature {old} → {new}"))
        return tree, _describe(changes)

    # ------------------------------------------------------------------ requests
    @page_request(
        nodes=MapOf(Str(max_len=1000), _NODE_STATE, max_len=1000, optional=True, nullable=True),
        label=Str(max_len=1000, optional=True, nullable=True),
    )  # ``hypothesis`` (a Node) is for Python only
    def _req_evaluate(
        self,
        nodes: Mapping[str, Any] | None = None,
        label: str | None = None,
        hypothesis: Node | None = None,
    ) -> Generator[dict[str, Any], None, dict[str, Any]]:
        """Re-scrub with some nodes changed (or, from Python, a whole new ``hypothesis``)."""
        if hypothesis is not None:
            if not isinstance(hypothesis, Node):
                raise HypothesisError("hypothesis must be a Node tree rooted at Node('output', ...).")
            auto = "new hypothesis"
            self._scrubber.check(hypothesis)
        else:
            hypothesis, auto = self._apply_states(nodes or {})
        text = str(label) if label else auto
        return self._evaluate_steps(hypothesis, text)

    def _evaluate_steps(self, hypothesis: Node, label: str) -> Generator[dict[str, Any], None, dict[str, Any]]:
        result = yield from self._scrubber.evaluate_steps(hypothesis)
        step = self._show(result, label, new_step=True)
        return {"step": step, "fraction": _finite(result.fraction)}

    @page_request(step=Int(1, lambda w: len(w.results)))
    def _req_restore(self, step: int) -> Any:
        step = as_int(step, "history step", lo=1, hi=len(self.results), error=HypothesisError)
        self._invalidate_jobs(f"history step {step} was restored")  # a running evaluation would overwrite it
        if self._fingerprints[step - 1] != model_fingerprint(self._scrubber.handle.model):
            return self._reevaluate(step)  # that step's numbers are an earlier model's
        self._show(self.results[step - 1], "", new_step=False, step=step)
        return {"step": step}

    def _reevaluate(self, step: int) -> Generator[dict[str, Any], None, dict[str, Any]]:
        """Scrub history step ``step``'s hypothesis again on the model as it is now, and show
        it (in place of that step's earlier numbers)."""
        result = yield from self._scrubber.evaluate_steps(self.results[step - 1].hypothesis)
        self.results[step - 1] = result
        self._fingerprints[step - 1] = self._scrubber._stamp.fingerprint
        history = [dict(h) for h in self.history]
        history[step - 1].update(fraction=_finite(result.fraction), fraction_std=_finite(result.fraction_std),
                                 scrubbed=result.scrubbed, random=result.random, clean=result.clean)
        self.history = history
        self._show(result, "", new_step=False, step=step)
        return {"step": step}

    # ------------------------------------------------------------------ Python API
    def evaluate(self, hypothesis: Node | None = None, *, label: str | None = None) -> ScrubResult:
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

    # ------------------------------------------------------------------ picture
    def _static_svg(self) -> str | None:
        return scrubbing_svg(self.tree, self.result, self.history)


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


def _pct(x: Any) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def scrubbing_svg(tree: Sequence[Mapping[str, Any]], result: Mapping[str, Any],
                  history: Sequence[Mapping[str, Any]]) -> str:
    """The hypothesis tree, the recovered-loss bar and the history chart as one SVG document."""
    pos, size = tree_layout(tree)
    bar_w = 320
    width = int(max(size["width"], bar_w + 200, 60 + 34 * len(history)) + 2 * MARGIN)
    top = 30
    tree_h = size["height"]
    bar_y = top + tree_h + 20
    hist_y = bar_y + 70
    hist_h = 110 if history else 0
    height = int(hist_y + hist_h + 30)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="11">',
        f'<rect width="{width}" height="{height}" fill="white"/>',
        '<text x="8" y="18" font-size="13" font-weight="bold">Causal scrubbing: hypothesis</text>',
    ]
    for i, row in enumerate(tree):
        if row["parent"] >= 0:
            a, b = pos[int(row["parent"])], pos[i]
            parts.append(
                f'<line x1="{a["x"]:.1f}" y1="{top + a["y"] + NODE_H / 2:.1f}" x2="{b["x"]:.1f}" '
                f'y2="{top + b["y"] - NODE_H / 2:.1f}" stroke="#8c959f"/>'
            )
    for i, row in enumerate(tree):
        x, y = pos[i]["x"] - NODE_W / 2, top + pos[i]["y"] - NODE_H / 2
        kept, active = row["kept"], row["active"]
        fill = "#dafbe1" if active else "#f6f8fa"
        stroke = "#1a7f37" if active else "#8c959f"
        dash = "" if kept else ' stroke-dasharray="4 3"'
        opacity = "1" if active or not kept else "0.5"
        state = "kept" if kept else "resampled"
        parts.append(
            f'<g opacity="{opacity}"><rect x="{x:.1f}" y="{y:.1f}" width="{NODE_W}" height="{NODE_H}" '
            f'rx="5" fill="{fill}" stroke="{stroke}"{dash}/>'
            f'<text x="{x + NODE_W / 2:.1f}" y="{y + 14:.1f}" text-anchor="middle" font-weight="bold">'
            f'{_label(str(row["component"]), 14)}</text>'
            f'<text x="{x + NODE_W / 2:.1f}" y="{y + 28:.1f}" text-anchor="middle" font-size="9" '
            f'fill="#57606a">{_label(str(row["feature"]) + " · " + state, 22)}</text></g>'
        )
    # the recovered-loss bar, with its spread over seeds
    frac, std = result.get("fraction"), result.get("fraction_std") or 0.0
    bx = MARGIN + 8
    parts.append(f'<text x="{bx}" y="{bar_y - 4}" font-weight="bold">Loss recovered: {_pct(frac)}'
                 f' ± {_pct(std)} (scrubbed {result.get("scrubbed", 0):.3f}, clean '
                 f'{result.get("clean", 0):.3f}, random {result.get("random", 0):.3f})</text>')
    parts.append(f'<rect x="{bx}" y="{bar_y + 4}" width="{bar_w}" height="16" fill="#eaeef2"/>')
    if frac is not None:
        f = max(0.0, min(1.0, frac))
        parts.append(f'<rect x="{bx}" y="{bar_y + 4}" width="{bar_w * f:.1f}" height="16" fill="#0969da"/>')
        lo, hi = max(0.0, min(1.0, frac - std)), max(0.0, min(1.0, frac + std))
        parts.append(f'<line x1="{bx + bar_w * lo:.1f}" y1="{bar_y + 12}" x2="{bx + bar_w * hi:.1f}" '
                     f'y2="{bar_y + 12}" stroke="#1f2328" stroke-width="2"/>')
    for t in (0.0, 0.5, 1.0):
        parts.append(f'<text x="{bx + bar_w * t:.1f}" y="{bar_y + 34}" text-anchor="middle" '
                     f'font-size="9" fill="#57606a">{int(t * 100)}%</text>')
    # the history as bars
    if history:
        parts.append(f'<text x="{bx}" y="{hist_y}" font-weight="bold">History of refinements</text>')
        base = hist_y + hist_h
        scale = hist_h - 30
        for k, entry in enumerate(history):
            fr = entry.get("fraction")
            x = bx + 10 + 34 * k
            hgt = scale * max(0.0, min(1.0, fr if fr is not None else 0.0))
            parts.append(f'<rect x="{x}" y="{base - hgt:.1f}" width="24" height="{hgt:.1f}" fill="#0969da">'
                         f'<title>{escape(str(entry.get("label", "")))}</title></rect>')
            parts.append(f'<text x="{x + 12}" y="{base + 12}" text-anchor="middle" font-size="9">'
                         f'{int(entry.get("step", k + 1))}</text>')
            parts.append(f'<text x="{x + 12}" y="{base - hgt - 3:.1f}" text-anchor="middle" '
                         f'font-size="9">{_pct(fr)}</text>')
        parts.append(f'<line x1="{bx}" y1="{base}" x2="{bx + 20 + 34 * len(history)}" y2="{base}" stroke="#8c959f"/>')
    parts.append("</svg>")
    return "".join(parts)


def show_scrubbing(
    model: Any,
    hypothesis: Node,
    dataset: Any,
    *,
    positions: Sequence[int] | None = None,
    metric: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    features: Mapping[str, Any] | Sequence[Any] | None = None,
    n_seeds: int = 5,
    seed: int = 0,
    min_agreeing: int = 2,
    max_inputs: int = 4096,
) -> ScrubbingWidget:
    """Causal-scrub ``hypothesis`` on ``dataset`` and show it as a tree you can refine.

    Args:
        model: a TransformerLens ``HookedTransformer`` (3.x) or ``TransformerBridge`` (4.x).
        hypothesis: a :class:`~mechwidgets.analysis.scrubbing.Node` tree rooted at
            ``Node("output", ...)``.
        dataset: ``[n, pos]`` tokens, strings of one token length, or zoo task objects (e.g.
            ``zoo.tasks.induction_sequences(256, model="induction-2l")``).
        positions: positions whose next-token prediction is scored (default: the repeated half
            of zoo induction sequences, else all but the last).
        metric: ``None`` (next-token loss) or ``metric(logits [m, d_vocab], targets [m]) -> [m]``.
        features: extra features offered in each node's menu (``{name: fn}``), beside the
            built-in ones (:data:`~mechwidgets.analysis.scrubbing.FEATURES`).
        n_seeds: seeds per evaluation, for the spread (default 5). seed: the first seed.
        min_agreeing: fewest agreeing inputs a resampled prefix may have (default 2).
        max_inputs: refuse larger datasets (default 4096).

    Returns:
        The :class:`ScrubbingWidget`. Click a node to switch it between kept and resampled or to
        give it another feature; each change re-runs and adds a row to the history. From Python:
        ``w.set_kept("output/L1H2/k", False)``, ``w.set_feature(path, "token")``,
        ``w.last_result`` (a :class:`~mechwidgets.analysis.scrubbing.ScrubResult`).
    """
    return ScrubbingWidget(
        model, hypothesis, dataset, positions=positions, metric=metric, features=features,
        n_seeds=n_seeds, seed=seed, min_agreeing=min_agreeing, max_inputs=max_inputs,
    )


__all__ = ["ScrubbingWidget", "scrubbing_svg", "show_scrubbing", "tree_layout"]
