"""Sparse autoencoder features: what fires on each token, how features carry through the layers,
and what happens downstream when one is switched off or turned up.

A sparse autoencoder (SAE) on a hook rewrites the activation ``x`` (``[pos, d_in]``) as a sparse,
non-negative code ``f = encode(x)`` (``[pos, d_sae]``) and a reconstruction
``x_hat = decode(f) = f @ W_dec + b_dec`` (Bricken et al. 2023, "Towards Monosemanticity";
Cunningham et al. 2023; TopK SAEs: Gao et al. 2024). Feature ``i`` *fires* at a position when
``f[pos, i] > 0``; its *decoder direction* is ``W_dec[i]``.

What this module computes, headless (the feature widget draws it):

- :func:`feature_activations`: for every SAE and every token, the active features and their
  values, plus each SAE's reconstruction error on this prompt (error norm per token, relative
  error and explained variance), so that nobody over-reads a poor SAE: features of an SAE that
  explains little of its activation say little about the model.
- :func:`feature_logit_effects`: a feature's direct effect on the next-token logits, its decoder
  direction read through the unembedding (top promoted and suppressed tokens).
- :func:`feature_links`: links between the features of adjacent SAEs, following Balcells et al.
  2024, "Evolution of SAE Features Across Layers in LLMs": the cosine similarity of their decoder
  directions (cheap, weights only) and the Pearson correlation of their activations over the
  tokens of a sample of prompts (the statistical relation the paper builds its feature graph
  from), with the top links of every feature in both directions.
- :func:`intervene_features`: ablate a feature (set it to 0) or clamp it to a value at chosen
  positions. The SAE is spliced in *with its error term*: the hook returns
  ``decode(f_modified) + (x - decode(f))``, computed as ``x + (decode(f_modified) - decode(f))``
  (the same value), so that splicing with no intervention returns ``x`` exactly and the model's
  logits are unchanged: only the edit, not the SAE's reconstruction error, reaches the model.

SAEs accepted (see :func:`bind_saes`): sae-lens ``SAE`` objects (sae-lens 6: ``cfg.metadata
.hook_name``; older: ``cfg.hook_name``) and any object with ``encode``, ``decode``, ``W_dec``
(``[d_sae, d_in]``), ``hook_name`` and ``d_sae``, such as :class:`mechwidgets.zoo.SimpleSAE`
(for TransformerLens 4.x users, where sae-lens does not install). Every architecture is
encoded by its own ``encode`` (ReLU, gated, TopK, JumpReLU with its thresholds); sae-lens SAEs
that take ``hook_z`` as ``[head, d_head]`` get it in that shape; sae-lens transcoders (read
``hook_name``, write ``hook_name_out``) are read at one hook and edited at the other. Pass them
as a list or as a dict keyed by hook name; one SAE per hook, any subset of layers.

At real dictionary sizes (24k–1M features) nothing here is quadratic in ``d_sae`` unless asked:
:func:`feature_activations` is one forward and one encode per SAE, and :class:`DecoderLinks`
finds a feature's cross-layer links when it is looked at, by a chunked top-k over the adjacent
decoder. :func:`feature_links` (activation correlations over a sample) compares every feature
with every feature of the next SAE: use it for small SAEs.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from jaxtyping import Float, Int

from .._fast import FinalNorm
from .._model import ModelHandle
from ..errors import ComponentError, PromptError, SAEError
from .attention import Predictions, per_token_loss, top_predictions

InterventionMode = Literal["ablate", "clamp"]
INTERVENTION_MODES: tuple[str, ...] = ("ablate", "clamp")
LinkMetric = Literal["correlation", "cosine"]

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


# --------------------------------------------------------------------------------------- SAEs
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


# --------------------------------------------------------------------------------------- activations
@dataclass
class FeatureTrace:
    """The SAE features of one prompt.

    Attributes:
        tokens: ``[pos]`` token ids (BOS first); ``str_tokens`` the same as strings.
        hook_names: the SAEs' hooks in forward order; ``labels`` their short names.
        d_sae: the number of features of each SAE.
        top_k: how many features per token and SAE ``top_indices`` keeps.
        top_indices: ``[sae, pos, top_k]`` the most active features of each token (most active
            first); ``-1`` where fewer than ``top_k`` fire. ``top_values`` their activations
            (0 where the index is -1).
        n_active: ``[sae, pos]`` how many features fire (activation > 0).
        total_activation: ``[sae, pos]`` sum of the feature activations.
        active: per SAE, the non-zero activations as ``(pos, feature, value)`` 1-d tensors
            (sparse: use :meth:`feature_values` or :meth:`dense`).
        error_norm: ``[sae, pos]`` ``||x - decode(encode(x))||`` per token; ``act_norm``
            ``[sae, pos]`` ``||x||``.
        relative_error: ``[sae]`` ``sqrt(sum ||x - x_hat||^2 / sum ||x||^2)`` over the prompt's
            positions after BOS (SAEs are trained without the BOS outlier).
        explained_variance: ``[sae]`` ``1 - sum ||x - x_hat||^2 / sum ||x - mean(x)||^2`` over
            the same positions (sae-lens's definition; NaN for a single position).
        ln_scale: the mean ``1/sigma`` of the final LayerNorm over those positions (used to
            scale logit effects; 1.0 for models without a final norm).
    """

    tokens: Int[torch.Tensor, " pos"]
    str_tokens: list[str]
    hook_names: list[str]
    labels: list[str]
    d_sae: list[int]
    top_k: int
    top_indices: Int[torch.Tensor, "sae pos k"]
    top_values: Float[torch.Tensor, "sae pos k"]
    n_active: Int[torch.Tensor, "sae pos"]
    total_activation: Float[torch.Tensor, "sae pos"]
    active: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]
    error_norm: Float[torch.Tensor, "sae pos"]
    act_norm: Float[torch.Tensor, "sae pos"]
    relative_error: Float[torch.Tensor, " sae"]
    explained_variance: Float[torch.Tensor, " sae"]
    ln_scale: float = 1.0

    def index(self, sae: int | str) -> int:
        """The position of an SAE (by index or hook name) in :attr:`hook_names`."""
        return _sae_index(self.hook_names, sae)

    def feature_values(self, sae: int | str, feature: int) -> Float[torch.Tensor, " pos"]:
        """``[pos]`` activation of one feature on every token (0 where it does not fire)."""
        i = self.index(sae)
        _check_feature(self.hook_names[i], self.d_sae[i], feature)
        pos, feat, val = self.active[i]
        out = torch.zeros(len(self.str_tokens))
        mask = feat == feature
        out[pos[mask]] = val[mask]
        return out

    def dense(self, sae: int | str) -> Float[torch.Tensor, "pos d_sae"]:
        """``[pos, d_sae]`` all activations of one SAE."""
        i = self.index(sae)
        pos, feat, val = self.active[i]
        out = torch.zeros(len(self.str_tokens), self.d_sae[i])
        out[pos, feat] = val
        return out


def _sae_index(hook_names: Sequence[str], sae: int | str) -> int:
    if isinstance(sae, str):
        if sae not in hook_names:
            raise SAEError(f"no SAE reads {sae!r}; the SAEs read {list(hook_names)}.")
        return list(hook_names).index(sae)
    if isinstance(sae, bool) or not isinstance(sae, int) or not 0 <= sae < len(hook_names):
        raise SAEError(f"SAE index {sae!r} is out of range: there are {len(hook_names)} SAEs "
                       f"({list(hook_names)}).")
    return sae


def _check_feature(hook: str, d_sae: int, feature: Any) -> int:
    if isinstance(feature, bool) or not isinstance(feature, int) or not 0 <= feature < d_sae:
        raise SAEError(f"feature {feature!r} is out of range: the SAE on {hook!r} has features "
                       f"0..{d_sae - 1}.")
    return feature


def _non_bos(tokens: torch.Tensor, handle: ModelHandle) -> slice:
    """Positions used for summary statistics: all but a leading BOS (when there is more)."""
    bos = getattr(handle.model.tokenizer, "bos_token_id", None)
    if tokens.shape[-1] > 1 and bos is not None and int(tokens.reshape(-1)[0]) == int(bos):
        return slice(1, None)
    return slice(0, None)


def _final_scale(handle: ModelHandle, resid: torch.Tensor) -> torch.Tensor:
    """``[...]`` the final norm's ``1/sigma`` for residual vectors ``[..., d_model]``."""
    return 1.0 / FinalNorm.of(handle).scale(resid.float())[..., 0]


def _encode_all(
    bound: Sequence[BoundSAE], acts: Sequence[torch.Tensor], top_k: int, stats: slice,
    errors: bool = True, outs: Sequence[torch.Tensor | None] | None = None,
) -> dict[str, Any]:
    """Encode each SAE's activation ``[pos, ...]``: top-k, counts, sparse values, and (unless
    ``errors`` is False, when they are NaN) the reconstruction errors, against ``outs[i]`` for a
    transcoder (the activation of the hook it writes)."""
    n_pos = acts[0].shape[0]
    k = max(1, int(top_k))
    top_idx = torch.full((len(bound), n_pos, k), -1, dtype=torch.int32)
    top_val = torch.zeros(len(bound), n_pos, k)
    n_active = torch.zeros(len(bound), n_pos, dtype=torch.int32)
    total = torch.zeros(len(bound), n_pos)
    err_norm = torch.zeros(len(bound), n_pos)
    act_norm = torch.zeros(len(bound), n_pos)
    rel = torch.zeros(len(bound))
    ev = torch.zeros(len(bound))
    active = []
    for i, (b, act) in enumerate(zip(bound, acts, strict=True)):
        b.check_width(act)
        x = b.flat(act)
        f = b.encode(x)
        target = outs[i] if outs is not None and b.is_transcoder else None
        xf = x.float() if target is None else target.reshape(*x.shape[:-1], b.d_out).float()
        err = (xf - b.decode(f).float()) if errors else torch.full_like(xf, math.nan)
        f = f.float()
        kk = min(k, f.shape[-1])
        vals, idx = f.topk(kk, dim=-1)
        on = vals > 0
        top_idx[i, :, :kk] = torch.where(on, idx, -1).to(torch.int32).cpu()
        top_val[i, :, :kk] = torch.where(on, vals, 0.0).cpu()
        fired = f > 0
        n_active[i] = fired.sum(-1).to(torch.int32).cpu()
        total[i] = f.clamp(min=0).sum(-1).cpu()
        pos, feat = fired.nonzero(as_tuple=True)
        active.append((pos.cpu(), feat.cpu(), f[pos, feat].cpu()))
        err_norm[i] = err.norm(dim=-1).cpu()
        act_norm[i] = xf.norm(dim=-1).cpu()
        e2 = err[stats].pow(2).sum()
        x2 = xf[stats].pow(2).sum()
        rel[i] = (e2 / x2).sqrt() if float(x2) > 0 else float("nan")
        xs = xf[stats]
        var = (xs - xs.mean(0, keepdim=True)).pow(2).sum()
        ev[i] = 1 - e2 / var if xs.shape[0] > 1 and float(var) > 0 else float("nan")
    return {
        "top_indices": top_idx, "top_values": top_val, "n_active": n_active,
        "total_activation": total, "active": active, "error_norm": err_norm,
        "act_norm": act_norm, "relative_error": rel, "explained_variance": ev,
    }


def feature_activations(
    model: Any,
    saes: Any,
    prompt: str | torch.Tensor,
    *,
    top_k: int = 10,
    max_positions: int = 512,
) -> FeatureTrace:
    """Run the model once and encode every SAE's hook activation.

    Args:
        model: a TransformerLens model or :class:`~mechwidgets.ModelHandle`.
        saes: SAEs as :func:`bind_saes` takes them (list, dict by hook name, or one SAE).
        prompt: text (BOS is prepended) or a ``[pos]`` / ``[1, pos]`` token tensor.
        top_k: how many of the most active features to keep per token and SAE (default 10).
            Every non-zero activation is kept too, sparsely (:attr:`FeatureTrace.active`).
        max_positions: refuse longer prompts (default 512).

    Returns:
        A :class:`FeatureTrace` (CPU tensors).

    Raises:
        SAEError: see :func:`bind_saes`; also an SAE whose ``d_in`` does not match its hook.
        PromptError: an empty or too long prompt.
    """
    handle = ModelHandle.wrap(model)
    bound = _as_bound(handle, saes)
    tokens = handle.tokens(prompt, max_positions=max_positions)
    final = f"blocks.{handle.n_layers - 1}.hook_resid_post"
    names = [b.hook_name for b in bound]
    outs = [b.hook_out for b in bound if b.is_transcoder]
    want = list(dict.fromkeys([*names, *outs, *([final] if handle.has_hook(final) else [])]))
    with handle.session():
        _, cache = handle.run_with_cache(tokens, want, return_type=None)
        stats = _non_bos(tokens, handle)
        enc = _encode_all(bound, [cache[n][0] for n in names], top_k, stats,
                          outs=[cache[b.hook_out][0] for b in bound])
        ln_scale = float(_final_scale(handle, cache[final][0][stats]).mean()) if final in cache else 1.0
    return FeatureTrace(
        tokens=tokens[0].cpu(),
        str_tokens=handle.str_tokens(tokens),
        hook_names=names,
        labels=[b.label for b in bound],
        d_sae=[b.d_sae for b in bound],
        top_k=int(enc["top_indices"].shape[-1]),
        ln_scale=ln_scale,
        **{k: v for k, v in enc.items()},
    )


# --------------------------------------------------------------------------------------- logit effects
@dataclass
class LogitEffects:
    """Direct effect of features on the logits (see :func:`feature_logit_effects`).

    Attributes:
        hook_name: the SAE's hook; ``features`` the features, in the order asked.
        promoted_ids / promoted_tokens / promoted_values: ``[feature, k]`` the tokens whose
            logits the feature raises most, and by how much (per unit of activation).
        suppressed_ids / suppressed_tokens / suppressed_values: the same for the most lowered
            (most negative first).
        ln_scale: the constant ``1/sigma`` the effects were multiplied by.
    """

    hook_name: str
    features: list[int]
    promoted_ids: Int[torch.Tensor, "feature k"]
    promoted_tokens: list[list[str]]
    promoted_values: Float[torch.Tensor, "feature k"]
    suppressed_ids: Int[torch.Tensor, "feature k"]
    suppressed_tokens: list[list[str]]
    suppressed_values: Float[torch.Tensor, "feature k"]
    ln_scale: float


def residual_directions(model: Any, sae: BoundSAE, features: Sequence[int]) -> torch.Tensor:
    """``[n, d_model]`` what a unit of each feature adds to the residual stream.

    ``W_dec[f]`` for SAEs on residual-width hooks (``resid_*``, ``attn_out``, ``mlp_out``);
    ``W_dec[f] @ W_out`` for ``mlp.hook_post``; ``W_dec[f]`` (as ``[head, d_head]``) through
    ``W_O`` for ``attn.hook_z``.
    """
    handle = ModelHandle.wrap(model)
    w = sae.W_dec[torch.as_tensor(list(features), dtype=torch.long, device=sae.W_dec.device)]
    return _to_residual(handle, sae, w.detach().float())


def _to_residual(handle: ModelHandle, sae: BoundSAE, w: torch.Tensor) -> torch.Tensor:
    """Decoder rows ``[n, d_out]`` (float) as what they add to the residual stream ``[n, d_model]``."""
    if sae.d_out == handle.d_model and not sae.hook_out.endswith(("attn.hook_z", "mlp.hook_post")):
        return w
    m = re.match(r"blocks\.(\d+)\.(mlp\.hook_post|attn\.hook_z)$", sae.hook_out)
    block = handle.model.blocks[int(m.group(1))] if m else None
    if m and m.group(2) == "mlp.hook_post" and block is not None:
        return w @ block.mlp.W_out.detach().float()
    if m and m.group(2) == "attn.hook_z" and block is not None:
        w_o = block.attn.W_O.detach().float()  # [head, d_head, d_model]
        return w @ w_o.reshape(-1, w_o.shape[-1])
    raise SAEError(
        f"the SAE on {sae.hook_out!r} writes {sae.d_out}-wide vectors, not the residual stream's "
        f"{handle.d_model}: its logit effects are only defined for residual-stream, attn_out, "
        f"mlp_out, mlp.hook_post and attn.hook_z SAEs."
    )


def _through_final_norm(handle: ModelHandle, d: torch.Tensor) -> torch.Tensor:
    """Residual directions ``[n, d_model]`` through the final norm's linear part (centred for
    LayerNorm, times ``ln_final.w`` when the model has one unfolded)."""
    norm = str(getattr(handle.cfg, "normalization_type", None) or "")
    if norm.startswith("LN"):
        d = d - d.mean(-1, keepdim=True)  # the final LayerNorm removes the mean
    ln = getattr(handle.model, "ln_final", None)
    w_ln = getattr(ln, "w", None) if ln is not None else None
    if isinstance(w_ln, torch.Tensor):
        d = d * w_ln.detach().float()
    return d


def logit_effect_matrix(
    model: Any, sae: BoundSAE, features: Sequence[int], *, ln_scale: float = 1.0
) -> Float[torch.Tensor, "feature vocab"]:
    """``[n, d_vocab]`` direct logit effect of a unit of each feature (see
    :func:`feature_logit_effects` for the convention)."""
    return logit_effects_of(model, residual_directions(model, sae, features), ln_scale=ln_scale)


def logit_effects_of(
    model: Any, directions: Float[torch.Tensor, "n d_model"], *, ln_scale: float = 1.0
) -> Float[torch.Tensor, "n vocab"]:
    """``[n, d_vocab]`` direct logit effect of residual directions (e.g. several SAEs' features
    from :func:`residual_directions`, concatenated: one pass over ``W_U`` for all of them)."""
    handle = ModelHandle.wrap(model)
    d = _through_final_norm(handle, directions.float())
    w_u = handle.model.W_U.detach().float()
    return (d @ w_u) * float(ln_scale)


def features_promoting(
    model: Any, sae: Any, token: int, *, k: int = 10, ln_scale: float = 1.0, chunk: int = 4096,
) -> tuple[Int[torch.Tensor, " k"], Float[torch.Tensor, " k"]]:
    """The ``k`` features whose direct logit effect (as :func:`feature_logit_effects`) raises
    ``token`` most: one column of the effect matrix, computed a chunk of features at a time.

    Returns:
        ``(features, effects)``, largest effect first.
    """
    handle = ModelHandle.wrap(model)
    b = sae if isinstance(sae, BoundSAE) else bind_saes(handle, [sae])[0]
    if isinstance(token, bool) or not isinstance(token, int) or not 0 <= token < handle.d_vocab:
        raise SAEError(f"token id {token!r} is out of range: the vocabulary has ids 0..{handle.d_vocab - 1}.")
    col = handle.model.W_U[:, token].detach().float()
    with torch.no_grad():
        scores = torch.cat([
            _through_final_norm(handle, _to_residual(handle, b, b.W_dec[lo:lo + chunk].detach().float())) @ col
            for lo in range(0, b.d_sae, chunk)
        ]) * float(ln_scale)
    v, f = scores.topk(min(int(k), b.d_sae))
    return f, v


def feature_logit_effects(
    model: Any,
    sae: Any,
    features: int | Sequence[int],
    *,
    k: int = 10,
    ln_scale: float = 1.0,
) -> LogitEffects:
    """Top promoted and suppressed next-token logits of features (direct effect).

    The effect of a unit of feature ``f`` is its decoder direction through the unembedding,
    ``W_dec[f] @ W_U`` (the standard, e.g. Neuronpedia's), passed through the final norm's
    *linear* part: the direction is centred (LayerNorm removes the mean) and multiplied by the
    norm's weight ``ln_final.w`` when the model has one unfolded, which is exactly what
    TransformerLens's ``fold_ln`` bakes into ``W_U``. The norm's division by ``sigma`` depends on
    the whole residual stream, not on the feature, so it is *approximated* by a constant:
    ``ln_scale`` (default 1.0, i.e. not applied; :attr:`FeatureTrace.ln_scale` is the mean
    ``1/sigma`` over a prompt). The ranking of tokens never depends on it. Effects through later
    layers (indirect effects) are not included: for those, use :func:`intervene_features`.

    Args:
        model: a TransformerLens model or handle.
        sae: one SAE (or a :class:`BoundSAE`).
        features: one feature or several.
        k: tokens to keep in each direction (default 10).
        ln_scale: constant ``1/sigma`` of the final norm (default 1.0).
    """
    handle = ModelHandle.wrap(model)
    bound = sae if isinstance(sae, BoundSAE) else bind_saes(handle, [sae])[0]
    feats = [features] if isinstance(features, int) else list(features)
    for f in feats:
        _check_feature(bound.hook_name, bound.d_sae, f)
    with torch.no_grad():
        eff = logit_effect_matrix(handle, bound, feats, ln_scale=ln_scale)
    kk = min(int(k), eff.shape[-1])
    pv, pi = eff.topk(kk, dim=-1)
    sv, si = (-eff).topk(kk, dim=-1)
    vocab_str = _token_strs(handle, set(pi.flatten().tolist()) | set(si.flatten().tolist()))
    return LogitEffects(
        hook_name=bound.hook_name,
        features=feats,
        promoted_ids=pi.cpu(),
        promoted_tokens=[[vocab_str[int(t)] for t in row] for row in pi],
        promoted_values=pv.cpu(),
        suppressed_ids=si.cpu(),
        suppressed_tokens=[[vocab_str[int(t)] for t in row] for row in si],
        suppressed_values=(-sv).cpu(),
        ln_scale=float(ln_scale),
    )


def _token_strs(handle: ModelHandle, ids: Iterable[int]) -> dict[int, str]:
    ids = sorted(set(int(i) for i in ids))
    if not ids:
        return {}
    strs = handle.model.to_str_tokens(torch.tensor(ids))
    return {i: str(s) for i, s in zip(ids, strs, strict=True)}


# --------------------------------------------------------------------------------------- links
@dataclass
class LinkTable:
    """The top links from each feature of one SAE to the features of an adjacent one.

    Attributes:
        indices: ``[d_sae_from, n_links]`` linked features of the other SAE, best first.
        correlation: ``[d_sae_from, n_links]`` Pearson correlation of the activations.
        cosine: ``[d_sae_from, n_links]`` cosine similarity of the decoder directions (NaN when
            the two SAEs' ``d_in`` differ).
    """

    indices: Int[torch.Tensor, "feature n"]
    correlation: Float[torch.Tensor, "feature n"]
    cosine: Float[torch.Tensor, "feature n"]


@dataclass
class FeatureLinks:
    """Links between features of adjacent SAEs (Balcells et al. 2024).

    Attributes:
        hook_names: the SAEs' hooks in forward order; pair ``p`` links ``hook_names[p]`` to
            ``hook_names[p + 1]``.
        by: the statistic the links are ranked by (``"correlation"`` or ``"cosine"``).
        successors: per pair, a :class:`LinkTable` over the earlier SAE's features (its top
            links in the later SAE).
        predecessors: per pair, a :class:`LinkTable` over the later SAE's features.
        frequency: per SAE, ``[d_sae]`` the fraction of sample tokens each feature fires on.
        n_tokens: how many tokens (BOS excluded) the correlations were measured on.
        n_prompts: how many prompts those tokens came from.
    """

    hook_names: list[str]
    by: str
    successors: list[LinkTable]
    predecessors: list[LinkTable]
    frequency: list[torch.Tensor]
    n_tokens: int
    n_prompts: int

    def links(
        self, sae: int | str, feature: int, direction: Literal["successors", "predecessors"]
    ) -> list[dict[str, Any]]:
        """Links of one feature: ``[{"sae", "hook_name", "feature", "correlation", "cosine"}]``."""
        i = _sae_index(self.hook_names, sae)
        if direction == "successors":
            if i + 1 >= len(self.hook_names):
                return []
            table, other = self.successors[i], i + 1
        else:
            if i == 0:
                return []
            table, other = self.predecessors[i - 1], i - 1
        if not 0 <= feature < table.indices.shape[0]:
            raise SAEError(f"feature {feature} is out of range for {self.hook_names[i]!r}.")
        out = []
        for j in range(table.indices.shape[1]):
            out.append({
                "sae": other,
                "hook_name": self.hook_names[other],
                "feature": int(table.indices[feature, j]),
                "correlation": float(table.correlation[feature, j]),
                "cosine": float(table.cosine[feature, j]),
            })
        return out

    def links_many(
        self, sae: int | str, features: Sequence[int], direction: Literal["successors", "predecessors"]
    ) -> list[list[dict[str, Any]]]:
        """:meth:`links` of several features of one SAE."""
        return [self.links(sae, f, direction) for f in features]


def default_link_prompts(model: Any, n: int = 48, seed: int = 12345) -> list[str]:
    """Sample prompts for :func:`feature_links`: the zoo's generated text for zoo models.

    Raises:
        SAEError: the model is not a zoo model, so there is no default sample.
    """
    handle = ModelHandle.wrap(model)
    name = str(getattr(handle.cfg, "model_name", "") or "")
    if name == "toy-lm":
        from ..zoo import tasks

        # a few documents run past the context window: keep the first n that fit
        fits = [t for t in tasks.sample_text(2 * n, seed=seed, n_segments=6)
                if handle.model.to_tokens(t, truncate=False).shape[1] <= handle.cfg.n_ctx]
        return fits[:n]
    raise SAEError(
        f"cross-layer links need sample prompts for {name or 'this model'}: pass "
        f"link_prompts= (a few dozen texts like the ones the SAEs were trained on)."
    )


def _batched_tokens(handle: ModelHandle, prompts: Sequence[str | torch.Tensor],
                    max_positions: int) -> list[torch.Tensor]:
    out = []
    for p in prompts:
        t = handle.tokens(p, what="link prompt")
        out.append(t[0, :max_positions])
    return out


def _collect_acts(
    handle: ModelHandle, bound: Sequence[BoundSAE], prompts: Sequence[str | torch.Tensor], *,
    max_tokens: int, batch_size: int, max_positions: int,
) -> tuple[list[torch.Tensor], int]:
    """Dense feature activations ``[n_tokens, d_sae]`` per SAE over the prompts (BOS dropped)."""
    if not prompts:
        raise PromptError("link_prompts is empty: pass some sample texts, or None for the default.")
    toks = _batched_tokens(handle, prompts, max_positions)
    bos = getattr(handle.model.tokenizer, "bos_token_id", None)
    pad = getattr(handle.model.tokenizer, "pad_token_id", None)
    pad = int(pad) if pad is not None else 0
    names = [b.hook_name for b in bound]
    per_sae: list[list[torch.Tensor]] = [[] for _ in bound]
    taken = 0
    for start in range(0, len(toks), batch_size):
        group = toks[start:start + batch_size]
        length = max(t.shape[0] for t in group)
        batch = torch.full((len(group), length), pad, dtype=torch.long, device=handle.device)
        keep = torch.zeros(len(group), length, dtype=torch.bool)
        for r, t in enumerate(group):
            batch[r, : t.shape[0]] = t
            keep[r, : t.shape[0]] = True
            if bos is not None and t.shape[0] > 1 and int(t[0]) == int(bos):
                keep[r, 0] = False
        # right padding: causal attention means no real token attends to a pad
        _, cache = handle.run_with_cache(batch, names, return_type=None)
        keep_dev = keep.to(handle.device)
        for i, b in enumerate(bound):
            act = cache[b.hook_name]
            b.check_width(act)
            x = b.flat(act)[keep_dev]
            per_sae[i].append(b.encode(x).float().cpu())
        taken += int(keep.sum())
        if taken >= max_tokens:
            break
    acts = [torch.cat(chunks)[:max_tokens] for chunks in per_sae]
    return acts, min(taken, max_tokens)


def _standardise(x: torch.Tensor) -> torch.Tensor:
    """Columns centred and scaled so that ``a.T @ b`` is the Pearson correlation (0 if constant)."""
    x = x.double()
    xc = x - x.mean(0, keepdim=True)
    norm = xc.norm(dim=0, keepdim=True)
    return torch.where(norm > 0, xc / norm.clamp(min=1e-300), torch.zeros_like(xc))


def _pair_links(
    za: torch.Tensor, zb: torch.Tensor, wa: torch.Tensor | None, wb: torch.Tensor | None,
    n_links: int, by: str, chunk: int = 2048,
) -> tuple[LinkTable, LinkTable]:
    """Top links both ways between two SAEs, computed in row chunks (never all d_a x d_b at once
    for large SAEs)."""
    d_a, d_b = za.shape[1], zb.shape[1]
    n_s, n_p = min(n_links, d_b), min(n_links, d_a)
    s_idx = torch.zeros(d_a, n_s, dtype=torch.long)
    s_cor = torch.zeros(d_a, n_s)
    s_cos = torch.zeros(d_a, n_s)
    p_score = torch.full((n_p, d_b), -math.inf, dtype=torch.float64)
    p_idx = torch.zeros(n_p, d_b, dtype=torch.long)
    p_cor = torch.zeros(n_p, d_b, dtype=torch.float64)
    p_cos = torch.zeros(n_p, d_b, dtype=torch.float64)
    for lo in range(0, d_a, chunk):
        hi = min(d_a, lo + chunk)
        cor = za[:, lo:hi].T @ zb  # [c, d_b]
        cos = (wa[lo:hi] @ wb.T) if wa is not None and wb is not None else torch.full_like(cor, math.nan)
        score = cor if by == "correlation" else cos
        if by == "cosine" and wa is None:
            score = cor
        i = score.topk(n_s, dim=1).indices
        s_idx[lo:hi] = i
        s_cor[lo:hi] = cor.gather(1, i).float()
        s_cos[lo:hi] = cos.gather(1, i).float()
        v0, i0 = score.topk(min(n_p, hi - lo), dim=0)  # [n, d_b], rows of this chunk
        cand_score = torch.cat([p_score, v0])
        cand_idx = torch.cat([p_idx, i0 + lo])
        cand_cor = torch.cat([p_cor, cor.gather(0, i0)])
        cand_cos = torch.cat([p_cos, cos.gather(0, i0)])
        best = cand_score.topk(n_p, dim=0).indices
        p_score = cand_score.gather(0, best)
        p_idx = cand_idx.gather(0, best)
        p_cor = cand_cor.gather(0, best)
        p_cos = cand_cos.gather(0, best)
    succ = LinkTable(s_idx, s_cor, s_cos)
    pred = LinkTable(p_idx.T.contiguous(), p_cor.T.float().contiguous(), p_cos.T.float().contiguous())
    return succ, pred


def feature_links(
    model: Any,
    saes: Any,
    prompts: Sequence[str | torch.Tensor] | None = None,
    *,
    n_links: int = 5,
    by: LinkMetric = "correlation",
    max_tokens: int = 8192,
    batch_size: int = 16,
    max_positions: int = 128,
) -> FeatureLinks:
    """Link the features of adjacent SAEs by decoder cosine and activation correlation.

    For each pair of SAEs next to each other in the forward pass (``L0 pre`` → ``L1 pre`` →
    ...), following Balcells et al. 2024:

    - decoder cosine similarity ``cos(W_dec_a[i], W_dec_b[j])``: needs only weights, defined
      when both SAEs have the same ``d_in`` (NaN otherwise);
    - Pearson correlation of ``f_a[:, i]`` and ``f_b[:, j]`` over the tokens of ``prompts``
      (BOS excluded); a feature that never fires on the sample correlates 0 with everything.

    Args:
        model: a TransformerLens model or handle.
        saes: SAEs as :func:`bind_saes` takes them (at least two for any link).
        prompts: sample texts; None uses :func:`default_link_prompts` (the zoo's generated text
            for ``toy-lm``; other models must pass prompts).
        n_links: links kept per feature and direction (default 5).
        by: rank links by ``"correlation"`` (default) or ``"cosine"``.
        max_tokens: stop after this many sample tokens (default 8192).
        batch_size: prompts per forward pass (default 16).
        max_positions: truncate each prompt to this many tokens (default 128).
    """
    if by not in ("correlation", "cosine"):
        raise SAEError(f"by={by!r}: rank links by 'correlation' or 'cosine'.")
    handle = ModelHandle.wrap(model)
    bound = _as_bound(handle, saes)
    if prompts is None:
        prompts = default_link_prompts(handle)
    with handle.session():
        acts, n_tok = _collect_acts(handle, bound, list(prompts), max_tokens=max_tokens,
                                    batch_size=batch_size, max_positions=max_positions)
        z = [_standardise(a) for a in acts]
        dirs = [torch.nn.functional.normalize(b.W_dec.detach().double().cpu(), dim=-1) for b in bound]
        succ, pred = [], []
        for p in range(len(bound) - 1):
            same = bound[p].d_in == bound[p + 1].d_in
            s, q = _pair_links(z[p], z[p + 1], dirs[p] if same else None,
                               dirs[p + 1] if same else None, n_links, by)
            succ.append(s)
            pred.append(q)
    return FeatureLinks(
        hook_names=[b.hook_name for b in bound],
        by=by,
        successors=succ,
        predecessors=pred,
        frequency=[(a > 0).float().mean(0) for a in acts],
        n_tokens=n_tok,
        n_prompts=len(prompts),
    )


#: Decoder rows scanned at once by the lazy links (:class:`DecoderLinks`): at most a
#: ``chunk x d_model`` copy (for SAEs whose rows are mapped into the residual stream) and a
#: ``queries x chunk`` block of cosines are held at a time.
LINK_CHUNK = 16384


def decoder_cosine_top_k(
    queries: Float[torch.Tensor, "n d"], rows: Any, n_rows: int, k: int, *, chunk: int = LINK_CHUNK,
    norms: torch.Tensor | None = None,
) -> tuple[Int[torch.Tensor, "n k"], Float[torch.Tensor, "n k"]]:
    """The ``k`` rows most cosine-similar to each query, scanning the rows one chunk at a time.

    Args:
        queries: ``[n, d]`` query directions.
        rows: ``rows(lo, hi)`` returns rows ``lo..hi-1`` as a ``[hi - lo, d]`` float tensor
            (e.g. a slice of ``W_dec``); nothing larger than one chunk is ever built.
        n_rows: how many rows there are.
        k: how many to keep per query (at most ``n_rows``).
        chunk: rows per step (default :data:`LINK_CHUNK`).
        norms: ``[n_rows]`` the rows' norms, if known (saves a pass over each chunk).

    Returns:
        ``(indices, cosines)``, each ``[n, k]``, most similar first: exactly the top-k of the dense
        ``normalize(queries) @ normalize(all rows).T`` (a zero row has cosine 0).
    """
    q = torch.nn.functional.normalize(queries.detach().float(), dim=-1)
    k = min(int(k), n_rows)
    best_v = torch.empty(q.shape[0], 0, device=q.device)
    best_i = torch.empty(q.shape[0], 0, dtype=torch.long, device=q.device)
    for lo in range(0, n_rows, chunk):
        hi = min(n_rows, lo + chunk)
        w = rows(lo, hi)
        norm = w.norm(dim=-1) if norms is None else norms[lo:hi]
        cos = (w @ q.T).T / norm.clamp(min=1e-12)  # [n, hi - lo]
        v, i = cos.topk(min(k, hi - lo), dim=1)
        v, order = torch.cat([best_v, v], 1).topk(min(k, best_v.shape[1] + v.shape[1]), dim=1)
        best_i = torch.cat([best_i, i + lo], 1).gather(1, order)
        best_v = v
    return best_i, best_v


class DecoderLinks:
    """Links between features of adjacent SAEs by decoder cosine, computed lazily, on demand.

    The cost of :func:`feature_links` grows with ``d_sae^2`` (every feature against every
    feature of the next SAE, over a sample); at real dictionary sizes (24k–1M features) that is
    minutes and gigabytes. This object computes nothing up front: asking for a feature's links
    scans the adjacent SAE's decoder once, one chunk of :data:`LINK_CHUNK` rows at a time, and
    keeps a running top-k (:func:`decoder_cosine_top_k`), so a click costs one pass over one
    decoder per hop and memory of one chunk. Results are cached per (SAE, feature, direction).

    Directions are compared in the residual stream (:func:`residual_directions`: ``W_dec`` for
    residual-width hooks, through ``W_O`` for ``attn.hook_z`` and ``W_out`` for
    ``mlp.hook_post``), so SAEs on different hooks compare. An SAE whose features do not write the
    residual stream has no links (an empty list).

    It answers the same questions as :class:`FeatureLinks` (``links``, ``links_many``, what
    :func:`lineage` uses), ranked by cosine; ``correlation`` is None (no activation sample).

    Args:
        model: a TransformerLens model or handle.
        saes: SAEs as :func:`bind_saes` takes them.
        n_links: links kept per feature and direction (default 5).
        chunk: decoder rows per step (default :data:`LINK_CHUNK`).
    """

    by = "cosine"
    n_tokens = 0
    n_prompts = 0
    frequency = None

    def __init__(self, model: Any, saes: Any, *, n_links: int = 5, chunk: int = LINK_CHUNK) -> None:
        self._handle = ModelHandle.wrap(model)
        self.saes = _as_bound(self._handle, saes)
        self.hook_names = [b.hook_name for b in self.saes]
        self.n_links = int(n_links)
        self.chunk = int(chunk)
        self._cache: dict[tuple[int, int, str], list[dict[str, Any]]] = {}
        self._norms: dict[int, torch.Tensor] = {}

    def _row_norms(self, i: int) -> torch.Tensor:
        """``[d_sae]`` the norms of SAE ``i``'s rows in the residual stream (one chunked pass,
        the first time they are needed)."""
        if i not in self._norms:
            rows, d = self._rows(i), self.saes[i].d_sae
            with torch.no_grad():
                self._norms[i] = torch.cat([rows(lo, min(d, lo + self.chunk)).norm(dim=-1)
                                            for lo in range(0, d, self.chunk)])
        return self._norms[i]

    def _writes_residual(self, i: int) -> bool:
        try:
            _to_residual(self._handle, self.saes[i], self.saes[i].W_dec[:1].detach().float())
        except SAEError:
            return False
        return True

    def prepare(self) -> DecoderLinks:
        """Compute every SAE's row norms now (one pass over each decoder), so that the first
        click costs no more than later ones; returns ``self``."""
        for i in range(len(self.saes)):
            if self._writes_residual(i):
                self._row_norms(i)
        return self

    def _rows(self, i: int) -> Any:
        b = self.saes[i]
        return lambda lo, hi: _to_residual(self._handle, b, b.W_dec[lo:hi].detach().float())

    def links(
        self, sae: int | str, feature: int, direction: Literal["successors", "predecessors"]
    ) -> list[dict[str, Any]]:
        """Links of one feature: ``[{"sae", "hook_name", "feature", "correlation", "cosine"}]``."""
        return self.links_many(sae, [feature], direction)[0]

    def links_many(
        self, sae: int | str, features: Sequence[int], direction: Literal["successors", "predecessors"]
    ) -> list[list[dict[str, Any]]]:
        """:meth:`links` of several features of one SAE, with one pass over the other decoder."""
        i = _sae_index(self.hook_names, sae)
        for f in features:
            _check_feature(self.hook_names[i], self.saes[i].d_sae, f)
        other = i + 1 if direction == "successors" else i - 1
        if direction not in ("successors", "predecessors"):
            raise SAEError(f"direction={direction!r}: use 'successors' or 'predecessors'.")
        if not 0 <= other < len(self.saes) or not (self._writes_residual(i) and self._writes_residual(other)):
            return [[] for _ in features]
        todo = sorted({int(f) for f in features if (i, int(f), direction) not in self._cache})
        if todo:
            with torch.no_grad():
                q = self._rows(i)
                queries = torch.cat([q(f, f + 1) for f in todo])
                idx, cos = decoder_cosine_top_k(queries, self._rows(other), self.saes[other].d_sae,
                                                self.n_links, chunk=self.chunk, norms=self._row_norms(other))
            for row, f in enumerate(todo):
                self._cache[(i, f, direction)] = [
                    {"sae": other, "hook_name": self.hook_names[other], "feature": int(g),
                     "correlation": None, "cosine": float(c)}
                    for g, c in zip(idx[row].tolist(), cos[row].tolist(), strict=True)
                ]
        return [list(self._cache[(i, int(f), direction)]) for f in features]


def lineage(
    links: FeatureLinks | DecoderLinks, sae: int | str, feature: int, *, per_node: int = 3, per_layer: int = 6,
    min_correlation: float = 0.0,
) -> dict[str, Any]:
    """The feature's links followed through every earlier and later SAE (a small flow graph).

    From the feature, the top ``per_node`` links of each node are followed one SAE at a time in
    both directions, keeping at most ``per_layer`` nodes per SAE (the strongest).

    Returns:
        ``{"nodes": [{"sae", "feature", "score"}], "edges": [{"from": [sae, feature],
        "to": [sae, feature], "correlation", "cosine"}]}``; edges point forward in the model.
    """
    start = _sae_index(links.hook_names, sae)
    nodes: dict[tuple[int, int], float] = {(start, int(feature)): 1.0}
    edges: dict[tuple[tuple[int, int], tuple[int, int]], dict[str, Any]] = {}
    key = "correlation" if links.by == "correlation" else "cosine"
    for direction, step in (("successors", 1), ("predecessors", -1)):
        frontier = [(start, int(feature))]
        layer = start
        while frontier:
            nxt: dict[int, float] = {}
            found = links.links_many(layer, [f for _, f in frontier], direction)  # type: ignore[arg-type]
            for (s, f), out in zip(frontier, found, strict=True):
                for link in out[:per_node]:
                    value = link[key]
                    if not math.isfinite(value) or value <= min_correlation:
                        continue
                    g = link["feature"]
                    src, dst = ((s, f), (s + step, g)) if step > 0 else ((s + step, g), (s, f))
                    edges[(src, dst)] = {"from": list(src), "to": list(dst),
                                         "correlation": link["correlation"], "cosine": link["cosine"]}
                    nxt[g] = max(nxt.get(g, -math.inf), value)
            layer += step
            best = sorted(nxt.items(), key=lambda t: -t[1])[:per_layer]
            for g, v in best:
                nodes.setdefault((layer, g), v)
            keep = {g for g, _ in best}
            edges = {k: e for k, e in edges.items()
                     if not ((k[1] if step > 0 else k[0])[0] == layer
                             and (k[1] if step > 0 else k[0])[1] not in keep)}
            frontier = [(layer, g) for g, _ in best]
    return {
        "nodes": [{"sae": s, "feature": f, "score": v} for (s, f), v in sorted(nodes.items())],
        "edges": list(edges.values()),
    }


# --------------------------------------------------------------------------------------- corpus
#: Edges of the activation histograms: log-spaced, 6 bins a decade from 1e-3 to 1e3 (values
#: outside fall in the first or last bin).
HIST_EDGES = torch.logspace(-3, 3, 37)
QUANTILES = (0.1, 0.25, 0.5, 0.75, 0.9)


@dataclass
class FeatureCorpus:
    """Every feature of one SAE over a corpus: what SAEDashboard and Neuronpedia show per feature.

    Attributes:
        hook_name: the SAE's hook; ``d_sae`` its features.
        tokens: per document, its ``[pos]`` token ids (BOS first when the tokenizer adds one).
        n_tokens: tokens measured (BOS excluded); ``n_docs`` documents.
        top_values: ``[k, d_sae]`` each feature's largest activations over the corpus, largest
            first (0 where it fired fewer than ``k`` times); ``top_doc`` / ``top_pos``
            ``[k, d_sae]`` where they are (-1: none).
        count: ``[d_sae]`` how many tokens each feature fires on (density = count / n_tokens).
        hist_edges: ``[n_bins + 1]`` bin edges of :attr:`histogram`.
        histogram: ``[d_sae, n_bins]`` counts of each feature's non-zero activations per bin.
        example_doc / example_pos: ``[d_sae, n_bins]`` one token whose activation falls in that
            bin (-1: none): the samples from lower quantiles are drawn from these.
    """

    hook_name: str
    d_sae: int
    tokens: list[torch.Tensor]
    n_tokens: int
    n_docs: int
    top_values: Float[torch.Tensor, "k d_sae"]
    top_doc: Int[torch.Tensor, "k d_sae"]
    top_pos: Int[torch.Tensor, "k d_sae"]
    count: Int[torch.Tensor, " d_sae"]
    hist_edges: Float[torch.Tensor, " bins_plus_1"]
    histogram: Int[torch.Tensor, "d_sae bins"]
    example_doc: Int[torch.Tensor, "d_sae bins"]
    example_pos: Int[torch.Tensor, "d_sae bins"]

    def density(self, feature: int) -> float:
        """The fraction of corpus tokens the feature fires on."""
        _check_feature(self.hook_name, self.d_sae, feature)
        return float(self.count[feature]) / max(1, self.n_tokens)

    def top_contexts(self, feature: int) -> list[tuple[float, int, int]]:
        """``[(activation, doc, pos)]`` the feature's top activations, largest first."""
        _check_feature(self.hook_name, self.d_sae, feature)
        return [(float(v), int(d), int(p)) for v, d, p in zip(
            self.top_values[:, feature], self.top_doc[:, feature], self.top_pos[:, feature], strict=True)
            if int(d) >= 0]

    def quantile_samples(self, feature: int, quantiles: Sequence[float] = QUANTILES
                         ) -> list[tuple[float, float, float, int, int]]:
        """``[(quantile, bin_low, bin_high, doc, pos)]``: for each quantile of the feature's
        non-zero activations, a token whose activation lies in the histogram bin holding it."""
        _check_feature(self.hook_name, self.d_sae, feature)
        hist = self.histogram[feature].double()
        total = float(hist.sum())
        out: list[tuple[float, float, float, int, int]] = []
        if total == 0:
            return out
        cum = hist.cumsum(0) / total
        for q in quantiles:
            b = int(torch.searchsorted(cum, torch.tensor(float(q), dtype=torch.float64)).clamp(max=hist.shape[0] - 1))
            if int(self.example_doc[feature, b]) >= 0:
                out.append((float(q), float(self.hist_edges[b]), float(self.hist_edges[b + 1]),
                            int(self.example_doc[feature, b]), int(self.example_pos[feature, b])))
        return out


def _corpus_tokens(handle: ModelHandle, corpus: Any, max_positions: int) -> list[torch.Tensor]:
    if isinstance(corpus, torch.Tensor):
        docs = [corpus] if corpus.ndim == 1 else list(corpus)
    elif isinstance(corpus, (list, tuple)):
        docs = list(corpus)
    else:
        raise PromptError(f"corpus is a list of texts or a [docs, pos] token tensor, got {type(corpus).__name__}.")
    if not docs:
        raise PromptError("the corpus is empty: pass some texts or a token tensor.")
    return [handle.tokens(d, what="corpus document")[0, :max_positions].cpu() for d in docs]


def iter_feature_corpus(
    model: Any, sae: Any, corpus: Sequence[str] | torch.Tensor, *, k: int = 20, batch_size: int = 8,
    max_positions: int = 128,
) -> Any:
    """:func:`feature_corpus` as a generator (for a widget job): yields
    ``{"done", "total", "message"}`` after each batch, returns the :class:`FeatureCorpus`."""
    handle = ModelHandle.wrap(model)
    b = sae if isinstance(sae, BoundSAE) else bind_saes(handle, [sae])[0]
    docs = _corpus_tokens(handle, corpus, max_positions)
    d = b.d_sae
    n_bins = HIST_EDGES.shape[0] - 1
    top_v = torch.zeros(0, d)
    top_doc = torch.zeros(0, d, dtype=torch.int32)
    top_pos = torch.zeros(0, d, dtype=torch.int32)
    count = torch.zeros(d, dtype=torch.int64)
    hist = torch.zeros(d * n_bins, dtype=torch.int32)
    # one token per (feature, bin), as doc * width + pos: one write per cell, so that the doc
    # and the position of a sample always come from the same token
    width = max(t.shape[0] for t in docs)
    example = torch.full((d * n_bins,), -1, dtype=torch.int64)
    inner = HIST_EDGES[1:-1]
    bos = getattr(handle.model.tokenizer, "bos_token_id", None)
    pad = getattr(handle.model.tokenizer, "pad_token_id", None)
    n_tok = 0
    total = len(docs)
    for start in range(0, total, batch_size):
        group = docs[start:start + batch_size]
        length = max(t.shape[0] for t in group)
        batch = torch.full((len(group), length), int(pad) if pad is not None else 0, dtype=torch.long)
        keep = torch.zeros(len(group), length, dtype=torch.bool)
        for r, t in enumerate(group):
            batch[r, : t.shape[0]] = t
            keep[r, : t.shape[0]] = True
            if bos is not None and t.shape[0] > 1 and int(t[0]) == int(bos):
                keep[r, 0] = False
        with handle.session():  # right padding: no real token attends to a pad
            _, cache = handle.run_with_cache(batch.to(handle.device), [b.hook_name], return_type=None)
            act = cache[b.hook_name]
            b.check_width(act)
            with torch.no_grad():
                f = b.encode(b.flat(act)[keep.to(handle.device)]).float().cpu()  # [n, d_sae]
        del cache, act
        rows, cols = keep.nonzero(as_tuple=True)
        doc_of = (rows + start).to(torch.int32)
        pos_of = cols.to(torch.int32)
        n_tok += f.shape[0]
        kk = min(k, f.shape[0])
        v, i = f.topk(kk, dim=0)
        v = torch.cat([top_v, v])
        order = v.topk(min(k, v.shape[0]), dim=0).indices
        top_v = v.gather(0, order)
        top_doc = torch.cat([top_doc, doc_of[i]]).gather(0, order)
        top_pos = torch.cat([top_pos, pos_of[i]]).gather(0, order)
        fired = f > 0
        count += fired.sum(0)
        nz_row, nz_feat = fired.nonzero(as_tuple=True)
        cell = nz_feat * n_bins + torch.bucketize(f[nz_row, nz_feat], inner)
        hist.index_add_(0, cell, torch.ones_like(cell, dtype=torch.int32))
        empty = example[cell] < 0
        example[cell[empty]] = doc_of[nz_row[empty]].long() * width + pos_of[nz_row[empty]].long()
        yield {"done": min(total, start + batch_size), "total": total,
               "message": f"{b.label}: {n_tok} tokens of {total} documents"}
    none = top_v <= 0
    return FeatureCorpus(
        hook_name=b.hook_name, d_sae=d, tokens=docs, n_tokens=n_tok, n_docs=total,
        top_values=top_v.masked_fill(none, 0.0), top_doc=top_doc.masked_fill(none, -1),
        top_pos=top_pos.masked_fill(none, -1), count=count, hist_edges=HIST_EDGES.clone(),
        histogram=hist.view(d, n_bins),
        example_doc=torch.where(example >= 0, example // width, -1).to(torch.int32).view(d, n_bins),
        example_pos=torch.where(example >= 0, example % width, -1).to(torch.int32).view(d, n_bins),
    )


def feature_corpus(
    model: Any, sae: Any, corpus: Sequence[str] | torch.Tensor, *, k: int = 20, batch_size: int = 8,
    max_positions: int = 128,
) -> FeatureCorpus:
    """Every feature of one SAE over a corpus, in one pass: top-activating contexts, density,
    activation histogram and samples from lower quantiles (SAEDashboard's and Neuronpedia's
    feature panel).

    Memory is that of one batch's codes (``batch tokens x d_sae``) plus ``d_sae x (3k + 3 x
    36)`` numbers; time is one forward pass and one encode per batch.

    Args:
        model: a TransformerLens model or handle.
        sae: one SAE (or a :class:`BoundSAE`).
        corpus: texts (BOS prepended) or a ``[docs, pos]`` token tensor.
        k: top activations kept per feature (default 20).
        batch_size: documents per forward pass (default 8).
        max_positions: each document is cut to this many tokens (default 128).
    """
    gen = iter_feature_corpus(model, sae, corpus, k=k, batch_size=batch_size, max_positions=max_positions)
    while True:
        try:
            next(gen)
        except StopIteration as stop:
            return stop.value  # type: ignore[no-any-return]


# --------------------------------------------------------------------------------------- interventions
@dataclass
class FeatureIntervention:
    """One edit of one feature, applied where its SAE is spliced in.

    Attributes:
        hook_name: the SAE's hook (or its index among the SAEs).
        feature: the feature to edit.
        mode: ``"ablate"`` (set to 0) or ``"clamp"`` (set to ``value``; also where it did not
            fire: steering).
        value: the clamp value (ignored by ``"ablate"``).
        positions: the token positions to edit (negative counts from the end); None: all.
    """

    hook_name: str | int
    feature: int
    mode: InterventionMode = "ablate"
    value: float = 0.0
    positions: Sequence[int] | None = None


@dataclass
class FeatureChange:
    """How much one feature of a downstream SAE changed under an intervention."""

    hook_name: str
    sae: int
    feature: int
    before: Float[torch.Tensor, " pos"]
    after: Float[torch.Tensor, " pos"]
    max_change: float
    position: int


@dataclass
class InterventionResult:
    """What editing SAE features did to the model.

    Attributes:
        interventions: the edits, normalised (hook names, positions as lists).
        position: the position the predictions are read at (default: last).
        before / after: top-k next-token predictions at ``position``.
        logits_before / logits_after: ``[d_vocab]`` logits at ``position``.
        loss_before / loss_after: ``[pos - 1]`` per-token loss.
        changes: the downstream features (SAEs at or after the first edited hook, the edited
            features excluded) whose activation changed most, largest change first.
        after: the :class:`FeatureTrace` of the edited run (at edited hooks, the edited code).
    """

    interventions: list[FeatureIntervention]
    position: int
    before: Predictions
    after: Predictions
    logits_before: Float[torch.Tensor, " vocab"]
    logits_after: Float[torch.Tensor, " vocab"]
    loss_before: Float[torch.Tensor, " pos_minus_1"]
    loss_after: Float[torch.Tensor, " pos_minus_1"]
    changes: list[FeatureChange]
    trace_after: FeatureTrace

    @property
    def max_abs_logit_change(self) -> float:
        return float((self.logits_after - self.logits_before).abs().max())


def normalise_interventions(
    bound: Sequence[BoundSAE], interventions: Iterable[FeatureIntervention | Mapping[str, Any]],
    n_pos: int,
) -> list[FeatureIntervention]:
    """Check and normalise interventions (hook names resolved, positions made non-negative)."""
    names = [b.hook_name for b in bound]
    out = []
    for iv in interventions:
        if isinstance(iv, Mapping):
            iv = FeatureIntervention(**dict(iv))
        if not isinstance(iv, FeatureIntervention):
            raise SAEError(f"an intervention is a FeatureIntervention or a dict, got {iv!r}.")
        i = _sae_index(names, iv.hook_name)
        _check_feature(names[i], bound[i].d_sae, iv.feature)
        if iv.mode not in INTERVENTION_MODES:
            raise SAEError(f"unknown intervention mode {iv.mode!r}: use one of {INTERVENTION_MODES}.")
        value = float(iv.value) if iv.mode == "clamp" else 0.0
        if not math.isfinite(value):
            raise SAEError(f"the clamp value must be a finite number, got {iv.value!r}.")
        positions = None
        if iv.positions is not None:
            positions = []
            for p in iv.positions:
                if isinstance(p, bool) or not isinstance(p, int) or not -n_pos <= p < n_pos:
                    raise ComponentError(
                        f"position {p!r} is out of range: the prompt has positions 0..{n_pos - 1} "
                        f"(or -{n_pos}..-1 from the end)."
                    )
                positions.append(p % n_pos)
            positions = sorted(set(positions))
        out.append(FeatureIntervention(names[i], int(iv.feature), iv.mode, value, positions))
    return out


def splice_hooks(
    bound: Sequence[BoundSAE],
    interventions: Sequence[FeatureIntervention] = (),
    *,
    record: dict[str, torch.Tensor] | None = None,
    splice_all: bool = False,
) -> list[tuple[str, Any]]:
    """Forward hooks that splice SAEs in, with their error term, applying ``interventions``.

    Each hook computes ``f = encode(x)``, edits ``f`` and returns ``x + (decode(f_edit) -
    decode(f))`` (= ``decode(f_edit) + (x - decode(f))``): with no edit it returns ``x`` itself.
    Only SAEs with an intervention are spliced unless ``splice_all``. ``interventions`` must be
    normalised (:func:`normalise_interventions`). The edited code of each spliced SAE is put in
    ``record[hook_name]`` (``[batch, pos, d_sae]``) when ``record`` is given. A transcoder is
    read at its ``hook_name`` and its edit ``decode(f_edit) - decode(f)`` added at its
    ``hook_out`` (the model's own output there stands in for the error term).
    """
    by_hook: dict[str, list[FeatureIntervention]] = {}
    for iv in interventions:
        by_hook.setdefault(str(iv.hook_name), []).append(iv)
    pending: dict[str, torch.Tensor] = {}  # a transcoder's edit, from the hook it reads to the one it writes
    hooks: list[tuple[str, Any]] = []
    for b in bound:
        edits = by_hook.get(b.hook_name, [])
        if not edits and not splice_all:
            continue

        def hook(act: torch.Tensor, hook: Any, b: BoundSAE = b,
                 edits: list[FeatureIntervention] = edits) -> torch.Tensor:
            b.check_width(act)
            x = b.flat(act)
            f = b.encode(x)
            f_edit = f.clone()
            for iv in edits:
                where = slice(None) if iv.positions is None else torch.as_tensor(
                    iv.positions, device=f.device, dtype=torch.long)
                f_edit[..., where, iv.feature] = iv.value if iv.mode == "clamp" else 0.0
            if record is not None:
                record[b.hook_name] = f_edit.detach()
            if not edits:
                return act
            delta = b.decode(f_edit) - b.decode(f)
            if b.is_transcoder:  # the edit reaches the hook the transcoder writes
                pending[b.hook_out] = delta
                return act
            out = x + delta.to(x.dtype)
            return out.reshape(act.shape)

        def write(act: torch.Tensor, hook: Any, b: BoundSAE = b) -> torch.Tensor:
            delta = pending.pop(b.hook_out, None)
            if delta is None:
                return act
            return act + delta.to(act.dtype).reshape(act.shape)

        hooks.append((b.hook_name, hook))
        if b.is_transcoder and edits:
            hooks.append((b.hook_out, write))
    return hooks


def intervene_features(
    model: Any,
    saes: Any,
    prompt: str | torch.Tensor,
    interventions: Iterable[FeatureIntervention | Mapping[str, Any]],
    *,
    top_k: int = 10,
    n_changes: int = 20,
    position: int = -1,
    trace_top_k: int = 10,
    before: FeatureTrace | None = None,
    logits_before: torch.Tensor | None = None,
    max_positions: int = 512,
) -> InterventionResult:
    """Ablate or clamp SAE features and measure what changes downstream.

    The SAEs with an edit are spliced into the forward pass with their error term (see the
    module docstring), every SAE is read on the edited run, and the result is compared with the
    clean run.

    Args:
        model: a TransformerLens model or handle.
        saes: SAEs as :func:`bind_saes` takes them.
        prompt: the prompt to run.
        interventions: :class:`FeatureIntervention` objects or dicts with the same fields (may be
            empty: then before == after).
        top_k: next-token predictions to report (default 10).
        n_changes: downstream features to report (default 20).
        position: where the predictions are read (default -1, the last token).
        trace_top_k: ``top_k`` of the edited run's :class:`FeatureTrace`.
        before: the clean run's trace, if already computed (saves encoding it again).
        logits_before: ``[pos, d_vocab]`` the clean run's logits, if already computed (saves a
            forward pass).
        max_positions: refuse longer prompts (default 512).

    The edited run's trace carries no reconstruction statistics (NaN): the edit, not the SAE's
    fit, is what it shows.

    Raises:
        SAEError: an unknown SAE or feature, a bad mode or clamp value; see also
            :func:`bind_saes`.
        ComponentError: a position out of range.
    """
    handle = ModelHandle.wrap(model)
    bound = _as_bound(handle, saes)
    tokens = handle.tokens(prompt, max_positions=max_positions)
    n_pos = int(tokens.shape[1])
    if isinstance(position, bool) or not isinstance(position, int) or not -n_pos <= position < n_pos:
        raise ComponentError(f"position {position!r} is out of range for a {n_pos}-token prompt.")
    edits = normalise_interventions(bound, interventions, n_pos)
    if before is None:
        before = feature_activations(handle, bound, tokens, top_k=trace_top_k,
                                     max_positions=max_positions)
    names = [b.hook_name for b in bound]
    final = f"blocks.{handle.n_layers - 1}.hook_resid_post"
    with handle.session():
        if logits_before is None:
            logits_before = handle.run(tokens)[0]
        elif tuple(logits_before.shape) != (n_pos, handle.d_vocab):
            raise PromptError(
                f"logits_before has shape {tuple(logits_before.shape)}, not [{n_pos}, "
                f"{handle.d_vocab}] (this prompt's positions × the vocabulary)."
            )
        record: dict[str, torch.Tensor] = {}
        hooks = splice_hooks(bound, edits, record=record)
        # SAEs upstream of the first edit read what they read on the clean run
        first = min((names.index(str(iv.hook_name)) for iv in edits), default=len(names))
        read = names[first:]
        want = [*read, final] if handle.has_hook(final) else read
        logits_after_all, cache = handle.run_with_cache(tokens, want, fwd_hooks=hooks)
        logits_after = logits_after_all[0]
        stats = _non_bos(tokens, handle)
        enc = _encode_all(bound[first:], [cache[n][0] for n in read], trace_top_k, stats,
                          errors=False) if read else None
        # at an edited hook, the code the model was given is the edited one
        for i, b in enumerate(bound[first:]):
            if b.hook_name in record and enc is not None:
                _replace_code(enc, i, record[b.hook_name][0].float(), trace_top_k)
        enc = _merge_upstream(before, first, enc, trace_top_k)
        ln_scale = float(_final_scale(handle, cache[final][0][stats]).mean()) if final in cache else 1.0
    after = FeatureTrace(
        tokens=tokens[0].cpu(), str_tokens=before.str_tokens, hook_names=names,
        labels=[b.label for b in bound], d_sae=[b.d_sae for b in bound],
        top_k=int(enc["top_indices"].shape[-1]), ln_scale=ln_scale, **enc,
    )
    changes = _feature_changes(before, after, bound, edits, n_changes)
    toks = tokens[0]
    return InterventionResult(
        interventions=edits,
        position=position % n_pos,
        before=top_predictions(handle, logits_before[position], top_k),
        after=top_predictions(handle, logits_after[position], top_k),
        logits_before=logits_before[position].float().cpu(),
        logits_after=logits_after[position].float().cpu(),
        loss_before=per_token_loss(logits_before, toks),
        loss_after=per_token_loss(logits_after, toks),
        changes=changes,
        trace_after=after,
    )


def _merge_upstream(before: FeatureTrace, first: int, enc: dict[str, Any] | None,
                    top_k: int) -> dict[str, Any]:
    """The edited run's encodings: SAEs ``< first`` copied from the clean trace, then ``enc``."""
    k = max(1, int(top_k))
    n_pos = before.n_active.shape[1]
    idx = torch.full((first, n_pos, k), -1, dtype=torch.int32)
    val = torch.zeros(first, n_pos, k)
    kk = min(k, before.top_k)
    idx[:, :, :kk] = before.top_indices[:first, :, :kk]
    val[:, :, :kk] = before.top_values[:first, :, :kk]
    nan = torch.full((first,), math.nan)
    up: dict[str, Any] = {
        "top_indices": idx, "top_values": val, "n_active": before.n_active[:first].clone(),
        "total_activation": before.total_activation[:first].clone(),
        "active": list(before.active[:first]),
        "error_norm": torch.full((first, n_pos), math.nan), "act_norm": before.act_norm[:first].clone(),
        "relative_error": nan, "explained_variance": nan.clone(),
    }
    if enc is None:
        return up
    out: dict[str, Any] = {}
    for key, value in up.items():
        out[key] = value + enc[key] if key == "active" else torch.cat([value, enc[key]])
    return out


def _replace_code(enc: dict[str, Any], i: int, f: torch.Tensor, top_k: int) -> None:
    kk = min(max(1, top_k), f.shape[-1])
    vals, idx = f.topk(kk, dim=-1)
    on = vals > 0
    enc["top_indices"][i] = -1
    enc["top_values"][i] = 0.0
    enc["top_indices"][i, :, :kk] = torch.where(on, idx, -1).to(torch.int32).cpu()
    enc["top_values"][i, :, :kk] = torch.where(on, vals, 0.0).cpu()
    fired = f > 0
    enc["n_active"][i] = fired.sum(-1).to(torch.int32).cpu()
    enc["total_activation"][i] = f.clamp(min=0).sum(-1).cpu()
    pos, feat = fired.nonzero(as_tuple=True)
    enc["active"][i] = (pos.cpu(), feat.cpu(), f[pos, feat].cpu())


def _feature_changes(
    before: FeatureTrace, after: FeatureTrace, bound: Sequence[BoundSAE],
    edits: Sequence[FeatureIntervention], n: int,
) -> list[FeatureChange]:
    if not edits:
        return []
    names = [b.hook_name for b in bound]
    first = min(names.index(str(iv.hook_name)) for iv in edits)
    edited = {(names.index(str(iv.hook_name)), iv.feature) for iv in edits}
    cands: list[tuple[float, int, int, int]] = []
    for i in range(first, len(bound)):
        diff = (after.dense(i) - before.dense(i)).abs()  # [pos, d_sae]
        best, where = diff.max(0)
        kk = min(n + len(edited), best.shape[0])
        vals, feats = best.topk(kk)
        for v, f in zip(vals.tolist(), feats.tolist(), strict=True):
            if v > 0 and (i, f) not in edited:
                cands.append((v, i, f, int(where[f])))
    cands.sort(key=lambda t: -t[0])
    out = []
    for v, i, f, p in cands[:n]:
        out.append(FeatureChange(names[i], i, f, before.feature_values(i, f),
                                 after.feature_values(i, f), v, p))
    return out


__all__ = [
    "INTERVENTION_MODES",
    "BoundSAE",
    "DecoderLinks",
    "FeatureChange",
    "FeatureCorpus",
    "FeatureIntervention",
    "FeatureLinks",
    "FeatureTrace",
    "InterventionResult",
    "LinkTable",
    "LogitEffects",
    "bind_saes",
    "decoder_cosine_top_k",
    "default_link_prompts",
    "feature_activations",
    "feature_corpus",
    "feature_links",
    "feature_logit_effects",
    "features_promoting",
    "intervene_features",
    "iter_feature_corpus",
    "lineage",
    "logit_effect_matrix",
    "logit_effects_of",
    "normalise_interventions",
    "residual_directions",
    "sae_hook_name",
    "short_hook_label",
    "splice_hooks",
]
