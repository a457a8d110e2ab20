"""The circuit widget: a view over a prepared :class:`~mechwidgets.analysis.circuits.EdgePatcher`,
which holds the model and the cached runs and checks every argument. What is drawn (node
positions, edge curves, tones, widths) comes from :mod:`mechwidgets.analysis.circuits.layout`: the
same numbers for the page (``js/circuit.ts``, which filters edges by the threshold on its own)
and for the static SVG. Requests: ``faithfulness {threshold}`` (the slider stops: one exact
patched forward), ``select_node {node}`` (its exact effects and strongest edges), ``acdc
{threshold, signed}`` (a long job with progress and cancel that replaces the scores by ACDC's),
``eap {ig}`` (back to EAP's or EAP-IG's scores; a running ACDC is cancelled).
"""

from __future__ import annotations

import math
from html import escape
from typing import Any

import traitlets

from .._args import Bool, Float, Str
from .._fingerprint import Stamp
from .._steps import run_to_end
from ..analysis.circuits import IG_STEPS, CircuitResult, EdgePatcher, Faithfulness, NodeEffect
from ..analysis.circuits.inputs import Answers, MetricArg, Prompts
from ..analysis.circuits.layout import NODE_H, NODE_W, edge_drawing, graph_layout
from ._base import MechWidget
from ._requests import page_request
from ._svg import _label, diverging_rgb
from ._traits import Arrays

#: Default share of the edges the threshold keeps when none is given (EAP).
DEFAULT_EDGE_FRACTION = 0.1
#: How many incoming / outgoing edges the node detail lists.
DETAIL_EDGES = 8


class CircuitWidget(MechWidget):
    """A view over an :class:`EdgePatcher`: the edge graph, a threshold slider, exact faithfulness.

    Build it with :func:`show_circuit`, or as ``CircuitWidget(patcher, result)`` (``result``: the
    scores shown first, default ``patcher.eap()``; ``threshold``: default ACDC's own or the one
    keeping the strongest 10% of edges; ``max_edges``: how many edges are sent). Synced traits:
    ``method``, ``metric``, ``baseline`` (:meth:`EdgePatcher.baseline`); ``nodes`` and ``size``
    (:func:`~mechwidgets.analysis.circuits.layout.graph_layout`); ``edges``, ``n_edges_total`` and
    ``unsent_score_sum`` (for the page's linear estimate); ``threshold`` and its exact
    ``faithfulness``; ``acdc_threshold`` and ``acdc_signed`` (of the last ACDC run, or suggested);
    ``selected`` (a node) and its ``node_detail``.
    """

    _bundle = "circuit.js"

    method = traitlets.Unicode("eap").tag(sync=True)
    metric = traitlets.Unicode("").tag(sync=True)
    baseline = traitlets.Dict({}).tag(sync=True)
    nodes = traitlets.List(traitlets.Dict()).tag(sync=True)
    size = traitlets.Dict({}).tag(sync=True)
    # the max_edges strongest edges, strongest first (analysis.circuits.layout.edge_drawing):
    # {src, dst: [edge] int32 indices into nodes; port: [edge] uint8 (0..3 = q, k, v, the single
    # input); score, tone (-1..1, the colour), width (pixels): [edge] float32; path: [edge] SVG curves}
    edges = Arrays().tag(sync=True)
    n_edges_total = traitlets.Int(0).tag(sync=True)
    unsent_score_sum = traitlets.Float(0.0).tag(sync=True)
    threshold = traitlets.Float(0.0).tag(sync=True)
    faithfulness = traitlets.Dict({}).tag(sync=True)
    acdc_threshold = traitlets.Float(0.0).tag(sync=True)
    acdc_signed = traitlets.Bool(False).tag(sync=True)
    selected = traitlets.Unicode("").tag(sync=True)
    node_detail = traitlets.Dict({}).tag(sync=True)

    def __init__(self, patcher: EdgePatcher, result: CircuitResult | None = None, *, threshold: float | None = None,
                 max_edges: int = 3000, **kwargs: Any) -> None:
        #: the :class:`EdgePatcher` (model, prompts, cached runs); ``result``: the scores on screen
        self.patcher = patcher
        self.result: CircuitResult
        #: the model as the numbers on screen saw it. The patcher's own stamp is not enough: it is
        #: renewed by whatever refreshes the patcher, also a job that starts after the model
        #: changed (ACDC refreshes it on its first step), leaving the traits of the old model
        self._stamp: Stamp = patcher._stamp.fork()
        self._max_edges = max_edges
        self.last_node_effect: NodeEffect | None = None
        self.last_faithfulness: Faithfulness | None = None
        nodes, size = graph_layout(patcher.graph)
        super().__init__(metric=patcher.metric_name, baseline=patcher.baseline(), nodes=nodes, size=size,
                         acdc_threshold=patcher.suggested_acdc_threshold(), **kwargs)
        self._show(patcher.eap() if result is None else result, threshold)

    def _before_request(self, kind: str) -> None:
        """The model changed since the numbers on screen: redo the patcher's runs and (unless this
        request runs ACDC or EAP itself) the scores shown, EAP's or ACDC's at its threshold."""
        change = self._stamp.stale()
        if change is None:
            return
        method, seconds = self.result.method, self.patcher.seconds
        rescore = kind not in ("acdc", "eap")
        with self._recomputing(change, seconds["setup"] + (seconds["acdc"] if rescore and method == "acdc" else 0.0)):
            self.patcher.refresh()
            self.baseline = self.patcher.baseline()
            self._stamp.renew()
            if rescore:
                steps = self.patcher.score_steps(method, threshold=self.acdc_threshold, signed=self.acdc_signed)
                self._show(run_to_end(steps), self.threshold)

    def circuit_edges(self) -> list[str]:
        """Names of the edges in the circuit at the current threshold, strongest first."""
        kept = self.result.circuit(self.threshold)
        return [self.result.graph.edge_name(int(e)) for e in self.result.order() if bool(kept[e])]

    def _show(self, result: CircuitResult, threshold: float | None) -> None:
        """Put a result's scores on screen and measure the circuit at ``threshold`` (default:
        ACDC's own, or the one keeping the strongest :data:`DEFAULT_EDGE_FRACTION` of edges)."""
        self.edges, self.unsent_score_sum = edge_drawing(result, self.nodes, self._max_edges)
        self.result = result
        self.n_edges_total = result.n_edges
        self.method = result.method
        if result.threshold is not None:
            self.acdc_threshold = result.threshold
            self.acdc_signed = result.signed
        threshold = result.threshold if threshold is None else threshold
        threshold = result.threshold_for(max(1, math.ceil(DEFAULT_EDGE_FRACTION * result.n_edges))) \
            if threshold is None else threshold
        self._measure(threshold)

    def _measure(self, threshold: float) -> None:
        faith = self.patcher.faithfulness(self.result.circuit(threshold), threshold=threshold)
        self.last_faithfulness = faith
        self.threshold = threshold
        self.faithfulness = {key: getattr(faith, key) for key in ("threshold", "metric", "normalized", "n_edges",
                                                                   "total_edges")}
        if self.selected:
            self._select(self.selected)

    def _select(self, node: str) -> None:
        effect = self.last_node_effect = self.patcher.node_effect(node)
        self.selected = effect.node

        def value(v: float) -> dict[str, float]:
            return {"metric": v, "normalized": self.patcher.normalize(v)}

        self.node_detail = {"node": effect.node, "kind": effect.kind, "inputs": {p: value(v) for p, v in effect.inputs.items()},
                            "output": None if effect.output is None else value(effect.output),
                            **self.result.node_edges(node, self.threshold, DETAIL_EDGES)}

    # ------------------------------------------------------------ requests
    @page_request(threshold=Float(0))
    def _req_faithfulness(self, threshold: float) -> dict[str, Any]:
        self._measure(threshold)
        return dict(self.faithfulness)

    @page_request(node=Str(max_len=100))  # looked up in the graph by the patcher
    def _req_select_node(self, node: str) -> dict[str, Any]:
        self._select(node)
        return {"node": self.selected}

    @page_request(threshold=Float(0), signed=Bool(optional=True))
    def _req_acdc(self, threshold: float, signed: bool = False) -> Any:
        result = yield from self.patcher.acdc_steps(threshold, signed=signed)
        self._show(result, result.threshold)
        # ACDC checked the model in full before it returned: its runs (refreshed when it started,
        # if the model had changed since the click) are of the model as it is now
        self.baseline = self.patcher.baseline()
        self._stamp.renew()
        return {"method": "acdc", "threshold": result.threshold, "signed": signed, "kept": self.faithfulness["n_edges"]}

    @page_request(ig=Bool(optional=True))
    def _req_eap(self, ig: bool = False) -> dict[str, Any]:
        result = self.patcher.eap(ig_steps=IG_STEPS if ig else None)  # may raise: nothing changed yet
        self._invalidate_jobs(f"{result.method.upper()} was asked for")  # a running ACDC would overwrite it
        self._show(result, None)
        return {"method": result.method}

    # ------------------------------------------------------------ Python API
    def set_threshold(self, threshold: float) -> Faithfulness:
        """Keep the edges with ``|score| >= threshold`` and measure the circuit's faithfulness."""
        self._call("faithfulness", threshold=threshold)
        assert self.last_faithfulness is not None
        return self.last_faithfulness

    def keep_top(self, n_edges: int) -> Faithfulness:
        """Set the threshold so that the ``n_edges`` strongest edges form the circuit."""
        return self.set_threshold(self.result.threshold_for(n_edges))

    def select_node(self, node: str) -> NodeEffect:
        """Show a node's patching detail (as a click on it does); its :class:`NodeEffect`."""
        self._call("select_node", node=node)
        assert self.last_node_effect is not None
        return self.last_node_effect

    def run_acdc(self, threshold: float, *, signed: bool = False) -> CircuitResult:
        """Prune with ACDC at ``threshold`` (one forward pass per edge) and show its circuit;
        ``signed``: edges that work against the behaviour go too (see
        :meth:`~mechwidgets.analysis.circuits.EdgePatcher.acdc_steps`)."""
        self._call("acdc", threshold=threshold, signed=signed)
        return self.result

    def use_eap(self, *, ig: bool = False) -> CircuitResult:
        """Show the EAP scores again (with ``ig``: EAP-IG's, integrated gradients over
        :data:`~mechwidgets.analysis.circuits.IG_STEPS` steps from the corrupted input)."""
        self._call("eap", ig=ig)
        return self.result

    def _static_svg(self) -> str | None:
        return circuit_svg(self.result, self.nodes, self.size, self.edges, self.threshold, self.faithfulness)


def circuit_svg(result: CircuitResult, nodes: list[dict[str, Any]], size: dict[str, int], edges: dict[str, Any],
                threshold: float, faithfulness: dict[str, Any]) -> str:
    """A standalone SVG of the circuit as the widget draws it (its ``nodes``, ``size`` and
    ``edges`` traits): the edges with ``|score| >= threshold``, a legend and the faithfulness."""
    top = 54
    width, height = max(size["width"], 560), size["height"] + top + 40
    max_abs = float(result.scores.abs().max()) if result.scores.numel() else 0.0
    shown = [i for i, s in enumerate(edges["score"]) if abs(float(s)) >= threshold]
    used = {int(edges[k][i]) for i in shown for k in ("src", "dst")}
    if result.method == "acdc":
        method = f"ACDC ({'signed, ' if result.signed else ''}threshold {result.threshold:.3g})"
    else:
        method = "EAP-IG scores" if result.method == "eap-ig" else "EAP scores"
    title = f"Circuit — {method}: {len(shown)} of {result.n_edges} edges with |score| ≥ {threshold:.3g}"
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} '
             f'{height}" font-family="sans-serif" font-size="10"><rect width="{width}" height="{height}" fill="white"/>'
             f'<text x="8" y="16" font-size="13" font-weight="bold">{escape(title)}</text>']
    if faithfulness:
        line = (f"faithfulness {faithfulness['normalized']:.3f} ({result.metric} {faithfulness['metric']:.3f}; "
                f"clean {result.clean_metric:.3f}, corrupted {result.corrupted_metric:.3f})")
        parts.append(f'<text x="8" y="32">{escape(line)}</text>')
    parts.append(f'<g transform="translate(0,{top})">')
    for i in reversed(shown):  # strongest drawn last, on top
        name = f"{nodes[edges['src'][i]]['name']}->{nodes[edges['dst'][i]]['name']}"
        name += f".{'qkv'[edges['port'][i]]}" if edges["port"][i] < 3 else ""
        parts.append(f'<path d="{edges["path"][i]}" fill="none" stroke="{diverging_rgb(float(edges["tone"][i]))}" '
                     f'stroke-width="{float(edges["width"][i]):.2f}" stroke-opacity="0.85"><title>{escape(name)}: '
                     f'{float(edges["score"][i]):.4g}</title></path>')
    fills = {"embed": "#eaeef2", "logits": "#eaeef2", "mlp": "#fff8c5", "head": "#ddf4ff"}
    for i, node in enumerate(nodes):
        x, y = node["x"] - NODE_W / 2, node["y"] - NODE_H / 2
        label = f"MLP {node['layer']}" if node["kind"] == "mlp" else node["name"]
        ports = "".join(f'<circle cx="{x:.1f}" cy="{py:.1f}" r="2" fill="#57606a"/>' for py in node.get("ports", ()))
        parts.append(f'<g opacity="{1 if i in used else 0.35}"><rect x="{x:.1f}" y="{y:.1f}" width="{NODE_W}" '
                     f'height="{NODE_H}" rx="4" fill="{fills[node["kind"]]}" stroke="#57606a"/>{ports}<text '
                     f'x="{node["x"]:.1f}" y="{node["y"] + 3.5:.1f}" text-anchor="middle">{_label(label)}</text></g>')
    ly = height - 22  # legend: blue (corrupting lowers the metric) to red (raises it)
    parts += ["</g>", *(f'<rect x="{8 + k * 4}" y="{ly}" width="4" height="10" fill="{diverging_rgb(-1 + k / 20)}"/>'
                        for k in range(41))]
    parts.append(f'<text x="8" y="{ly + 21}">{-max_abs:.3g}</text><text x="172" y="{ly + 21}" text-anchor="end">'
                 f'{max_abs:.3g}</text><text x="184" y="{ly + 9}">edge score: blue = corrupting the edge lowers '
                 f'{escape(result.metric)}, red = raises it; width ∝ |score|</text></svg>')
    return "".join(parts)


def show_circuit(
    model: Any,
    clean: Prompts,
    corrupted: Prompts,
    *,
    metric: MetricArg = "logit_diff",
    method: str = "eap",
    answer: Answers = None,
    wrong_answer: Answers = None,
    threshold: float | None = None,
    signed: bool = False,
    max_edges: int = 3000,
    max_positions: int = 512,
) -> CircuitWidget:
    """Find the circuit behind a behaviour: score every edge of the model's graph and show it.

    The graph's nodes are attention heads (with separate q, k, v inputs), MLPs, the embeddings and
    the logits; an edge joins every node to every later node's input (:mod:`~mechwidgets.analysis.circuits`).

    Args:
        model: a TransformerLens 3.x ``HookedTransformer`` or 4.x ``TransformerBridge``.
        clean: the prompt(s) showing the behaviour (a string, a list, or token tensors).
        corrupted: one prompt per clean prompt, with as many tokens, that lacks it.
        metric: ``"logit_diff"`` (default: ``answer`` minus ``wrong_answer`` logit at the last
            token), ``"logprob"``, ``"prob"``, ``"kl"``, or a callable ``[batch, d_vocab] ->
            [batch]`` (:data:`~mechwidgets.analysis.metrics.MetricFn`), as :class:`EdgePatcher`.
        method: ``"eap"`` (edge attribution patching, ~3 forward passes; the default), ``"eap-ig"``
            (EAP with gradients integrated from the corrupted to the clean input, 5 more forward
            and backward passes: better where attention saturates) or ``"acdc"`` (exact pruning).
        answer / wrong_answer: single tokens (one per prompt, or one for all). Defaults: the
            clean and the corrupted run's top predictions.
        threshold: edges with ``|score| >= threshold`` form the circuit. EAP(-IG) default: the
            threshold keeping the strongest 10% of edges. ACDC: its pruning threshold (default
            2% of the clean-corrupted metric gap).
        signed: ACDC only: also remove the edges whose removal helps the behaviour (the rule
            of ACDC's own code; smaller circuits, faithfulness can exceed 1).
        max_edges: draw at most this many edges (the strongest; default 3000).
        max_positions: refuse longer prompts (default 512).

    Returns:
        The :class:`CircuitWidget`; from Python too: ``w.set_threshold(0.05)``, ``w.keep_top(40)``,
        ``w.select_node("a1.h3")``, ``w.run_acdc(0.02)``; read ``w.result`` (a
        :class:`~mechwidgets.analysis.circuits.CircuitResult`), ``w.last_faithfulness``, ``w.circuit_edges()``.
    """
    patcher = EdgePatcher(model, clean, corrupted, metric=metric, answer=answer, wrong_answer=wrong_answer,
                          max_positions=max_positions)
    result = run_to_end(patcher.score_steps(method, threshold=threshold, signed=signed))
    return CircuitWidget(patcher, result, threshold=threshold, max_edges=max_edges)


__all__ = ["CircuitWidget", "circuit_svg", "show_circuit"]
