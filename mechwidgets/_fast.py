"""The execution core's exact arithmetic: the one place that computes a transformer by hand.

:class:`~mechwidgets._model.ModelHandle` runs a model through its backend's own hooks; where an
analysis can save most of the work (activation patching restarts at the patched layer and
position, EAP records a forward pass without twenty hook points per layer, causal scrubbing
rebuilds heads from resampled inputs) it uses the pieces here instead. They read the model's live
weights at every call (nothing is copied or kept between calls) and compute exactly what
TransformerLens 3.x's ``HookedTransformer`` computes:

- :func:`norm`: TransformerLens's ``LayerNorm`` / ``LayerNormPre`` / ``RMSNorm`` / ``RMSNormPre``
  as one fused operation each (any other norm module is called as it is), and :func:`norm_vjp`,
  its backward in closed form (EAP's gradients at each head's own input);
- :func:`qkv_weights` (every head's) and :func:`head_projection` (one head's), and :func:`attend`:
  queries, keys and values from one product, and
  attention as ``softmax(q·k / attn_scale, causal) v`` (PyTorch's fused kernel);
- :func:`mlp`, :func:`attn_out_from_z`, :func:`last_logits` (the final norm and the columns of
  ``W_U`` a metric reads), :func:`unembed`;
- built from them: :func:`block_runner` (a block on the last positions of a prompt, with cached
  keys and values of the earlier ones) and :func:`record` (a whole recording forward pass).

**One decision, made per call.** :func:`unsupported` says why the arithmetic cannot stand in for
the model's own forward pass *now*, or ``None`` where it can: a TransformerLens 3.x
``HookedTransformer`` of exactly that class, whose code is TransformerLens's own (no subclass,
no method replaced on an instance or patched on a class), in float32 or float64, of an
architecture this module follows (:data:`ARCHITECTURE`), with **no hook of any kind** attached
to any of its modules or hook points (a user's own hook, an SAE spliced in, a steering vector:
all of them must see the run) and no global module hooks or autocast. Every caller asks again
before each run; whenever the answer is not ``None`` it goes through TransformerLens's hooks,
which are the reference. The boundary: module-level functions that TransformerLens's methods call
(its utilities, einops, torch) are not checked; patching those is not detected.

Tests (``tests/test_fast.py``, ``tests/test_circuits.py``, ``tests/test_patching.py``) check each
piece against TransformerLens's own run on every covered configuration, and each refusal.
"""

from __future__ import annotations

import contextlib
import functools
import os
import sys
import types
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F

from ._versions import tl_major_version

#: What a caller needs the arithmetic to cover: ``"record"`` (EAP's whole recording forward
#: pass) or ``"blocks"`` (:func:`block_runner`, which also follows rotary positions,
#: grouped-query attention and parallel attention and MLP).
Need = Literal["record", "blocks"]

#: Configuration fields that change the arithmetic, with the values each need follows: one
#: table for the whole package (``dtype``, the modules' own settings and the code itself are
#: checked in :func:`unsupported`).
ARCHITECTURE: dict[str, dict[str, tuple[Any, ...]]] = {
    "positional_embedding_type": {"record": ("standard",), "blocks": ("standard", "rotary")},
    "normalization_type": {"record": (None, "LN", "LNPre", "RMS", "RMSPre"),
                           "blocks": (None, "LN", "LNPre", "RMS", "RMSPre")},
    "attention_dir": {"record": ("causal",), "blocks": ("causal",)},
    "attn_types": {"record": (None,), "blocks": (None,)},
    "use_local_attn": {"record": (False,), "blocks": (False,)},
    "gated_mlp": {"record": (False,), "blocks": (False,)},
    "num_experts": {"record": (None,), "blocks": (None,)},
    "parallel_attn_mlp": {"record": (False,), "blocks": (False, True)},
    "post_embedding_ln": {"record": (False,), "blocks": (False,)},
    "use_normalization_before_and_after": {"record": (False,), "blocks": (False,)},
    "use_qk_norm": {"record": (False,), "blocks": (False,)},
    "clip_qkv": {"record": (None,), "blocks": (None,)},
    "use_logn_attn": {"record": (False,), "blocks": (False,)},
    "use_attention_sinks": {"record": (False,), "blocks": (False,)},
    "use_split_qkv_input": {"record": (False, True), "blocks": (False,)},
    "use_attn_in": {"record": (False,), "blocks": (False,)},
    "load_in_4bit": {"record": (False,), "blocks": (False,)},
    "n_devices": {"record": (1,), "blocks": (1,)},
    # an allow-list: architectures whose TransformerLens code has no special case in the block
    # or the attention (others, e.g. post-norm ones, go through TransformerLens)
    "original_architecture": {"record": (None, "GPT2LMHeadModel"),
                              "blocks": (None, "GPT2LMHeadModel", "GPTNeoXForCausalLM",
                                         "LlamaForCausalLM", "MistralForCausalLM",
                                         "Qwen2ForCausalLM", "GPTJForCausalLM",
                                         "NeoForCausalLM", "OPTForCausalLM")},
}
#: TransformerLens's own norms (weights ``w``, if any, and a number ``eps``), whose formula
#: :func:`norm` repeats (and ``EdgePatcher`` differentiates in closed form).
TL_NORMS = ("LayerNorm", "LayerNormPre", "RMSNorm", "RMSNormPre")
#: :func:`unsupported`'s answer where hooks alone are in the way (it checks them last).
HOOKED = "hooks attached to the model"


def tl_norm(ln: Any, kinds: tuple[str, ...] = TL_NORMS) -> bool:
    """Whether ``ln`` is one of TransformerLens's own norms named in ``kinds`` (a
    ``torch.nn.LayerNorm`` is not: its weights are not ``w``)."""
    kind = type(ln)
    return (kind.__name__ in kinds and kind.__module__.startswith("transformer_lens")
            and isinstance(getattr(ln, "eps", None), (int, float)))


# ---------------------------------------------------------------------------- the decision
def has_hooks(module: torch.nn.Module) -> bool:
    """Whether a torch module has any forward, pre-forward or backward hook of its own."""
    return bool(module._forward_hooks or module._forward_pre_hooks or module._backward_hooks
                or getattr(module, "_backward_pre_hooks", None))


def _dir(module: Any) -> str:
    return os.path.dirname(os.path.abspath(module.__file__)) + os.sep


#: Where the wrappers of TransformerLens's own decorated methods are written.
_WRAPPER_DIRS = (_dir(torch), _dir(contextlib))


def _tl_function(f: Any, tl_dir: str) -> bool:
    """Whether ``f`` (a function, staticmethod or classmethod) is TransformerLens's own code: written
    in its package and not a wrapper (``functools.wraps`` copies a wrapped function's name and
    module, not its code), or one of its own decorated methods (torch's or the standard library's
    wrapper around a function of its package)."""
    f = getattr(f, "__func__", f)
    code = getattr(f, "__code__", None)
    if code is None:
        return False
    if code.co_filename.startswith(tl_dir):
        return not hasattr(f, "__wrapped__")
    inner = getattr(f, "__wrapped__", None)
    return inner is not None and code.co_filename.startswith(_WRAPPER_DIRS) and _tl_function(inner, tl_dir)


def _autocast_on(device_type: str) -> bool:
    try:
        return bool(torch.is_autocast_enabled(device_type))  # torch >= 2.4
    except TypeError:
        return bool(torch.is_autocast_enabled() or torch.is_autocast_cpu_enabled())


@functools.cache
def _callable_names(cls: type) -> frozenset[str]:
    """The names of ``cls``'s methods (and other callables), which an instance must not shadow."""
    return frozenset(name for name in dir(cls) if callable(getattr(cls, name, None)))


def _own_code(cls: type, tl_dir: str) -> bool:
    """Whether every method ``cls`` and its TransformerLens base classes define is TransformerLens's
    own (nothing patched onto the class; not a subclass from elsewhere), ``torch.nn.Identity``'s
    forward torch's own (the norm of a model without one)."""
    for base in cls.__mro__:
        if base is torch.nn.Identity:
            forward = vars(base)["forward"]
            if forward.__code__.co_filename != torch.nn.modules.linear.__file__ or hasattr(forward, "__wrapped__"):
                return False
        elif base.__module__.startswith("transformer_lens"):
            if not all(_tl_function(f, tl_dir) for f in vars(base).values()
                       if isinstance(f, (types.FunctionType, staticmethod, classmethod))):
                return False
        elif not (base is object or base.__module__.startswith(("torch.nn.modules.", "typing", "abc"))):
            return False
    return True


def unsupported(model: Any, need: Need = "record") -> str | None:
    """Why this module's arithmetic cannot stand in for ``model``'s own forward pass now (None:
    it can): not TransformerLens 3.x's own ``HookedTransformer``, a configuration or weights it
    does not follow for ``need``, a module's own attention settings or ``cfg``, any hook (the
    model's, a user's, or global ones), autocast, left padding, or code that is not
    TransformerLens's own. Cheap enough to ask before every run (about 0.5 ms on toy-lm)."""

    if tl_major_version() != 3:
        return "not a TransformerLens 3.x HookedTransformer"
    from transformer_lens import HookedTransformer
    from transformer_lens.components import MLP, Attention, Embed, PosEmbed, TransformerBlock

    if type(model) is not HookedTransformer:
        return "not a plain HookedTransformer"
    cfg = model.cfg
    for name, allowed in ARCHITECTURE.items():
        if getattr(cfg, name, None) not in allowed[need]:
            return f"cfg.{name} is {getattr(cfg, name, None)!r}"
    if (getattr(cfg, "attn_scores_soft_cap", None) or -1.0) > 0 or (
            getattr(cfg, "output_logits_soft_cap", None) or -1.0) > 0:
        return "soft-capped attention scores or logits"
    if need == "record" and (cfg.n_key_value_heads or cfg.n_heads) != cfg.n_heads:
        return "grouped-query attention"
    if str(getattr(cfg, "act_fn", "")).endswith("_ln"):
        return f"act_fn {cfg.act_fn!r} normalises inside the MLP"
    if getattr(getattr(model, "tokenizer", None), "padding_side", "right") == "left":
        return "the tokenizer pads on the left"
    # TransformerLens rounds norm outputs to cfg.dtype and computes attention in float32 below it
    wrong_dtype = f"weights not all in cfg.dtype {cfg.dtype} (float32 or float64)"
    if cfg.dtype not in (torch.float32, torch.float64):
        return wrong_dtype
    if type(model.embed) is not Embed or (cfg.positional_embedding_type == "standard"
                                          and type(model.pos_embed) is not PosEmbed):
        return "custom embeddings"
    norms = [model.ln_final] if hasattr(model, "ln_final") else []
    for block in model.blocks:
        attn = block.attn
        if type(block) is not TransformerBlock or type(attn) is not Attention:
            return "a custom block or attention module"
        if getattr(attn, "attn_type", "global") != "global" or getattr(attn, "_attention_dir_override", None) not in (
                None, "causal"):
            return "local or non-causal attention"
        ignore = getattr(attn, "IGNORE", None)  # the masked scores' value: -inf (older files: -1e5)
        if ignore is None or not float(ignore) <= -1e4:
            return f"masked attention scores set to {None if ignore is None else float(ignore)}"
        norms.append(block.ln1)
        if not cfg.attn_only:
            if type(block.mlp) is not MLP:
                return "a custom MLP"
            norms.append(block.ln2)
    for ln in norms:
        if not (isinstance(ln, torch.nn.Identity) or tl_norm(ln)):
            return f"a {type(ln).__name__} norm"
    hooks = torch.nn.modules.module
    if any(getattr(hooks, name, None) for name in ("_global_forward_hooks", "_global_forward_pre_hooks",
                                                   "_global_backward_hooks", "_global_backward_pre_hooks")):
        return "global module hooks"
    if _autocast_on(model.embed.W_E.device.type):
        return "autocast is on"
    classes = set()
    hooked = False
    for module in model.modules():
        hooked = hooked or has_hooks(module)
        if any(p is not None and p.dtype != cfg.dtype for p in module._parameters.values()):
            return wrong_dtype
        if vars(module).get("cfg", cfg) is not cfg:  # every module reads its own cfg (a plain attribute)
            return f"a {type(module).__name__} with a cfg of its own"
        cls: type = type(module)
        if not vars(module).keys().isdisjoint(_callable_names(cls)):
            return f"code of its own in {cls.__name__} (a method replaced on the instance)"
        classes.add(cls)
    tl_dir = _dir(sys.modules["transformer_lens"])
    for cls in classes:
        if not _own_code(cls, tl_dir):
            return f"code of its own in {cls.__name__} (a patched method or a subclass)"
    return HOOKED if hooked else None  # last: HOOKED means nothing else is in the way


# ---------------------------------------------------------------------------- the pieces
def norm(ln: Any, x: torch.Tensor) -> torch.Tensor:
    """TransformerLens's ``LayerNorm`` / ``LayerNormPre`` / ``RMSNorm`` / ``RMSNormPre`` as one
    fused operation each: the same formula (``(x - mean) / sqrt(mean((x - mean)²) + eps)``, then
    the weights; RMS without the mean), without TransformerLens's six separate passes. Weights
    enter detached (activation gradients only). Any other module is called as it is."""
    if isinstance(ln, torch.nn.Identity):
        return x
    if not tl_norm(ln):
        return ln(x.reshape(1, -1, x.shape[-1])).reshape(x.shape)  # type: ignore[no-any-return]
    kind = type(ln).__name__
    w = ln.w.detach().to(x.dtype) if kind in ("LayerNorm", "RMSNorm") else None
    if kind.startswith("LayerNorm"):
        b = ln.b.detach().to(x.dtype) if w is not None else None
        return F.layer_norm(x, x.shape[-1:], w, b, float(ln.eps))
    if hasattr(F, "rms_norm"):  # torch >= 2.4
        return F.rms_norm(x, x.shape[-1:], w, float(ln.eps))
    x = x / (x.pow(2).mean(-1, keepdim=True) + float(ln.eps)).sqrt()
    return x if w is None else x * w


def norm_vjp(kind: str, eps: float, w: torch.Tensor | None, x: torch.Tensor,
              upstream: torch.Tensor) -> torch.Tensor:
    """The backward of TransformerLens's ``LayerNorm`` / ``RMSNorm`` (``...Pre``: no
    weights) in closed form: ``x`` ``[..., n, d]`` (the norm's inputs at ``n`` positions),
    ``upstream`` ``[..., k, n, d]`` (``k`` rows of gradients of its output, for the same
    inputs; overwritten: the caller's own scratch tensor, returned itself when float32),
    ``w`` ``[..., d]``; the statistics of ``x`` are computed once for all ``k`` rows."""
    # in place where it can be: a fresh [k, n, d] tensor per step costs about as much as the
    # arithmetic on it
    x = x.float()
    if kind.startswith("LayerNorm"):
        x = x - x.mean(-1, keepdim=True)
    inv = torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)[..., None, :, :]  # [..., 1, n, 1]
    normed = x[..., None, :, :] * inv  # [..., 1, n, d]
    g = upstream.float()
    if w is not None:
        g.mul_(w[..., None, None, :])
    along = (g * normed).mean(-1, keepdim=True)  # [..., k, n, 1]
    if kind.startswith("LayerNorm"):
        g.sub_(g.mean(-1, keepdim=True))
    return g.addcmul_(normed, along, value=-1).mul_(inv)


@dataclass
class FinalNorm:
    """The model's final norm as a function of a given scale, for decompositions (direct logit
    attribution, the lens, SAE features' logit effects: TransformerLens's ``apply_ln_to_stack``
    freezes the scale the same way): ``kind`` is ``"LN"`` (centre, divide by
    ``sqrt(var + eps)``), ``"RMS"`` (divide by ``sqrt(mean(x²) + eps)``) or ``None``; then
    ``* w + b`` where the norm has them."""

    kind: str | None
    eps: float
    w: torch.Tensor | None
    b: torch.Tensor | None

    @classmethod
    def of(cls, handle: Any) -> FinalNorm:
        cfg, model = handle.cfg, handle.model
        ntype = getattr(cfg, "normalization_type", None)
        kind = None if ntype is None else ("RMS" if str(ntype).startswith("RMS") else "LN")
        ln = getattr(model, "ln_final", None)
        w = b = None
        if ln is not None and kind is not None:
            w = getattr(ln, "w", None)
            b = getattr(ln, "b", None)
            if w is None and isinstance(getattr(ln, "weight", None), torch.Tensor):
                w, b = ln.weight, getattr(ln, "bias", None)
        eps_value: Any = getattr(ln, "eps", None) or getattr(cfg, "eps", None) or 1e-5
        eps = float(eps_value)
        return cls(kind, eps, None if w is None else w.detach().float(), None if b is None else b.detach().float())

    def center(self, x: torch.Tensor) -> torch.Tensor:
        return x - x.mean(-1, keepdim=True) if self.kind == "LN" else x

    def scale(self, x: torch.Tensor) -> torch.Tensor:
        """``[..., 1]`` the norm's divisor of streams ``x`` (``[..., d_model]``)."""
        if self.kind is None:
            return torch.ones_like(x[..., :1])
        return (self.center(x).pow(2).mean(-1, keepdim=True) + self.eps).sqrt()

    def linear(self, parts: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        """The norm's linear part (centre, divide by ``scale``, times ``w``), no bias."""
        out = self.center(parts) / scale
        return out * self.w if self.w is not None else out

    def bias(self, d_model: int, device: torch.device) -> torch.Tensor:
        return self.b if self.b is not None else torch.zeros(d_model, device=device)


def qkv_weights(attn: Any) -> tuple[torch.Tensor, torch.Tensor, int]:
    """``(w [d_model, (q k v) (head d_head)], b [(q k v) (head d_head)], n_kv_heads)``: every
    head's query, key and value weights as one matrix (keys and values per key/value head under
    grouped-query attention), detached."""
    grouped = hasattr(attn, "_W_K") and not getattr(attn.cfg, "ungroup_grouped_query_attention", False)
    w_k, w_v = (attn._W_K, attn._W_V) if grouped else (attn.W_K, attn.W_V)
    b_k, b_v = (attn._b_K, attn._b_V) if grouped else (attn.b_K, attn.b_V)
    d_model = attn.W_Q.shape[1]
    w = torch.cat([m.detach().permute(1, 0, 2).reshape(d_model, -1) for m in (attn.W_Q, w_k, w_v)], 1)
    b = torch.cat([v.detach().reshape(-1) for v in (attn.b_Q, b_k, b_v)])
    return w, b, int(w_k.shape[0])


def head_projection(attn: Any, head: int, port: str, x: torch.Tensor) -> torch.Tensor:
    """One head's query, key or value (``port``: ``"Q"``, ``"K"`` or ``"V"``) of normed inputs
    ``x`` (``[..., d_model]``, after ``ln1``): ``x W[head] + b[head]`` in ``x``'s dtype (grouped
    keys and values as TransformerLens repeats them to every head), detached weights."""
    w, b = getattr(attn, f"W_{port}")[head], getattr(attn, f"b_{port}")[head]
    return x @ w.detach().to(x.dtype) + b.detach().to(x.dtype)


def attend(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    scale: float,
    *,
    first: int | None = None,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Attention ``softmax(q·k / scale) v`` over ``[..., heads, n, d_head]`` tensors (keys and
    values repeated to the query heads' count by the caller): causal with queries at positions
    ``first..`` and keys at ``0..`` (``first=None``: queries and keys at the same positions), or
    with an explicit boolean ``mask`` (``True``: attended) broadcast to ``[..., n_q, n_k]``."""
    if mask is None:
        n_q, n_k = q.shape[-2], k.shape[-2]
        if first is None or (first == 0 and n_q == n_k):
            return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=1.0 / scale)
        if n_q == 1 and first == n_k - 1:  # the last position sees every key: no mask (and for
            # many single queries two matrix products beat the fused kernel on CPU, 2x measured)
            return (q @ k.transpose(-1, -2) / scale).softmax(-1) @ v
        q_pos = torch.arange(first, first + n_q, device=q.device)
        mask = torch.arange(n_k, device=q.device)[None, :] <= q_pos[:, None]
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=1.0 / scale)


_TANH_GELU = ("gelu_new", "gelu_fast", "gelu_pytorch_tanh")
_FUSED_ACT: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {"gelu": F.gelu, "relu": F.relu, "silu": F.silu}


def mlp(block: Any, x: torch.Tensor) -> torch.Tensor:
    """A block's MLP output on its input ``x`` (``[..., d_model]``, before ``ln2``): ``ln2``,
    ``W_in``, the activation (the fused kernel of the same function where torch has one),
    ``W_out``, in ``x``'s dtype. An MLP other than TransformerLens's plain one is called as it
    is."""
    module = block.mlp
    h = norm(block.ln2, x)
    if type(module).__name__ != "MLP" or not type(module).__module__.startswith("transformer_lens"):
        out = module(h.reshape(1, -1, h.shape[-1]))
        return out.reshape(*x.shape[:-1], out.shape[-1])  # type: ignore[no-any-return]
    d_model = x.shape[-1]
    pre = torch.addmm(module.b_in.detach().to(x.dtype), h.reshape(-1, d_model), module.W_in.detach().to(x.dtype))
    act = str(getattr(module.cfg, "act_fn", ""))
    if act in _TANH_GELU:
        post = F.gelu(pre, approximate="tanh")
    else:
        post = _FUSED_ACT[act](pre) if act in _FUSED_ACT else module.act_fn(pre)
    return torch.addmm(module.b_out.detach().to(x.dtype), post, module.W_out.detach().to(x.dtype)).view(x.shape)


def attn_out_from_z(attn: Any, z: torch.Tensor) -> torch.Tensor:
    """The attention output (``hook_attn_out``) of head outputs ``z`` (``[..., n_heads,
    d_head]``, as at ``hook_z``): ``sum_h z_h W_O[h] + b_O``."""
    w_o = attn.W_O
    return z.reshape(*z.shape[:-2], -1) @ w_o.reshape(-1, w_o.shape[-1]) + attn.b_O


def unembed(model: Any, resid: torch.Tensor) -> torch.Tensor:
    """The final norm (:func:`norm`) and the unembedding of residual-stream rows (``[...,
    d_model]``): ``[..., d_vocab]``."""
    shape = resid.shape
    x = resid.reshape(1, -1, shape[-1])
    if hasattr(model, "ln_final"):
        x = norm(model.ln_final, x)
    out = model.unembed(x)
    return out.reshape(*shape[:-1], out.shape[-1])


def _foreign(hook: Any) -> bool:
    """Whether a hook function is someone else's than TransformerLens's own code."""
    fn = getattr(hook, "__func__", hook)
    return not str(getattr(fn, "__module__", "") or "").startswith("transformer_lens")


def restart_hooked(model: Any, layer: int) -> bool:
    """Whether a hook is attached where a run restarted at ``layer`` would enter it
    (``blocks.{layer}.hook_resid_pre``): the residual cached there already went through that
    hook, and TransformerLens's ``start_at_layer`` forward would apply it a second time."""
    hp = model.hook_dict.get(f"blocks.{layer}.hook_resid_pre")
    return hp is not None and has_hooks(hp)


def hooked_modules(model: torch.nn.Module) -> list[str]:
    """The names of ``model``'s modules with a hook attached that is not TransformerLens's own
    machinery: any hook on a hook point (TransformerLens attaches hooks there only on someone's
    behalf: a user's hook, an SAE spliced in, a steering vector), and on any other module any
    hook whose code is not TransformerLens's (a TransformerBridge attaches capture hooks of its
    own to its wrapped norms on its first forward pass)."""
    out = []
    for name, module in model.named_modules():
        hooks = [*module._forward_hooks.values(), *module._forward_pre_hooks.values(),
                 *module._backward_hooks.values(), *getattr(module, "_backward_pre_hooks", {}).values()]
        hook_point = type(module).__name__ == "HookPoint"
        if any(hook_point or _foreign(h) for h in hooks):
            out.append(name or type(model).__name__)
    return out


def last_logits(model: Any, resid_last: torch.Tensor, columns: Any = None) -> torch.Tensor:
    """Final norm and unembedding of last-position residuals (``[batch, d_model]``, after the
    last block): ``[batch, d_vocab]`` logits, or only ``columns`` of them: ``[k]`` ids for every
    row or ``[batch, k]`` ids per row (a logit difference needs two columns of ``W_U``, not
    all ``d_vocab``); the model's output soft cap applied."""
    cfg = model.cfg
    x = resid_last[:, None]
    if getattr(cfg, "normalization_type", None) is not None and hasattr(model, "ln_final"):
        x = model.ln_final(x)
    x = x[:, 0]
    w_u, b_u = model.unembed.W_U, getattr(model.unembed, "b_U", None)
    if columns is None:
        logits = x @ w_u + (b_u if b_u is not None else 0)
    else:
        cols = torch.as_tensor(columns, device=w_u.device)
        if cols.ndim == 1:
            logits = x @ w_u[:, cols] + (b_u[cols] if b_u is not None else 0)
        else:  # one set of columns per row
            logits = torch.einsum("bd,dbk->bk", x, w_u[:, cols]) + (b_u[cols] if b_u is not None else 0)
    cap = float(getattr(cfg, "output_logits_soft_cap", -1.0) or -1.0)
    if cap > 0:
        logits = cap * torch.tanh(logits / cap)
    return logits


# ---------------------------------------------------------------------------- built from them
def block_runner(model: Any) -> Callable[..., torch.Tensor]:
    """A function running one block on the last ``m`` positions of a prompt, with the weights
    arranged once (TransformerLens re-arranges W_Q/W_K/W_V/W_O on every call, which dominates
    small batches). Make one per analysis call, after :func:`unsupported` (``"blocks"``) said
    yes: it keeps the weights of the moment.

    ``run(layer, resid, past_k, past_v, *, last_only=False)``: ``resid`` (``[batch, m,
    d_model]``) enters block ``layer`` at positions ``p..p+m-1``; ``past_k``/``past_v``
    (``[1 or batch, p, kv_heads, d_head]``, as at ``hook_k``/``hook_v``) are the keys and
    values of positions ``0..p-1``. Returns the residual after the block, ``[batch, m,
    d_model]``; with ``last_only`` keys and values are computed at every position but
    queries, attention output and MLP only at the last (``[batch, 1, d_model]``).
    ``run(layer, resid_mid, mid=True)``: the rest of a sequential block from ``resid_mid``.
    """
    cfg = model.cfg
    n_heads, d_head, d_model = int(cfg.n_heads), int(cfg.d_head), int(cfg.d_model)
    prepared: dict[int, tuple[Any, ...]] = {}

    def weights(layer: int) -> tuple[Any, ...]:
        if layer not in prepared:
            attn = model.blocks[layer].attn
            w_qkv, b_qkv, n_kv = qkv_weights(attn)
            n_q = n_heads * d_head  # also split, for a last-position-only query
            prepared[layer] = (
                w_qkv, b_qkv, w_qkv[:, :n_q].contiguous(), b_qkv[:n_q],
                w_qkv[:, n_q:].contiguous(), b_qkv[n_q:], n_kv,
                attn.W_O.detach().reshape(-1, d_model), attn.b_O.detach(),
            )
        return prepared[layer]

    def run(
        layer: int,
        resid: torch.Tensor,
        past_k: torch.Tensor | None = None,
        past_v: torch.Tensor | None = None,
        *,
        last_only: bool = False,
        mid: bool = False,
    ) -> torch.Tensor:
        block = model.blocks[layer]
        if mid:
            return resid + mlp(block, resid)
        assert past_k is not None and past_v is not None
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
        z = attend(q.transpose(1, 2), keys.transpose(1, 2), values.transpose(1, 2),
                   float(attn.attn_scale), first=first).transpose(1, 2)
        attn_out = (z.reshape(-1, n_heads * d_head) @ w_o + b_o).view(resid.shape)
        if cfg.attn_only:
            return resid + attn_out
        if cfg.parallel_attn_mlp:
            return resid + attn_out + mlp(block, resid)
        resid_mid = resid + attn_out
        return resid_mid + mlp(block, resid_mid)

    return run


def record(model: Any, tokens: torch.Tensor, *, grad: bool, resid_pre0: torch.Tensor | None = None) -> dict[str, Any]:
    """One forward pass over ``tokens`` (``[batch, pos]``, no padding mask: ``EdgePatcher``
    right-pads its prompts) to the final residual stream, after :func:`unsupported`
    (``"record"``) said yes: every layer's ``resid_pre`` (``"pre"``), ``hook_z`` (``"z"``),
    ``resid_mid`` (``"mid"``), ``hook_mlp_out`` (``"mlp"``) and the final residual
    (``"final"``); with ``grad``, the live ``hook_q/k/v`` and ``hook_mlp_in`` tensors that
    gradients are taken at (``"live"``: ``q{layer}``, ``k{layer}``, ``v{layer}``,
    ``mlp{layer}``; a separate ``hook_mlp_in``, as ``cfg.use_hook_mlp_in`` makes one, so that
    its gradient is the MLP's alone), carrying autograd graphs from the embeddings on (the
    weights enter detached). ``resid_pre0`` (``[batch, pos, d_model]``) replaces the
    embeddings."""
    cfg = model.cfg
    H = cfg.n_heads
    b, p = tokens.shape
    L = cfg.n_layers
    rec: dict[str, Any] = {"z": [None] * L, "mlp": [None] * L, "pre": [None] * L, "mid": [None] * L, "live": {}}
    x = (model.embed.W_E[tokens] + model.pos_embed.W_pos[:p] if resid_pre0 is None else resid_pre0).detach()
    if grad:
        x.requires_grad_(True)
    with torch.set_grad_enabled(grad):
        for layer, block in enumerate(model.blocks[:L]):
            attn = block.attn
            d = x.shape[-1]
            w_qkv, b_qkv, _ = qkv_weights(attn)
            rec["pre"][layer] = x.detach()
            h = norm(block.ln1, x).reshape(b * p, d)
            q, k, v = torch.addmm(b_qkv, h, w_qkv).view(b, p, 3, H, -1).unbind(2)  # [b, p, head, d_head]
            if grad:
                live = rec["live"]
                live[f"q{layer}"], live[f"k{layer}"], live[f"v{layer}"] = q, k, v
            z = attend(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                       float(attn.attn_scale)).transpose(1, 2)  # [b, p, head, d_head]
            rec["z"][layer] = z.detach()
            w_o = attn.W_O.detach().reshape(-1, d)
            x = x + torch.addmm(attn.b_O.detach(), z.reshape(b * p, -1), w_o).view(b, p, d)
            if cfg.attn_only:
                continue
            rec["mid"][layer] = x.detach()
            mlp_in = x.clone() if grad else x
            if grad:
                rec["live"][f"mlp{layer}"] = mlp_in
            out = mlp(block, mlp_in)
            rec["mlp"][layer] = out.detach()
            x = x + out
    rec["final"] = x
    return rec

