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
            if not prompt.strip():
                raise PromptError(f"the {what} is empty: pass some text to analyse.")
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

    def token_str(self, token: int) -> str:
        return str(self.model.to_str_tokens(torch.tensor([int(token)]))[0])

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
        was_training = model.training
        grad_was = torch.is_grad_enabled()
        params_grad = {n: p.grad for n, p in model.named_parameters()} if grad else None
        model.eval()
        torch.set_grad_enabled(grad)
        try:
            yield self
        finally:
            torch.set_grad_enabled(grad_was)
            model.train(was_training)
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


__all__ = ["ModelHandle", "hook_count", "tl_major_version"]
