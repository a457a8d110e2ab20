"""The :class:`Scrubber`: the clean run over the dataset, the model's own arithmetic on cached
activations, and evaluation by resampling (the planning half is :class:`.plan._Planner`)."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Generator, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from ... import _fast
from ..._fingerprint import JOB_BUDGET, Stamp, check_unchanged, model_fingerprint
from ..._model import ModelHandle
from ..._steps import run_to_end
from ...errors import HypothesisError, MetricError, PromptError
from .dataset import dataset_tokens
from .hypothesis import FEATURES, Feature, HypothesisNode, Prefix, ScrubResult
from .plan import _Classes, _Key, _Plan, _Planner, default_metric_name


class Scrubber(_Planner):
    """A model and a dataset prepared for scrubbing. The clean run and the feature classes are
    computed once, so evaluating several hypotheses (as the widget does) costs only resampling.

    Args:
        model: a TransformerLens model or :class:`~mechwidgets._model.ModelHandle`.
        dataset: see :func:`dataset_tokens`.
        positions: positions whose next-token prediction is scored (default: the repeated half
            for zoo induction sequences, else every position but the last).
        metric: ``None`` for the next-token cross-entropy, or ``metric(logits [m, d_vocab],
            targets [m]) -> [m]`` per-prediction values (either direction: only ratios of
            differences are reported).
        features: extra named features offered beside :data:`FEATURES` (``{name: fn}`` or a
            list of :class:`Feature`).
        n_seeds: seeds per evaluation (default 5). seed: the first seed (default 0).
        min_agreeing: every prefix a node may resample must have at least this many agreeing
            prefixes (itself included) in the dataset (default 2), else the dataset is too small.
        max_inputs: refuse larger datasets (default 4096).
        max_floats: bound on the activation floats processed at once (memory; default 8 M).
        share_rows: let the predictions of one sequence share the key and value rows of a head
            that occurs once in each prediction's tree (see :meth:`_head`; unbiased, and about
            ``len(positions)`` times fewer rows). ``False`` draws every row of every prediction
            separately.
    """

    def __init__(
        self,
        model: Any,
        dataset: Any,
        *,
        positions: Sequence[int] | None = None,
        metric: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
        features: Mapping[str, Any] | Sequence[Any] | None = None,
        n_seeds: int = 5,
        seed: int = 0,
        min_agreeing: int = 2,
        max_inputs: int = 4096,
        max_floats: int = 1 << 23,
        share_rows: bool = True,
    ) -> None:
        handle = ModelHandle.wrap(model)
        self.handle = handle
        self.share_rows = bool(share_rows)
        self.n_seeds = _positive_int(n_seeds, "n_seeds")
        self.min_agreeing = _positive_int(min_agreeing, "min_agreeing")
        self.seed = int(seed)
        self.max_rows = max(1, int(max_floats) // handle.d_model)
        self.metric = metric
        self.metric_name = default_metric_name(metric)
        self.feature_table: dict[str, Feature] = dict(FEATURES)
        self._names: dict[Any, str] = {}  # bare callables → their (unique) name
        self._classes: dict[Any, _Classes] = {}  # keyed by the feature function
        self._register_extra(features)

        tokens, default_positions = dataset_tokens(handle, dataset, max_inputs=max_inputs)
        n, P = tokens.shape
        self.tokens = tokens
        self.n_inputs, self.length = n, P
        if positions is None:
            positions = default_positions if default_positions is not None else range(P - 1)
        pos_list = [int(p) for p in positions]
        if not pos_list or any(not 0 <= p <= P - 2 for p in pos_list):
            raise PromptError(
                f"positions must be a non-empty list of positions in 0..{P - 2} (the output at "
                f"position p is scored on the token at p + 1); got {list(positions)[:10]}."
            )
        self.positions = sorted(set(pos_list))
        #: [n_references] flat prefix ids (s * P + p) whose output is scored, and their targets
        self.refs = (torch.arange(n)[:, None] * P + torch.tensor(self.positions)[None, :]).reshape(-1)
        self.targets = tokens.reshape(-1)[self.refs + 1]
        self._prefixes: list[Prefix] | None = None
        self._points: dict[_Key, tuple[list[_Key], torch.Tensor]] = {}
        #: when a list, every draw is recorded as (node path, references, sampled prefixes)
        self._trace: list[tuple[str, torch.Tensor, torch.Tensor]] | None = None
        self._agreeing_ok: set[tuple[Any, bool]] = set()  # (feature fn, scored) checks passed
        self._constant: dict[tuple[_Key, int], bool] = {}  # see _constant_on_classes
        self._prepare()
        #: the model as the clean run saw it (see :meth:`refresh`)
        self._stamp = Stamp(handle.model)

    def refresh(self) -> str | None:
        """Redo the clean run (cached activations, clean metric) if the model
        changed since it was taken (weights, dtype, device or hooks: see
        :func:`~mechwidgets._fingerprint.model_fingerprint`); :meth:`evaluate_steps` calls it
        first. Returns what changed, or ``None`` when nothing did."""
        change = self._stamp.stale()
        if change is not None:
            self._points.clear()
            self._constant.clear()
            self._prepare()
            self._stamp.renew()
        return change


    def is_current(self, result: ScrubResult) -> bool:
        """Whether ``result`` was computed on the model as it is now (weights, dtype, device,
        hooks): if not, its numbers are an earlier model's and the hypothesis should be
        scrubbed again."""
        return result.fingerprint is not None and result.fingerprint == model_fingerprint(self.handle.model)

    # ------------------------------------------------------------------ the clean run
    def _prepare(self) -> None:
        """One clean forward pass over the dataset, caching every component's activation."""
        h = self.handle
        model = h.model
        self.device = h.device
        L, H, d = h.n_layers, h.n_heads, h.d_model
        for name in ("hook_embed", "hook_pos_embed"):
            if not h.has_hook(name):
                raise HypothesisError(
                    f"this model has no {name!r} hook: causal scrubbing needs separate token and "
                    f"positional embeddings (rotary or ALiBi positions are not supported)."
                )
        self.attn_only = bool(getattr(h.cfg, "attn_only", False)) or not all(
            h.has_hook(f"blocks.{layer}.hook_mlp_out") for layer in range(L)
        )
        z_names = [h.hook_name("z", layer) for layer in range(L)]
        names = ["hook_embed", "hook_pos_embed", *z_names]
        names += [h.hook_name("resid_pre", layer) for layer in range(L)]
        names += [h.hook_name("resid_post", L - 1)]
        if not self.attn_only:
            names += [h.hook_name("mlp_out", layer) for layer in range(L)]
        self._check_unhooked()
        self._points = {}  # their biases are the weights' of this preparation
        P = self.length
        NP = self.n_inputs * P
        cache: dict[str, list[torch.Tensor]] = {n: [] for n in names}
        clean: list[torch.Tensor] = []
        batch = max(1, (1 << 15) // P)
        with h.session():
            for start in range(0, self.n_inputs, batch):
                toks = self.tokens[start:start + batch].to(self.device)
                logits, c = h.run_with_cache(toks, names)
                for n_ in names:
                    t = c[n_].float()
                    cache[n_].append(t.expand(len(toks), *t.shape[1:]) if t.shape[0] != len(toks) else t)
                in_batch = (self.refs >= start * P) & (self.refs < (start + len(toks)) * P)
                rows = (self.refs[in_batch] - start * P).to(self.device)
                lg = logits.reshape(-1, logits.shape[-1])[rows]
                clean.append(self._metric_values(lg, self.targets[in_batch].to(self.device)))
        full = {n_: torch.cat(v).reshape(NP, *v[0].shape[2:]) for n_, v in cache.items()}
        del cache
        self.clean_value = float(torch.cat(clean).mean())
        #: each residual-stream component's clean activation at every prefix, [NP, d_model]
        self.comp: dict[_Key, torch.Tensor] = {
            ("embed",): full["hook_embed"],
            ("pos_embed",): full["hook_pos_embed"],
        }
        for layer, z_name in enumerate(z_names):
            w_o = model.blocks[layer].attn.W_O.detach().float()
            out = torch.einsum("nhe,hed->hnd", full[z_name], w_o)
            for head in range(H):
                self.comp[("head", layer, head)] = out[head].contiguous()
            if not self.attn_only:
                self.comp[("mlp", layer)] = full[h.hook_name("mlp_out", layer)]
        self.resid_pre = [full[h.hook_name("resid_pre", layer)] for layer in range(L)]
        self.resid_final = full[h.hook_name("resid_post", L - 1)]
        assert all(t.shape == (NP, d) for t in [*self.comp.values(), *self.resid_pre])
        # every component stacked, so that summing components taken at different prefixes is one
        # fused gather-and-sum (F.embedding_bag) instead of one gather per component
        self._offset = {key: i * NP for i, key in enumerate(self.comp)}
        self._stack = torch.cat(list(self.comp.values()))
        self._self_check()


    # ------------------------------------------------------------------ the model's maths
    # (the execution core's arithmetic, mechwidgets._fast, on the live weights, in float32)
    def _check_unhooked(self) -> None:
        """Refuse a model with hooks attached: scrubbing rebuilds every node from its inputs with
        the model's own arithmetic, which a hook (an SAE spliced in, a steering vector) would
        change without it knowing."""
        hooked = _fast.hooked_modules(self.handle.model)
        if hooked:
            raise HypothesisError(
                f"causal scrubbing rebuilds every node from its inputs, so it cannot honour hooks "
                f"attached to the model ({', '.join(hooked[:3])}{', ...' if len(hooked) > 3 else ''}). "
                f"Remove them (e.g. `model.reset_hooks(including_permanent=True)`) or fold what "
                f"they do into the weights, then scrub again."
            )

    def _attn_scale(self, attn: Any) -> float:
        scale = float(getattr(attn, "attn_scale", 0.0) or 0.0)
        if scale <= 0:
            scale = math.sqrt(self.handle.d_head) if getattr(self.handle.cfg, "use_attn_scale", True) else 1.0
        return scale

    def _attend(
        self, layer: int, head: int, q_in: torch.Tensor, k_in: torch.Tensor, v_in: torch.Tensor,
        key_index: torch.Tensor, valid: torch.Tensor,
    ) -> torch.Tensor:
        """A head's output (``z @ W_O``, no bias) for m queries.

        ``q_in [m, d]`` are the queries' residual streams (before ``ln1``), ``k_in``/``v_in
        [r, d]`` key and value residual streams; ``key_index [m, width]`` says which row of those
        each query reads at each key position, and ``valid [m, width]`` which positions are keys
        of its prefix.
        """
        block = self.handle.model.blocks[layer]
        attn = block.attn
        ln1 = block.ln1
        q, k, v = (_fast.head_projection(attn, head, port, _fast.norm(ln1, x.float()))
                   for port, x in zip("QKV", (q_in, k_in, v_in), strict=True))
        k_pad, v_pad = k[key_index], v[key_index]  # [m, width, d_head]
        z = _fast.attend(q[:, None, None, :], k_pad[:, None], v_pad[:, None], self._attn_scale(attn),
                         mask=valid[:, None, None, :])[:, 0, 0]
        return z @ attn.W_O[head].detach().float()

    def _mlp(self, layer: int, resid: torch.Tensor) -> torch.Tensor:
        return _fast.mlp(self.handle.model.blocks[layer], resid).float()

    def _unembed(self, resid: torch.Tensor) -> torch.Tensor:
        return _fast.unembed(self.handle.model, resid).float()

    def _metric_values(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if self.metric is None:
            return F.cross_entropy(logits.float(), targets, reduction="none")
        try:
            out = self.metric(logits, targets)
        except Exception as exc:
            raise MetricError(f"the metric raised {type(exc).__name__}: {exc}") from exc
        out = torch.as_tensor(out, dtype=torch.float32, device=logits.device)
        if out.ndim == 0:
            out = out.expand(len(targets))
        if out.shape != (len(targets),) or not bool(torch.isfinite(out).all()):
            raise MetricError(
                f"the metric must return finite per-prediction values of shape [{len(targets)}] "
                f"(or a finite scalar); got shape {tuple(out.shape)}, finite: "
                f"{bool(torch.isfinite(out).all())}."
            )
        return out

    def _self_check(self) -> None:
        """Rebuild a few inputs' clean run from the cached components; refuse a model whose
        computation this module does not mirror exactly."""
        P = self.length
        x = torch.arange(min(self.n_inputs, 4) * P, device=self.device)
        pos = x % P
        j = torch.arange(P, device=self.device)
        valid = j[None, :] <= pos[:, None]
        keys = (x // P)[:, None] * P + torch.minimum(j[None, :], pos[:, None])  # [m, P]
        checks: list[tuple[str, torch.Tensor, torch.Tensor]] = []
        with torch.no_grad():
            for layer in range(self.handle.n_layers):
                resid = self.resid_pre[layer]
                checks.append((f"the residual stream before layer {layer}",
                               self._rebuild(("attn_in", layer), x), resid[x]))
                for head in range(self.handle.n_heads):
                    got = self._attend(layer, head, resid[x], resid, resid, keys, valid)
                    checks.append((f"head L{layer}H{head}", got, self.comp[("head", layer, head)][x]))
                if not self.attn_only:
                    got = self._mlp(layer, self._rebuild(("mlp_in", layer), x))
                    checks.append((f"the MLP of layer {layer}", got, self.comp[("mlp", layer)][x]))
            checks.append(("the final residual stream", self._rebuild(("final",), x), self.resid_final[x]))
        for where, got, want in checks:
            err = float((got - want).abs().max()) / (1.0 + float(want.abs().max()))
            if not err <= 1e-3:
                raise HypothesisError(
                    f"causal scrubbing rebuilds each node from its inputs, and could not reproduce "
                    f"{where} of this model (relative difference {err:.2e}). Supported: "
                    f"TransformerLens models with absolute positional embeddings, LayerNorm or "
                    f"RMSNorm, and sequential attention and MLP blocks; not rotary or ALiBi "
                    f"positions, parallel attention and MLP, or attention soft-capping."
                )

    def _rebuild(self, point: _Key, x: torch.Tensor) -> torch.Tensor:
        """The clean residual stream at ``point`` rebuilt from its cached components."""
        comps, bias = self._point(point)
        return self._gather_sum([x + self._offset[key] for key in comps]) + bias

    def _gather_sum(self, columns: list[torch.Tensor]) -> torch.Tensor:
        """``sum_i stack[columns[i]]``: components, each at its own prefix, summed in one pass."""
        return F.embedding_bag(torch.stack(columns, 1), self._stack, mode="sum")


    # ------------------------------------------------------------------ evaluation
    def _rows_factor(self, plan: _Plan) -> int:
        """How many activation rows one scored prediction costs at most under ``plan``."""
        kids = [*plan.children.values(), *([plan.rest] if plan.rest else [])]
        if plan.kind == "head" and not plan.whole:
            # every key position is a row, named input or not
            return max([self.length] + [self._rows_factor(c) * (1 if c.kind == "q" else self.length)
                                        for c in kids])
        return max([1] + [self._rows_factor(c) for c in kids])

    def _random(self, refs: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        return torch.randint(0, len(self.resid_final), refs.shape, generator=gen, device=refs.device)

    def _sample(self, plan: _Plan, refs: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        x = refs if plan.classes is None or plan.constant else plan.classes.sample(refs, gen)
        if self._trace is not None:
            self._trace.append((plan.path, refs, x))
        return x

    def _assemble(self, point: _Key, plan: _Plan, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """The residual stream read at ``point`` for references ``x``: the sum of its components,
        each evaluated on its own sample (named ones recursively, the others each on a random
        prefix, or all on one prefix agreeing on the ``resid`` node's feature). Components read
        from the cache are summed in one fused gather."""
        comps, bias = self._point(point)
        columns, random_offsets, recomputed = [], [], []
        if plan.rest is not None:  # every unnamed component at one prefix: one cached sum
            columns.append(self._sample(plan.rest, x, gen) + self._rest_offset(point, plan))
        for key in comps:
            child = plan.children.get(key)
            if child is None:
                if plan.rest is None:
                    random_offsets.append(self._offset[key])
            elif child.whole:
                columns.append(self._sample(child, x, gen) + self._offset[key])
            else:
                recomputed.append(self._component(child, x, gen))
        if random_offsets:  # each unnamed component at its own random prefix
            draws = torch.randint(0, len(self.resid_final), (len(x), len(random_offsets)),
                                  generator=gen, device=x.device)
            columns += list((draws + torch.tensor(random_offsets, device=x.device)).unbind(1))
        total = (self._gather_sum(columns) if columns else torch.zeros(len(x), len(bias), device=x.device)) + bias
        for value in recomputed:
            total += value
        return total

    def _rest_offset(self, point: _Key, plan: _Plan) -> int:
        """Where, in the stacked components, the sum of the components at ``point`` that
        ``plan`` does not name (what its ``resid`` child stands for) starts: computed once, at
        every prefix, and appended to the stack."""
        key = ("rest", point, tuple(sorted(plan.children, key=repr)))
        if key not in self._offset:
            total = torch.zeros_like(self.resid_final)
            for comp in self._point(point)[0]:
                if comp not in plan.children:
                    total += self.comp[comp]
            self._offset[key] = len(self._stack)
            self._stack = torch.cat([self._stack, total])
        return self._offset[key]

    def _component(self, plan: _Plan, refs: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """A recomputed component's activation for references ``refs`` under ``plan``."""
        x = self._sample(plan, refs, gen)
        if plan.kind == "head":
            return self._head(plan, x, gen)
        return self._mlp(plan.key[1], self._assemble(("mlp_in", plan.key[1]), plan, x, gen))

    def _head_input(self, head: _Plan, which: str, refs: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        layer = head.key[1]
        child = head.children.get((which, *head.key[1:]))
        if child is None:  # not named: the whole input from a random prefix
            return self.resid_pre[layer][self._random(refs, gen)]
        x = self._sample(child, refs, gen)
        if child.whole:
            return self.resid_pre[layer][x]
        return self._assemble(("attn_in", layer), child, x, gen)

    def _head(self, plan: _Plan, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """A head's output at prefixes ``x``, recomputed from treeified inputs: the query, and the
        key and the value at every key position of every prefix, are separately sampled rows.

        A head that occurs once in each prediction's tree (no key or value edge above it) shares
        its key and value rows between the predictions of one sequence: row ``j`` of sequence
        ``s`` is drawn once and read by every query of ``s`` at or after ``j``. Each prediction's
        own tree still has a separate draw per path, so its expected loss is unchanged (the
        draws are merely common to several predictions); the rows drop from one per (prediction,
        key) to one per (sequence, key).
        """
        P = self.length
        _, layer, head = plan.key
        pos = x % P
        seq = x // P
        j = torch.arange(int(pos.max()) + 1, device=x.device)
        valid = j[None, :] <= pos[:, None]  # [m, width]: the key positions of each query's prefix
        if plan.once and self.share_rows:
            uniq, inverse = torch.unique(seq, return_inverse=True)
            keys = (uniq[:, None] * P + j[None, :]).reshape(-1)  # every (sequence, key position)
            key_index = inverse[:, None] * len(j) + j[None, :]
        else:
            keys = (seq[:, None] * P + j[None, :])[valid]  # one row per (query, key position)
            key_index = torch.zeros(valid.shape, dtype=torch.long, device=x.device)
            key_index[valid] = torch.arange(len(keys), device=x.device)
        q_in = self._head_input(plan, "q", x, gen)
        k_in = self._head_input(plan, "k", keys, gen)
        v_in = self._head_input(plan, "v", keys, gen)
        return self._attend(layer, head, q_in, k_in, v_in, key_index, valid)

    def _evaluate_once(
        self, plan: _Plan, gen: torch.Generator, progress: dict[str, Any], job: Stamp
    ) -> Generator[dict[str, Any], None, float]:
        """Mean metric under ``plan`` for one seed, chunk by chunk (yields ``progress`` between
        chunks)."""
        refs = self.refs.to(self.device)
        targets = self.targets.to(self.device)
        chunk = max(1, min(self.max_rows // self._rows_factor(plan), (1 << 22) // self.handle.d_vocab))
        total = 0.0
        for start in range(0, len(refs), chunk):
            check_unchanged(job, "scrubbing", budget=JOB_BUDGET)
            r = refs[start:start + chunk]
            with torch.no_grad():
                resid = self.resid_final[r] if plan.whole else self._assemble(("final",), plan, r, gen)
                values = self._metric_values(self._unembed(resid), targets[start:start + chunk])
            total += float(values.sum())
            if start + chunk < len(refs):
                yield progress
        return total / len(refs)

    def evaluate_steps(
        self, hypothesis: HypothesisNode, *, n_seeds: int | None = None, seed: int | None = None
    ) -> Generator[dict[str, Any], None, ScrubResult]:
        """:meth:`evaluate` as a generator of progress ``{done, total, message}`` (the widget runs
        it one step at a time, so a newer request or a cancel gets in between). A model changed
        while it runs stops it within a few steps (always before it returns) with
        :class:`~mechwidgets.errors.ModelChangedError`."""
        t0 = time.perf_counter()
        self._check_unhooked()
        self.refresh()
        job = self._stamp.fork()  # the model these runs are of, even if a click refreshes them
        n_seeds = self.n_seeds if n_seeds is None else _positive_int(n_seeds, "n_seeds")
        seed = self.seed if seed is None else int(seed)
        plan = self.compile(hypothesis)
        random_plan = _Plan(("output",), "output", whole=False)  # every path from a random input
        random_vals, scrubbed_vals = [], []
        for k in range(n_seeds):
            progress = {"done": k, "total": n_seeds, "message": f"scrubbing: seed {k + 1} of {n_seeds}"}
            yield progress
            gen_random = torch.Generator(device=self.device).manual_seed(_seed(seed, k, 0))
            gen_scrub = torch.Generator(device=self.device).manual_seed(_seed(seed, k, 1))
            random_vals.append((yield from self._evaluate_once(random_plan, gen_random, progress, job)))
            scrubbed_vals.append((yield from self._evaluate_once(plan, gen_scrub, progress, job)))
        check_unchanged(job, "scrubbing")
        rnd = torch.tensor(random_vals)
        scr = torch.tensor(scrubbed_vals)
        denom = rnd - self.clean_value
        frac = (rnd - scr) / torch.where(denom == 0, float("nan"), denom)
        return ScrubResult(
            clean=self.clean_value,
            random=float(rnd.mean()),
            scrubbed=float(scr.mean()),
            fraction=float(frac.mean()),
            fraction_std=float(frac.std()) if n_seeds > 1 else 0.0,
            per_seed=torch.stack([rnd, scr, frac]),
            metric=self.metric_name,
            n_inputs=self.n_inputs,
            positions=list(self.positions),
            n_references=len(self.refs),
            hypothesis=hypothesis.copy(),
            seconds=time.perf_counter() - t0,
            fingerprint=job.fingerprint,
        )

    def evaluate(self, hypothesis: HypothesisNode, *, n_seeds: int | None = None, seed: int | None = None) -> ScrubResult:
        """Scrub ``hypothesis``: the clean, random and scrubbed metric and the loss recovered."""
        return run_to_end(self.evaluate_steps(hypothesis, n_seeds=n_seeds, seed=seed))



def _positive_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise HypothesisError(f"{name} must be a positive integer, got {value!r}.")
    return value


def _seed(seed: int, k: int, stream: int) -> int:
    return (seed * 1_000_003 + k * 7_919 + stream * 104_729) % (2**63 - 1)
