"""Edge attribution patching: the recorded clean and corrupted runs, the gradients at every
destination, and the EAP and EAP-IG scores (see :mod:`mechwidgets.analysis.circuits`)."""

from __future__ import annotations

import functools
import time
from collections.abc import Sequence
from typing import Any

import torch

from ... import _fast
from ..._fingerprint import Stamp
from ...errors import MetricError
from ..patching import choose_metric
from .base import PatcherBase
from .inputs import IG_STEPS, CircuitError, resolve


class EapScoring(PatcherBase):
    """The set-up runs of :class:`~mechwidgets.analysis.circuits.EdgePatcher` (clean and
    corrupted records, answers, baselines, EAP's scores) and EAP-IG."""

    _ig_cache: dict[int, torch.Tensor]
    _allowed: torch.Tensor
    _metric_arg: Any
    has_gradient: bool
    direct: bool
    fused: bool
    seconds: dict[str, float]
    notes: list[str]
    _answers: list[str]
    _wrong: list[str] | None
    eap_dense: torch.Tensor
    eap_scores: torch.Tensor
    _clean_final: torch.Tensor
    _corr_final: torch.Tensor
    _corr_resid_pre: list[torch.Tensor]
    _corr_resid_mid: list[torch.Tensor]
    _stamp: Stamp
    _given_answers: tuple[list[Any], list[Any]]

    # ------------------------------------------------------------------ the cached runs' model
    def refresh(self) -> str | None:
        """Recompute the cached runs (the clean and corrupted records, baselines, answers and
        EAP scores) if the model changed since they were taken (its weights, dtype, device or
        hooks: :func:`~mechwidgets._fingerprint.model_fingerprint`). Every public analysis calls
        it first, so no result mixes the old model's runs with the new one's. Returns what
        changed, or ``None`` when nothing did."""
        change = self._stamp.stale()
        if change is not None:
            self._ig_cache.clear()
            for cls in type(self).__mro__:  # every cached property (sources, columns) goes too
                for name, attr in vars(cls).items():
                    if isinstance(attr, functools.cached_property):
                        self.__dict__.pop(name, None)
            self._setup(*self._given_answers)
            self._stamp.renew()
        return change

    # ------------------------------------------------------------------ set-up (EAP)
    def _record(self, tokens: torch.Tensor, *, grad: bool, resid_pre0: torch.Tensor | None = None) -> dict[str, Any]:
        """One forward pass (to the final residual, no unembedding) that records every source's
        output, each layer's ``resid_pre``/``resid_mid`` and, with ``grad``, the live tensors
        that destination gradients are read from: ``hook_q/k/v`` and ``hook_mlp_in``.
        ``resid_pre0`` (``[batch, pos, d_model]``) replaces the embeddings (EAP-IG's inputs).

        A model :mod:`mechwidgets._fast` covers (:attr:`direct`) is run by it, without hook points: the
        same tensors, from the same arithmetic."""
        if self.direct:
            return _fast.record(self.handle.model, tokens, grad=grad, resid_pre0=resid_pre0)
        L = self.graph.n_layers
        rec: dict[str, Any] = {"z": [None] * L, "mlp": [None] * L, "pre": [None] * L, "mid": [None] * L, "live": {}}
        hooks: list[tuple[str, Any]] = []
        if resid_pre0 is not None:

            def embed(x: torch.Tensor, hook: Any, inputs: torch.Tensor = resid_pre0) -> torch.Tensor:
                return inputs.to(x.dtype)

            hooks.append(("blocks.0.hook_resid_pre", embed))
        if grad:  # a model with frozen parameters still gets its gradients from the embeddings on

            def track(x: torch.Tensor, hook: Any) -> torch.Tensor:
                return x if x.requires_grad else x.detach().requires_grad_(True)

            hooks.append(("blocks.0.hook_resid_pre", track))
        for layer in range(L):

            def pre(x: torch.Tensor, hook: Any, layer: int = layer) -> None:
                rec["pre"][layer] = x.detach()

            def z_hook(z: torch.Tensor, hook: Any, layer: int = layer) -> None:
                rec["z"][layer] = z.detach()

            hooks += [(f"blocks.{layer}.hook_resid_pre", pre), (f"blocks.{layer}.attn.hook_z", z_hook)]
            if grad:
                for port in ("q", "k", "v"):

                    # returned, so that the model goes on with this very tensor (on a
                    # TransformerBridge it is a reshaped view: left unused, its gradient is 0)
                    def keep(x: torch.Tensor, hook: Any, key: str = f"{port}{layer}") -> torch.Tensor:
                        rec["live"][key] = x
                        return x

                    hooks.append((f"blocks.{layer}.attn.hook_{port}", keep))
            if self.graph.has_mlp:

                def mid(x: torch.Tensor, hook: Any, layer: int = layer) -> torch.Tensor:
                    rec["mid"][layer] = x.detach()
                    if not grad:
                        return x
                    # the MLP's input of its own: a TransformerBridge's hook_mlp_in is resid_mid
                    # itself, which the residual sum reads too (3.x's is a clone already)
                    live = rec["live"][f"mlp{layer}"] = x.clone()
                    return live

                def mlp_out(x: torch.Tensor, hook: Any, layer: int = layer) -> None:
                    rec["mlp"][layer] = x.detach()

                hooks += [(f"blocks.{layer}.hook_mlp_in", mid), (f"blocks.{layer}.hook_mlp_out", mlp_out)]
        rec["final"] = self._final_resid(tokens, hooks)
        return rec


    #: Below this much work per forward pass (prompts x positions x d_model² x layers) the clean
    #: and corrupted prompts run as one batch: a small run costs per operation, not per number,
    #: so the corrupted prompts then come almost free. Above it they run on their own, without
    #: gradients (in a batch, the backward pass would also go through them).
    FUSE_BELOW: float = 4e6

    def _work(self) -> int:
        """The work of one forward pass over the batch, as :attr:`FUSE_BELOW` measures it."""
        return self.batch * int(self.clean_tokens.shape[1]) * self.handle.d_model ** 2 * self.graph.n_layers

    @staticmethod
    def _grads_at(metric: torch.Tensor | None, final: torch.Tensor,
                  live: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Gradients of ``metric`` at the final residual (``"final"``) and at a run's live
        ``hook_q/k/v`` / ``hook_mlp_in`` tensors (:meth:`_record`), detached; zeros where it does
        not reach one, and everywhere for ``metric=None`` (a metric whose gradient is not taken)."""
        names, targets = ["final", *live], [final, *live.values()]
        grads: Sequence[torch.Tensor | None] = (
            torch.autograd.grad(metric, targets, allow_unused=True) if metric is not None else [None] * len(targets)
        )
        return {n: (torch.zeros_like(t) if g is None else g).detach() for n, t, g in zip(names, targets, grads, strict=True)}

    #: The most float32 numbers :meth:`_dest_grads` works on at once (1 MiB: an L2 cache).
    CHUNK_FLOATS: int = 1 << 18

    #: Norms whose backward :func:`mechwidgets._fast.norm_vjp` computes in closed form.
    CLOSED_FORM_NORMS = _fast.TL_NORMS

    def _closed_form(self, ln: Any) -> bool:
        """Whether ``ln`` is one of TransformerLens's own norms that :func:`mechwidgets._fast.norm_vjp` covers
        (weights ``w``, if any, and ``eps``): a ``torch.nn.LayerNorm`` goes through autograd."""
        return _fast.tl_norm(ln, self.CLOSED_FORM_NORMS)

    def _ln1_stack(self) -> tuple[str, float, torch.Tensor | None] | None:
        """``(kind, eps, weights [layer, d] or None)`` when every layer's ``ln1`` is the same
        closed-form norm with the same ``eps`` (its backward then runs for several layers at
        once); None otherwise (:meth:`_ln_vjp` layer by layer)."""
        lns = [block.ln1 for block in self.handle.model.blocks]
        kinds = {type(ln) for ln in lns}
        if len(kinds) != 1 or not all(self._closed_form(ln) for ln in lns) or len({float(ln.eps) for ln in lns}) != 1:
            return None
        w = torch.stack([ln.w.detach().float() for ln in lns]) if hasattr(lns[0], "w") else None  # one class
        return kinds.pop().__name__, float(lns[0].eps), w

    def _ln_vjp(self, layer: int, x: torch.Tensor, upstream: torch.Tensor) -> torch.Tensor:
        """Gradients of each head's own ``ln1`` input from the gradients of its ``ln1`` output:
        ``x`` ``[n, d]`` (``resid_pre`` at ``n`` positions, the same for every head),
        ``upstream`` ``[k, n, d]`` (one row of gradients per head and port; overwritten).

        TransformerLens's LayerNorm / RMSNorm in closed form (:func:`mechwidgets._fast.norm_vjp`); any other
        module through autograd."""
        ln = self.handle.model.blocks[layer].ln1
        kind = type(ln).__name__
        if isinstance(ln, torch.nn.Identity):
            return upstream
        if self._closed_form(ln):
            w = ln.w.detach().float() if hasattr(ln, "w") else None
            return _fast.norm_vjp(kind, float(ln.eps), w, x, upstream)
        with torch.enable_grad():
            xs = x[None].expand_as(upstream).clone().requires_grad_(True)
            (g_in,) = torch.autograd.grad(ln(xs[:, :, None])[:, :, 0], xs, upstream)
        return g_in.detach()

    def _check_direct(self) -> None:
        #: Whether the latest recording runs (EAP's set-up, or EAP-IG's) went through
        #: :mod:`mechwidgets._fast` (no hook points) rather than TransformerLens's forward pass: checked
        #: before each (a hook attached since the set-up turns it off for EAP-IG).
        self.direct = _fast.unsupported(self.handle.model, "record") is None

    def _setup(self, answers: list[Any], wrongs: list[Any]) -> None:
        t0 = time.perf_counter()
        handle = self.handle
        B = self.batch
        fused = self._work() < self.FUSE_BELOW
        self._check_direct()
        with self._edge_mode(grad=True):
            if fused:  # one forward pass, clean prompts first
                both = self._record(torch.cat([self.clean_tokens, self.corrupted_tokens]), grad=True)
                def half(part: slice) -> dict[str, Any]:
                    return {k: [None if t is None else t[part] for t in v] if isinstance(v, list) else v
                            for k, v in both.items() if k != "final"}

                clean, corr = half(slice(None, B)), half(slice(B, None))
                live_final = both["final"]
                final, corr_final = live_final[:B], live_final[B:].detach()
            else:
                with torch.no_grad():
                    corr = self._record(self.corrupted_tokens, grad=False)
                clean = self._record(self.clean_tokens, grad=True)
                live_final = final = clean["final"]
                corr_final = corr["final"]
            # the full last-token logits are needed for default answers and for the KL metric
            if self._metric_fn is not None:
                needs_logits = False
            elif self.metric_name == "kl":
                needs_logits = True
            else:
                given = answers + wrongs if self.metric_name == "logit_diff" else answers
                needs_logits = any(a is None for a in given)
            with torch.no_grad():
                if needs_logits:
                    corr_last = self._last_logits(corr_final)
                    self._clean_last_logits = self._last_logits(final.detach()).float()
                else:  # explicit answers: the choice needs no logits (nor the cost of unembedding)
                    corr_last = self._clean_last_logits = torch.zeros(B, 1)
            # answers and their defaults exactly as activation patching chooses them (the
            # explicit answers' strings decoded at once, for the descriptions and notes)
            if handle.tokenizer is not None:
                answers = resolve(handle, answers, "answer")
                wrongs = resolve(handle, wrongs, "wrong answer")
                handle.token_strs([a for a in answers + wrongs if a is not None])
            answer_ids, wrong_ids, notes = [], [], []
            for i in range(B):
                _, a, w, why = choose_metric(handle, self._metric_arg, self._clean_last_logits[i],
                                             corr_last[i], answers[i], wrongs[i])
                answer_ids.append(a)
                wrong_ids.append(w)
                notes += [f"prompt {i}: {n}" if B > 1 else n for n in why]
            self.notes = notes
            device = final.device
            self.answer_ids = torch.tensor([a if a is not None else 0 for a in answer_ids], device=device)
            self.wrong_ids = torch.tensor([w if w is not None else 0 for w in wrong_ids], device=device)
            if handle.tokenizer is not None:
                handle.token_strs([t for t in answer_ids + wrong_ids if t is not None])
            self._answers = [handle.token_str(a) for a in answer_ids if a is not None]
            self._wrong = [handle.token_str(w) for w in wrong_ids if w is not None] or None
            # clean run's metric and its gradient at hook_q/k/v, hook_mlp_in and the final residual
            metric = self._metric(final)
            self.clean_metric = self._finite(metric, "clean")
            # KL's gradient is 0 at the clean run (its EAP scores are 0); a metric with no
            # gradient path at all (detached, argmax) is refused by EAP and EAP-IG (_gradient_metric)
            self.has_gradient = bool(metric.requires_grad)
            takes_grad = self.has_gradient and self.metric_name != "kl"
            live = (both if fused else clean)["live"]
            grad_of = {name: g[:B] for name, g in
                       self._grads_at(metric if takes_grad else None, live_final, live).items()}
        self._clean_rec = {k: v for k, v in clean.items() if k != "live"} | {"final": final.detach()}
        self._corr_rec = {k: v for k, v in corr.items() if k != "live"} | {"final": corr_final}
        self._clean_final = final.detach()
        self._clean_resid_pre = clean["pre"]
        self._corr_final = corr_final
        self._corr_resid_pre = corr["pre"]
        self._corr_resid_mid = corr["mid"]
        with torch.no_grad():
            self.corrupted_metric = self._finite(self._metric(self._corr_final), "corrupted")
            gap = abs(self.clean_metric - self.corrupted_metric)
            if gap <= 1e-6 * max(1.0, abs(self.clean_metric), abs(self.corrupted_metric)):
                raise MetricError(
                    f"the {self.metric_name} is {self.clean_metric:.6g} on the clean run and "
                    f"{self.corrupted_metric:.6g} on the corrupted one: they are equal, so no circuit "
                    f"can be told apart (faithfulness divides by their difference). Use a corrupted "
                    f"prompt that changes the behaviour, or another metric."
                )
            grad_dst = self._dest_grads(grad_of, clean["pre"], 1)  # heads' and the rest's [dst, bp * d]
        # EAP: score[src, dst] = sum over batch, pos, d_model of (a^corr - a^clean)_src * grad_dst
        self.eap_dense, self.eap_scores = self._scores(grad_dst)
        self.fused = fused
        #: seconds the set-up runs and the last ACDC run took (what a recompute is expected to cost)
        self.seconds = {"setup": time.perf_counter() - t0, "acdc": getattr(self, "seconds", {}).get("acdc", 0.0)}

    def _dest_grads(self, grad_of: dict[str, torch.Tensor], pre: list[torch.Tensor],
                    reps: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Destination gradients (float32) from the gradients at ``hook_q/k/v``,
        ``hook_mlp_in`` and the final residual (``grad_of``) of a run of ``reps`` copies of the
        batch (whose ``resid_pre`` are ``pre``), summed over the copies: ``(heads [layer * 3 *
        head, batch * pos * d_model], rest [mlp... logits, batch * pos * d_model])``, in the
        order of :meth:`_dest_columns`.

        A head's ``hook_q/k/v`` gradient is mapped back through ``W`` and ``ln1`` to its own
        input (exactly what a separate per-head input would receive): several layers per
        batched product and closed-form norm backward where the norms allow it (a small
        model's cost here is the number of operations, not their size)."""
        L, H = self.graph.n_layers, self.graph.n_heads
        d = self.handle.d_model
        attns = [self._attn(layer) for layer in range(L)]
        first = grad_of["q0"]  # [reps * batch, pos, head, d_head]
        n = first.shape[0] * first.shape[1]
        with torch.no_grad():
            # the gradients of each layer's ln1 output, per head and port, become those of its
            # input in place, a few layers at a time: about as many as fit in CHUNK_FLOATS (a
            # larger block falls out of the cache between the passes over it), at least one
            heads = torch.empty(L, 3 * H, n, d, dtype=torch.float32, device=first.device)
            stack = self._ln1_stack()
            xs = torch.stack(pre).flatten(1, 2) if stack is not None else None
            per = max(1, self.CHUNK_FLOATS // (3 * H * n * d))
            for lo in range(0, L, per):
                hi = min(L, lo + per)
                w_qkv = torch.cat([w for a in attns[lo:hi] for w in (a.W_Q, a.W_K, a.W_V)]).detach().float()
                g_qkv = torch.cat([grad_of[f"{port}{layer}"] for layer in range(lo, hi) for port in ("q", "k", "v")],
                                  dim=2).float().flatten(0, 1).transpose(0, 1)  # [layers * 3H, n, d_head]
                block = heads[lo:hi]
                torch.bmm(g_qkv, w_qkv.transpose(1, 2), out=block.view(-1, n, d))
                if stack is not None and xs is not None:
                    kind, eps, w = stack  # float32 in place: the result is ``block`` itself
                    _fast.norm_vjp(kind, eps, None if w is None else w[lo:hi], xs[lo:hi], block)
                else:
                    for layer in range(lo, hi):
                        view = heads[layer]
                        done = self._ln_vjp(layer, pre[layer].flatten(0, 1), view)
                        if done is not view:
                            view.copy_(done)
            mlps = [grad_of[f"mlp{layer}"] for layer in range(L)] if self.graph.has_mlp else []
            rest = torch.stack([g.float().reshape(-1, d) for g in [*mlps, grad_of["final"]]])
        out = heads.reshape(L * 3 * H, reps, -1), rest.reshape(rest.shape[0], reps, -1)
        return (out[0][:, 0], out[1][:, 0]) if reps == 1 else (out[0].sum(1), out[1].sum(1))

    @functools.cached_property
    def _dest_columns(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The destination indices of :meth:`_dest_grads`'s two blocks: every layer's q, k, v
        inputs of its heads, then every MLP and the logits."""
        heads, mlps, logits = self._dest_slices()
        head_cols = [i for layer in heads for port in ("q", "k", "v") for i in range(*layer[port])]
        rest_cols = [m for m in mlps if m >= 0] + [logits]
        return torch.tensor(head_cols), torch.tensor(rest_cols)

    def _scores(self, grad_dst: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(dense [src, dst], per-edge [edge])`` scores: (corrupted - clean) source outputs,
        summed over batch, positions and d_model against the destination gradients."""
        with torch.no_grad():
            delta = self._sources(self._corr_rec, self._clean_rec).float()  # [src, bp, d]
            flat = delta.reshape(delta.shape[0], -1)
            dense = torch.zeros(self.graph.n_sources, self.graph.n_dests, dtype=torch.float32)
            for cols, grads in zip(self._dest_columns, grad_dst, strict=True):
                dense[:, cols] = (flat @ grads.T).cpu()
        dense = torch.where(self._allowed, dense, torch.zeros_like(dense))
        return dense, dense[self.graph.edge_src, self.graph.edge_dst].contiguous()

    def eap_ig_scores(self, steps: int = IG_STEPS) -> torch.Tensor:
        """``[edge]`` scores by EAP with integrated gradients (EAP-IG; Hanna, Pezzelle &
        Belinkov 2024, "Have Faith in Faithfulness"): as EAP, but each destination's gradient is
        averaged over ``steps`` runs whose input embeddings go from the corrupted prompts' to the
        clean prompts' (``corrupted + k/steps * (clean - corrupted)``, ``k = 1..steps``; the
        last is the clean run, so ``steps=1`` is plain EAP). Where attention saturates, the
        clean run's gradient alone misses edges the path integral sees.

        Costs ``steps`` forward and backward passes (run as one batch for small models)."""
        if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
            raise CircuitError(f"EAP-IG's steps must be an integer >= 1, got {steps!r}.")
        self.refresh()
        self._gradient_metric("EAP-IG")
        if steps in self._ig_cache:
            return self._ig_cache[steps].clone()
        B = self.batch
        self._check_direct()
        clean0, corr0 = self._clean_resid_pre[0], self._corr_resid_pre[0]  # [b, p, d]
        per_run = max(1, min(steps, int(self.FUSE_BELOW // max(self._work(), 1))))
        alphas = torch.arange(1, steps + 1, dtype=torch.float64) / steps
        grad_dst: tuple[torch.Tensor, torch.Tensor] | None = None
        for start in range(0, steps, per_run):
            chunk = alphas[start:start + per_run]
            m = len(chunk)
            a = chunk.to(clean0.dtype).repeat_interleave(B).to(clean0.device)[:, None, None]
            inputs = (corr0.repeat(m, 1, 1) + a * (clean0 - corr0).repeat(m, 1, 1)).requires_grad_(True)
            with self._edge_mode(grad=True):
                rec = self._record(self.clean_tokens.repeat(m, 1), grad=True, resid_pre0=inputs)
                final = rec["final"]
                metric = torch.stack([self._metric(final[k * B:(k + 1) * B]) for k in range(m)]).sum() / steps
                grad_of = self._grads_at(metric, final, rec["live"])
            pre = rec["pre"]
            del rec, final, metric  # the autograd graph goes with them
            part = self._dest_grads(grad_of, pre, m)
            grad_dst = part if grad_dst is None else (grad_dst[0].add_(part[0]), grad_dst[1].add_(part[1]))
        assert grad_dst is not None
        _, scores = self._scores(grad_dst)
        self._ig_cache[steps] = scores
        return scores.clone()


    def _gradient_metric(self, method: str) -> None:
        """Raise :class:`MetricError` if the metric has no gradient for ``method`` to follow."""
        if not self.has_gradient:
            raise MetricError(
                f"the metric {self.metric_name!r} returns a value without a gradient (it detaches "
                f"the logits, or goes through .item(), NumPy, argmax or a comparison), so {method} "
                f"would score every edge 0. Write it with differentiable torch operations on the "
                f"logits, or use ACDC (exact patching, no gradients: acdc(), or method='acdc' in "
                f"show_circuit)."
            )

