"""One adapter over the TransformerLens versions this package supports.

:class:`ModelHandle` wraps a TransformerLens 3.x ``HookedTransformer`` or a 4.x
``TransformerBridge`` (``boot_native`` models included). It is the only module that knows which
version is installed. Everything else in the package talks to the model through it:

- tokens, str tokens and single-token answers, with errors that say how a string tokenises;
- hook names per layer and head (grouped-query attention aware);
- runs with hooks and cached runs, always inside :meth:`ModelHandle.session`, which
  guarantees the user's model is left as it was found: no hooks left (also after an
  exception), train/eval mode and grad mode restored. Nothing here writes to a parameter.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch

from .errors import AnswerError, ComponentError, ModelError, PromptError

HookFn = Callable[..., Any]
Hooks = Sequence[tuple[str | Callable[[str], bool], HookFn]]

#: Short names accepted by :meth:`ModelHandle.hook_name`, mapped to TransformerLens hook names.
_HOOK_TEMPLATES = {
    "resid_pre": "blocks.{layer}.hook_resid_pre",
    "resid_mid": "blocks.{layer}.hook_resid_mid",
    "resid_post": "blocks.{layer}.hook_resid_post",
    "attn_out": "blocks.{layer}.hook_attn_out",
    "mlp_out": "blocks.{layer}.hook_mlp_out",
    "mlp_post": "blocks.{layer}.mlp.hook_post",
    "z": "blocks.{layer}.attn.hook_z",
    "q": "blocks.{layer}.attn.hook_q",
    "k": "blocks.{layer}.attn.hook_k",
    "v": "blocks.{layer}.attn.hook_v",
    "pattern": "blocks.{layer}.attn.hook_pattern",
    "attn_scores": "blocks.{layer}.attn.hook_attn_scores",
    "result": "blocks.{layer}.attn.hook_result",
    "q_input": "blocks.{layer}.hook_q_input",
    "k_input": "blocks.{layer}.hook_k_input",
    "v_input": "blocks.{layer}.hook_v_input",
    "embed": "hook_embed",
    "pos_embed": "hook_pos_embed",
    "ln_final": "ln_final.hook_normalized",
}


def tl_major_version() -> int:
    """The installed TransformerLens major version (3 has ``HookedTransformer``, 4 does not)."""
    import transformer_lens

    try:  # 4.x raises ImportError (not AttributeError) for the removed class
        return 3 if getattr(transformer_lens, "HookedTransformer", None) is not None else 4
    except ImportError:
        return 4


@functools.cache
def _tl_version() -> tuple[int, ...]:
    """The installed TransformerLens version as numbers (``(0,)`` when unknown)."""
    from importlib.metadata import version

    try:
        return tuple(int(x) for x in version("transformer_lens").split(".")[:2])
    except Exception:  # pragma: no cover - not installed as a distribution, or a local version
        return (0,)


def hook_count(model: Any) -> int:
    """Number of hook functions attached to a TransformerLens model's hook points.

    Used by tests (and by the handle's own debug checks) to prove that nothing is left hooked.
    """
    total = 0
    for hp in model.hook_dict.values():
        total += len(hp._forward_hooks) + len(hp._backward_hooks)
        total += len(getattr(hp, "_forward_pre_hooks", {}))
        total += len(getattr(hp, "fwd_hooks", [])) + len(getattr(hp, "bwd_hooks", []))
    return total


class ModelHandle:
    """A TransformerLens model, with the few operations the analyses need.

    Args:
        model: a TransformerLens 3.x ``HookedTransformer`` or 4.x ``TransformerBridge``, or an
            existing handle (returned as is by :meth:`wrap`).

    Raises:
        ModelError: the object is not such a model (with what to pass instead).
    """

    def __init__(self, model: Any):
        if isinstance(model, ModelHandle):
            model = model.model
        needed = ("cfg", "to_tokens", "to_str_tokens", "hooks", "hook_dict")
        missing = [name for name in needed if not hasattr(model, name)]
        if missing or not isinstance(model, torch.nn.Module):
            raise ModelError(
                f"expected a TransformerLens model (a HookedTransformer under TransformerLens 3.x "
                f"or a TransformerBridge under 4.x), got {type(model).__module__}."
                f"{type(model).__qualname__}. Load one with e.g. "
                f"`mechwidgets.zoo.load('toy-lm')` or `HookedTransformer.from_pretrained(...)`; "
                f"a plain Hugging Face model must be wrapped by TransformerLens first."
            )
        if getattr(model, "tokenizer", None) is None:
            raise ModelError(
                "the model has no tokenizer attached, so prompts cannot be tokenised. Pass "
                "`tokenizer=` when building it (e.g. HookedTransformer(cfg, tokenizer=tok)) or "
                "use a zoo model: `mechwidgets.zoo.load('toy-lm')`."
            )
        self.model: Any = model
        self.kind = "bridge" if type(model).__name__ == "TransformerBridge" else "hooked"
        cfg: Any = model.cfg
        self.cfg: Any = cfg
        self.n_layers: int = int(cfg.n_layers)
        self.n_heads: int = int(cfg.n_heads)
        self.d_model: int = int(cfg.d_model)
        self.d_head: int = int(cfg.d_head)
        self.n_ctx: int = int(cfg.n_ctx)
        self.d_vocab: int = int(cfg.d_vocab)
        kv = getattr(cfg, "n_key_value_heads", None)
        self.n_kv_heads: int = int(kv) if kv else self.n_heads

    @classmethod
    def wrap(cls, model: Any) -> ModelHandle:
        """Return ``model`` if it already is a handle, else a new handle around it."""
        return model if isinstance(model, ModelHandle) else cls(model)

    # ------------------------------------------------------------------ tokens
    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def tokens(
        self,
        prompt: str | torch.Tensor | Sequence[int],
        *,
        max_positions: int | None = None,
        what: str = "prompt",
    ) -> torch.Tensor:
        """Tokenise a prompt (with the model's BOS) to a ``[1, pos]`` tensor on the model's device.

        Token tensors and lists are taken as they are (a 1-d tensor gains a batch axis).

        Raises:
            PromptError: empty prompt, or longer than ``n_ctx`` or ``max_positions``.
        """
        if isinstance(prompt, str):
            self._check_text(prompt, what)
            toks = self.model.to_tokens(prompt, truncate=False)
        else:
            toks = torch.as_tensor(prompt)
            if toks.ndim == 1:
                toks = toks[None]
            if toks.ndim != 2 or toks.shape[0] != 1:
                raise PromptError(
                    f"the {what} must be a string or a 1-d token tensor (or [1, pos]); got a "
                    f"tensor of shape {tuple(toks.shape)}."
                )
            if toks.shape[1] == 0:
                raise PromptError(f"the {what} is empty: pass some text to analyse.")
            if toks.dtype not in (torch.int64, torch.int32):
                raise PromptError(f"the {what} tokens must be integers, got {toks.dtype}.")
            bad = (toks < 0) | (toks >= self.d_vocab)
            if bool(bad.any()):
                raise PromptError(
                    f"the {what} holds token ids outside the vocabulary [0, {self.d_vocab}): "
                    f"{sorted(set(toks[bad].tolist()))[:5]}."
                )
        return self._checked_length(toks, max_positions, what)

    def tokens_many(
        self,
        prompts: Sequence[str | torch.Tensor | Sequence[int]],
        *,
        max_positions: int | None = None,
        what: Sequence[str] | None = None,
    ) -> list[torch.Tensor]:
        """:meth:`tokens` of several prompts (``what[i]`` names prompt ``i`` in errors): the
        strings go through one call of the tokenizer where TransformerLens's ``to_tokens`` is
        exactly that call (a ``HookedTransformer``), each prompt on its own otherwise."""
        names = list(what) if what is not None else [f"prompt {i}" for i in range(len(prompts))]
        texts = [i for i, p in enumerate(prompts) if isinstance(p, str)]
        encoded = self._encode_many([prompts[i] for i in texts], bos=bool(self.cfg.default_prepend_bos))  # type: ignore[misc]
        if encoded is None:
            return [self.tokens(p, max_positions=max_positions, what=w) for p, w in zip(prompts, names, strict=True)]
        out = dict(zip(texts, encoded, strict=True))
        device = self.device
        result = []
        for i, p in enumerate(prompts):  # checked in order, as one at a time
            if i in out:
                self._check_text(p, names[i])  # type: ignore[arg-type]
                result.append(self._checked_length(torch.tensor([out[i]], device=device), max_positions, names[i]))
            else:
                result.append(self.tokens(p, max_positions=max_positions, what=names[i]))
        return result

    def _encode_many(self, texts: list[str], *, bos: bool) -> list[list[int]] | None:
        """Token ids of ``texts`` from one tokenizer call, as TransformerLens 3.x's
        ``HookedTransformer.to_tokens(text, prepend_bos=bos)`` gives them one at a time (its
        code: the BOS token's text put in front where the tokenizer adds none, or the
        tokenizer's BOS dropped); ``None`` where that cannot be reproduced exactly (another
        model class or TransformerLens version, an overridden ``to_tokens``, an unset
        ``tokenizer_prepends_bos``, a tokenizer without a padding token: ``to_tokens`` raises)."""
        if not texts:
            return []
        tok = getattr(self.model, "tokenizer", None)
        if self.kind != "hooked" or tok is None or not callable(tok) or getattr(tok, "pad_token", None) is None:
            return None
        try:
            from transformer_lens import HookedTransformer
        except ImportError:  # pragma: no cover - TransformerLens 4.x
            return None
        prepends = getattr(self.cfg, "tokenizer_prepends_bos", None)
        if (
            _tl_version()[0] != 3
            or getattr(type(self.model), "to_tokens", None) is not HookedTransformer.to_tokens
            or "to_tokens" in vars(self.model)
            or prepends is None
        ):
            return None
        if bos and not prepends and tok.bos_token is not None:
            texts = [tok.bos_token + t for t in texts]
        ids = [list(i) for i in tok(texts, truncation=False)["input_ids"]]
        if not bos and prepends and tok.bos_token_id is not None:
            if getattr(tok, "padding_side", "right") != "right":
                return None  # TransformerLens then drops the first BOS token it finds
            ids = [i[1:] for i in ids]
        return ids

    def _check_text(self, prompt: str, what: str) -> None:
        if not prompt.strip():
            raise PromptError(f"the {what} is empty: pass some text to analyse.")

    def _checked_length(self, toks: torch.Tensor, max_positions: int | None, what: str) -> torch.Tensor:
        n = int(toks.shape[1])
        if n > self.n_ctx:
            raise PromptError(
                f"the {what} is {n} tokens long but the model's context window (n_ctx) is "
                f"{self.n_ctx}: shorten it by {n - self.n_ctx} tokens."
            )
        if max_positions is not None and n > max_positions:
            raise PromptError(
                f"the {what} is {n} tokens long, more than max_positions={max_positions}: shorten "
                f"it or pass a larger max_positions= (larger views take longer to send and draw)."
            )
        return toks.to(self.device).long()

    def str_tokens(self, tokens: torch.Tensor) -> list[str]:
        """The tokens as strings, one per position."""
        toks = tokens[0] if tokens.ndim == 2 else tokens
        return [str(s) for s in self.model.to_str_tokens(toks.cpu())]

    def str_tokens_many(self, tokens: Sequence[torch.Tensor]) -> list[list[str]]:
        """:meth:`str_tokens` of several 1-d token tensors at once: one call to a fast
        tokenizer's batch decoder (what ``to_str_tokens`` does, one decode per token, without
        its per-call overhead); other tokenizers go one prompt at a time."""
        backend = getattr(getattr(self.model, "tokenizer", None), "_tokenizer", None)
        if backend is None or not hasattr(backend, "decode_batch"):
            return [self.str_tokens(t) for t in tokens]
        ids = [[int(i)] for t in tokens for i in t.reshape(-1).tolist()]
        flat = backend.decode_batch(ids, skip_special_tokens=False)
        out, start = [], 0
        for t in tokens:
            n = t.numel()
            out.append([str(s) for s in flat[start:start + n]])
            start += n
        return out

    def single_token(self, text: str | int, *, what: str = "answer") -> int:
        """The id of a string that must be exactly one token (no BOS), or an id checked for range.

        Raises:
            AnswerError: the string is empty or tokenises to several tokens (the message shows how).
        """
        if isinstance(text, int) or (isinstance(text, torch.Tensor) and text.ndim == 0):
            tok = int(text)
            if not 0 <= tok < self.d_vocab:
                raise AnswerError(f"the {what} token id {tok} is outside [0, {self.d_vocab}).")
            return tok
        if not isinstance(text, str) or text == "":
            raise AnswerError(f"the {what} must be a non-empty string or a token id, got {text!r}.")
        toks = self.model.to_tokens(text, prepend_bos=False)[0]
        if toks.numel() != 1:
            pieces = [str(s) for s in self.model.to_str_tokens(toks.cpu())]
            raise AnswerError(
                f"the {what} {text!r} is {toks.numel()} tokens, {pieces}; it must be a single "
                f"token. Pass one of them (mind the leading space, e.g. ' Mary'), or a token id."
            )
        return int(toks[0])

    def single_tokens(self, texts: Sequence[str | int], *, what: str = "answer") -> list[int]:
        """:meth:`single_token` of several answers, the strings in one tokenizer call where that
        gives the same ids (see :meth:`tokens_many`)."""
        strs = sorted({t for t in texts if isinstance(t, str) and t != ""})
        encoded = self._encode_many(strs, bos=False)
        known = {} if encoded is None else {t: ids[0] for t, ids in zip(strs, encoded, strict=True) if len(ids) == 1}
        return [known[t] if isinstance(t, str) and t in known else self.single_token(t, what=what) for t in texts]

    def token_str(self, token: int) -> str:
        return self.token_strs([token])[0]

    def token_strs(self, tokens: Sequence[int]) -> list[str]:
        """Token ids as strings, decoded together and remembered on this handle (analyses name
        the same answer tokens many times)."""
        cache: dict[int, str] = self.__dict__.setdefault("_token_strs", {})
        ids = [int(t) for t in tokens]
        missing = sorted({t for t in ids if t not in cache})
        if missing:
            cache.update(zip(missing, self.str_tokens_many([torch.tensor(missing)])[0], strict=True))
        return [cache[t] for t in ids]

    # ------------------------------------------------------------------ names
    def hook_name(self, kind: str, layer: int | None = None) -> str:
        """TransformerLens hook name for a short component name and a layer.

        Raises:
            ComponentError: unknown kind, layer out of range, or a hook the model lacks.
        """
        if kind not in _HOOK_TEMPLATES:
            raise ComponentError(
                f"unknown component {kind!r}; known components: {sorted(_HOOK_TEMPLATES)}."
            )
        template = _HOOK_TEMPLATES[kind]
        if "{layer}" in template:
            self.check_layer(layer)
            name = template.format(layer=layer)
        else:
            name = template
        if name not in self.model.hook_dict:
            raise ComponentError(
                f"this model has no hook {name!r} (component {kind!r}). Attention-only models "
                f"have no MLP hooks, and q/k/v-input hooks need `model.set_use_split_qkv_input(True)`."
            )
        return name

    def has_hook(self, name: str) -> bool:
        return name in self.model.hook_dict

    def check_layer(self, layer: Any) -> int:
        if not isinstance(layer, int) or isinstance(layer, bool) or not 0 <= layer < self.n_layers:
            raise ComponentError(
                f"layer {layer!r} is out of range: this model has layers 0..{self.n_layers - 1}."
            )
        return layer

    def check_head(self, layer: Any, head: Any) -> tuple[int, int]:
        self.check_layer(layer)
        if not isinstance(head, int) or isinstance(head, bool) or not 0 <= head < self.n_heads:
            raise ComponentError(
                f"head {head!r} is out of range: layer {layer} has heads 0..{self.n_heads - 1}."
            )
        return layer, head

    def kv_head(self, head: int) -> int:
        """The key/value head a query head reads under grouped-query attention."""
        return head // (self.n_heads // self.n_kv_heads)

    # ------------------------------------------------------------------ runs
    @contextlib.contextmanager
    def session(self, *, grad: bool = False) -> Iterator[ModelHandle]:
        """Run code against the model and leave it exactly as it was.

        Inside, the model is in eval mode and autograd is on only if ``grad``. On exit (also on
        an exception) every hook added inside is removed, and train/eval and grad mode are
        restored. Parameters never receive gradients that outlive the session.
        """
        model = self.model
        modes = [(m, m.training) for m in model.modules()]  # each module's own (they may differ)
        grad_was = torch.is_grad_enabled()
        params_grad = {n: p.grad for n, p in model.named_parameters()} if grad else None
        model.eval()
        torch.set_grad_enabled(grad)
        try:
            yield self
        finally:
            torch.set_grad_enabled(grad_was)
            for m, training in modes:
                m.training = training
            if params_grad is not None:
                for n, p in model.named_parameters():
                    p.grad = params_grad[n]

    def run(
        self,
        tokens: torch.Tensor,
        *,
        fwd_hooks: Hooks = (),
        bwd_hooks: Hooks = (),
        **forward_kwargs: Any,
    ) -> Any:
        """One forward pass with temporary hooks (removed afterwards, whatever happens)."""
        with self.model.hooks(fwd_hooks=list(fwd_hooks), bwd_hooks=list(bwd_hooks)):
            return self.model(tokens, **forward_kwargs)

    def run_with_cache(
        self,
        tokens: torch.Tensor,
        names: Sequence[str] | Callable[[str], bool],
        *,
        fwd_hooks: Hooks = (),
        detach: bool = True,
        **forward_kwargs: Any,
    ) -> tuple[Any, dict[str, torch.Tensor]]:
        """Forward pass that also returns the activations at ``names`` (a list or a predicate).

        Caching hooks run after any ``fwd_hooks`` on the same hook point, so the cache holds
        the (possibly patched) activation that the rest of the model saw.
        """
        cache: dict[str, torch.Tensor] = {}
        if callable(names):
            wanted = names
        else:
            names_set = set(names)

            def wanted(name: str) -> bool:
                return name in names_set

        def saver(name: str) -> HookFn:
            # keyed by the name asked for: a TransformerBridge hook point's own `.name` can be
            # its canonical name (e.g. "blocks.0.attn.o.hook_in" for "blocks.0.attn.hook_z")
            def save(act: torch.Tensor, hook: Any) -> None:
                cache[name] = act.detach() if detach else act

            return save

        hooks = [*fwd_hooks]
        hooks += [(name, saver(name)) for name in self.model.hook_dict if wanted(name)]
        out = self.run(tokens, fwd_hooks=hooks, **forward_kwargs)
        return out, cache

    def unembed(self, resid: torch.Tensor) -> torch.Tensor:
        """Final LayerNorm and unembedding of residual-stream vectors (``[..., d_model]``)."""
        model = self.model
        x = model.ln_final(resid) if hasattr(model, "ln_final") else resid
        return model.unembed(x)

    # ------------------------------------------------------------------ partial runs
    # Activation patching re-runs only what a patch changes: blocks from the patched layer on,
    # positions from the patched one on, the last position's logits. How to call blocks directly
    # is version-specific, so it lives here; analyses check supports_partial_blocks() and fall
    # back to run_patched() (a plain forward with hooks) where it is False.

    @classmethod
    def wrap_token_ids(cls, model: Any) -> ModelHandle:
        """Like :meth:`wrap`, but also accepts a model without a tokenizer (e.g. one built from
        a config for a benchmark). Such a handle takes token tensors only; analyses label tokens
        by id."""
        if isinstance(model, ModelHandle) or getattr(model, "tokenizer", None) is not None:
            return cls.wrap(model)
        if not (isinstance(model, torch.nn.Module) and hasattr(model, "cfg")):
            return cls(model)  # raises the ModelError that says what to pass
        # The same set-up as __init__, minus the tokenizer check.
        handle = cls.__new__(cls)
        handle.model, handle.cfg = model, model.cfg
        handle.kind = "bridge" if type(model).__name__ == "TransformerBridge" else "hooked"
        cfg: Any = model.cfg
        handle.n_layers, handle.n_heads = int(cfg.n_layers), int(cfg.n_heads)
        handle.d_model, handle.d_head = int(cfg.d_model), int(cfg.d_head)
        handle.n_ctx, handle.d_vocab = int(cfg.n_ctx), int(cfg.d_vocab)
        kv = getattr(cfg, "n_key_value_heads", None)
        handle.n_kv_heads = int(kv) if kv else handle.n_heads
        return handle

    def supports_partial_blocks(self) -> bool:
        """Whether :meth:`block_runner`, :meth:`run_layers`, :meth:`attn_out_from_z` and
        :meth:`last_logits` work: a TransformerLens 3.x ``HookedTransformer`` on one device with
        pre-norm blocks, causal global attention (standard or rotary positions, grouped-query
        allowed; no ALiBi, soft-capping, QK norm, sinks), a plain MLP, and no left padding."""
        if self.kind != "hooked":
            return False
        cfg, model = self.cfg, self.model
        off = ("use_qk_norm", "use_split_qkv_input", "use_attn_in", "load_in_4bit",
               "use_normalization_before_and_after", "use_attention_sinks", "use_logn_attn")
        cap = getattr(cfg, "attn_scores_soft_cap", None)
        blocks = getattr(model, "blocks", [])
        return bool(
            getattr(cfg, "positional_embedding_type", "standard") in ("standard", "rotary")
            and getattr(cfg, "attention_dir", "causal") == "causal"
            and not any(getattr(cfg, name, False) for name in off)
            and getattr(cfg, "clip_qkv", None) is None
            and (cap is None or cap <= 0)
            and getattr(cfg, "n_devices", 1) == 1
            and "Olmo" not in str(getattr(cfg, "original_architecture", "") or "")
            and getattr(getattr(model, "tokenizer", None), "padding_side", "right") != "left"
            and hasattr(model, "unembed")
            and all(getattr(b.attn, "attn_type", "global") == "global" for b in blocks)
            and (cfg.attn_only or all(type(b.mlp).__name__ == "MLP" for b in blocks))
            and getattr(cfg, "act_fn", None) != "solu_ln"
        )

    def block_runner(self) -> Callable[..., torch.Tensor]:
        """A function running one block on the last ``m`` positions of a prompt, with the weights
        arranged once (TransformerLens re-arranges W_Q/W_K/W_V/W_O on every call, which dominates
        small batches). Make one per analysis: it keeps the weights of the moment. Needs
        :meth:`supports_partial_blocks`.

        ``run(layer, resid, past_k, past_v, *, last_only=False)``: ``resid`` (``[batch, m,
        d_model]``) enters block ``layer`` at positions ``p..p+m-1``; ``past_k``/``past_v``
        (``[1 or batch, p, kv_heads, d_head]``, as at ``hook_k``/``hook_v``) are the keys and
        values of positions ``0..p-1``. Returns the residual after the block, ``[batch, m,
        d_model]``; with ``last_only`` keys and values are computed at every position but
        queries, attention output and MLP only at the last (``[batch, 1, d_model]``).
        ``run(layer, resid_mid, mid=True)``: the rest of a sequential block from ``resid_mid``.
        """
        import torch.nn.functional as F

        model, cfg = self.model, self.cfg
        n_heads, d_head, d_model = self.n_heads, self.d_head, self.d_model
        act_name = str(getattr(cfg, "act_fn", ""))
        tanh_gelu = act_name in ("gelu_new", "gelu_fast", "gelu_pytorch_tanh")  # one fused kernel
        fast_act = {"gelu": F.gelu, "relu": F.relu, "silu": F.silu}.get(act_name)
        prepared: dict[int, tuple[Any, ...]] = {}

        def weights(layer: int) -> tuple[Any, ...]:
            if layer not in prepared:
                attn = model.blocks[layer].attn
                ungrouped = getattr(cfg, "ungroup_grouped_query_attention", False)
                grouped = hasattr(attn, "_W_K") and not ungrouped  # K/V per key-value head
                w_k, w_v = (attn._W_K, attn._W_V) if grouped else (attn.W_K, attn.W_V)
                b_k, b_v = (attn._b_K, attn._b_V) if grouped else (attn.b_K, attn.b_V)
                w_qkv = torch.cat(
                    [w.permute(1, 0, 2).reshape(d_model, -1) for w in (attn.W_Q, w_k, w_v)], 1
                )
                b_qkv = torch.cat([b.reshape(-1) for b in (attn.b_Q, b_k, b_v)])
                n_q = n_heads * d_head  # also split, for a last-position-only query
                prepared[layer] = (
                    w_qkv, b_qkv, w_qkv[:, :n_q].contiguous(), b_qkv[:n_q],
                    w_qkv[:, n_q:].contiguous(), b_qkv[n_q:], int(w_k.shape[0]),
                    attn.W_O.reshape(-1, d_model), attn.b_O,
                )
            return prepared[layer]

        def norm(ln: Any, x: torch.Tensor) -> torch.Tensor:
            if type(ln).__name__ == "LayerNorm" and hasattr(ln, "w"):
                return F.layer_norm(x, (d_model,), ln.w, ln.b, ln.eps)
            return ln(x)  # LNPre, RMS, RMSPre, Identity

        def mlp(layer: int, x: torch.Tensor) -> torch.Tensor:
            block = model.blocks[layer]
            module = block.mlp
            x = norm(block.ln2, x)
            pre = torch.addmm(module.b_in, x.reshape(-1, d_model), module.W_in)
            if tanh_gelu:
                post = F.gelu(pre, approximate="tanh")
            else:
                post = fast_act(pre) if fast_act is not None else module.act_fn(pre)  # type: ignore[operator]
            return torch.addmm(module.b_out, post, module.W_out).view(x.shape)

        def run(
            layer: int,
            resid: torch.Tensor,
            past_k: torch.Tensor | None = None,
            past_v: torch.Tensor | None = None,
            *,
            last_only: bool = False,
            mid: bool = False,
        ) -> torch.Tensor:
            if mid:
                return resid + mlp(layer, resid)
            assert past_k is not None and past_v is not None
            block = model.blocks[layer]
            attn = block.attn
            w_qkv, b_qkv, w_q, b_q, w_kv, b_kv, n_kv, w_o, b_o = weights(layer)
            batch, m, _ = resid.shape
            past = past_k.shape[1]
            normed = norm(block.ln1, resid)
            first = past + m - 1 if last_only else past  # position of the first query
            if last_only:
                q = torch.addmm(b_q, normed[:, -1], w_q)
                kv = torch.addmm(b_kv, normed.reshape(-1, d_model), w_kv).view(batch, m, -1)
                k, v = kv.split(n_kv * d_head, -1)
                resid = resid[:, -1:]
            else:
                qkv = torch.addmm(b_qkv, normed.reshape(-1, d_model), w_qkv).view(batch, m, -1)
                q, k, v = qkv.split([n_heads * d_head, n_kv * d_head, n_kv * d_head], -1)
            q = q.reshape(batch, -1, n_heads, d_head)
            k, v = k.reshape(batch, m, n_kv, d_head), v.reshape(batch, m, n_kv, d_head)
            keys = torch.cat([past_k.expand(batch, -1, -1, -1), k], 1)
            values = torch.cat([past_v.expand(batch, -1, -1, -1), v], 1)
            if cfg.positional_embedding_type == "rotary":
                q, keys = attn.apply_rotary(q, first), attn.apply_rotary(keys, 0)
            if n_kv != n_heads:
                keys = keys.repeat_interleave(n_heads // n_kv, 2)
                values = values.repeat_interleave(n_heads // n_kv, 2)
            scores = torch.einsum("bqhd,bkhd->bhqk", q, keys) / attn.attn_scale
            q_pos = torch.arange(first, first + q.shape[1], device=resid.device)
            k_pos = torch.arange(past + m, device=resid.device)
            scores = scores.masked_fill(k_pos[None, :] > q_pos[:, None], float("-inf"))
            z = torch.einsum("bhqk,bkhd->bqhd", scores.softmax(-1), values)
            attn_out = (z.reshape(-1, n_heads * d_head) @ w_o + b_o).view(resid.shape)
            if cfg.attn_only:
                return resid + attn_out
            if cfg.parallel_attn_mlp:
                return resid + attn_out + mlp(layer, resid)
            resid_mid = resid + attn_out
            return resid_mid + mlp(layer, resid_mid)

        return run

    def attn_out_from_z(self, layer: int, z: torch.Tensor) -> torch.Tensor:
        """The attention output (``hook_attn_out``) of head outputs ``z``
        (``[batch, pos, n_heads, d_head]``, as at ``hook_z``): ``sum_h z_h W_O[h] + b_O``."""
        attn = self.model.blocks[layer].attn
        w_o = attn.W_O
        return z.reshape(*z.shape[:-2], -1) @ w_o.reshape(-1, w_o.shape[-1]) + attn.b_O

    def run_layers(
        self, resid: torch.Tensor, start: int, stop: int, *, fwd_hooks: Hooks = ()
    ) -> torch.Tensor:
        """Blocks ``start..stop-1`` on ``resid`` (``[batch, pos, d_model]``, the residual entering
        block ``start``) with temporary hooks; the residual after block ``stop - 1``."""
        with self.model.hooks(fwd_hooks=list(fwd_hooks)):
            return self.model(resid, start_at_layer=start, stop_at_layer=stop)

    def last_logits(
        self, resid_last: torch.Tensor, columns: Sequence[int] | None = None
    ) -> torch.Tensor:
        """Final norm and unembedding of last-position residuals (``[batch, d_model]``, after the
        last block): ``[batch, d_vocab]`` logits, or only ``columns`` of them (a logit
        difference needs two columns of ``W_U``, not all ``d_vocab``)."""
        model, cfg = self.model, self.cfg
        x = resid_last[:, None]
        if getattr(cfg, "normalization_type", None) is not None and hasattr(model, "ln_final"):
            x = model.ln_final(x)
        w_u, b_u = model.unembed.W_U, model.unembed.b_U
        if columns is not None:
            cols = torch.as_tensor(list(columns), device=w_u.device)
            w_u, b_u = w_u[:, cols], b_u[cols]
        logits = x[:, 0] @ w_u + b_u
        cap = getattr(cfg, "output_logits_soft_cap", None)
        if cap is not None and cap > 0:
            logits = cap * torch.tanh(logits / cap)
        return logits

    def run_last_logits(
        self,
        tokens: torch.Tensor,
        names: Sequence[str] | Callable[[str], bool] = (),
        *,
        fwd_hooks: Hooks = (),
        columns: Sequence[int] | None = None,
        detach: bool = True,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Forward pass caching ``names``; returns the last position's logits (``[batch, d_vocab]``,
        or ``columns`` of them) and the cache. A ``HookedTransformer`` stops after the last block
        and unembeds the last position only."""
        if self.kind == "hooked":
            final, cache = self.run_with_cache(
                tokens, names, fwd_hooks=fwd_hooks, detach=detach, stop_at_layer=self.n_layers
            )
            return self.last_logits(final[:, -1], columns), cache
        logits, cache = self.run_with_cache(tokens, names, fwd_hooks=fwd_hooks, detach=detach)
        logits = logits[:, -1]
        return (logits if columns is None else logits[:, list(columns)]), cache

    def run_patched(
        self,
        tokens: torch.Tensor,
        resid: torch.Tensor,
        start: int,
        *,
        fwd_hooks: Hooks = (),
        columns: Sequence[int] | None = None,
    ) -> torch.Tensor:
        """Last-position logits of ``resid.shape[0]`` runs of ``tokens`` (``[1, pos]``) whose
        hooks act only at block ``start`` or later; ``resid`` (``[batch, pos, d_model]``) is the
        unhooked residual entering block ``start``. Where the model can start at a layer the
        earlier blocks are skipped; otherwise this is a full forward of the repeated tokens."""
        if self.supports_partial_blocks():
            final = self.run_layers(resid, start, self.n_layers, fwd_hooks=fwd_hooks)
            return self.last_logits(final[:, -1], columns)
        batch_tokens = tokens.expand(resid.shape[0], -1)
        logits = self.run(batch_tokens, fwd_hooks=fwd_hooks)[:, -1]
        return logits if columns is None else logits[:, list(columns)]


__all__ = ["ModelHandle", "hook_count", "tl_major_version"]
