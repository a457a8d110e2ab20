"""The ground :class:`~mechwidgets.analysis.circuits.EdgePatcher` stands on: the model's checks,
the prompts' tokens, one run's mode and hooks, where each source and destination sits, the
metric's readout, and the source outputs of a recorded run."""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Iterator, Sequence
from typing import Any

import torch

from ... import _fast
from ..._model import ModelHandle
from ...errors import MetricError, ModelError, PromptError
from ..metrics import MetricFn, call_metric, kl_div
from .graph import CircuitGraph
from .inputs import Prompts, prompt_list


class PatcherBase:
    """What every part of :class:`~mechwidgets.analysis.circuits.EdgePatcher` reads: the model
    handle, the graph, the tokens, the metric and the cached runs (set by its constructor and
    :meth:`~mechwidgets.analysis.circuits.scoring.EapScoring._setup`)."""

    handle: ModelHandle
    graph: CircuitGraph
    metric_name: str
    _metric_fn: MetricFn | None
    batch: int
    lengths: list[int]
    last: torch.Tensor
    clean_tokens: torch.Tensor
    corrupted_tokens: torch.Tensor
    str_tokens: list[list[str]]
    corrupted_str_tokens: list[list[str]]
    answer_ids: torch.Tensor
    wrong_ids: torch.Tensor
    clean_metric: float
    corrupted_metric: float
    _clean_last_logits: torch.Tensor
    _clean_rec: dict[str, Any]
    _corr_rec: dict[str, Any]
    _clean_resid_pre: list[torch.Tensor]

    # ------------------------------------------------------------------ checks and inputs
    def _check_model(self) -> None:
        handle, cfg = self.handle, self.handle.cfg
        model = handle.model
        attn = getattr(model.blocks[0], "attn", None) if hasattr(model, "blocks") and len(model.blocks) else None
        weights = ("W_Q", "W_K", "W_V", "W_O", "b_Q", "b_K", "b_V")
        if attn is None or not all(hasattr(attn, w) for w in weights):
            raise ModelError(
                "circuit discovery needs a TransformerLens model with blocks whose attention "
                "exposes per-head weights (W_Q, W_K, W_V, W_O and their biases): a "
                "HookedTransformer (3.x) or a TransformerBridge (4.x) of a standard architecture."
            )
        missing = [name for name in self._hook_names() if name not in model.hook_dict]
        if missing:
            raise ModelError(
                f"circuit discovery reads every layer's residual, q/k/v, z and MLP hook points; "
                f"this model lacks {missing[:4]}{' ...' if len(missing) > 4 else ''}."
            )
        if handle.n_kv_heads != handle.n_heads:
            raise ModelError(
                "circuit discovery does not support grouped-query attention yet (this model has "
                f"{handle.n_kv_heads} key/value heads for {handle.n_heads} query heads)."
            )
        if getattr(cfg, "positional_embedding_type", "") == "shortformer" or getattr(cfg, "load_in_4bit", False):
            raise ModelError(
                "circuit discovery does not support shortformer positional embeddings or 4-bit "
                "weights: a head's query/key input could not be recomputed exactly."
            )
        if getattr(cfg, "use_normalization_before_and_after", False) or getattr(cfg, "original_architecture", "") in (
            "Olmo2ForCausalLM", "Olmo3ForCausalLM",
        ):
            raise ModelError(
                "circuit discovery needs a pre-norm model whose attention output is the sum of its "
                "heads' outputs; this model normalises the attention output after the heads."
            )

    def _hook_names(self) -> list[str]:
        """The TransformerLens hook points the analyses hook (the same names in 3.x and 4.x)."""
        cfg = self.handle.cfg
        ports = ["hook_resid_pre", "attn.hook_q", "attn.hook_k", "attn.hook_v", "attn.hook_z"]
        if not getattr(cfg, "attn_only", False):
            ports += ["hook_mlp_in", "hook_mlp_out"]
        last = self.handle.n_layers - 1
        return [f"blocks.{layer}.{p}" for layer in range(last + 1) for p in ports] + [f"blocks.{last}.hook_resid_post"]

    def _tokenize(self, clean: Prompts, corrupted: Prompts, max_positions: int) -> None:
        handle = self.handle
        clean_list = prompt_list(clean, "clean")
        corrupted_list = prompt_list(corrupted, "corrupted")
        if len(clean_list) != len(corrupted_list):
            raise PromptError(
                f"got {len(clean_list)} clean prompts but {len(corrupted_list)} corrupted ones: "
                f"pass one corrupted prompt per clean prompt."
            )
        n = len(clean_list)
        names = [f"{kind} prompt {i}" if n > 1 else f"{kind} prompt" for kind in ("clean", "corrupted") for i in range(n)]
        toks = [t[0] for t in handle.tokens_many(clean_list + corrupted_list, max_positions=max_positions, what=names)]
        clean_toks, corrupted_toks = toks[:n], toks[n:]
        for i, (ct, kt) in enumerate(zip(clean_toks, corrupted_toks, strict=True)):
            if ct.shape[0] != kt.shape[0]:
                raise PromptError(
                    f"{names[i]} is {ct.shape[0]} tokens but its corrupted twin is {kt.shape[0]}: edge "
                    f"patching needs pairs with the same number of tokens. Clean tokens: "
                    f"{self._labels(ct)}; corrupted tokens: {self._labels(kt)}."
                )
        lengths = [int(t.shape[0]) for t in clean_toks]
        width = max(lengths)
        device = handle.device
        self.batch = len(clean_toks)
        self.lengths = lengths
        self.last = torch.tensor([n - 1 for n in lengths], device=device)
        self.clean_tokens = torch.stack([self._pad(t, width) for t in clean_toks])
        self.corrupted_tokens = torch.stack([self._pad(t, width) for t in corrupted_toks])
        # (``#id`` labels for a model without a tokenizer)
        labels = handle.str_tokens_many(clean_toks + corrupted_toks)
        self.str_tokens, self.corrupted_str_tokens = labels[:self.batch], labels[self.batch:]

    def _mask(self, tokens: torch.Tensor) -> dict[str, torch.Tensor]:
        """Forward keyword arguments: with a left-padding tokenizer TransformerLens would mask the
        leading BOS tokens as padding, so every position is marked real (prompts here are
        right-padded, which a causal model never sees)."""
        if self.handle.pads_left:
            return {"attention_mask": torch.ones(tokens.shape[0], tokens.shape[1], dtype=torch.long, device=tokens.device)}
        return {}

    def _labels(self, tokens: torch.Tensor) -> list[str]:
        """The tokens as strings (``#id`` for a model without a tokenizer)."""
        return self.handle.str_tokens(tokens)

    @staticmethod
    def _pad(tokens: torch.Tensor, width: int) -> torch.Tensor:
        # right padding with the first token: causal attention keeps it out of earlier positions
        if tokens.shape[0] == width:
            return tokens
        return torch.cat([tokens, tokens[:1].expand(width - tokens.shape[0])])

    # ------------------------------------------------------------------ model mode
    @contextlib.contextmanager
    def _edge_mode(self, *, grad: bool = False) -> Iterator[None]:
        """One run against the model: eval mode, autograd only with ``grad``, and ``hook_mlp_in``
        on (MLP inputs of their own); the user's ``use_hook_mlp_in``, train/eval and grad modes
        are restored afterwards, whatever happens (the parameters' ``.grad`` are never touched:
        gradients come from ``torch.autograd.grad``).

        A model in training mode goes through :meth:`ModelHandle.session`. One already in eval
        mode skips its ``eval()``/``train()`` round trip, which walks every module and costs a
        good share of a small model's forward pass; the rest is restored the same way."""
        model, cfg = self.handle.model, self.handle.cfg
        if model.training:
            outer: contextlib.AbstractContextManager[Any] = self.handle.session(grad=grad)
        else:
            outer = torch.set_grad_enabled(grad)
        with outer:
            if not self.graph.has_mlp:
                yield
                return
            saved = cfg.use_hook_mlp_in
            try:
                cfg.use_hook_mlp_in = True
                yield
            finally:
                cfg.use_hook_mlp_in = saved

    @contextlib.contextmanager
    def _hooks(self, hooks: Sequence[tuple[str, Any]]) -> Iterator[None]:
        """Forward hooks ``fn(activation, hook)`` on TransformerLens hook points, removed on exit
        by their own handles (hooks anyone else attached stay; TransformerLens's ``hooks()``
        context would also walk every hook point of the model to clean up).

        A TransformerBridge hook point may hold a ``hook_conversion`` (``hook_q``/``hook_z`` carry
        ``[batch, pos, n_heads * d_head]``): ``fn`` sees the converted activation
        (``[batch, pos, head, d_head]``, as in 3.x) and a value it returns is reverted, as
        TransformerLens 4's own ``add_hook`` does."""
        hook_dict = self.handle.model.hook_dict
        handles = []
        try:
            for name, fn in hooks:
                point = hook_dict[name]
                conversion = getattr(point, "hook_conversion", None)
                if conversion is None:
                    handles.append(point.register_forward_hook(
                        lambda module, _inputs, output, fn=fn: fn(output, module)))
                    continue

                def converted(module: Any, _inputs: Any, output: torch.Tensor, fn: Any = fn,
                              conversion: Any = conversion) -> Any:
                    out = fn(conversion.convert(output), module)
                    return None if out is None else conversion.revert(out)

                handles.append(point.register_forward_hook(converted))
            yield
        finally:
            for handle in handles:
                handle.remove()

    # ------------------------------------------------------------------ weights and layout
    def _attn(self, layer: int) -> Any:
        return self.handle.model.blocks[layer].attn

    def _head_outs(self, layer: int, z: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """``[head, batch * pos, d_model]`` per-head outputs ``z_h @ W_O[h]`` (no ``b_O``)."""
        w_o = self._attn(layer).W_O  # [head, d_head, d_model]
        zs = z.reshape(-1, z.shape[-2], z.shape[-1]).transpose(0, 1).to(w_o.dtype)  # [head, bp, d_head]
        return torch.bmm(zs, w_o) if out is None else torch.bmm(zs, w_o, out=out)

    def _source_slices(self) -> tuple[list[tuple[int, int]], list[int]]:
        """Per layer: the source index range of its heads, and its MLP's source index (or -1)."""
        H = self.graph.n_heads
        per = H + (1 if self.graph.has_mlp else 0)
        heads = [(1 + layer * per, 1 + layer * per + H) for layer in range(self.graph.n_layers)]
        mlps = [1 + layer * per + H if self.graph.has_mlp else -1 for layer in range(self.graph.n_layers)]
        return heads, mlps

    def _dest_slices(self) -> tuple[list[dict[str, tuple[int, int]]], list[int], int]:
        """Per layer: ``{port: (first, last+1)}`` of its heads' q/k/v destinations; MLP dest; logits."""
        H = self.graph.n_heads
        per = 3 * H + (1 if self.graph.has_mlp else 0)
        heads = []
        for layer in range(self.graph.n_layers):
            base = layer * per
            heads.append({p: (base + i * H, base + (i + 1) * H) for i, p in enumerate(("q", "k", "v"))})
        mlps = [layer * per + 3 * H if self.graph.has_mlp else -1 for layer in range(self.graph.n_layers)]
        return heads, mlps, self.graph.n_dests - 1

    # ------------------------------------------------------------------ readout and metric
    def _last_logits(self, final: torch.Tensor, ids: torch.Tensor | None = None) -> torch.Tensor:
        """Logits at each prompt's last position: ``[batch, d_vocab]``, or ``[batch, k]`` for
        the columns ``ids`` (``[batch, k]``) only (no full unembedding)."""
        x = final[torch.arange(self.batch, device=final.device), self.last]  # [b, d]
        return self.handle.last_logits(x, ids)

    def _metric_values(self, final: torch.Tensor) -> torch.Tensor:
        """``[batch]``: the metric of each prompt, from the final residual stream."""
        name = self.metric_name
        if self._metric_fn is None and name == "logit_diff":
            logits = self._last_logits(final, torch.stack([self.answer_ids, self.wrong_ids], dim=1))
            return (logits[:, 0] - logits[:, 1]).float()
        logits = self._last_logits(final).float()
        if self._metric_fn is not None:
            return call_metric(self._metric_fn, logits, name)
        if name == "kl":
            return kl_div(logits, self._clean_last_logits)
        probs = logits.log_softmax(-1) if name == "logprob" else logits.softmax(-1)
        return probs.gather(-1, self.answer_ids[:, None])[:, 0]

    def _metric(self, final: torch.Tensor) -> torch.Tensor:
        """The metric averaged over the prompts (a scalar)."""
        return self._metric_values(final).mean()

    @staticmethod
    def _finite(value: torch.Tensor, what: str) -> float:
        out = float(value.detach())
        if not math.isfinite(out):
            raise MetricError(f"the metric on the {what} run is {out}: it must be a finite number.")
        return out


    def _final_resid(self, tokens: torch.Tensor, hooks: Sequence[tuple[str, Any]], start: int = 0) -> torch.Tensor:
        """The final residual stream (the last block's output, before ``ln_final``) of a forward
        pass of ``tokens`` with ``hooks``; from layer ``start`` on, entering it with the clean
        run's residual, where nothing before ``start`` is hooked.

        A ``HookedTransformer`` runs from ``start`` and stops after the last block. A
        TransformerBridge returns logits at ``stop_at_layer=n_layers`` and runs every block at
        ``start_at_layer`` anyway: a whole forward pass of the tokens, whose last block's
        ``hook_resid_post`` is read (the blocks before ``start`` compute the clean run)."""
        model, L = self.handle.model, self.graph.n_layers
        mask = self._mask(tokens)
        if start and _fast.restart_hooked(model, start):
            start = 0  # a user's hook there would see the cached residual a second time
        if self.handle.kind == "hooked":
            with self._hooks(hooks):
                if start == 0:
                    return model(tokens, stop_at_layer=L, **mask)
                return model(self._clean_resid_pre[start], start_at_layer=start, stop_at_layer=L, **mask)
        out: dict[str, torch.Tensor] = {}

        def final(x: torch.Tensor, hook: Any) -> None:
            out["final"] = x

        with self._hooks([*hooks, (f"blocks.{L - 1}.hook_resid_post", final)]):
            model(tokens, **mask)
        return out["final"]

    def _sources(self, rec: dict[str, Any], other: dict[str, Any] | None = None) -> torch.Tensor:
        """``[source, batch * pos, d_model]`` source outputs of a recorded run (or, with
        ``other``, their difference ``rec - other``: one ``W_O`` product per layer)."""
        with torch.no_grad():
            def diff(name: str, layer: int) -> torch.Tensor:
                x = rec[name][layer]
                return x if other is None else x - other[name][layer]

            d = self.handle.d_model
            parts = [diff("pre", 0).reshape(1, -1, d)]
            for layer in range(self.graph.n_layers):
                parts.append(self._head_outs(layer, diff("z", layer)))
                if self.graph.has_mlp:
                    parts.append(diff("mlp", layer).reshape(1, -1, d))
            return torch.cat(parts)

    @functools.cached_property
    def _clean_src(self) -> torch.Tensor:
        return self._sources(self._clean_rec)

    @functools.cached_property
    def _corr_src(self) -> torch.Tensor:
        return self._sources(self._corr_rec)
