"""The execution core's primitives as nnsight traces (issue 18, first step: not yet behind the
widgets).

An nnsight model (``nnsight.LanguageModel`` over a Hugging Face causal LM, local or remote on
NDIF) is run through one trace per call. :class:`NNsightCore` offers what the TransformerLens
side of the core offers, under the same activation names:

- :meth:`~NNsightCore.record`: named activations of one forward;
- :meth:`~NNsightCore.run`: a forward with activations replaced (a function of the clean value,
  or a tensor), returning the logits and any recorded activations;
- :meth:`~NNsightCore.grads`: the gradient of a scalar metric of the logits at named points.

Names (TransformerLens's, so analyses need no second vocabulary): ``blocks.L.hook_resid_pre``
(the decoder layer's input), ``blocks.L.hook_resid_post`` (its output), ``blocks.L.hook_attn_out``
and ``blocks.L.hook_mlp_out`` (what attention and the MLP add to the residual stream: their
modules' outputs, or Gemma 2/3's norms after them), ``blocks.L.attn.hook_z`` (the per-head input
of the attention's output projection, ``[batch, pos, n_heads, d_head]``) and
``blocks.L.attn.hook_pattern`` (``[batch, head, dest, src]``, read only: eager attention returns
it, switched on for a trace that reads it; locally only). Each equals TransformerLens's activation of that name on the
same weights (``tests/test_nnsight_core.py``); the final norm has no such point (TransformerLens's
``ln_final.hook_normalized`` is before the norm's weight and bias, a Hugging Face norm's output
after them), so none is offered.

Module paths come from the model's structure (:func:`find_structure`): the decoder layers are
the ``ModuleList`` of ``num_hidden_layers`` blocks of one class; in a block, the attention, MLP
and output projection go by the names the Hugging Face families use (GPT-2, GPT-NeoX/Pythia,
Llama/Mistral/Qwen, Gemma). Traps measured (``/work/shared/NOTES.md``): in transformers 5 a
block's ``.output`` is a tensor, an attention module's a tuple; reads in one trace follow
execution order, so names are visited in the order the model computes them; only
``nnsight.save``d values leave a trace.
"""

from __future__ import annotations

import contextlib
import re
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import torch

from ._fast import FinalNorm
from ._model import BACKENDS, ModelHandle
from .errors import ComponentError, ModelError, RemoteError

Edit = Callable[[torch.Tensor], torch.Tensor] | torch.Tensor

_ATTN = ("self_attn", "attn", "attention", "self_attention")
_MLP = ("mlp", "feed_forward", "ffn")
_OUT_PROJ = ("o_proj", "c_proj", "dense", "out_proj")
_FINAL_NORM = ("ln_f", "norm", "final_layer_norm", "final_layernorm")
#: the order in which a block computes its named points (reads in a trace must follow it)
_ORDER = {"hook_resid_pre": 0, "attn.hook_z": 1, "attn.hook_pattern": 2, "hook_attn_out": 3, "hook_mlp_out": 4,
          "hook_resid_post": 5}
_NAME = re.compile(r"^blocks\.(\d+)\.(hook_resid_pre|attn\.hook_z|attn\.hook_pattern|hook_attn_out|hook_mlp_out"
                   r"|hook_resid_post)$")


@dataclass(frozen=True)
class Structure:
    """Where a Hugging Face decoder keeps its parts (dotted paths from the model's root)."""

    layers: str
    attn: str
    mlp: str
    out_proj: str
    #: in a block, the modules whose outputs are what attention and the MLP add to the residual
    #: stream (TransformerLens's hook_attn_out / hook_mlp_out): the attention module and the
    #: MLP, or (Gemma 2 and 3) the norms after them
    attn_out: str
    mlp_out: str
    final_norm: str
    n_layers: int
    n_heads: int
    d_head: int


def _child(module: torch.nn.Module, names: Iterable[str], what: str, where: str) -> str:
    children = dict(module.named_children())
    for name in names:
        if name in children:
            return name
    raise ModelError(
        f"could not find the {what} in {where} (children: {sorted(children)}): mechwidgets knows "
        f"the Hugging Face decoder families GPT-2, GPT-NeoX, Llama/Mistral/Qwen and Gemma."
    )


def find_structure(hf_model: torch.nn.Module) -> Structure:
    """The decoder's module paths, found from its structure (module docstring)."""
    config = getattr(hf_model, "config", None)
    n_layers = getattr(config, "num_hidden_layers", None)
    if config is None or n_layers is None:
        raise ModelError(f"{type(hf_model).__name__} has no Hugging Face config with "
                         f"num_hidden_layers: pass a Hugging Face causal LM or an nnsight model of one.")
    layers = [
        name for name, m in hf_model.named_modules()
        if isinstance(m, torch.nn.ModuleList) and len(m) == n_layers
        and len({type(c) for c in m}) == 1
    ]
    if not layers:
        raise ModelError(f"found no list of {n_layers} decoder layers in {type(hf_model).__name__}.")
    path = layers[0]
    block = next(iter(hf_model.get_submodule(path).children()))
    attn = _child(block, _ATTN, "attention module", f"{path}.0")
    mlp = _child(block, _MLP, "MLP", f"{path}.0")
    out_proj = _child(block.get_submodule(attn), _OUT_PROJ, "attention output projection", f"{path}.0.{attn}")
    base_path = path.rsplit(".", 1)[0] if "." in path else ""
    base = hf_model.get_submodule(base_path) if base_path else hf_model
    norm = _child(base, _FINAL_NORM, "final norm", base_path or "the model")
    n_heads = int(config.num_attention_heads)
    d_head = int(getattr(config, "head_dim", None) or config.hidden_size // n_heads)
    children = dict(block.named_children())
    post_norms = all(n in children for n in ("post_attention_layernorm", "pre_feedforward_layernorm",
                                              "post_feedforward_layernorm"))
    attn_out, mlp_out = ("post_attention_layernorm", "post_feedforward_layernorm") if post_norms else (attn, mlp)
    return Structure(layers=path, attn=attn, mlp=mlp, out_proj=f"{attn}.{out_proj}", attn_out=attn_out, mlp_out=mlp_out,
                     final_norm=f"{base_path}.{norm}" if base_path else norm,
                     n_layers=int(n_layers), n_heads=n_heads, d_head=d_head)


def _envoy(root: Any, path: str) -> Any:
    for part in path.split("."):
        root = root[int(part)] if part.isdigit() else getattr(root, part)
    return root


def _first(value: Any) -> Any:
    return value[0] if isinstance(value, tuple) else value


def _order(name: str) -> tuple[int, int]:
    m = _NAME.match(name)
    if m is None:
        raise ModelError(
            f"unknown activation name {name!r} for an nnsight model: use blocks.L.hook_resid_pre, "
            f"blocks.L.attn.hook_z, blocks.L.hook_attn_out, blocks.L.hook_mlp_out or "
            f"blocks.L.hook_resid_post."
        )
    return (int(m.group(1)), _ORDER[m.group(2)])


class NNsightCore:
    """One nnsight model's primitives (module docstring). ``traces`` counts the traces run.

    Args:
        model: an ``nnsight.LanguageModel`` (or any nnsight ``NNsight`` envoy over a Hugging
            Face causal LM).
        remote: passed to every trace: ``False`` (local), ``True`` (NDIF) or ``"local"``
            (serialise the trace as for NDIF, then run it in this process).
    """

    def __init__(self, model: Any, *, remote: bool | str = False) -> None:
        hf = getattr(model, "_module", None)
        if hf is None or not isinstance(hf, torch.nn.Module):
            raise ModelError(f"expected an nnsight model (nnsight.LanguageModel), got {type(model).__name__}.")
        self.model = model
        self.structure = find_structure(hf)
        self.remote = remote
        self.traces = 0
        if remote is True:
            _check_remote(model)
        if remote:
            # a remote trace ships the code it runs: this module's by value (mechwidgets is not
            # installed on NDIF's servers)
            import nnsight

            nnsight.register(sys.modules[__name__])

    @contextlib.contextmanager
    def session(self, grad: bool) -> Iterator[None]:
        """Eval mode and grad mode ``grad`` inside; each module's train/eval flag, the grad mode
        and every parameter's ``.grad`` restored after (also on an exception), as
        :meth:`mechwidgets._model.ModelHandle.session` does for TransformerLens models."""
        hf = self.model._module
        modes = [(m, m.training) for m in hf.modules()]
        params = list(hf.parameters())
        kept = [p.grad for p in params]
        grad_was = torch.is_grad_enabled()
        hf.eval()
        torch.set_grad_enabled(grad)
        try:
            yield
        finally:
            torch.set_grad_enabled(grad_was)
            for m, training in modes:
                m.training = training
            for p, g in zip(params, kept, strict=True):
                p.grad = g

    # ---------------------------------------------------------------- primitives
    def run(
        self,
        tokens: torch.Tensor,
        edits: Mapping[str, Edit] | None = None,
        names: Iterable[str] = (),
        *,
        own_session: bool = True,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """One forward (one trace) of ``tokens [batch, pos]`` with ``edits`` applied (each a
        function of the activation there, or its replacement), recording ``names`` (after any
        edit at the same point). Returns the logits ``[batch, pos, d_vocab]`` and the records.
        ``own_session=False``: run inside the caller's :meth:`session` (its grad mode), so a
        local run's logits can be backpropagated after it."""
        edits = dict(edits or {})
        if any(name.endswith("attn.hook_pattern") for name in edits):
            raise ComponentError("attention patterns of an nnsight model can be read, not replaced: patch "
                                 "attn.hook_z (a head's output) instead.")
        want = set(names)
        plan = [(name, *_split(name), edits.get(name), name in want)
                for name in sorted(set(edits) | want, key=_order)]
        import nnsight  # (optional dependency: imported where used)

        model, s = self.model, self.structure  # the trace body names no mechwidgets object but these
        saved: dict[str, Any] = {}
        session = self.session(grad=False) if own_session else contextlib.nullcontext()
        eager = _eager(model._module, any(p[2] == "attn.hook_pattern" for p in plan))
        with session, eager, _remote_errors(model, self.remote), model.trace(tokens, remote=self.remote):
            for name, layer, kind, edit, keep in plan:
                value = None
                if edit is not None:
                    value = edit(_read(model, s, layer, kind)) if callable(edit) else edit
                    _write(model, s, layer, kind, value)
                if keep:
                    saved[name] = nnsight.save(_read(model, s, layer, kind) if value is None else value)
            logits = nnsight.save(model.output.logits)
        self.traces += 1
        return _value(logits), {k: _value(v) for k, v in saved.items()}

    def record(self, tokens: torch.Tensor, names: Iterable[str]) -> dict[str, torch.Tensor]:
        """The activations at ``names`` of one clean forward (one trace)."""
        return self.run(tokens, names=names)[1]

    def grads(
        self,
        tokens: torch.Tensor,
        names: Iterable[str],
        metric: Callable[[torch.Tensor], torch.Tensor],
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``metric(logits)`` (a scalar) and its gradient with respect to the activation at each
        of ``names``, from one trace with a backward pass."""
        plan = [(name, *_split(name)) for name in sorted(set(names), key=_order)]
        import nnsight  # (optional dependency: imported where used)

        model, s = self.model, self.structure
        grads: dict[str, Any] = {}
        eager = _eager(model._module, any(p[2] == "attn.hook_pattern" for p in plan))
        with self.session(grad=True), eager, _remote_errors(model, self.remote), model.trace(tokens, remote=self.remote):
            # raw: hook_z as the projection's input itself, so that the gradient reaches it
            acts = [(name, _read(model, s, layer, kind, raw=True)) for name, layer, kind in plan]
            value = metric(model.output.logits)
            with value.backward():
                for name, act in reversed(acts):  # gradients arrive in reverse order
                    grads[name] = nnsight.save(act.grad)
            value = nnsight.save(value)
        self.traces += 1
        out = {k: _value(v).detach() for k, v in grads.items()}
        for k in out:
            if k.endswith("attn.hook_z"):
                out[k] = out[k].reshape(*out[k].shape[:-1], s.n_heads, s.d_head)
        return _value(value).detach(), out


# Inside a trace: these two and what they call use only nnsight, torch and this module's
# plain data, so a remote trace can ship them by value (NNsightCore registers this module).
def _read(model: Any, s: Structure, layer: int, kind: str, raw: bool = False) -> Any:
    """The activation of ``kind`` at ``layer`` inside a trace, in TransformerLens's shape
    (``raw``: ``hook_z`` as the tensor the model uses, not split into heads)."""
    block = _envoy(model, s.layers)[layer]
    if kind == "hook_resid_pre":
        return block.input
    if kind == "hook_resid_post":
        return _first(block.output)
    if kind == "attn.hook_pattern":  # [batch, head, dest, src]: eager attention returns it
        return _envoy(block, s.attn).output[1]
    if kind == "hook_attn_out":
        return _first(_envoy(block, s.attn_out).output)
    if kind == "hook_mlp_out":
        return _first(_envoy(block, s.mlp_out).output)
    z = _envoy(block, s.out_proj).input
    return z if raw else z.reshape(*z.shape[:-1], s.n_heads, s.d_head)


def _write(model: Any, s: Structure, layer: int, kind: str, value: torch.Tensor) -> None:
    block = _envoy(model, s.layers)[layer]
    if kind == "hook_resid_pre":
        block.input = value
    elif kind == "attn.hook_z":
        _envoy(block, s.out_proj).input = value.reshape(*value.shape[:-2], s.n_heads * s.d_head)
    else:
        env = block if kind == "hook_resid_post" else _envoy(block, s.attn_out if kind == "hook_attn_out" else s.mlp_out)
        out = env.output
        env.output = (value, *out[1:]) if isinstance(out, tuple) else value


@contextlib.contextmanager
def _eager(hf: Any, needed: bool) -> Iterator[None]:
    """Eager attention while a trace reads attention patterns (fused attention kernels return
    none); the model's own setting restored after. Locally only: a remote model keeps NDIF's."""
    config = getattr(hf, "config", None)
    if not needed or config is None or getattr(config, "_attn_implementation", "eager") == "eager":
        yield
        return
    before = config._attn_implementation
    config._attn_implementation = "eager"
    try:
        yield
    finally:
        config._attn_implementation = before


def _check_remote(model: Any) -> None:
    """Refuse at once what NDIF cannot run: a model built from an object (NDIF loads models by
    their Hugging Face id), or no API key."""
    import nnsight

    if not getattr(model, "repo_id", None) or not isinstance(model.repo_id, str):
        raise RemoteError(
            "this nnsight model was built from a model object, which NDIF cannot run: NDIF runs "
            "models by their Hugging Face id. Load it as LanguageModel('<org>/<name>') to run "
            "remotely, or pass remote=False to run it here."
        )
    if not nnsight.CONFIG.API.APIKEY:
        raise RemoteError(
            "no NDIF API key is set, so remote traces cannot run: set one with "
            "nnsight.CONFIG.set_default_api_key('<key>') or the NDIF_API_KEY environment variable "
            "(keys at https://login.ndif.us), or pass remote=False to run the model here."
        )


@contextlib.contextmanager
def _remote_errors(model: Any, remote: bool | str) -> Iterator[None]:
    """A remote trace's failures (nnsight's ``RemoteError``, the network, the Hugging Face hub
    that names the model) as a :class:`RemoteError` that says what to do. Local traces' errors
    pass through."""
    import nnsight
    from nnsight.intervention.backends.remote import RemoteError as NDIFError

    try:
        yield
    except NDIFError as e:
        detail = str(e)
        low = detail.lower()
        if "key" in low or "unauthori" in low or "401" in low or "403" in low:
            hint = ("NDIF refused the API key: check it (nnsight.CONFIG.set_default_api_key) and "
                    "that it has access to this model")
        elif "failed to send request" in low:
            hint = f"NDIF at {nnsight.CONFIG.API.HOST} did not take the request"
        elif "model" in low and any(w in low for w in ("not", "unknown", "no such")):
            hint = (f"NDIF does not host {getattr(model, 'repo_id', 'this model')!r} now: "
                    f"nnsight.ndif_status() lists the hosted models")
        else:
            hint = "the trace failed on NDIF"
        raise RemoteError(f"{hint} ({detail}). Pass remote=False to run the model here.") from e
    except Exception as e:
        package = type(e).__module__.split(".")[0]
        if remote is not True or not (package in ("huggingface_hub", "websocket", "httpx")
                                      or isinstance(e, (OSError, ConnectionError))):
            raise
        if package == "huggingface_hub":  # nnsight names the model by its id on the hub first
            where = "the Hugging Face hub, where nnsight looks the model id up before sending,"
        else:
            where = f"NDIF at {nnsight.CONFIG.API.HOST}"
        raise RemoteError(
            f"{where} could not be reached ({type(e).__name__}: {e}): no network, or the "
            f"service is down (nnsight.ndif_status() shows NDIF's). Pass remote=False to run the "
            f"model here."
        ) from e


def _split(name: str) -> tuple[int, str]:
    m = _NAME.match(name)
    if m is None:
        _order(name)  # raises the error that lists the names
        raise AssertionError(name)
    return int(m.group(1)), m.group(2)


def _value(x: Any) -> torch.Tensor:
    return getattr(x, "value", x)




class _Hook:
    """What a TransformerLens-style hook function gets as its ``hook`` argument."""

    def __init__(self, name: str) -> None:
        self.name = name


class NNsightHandle(ModelHandle):
    """A :class:`~mechwidgets._model.ModelHandle` over an nnsight model: the analyses' questions
    (tokens, names, sizes) answered from the Hugging Face model and its tokenizer, and their runs
    (TransformerLens-style hooks at the names :class:`NNsightCore` offers) each one trace.

    Tokens follow TransformerLens's default: the tokenizer's BOS in front of a prompt (once).
    There is no fast path (:meth:`fast_path_blocker` always answers why): every run is the
    model's own forward.
    """

    def __init__(self, model: Any, *, remote: bool | str = False) -> None:
        self.core = NNsightCore(model, remote=remote)
        if getattr(model, "tokenizer", None) is None:
            raise ModelError("the nnsight model has no tokenizer: load it with one (LanguageModel(..., tokenizer=tok)).")
        s = self.core.structure
        config = model._module.config
        n_kv = getattr(config, "num_key_value_heads", None) or s.n_heads
        n_ctx = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None) or 2048
        self.model = model
        self.kind = "nnsight"
        self.cfg = SimpleNamespace(
            n_layers=s.n_layers, n_heads=s.n_heads, d_model=int(config.hidden_size), d_head=s.d_head,
            n_ctx=int(n_ctx), d_vocab=int(config.vocab_size), n_key_value_heads=int(n_kv),
            attn_only=False, parallel_attn_mlp=bool(getattr(config, "use_parallel_residual", False)),
            default_prepend_bos=True, model_name=getattr(model, "repo_id", "") or type(model._module).__name__,
        )
        c = self.cfg
        self.n_layers, self.n_heads, self.d_model, self.d_head = c.n_layers, c.n_heads, c.d_model, c.d_head
        self.n_ctx, self.d_vocab, self.n_kv_heads = c.n_ctx, c.d_vocab, c.n_key_value_heads
        self._names = frozenset(f"blocks.{layer}.{k}" for layer in range(c.n_layers) for k in _ORDER)

    @property
    def module(self) -> torch.nn.Module:
        module: torch.nn.Module = self.model._module
        return module

    @property
    def device(self) -> torch.device:
        return next(self.module.parameters()).device

    @property
    def pads_left(self) -> bool:
        return False  # prompts reach the model as token tensors of one length: nothing is padded

    def encode(self, text: str, *, bos: bool | None) -> torch.Tensor:
        tok: Any = self.tokenizer
        ids = list(tok(text, add_special_tokens=False)["input_ids"])
        bos_id = self.bos_token_id
        if bos is not False and bos_id is not None:
            ids = [bos_id, *ids]
        return torch.tensor([ids], dtype=torch.long)

    def _decode_each(self, tokens: torch.Tensor) -> list[str]:
        tok: Any = self.tokenizer
        return [str(s) for s in tok.batch_decode([[int(t)] for t in tokens], clean_up_tokenization_spaces=False)]

    def hook_names(self) -> Iterable[str]:
        return self._names

    def fast_path_blocker(self, need: Any = "blocks") -> str | None:
        return "an nnsight model: every run is its own forward, through a trace"

    @contextlib.contextmanager
    def session(self, *, grad: bool = False) -> Iterator[ModelHandle]:
        with self.core.session(grad):
            yield self

    def run(self, tokens: torch.Tensor, *, fwd_hooks: Any = (), bwd_hooks: Any = (), **forward_kwargs: Any) -> Any:
        """One trace of ``tokens`` with TransformerLens-style hooks (``fn(act, hook)`` returning
        the new activation or ``None`` after editing it in place) at this model's names; a
        backward hook ``fn(grad, hook)`` sees the gradient there when the caller backpropagates
        the returned logits (local models only)."""
        return_type = _return_type(forward_kwargs)
        logits, _ = self.core.run(tokens, self._edits(fwd_hooks, bwd_hooks), own_session=False)
        return logits if return_type == "logits" else None

    def run_with_cache(
        self,
        tokens: torch.Tensor,
        names: Sequence[str] | Callable[[str], bool],
        *,
        fwd_hooks: Any = (),
        detach: bool = True,
        **forward_kwargs: Any,
    ) -> tuple[Any, dict[str, torch.Tensor]]:
        """One trace recording ``names`` (after any ``fwd_hooks`` at the same point): read, not
        hooked, so reading attention patterns needs no edit of them."""
        return_type = _return_type(forward_kwargs)
        wanted = names if callable(names) else set(names).__contains__
        record = [n for n in sorted(self._names) if wanted(n)]
        logits, cache = self.core.run(tokens, self._edits(fwd_hooks, ()), names=record, own_session=False)
        cache = {k: v.detach() if detach else v for k, v in cache.items()}
        return (logits if return_type == "logits" else None), cache

    def _edits(self, fwd_hooks: Any, bwd_hooks: Any) -> dict[str, Callable[[torch.Tensor], torch.Tensor]]:
        by_name: dict[str, list[tuple[str, Any]]] = {}
        for kind, hooks in (("fwd", fwd_hooks), ("bwd", bwd_hooks)):
            for name, fn in hooks:
                if name not in self._names:
                    raise ComponentError(
                        f"an nnsight model has no activation {name!r} here: use a block's "
                        f"hook_resid_pre, attn.hook_z, attn.hook_pattern (read only), hook_attn_out, "
                        f"hook_mlp_out or hook_resid_post."
                    )
                by_name.setdefault(name, []).append((kind, fn))
        return {name: _edit(name, fns) for name, fns in by_name.items()}

    def unembedding(self) -> tuple[torch.Tensor, torch.Tensor]:
        hf: Any = self.module
        head = hf.get_output_embeddings()
        w_u = head.weight.detach().float().T
        b_u = getattr(head, "bias", None)
        return w_u, torch.zeros(w_u.shape[1], device=w_u.device) if b_u is None else b_u.detach().float()

    def embedding(self) -> torch.Tensor:
        hf: Any = self.module
        emb = hf.get_input_embeddings()
        w_e: torch.Tensor = emb.weight
        return w_e.detach().float()

    def final_norm(self) -> FinalNorm:
        """The Hugging Face model's final norm: LayerNorm, or RMSNorm (Gemma's scales by
        ``1 + weight``)."""
        norm: Any = self.module.get_submodule(self.core.structure.final_norm)
        name = type(norm).__name__
        kind = "RMS" if "RMS" in name else "LN"
        eps = float(getattr(norm, "eps", None) or getattr(norm, "variance_epsilon", None) or 1e-5)
        w = getattr(norm, "weight", None)
        b = getattr(norm, "bias", None)
        w = None if w is None else w.detach().float() + (1.0 if name.startswith("Gemma") else 0.0)
        return FinalNorm(kind, eps, w, None if b is None else b.detach().float())

    def unembed(self, resid: torch.Tensor) -> torch.Tensor:
        """The final norm and unembedding, and Gemma 2's soft cap on the logits where the
        model has one (``final_logit_softcapping``), as the model's own forward does."""
        hf: Any = self.module
        norm, head = hf.get_submodule(self.core.structure.final_norm), hf.get_output_embeddings()
        out: torch.Tensor = head(norm(resid))
        cap = getattr(hf.config, "final_logit_softcapping", None)
        return out if not cap else torch.tanh(out / cap) * cap

    def head_out_weights(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        s = self.core.structure
        proj: Any = self.module.get_submodule(f"{s.layers}.{layer}.{s.out_proj}")
        w = proj.weight.detach().float()
        w = w.T if isinstance(proj, torch.nn.Linear) else w  # a Linear's weight is [out, in]; GPT-2's Conv1D [in, out]
        b = getattr(proj, "bias", None)
        b = torch.zeros(w.shape[-1], device=w.device) if b is None else b.detach().float()
        return w.reshape(s.n_heads, s.d_head, -1), b

    def hook_name(self, kind: str, layer: int | None = None) -> str:
        try:
            return super().hook_name(kind, layer)
        except ComponentError:
            if kind not in ("resid_pre", "resid_post", "attn_out", "mlp_out", "z", "pattern"):
                raise ComponentError(
                    f"an nnsight model offers resid_pre, z (attn.hook_z), pattern, attn_out, mlp_out "
                    f"and resid_post here, not {kind!r}: q/k/v and MLP neurons are not read from "
                    f"nnsight models yet. Use a TransformerLens model for these."
                ) from None
            raise

    def attn_out_from_z(self, layer: int, z: torch.Tensor) -> torch.Tensor:
        s = self.core.structure
        proj = self.module.get_submodule(f"{s.layers}.{layer}.{s.out_proj}")
        out: torch.Tensor = proj(z.reshape(*z.shape[:-2], s.n_heads * s.d_head))
        return out


def _return_type(forward_kwargs: dict[str, Any]) -> Any:
    return_type = forward_kwargs.pop("return_type", "logits")
    if forward_kwargs or return_type not in ("logits", None):
        raise ModelError(f"an nnsight model's run takes no {sorted(forward_kwargs)} and returns logits or "
                         f"None (asked: {return_type!r}): this is a bug in mechwidgets.")
    return return_type


def _edit(name: str, fns: list[tuple[str, Any]]) -> Callable[[torch.Tensor], torch.Tensor]:
    hook = _Hook(name)

    def edit(act: torch.Tensor) -> torch.Tensor:
        for kind, fn in fns:
            if kind == "fwd":
                out = fn(act, hook)
                act = act if out is None else out
            elif act.requires_grad:
                act.register_hook(lambda grad, fn=fn: fn(grad, hook))
        return act

    return edit




def is_nnsight_model(model: Any) -> bool:
    """Whether ``model`` is an nnsight model (checked without importing nnsight)."""
    return type(model).__module__.split(".")[0] == "nnsight"


BACKENDS.append((is_nnsight_model, NNsightHandle))


__all__ = ["NNsightCore", "NNsightHandle", "Structure", "find_structure", "is_nnsight_model"]
