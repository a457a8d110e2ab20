"""The prepared object of a circuit analysis: :class:`EdgePatcher` (its set-up and EAP in
:mod:`.scoring`, its ground in :mod:`.base`) runs exact patched forwards for faithfulness, node
effects and ACDC."""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Generator, Sequence
from typing import Any

import numpy as np
import torch
from jaxtyping import Bool

from ..._fingerprint import JOB_BUDGET, Stamp, check_unchanged
from ..._model import ModelHandle
from ..._steps import run_to_end
from ...errors import MetricError
from ..metrics import METRICS, MetricFn, normalize
from .graph import shared_graph
from .inputs import (
    IG_STEPS,
    Answers,
    CircuitError,
    MetricArg,
    Prompts,
    answer_list,
    check_method,
    check_signed,
    check_threshold,
)
from .results import CircuitResult, Faithfulness, NodeEffect
from .scoring import EapScoring


class EdgePatcher(EapScoring):
    """A model, a batch of clean/corrupted prompt pairs and a metric, ready for edge patching.

    Building it runs the corrupted prompts, then the clean prompts with gradients, and the
    backward pass of EAP (about three forward passes in all); everything later (ACDC, the
    faithfulness of any circuit, node effects) runs exact patched forwards against the cached
    corrupted activations.

    Args:
        model: a TransformerLens 3.x ``HookedTransformer`` or 4.x ``TransformerBridge`` (or a
            handle on one).
        clean: a prompt, a list of prompts, or ``[batch, pos]`` tokens. Prompts of different
            lengths are right-padded (the model is causal, so padding never changes the
            positions the metric reads).
        corrupted: as many prompts, each with exactly as many tokens as its clean twin.
        metric: a metric of :mod:`mechwidgets.analysis.metrics`, at each prompt's last token
            and averaged over the prompts: ``"logit_diff"`` (``logit[answer] -
            logit[wrong_answer]``, the default), ``"logprob"``, ``"prob"``, ``"kl"`` (KL from the
            clean run's distribution; its gradient vanishes at the clean run, so its EAP scores
            are 0: use ACDC with it), or a callable ``[batch, d_vocab] -> [batch]`` (differentiable
            for EAP and EAP-IG; ACDC and faithfulness take any).
        answer: the answer token(s) (strings that are one token, or ids; one per prompt or one
            for all). Default: the clean run's top prediction for each prompt.
        wrong_answer: for ``logit_diff``: default the corrupted run's top prediction (its
            second choice where that is the answer too), as in activation patching.
        max_positions: refuse prompts longer than this (default 512).

    Raises:
        MetricError: unknown metric, a non-finite metric, or equal clean and corrupted metrics
            (and from :meth:`result` / :meth:`eap_ig_scores`: a metric without a gradient).
        PromptError: empty prompts, different numbers of prompts or of tokens in a pair.
        AnswerError: an answer that is not one token, the wrong number of answers, or an answer
            equal to the wrong answer.
        ModelError: a model whose graph this module cannot split into edges.
    """

    def __init__(
        self,
        model: Any,
        clean: Prompts,
        corrupted: Prompts,
        *,
        metric: MetricArg = "logit_diff",
        answer: Answers = None,
        wrong_answer: Answers = None,
        max_positions: int = 512,
    ) -> None:
        handle = ModelHandle.wrap_token_ids(model)  # a model with no tokenizer takes token tensors
        self.handle = handle
        self._check_model()
        if callable(metric) and not isinstance(metric, str):
            self.metric_name = getattr(metric, "__name__", type(metric).__name__)
            self._metric_fn: MetricFn | None = metric
        elif isinstance(metric, str) and metric in METRICS:
            self.metric_name = metric
            self._metric_fn = None
        else:
            raise MetricError(
                f"unknown metric {metric!r}: use one of {list(METRICS)} or a callable mapping "
                f"logits [batch, d_vocab] at the last position to [batch] (one number per prompt)."
            )
        self._metric_arg = metric
        cfg = handle.cfg
        self.graph, self._allowed, self._dest_layer = shared_graph(
            handle.n_layers, handle.n_heads, not bool(getattr(cfg, "attn_only", False)),
            bool(getattr(cfg, "parallel_attn_mlp", False)),
        )
        self._ig_cache: dict[int, torch.Tensor] = {}
        self._tokenize(clean, corrupted, max_positions)
        answers = answer_list(answer, self.batch, "answer")
        wrongs = answer_list(wrong_answer, self.batch, "wrong answer")
        self._setup(answers, wrongs)
        self._given_answers = (answers, wrongs)
        #: the model as the cached runs saw it (see :meth:`refresh`)
        self._stamp = Stamp(handle.model)

    # ------------------------------------------------------------------ patched forwards
    def _removed_from_kept(self, kept: Bool[torch.Tensor, " edge"]) -> Bool[torch.Tensor, "src dst"]:
        removed = self._allowed.clone()
        removed[self.graph.edge_src[kept], self.graph.edge_dst[kept]] = False
        return removed

    @torch.no_grad()
    def patched_metric(self, removed: Bool[torch.Tensor, "src dst"]) -> float:
        """The metric with the edges marked in ``removed`` (``[n_src, n_dst]``) patched from
        the corrupted run, by one forward pass (from the first layer any removed edge enters)."""
        removed = removed & self._allowed
        dest_removed = removed.any(0)
        if not bool(dest_removed.any()):
            return self.clean_metric
        start = int(self._dest_layer[dest_removed].min())
        final = self._patched_final(removed, start)
        return self._finite(self._metric(final), "patched")

    def _patched_final(self, removed: torch.Tensor, start: int) -> torch.Tensor:
        """The final residual stream of a forward pass (from layer ``start``, whose input is the
        clean run's: nothing before it is patched) with the ``removed`` edges patched.

        Source outputs are kept as ``[source, batch * pos, d_model]``, so that what a
        destination loses, the sum over its removed edges of (current - corrupted) output, is one
        matrix product; every patched q/k/v input of a layer is recomputed at once, at
        ``hook_q``, and written into ``hook_q``/``hook_k``/``hook_v``."""
        handle = self.handle
        L, H, d = self.graph.n_layers, self.graph.n_heads, self.handle.d_model
        head_src, mlp_src = self._source_slices()
        head_dst, mlp_dst, logits_dst = self._dest_slices()
        reads = self.graph.dest_reads
        rm = removed.numpy()  # the plan is made on the CPU, once per forward pass
        cur = self._clean_src.clone()  # sources upstream of `start` keep their clean outputs
        corr = self._corr_src
        device, dtype = cur.device, cur.dtype

        def loss(n: int, weights: np.ndarray) -> torch.Tensor:
            """``[k, bp, d]``: for k destinations reading sources ``0..n-1`` with 0/1 ``weights``
            ``[k, n]`` (1 = removed edge), the sum of (current - corrupted) over removed edges."""
            r = torch.from_numpy(np.ascontiguousarray(weights, dtype=np.float32)).to(device, dtype)
            return (r @ (cur[:n] - corr[:n]).reshape(n, -1)).reshape(len(weights), -1, d)

        hooks: list[tuple[str, Any]] = []
        state: dict[str, Any] = {}
        for layer in range(start, L):

            def pre(x: torch.Tensor, hook: Any, layer: int = layer) -> None:
                state["pre"] = x.reshape(-1, d)
                if layer == 0:
                    cur[0] = state["pre"]

            hooks.append((f"blocks.{layer}.hook_resid_pre", pre))
            lo, hi = head_dst[layer]["q"][0], head_dst[layer]["v"][1]
            n = reads[lo]
            block = rm[:n, lo:hi]  # [n, 3H]: q heads, k heads, v heads
            patched = np.flatnonzero(block.any(0))
            if patched.size:
                full = block[:, patched].all(0)
                split = [int(np.count_nonzero(patched < (i + 1) * H)) for i in range(3)]  # cumulative
                heads = {p: torch.from_numpy(patched[a:b] - i * H).to(device)
                         for i, (p, a, b) in enumerate(zip("qkv", [0, *split[:2]], split, strict=True))}
                spans = {p: (a, b) for p, a, b in zip("qkv", [0, *split[:2]], split, strict=True)}

                def qkv(out: torch.Tensor, hook: Any, port: str, layer: int = layer, n: int = n,
                        weights: np.ndarray = block[:, patched].T, full: Any = full,
                        heads: dict[str, torch.Tensor] = heads, spans: dict[str, tuple[int, int]] = spans) -> torch.Tensor:
                    if port == "q":  # every patched q/k/v input of the layer at once
                        x = state["pre"][None] - loss(n, weights).to(out.dtype)  # [k, bp, d]
                        if full.any():  # every edge into it removed: exactly the corrupted input
                            x[torch.from_numpy(full)] = self._corr_resid_pre[layer].reshape(-1, d).to(x.dtype)
                        attn = self._attn(layer)
                        w = torch.cat([getattr(attn, f"W_{p.upper()}").index_select(0, heads[p]) for p in "qkv"])
                        b = torch.cat([getattr(attn, f"b_{p.upper()}").index_select(0, heads[p]) for p in "qkv"])
                        normed = handle.model.blocks[layer].ln1(x).to(w.dtype)
                        state["new"] = torch.baddbmm(b[:, None], normed, w)  # [k, bp, d_head]
                    a, b_ = spans[port]
                    if b_ > a:
                        out.view(-1, H, out.shape[-1])[:, heads[port]] = state["new"][a:b_].transpose(0, 1).to(out.dtype)
                    return out

                for port in "qkv":
                    hooks.append((f"blocks.{layer}.attn.hook_{port}", functools.partial(qkv, port=port)))

            def z_hook(z: torch.Tensor, hook: Any, layer: int = layer) -> None:
                lo_s, hi_s = head_src[layer]
                self._head_outs(layer, z, out=cur[lo_s:hi_s])

            hooks.append((f"blocks.{layer}.attn.hook_z", z_hook))
            if self.graph.has_mlp:
                dm = mlp_dst[layer]

                def mlp_out(x: torch.Tensor, hook: Any, layer: int = layer) -> None:
                    cur[mlp_src[layer]] = x.reshape(-1, d)

                hooks.append((f"blocks.{layer}.hook_mlp_out", mlp_out))
                column = rm[: reads[dm], dm]
                if column.any():

                    def mlp_in(x: torch.Tensor, hook: Any, layer: int = layer, column: np.ndarray = column) -> torch.Tensor:
                        if column.all():  # exactly the corrupted input
                            return self._corr_resid_mid[layer].to(x.dtype).clone()
                        return x - loss(len(column), column[None])[0].reshape(x.shape).to(x.dtype)

                    hooks.append((f"blocks.{layer}.hook_mlp_in", mlp_in))
        if start < L:
            with self._edge_mode():
                final = self._final_resid(self.clean_tokens, hooks, start)
        else:
            final = self._clean_final
        column = rm[:, logits_dst]
        if not column.any():
            return final
        if column.all():
            return self._corr_final
        return final - loss(len(column), column[None])[0].reshape(final.shape).to(final.dtype)

    # ------------------------------------------------------------------ public analyses
    def normalize(self, value: float) -> float:
        """``(value - corrupted) / (clean - corrupted)``: 1 at the clean run, 0 at the corrupted."""
        out = float(normalize(torch.tensor(value), self.corrupted_metric, self.clean_metric, metric=self.metric_name))
        return out + 0.0  # no -0.0

    def faithfulness(self, kept: Bool[torch.Tensor, " edge"], *, threshold: float | None = None) -> Faithfulness:
        """Exact faithfulness of the circuit ``kept`` (``[edge]`` bool): one patched forward."""
        self.refresh()
        kept = torch.as_tensor(kept, dtype=torch.bool).cpu()
        if kept.shape != (self.graph.n_edges,):
            raise CircuitError(
                f"the circuit must be a [{self.graph.n_edges}] boolean mask over the graph's edges, "
                f"got shape {tuple(kept.shape)}."
            )
        value = self.patched_metric(self._removed_from_kept(kept))
        return Faithfulness(
            metric=value,
            normalized=self.normalize(value),
            n_edges=int(kept.sum()),
            total_edges=self.graph.n_edges,
            clean_metric=self.clean_metric,
            corrupted_metric=self.corrupted_metric,
            threshold=threshold,
        )

    def node_effect(self, node: str) -> NodeEffect:
        """Exact metric with a node's output patched, and with each of its inputs patched."""
        self.refresh()
        g = self.graph
        idx = g.node_index(node)
        output = None
        if idx in g.sources:
            s = g.sources.index(idx)
            removed = torch.zeros_like(self._allowed)
            removed[s] = self._allowed[s]
            output = self.patched_metric(removed)
        inputs = {}
        for d, (n, port) in enumerate(g.dests):
            if n == idx:
                removed = torch.zeros_like(self._allowed)
                removed[:, d] = self._allowed[:, d]
                inputs[port] = self.patched_metric(removed)
        return NodeEffect(g.nodes[idx].name, output, inputs, self.clean_metric, self.corrupted_metric,
                          g.nodes[idx].kind)


    def result(self, method: str = "eap", scores: torch.Tensor | None = None, *,
               threshold: float | None = None, circuit_metric: float | None = None,
               signed: bool = False) -> CircuitResult:
        """A :class:`CircuitResult` of ``scores`` (EAP's own when None: the metric must have a
        gradient)."""
        if scores is None:
            self.refresh()
            self._gradient_metric("EAP")
        return CircuitResult(
            method=method, graph=self.graph, scores=self.eap_scores.clone() if scores is None else scores,
            metric=self.metric_name, clean_metric=self.clean_metric, corrupted_metric=self.corrupted_metric,
            str_tokens=self.str_tokens, answers=self._answers, wrong_answers=self._wrong,
            threshold=threshold, circuit_metric=circuit_metric, signed=signed,
        )

    def acdc_order(self) -> list[int]:
        """Edge indices in ACDC's order: destinations in reverse topological order (for a head,
        its v, then k, then q input), and for each its sources latest first."""
        g = self.graph
        head_dst, mlp_dst, logits_dst = self._dest_slices()
        dest_order = [logits_dst]
        for layer in reversed(range(g.n_layers)):
            if g.has_mlp:
                dest_order.append(mlp_dst[layer])
            for h in reversed(range(g.n_heads)):
                for port in ("v", "k", "q"):
                    dest_order.append(head_dst[layer][port][0] + h)
        edge_of = {(int(s), int(d)): e for e, (s, d) in enumerate(zip(g.edge_src, g.edge_dst, strict=True))}
        return [edge_of[(s, d)] for d in dest_order for s in reversed(range(g.dest_reads[d]))]

    def acdc_steps(self, threshold: float, *, signed: bool = False) -> Generator[dict[str, Any], None, CircuitResult]:
        """ACDC as a generator: yields ``{done, total, message}`` after each edge, returns the
        :class:`CircuitResult` (``scores``: the change measured for each edge).

        ``signed=False``: an edge goes when removing it moves the metric by less than
        ``threshold`` either way (``|Δ| < threshold``), so edges that work against the behaviour
        stay in the circuit. ``signed=True`` (the rule of ACDC's own code, which minimises a
        loss): an edge goes when removing it moves the metric *away from the clean behaviour*
        by less than ``threshold``, so edges whose removal helps the behaviour always go (their
        score is then 0: they are not part of the circuit); it needs ``threshold > 0``.

        Closing the generator (cancel) stops between two forward passes; nothing stays hooked.
        A model changed while it runs (weights, hooks: see :meth:`refresh`) stops it within a few
        edges (milliseconds; always before it returns) with
        :class:`~mechwidgets.errors.ModelChangedError`.
        """
        threshold = check_threshold(threshold, "the ACDC threshold")
        check_signed(signed)
        if signed and threshold == 0:
            raise CircuitError("signed ACDC needs a threshold > 0 (at 0 it would still remove every edge "
                               "whose removal helps the behaviour); use signed=False to keep the full graph.")
        self.refresh()
        t0 = time.perf_counter()
        job = self._stamp.fork()  # the model these runs are of, even if a click refreshes them
        g = self.graph
        toward = 1.0 if self.clean_metric >= self.corrupted_metric else -1.0  # the clean behaviour's side
        removed = torch.zeros_like(self._allowed)
        current = self.clean_metric
        scores = torch.zeros(g.n_edges)
        order = self.acdc_order()
        total = len(order)
        kept = total
        for k, e in enumerate(order):
            s, d = int(g.edge_src[e]), int(g.edge_dst[e])
            removed[s, d] = True
            check_unchanged(job, "ACDC", budget=JOB_BUDGET)
            value = self.patched_metric(removed)
            change = value - current
            harm = -change * toward  # how far removing it moved the metric away from the clean run's
            scores[e] = change if not signed or harm > 0 else 0.0
            if (harm < threshold) if signed else (abs(change) < threshold):
                current = value
                kept -= 1
            else:
                removed[s, d] = False
            yield {"done": k + 1, "total": total, "message": f"ACDC: {kept} of {total} edges kept"}
        check_unchanged(job, "ACDC")
        self.seconds["acdc"] = time.perf_counter() - t0
        return self.result("acdc", scores, threshold=threshold, circuit_metric=current, signed=signed)

    # ------------------------------------------------------------------ by name
    def baseline(self) -> dict[str, Any]:
        """What the runs are: the metric on the clean and corrupted runs, the answers it reads,
        the first pair of prompts and how many pairs there are."""
        return {
            "clean": self.clean_metric,
            "corrupted": self.corrupted_metric,
            "answers": self._answers,
            "wrong_answers": self._wrong,
            "clean_prompt": "".join(self.str_tokens[0]),
            "corrupted_prompt": "".join(self.corrupted_str_tokens[0]),
            "n_prompts": self.batch,
        }

    def eap(self, *, ig_steps: int | None = None) -> CircuitResult:
        """EAP's scores as a :class:`CircuitResult`; with ``ig_steps``, EAP-IG's
        (:meth:`eap_ig_scores`). The metric must have a gradient."""
        if ig_steps is None:
            return self.result("eap")
        return self.result("eap-ig", self.eap_ig_scores(ig_steps))

    def acdc(self, threshold: float, *, signed: bool = False) -> CircuitResult:
        """ACDC run to its end (:meth:`acdc_steps`)."""
        return run_to_end(self.acdc_steps(threshold, signed=signed))

    def suggested_acdc_threshold(self) -> float:
        """2% of the gap between the clean and the corrupted metric, to two significant digits."""
        gap = 0.02 * abs(self.clean_metric - self.corrupted_metric)
        if gap == 0 or not math.isfinite(gap):
            return 0.0
        return round(gap, -math.floor(math.log10(gap)) + 1)

    def score_steps(self, method: str = "eap", *, threshold: float | None = None,
                    signed: bool = False) -> Generator[dict[str, Any], None, CircuitResult]:
        """The scores of ``method`` (``"eap"``, ``"eap-ig"`` with :data:`IG_STEPS` steps, or
        ``"acdc"`` at ``threshold``, default :meth:`suggested_acdc_threshold`; ``signed`` as in
        :meth:`acdc_steps`), as a generator that yields ACDC's progress and returns the
        :class:`CircuitResult`. Every argument is checked before anything runs."""
        check_method(method)
        check_signed(signed)
        if threshold is not None:
            threshold = check_threshold(threshold)
        if method == "acdc":
            tau = self.suggested_acdc_threshold() if threshold is None else threshold
            return (yield from self.acdc_steps(tau, signed=signed))
        return self.eap(ig_steps=IG_STEPS if method == "eap-ig" else None)

    def circuit_mask(self, edges: Sequence[str] | torch.Tensor) -> Bool[torch.Tensor, " edge"]:
        """A circuit given as edge names (``["a0.h1->a1.h3.k", ...]``) or an ``[edge]`` boolean
        mask, as the mask."""
        if isinstance(edges, torch.Tensor) and edges.dtype == torch.bool:
            return edges
        kept = torch.zeros(self.graph.n_edges, dtype=torch.bool)
        for name in edges:
            kept[self.graph.edge_index(str(name))] = True
        return kept
