"""EAP's and EAP-IG's recording runs of a plain ``HookedTransformer``, without its hook points.

TransformerLens's forward pass goes through about twenty hook points, einops rearrangements and
weight reshapes per layer, and computes ``ln1`` three times (for q, k and v). On a small model
that is a large share of a forward pass: toy-lm's, to the final residual stream, takes 58% less
time here on one prompt and 39% less on eight (``torch.set_num_threads(1)``, medians of 60
runs); EAP's set-up runs the model twice and back-propagates through it (EAP-IG once more per
step). :func:`record` computes the same arithmetic directly from the model's live weights (read
afresh at every call: nothing is cached), for the configurations :func:`unsupported` accepts,
and returns what ``EdgePatcher._record`` records from the hook points: every layer's
``resid_pre``, ``hook_z``, ``resid_mid`` and ``hook_mlp_out``, the final residual stream, and
with ``grad`` the live ``hook_q/k/v`` and ``hook_mlp_in`` tensors that gradients are taken at (a
separate ``hook_mlp_in``, as ``cfg.use_hook_mlp_in`` makes one, so that its gradient is the
MLP's alone).

Every other model goes through TransformerLens: any model with a hook attached to one of its
modules (a user's hook must see the run), and any whose code is not TransformerLens's own (a
subclass, a method replaced on an instance or patched on a class: the methods' code must come
from TransformerLens's files). The boundary: module-level functions that TransformerLens's
methods call (its utilities, einops, torch) are not checked; patching those is not detected. ``tests/test_circuits.py``
checks each recorded tensor and gradient against TransformerLens's own run on every
configuration covered here (in float64 to 1e-10), and that the ones not covered are refused.
"""

from __future__ import annotations

import contextlib
import functools
import os
import sys
import types
from typing import Any

import torch
import torch.nn.functional as F

from .._model import tl_major_version

#: Configuration fields that change the arithmetic, with the only values :func:`record` follows
#: (``dtype``, the attention modules' own settings and the code itself are checked in
#: :func:`unsupported`).
_PLAIN_CONFIG: dict[str, tuple[Any, ...]] = {
    "positional_embedding_type": ("standard",),
    "normalization_type": (None, "LN", "LNPre", "RMS", "RMSPre"),
    "attention_dir": ("causal",),
    "attn_types": (None,),
    "use_local_attn": (False,),
    "gated_mlp": (False,),
    "num_experts": (None,),
    "parallel_attn_mlp": (False,),
    "post_embedding_ln": (False,),
    "use_normalization_before_and_after": (False,),
    "use_qk_norm": (False,),
    "clip_qkv": (None,),
    "use_logn_attn": (False,),
    "use_attention_sinks": (False,),
    "n_devices": (1,),
    # an allow-list: architectures whose TransformerLens code has no special case in the block
    # or the attention (others, e.g. post-norm ones, go through TransformerLens)
    "original_architecture": (None, "GPT2LMHeadModel"),
}
#: TransformerLens's own norms (weights ``w``, if any, and a number ``eps``), whose formula
#: :func:`_norm` repeats (and ``EdgePatcher`` differentiates in closed form).
TL_NORMS = ("LayerNorm", "LayerNormPre", "RMSNorm", "RMSNormPre")


def tl_norm(ln: Any, kinds: tuple[str, ...] = TL_NORMS) -> bool:
    """Whether ``ln`` is one of TransformerLens's own norms named in ``kinds`` (a
    ``torch.nn.LayerNorm`` is not: its weights are not ``w``)."""
    kind = type(ln)
    return (kind.__name__ in kinds and kind.__module__.startswith("transformer_lens")
            and isinstance(getattr(ln, "eps", None), (int, float)))
def _has_hooks(module: torch.nn.Module) -> bool:
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


def unsupported(model: Any) -> str | None:
    """Why :func:`record` cannot stand in for ``model``'s own forward pass (None: it can): a
    configuration or weights it does not follow, a module's own attention settings or ``cfg``,
    hooks (the model's or global ones), autocast, or code that is not TransformerLens's own."""
    if tl_major_version() != 3:
        return "not a TransformerLens 3.x HookedTransformer"
    from transformer_lens import HookedTransformer
    from transformer_lens.components import MLP, Attention, Embed, PosEmbed, TransformerBlock

    if type(model) is not HookedTransformer:
        return "not a plain HookedTransformer"
    cfg = model.cfg
    for name, allowed in _PLAIN_CONFIG.items():
        if getattr(cfg, name, None) not in allowed:
            return f"cfg.{name} is {getattr(cfg, name, None)!r}"
    if (getattr(cfg, "attn_scores_soft_cap", None) or -1.0) > 0 or (cfg.n_key_value_heads or cfg.n_heads) != cfg.n_heads:
        return "soft-capped or grouped-query attention"
    if str(getattr(cfg, "act_fn", "")).endswith("_ln"):
        return f"act_fn {cfg.act_fn!r} normalises inside the MLP"
    # TransformerLens rounds norm outputs to cfg.dtype and computes attention in float32 below it
    wrong_dtype = f"weights not all in cfg.dtype {cfg.dtype} (float32 or float64)"
    if cfg.dtype not in (torch.float32, torch.float64):
        return wrong_dtype
    if type(model.embed) is not Embed or type(model.pos_embed) is not PosEmbed:
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
    for module in model.modules():
        if _has_hooks(module):
            return "hooks attached to the model"
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
    return None


def _norm(ln: Any, x: torch.Tensor) -> torch.Tensor:
    """TransformerLens's ``LayerNorm`` / ``LayerNormPre`` / ``RMSNorm`` / ``RMSNormPre`` as one
    fused operation each: the same formula (``(x - mean) / sqrt(mean((x - mean)²) + eps)``, then
    the weights; RMS without the mean), without TransformerLens's six separate passes."""
    if isinstance(ln, torch.nn.Identity):
        return x
    kind = type(ln).__name__
    w = ln.w.detach() if kind in ("LayerNorm", "RMSNorm") else None
    if kind.startswith("LayerNorm"):
        return F.layer_norm(x, x.shape[-1:], w, ln.b.detach() if w is not None else None, float(ln.eps))
    if hasattr(F, "rms_norm"):  # torch >= 2.4
        return F.rms_norm(x, x.shape[-1:], w, float(ln.eps))
    x = x / (x.pow(2).mean(-1, keepdim=True) + float(ln.eps)).sqrt()
    return x if w is None else x * w


def record(model: Any, tokens: torch.Tensor, *, grad: bool, resid_pre0: torch.Tensor | None = None) -> dict[str, Any]:
    """One forward pass over ``tokens`` (``[batch, pos]``, no padding mask: ``EdgePatcher``
    right-pads its prompts, and passes TransformerLens an all-ones mask where the tokenizer pads
    on the left) to the final residual stream, recorded as ``EdgePatcher._record`` records it;
    ``resid_pre0`` (``[batch, pos, d_model]``) replaces the embeddings. With ``grad``, the live
    tensors carry autograd graphs from the embeddings on (the weights enter detached: only
    activation gradients are taken)."""
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
            d = attn.W_Q.shape[1]
            # q, k, v of every head from one product: [d_model, (q k v) (head d_head)]
            w_qkv = torch.cat([attn.W_Q, attn.W_K, attn.W_V]).detach().transpose(0, 1).reshape(d, -1)
            b_qkv = torch.cat([attn.b_Q, attn.b_K, attn.b_V]).detach().reshape(-1)
            rec["pre"][layer] = x.detach()
            h = _norm(block.ln1, x).reshape(b * p, d)
            q, k, v = torch.addmm(b_qkv, h, w_qkv).view(b, p, 3, H, -1).unbind(2)  # [b, p, head, d_head]
            if grad:
                live = rec["live"]
                live[f"q{layer}"], live[f"k{layer}"], live[f"v{layer}"] = q, k, v
            z = F.scaled_dot_product_attention(  # softmax(q.k / attn_scale, causal) @ v
                q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True,
                scale=1.0 / float(attn.attn_scale)).transpose(1, 2)  # [b, p, head, d_head]
            rec["z"][layer] = z.detach()
            w_o = attn.W_O.detach().reshape(-1, d)
            x = x + torch.addmm(attn.b_O.detach(), z.reshape(b * p, -1), w_o).view(b, p, d)
            if cfg.attn_only:
                continue
            rec["mid"][layer] = x.detach()
            mlp_in = x.clone() if grad else x
            if grad:
                rec["live"][f"mlp{layer}"] = mlp_in
            mlp = block.mlp
            pre = torch.addmm(mlp.b_in.detach(), _norm(block.ln2, mlp_in).reshape(b * p, d), mlp.W_in.detach())
            out = torch.addmm(mlp.b_out.detach(), mlp.act_fn(pre), mlp.W_out.detach()).view(b, p, d)
            rec["mlp"][layer] = out.detach()
            x = x + out
    rec["final"] = x
    return rec
