"""Binding SAEs to a model: the architectures accepted, the hooks they read and write, one
checked :class:`BoundSAE` per SAE, in forward order.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float

from ..._model import ModelHandle
from ...errors import SAEError

# Where a hook sits inside its block, for ordering SAEs along the forward pass.
_SUB_ORDER = (
    ("hook_resid_pre", 0),
    ("ln1.", 1),
    ("hook_attn_in", 1),
    ("_input", 1),
    ("attn.", 2),
    ("hook_attn_out", 3),
    ("hook_resid_mid", 4),
    ("ln2.", 5),
    ("hook_mlp_in", 5),
    ("mlp.hook_pre", 6),
    ("mlp.hook_post", 7),
    ("mlp.", 7),
    ("hook_mlp_out", 8),
    ("hook_resid_post", 9),
)
_SHORT = {
    "hook_resid_pre": "pre",
    "hook_resid_mid": "mid",
    "hook_resid_post": "post",
    "hook_attn_out": "attn",
    "hook_mlp_out": "mlp",
    "mlp.hook_post": "mlp act",
    "mlp.hook_pre": "mlp pre",
    "attn.hook_z": "z",
}


def _hook_position(name: str, n_layers: int) -> tuple[int, int, str]:
    m = re.match(r"blocks\.(\d+)\.(.*)$", name)
    if m is None:
        return (-1 if "embed" in name else n_layers, 0, name)
    rest = m.group(2)
    sub = 5
    for key, order in _SUB_ORDER:
        if key in rest:
            sub = order
            break
    return (int(m.group(1)), sub, name)


def short_hook_label(name: str) -> str:
    """``"blocks.2.hook_resid_pre"`` → ``"L2 pre"`` (the widget's column labels)."""
    m = re.match(r"blocks\.(\d+)\.(.*)$", name)
    if m is None:
        return name
    rest = m.group(2)
    return f"L{m.group(1)} {_SHORT.get(rest, rest.replace('hook_', ''))}"


def _attr_path(obj: Any, path: str) -> Any:
    for part in path.split("."):
        if obj is None:
            return None
        try:
            obj = getattr(obj, part, None)
        except Exception:  # a property that raises counts as missing
            return None
    return obj


def sae_hook_name(sae: Any) -> str | None:
    """The hook an SAE reads: ``hook_name``, ``cfg.metadata.hook_name`` (sae-lens 6) or
    ``cfg.hook_name`` (sae-lens 5 and earlier); None if it names none."""
    for path in ("hook_name", "cfg.metadata.hook_name", "cfg.hook_name"):
        value = _attr_path(sae, path)
        if isinstance(value, str) and value:
            return value
    return None


def sae_hook_name_out(sae: Any) -> str | None:
    """The hook a transcoder writes (``hook_name_out``, sae-lens: ``cfg.metadata.hook_name_out``);
    None for an SAE, which writes the hook it reads."""
    for path in ("hook_name_out", "cfg.metadata.hook_name_out"):
        value = _attr_path(sae, path)
        if isinstance(value, str) and value:
            return value
    return None


@dataclass
class BoundSAE:
    """One SAE checked against a model: its hook, widths, and encode/decode.

    Attributes:
        hook_name: the TransformerLens hook it reads and (when spliced) writes.
        sae: the SAE object itself (sae-lens ``SAE`` or the package's protocol).
        d_in, d_sae: input width and number of features.
        label: a short name for views (``"L1 pre"``).
        z_heads: for an SAE that takes ``hook_z`` as ``[..., head, d_head]`` and returns its
            reconstruction in that shape (sae-lens's ``reshape_activations="hook_z"``), the number
            of heads; 0 for SAEs that read and write ``[..., d_in]``.
        hook_out: the hook it writes: ``hook_name`` for an SAE; for a transcoder (sae-lens's
            ``Transcoder``: reads ``hook_name``, e.g. ``ln2.hook_normalized``, and predicts
            ``hook_name_out``, e.g. ``hook_mlp_out``) the later hook whose activation its
            decoder reconstructs. ``d_out`` is that hook's width.
    """

    hook_name: str
    sae: Any
    d_in: int
    d_sae: int
    label: str
    z_heads: int = 0
    hook_out: str = ""
    d_out: int = 0

    def __post_init__(self) -> None:
        self.hook_out = self.hook_out or self.hook_name
        self.d_out = self.d_out or self.d_in

    @property
    def is_transcoder(self) -> bool:
        return self.hook_out != self.hook_name

    @property
    def W_dec(self) -> Float[torch.Tensor, "d_sae d_in"]:
        return self.sae.W_dec

    def flat(self, act: torch.Tensor) -> torch.Tensor:
        """The hook's activation as ``[..., d_in]`` (``hook_z``'s ``[..., head, d_head]`` flattened)."""
        if act.shape[-1] != self.d_in and act.ndim >= 2 and act.shape[-2] * act.shape[-1] == self.d_in:
            return act.flatten(-2)
        return act

    def check_width(self, act: torch.Tensor) -> None:
        width = self.flat(act).shape[-1]
        if width != self.d_in:
            raise SAEError(
                f"the SAE for {self.hook_name!r} takes inputs of width d_in={self.d_in}, but the "
                f"model's activation at that hook has width {width} (shape "
                f"{tuple(act.shape)}): this SAE was trained on another model or another hook. "
                f"Pass the SAE trained on this model's {self.hook_name!r}."
            )

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """``[..., d_sae]`` the SAE's own encode (thresholds, gates, top-k included) of ``x``
        ``[..., d_in]`` (given to the SAE in the shape it takes)."""
        if self.z_heads and x.shape[-1] == self.d_in:
            x = x.unflatten(-1, (self.z_heads, self.d_in // self.z_heads))
        return self.sae.encode(x)

    def decode(self, f: torch.Tensor) -> torch.Tensor:
        """``[..., d_out]`` the SAE's own decode of ``f`` (``hook_z``'s ``[head, d_head]`` flattened)."""
        out = self.sae.decode(f)
        if out.shape[-1] != self.d_out and out.ndim >= 2 and out.shape[-2] * out.shape[-1] == self.d_out:
            return out.flatten(-2)
        return out


def _model_dtype(handle: ModelHandle) -> torch.dtype:
    return next(handle.model.parameters()).dtype


def bind_saes(model: Any, saes: Any) -> list[BoundSAE]:
    """Check SAEs against a model and put them in forward-pass order.

    Args:
        model: a TransformerLens model or :class:`~mechwidgets.ModelHandle`.
        saes: a list of SAEs, a dict ``{hook_name: SAE}``, or a single SAE. Each is an sae-lens
            ``SAE`` or has ``encode``, ``decode``, ``W_dec`` ``[d_sae, d_in]``, ``hook_name``
            and ``d_sae`` (:class:`mechwidgets.zoo.SimpleSAE`).

    Returns:
        One :class:`BoundSAE` per SAE, ordered as their hooks run (``L0 pre`` before ``L0 post``
        before ``L1 pre``).

    Raises:
        SAEError: no SAE; an object that is not an SAE; an SAE whose hook the model lacks, whose
            dict key disagrees with its own hook name, that repeats a hook, or whose weights are
            on another device or in another dtype than the model's. (A ``d_in`` that does not
            match the hook's width is caught when activations are first read.)
    """
    handle = ModelHandle.wrap(model)
    items: list[tuple[str | None, Any]]
    if isinstance(saes, Mapping):
        items = [(str(k), v) for k, v in saes.items()]
    elif isinstance(saes, (list, tuple)):
        items = [(None, s) for s in saes]
    elif saes is None:
        items = []
    else:
        items = [(None, saes)]
    if not items:
        raise SAEError(
            "no SAE was given: pass a list of SAEs or a dict {hook_name: SAE}, e.g. "
            "`mechwidgets.zoo.load_saes('toy-lm')` for the zoo's toy-lm."
        )
    device = handle.device
    dtype = _model_dtype(handle)
    bound: list[BoundSAE] = []
    seen: dict[str, int] = {}
    for i, (key, sae) in enumerate(items):
        where = f"SAE {key!r}" if key is not None else f"SAE #{i}"
        missing = [a for a in ("encode", "decode") if not callable(getattr(sae, a, None))]
        w_dec = _attr_path(sae, "W_dec")
        if not isinstance(w_dec, torch.Tensor) or w_dec.ndim != 2:
            missing.append("W_dec ([d_sae, d_in] tensor)")
        if missing:
            raise SAEError(
                f"{where} ({type(sae).__module__}.{type(sae).__qualname__}) is not a sparse "
                f"autoencoder this package can use: it lacks {', '.join(missing)}. Pass an "
                f"sae-lens SAE, or an object with encode, decode, W_dec, hook_name and d_sae "
                f"(see mechwidgets.zoo.SimpleSAE)."
            )
        own = sae_hook_name(sae)
        if key is not None and own is not None and own != key:
            raise SAEError(
                f"{where} is keyed by {key!r} but reads the hook {own!r} (its hook_name): key "
                f"the dict by the SAE's own hook name, or pass a list."
            )
        hook = key if key is not None else own
        if hook is None:
            raise SAEError(
                f"{where} names no hook: give it a `hook_name` (sae-lens: cfg.metadata.hook_name) "
                f"or pass a dict {{hook_name: SAE}}."
            )
        if not handle.has_hook(hook):
            near = [n for n in handle.model.hook_dict if n.endswith(hook.split(".")[-1])][:4]
            raise SAEError(
                f"{where} reads the hook {hook!r}, which this model does not have (it has "
                f"{handle.n_layers} layers; hooks like it: {near}). It was trained on another "
                f"model or layer: pass the SAEs trained on this model."
            )
        if hook in seen:
            raise SAEError(
                f"two SAEs read the hook {hook!r} (#{seen[hook]} and #{i}): pass one SAE per hook."
            )
        seen[hook] = i
        if w_dec.device != device:
            raise SAEError(
                f"{where} ({hook}) has its weights on {w_dec.device} but the model is on "
                f"{device}: move one of them, e.g. `sae.to({str(device)!r})`."
            )
        if w_dec.dtype != dtype:
            raise SAEError(
                f"{where} ({hook}) has {w_dec.dtype} weights but the model runs in {dtype}: "
                f"convert one of them, e.g. `sae.to({dtype})`."
            )
        d_sae_attr = getattr(sae, "d_sae", None) or _attr_path(sae, "cfg.d_sae")
        d_sae = int(d_sae_attr) if d_sae_attr else int(w_dec.shape[0])
        if d_sae != w_dec.shape[0]:
            raise SAEError(f"{where} ({hook}) says d_sae={d_sae} but W_dec has {w_dec.shape[0]} rows.")
        reshapes = _attr_path(sae, "cfg.reshape_activations") == "hook_z"
        z_heads = int(handle.cfg.n_heads) if reshapes and hook.endswith("hook_z") else 0
        hook_out = sae_hook_name_out(sae) or hook
        if hook_out != hook and not handle.has_hook(hook_out):
            raise SAEError(
                f"{where} (a transcoder reading {hook!r}) writes the hook {hook_out!r}, which this "
                f"model does not have: pass the transcoders trained on this model."
            )
        w_enc = _attr_path(sae, "W_enc")
        d_in = int(w_dec.shape[1])
        if hook_out != hook and isinstance(w_enc, torch.Tensor) and w_enc.ndim == 2:
            d_in = int(w_enc.shape[0])
        label = short_hook_label(hook) if hook_out == hook else f"{short_hook_label(hook)}→{short_hook_label(hook_out).split(' ', 1)[-1]}"
        bound.append(BoundSAE(hook, sae, d_in, d_sae, label, z_heads, hook_out, int(w_dec.shape[1])))
    bound.sort(key=lambda b: _hook_position(b.hook_name, handle.n_layers))
    return bound


def _as_bound(handle: ModelHandle, saes: Any) -> list[BoundSAE]:
    if isinstance(saes, (list, tuple)) and saes and all(isinstance(s, BoundSAE) for s in saes):
        return list(saes)
    return bind_saes(handle, saes)


