"""The circuit widget: the edge graph of a model, scored by EAP or ACDC, with a threshold slider.

Python owns the model and the cached runs (:class:`~mechwidgets.analysis.circuits.EdgePatcher`);
the frontend (``js/circuit.ts``) draws the graph layer by layer and filters edges by the
threshold on its own, instantly. Requests:

- ``faithfulness {threshold}`` → the ``threshold`` and ``faithfulness`` traits (one exact patched
  forward pass; the frontend asks when the slider stops);
- ``select_node {node}`` → the ``selected`` and ``node_detail`` traits (the node's exact patching
  effects and its strongest edges);
- ``acdc {threshold}`` → a long job (progress, cancel) that replaces the scores by ACDC's;
- ``eap {}`` → back to the EAP scores (a running ACDC is cancelled: it would overwrite them).
"""

from __future__ import annotations

import math
import numbers
import time
from collections.abc import Callable
from html import escape
from typing import Any

import torch
import traitlets

from .._args import Bool, Float, Str, as_int
from .._fingerprint import Stamp
from .._steps import run_to_end
from .._tensor import encode_array
from ..analysis.circuits import (
    IG_STEPS,
    METHODS,
    Answers,
    CircuitError,
    CircuitGraph,
    CircuitResult,
    EdgePatcher,
    Faithfulness,
    NodeEffect,
    Prompts,
)
from ._base import MechWidget
from ._requests import page_request
from ._svg import _label, diverging_rgb

#: Default share of the edges the threshold keeps when none is given (EAP).
DEFAULT_EDGE_FRACTION = 0.1
#: How many incoming / outgoing edges the node detail lists.
DETAIL_EDGES = 8
#: Layout (pixels): column width, row height, node box size.
COL_W, ROW_H, NODE_W, NODE_H, MARGIN = 96, 46, 60, 30, 24
PORT_INDEX = {"q": 0, "k": 1, "v": 2, "in": 3}


def graph_layout(graph: CircuitGraph) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """Node positions (centres), layer by layer from left to right: ``embed``; per layer a
    column of heads, then its MLP; ``logits``. Shared by the frontend and the static SVG."""
    rows = max(1, graph.n_heads)
    height = 2 * MARGIN + rows * ROW_H
    mid = MARGIN + rows * ROW_H / 2
    per_layer = 2 if graph.has_mlp else 1
    nodes = []
    for node in graph.nodes:
        if node.kind == "embed":
            col, y = 0, mid
        elif node.kind == "head":
            col, y = 1 + node.layer * per_layer, MARGIN + (node.head or 0) * ROW_H + ROW_H / 2
        elif node.kind == "mlp":
            col, y = 2 + node.layer * per_layer, mid
        else:
            col, y = 1 + graph.n_layers * per_layer, mid
        nodes.append({"name": node.name, "kind": node.kind, "layer": node.layer, "head": node.head,
                      "x": MARGIN + col * COL_W + NODE_W / 2, "y": y})
    n_cols = 2 + graph.n_layers * per_layer
    size = {"width": int(2 * MARGIN + (n_cols - 1) * COL_W + NODE_W), "height": int(height),
            "node_w": NODE_W, "node_h": NODE_H}
    return nodes, size


def port_y(y: float, port: int) -> float:
    """Where an edge enters a node: q, k, v spread over a head's left side; 'in' at its middle."""
    return y + (port - 1) * 9 if port < 3 else y


def edge_path(x1: float, y1: float, x2: float, y2: float) -> str:
    dx = max(20.0, (x2 - x1) * 0.45)
    return f"M{x1:.1f},{y1:.1f} C{x1 + dx:.1f},{y1:.1f} {x2 - dx:.1f},{y2:.1f} {x2:.1f},{y2:.1f}"


def edge_width(score: float, max_abs: float) -> float:
    """Stroke width (pixels) of an edge, linear in ``|score|``; the same formula as
    js/circuit.ts:edgeWidth."""
    return 0.5 + 4.5 * min(1.0, abs(score) / max_abs) if max_abs > 0 else 0.5


#: The request arguments the page may send (checked before any handler runs).
_THRESHOLD = Float(0)


def _metric_state(patcher: EdgePatcher, value: float) -> dict[str, float]:
    return {"metric": value, "normalized": patcher.normalize(value)}


class CircuitWidget(MechWidget):
    """A model's edge graph scored by EAP or ACDC, a threshold slider and exact faithfulness.

    Build it with :func:`mechwidgets.show_circuit`. Traits (all synced):

    - ``method`` (``"eap"`` / ``"eap-ig"`` / ``"acdc"``), ``metric`` (its name), ``baseline``: ``{clean,
      corrupted, answers, wrong_answers, clean_prompt, corrupted_prompt, n_prompts}``
    - ``nodes``: ``[{name, kind, layer, head, x, y}]`` in topological order, ``size``: the
      drawing's ``{width, height, node_w, node_h}``
    - ``edges``: ``{src, dst, port, score}`` binary arrays for the ``max_edges`` strongest
      edges, sorted by decreasing ``|score|`` (``src``/``dst`` index ``nodes``; ``port`` 0..3 is
      q, k, v, or the single input); ``n_edges_total``; ``unsent_score_sum`` (sum of the scores
      of the edges not sent, for the frontend's linear estimate)
    - ``threshold``: edges with ``|score| >= threshold`` form the circuit
    - ``faithfulness``: ``{threshold, metric, normalized, n_edges, total_edges}``, exact
    - ``acdc_threshold``: ACDC's threshold (of the last ACDC run, or the suggested one);
      ``acdc_signed``: whether that run removed the edges that work against the behaviour
    - ``selected`` (a node name) and ``node_detail`` (its patching effects and top edges)
    """

    _bundle = "circuit.js"

    method = traitlets.Unicode("eap").tag(sync=True)
    metric = traitlets.Unicode("").tag(sync=True)
    baseline = traitlets.Dict({}).tag(sync=True)
    nodes = traitlets.List(traitlets.Dict()).tag(sync=True)
    size = traitlets.Dict({}).tag(sync=True)
    edges = traitlets.Dict({}).tag(sync=True)
    n_edges_total = traitlets.Int(0).tag(sync=True)
    unsent_score_sum = traitlets.Float(0.0).tag(sync=True)
    threshold = traitlets.Float(0.0).tag(sync=True)
    faithfulness = traitlets.Dict({}).tag(sync=True)
    acdc_threshold = traitlets.Float(0.0).tag(sync=True)
    acdc_signed = traitlets.Bool(False).tag(sync=True)
    selected = traitlets.Unicode("").tag(sync=True)
    node_detail = traitlets.Dict({}).tag(sync=True)

    def __init__(
        self,
        model: Any,
        clean: Prompts,
        corrupted: Prompts,
        *,
        metric: str | Callable[[torch.Tensor], torch.Tensor] = "logit_diff",
        method: str = "eap",
        answer: Answers = None,
        wrong_answer: Answers = None,
        threshold: float | None = None,
        signed: bool = False,
        max_edges: int = 3000,
        max_positions: int = 512,
        **kwargs: Any,
    ) -> None:
        if method not in METHODS:
            raise CircuitError(f"unknown method {method!r}: use 'eap' (edge attribution patching), 'eap-ig' "
                               f"(EAP with integrated gradients) or 'acdc'.")
        if not isinstance(max_edges, int) or max_edges < 1:
            raise CircuitError(f"max_edges must be a positive integer, got {max_edges!r}.")
        _check_threshold(threshold, allow_none=True)
        if not isinstance(signed, bool):
            raise CircuitError(f"signed must be true or false, got {signed!r}.")
        t0 = time.perf_counter()
        patcher = EdgePatcher(model, clean, corrupted, metric=metric, answer=answer,
                              wrong_answer=wrong_answer, max_positions=max_positions)
        self._patcher = patcher
        #: the model as the numbers on screen saw it. The patcher's own stamp is not enough: it is
        #: renewed by whatever refreshes the patcher, also a job that starts after the model
        #: changed (ACDC refreshes it on its first step), leaving the traits of the old model
        self._stamp: Stamp = patcher._stamp.fork()
        #: seconds the patcher's set-up and the last ACDC run took (a recompute's expected cost)
        self._seconds = {"setup": time.perf_counter() - t0, "acdc": 0.0}
        self._max_edges = max_edges
        self.last_node_effect: NodeEffect | None = None
        self.last_faithfulness: Faithfulness | None = None
        nodes, size = graph_layout(patcher.graph)
        gap = abs(patcher.clean_metric - patcher.corrupted_metric)
        acdc_default = threshold if (method == "acdc" and threshold is not None) else round_sig(0.02 * gap)
        super().__init__(
            metric=patcher.metric_name,
            baseline=self._baseline(),
            nodes=nodes,
            size=size,
            acdc_threshold=acdc_default,
            acdc_signed=signed,
            **kwargs,
        )
        if method == "acdc":
            self._show(self._acdc_to_end(acdc_default, signed), acdc_default)
        else:
            self._show(self._eap_result(method), threshold)

    def _baseline(self) -> dict[str, Any]:
        patcher = self._patcher
        return {
            "clean": patcher.clean_metric,
            "corrupted": patcher.corrupted_metric,
            "answers": patcher._answers,
            "wrong_answers": patcher._wrong,
            "clean_prompt": "".join(patcher.str_tokens[0]),
            "corrupted_prompt": "".join(patcher.corrupted_str_tokens[0]),
            "n_prompts": patcher.batch,
        }

    def _acdc_to_end(self, threshold: float, signed: bool) -> CircuitResult:
        t0 = time.perf_counter()
        result = run_to_end(self._patcher.acdc_steps(threshold, signed=signed))
        self._seconds["acdc"] = time.perf_counter() - t0
        return result

    def _before_request(self, kind: str) -> None:
        """The model changed since the patcher's runs: redo them, and the scores on screen (EAP's
        at once; ACDC's by running it again at its threshold, unless this request runs ACDC or
        EAP itself), so that nothing shown mixes the old model's numbers with the new one's."""
        change = self._stamp.stale()
        if change is None:
            return
        method = self._result.method
        rescore = kind not in ("acdc", "eap")
        expected = self._seconds["setup"] + (self._seconds["acdc"] if rescore and method == "acdc" else 0.0)
        with self._recomputing(change, expected):
            self._patcher.refresh()
            self.baseline = self._baseline()
            self._stamp.renew()
            if not rescore:
                return
            if method == "acdc":
                self._show(self._acdc_to_end(self.acdc_threshold, self.acdc_signed), self.threshold)
            else:
                self._show(self._eap_result(method), self.threshold)

    # ------------------------------------------------------------ state
    @property
    def patcher(self) -> EdgePatcher:
        """The :class:`EdgePatcher` holding the model, prompts and cached runs."""
        return self._patcher

    @property
    def result(self) -> CircuitResult:
        """The scores on screen (EAP or ACDC), as a :class:`CircuitResult`."""
        return self._result

    def circuit_edges(self) -> list[str]:
        """Names of the edges in the circuit at the current threshold, strongest first."""
        order = self._result.order()
        kept = self._result.circuit(self.threshold)
        return [self._result.graph.edge_name(int(e)) for e in order if bool(kept[e])]

    def _show(self, result: CircuitResult, threshold: float | None) -> None:
        """Put a result's scores on screen and measure the circuit at ``threshold``."""
        self._result = result
        graph = result.graph
        order = result.order()
        sent = order[: self._max_edges]
        src_nodes = torch.tensor(graph.sources)[graph.edge_src[sent]]
        dst = graph.edge_dst[sent]
        dst_nodes = torch.tensor([graph.dests[int(d)][0] for d in dst], dtype=torch.long)
        ports = torch.tensor([PORT_INDEX[graph.dests[int(d)][1]] for d in dst], dtype=torch.long)
        self.edges = {
            "src": encode_array(src_nodes, "int32"),
            "dst": encode_array(dst_nodes, "int32"),
            "port": encode_array(ports, "uint8"),
            "score": encode_array(result.scores[sent]),
        }
        self.n_edges_total = graph.n_edges
        self.unsent_score_sum = float(result.scores[order[self._max_edges:]].sum())
        self.method = result.method
        if result.threshold is not None:
            self.acdc_threshold = float(result.threshold)
        if threshold is None:
            threshold = result.threshold_for(max(1, math.ceil(DEFAULT_EDGE_FRACTION * graph.n_edges)))
        self._measure(threshold)
        if self.selected:
            self._select(self.selected)

    def _measure(self, threshold: float) -> Faithfulness:
        faith = self._patcher.faithfulness(self._result.circuit(threshold), threshold=threshold)
        self.last_faithfulness = faith
        self.threshold = threshold
        self.faithfulness = {
            "threshold": threshold,
            "metric": faith.metric,
            "normalized": faith.normalized,
            "n_edges": faith.n_edges,
            "total_edges": faith.total_edges,
        }
        return faith

    def _select(self, node: str) -> NodeEffect:
        patcher, result = self._patcher, self._result
        graph = result.graph
        idx = graph.node_index(node)
        effect = patcher.node_effect(node)
        kept = result.circuit(self.threshold)
        src_of = torch.tensor(graph.sources)[graph.edge_src]
        dst_of = torch.tensor([graph.dests[int(d)][0] for d in graph.edge_dst])

        def listing(mask: torch.Tensor) -> list[dict[str, Any]]:
            idxs = mask.nonzero()[:, 0]
            order = idxs[torch.argsort(result.scores[idxs].abs(), descending=True, stable=True)]
            return [{"edge": graph.edge_name(int(e)), "score": float(result.scores[e]), "in_circuit": bool(kept[e])}
                    for e in order[:DETAIL_EDGES]]

        incoming, outgoing = dst_of == idx, src_of == idx
        self.last_node_effect = effect
        self.selected = graph.nodes[idx].name
        self.node_detail = {
            "node": graph.nodes[idx].name,
            "kind": graph.nodes[idx].kind,
            "output": None if effect.output is None else _metric_state(patcher, effect.output),
            "inputs": {port: _metric_state(patcher, v) for port, v in effect.inputs.items()},
            "incoming": listing(incoming),
            "outgoing": listing(outgoing),
            "n_incoming": int(incoming.sum()),
            "n_outgoing": int(outgoing.sum()),
            "n_incoming_kept": int((incoming & kept).sum()),
            "n_outgoing_kept": int((outgoing & kept).sum()),
        }
        return effect

    # ------------------------------------------------------------ requests
    @page_request(threshold=_THRESHOLD)
    def _req_faithfulness(self, threshold: float) -> dict[str, Any]:
        _check_threshold(threshold)
        self._measure(float(threshold))
        if self.selected:
            self._select(self.selected)
        return dict(self.faithfulness)

    @page_request(node=Str(max_len=100))  # looked up in the graph by the handler
    def _req_select_node(self, node: str) -> dict[str, Any]:
        if not isinstance(node, str):
            raise CircuitError(f"node must be a node name such as 'a1.h3', got {node!r}.")
        self._select(node)
        return {"node": self.selected}

    @page_request(threshold=_THRESHOLD, signed=Bool(optional=True))
    def _req_acdc(self, threshold: float, signed: bool = False) -> Any:
        _check_threshold(threshold)
        t0 = time.perf_counter()
        result = yield from self._patcher.acdc_steps(float(threshold), signed=signed)
        self._seconds["acdc"] = time.perf_counter() - t0
        self.acdc_signed = result.signed
        self._show(result, float(threshold))
        # ACDC checked the model in full before it returned: its runs (refreshed when it started,
        # if the model had changed since the click) are of the model as it is now
        self.baseline = self._baseline()
        self._stamp.renew()
        return {"method": "acdc", "threshold": float(threshold), "signed": signed, "kept": self.faithfulness["n_edges"]}

    def _eap_result(self, method: str) -> CircuitResult:
        if method == "eap-ig":
            return self._patcher.result("eap-ig", self._patcher.eap_ig_scores(IG_STEPS))
        return self._patcher.result("eap")

    @page_request(ig=Bool(optional=True))
    def _req_eap(self, ig: bool = False) -> dict[str, Any]:
        if not isinstance(ig, bool):
            raise CircuitError(f"ig must be true or false, got {ig!r}.")
        method = "eap-ig" if ig else "eap"
        result = self._eap_result(method)  # may raise: nothing changed yet
        self._invalidate_jobs(f"{method.upper()} was asked for")  # a running ACDC would overwrite it
        self._show(result, None)
        return {"method": method}

    # ------------------------------------------------------------ Python API
    def set_threshold(self, threshold: float) -> Faithfulness:
        """Keep the edges with ``|score| >= threshold`` and measure the circuit's faithfulness."""
        self._call("faithfulness", threshold=threshold)
        assert self.last_faithfulness is not None
        return self.last_faithfulness

    def keep_top(self, n_edges: int) -> Faithfulness:
        """Set the threshold so that the ``n_edges`` strongest edges form the circuit."""
        n_edges = as_int(n_edges, "n_edges", lo=0, error=CircuitError)
        if n_edges == 0:  # just above the strongest edge: the empty circuit
            top = self._result.scores.abs().max()
            return self.set_threshold(float(torch.nextafter(top, torch.tensor(math.inf, dtype=top.dtype))))
        return self.set_threshold(self._result.threshold_for(n_edges))

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
        return self._result

    def use_eap(self, *, ig: bool = False) -> CircuitResult:
        """Show the EAP scores again (with ``ig``: EAP-IG's, integrated gradients over
        :data:`~mechwidgets.analysis.circuits.IG_STEPS` steps from the corrupted input)."""
        self._call("eap", ig=ig)
        return self._result

    # ------------------------------------------------------------ static picture
    def _static_svg(self) -> str | None:
        return circuit_svg(self._result, self.threshold, self.faithfulness, max_edges=self._max_edges)


def round_sig(x: float, digits: int = 2) -> float:
    if x == 0 or not math.isfinite(x):
        return 0.0
    return round(x, -math.floor(math.log10(abs(x))) + digits - 1)


def _check_threshold(threshold: Any, *, allow_none: bool = False) -> None:
    if threshold is None and allow_none:
        return
    ok = isinstance(threshold, numbers.Real) and not isinstance(threshold, bool)
    if not ok or not threshold >= 0 or not math.isfinite(threshold):
        raise CircuitError(f"the threshold must be a finite number >= 0, got {threshold!r}.")


def circuit_svg(result: CircuitResult, threshold: float, faithfulness: dict[str, Any], *, max_edges: int = 3000) -> str:
    """A standalone SVG of the circuit: nodes, the edges with ``|score| >= threshold`` (width and
    colour by score, blue negative, red positive), a legend and the faithfulness."""
    graph = result.graph
    nodes, size = graph_layout(graph)
    top = 54
    width, height = max(size["width"], 560), size["height"] + top + 40
    scores = result.scores
    max_abs = float(scores.abs().max()) if scores.numel() else 0.0
    order = result.order()[:max_edges]
    kept = [int(e) for e in order if float(scores[e].abs()) >= threshold]
    used: set[int] = set()
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="10">',
        f'<rect width="{width}" height="{height}" fill="white"/>',
    ]
    if result.method == "acdc":
        method = f"ACDC ({'signed, ' if result.signed else ''}threshold {result.threshold:.3g})"
    else:
        method = "EAP-IG scores" if result.method == "eap-ig" else "EAP scores"
    title = f"Circuit — {method}: {len(kept)} of {graph.n_edges} edges with |score| ≥ {threshold:.3g}"
    parts.append(f'<text x="8" y="16" font-size="13" font-weight="bold">{escape(title)}</text>')
    if faithfulness:
        line = (f"faithfulness {faithfulness['normalized']:.3f} ({result.metric} {faithfulness['metric']:.3f}; "
                f"clean {result.clean_metric:.3f}, corrupted {result.corrupted_metric:.3f})")
        parts.append(f'<text x="8" y="32">{escape(line)}</text>')
    parts.append(f'<g transform="translate(0,{top})">')
    for e in reversed(kept):  # strongest drawn last, on top
        s, d = int(graph.edge_src[e]), int(graph.edge_dst[e])
        a, (b_node, port) = graph.sources[s], graph.dests[d]
        used.update((a, b_node))
        na, nb = nodes[a], nodes[b_node]
        path = edge_path(na["x"] + NODE_W / 2, na["y"], nb["x"] - NODE_W / 2, port_y(nb["y"], PORT_INDEX[port]))
        score = float(scores[e])
        colour = diverging_rgb(score / max_abs if max_abs else 0.0)
        parts.append(f'<path d="{path}" fill="none" stroke="{colour}" stroke-width="{edge_width(score, max_abs):.2f}" '
                     f'stroke-opacity="0.85"><title>{escape(graph.edge_name(e))}: {score:.4g}</title></path>')
    for i, node in enumerate(nodes):
        x, y = node["x"] - NODE_W / 2, node["y"] - NODE_H / 2
        opacity = "1" if i in used else "0.35"
        fill = {"embed": "#eaeef2", "logits": "#eaeef2", "mlp": "#fff8c5"}.get(node["kind"], "#ddf4ff")
        label = f"MLP {node['layer']}" if node["kind"] == "mlp" else node["name"]
        ports = "".join(
            f'<circle cx="{x:.1f}" cy="{port_y(node["y"], p):.1f}" r="2" fill="#57606a"/>' for p in range(3)
        ) if node["kind"] == "head" else ""
        parts.append(f'<g opacity="{opacity}"><rect x="{x:.1f}" y="{y:.1f}" width="{NODE_W}" height="{NODE_H}" rx="4" '
                     f'fill="{fill}" stroke="#57606a"/>{ports}<text x="{node["x"]:.1f}" y="{node["y"] + 3.5:.1f}" '
                     f'text-anchor="middle">{_label(label)}</text></g>')
    parts.append("</g>")
    # legend: blue (corrupting lowers the metric) to red (raises it)
    ly = height - 22
    for k in range(41):
        t = -1 + k / 20
        parts.append(f'<rect x="{8 + k * 4}" y="{ly}" width="4" height="10" fill="{diverging_rgb(t)}"/>')
    parts.append(f'<text x="8" y="{ly + 21}">{-max_abs:.3g}</text>')
    parts.append(f'<text x="172" y="{ly + 21}" text-anchor="end">{max_abs:.3g}</text>')
    parts.append(f'<text x="184" y="{ly + 9}">edge score: blue = corrupting the edge lowers {escape(result.metric)}, '
                 f'red = raises it; width ∝ |score|</text>')
    parts.append("</svg>")
    return "".join(parts)


def show_circuit(
    model: Any,
    clean: Prompts,
    corrupted: Prompts,
    *,
    metric: str | Callable[[torch.Tensor], torch.Tensor] = "logit_diff",
    method: str = "eap",
    answer: Answers = None,
    wrong_answer: Answers = None,
    threshold: float | None = None,
    signed: bool = False,
    max_edges: int = 3000,
    max_positions: int = 512,
) -> CircuitWidget:
    """Find the circuit behind a behaviour: score every edge of the model's graph and show it.

    The graph has attention heads (with separate q, k, v inputs), MLPs, the embeddings and the
    logits as nodes, and an edge from every node to every later node's input through the
    residual stream (see :mod:`mechwidgets.analysis.circuits`).

    Args:
        model: a TransformerLens ``HookedTransformer``.
        clean: the prompt(s) showing the behaviour (a string, a list, or token tensors).
        corrupted: one prompt per clean prompt, with as many tokens, that lacks it.
        metric: ``"logit_diff"`` (default: ``answer`` minus ``wrong_answer`` logit at the last
            token), ``"logprob"`` (of ``answer``), ``"prob"``, ``"kl"``, or a callable of the
            ``[batch, d_vocab]`` last-token logits returning one number per prompt, ``[batch]``
            (the contract of :data:`~mechwidgets.analysis.metrics.MetricFn`; the circuit's
            metric is its mean over the prompts), e.g. ``lambda logits: logits[:, a] - logits[:, b]``.
        method: ``"eap"`` (edge attribution patching, ~3 forward passes; the default),
            ``"eap-ig"`` (EAP with the gradients integrated from the corrupted to the clean
            input, 5 more forward and backward passes: better where attention saturates) or
            ``"acdc"`` (exact pruning, one forward pass per edge).
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
        The :class:`CircuitWidget`. Drive it from Python too: ``w.set_threshold(0.05)``,
        ``w.keep_top(40)``, ``w.select_node("a1.h3")``, ``w.run_acdc(0.02)``; read
        ``w.result`` (a :class:`~mechwidgets.analysis.circuits.CircuitResult`),
        ``w.last_faithfulness`` and ``w.circuit_edges()``.
    """
    return CircuitWidget(
        model, clean, corrupted, metric=metric, method=method, answer=answer, wrong_answer=wrong_answer,
        threshold=threshold, signed=signed, max_edges=max_edges, max_positions=max_positions,
    )


__all__ = ["CircuitWidget", "circuit_svg", "graph_layout", "show_circuit"]
