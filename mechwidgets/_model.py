"""One adapter over the TransformerLens versions this package supports.

:class:`ModelHandle` wraps a TransformerLens 3.x ``HookedTransformer`` or a 4.x
``TransformerBridge`` (``boot_native`` models included). It is the only module that knows which
version is installed. Everything else in the package talks to the model through it:

- tokens, str tokens and single-token answers, with errors that say how a string tokenises;
- hook names per layer and head (grouped-query attention aware);
- runs with hooks and cached runs, always inside :meth:`ModelHandle.session`, which
  guarantees the user's model is left as it was found: no hooks left (also after an
  exception), train/eval mode and grad mode restored. Nothing here writes to a parameter;
- with :mod:`mechwidgets._fast`, the execution core: before every run that could skip
  TransformerLens's hook points, :meth:`ModelHandle.fast_path_blocker` decides from the model as
  it is at that moment (any hook attached sends the run through TransformerLens's own hooks).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import torch

from . import _fast
from ._args import as_int, is_int
from ._versions import tl_major_version, tl_version
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


def _check_prompt_type(prompt: Any, what: str) -> None:
    """Refuse what is neither text nor token ids before torch sees it (``None``, a list of
    several prompts where one is taken, a dict ...), saying what was passed."""
    if isinstance(prompt, (str, torch.Tensor)) or type(prompt).__name__ == "ndarray":
        return
    if isinstance(prompt, (list, tuple)):
        if prompt and all(isinstance(p, str) for p in prompt):
            raise PromptError(
                f"the {what} must be one string, got a {type(prompt).__name__} of {len(prompt)} "
                f"strings: pass a single prompt (show_circuit and EdgePatcher take several)."
            )
        if all(is_int(t) for t in prompt) or all(
            isinstance(row, (list, tuple)) and all(is_int(t) for t in row) for row in prompt
        ):
            return
    raise PromptError(
        f"the {what} must be a string or token ids (a 1-d tensor or a list of ints), got "
        f"{type(prompt).__name__}{'' if prompt is None else f' {prompt!r}'[:80]}."
    )


def _check_weights(model: Any) -> None:
    """Refuse a model whose weights TransformerLens cannot run as they are: on the ``meta``
    device (never loaded), spread over several devices without TransformerLens's own
    ``n_devices``, or cast to half precision behind TransformerLens's back (``model.half()``
    leaves ``cfg.dtype`` at float32 and the forward pass then mixes dtypes)."""
    params = list(model.parameters())
    if not params:
        return
    devices = {p.device for p in params}
    if any(d.type == "meta" for d in devices):
        raise ModelError(
            "the model's weights are on the 'meta' device: it was built without its weights "
            "(e.g. device='meta' or an empty-weights context), so it cannot run. Load it with "
            "its weights, e.g. HookedTransformer.from_pretrained(...) or mechwidgets.zoo.load(...)."
        )
    cfg = getattr(model, "cfg", None)
    if len(devices) > 1 and int(getattr(cfg, "n_devices", 1) or 1) == 1:
        raise ModelError(
            f"the model's weights are on several devices ({sorted(str(d) for d in devices)}): "
            f"move it whole with model.to(device), or let TransformerLens split it (n_devices=)."
        )
    half = (torch.float16, torch.bfloat16)
    cfg_dtype = getattr(cfg, "dtype", None)
    dtypes = {p.dtype for p in params if p.is_floating_point()}
    if cfg_dtype in (torch.float32, torch.float64) and dtypes and dtypes <= set(half):
        (dtype,) = dtypes if len(dtypes) == 1 else (sorted(dtypes, key=str)[0],)
        raise ModelError(
            f"the model's weights are {dtype} but model.cfg.dtype says {cfg_dtype}: it was cast "
            f"with torch's .half()/.bfloat16(), which TransformerLens does not track (its forward "
            f"pass would mix {cfg_dtype} and {dtype}). Cast it with model.to({dtype}) instead, "
            f"which updates model.cfg.dtype, or load it in that dtype."
        )


#: Other backends' handles, as ``(is_theirs(model), handle class)``: each backend's module adds
#: itself on import (mechwidgets/__init__ imports them), so this module imports none of them.
BACKENDS: list[tuple[Callable[[Any], bool], Callable[[Any], ModelHandle]]] = []


class ModelHandle:
    """A TransformerLens model, with the few operations the analyses need.

    Args:
        model: a TransformerLens 3.x ``HookedTransformer`` or 4.x ``TransformerBridge``, or an
            existing handle (returned as is by :meth:`wrap`).

    Raises:
        ModelError: the object is not such a model (with what to pass instead).
    """

    def __init__(self, model: Any, *, need_tokenizer: bool = True):
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
        if need_tokenizer and getattr(model, "tokenizer", None) is None:
            raise ModelError(
                "the model has no tokenizer attached, so prompts cannot be tokenised. Pass "
                "`tokenizer=` when building it (e.g. HookedTransformer(cfg, tokenizer=tok)) or "
                "use a zoo model: `mechwidgets.zoo.load('toy-lm')`."
            )
        _check_weights(model)
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
        """Return ``model`` if it already is a handle, else a new handle around it (an
        :class:`~mechwidgets._nnsight.NNsightHandle` for an nnsight model)."""
        if isinstance(model, ModelHandle):
            return model
        for is_theirs, handle in BACKENDS:
            if is_theirs(model):
                return handle(model)
        return cls(model)

    # ------------------------------------------------------------------ tokens
    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def tokenizer(self) -> Any | None:
        """The model's tokenizer (``None`` for a handle from :meth:`wrap_token_ids` on a model
        without one). Analyses ask the handle, never the model, about its tokenizer."""
        return getattr(self.model, "tokenizer", None)

    @property
    def bos_token_id(self) -> int | None:
        bos = getattr(self.tokenizer, "bos_token_id", None)
        return None if bos is None else int(bos)

    @property
    def pads_left(self) -> bool:
        """Whether the tokenizer pads on the left (TransformerLens then masks leading tokens)."""
        return getattr(self.tokenizer, "padding_side", "right") == "left"

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
            PromptError: not text or token ids (the message says what was passed), empty, or
                longer than ``n_ctx`` or ``max_positions``.
        """
        _check_prompt_type(prompt, what)
        if isinstance(prompt, str):
            if self.tokenizer is None:
                raise PromptError(
                    f"the model has no tokenizer, so the {what} must be a token tensor, not "
                    f"text: pass e.g. torch.tensor([...]) or attach a tokenizer to the model."
                )
            self._check_text(prompt, what)
            toks = self.encode(prompt, bos=None)
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
        tok = self.tokenizer
        if self.kind != "hooked" or tok is None or not callable(tok) or getattr(tok, "pad_token", None) is None:
            return None
        try:
            from transformer_lens import HookedTransformer
        except ImportError:  # pragma: no cover - TransformerLens 4.x
            return None
        prepends = getattr(self.cfg, "tokenizer_prepends_bos", None)
        if (
            tl_version()[0] != 3
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
        """The tokens as strings, one per position (``"#id"`` without a tokenizer)."""
        toks = tokens[0] if tokens.ndim == 2 else tokens
        if self.tokenizer is None:
            return [f"#{int(t)}" for t in toks.reshape(-1)]
        return self._decode_each(toks.reshape(-1).cpu())

    def encode(self, text: str, *, bos: bool | None) -> torch.Tensor:
        """``[1, pos]`` token ids of ``text`` (with the model's BOS in front if ``bos``; ``None``:
        as the model does by default): the backend's own tokenisation (here TransformerLens's
        ``to_tokens``)."""
        toks: torch.Tensor = self.model.to_tokens(text, prepend_bos=bos, truncate=False)
        return toks

    def _decode_each(self, tokens: torch.Tensor) -> list[str]:
        """Each of the 1-d ``tokens`` as its string (TransformerLens's ``to_str_tokens``)."""
        return [str(s) for s in self.model.to_str_tokens(tokens)]

    def str_tokens_many(self, tokens: Sequence[torch.Tensor]) -> list[list[str]]:
        """:meth:`str_tokens` of several 1-d token tensors at once: one call to a fast
        tokenizer's batch decoder (what ``to_str_tokens`` does, one decode per token, without
        its per-call overhead); other tokenizers go one prompt at a time."""
        backend = getattr(self.tokenizer, "_tokenizer", None)
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
        if self.tokenizer is None:
            raise AnswerError(f"the model has no tokenizer, so the {what} {text!r} must be given "
                              f"as a token id (an int).")
        toks = self.encode(text, bos=False)[0]
        if toks.numel() != 1:
            pieces = self.str_tokens(toks)
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
        if not self.has_hook(name):
            raise ComponentError(
                f"this model has no hook {name!r} (component {kind!r}). Attention-only models "
                f"have no MLP hooks, and q/k/v-input hooks need `model.set_use_split_qkv_input(True)`."
            )
        return name

    def has_hook(self, name: str) -> bool:
        return name in self.hook_names()

    def hook_names(self) -> Iterable[str]:
        """Every activation name a run can hook or cache (TransformerLens's ``hook_dict``)."""
        names: Iterable[str] = self.model.hook_dict
        return names

    @property
    def module(self) -> torch.nn.Module:
        """The ``torch.nn.Module`` whose weights, hooks and modes are the model's state (what
        fingerprints read and sessions restore): the model itself for TransformerLens."""
        module: torch.nn.Module = self.model
        return module

    def check_layer(self, layer: Any) -> int:
        """``layer`` as a plain int (Python and numpy integers pass; floats, bools and anything
        else do not), checked against the model.

        Raises:
            ComponentError: not an integer, or out of range (the message gives the range).
        """
        return as_int(layer, "layer", lo=0, hi=self.n_layers - 1,
                      hint=f" This model has layers 0..{self.n_layers - 1}.")

    def check_head(self, layer: Any, head: Any) -> tuple[int, int]:
        """``(layer, head)`` as plain ints, checked as :meth:`check_layer` does."""
        layer = self.check_layer(layer)
        head = as_int(head, "head", lo=0, hi=self.n_heads - 1,
                      hint=f" Layer {layer} has heads 0..{self.n_heads - 1}.")
        return layer, head

    def kv_head(self, head: int) -> int:
        """The key/value head a query head reads under grouped-query attention."""
        return head // (self.n_heads // self.n_kv_heads)

    # ------------------------------------------------------------------ runs
    @contextlib.contextmanager
    def session(self, *, grad: bool = False) -> Iterator[ModelHandle]:
        """Run code against the model and leave it exactly as it was.

        Inside, the model is in eval mode and autograd is on only if ``grad``. On exit (also on
        an exception) each module's train/eval flag, the grad mode and every parameter's
        ``.grad`` are restored. Hooks are not this context's business: mechwidgets adds hooks
        only inside a run (TransformerLens's ``hooks()`` context, or handles removed in a
        ``finally``), so none outlives the run that added it, also on an exception.
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
        hooks += [(name, saver(name)) for name in self.hook_names() if wanted(name)]
        out = self.run(tokens, fwd_hooks=hooks, **forward_kwargs)
        return out, cache

    def unembedding(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(W_U [d_model, d_vocab], b_U [d_vocab])``, detached float32 (zeros where the model
        has no unembedding bias)."""
        model = self.model
        w_u = model.unembed.W_U if hasattr(model.unembed, "W_U") else model.W_U
        b_u = getattr(model.unembed, "b_U", None)
        if b_u is None:
            b_u = getattr(model, "b_U", None)
        w_u = w_u.detach().float()
        return w_u, torch.zeros(w_u.shape[1], device=w_u.device) if b_u is None else b_u.detach().float()

    def embedding(self) -> torch.Tensor:
        """``W_E [d_vocab, d_model]``, detached float32."""
        w_e: torch.Tensor = self.model.W_E
        return w_e.detach().float()

    def head_out_weights(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(W_O [head, d_head, d_model], b_O [d_model])`` of a layer's attention, detached
        float32."""
        model = self.model
        attn = model.blocks[layer].attn
        w_o = attn.W_O if hasattr(attn, "W_O") else model.W_O[layer]
        b_o = getattr(attn, "b_O", None)
        if b_o is None:
            b_o = model.b_O[layer]
        return w_o.detach().float(), b_o.detach().float()

    def final_norm(self) -> _fast.FinalNorm:
        """The final norm at a frozen scale (:class:`mechwidgets._fast.FinalNorm`)."""
        return _fast.FinalNorm.of(self)

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
        a config for a benchmark). Such a handle takes token tensors only; tokens are labelled
        by id (``"#17"``)."""
        if isinstance(model, ModelHandle) or any(is_theirs(model) for is_theirs, _ in BACKENDS):
            return cls.wrap(model)
        return cls(model, need_tokenizer=False)

    def fast_path_blocker(self, need: _fast.Need = "blocks") -> str | None:
        """Why the execution core's exact arithmetic (:mod:`mechwidgets._fast`) cannot stand in
        for the model's own forward pass *now* (None: it can). Asked afresh before every run: a
        hook attached, a weight cast, a method patched since the last call all send the run
        through TransformerLens's own hooks."""
        if self.kind != "hooked":
            return "not a TransformerLens 3.x HookedTransformer"
        return _fast.unsupported(self.model, need)

    def supports_partial_blocks(self) -> bool:
        """Whether :meth:`block_runner` may run this model now (see :meth:`fast_path_blocker`):
        a plain TransformerLens 3.x ``HookedTransformer`` with pre-norm blocks, causal global
        attention (standard or rotary positions, grouped-query allowed), a plain MLP, float32 or
        float64 weights, no left padding, and no hook of any kind attached."""
        return self.fast_path_blocker("blocks") is None

    def block_runner(self) -> Callable[..., torch.Tensor]:
        """:func:`mechwidgets._fast.block_runner` of this model (needs
        :meth:`supports_partial_blocks`, checked by the caller for the same call)."""
        return _fast.block_runner(self.model)

    def attn_out_from_z(self, layer: int, z: torch.Tensor) -> torch.Tensor:
        """The attention output (``hook_attn_out``) of head outputs ``z``
        (``[batch, pos, n_heads, d_head]``, as at ``hook_z``): ``sum_h z_h W_O[h] + b_O``."""
        return _fast.attn_out_from_z(self.model.blocks[layer].attn, z)

    def run_layers(
        self, resid: torch.Tensor, start: int, stop: int, *, fwd_hooks: Hooks = ()
    ) -> torch.Tensor:
        """Blocks ``start..stop-1`` on ``resid`` (``[batch, pos, d_model]``, the residual entering
        block ``start``) with temporary hooks; the residual after block ``stop - 1``."""
        with self.model.hooks(fwd_hooks=list(fwd_hooks)):
            return self.model(resid, start_at_layer=start, stop_at_layer=stop)

    def last_logits(
        self, resid_last: torch.Tensor, columns: Sequence[int] | torch.Tensor | None = None
    ) -> torch.Tensor:
        """Final norm and unembedding of last-position residuals (``[batch, d_model]``, after the
        last block): ``[batch, d_vocab]`` logits, or only ``columns`` of them (``[k]``, or
        ``[batch, k]`` per row; see :func:`mechwidgets._fast.last_logits`)."""
        return _fast.last_logits(self.model, resid_last, columns)

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
        or ``columns`` of them) and the cache. Where the execution core's arithmetic may stand in
        for the model (no hooks attached, see :meth:`fast_path_blocker`) a ``HookedTransformer``
        stops after the last block and unembeds the last position only."""
        if self.supports_partial_blocks():
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
        residual entering block ``start`` (with the user's own hooks applied). A model the
        execution core covers skips the earlier blocks: through TransformerLens's forward from
        ``start`` and the core's last-position unembedding where no hook is attached, through
        TransformerLens's forward from ``start`` and its own unembedding where hooks are attached
        but none at the restart point (``blocks.{start}.hook_resid_pre``, which would apply a
        second time); other models, and that case, run a full forward of the repeated tokens."""
        why = self.fast_path_blocker("blocks")
        if why is None:
            final = self.run_layers(resid, start, self.n_layers, fwd_hooks=fwd_hooks)
            return self.last_logits(final[:, -1], columns)
        if why == _fast.HOOKED and not _fast.restart_hooked(self.model, start):
            # an architecture TransformerLens can start at a layer, where the restart point
            # itself is not hooked (its cached residual went through that hook already)
            with self.model.hooks(fwd_hooks=list(fwd_hooks)):
                logits = self.model(resid, start_at_layer=start)[:, -1]
            return logits if columns is None else logits[:, list(columns)]
        batch_tokens = tokens.expand(resid.shape[0], -1)
        logits = self.run(batch_tokens, fwd_hooks=fwd_hooks)[:, -1]
        return logits if columns is None else logits[:, list(columns)]


__all__ = ["BACKENDS", "ModelHandle", "hook_count", "tl_major_version"]
