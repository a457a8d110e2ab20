"""Circuit discovery: EAP against a hand-computed gradient product, exact edge patching against
hand-written TransformerLens hooks, ACDC's invariants, faithfulness, the widget, bad input, and
the two proofs on the zoo (the induction circuit of induction-2l, the IOI circuit of toy-lm)."""

from __future__ import annotations

import asyncio
import functools
import math
import re
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest
import torch
from support import TL3

from mechwidgets._model import hook_count
from mechwidgets._steps import run_to_end
from mechwidgets._tensor import decode_array
from mechwidgets.analysis.circuits import (
    IG_STEPS,
    CircuitError,
    EdgePatcher,
    acdc,
    build_graph,
    circuit_faithfulness,
    edge_attribution_patching,
)
from mechwidgets.errors import AnswerError, ComponentError, MetricError, PromptError
from mechwidgets.widgets._svg import diverging_rgb
from mechwidgets.widgets.circuit import CircuitWidget, show_circuit

#: Tests that compare with TransformerLens's own per-head q/k/v inputs and results
#: (``use_split_qkv_input``, ``use_attn_result``): a ``TransformerBridge.boot_native`` model
#: (TransformerLens 4.x) supports neither. Under 4.x, test_circuits_tl4.py checks toy-lm's bridge
#: against these same analyses under 3.x on the same weights, and a Hugging Face GPT-2 bridge
#: (which has those hooks) against this file's hand-written EAP and patching.
needs_split_hooks = pytest.mark.skipif(
    not TL3, reason="TransformerLens 4.x boot_native bridges have no use_split_qkv_input / use_attn_result "
    "hooks to compare with (test_circuits_tl4.py compares with 3.x and on a Hugging Face bridge instead)")
#: Tests of mechwidgets._fast, which runs TransformerLens 3.x HookedTransformers only.
needs_direct = pytest.mark.skipif(not TL3, reason="mechwidgets._fast covers TransformerLens 3.x HookedTransformers only")

CLEAN = "When Mary and John went to the store , John gave a drink to"
CORRUPTED = "When A and B went to the store , C gave a drink to"
SETTINGS = ("use_attn_result", "use_split_qkv_input", "use_hook_mlp_in")


def settings(model: Any) -> dict[str, Any]:
    return {name: getattr(model.cfg, name) for name in SETTINGS}


@pytest.fixture
def patcher(model: Any) -> EdgePatcher:
    return EdgePatcher(model, CLEAN, CORRUPTED, answer=" Mary", wrong_answer=" John")


@pytest.fixture(scope="module")
def small(make_model: Callable[..., Any]) -> Any:
    """One layer, two heads and an MLP: 13 edges, for the tests that run ACDC to the end."""
    return make_model(n_layers=1, n_heads=2, d_head=16)


@pytest.fixture
def fresh(make_model: Callable[..., Any]) -> Any:
    """A model of its own, for tests that switch TransformerLens settings by hand."""
    return make_model()


def hand_hooks_on(model: Any) -> None:
    """Per-head inputs, per-head results and (with MLPs) hook_mlp_in on, for hand-written hooks."""
    model.set_use_split_qkv_input(True)
    model.set_use_attn_result(True)
    if not model.cfg.attn_only:
        model.set_use_hook_mlp_in(True)


@pytest.fixture
def own_settings(fresh: Any) -> Iterator[Any]:
    """Per-head inputs, per-head results and hook_mlp_in on, for hand-written hooks."""
    before = settings(fresh)
    hand_hooks_on(fresh)
    try:
        yield fresh
    finally:
        for name, value in before.items():
            setattr(fresh.cfg, name, value)


def random_norm_weights(model: Any, seed: int, names: tuple[str, ...]) -> None:
    """Each block's norms ``names`` get weights drawn from [0.5, 1.5) (not TransformerLens's ones)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for block in model.blocks:
            for name in names:
                ln = getattr(block, name)
                if hasattr(ln, "w"):
                    ln.w.copy_(0.5 + torch.rand(ln.w.shape, generator=gen))


# ------------------------------------------------------------------------------ hand computations
def _outputs(model: Any, cache: Any) -> dict[str, torch.Tensor]:
    """Every source's output, from TransformerLens's own per-head results."""
    out = {"embed": cache["blocks.0.hook_resid_pre"]}
    for layer in range(model.cfg.n_layers):
        for head in range(model.cfg.n_heads):
            out[f"a{layer}.h{head}"] = cache[f"blocks.{layer}.attn.hook_result"][:, :, head]
        if not model.cfg.attn_only:
            out[f"m{layer}"] = cache[f"blocks.{layer}.hook_mlp_out"]
    return out


def _dest_hook(model: Any, dest: str) -> tuple[str, Callable[[torch.Tensor], torch.Tensor]]:
    """TransformerLens hook name of a destination's input, and how to select it there."""
    last = model.cfg.n_layers - 1
    if dest == "logits":
        return f"blocks.{last}.hook_resid_post", lambda x: x
    if dest.startswith("m"):
        return f"blocks.{int(dest[1:])}.hook_mlp_in", lambda x: x
    head_name, port = dest.rsplit(".", 1)
    layer, head = (int(v) for v in head_name[1:].split(".h"))
    return f"blocks.{layer}.hook_{port}_input", lambda x, head=head: x[:, :, head]


def _logit_diff(model: Any, logits: torch.Tensor) -> torch.Tensor:
    mary, john = model.to_single_token(" Mary"), model.to_single_token(" John")
    return logits[0, -1, mary] - logits[0, -1, john]


def hand_eap(model: Any, names: list[str], ig_steps: int | None = None) -> list[float]:
    """score(u->v) = sum (a_u^corrupted - a_u^clean) * d metric / d input_v, with TransformerLens's
    split q/k/v inputs, per-head results and hook_mlp_in (``own_settings``) and retain_grad.

    With ``ig_steps`` (EAP-IG), the gradient is the mean over runs k = 1..ig_steps whose
    embeddings (``blocks.0.hook_resid_pre``) are corrupted + k/ig_steps * (clean - corrupted)."""
    clean, corrupted = model.to_tokens(CLEAN), model.to_tokens(CORRUPTED)
    _, corr_cache = model.run_with_cache(corrupted)
    _, clean_cache = model.run_with_cache(clean)
    corr_out, clean_out = _outputs(model, corr_cache), _outputs(model, clean_cache)
    hook_names = sorted({_dest_hook(model, n.split("->")[1])[0] for n in names})
    grads: dict[str, torch.Tensor] = {}
    alphas = [1.0] if ig_steps is None else [k / ig_steps for k in range(1, ig_steps + 1)]
    for alpha in alphas:
        kept: dict[str, torch.Tensor] = {}

        # keyed by the name asked for (a TransformerBridge's hook.name is its canonical name); a
        # copy of its own that the model goes on with: the destination's input alone (a bridge's
        # hook_mlp_in is resid_mid itself, which the residual sum reads too; 3.x's is a clone)
        def keep(x: torch.Tensor, hook: Any, name: str, kept: dict[str, torch.Tensor] = kept) -> torch.Tensor:
            x = x.clone()
            x.retain_grad()
            kept[name] = x
            return x

        def embed(x: torch.Tensor, hook: Any, alpha: float = alpha) -> torch.Tensor:
            e_corr = corr_out["embed"]
            return (e_corr + alpha * (clean_out["embed"] - e_corr)).requires_grad_(True)

        with torch.enable_grad(), model.hooks(fwd_hooks=[("blocks.0.hook_resid_pre", embed)]
                                                        + [(h, functools.partial(keep, name=h)) for h in hook_names]):
            _logit_diff(model, model(clean)).backward()
        model.zero_grad(set_to_none=True)
        for h in hook_names:
            grads[h] = grads.get(h, 0) + kept[h].grad / len(alphas)
    scores = []
    for name in names:
        src, dest = name.split("->")
        hook, select = _dest_hook(model, dest)
        grad = select(grads[hook])
        scores.append(float(((corr_out[src] - clean_out[src]) * grad).sum()))
    return scores


def hand_patch(model: Any, edges: list[str], *, clean_prompt: str = CLEAN, corrupted_prompt: str = CORRUPTED,
               answers: tuple[str, str] = (" Mary", " John")) -> float:
    """The metric with ``edges`` patched: at each destination's input, add (corrupted - current)
    output of the source, where 'current' is the source's output in this very run. The metric:
    the logit difference of ``answers`` at the last position."""
    clean, corrupted = model.to_tokens(clean_prompt), model.to_tokens(corrupted_prompt)
    _, corr_cache = model.run_with_cache(corrupted)
    corr_out = _outputs(model, corr_cache)
    current: dict[str, torch.Tensor] = {}
    hooks: list[tuple[str, Any]] = []

    def record(name: str, select: Callable[[torch.Tensor], torch.Tensor]) -> Any:
        def hook(x: torch.Tensor, hook: Any) -> None:
            current[name] = select(x).clone()

        return hook

    hooks.append(("blocks.0.hook_resid_pre", record("embed", lambda x: x)))
    for layer in range(model.cfg.n_layers):
        for head in range(model.cfg.n_heads):
            hooks.append((f"blocks.{layer}.attn.hook_result", record(f"a{layer}.h{head}", lambda x, h=head: x[:, :, h])))
        if not model.cfg.attn_only:
            hooks.append((f"blocks.{layer}.hook_mlp_out", record(f"m{layer}", lambda x: x)))
    by_dest: dict[str, list[str]] = {}
    for edge in edges:
        src, dest = edge.split("->")
        by_dest.setdefault(dest, []).append(src)
    for dest, srcs in by_dest.items():
        hook_name, _ = _dest_hook(model, dest)
        head = int(dest.rsplit(".", 1)[0].split(".h")[1]) if dest.startswith("a") else None

        def patch(x: torch.Tensor, hook: Any, srcs: list[str] = srcs, head: int | None = head) -> torch.Tensor:
            x = x.clone()
            for s in srcs:
                if head is None:
                    x += corr_out[s] - current[s]
                else:
                    x[:, :, head] += corr_out[s] - current[s]
            return x

        hooks.append((hook_name, patch))
    a, w = (model.to_single_token(t) for t in answers)
    with torch.no_grad(), model.hooks(fwd_hooks=hooks):
        logits = model(clean)
    return float(logits[0, -1, a] - logits[0, -1, w])


def removed_mask(p: EdgePatcher, names: list[str]) -> torch.Tensor:
    removed = torch.zeros(p.graph.n_sources, p.graph.n_dests, dtype=torch.bool)
    for name in names:
        e = p.graph.edge_index(name)
        removed[p.graph.edge_src[e], p.graph.edge_dst[e]] = True
    return removed


# ------------------------------------------------------------------------------ the graph
def test_graph_shape_and_names(patcher: EdgePatcher) -> None:
    g = patcher.graph
    # 2 layers x 4 heads with MLPs: sources embed + 4 heads + m0 + 4 heads + m1 = 11
    assert g.n_sources == 11 and g.n_dests == 2 * (3 * 4 + 1) + 1
    # layer-0 q/k/v read embed (12 edges); m0 reads embed + 4 heads (5); layer-1 q/k/v read 6
    # sources (72); m1 reads 10; logits reads 11
    assert g.n_edges == 12 + 5 + 72 + 10 + 11
    names = g.edge_names()
    assert len(set(names)) == g.n_edges
    assert "a0.h1->a1.h2.k" in names and "a1.h0->m1" in names and "embed->logits" in names
    assert "a1.h0->a1.h1.q" not in names and "m1->m1" not in names  # only forwards
    assert g.edge_index(" a0.h1 -> a1.h2.k ") == names.index("a0.h1->a1.h2.k")
    with pytest.raises(ComponentError, match=re.escape("no edge 'a1.h0->a0.h1.q'")):
        g.edge_index("a1.h0->a0.h1.q")
    # GPT-J-style parallel attention and MLP: a layer's MLP does not read that layer's heads
    parallel = build_graph(2, 4, has_mlp=True, parallel_attn_mlp=True)
    assert parallel.n_edges == 12 + 1 + 72 + 6 + 11 and "a1.h0->m1" not in parallel.edge_names()
    # attention-only: no MLP nodes
    attn_only = build_graph(2, 4, has_mlp=False)
    assert attn_only.n_edges == 12 + 12 * 5 + 9 and [n.name for n in attn_only.nodes][-1] == "logits"


# ------------------------------------------------------------------------------ EAP
#: Model variants: normalisations, attention-only, rotary positions, parallel attention and MLP.
VARIANTS = {
    "LN": {}, "LNPre": {"normalization_type": "LNPre"}, "RMS": {"normalization_type": "RMS"},
    "RMSPre": {"normalization_type": "RMSPre"}, "no-norm": {"normalization_type": None},
    "attn-only": {"attn_only": True}, "rotary": {"positional_embedding_type": "rotary", "rotary_dim": 8},
    "parallel": {"parallel_attn_mlp": True},
}


@needs_split_hooks
@pytest.mark.parametrize("fuse", [True, False], ids=["clean+corrupted in one batch", "separate runs"])
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_eap_equals_hand_computed_gradient_product(
    make_model: Callable[..., Any], monkeypatch: pytest.MonkeyPatch, variant: str, fuse: bool
) -> None:
    monkeypatch.setattr(EdgePatcher, "FUSE_BELOW", math.inf if fuse else 0.0)
    model = make_model(**VARIANTS[variant])
    hand_hooks_on(model)
    before = settings(model)
    result = edge_attribution_patching(model, CLEAN, CORRUPTED, answer=" Mary", wrong_answer=" John")
    assert settings(model) == before  # its own settings (all on) untouched, too
    names = result.graph.edge_names()
    hand = hand_eap(model, names)
    np.testing.assert_allclose(result.scores.numpy(), np.array(hand), rtol=1e-4, atol=1e-6)
    assert result.method == "eap" and result.answers == [" Mary"] and result.wrong_answers == [" John"]
    assert float(result.scores.abs().max()) > 1e-3  # not a trivially zero comparison


@needs_split_hooks
@pytest.mark.parametrize("variant", ["LN", "RMSPre"])
@pytest.mark.parametrize("path", ["all layers at once", "two layers then one", "a layer at a time",
                                  "closed form per layer", "autograd"])
def test_eap_destination_gradients_by_every_path(
    make_model: Callable[..., Any], monkeypatch: pytest.MonkeyPatch, variant: str, path: str
) -> None:
    """The norm backward in chunks of layers (the last one shorter), per layer, or through
    autograd (a norm without a closed form): the same scores as the hand-computed gradient
    product, on 3 layers."""
    model = make_model(n_layers=3, **VARIANTS[variant])
    cfg = model.cfg
    per_layer = 3 * cfg.n_heads * model.to_tokens(CLEAN).shape[1] * cfg.d_model  # floats of one layer
    random_norm_weights(model, 1, ("ln1",))  # each layer's its own (a layer's taken for another's shows)
    if path == "all layers at once":
        monkeypatch.setattr(EdgePatcher, "CHUNK_FLOATS", 3 * per_layer)
    elif path == "two layers then one":
        monkeypatch.setattr(EdgePatcher, "CHUNK_FLOATS", 2 * per_layer)
    elif path == "a layer at a time":
        monkeypatch.setattr(EdgePatcher, "CHUNK_FLOATS", 1)
    elif path == "closed form per layer":
        monkeypatch.setattr(EdgePatcher, "_ln1_stack", lambda self: None)
    else:
        monkeypatch.setattr(EdgePatcher, "CLOSED_FORM_NORMS", ())
    result = edge_attribution_patching(model, CLEAN, CORRUPTED, answer=" Mary", wrong_answer=" John")
    hand_hooks_on(model)
    np.testing.assert_allclose(result.scores.numpy(), np.array(hand_eap(model, result.graph.edge_names())),
                               rtol=1e-4, atol=1e-6)


DIRECT_VARIANTS = {
    **{k: VARIANTS[k] for k in ("LN", "LNPre", "RMS", "RMSPre", "no-norm", "attn-only")},
    "relu, no attention scale": {"act_fn": "relu", "use_attn_scale": False},
    "gelu_new, 3 layers": {"act_fn": "gelu_new", "n_layers": 3},
    "silu, RMS": {"act_fn": "silu", "normalization_type": "RMS"},
    "attention scaled down by layer": {"scale_attn_by_inverse_layer_idx": True},
}


@pytest.fixture(params=["direct", "hooked"])
def runs(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """EAP's recording runs through mechwidgets._fast (where it covers the model) or, with it
    switched off, through TransformerLens's hooked forward pass."""
    if request.param == "direct" and not TL3:
        pytest.skip("mechwidgets._fast covers TransformerLens 3.x HookedTransformers only")
    if request.param == "hooked":
        from mechwidgets import _fast as _direct

        monkeypatch.setattr(_direct, "unsupported", lambda model, need="record": "switched off by the test")
    return str(request.param)


@needs_direct
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("embeddings", ["of the tokens", "replaced"])
@pytest.mark.parametrize("grad", [True, False], ids=["with gradients", "without"])
@pytest.mark.parametrize("variant", list(DIRECT_VARIANTS))
def test_direct_runs_record_what_transformer_lens_hooks_record(
    make_model: Callable[..., Any], variant: str, grad: bool, embeddings: str, dtype: torch.dtype
) -> None:
    """EAP's recording runs without hook points (mechwidgets._fast) against TransformerLens's
    hooked run: every recorded activation, the final residual, and the gradients of a random
    function of it at every live hook_q/k/v / hook_mlp_in tensor, on two right-padded prompts
    and weights whose biases and norm weights are all random (not TransformerLens's zeros/ones);
    also with the embeddings replaced (EAP-IG's interpolated inputs). In float64 the two agree to
    1e-10 of the largest value (any other arithmetic shows), in float32 to its rounding."""
    from mechwidgets import _fast as _direct

    model = make_model(**DIRECT_VARIANTS[variant], dtype=dtype)
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(0.2 * torch.randn(param.shape, generator=gen))
    assert _direct.unsupported(model) is None
    p = EdgePatcher(model, [CLEAN, "When Mary and John went"], [CORRUPTED, "When A and B went"],
                    answer=[" Mary", " John"], wrong_answer=[" John", " Mary"])
    assert p.direct
    tokens = torch.cat([p.clean_tokens, p.corrupted_tokens])
    weights = torch.randn((*tokens.shape, model.cfg.d_model), generator=gen, dtype=model.cfg.dtype)
    resid_pre0 = torch.randn(weights.shape, generator=gen, dtype=weights.dtype) if embeddings == "replaced" else None
    recorded = {}
    for direct in (True, False):
        p.direct = direct
        with p._edge_mode(grad=grad):
            rec = p._record(tokens, grad=grad, resid_pre0=resid_pre0)
            if grad:
                names = ["final", *rec["live"]]
                grads = torch.autograd.grad((rec["final"] * weights).sum(), [rec["final"], *rec["live"].values()])
                rec["grads"] = dict(zip(names, grads, strict=True))
        recorded[direct] = rec
    direct_rec, hooked = recorded[True], recorded[False]

    def close(a: torch.Tensor, b: torch.Tensor, what: str) -> None:  # relative to the largest value
        a, b = a.detach(), b.detach()
        rtol = 1e-10 if dtype == torch.float64 else 1e-4
        assert a.dtype == dtype and a.shape == b.shape and float((a - b).abs().max()) <= rtol * float(b.abs().max()), what

    assert set(direct_rec["live"]) == set(hooked["live"])
    for key in ("pre", "z", "mid", "mlp"):
        for layer, (a, b) in enumerate(zip(direct_rec[key], hooked[key], strict=True)):
            if b is None:  # attention-only: no MLP
                assert a is None
                continue
            close(a, b, f"{key} of layer {layer}")
    close(direct_rec["final"], hooked["final"], "final")
    if resid_pre0 is not None:
        assert torch.equal(direct_rec["pre"][0], resid_pre0) and torch.equal(hooked["pre"][0], resid_pre0)
    if grad:
        for name, g in hooked["grads"].items():
            close(direct_rec["grads"][name], g, f"gradient at {name}")
    else:
        assert not direct_rec["final"].requires_grad


@needs_direct
@pytest.mark.parametrize("variant", ["RMS", "RMSPre"])
def test_direct_runs_without_fused_rms_norm(make_model: Callable[..., Any], monkeypatch: pytest.MonkeyPatch,
                                            variant: str) -> None:
    """torch < 2.4 has no ``rms_norm``: the direct runs then write the norm out, as TransformerLens does."""
    model = make_model(**VARIANTS[variant])
    random_norm_weights(model, 4, ("ln1", "ln2"))
    fused = EdgePatcher(model, CLEAN, CORRUPTED, answer=" Mary", wrong_answer=" John")
    monkeypatch.delattr(torch.nn.functional, "rms_norm")
    plain = EdgePatcher(model, CLEAN, CORRUPTED, answer=" Mary", wrong_answer=" John")
    assert fused.direct and plain.direct
    torch.testing.assert_close(plain.eap_scores, fused.eap_scores, rtol=1e-4, atol=1e-6)
    assert float(fused.eap_scores.abs().max()) > 1e-3


@needs_direct
def test_direct_runs_only_where_they_are_exact(make_model: Callable[..., Any]) -> None:
    """Models the direct runs do not cover exactly go through TransformerLens: other
    configurations, weights not in cfg.dtype, code of their own (a subclass, a method replaced on
    an instance or patched on a class, also with functools.wraps), a module's own attention
    settings or cfg, autocast; so does a model with a hook attached, which then sees EAP's runs,
    and EAP-IG's when it was attached after the set-up."""
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    from mechwidgets import _fast as _direct

    for overrides, why in [
        (VARIANTS["rotary"], "positional_embedding_type is 'rotary'"),
        (VARIANTS["parallel"], "parallel_attn_mlp is True"),
        ({"gated_mlp": True}, "gated_mlp is True"),
        ({"act_fn": "solu_ln"}, "normalises inside the MLP"),
        ({"attn_scores_soft_cap": 30.0}, "soft-capped"),
    ]:
        assert why in str(_direct.unsupported(make_model(**overrides))), overrides

    class Custom(HookedTransformer):
        def forward(self, *args: Any, **kwargs: Any) -> Any:
            return super().forward(*args, **kwargs)

    model = make_model()
    custom = Custom(model.cfg, tokenizer=model.tokenizer)
    assert _direct.unsupported(custom) == "not a plain HookedTransformer"
    model.double()  # torch's own: cfg.dtype still says float32, and TransformerLens rounds norms to it
    assert "not all in cfg.dtype" in str(_direct.unsupported(model))
    model.float()
    model.to(torch.float64)  # TransformerLens's: cfg.dtype follows
    assert _direct.unsupported(model) is None
    model.to(torch.float32)
    assert "not all in cfg.dtype" in str(_direct.unsupported(make_model(dtype=torch.bfloat16)))
    assert _direct.unsupported(make_model(attn_scores_soft_cap=None)) is None  # no cap, as in TransformerLens

    # code of its own: a method replaced on an instance, or patched on a class
    mlp = model.blocks[0].mlp
    mlp.forward = lambda x, forward=mlp.forward: 0.5 * forward(x)
    try:
        assert "code of its own in MLP" in str(_direct.unsupported(model))
    finally:
        del mlp.forward
    attn = model.blocks[1].attn  # a method outside the obvious ones, which the forward pass calls
    attn._make_causal_mask = lambda *args, **kwargs: None
    try:
        assert "code of its own in Attention" in str(_direct.unsupported(model))
    finally:
        del attn._make_causal_mask
    import functools

    from transformer_lens.components import TransformerBlock
    from transformer_lens.components.abstract_attention import AbstractAttention

    for cls, name in [(TransformerBlock, "TransformerBlock"), (AbstractAttention, "Attention")]:
        original = cls.forward

        @functools.wraps(original)  # copies the name and module, not the code
        def patched(self: Any, *args: Any, original: Any = original, **kwargs: Any) -> Any:
            return original(self, *args, **kwargs)

        cls.forward = patched  # type: ignore[method-assign]
        try:
            assert f"code of its own in {name}" in str(_direct.unsupported(model))
        finally:
            cls.forward = original  # type: ignore[method-assign]
    block = model.blocks[0]
    own_cfg = block.attn.cfg = HookedTransformerConfig(**{**model.cfg.to_dict(), "attention_dir": "bidirectional"})
    try:
        assert "Attention with a cfg of its own" in str(_direct.unsupported(model)) and own_cfg is block.attn.cfg
    finally:
        block.attn.cfg = model.cfg
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert _direct.unsupported(model) == "autocast is on"
    ignore = attn.IGNORE.clone()
    attn.IGNORE.fill_(-1.0)  # a masked score that softmax does not send to 0
    try:
        assert _direct.unsupported(model) == "masked attention scores set to -1.0"
    finally:
        attn.IGNORE.copy_(ignore)
    model.blocks[1].attn._attention_dir_override = "bidirectional"
    try:
        assert _direct.unsupported(model) == "local or non-causal attention"
    finally:
        model.blocks[1].attn._attention_dir_override = None
    assert _direct.unsupported(model) is None

    seen = []
    handle = model.blocks[1].attn.hook_z.register_forward_hook(lambda *args: seen.append(1))
    try:
        assert _direct.unsupported(model) == "hooks attached to the model"
        p = EdgePatcher(model, CLEAN, CORRUPTED, answer=" Mary", wrong_answer=" John")
        assert not p.direct and seen  # the user's hook ran in EAP's runs
    finally:
        handle.remove()
    p = EdgePatcher(model, CLEAN, CORRUPTED, answer=" Mary", wrong_answer=" John")
    assert p.direct
    # a global backward hook would change TransformerLens's gradients
    handle = torch.nn.modules.module.register_module_full_backward_hook(lambda *args: None)
    try:
        assert _direct.unsupported(model) == "global module hooks"
    finally:
        handle.remove()
    # a hook attached after the set-up is seen by EAP-IG's runs
    seen.clear()
    handle = model.blocks[0].hook_resid_pre.register_forward_hook(lambda *args: seen.append(1))
    try:
        p.eap_ig_scores(2)
        assert not p.direct and seen
    finally:
        handle.remove()
    p.eap_ig_scores(3)
    assert p.direct


@needs_split_hooks
@pytest.mark.parametrize("variant", ["LN", "attn-only", "parallel"])
def test_eap_ig_equals_hand_computed_integrated_gradients(make_model: Callable[..., Any], variant: str) -> None:
    model = make_model(**VARIANTS[variant])
    result = edge_attribution_patching(model, CLEAN, CORRUPTED, answer=" Mary", wrong_answer=" John", ig_steps=4)
    assert result.method == "eap-ig"
    hand_hooks_on(model)
    names = result.graph.edge_names()
    hand = hand_eap(model, names, ig_steps=4)
    np.testing.assert_allclose(result.scores.numpy(), np.array(hand), rtol=1e-4, atol=1e-6)
    # a real path integral: not the clean-run gradient of plain EAP
    assert not np.allclose(hand, hand_eap(model, names), rtol=1e-2, atol=1e-3)


def test_eap_ig_with_one_step_is_eap_and_chunks_agree(patcher: EdgePatcher, monkeypatch: pytest.MonkeyPatch,
                                                      unchanged: Any) -> None:
    torch.testing.assert_close(patcher.eap_ig_scores(1), patcher.eap_scores, rtol=1e-5, atol=1e-6)
    whole = patcher.eap_ig_scores(3)
    monkeypatch.setattr(EdgePatcher, "FUSE_BELOW", 0.0)  # one interpolation step per run
    patcher._ig_cache.clear()
    torch.testing.assert_close(patcher.eap_ig_scores(3), whole, rtol=1e-5, atol=1e-6)
    for bad in (0, -1, 2.5, True):
        with pytest.raises(CircuitError, match="steps must be an integer >= 1"):
            patcher.eap_ig_scores(bad)  # type: ignore[arg-type]


def test_eap_with_frozen_parameters(fresh: Any, runs: str) -> None:
    """A model whose parameters do not require gradients (a common way to freeze one) gets the
    same scores; the flags stay as the user set them."""
    normal = EdgePatcher(fresh, CLEAN, CORRUPTED, answer=" Mary", wrong_answer=" John")
    fresh.requires_grad_(False)
    frozen = EdgePatcher(fresh, CLEAN, CORRUPTED, answer=" Mary", wrong_answer=" John")
    assert frozen.direct == normal.direct == (runs == "direct")
    assert not any(p.requires_grad for p in fresh.parameters())
    assert float(frozen.eap_scores.abs().max()) > 1e-3
    torch.testing.assert_close(frozen.eap_scores, normal.eap_scores, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(frozen.eap_ig_scores(3), normal.eap_ig_scores(3), rtol=1e-5, atol=1e-6)


@needs_split_hooks
def test_eap_is_the_same_whatever_the_users_settings(model: Any, own_settings: Any, patcher: EdgePatcher,
                                                     runs: str) -> None:
    # the session model has every setting off, `own_settings` has them on; same weights (seed 0)
    other = EdgePatcher(own_settings, CLEAN, CORRUPTED, answer=" Mary", wrong_answer=" John")
    assert other.direct == (runs == "direct")
    np.testing.assert_allclose(other.eap_scores.numpy(), patcher.eap_scores.numpy(), rtol=1e-4, atol=1e-6)
    assert other.clean_metric == pytest.approx(patcher.clean_metric, abs=1e-5)


def test_batch_with_padding_is_the_mean_of_its_pairs(model: Any, unchanged: Any) -> None:
    pairs = [(CLEAN, CORRUPTED, " Mary", " John"), ("When John and Mary went", "When A and B went", " Mary", " John")]
    single = [EdgePatcher(model, c, k, answer=a, wrong_answer=w) for c, k, a, w in pairs]
    both = EdgePatcher(model, [p[0] for p in pairs], [p[1] for p in pairs],
                       answer=[p[2] for p in pairs], wrong_answer=[p[3] for p in pairs])
    assert both.lengths == [len(s.str_tokens[0]) for s in single] and len(set(both.lengths)) == 2
    mean = (single[0].eap_scores + single[1].eap_scores) / 2
    np.testing.assert_allclose(both.eap_scores.numpy(), mean.numpy(), rtol=1e-4, atol=1e-6)
    assert both.clean_metric == pytest.approx((single[0].clean_metric + single[1].clean_metric) / 2, abs=1e-5)
    removed = removed_mask(both, ["a0.h1->a1.h2.k", "m0->logits", "embed->a0.h3.v"])
    assert both.patched_metric(removed) == pytest.approx(
        (single[0].patched_metric(removed) + single[1].patched_metric(removed)) / 2, abs=1e-5
    )
    unchanged()


def test_left_padding_tokenizer_changes_nothing(model: Any, patcher: EdgePatcher, runs: str) -> None:
    prompts = ([CLEAN, "When John and Mary went"], [CORRUPTED, "When A and B went"])
    right = EdgePatcher(model, *prompts, answer=" Mary", wrong_answer=" John")
    assert right.direct == (runs == "direct")
    removed = removed_mask(right, ["embed->a0.h1.q", "a0.h3->logits", "m0->a1.h2.k"])
    side = model.tokenizer.padding_side
    model.tokenizer.padding_side = "left"  # TransformerLens would mask leading BOS tokens
    try:
        left = EdgePatcher(model, *prompts, answer=" Mary", wrong_answer=" John")
        assert left.clean_metric == pytest.approx(right.clean_metric, abs=1e-6)
        np.testing.assert_allclose(left.eap_scores.numpy(), right.eap_scores.numpy(), atol=1e-6)
        assert left.patched_metric(removed) == pytest.approx(right.patched_metric(removed), abs=1e-6)
    finally:
        model.tokenizer.padding_side = side


# ------------------------------------------------------------------------------ exact patching
@pytest.mark.parametrize(
    "edges",
    [
        ["a0.h1->a1.h2.k"],
        ["a1.h0->m1"],
        ["a0.h3->logits"],
        ["embed->a0.h2.q", "embed->a0.h2.k", "embed->a0.h2.v"],  # every input of a0.h2
        # propagation: a0.h0's value input is patched, so what its output edge to the logits
        # carries (and what is patched there) is its new output
        ["embed->a0.h0.v", "a0.h0->logits", "a0.h0->m0"],
        ["m0->a1.h1.q", "a0.h2->m0", "a1.h1->logits", "embed->m1"],
    ],
    ids=["key", "mlp", "logits", "all-inputs", "propagation", "mixed"],
)
@needs_split_hooks
def test_patched_forward_equals_hand_written_hooks(own_settings: Any, edges: list[str]) -> None:
    model = own_settings
    p = EdgePatcher(model, CLEAN, CORRUPTED, answer=" Mary", wrong_answer=" John")
    expected = hand_patch(model, edges)
    removed = removed_mask(p, edges)
    assert p.patched_metric(removed) == pytest.approx(expected, abs=2e-5)
    # starting at the first patched layer gives what a full run gives
    start = int(p._dest_layer[removed.any(0)].min())
    with torch.no_grad():
        from_start = p._metric(p._patched_final(removed & p._allowed, start))
        from_zero = p._metric(p._patched_final(removed & p._allowed, 0))
    assert float(from_start) == pytest.approx(float(from_zero), abs=1e-5)


@needs_split_hooks
@pytest.mark.parametrize("variant", [v for v in VARIANTS if v != "LN"])
def test_patched_forward_in_other_models(make_model: Callable[..., Any], variant: str) -> None:
    model = make_model(**VARIANTS[variant])
    model.set_use_split_qkv_input(True)
    model.set_use_attn_result(True)
    if model.cfg.attn_only:
        edges = ["embed->a0.h0.v", "a0.h0->logits", "a0.h1->a1.h1.q", "a0.h2->a1.h3.k", "embed->a1.h3.k"]
    else:
        model.set_use_hook_mlp_in(True)
        mlp_edge = "a0.h1->m1" if variant == "parallel" else "a1.h1->m1"  # parallel: m1 reads resid_pre
        edges = ["embed->a0.h0.v", "a0.h0->logits", "m0->a1.h1.q", "a0.h2->a1.h3.k", mlp_edge]
    p = EdgePatcher(model, CLEAN, CORRUPTED, answer=" Mary", wrong_answer=" John")
    assert p.patched_metric(removed_mask(p, edges)) == pytest.approx(hand_patch(model, edges), abs=2e-5)


def test_faithfulness_of_full_and_empty_graph(patcher: EdgePatcher, unchanged: Any) -> None:
    full = torch.ones(patcher.graph.n_edges, dtype=torch.bool)
    f1 = patcher.faithfulness(full)
    assert f1.normalized == 1.0 and f1.metric == patcher.clean_metric and f1.n_edges == patcher.graph.n_edges
    f0 = patcher.faithfulness(~full)
    assert f0.metric == patcher.corrupted_metric and f0.normalized == 0.0 and f0.edge_fraction == 0.0
    # the clean metric is the model's own logit difference
    model = patcher.handle.model
    with torch.no_grad():
        plain = float(_logit_diff(model, model(model.to_tokens(CLEAN))))
    assert patcher.clean_metric == pytest.approx(plain, abs=1e-5)
    with pytest.raises(CircuitError, match=r"boolean mask over the graph's edges"):
        patcher.faithfulness(torch.ones(3, dtype=torch.bool))
    unchanged()


def test_circuit_faithfulness_by_names(model: Any, patcher: EdgePatcher) -> None:
    top = [name for name, _ in patcher.result().top_edges(15)]
    f = circuit_faithfulness(model, CLEAN, CORRUPTED, top, answer=" Mary", wrong_answer=" John")
    kept = torch.zeros(patcher.graph.n_edges, dtype=torch.bool)
    kept[[patcher.graph.edge_index(n) for n in top]] = True
    assert f.n_edges == 15 and f.metric == pytest.approx(patcher.faithfulness(kept).metric, abs=1e-6)


def test_node_effect_is_patching_its_edges(patcher: EdgePatcher) -> None:
    g = patcher.graph
    effect = patcher.node_effect("a1.h2")
    outgoing = [n for n in g.edge_names() if n.startswith("a1.h2->")]
    assert outgoing == ["a1.h2->m1", "a1.h2->logits"]
    assert effect.output == pytest.approx(patcher.patched_metric(removed_mask(patcher, outgoing)), abs=1e-7)
    for port in ("q", "k", "v"):
        incoming = [n for n in g.edge_names() if n.endswith(f"->a1.h2.{port}")]
        assert effect.inputs[port] == pytest.approx(patcher.patched_metric(removed_mask(patcher, incoming)), abs=1e-7)
    assert patcher.node_effect("logits").inputs["in"] == patcher.corrupted_metric
    assert patcher.node_effect("embed").inputs == {}
    with pytest.raises(ComponentError, match=re.escape("no node 'a7.h0'")):
        patcher.node_effect("a7.h0")


# ------------------------------------------------------------------------------ ACDC
def test_acdc_threshold_zero_keeps_the_full_graph(model: Any, patcher: EdgePatcher, unchanged: Any) -> None:
    result = acdc(model, CLEAN, CORRUPTED, threshold=0.0, answer=" Mary", wrong_answer=" John")
    assert bool(result.circuit().all()) and result.threshold == 0.0
    assert result.circuit_metric == result.clean_metric  # exactly: nothing was patched
    assert result.clean_metric == patcher.clean_metric
    assert patcher.faithfulness(result.circuit()).normalized == 1.0
    assert settings(model) == {name: False for name in SETTINGS}
    unchanged()


@pytest.mark.parametrize("signed", [False, True], ids=["|change|", "signed"])
def test_acdc_prunes_consistently(patcher: EdgePatcher, unchanged: Any, signed: bool) -> None:
    tau = 0.01
    steps = patcher.acdc_steps(tau, signed=signed)
    progress = []
    while True:
        try:
            progress.append(next(steps))
        except StopIteration as stop:
            result = stop.value
            break
    n = patcher.graph.n_edges
    assert [p["done"] for p in progress] == list(range(1, n + 1)) and progress[-1]["total"] == n
    kept = result.circuit()
    assert 0 < int(kept.sum()) < n
    assert progress[-1]["message"] == f"ACDC: {int(kept.sum())} of {n} edges kept"
    # the circuit ACDC reports is the circuit a fresh patched forward measures
    assert patcher.faithfulness(kept).metric == pytest.approx(result.circuit_metric, abs=1e-6)
    # removed edges moved the metric by less than tau when tried, kept ones by at least tau
    assert bool((result.scores[~kept].abs() < tau).all()) and bool((result.scores[kept].abs() >= tau).all())
    toward = 1.0 if patcher.clean_metric >= patcher.corrupted_metric else -1.0
    if signed:  # ... and kept ones all moved it away from the clean run's side
        assert bool((result.scores[kept] * toward < 0).all())
    else:
        assert bool((result.scores[kept] > 0).any())  # this model has edges working against it
    # visiting order: logits first, then the last layer's MLP, its heads' v, k, q inputs...
    order = [patcher.graph.edge_name(e) for e in patcher.acdc_order()]
    assert order[0] == "m1->logits" and order[10] == "embed->logits" and order[11] == "a1.h3->m1"
    assert order[21].startswith("m0->a1.h3.v")
    unchanged()


def test_signed_acdc_removes_what_works_against_the_behaviour(patcher: EdgePatcher) -> None:
    """Replayed by hand: signed ACDC removes an edge iff the metric, on top of the edges removed
    so far, drops by less than tau; the circuit is smaller than |change| ACDC's and scores more."""
    tau = 0.01
    signed = run_to_end(patcher.acdc_steps(tau, signed=True))
    plain = run_to_end(patcher.acdc_steps(tau))
    toward = 1.0 if patcher.clean_metric >= patcher.corrupted_metric else -1.0  # this random model: -1
    removed = torch.zeros_like(patcher._allowed)
    current = patcher.clean_metric
    g = patcher.graph
    for e in patcher.acdc_order():
        removed[g.edge_src[e], g.edge_dst[e]] = True
        value = patcher.patched_metric(removed)
        if (current - value) * toward < tau:
            current = value
        else:
            removed[g.edge_src[e], g.edge_dst[e]] = False
    assert current == pytest.approx(signed.circuit_metric, abs=1e-6)
    assert torch.equal(~removed[g.edge_src, g.edge_dst], signed.circuit())
    assert int(signed.circuit().sum()) < int(plain.circuit().sum())
    assert (signed.circuit_metric - plain.circuit_metric) * toward > 0  # further on the clean run's side
    with pytest.raises(CircuitError, match="signed ACDC needs a threshold > 0"):
        next(patcher.acdc_steps(0.0, signed=True))
    with pytest.raises(CircuitError, match="signed must be true or false"):
        next(patcher.acdc_steps(0.1, signed="yes"))  # type: ignore[arg-type]


def test_acdc_huge_threshold_removes_everything(small: Any) -> None:
    patcher = EdgePatcher(small, CLEAN, CORRUPTED, answer=" Mary", wrong_answer=" John")
    assert patcher.graph.n_edges == 13
    result = run_to_end(patcher.acdc_steps(1e9))
    assert not bool(result.circuit().any())
    assert result.circuit_metric == patcher.corrupted_metric


def test_acdc_cancelled_midway_leaves_the_model_as_it_was(patcher: EdgePatcher, unchanged: Any) -> None:
    model = patcher.handle.model
    steps = patcher.acdc_steps(0.01)
    for _ in range(5):
        next(steps)
    assert hook_count(model) == 0 and settings(model) == {name: False for name in SETTINGS}
    steps.close()
    unchanged()


# ------------------------------------------------------------------------------ metrics
def test_other_metrics(model: Any, unchanged: Any) -> None:
    lp = EdgePatcher(model, CLEAN, CORRUPTED, metric="logprob", answer=" Mary")
    with torch.no_grad():
        logits = model(model.to_tokens(CLEAN))[0, -1]
    assert lp.clean_metric == pytest.approx(float(logits.log_softmax(-1)[model.to_single_token(" Mary")]), abs=1e-5)

    def mary_prob(logits: torch.Tensor) -> torch.Tensor:
        return logits.softmax(-1)[:, model.to_single_token(" Mary")]

    custom = EdgePatcher(model, CLEAN, CORRUPTED, metric=mary_prob)
    pr = EdgePatcher(model, CLEAN, CORRUPTED, metric="prob", answer=" Mary")
    assert custom.clean_metric == pytest.approx(pr.clean_metric, abs=1e-7)
    np.testing.assert_allclose(custom.eap_scores.numpy(), pr.eap_scores.numpy(), rtol=1e-5, atol=1e-9)
    kl = EdgePatcher(model, CLEAN, CORRUPTED, metric="kl")
    assert kl.clean_metric == pytest.approx(0.0, abs=1e-6) and kl.corrupted_metric > 0
    assert float(kl.eap_scores.abs().max()) == 0.0  # KL's gradient vanishes at the clean run
    full = torch.ones(kl.graph.n_edges, dtype=torch.bool)
    assert kl.faithfulness(~full).normalized == 0.0
    # a metric without a gradient: EAP and EAP-IG say so (their scores would all be 0); ACDC's
    # exact patching still takes it
    top = model.to_single_token(" Mary")

    def detached(logits: torch.Tensor) -> torch.Tensor:
        return logits.detach().softmax(-1)[:, top]

    flat = EdgePatcher(model, CLEAN, CORRUPTED, metric=detached)
    assert flat.clean_metric == pytest.approx(pr.clean_metric, abs=1e-7)
    for method, scores in (("EAP", flat.result), ("EAP-IG", flat.eap_ig_scores)):
        with pytest.raises(MetricError, match=rf"detached.*without a gradient.*so {method} would score every edge 0"):
            scores()
    acdc = run_to_end(flat.acdc_steps(0.0))
    assert acdc.circuit().all() and acdc.circuit_metric == pytest.approx(flat.clean_metric, abs=1e-6)
    # default answers: the clean and the corrupted runs' top tokens, as activation patching picks them
    default = EdgePatcher(model, CLEAN, CORRUPTED)
    assert any("answer defaulted to the clean run's top token" in n for n in default.notes)
    unchanged()


# ------------------------------------------------------------------------------ bad input
BAD_INPUT = [
    (dict(metric="nope"), MetricError, "unknown metric 'nope'"),
    (dict(corrupted="When A and B went to the store , C gave a drink"), PromptError, "same number of tokens"),
    (dict(corrupted=[CORRUPTED, CORRUPTED]), PromptError, "got 1 clean prompts but 2 corrupted"),
    (dict(clean=""), PromptError, "empty"),
    (dict(answer=" Mary John"), AnswerError, "it must be a single token"),
    (dict(answer=" Mary", wrong_answer=" Mary"), AnswerError, "the same token"),
    (dict(answer=[" Mary", " John"]), AnswerError, "got 2 answers for 1 prompts"),
    (dict(answer=10**6), AnswerError, "outside"),
    (dict(metric=lambda logits: logits[:, 0].mean()), MetricError, "a single number for the whole batch"),
    (dict(metric=lambda logits: logits[:, 0] * float("nan")), MetricError, "NaN or infinite"),
    (dict(corrupted=CLEAN), MetricError, "they are equal"),
    (dict(metric=lambda logits: logits.detach()[:, 0] - logits.detach()[:, 1]), MetricError, "without a gradient"),
    (dict(method="magic"), CircuitError, "unknown method 'magic'"),
    (dict(threshold=-1.0), CircuitError, "finite number >= 0"),
    (dict(max_edges=0), CircuitError, "max_edges must be a positive integer"),
]


@pytest.mark.parametrize("kwargs,error,message", BAD_INPUT, ids=[m for _, _, m in BAD_INPUT])
def test_bad_input_raises_clear_errors(model: Any, unchanged: Any, kwargs: dict[str, Any], error: type, message: str) -> None:
    args = dict(clean=CLEAN, corrupted=CORRUPTED, answer=" Mary", wrong_answer=" John")
    args.update(kwargs)
    with pytest.raises(error, match=message):
        show_circuit(model, args.pop("clean"), args.pop("corrupted"), **args)
    assert settings(model) == {name: False for name in SETTINGS}
    unchanged()


@needs_split_hooks
def test_bad_input_leaves_users_settings_on(own_settings: Any) -> None:
    model = own_settings
    before = {**settings(model), "hooks": hook_count(model)}
    for kwargs in (dict(metric="nope"), dict(answer=" Mary John"), dict(corrupted=CLEAN)):
        args: dict[str, Any] = {"clean": CLEAN, "corrupted": CORRUPTED, "answer": " Mary", "wrong_answer": " John", **kwargs}
        with pytest.raises((MetricError, AnswerError)):
            show_circuit(model, args.pop("clean"), args.pop("corrupted"), **args)
        assert {**settings(model), "hooks": hook_count(model)} == before
    w = show_circuit(model, CLEAN, CORRUPTED, answer=" Mary", wrong_answer=" John")
    w.select_node("a1.h0")
    steps = w.patcher.acdc_steps(0.05)
    for _ in range(5):
        next(steps)
        assert {**settings(model), "hooks": hook_count(model)} == before
    steps.close()
    assert {**settings(model), "hooks": hook_count(model)} == before == {**{n: True for n in SETTINGS}, "hooks": 0}


def test_a_failing_metric_mid_run_leaves_nothing_behind(model: Any, unchanged: Any) -> None:
    calls = {"n": 0}

    def flaky(logits: torch.Tensor) -> torch.Tensor:
        calls["n"] += 1
        if calls["n"] > 2:  # fails inside the first patched forward
            raise RuntimeError("boom")
        return logits[:, 3] - logits[:, 4]

    p = EdgePatcher(model, CLEAN, CORRUPTED, metric=flaky)
    with pytest.raises(RuntimeError, match="boom"):
        p.faithfulness(torch.zeros(p.graph.n_edges, dtype=torch.bool))
    assert settings(model) == {name: False for name in SETTINGS}
    unchanged()


# ------------------------------------------------------------------------------ the widget
def capture(widget: Any) -> list[dict[str, Any]]:
    sent: list[dict[str, Any]] = []
    widget.send = lambda content, buffers=None: sent.append(content)
    return sent


def request(widget: Any, rid: Any, kind: str, **args: Any) -> None:
    widget._on_frontend_message(widget, {"type": "request", "id": rid, "kind": kind, "args": args}, [])


@pytest.fixture
def widget(model: Any) -> CircuitWidget:
    return show_circuit(model, CLEAN, CORRUPTED, answer=" Mary", wrong_answer=" John")


def test_widget_state(widget: CircuitWidget, unchanged: Any) -> None:
    w = widget
    g = w.result.graph
    assert [n["name"] for n in w.nodes] == [n.name for n in g.nodes]
    assert w.n_edges_total == g.n_edges == 110 and w.method == "eap" and w.metric == "logit_diff"
    scores = decode_array(w.edges["score"])
    assert len(scores) == g.n_edges and bool(np.all(np.diff(np.abs(scores)) <= 0))  # sorted by |score|
    src, dst, port = (decode_array(w.edges[k]) for k in ("src", "dst", "port"))
    e = g.edge_index("a0.h1->a1.h2.k")
    i = int(np.nonzero(scores == np.float32(w.result.scores[e]))[0][0])
    assert (w.nodes[src[i]]["name"], w.nodes[dst[i]]["name"], int(port[i])) == ("a0.h1", "a1.h2", 1)
    # default threshold: the strongest 10% of edges, and their exact faithfulness
    assert w.faithfulness["n_edges"] == math.ceil(0.1 * g.n_edges) == len(w.circuit_edges())
    f = w.patcher.faithfulness(w.result.circuit(w.threshold))
    assert w.faithfulness["normalized"] == pytest.approx(f.normalized, abs=1e-7)
    assert w.baseline["answers"] == [" Mary"] and w.baseline["clean"] == w.patcher.clean_metric
    # python API
    f10 = w.keep_top(10)
    assert f10.n_edges == 10 and w.faithfulness["n_edges"] == 10 and w.circuit_edges() == [n for n, _ in w.result.top_edges(10)]
    assert w.keep_top(0).n_edges == 0 and w.faithfulness["normalized"] == 0.0
    assert w.set_threshold(0.0).normalized == 1.0
    unchanged()


def test_widget_over_a_prepared_patcher(model: Any, widget: CircuitWidget) -> None:
    """``CircuitWidget(patcher)`` is the view show_circuit builds: EAP's scores, top 10% kept."""
    patcher = EdgePatcher(model, CLEAN, CORRUPTED, answer=" Mary", wrong_answer=" John")
    w = CircuitWidget(patcher)
    assert w.patcher is patcher and w.method == "eap" and torch.equal(w.result.scores, widget.result.scores)
    assert np.array_equal(w.edges["score"], widget.edges["score"]) and w.edges["path"] == widget.edges["path"]
    assert w.faithfulness == widget.faithfulness and w.baseline == widget.baseline
    acdc = patcher.acdc(0.05)
    v = CircuitWidget(patcher, acdc, max_edges=7)
    assert v.method == "acdc" and v.threshold == v.acdc_threshold == 0.05 and len(v.edges["score"]) == 7
    assert v.faithfulness["n_edges"] == int(acdc.circuit().sum())


def test_widget_edge_budget(model: Any) -> None:
    w = show_circuit(model, CLEAN, CORRUPTED, answer=" Mary", wrong_answer=" John", max_edges=20)
    scores = decode_array(w.edges["score"])
    assert len(scores) == 20 and w.n_edges_total == 110
    rest = w.result.scores[w.result.order()[20:]].sum()
    assert w.unsent_score_sum == pytest.approx(float(rest), abs=1e-6)


def test_widget_requests(widget: CircuitWidget, unchanged: Any) -> None:
    w = widget
    sent = capture(w)
    t = w.result.threshold_for(7)
    request(w, 1, "faithfulness", threshold=t)
    reply = sent[-1]
    assert reply["id"] == 1 and "error" not in reply and reply["result"]["n_edges"] == 7
    assert w.threshold == t and w.faithfulness["n_edges"] == 7
    request(w, 2, "select_node", node="a1.h3")
    assert sent[-1]["result"] == {"node": "a1.h3"} and w.selected == "a1.h3"
    d = w.node_detail
    assert d["node"] == "a1.h3" and set(d["inputs"]) == {"q", "k", "v"} and d["n_outgoing"] == 2
    effect = w.last_node_effect
    assert effect is not None and d["output"]["metric"] == effect.output
    assert d["incoming"][0]["edge"].endswith(("a1.h3.q", "a1.h3.k", "a1.h3.v"))
    # errors: answered in the reply and the banner, never raised into the kernel
    request(w, 3, "select_node", node="a9.h9")
    assert "no node 'a9.h9'" in sent[-1]["error"] and w.error == sent[-1]["error"]
    request(w, 4, "faithfulness", threshold=-2)
    assert "finite number >= 0" in sent[-1]["error"]
    request(w, 5, "faithfulness", threshold=t)
    assert "error" not in sent[-1] and w.error == ""
    # EAP-IG's scores on request, and back to EAP's
    eap = w.result.scores.clone()
    request(w, 6, "eap", ig=True)
    assert sent[-1]["result"] == {"method": "eap-ig"} and w.method == "eap-ig"
    torch.testing.assert_close(w.result.scores, w.patcher.eap_ig_scores(IG_STEPS))
    assert w.faithfulness["n_edges"] == math.ceil(0.1 * w.n_edges_total)  # the default: top 10%
    request(w, 7, "eap", ig="yes")
    assert "'ig' takes true or false" in sent[-1]["error"]
    assert w.use_eap().method == "eap" and torch.equal(w.result.scores, eap)
    # and from Python: raised, with the same banner
    with pytest.raises(ComponentError) as info:
        w.select_node("nope")
    assert w.error == str(info.value)
    with pytest.raises(CircuitError):
        w.run_acdc(float("nan"))
    assert "finite number" in w.error and w.method == "eap"
    unchanged()


def test_widget_says_a_metric_without_gradient_cannot_run_eap(model: Any, unchanged: Any) -> None:
    def detached(logits: torch.Tensor) -> torch.Tensor:
        return logits.detach()[:, 3] - logits.detach()[:, 4]

    w = show_circuit(model, CLEAN, CORRUPTED, metric=detached, method="acdc")
    sent = capture(w)
    for rid, ig in enumerate((False, True)):
        request(w, rid, "eap", ig=ig)
        assert "without a gradient" in sent[-1]["error"] and w.error == sent[-1]["error"]
        assert w.method == "acdc"
    unchanged()


def test_widget_acdc_job_progress_and_cancel(small: Any) -> None:
    w = show_circuit(small, CLEAN, CORRUPTED, answer=" Mary", wrong_answer=" John")
    sent = capture(w)
    progress: list[dict[str, Any]] = []
    w.observe(lambda ch: progress.append(ch["new"]), "progress")
    eap_scores = w.result.scores.clone()

    async def scenario() -> None:
        request(w, 1, "acdc", threshold=0.01)
        for _ in range(4):
            await asyncio.sleep(0)
        assert hook_count(w.patcher.handle.model) == 0  # nothing hooked between two steps
        w._on_frontend_message(w, {"type": "cancel", "kind": "acdc"}, [])
        for _ in range(3):
            await asyncio.sleep(0)
        request(w, 2, "acdc", threshold=0.0)
        for _ in range(40):
            await asyncio.sleep(0)

    asyncio.run(scenario())
    replies = {c["id"]: c for c in sent if c.get("type") == "reply"}
    assert replies[1]["cancelled"] and "cancelled by the user" in replies[1]["error"]
    assert replies[2]["result"] == {"method": "acdc", "threshold": 0.0, "signed": False, "kept": 13}
    assert any(p.get("kind") == "acdc" and p.get("total") == 13 for p in progress) and w.progress == {}
    assert w.method == "acdc" and w.acdc_threshold == 0.0 and w.faithfulness["normalized"] == 1.0
    assert not torch.equal(w.result.scores, eap_scores)
    w.use_eap()
    assert w.method == "eap" and torch.equal(w.result.scores, eap_scores)
    assert hook_count(small) == 0 and settings(small) == {name: False for name in SETTINGS}


def test_show_circuit_with_acdc(small: Any) -> None:
    w = show_circuit(small, CLEAN, CORRUPTED, method="acdc", threshold=0.02, answer=" Mary", wrong_answer=" John")
    assert w.method == "acdc" and w.threshold == 0.02 and w.acdc_threshold == 0.02
    assert w.faithfulness["metric"] == pytest.approx(w.result.circuit_metric, abs=1e-6)
    assert w.faithfulness["n_edges"] == int(w.result.circuit().sum())
    assert not w.acdc_signed
    signed = show_circuit(small, CLEAN, CORRUPTED, method="acdc", threshold=0.02, signed=True, answer=" Mary",
                          wrong_answer=" John")
    assert signed.acdc_signed and signed.faithfulness["metric"] == pytest.approx(signed.result.circuit_metric, abs=1e-6)
    assert signed.faithfulness["n_edges"] == int(signed.result.circuit().sum())
    assert signed.result.signed and "ACDC (signed, threshold 0.02)" in (signed._static_svg() or "")
    signed.run_acdc(0.02)  # and back: |change| ACDC, the same circuit as `w`'s
    assert not signed.acdc_signed and not signed.result.signed and torch.equal(signed.result.scores, w.result.scores)
    with pytest.raises(CircuitError, match="signed must be true or false"):
        show_circuit(small, CLEAN, CORRUPTED, method="acdc", signed=1)  # type: ignore[arg-type]
    with pytest.raises(CircuitError, match="signed ACDC needs a threshold > 0"):
        signed.run_acdc(0.0, signed=True)
    assert "signed ACDC needs a threshold > 0" in signed.error


def test_static_svg(widget: CircuitWidget) -> None:
    w = widget
    w.keep_top(12)
    svg = w._static_svg()
    assert svg is not None and svg.startswith("<svg")
    assert svg.count("<path ") == 12
    assert "12 of 110 edges" in svg and f"faithfulness {w.faithfulness['normalized']:.3f}" in svg
    bundle = w._repr_mimebundle_()
    data = bundle[0] if isinstance(bundle, tuple) else bundle
    assert data["image/svg+xml"] == svg


def test_drawing_numbers_are_the_pages_and_the_svgs(widget: CircuitWidget) -> None:
    """Each edge's curve, tone and width are computed once, in Python: the page gets them in the
    ``edges`` trait and the static SVG draws the very same numbers."""
    w = widget
    w.keep_top(12)
    edges, g = w.edges, w.result.graph
    drawn = re.findall(r'<path d="([^"]+)" fill="none" stroke="([^"]+)" stroke-width="([^"]+)"', w._static_svg() or "")
    assert drawn == [(edges["path"][i], diverging_rgb(float(edges["tone"][i])), f"{float(edges['width'][i]):.2f}")
                     for i in reversed(range(12))]  # strongest drawn last
    # tone: score / max |score|, to 1/16 (a weak edge keeps its sign); width linear in |tone|
    scores = w.result.scores[w.result.order()].float()
    top = float(scores.abs().max())
    for i, score in enumerate(scores.tolist()):
        tone = round(score / top * 16) / 16 or (math.copysign(1 / 16, score) if score else 0.0)
        assert float(edges["tone"][i]) == pytest.approx(tone) and float(edges["width"][i]) == pytest.approx(0.5 + 4.5 * abs(tone))
    # a curve leaves its source's right side and enters its destination's port (q, k, v 9 px apart)
    e = g.edge_index("a0.h1->a1.h2.k")
    i = int(np.nonzero(decode_array(edges["score"]) == np.float32(w.result.scores[e]))[0][0])
    src, dst = w.nodes[edges["src"][i]], w.nodes[edges["dst"][i]]
    start, end = edges["path"][i].split(" C")[0], edges["path"][i].rsplit(" ", 1)[1]
    assert start == f"M{src['x'] + 30:.1f},{src['y']:.1f}" and end == f"{dst['x'] - 30:.1f},{dst['y']:.1f}"
    assert dst["ports"] == [dst["y"] - 9, dst["y"], dst["y"] + 9]


# ------------------------------------------------------------------------------ proofs on the zoo
def load_zoo(name: str) -> Any:
    from mechwidgets import zoo

    return zoo.load(name)  # the zoo ships with the package: a model that fails to load fails the test


@pytest.fixture(scope="module")
def induction_model() -> Any:
    return load_zoo("induction-2l")


@pytest.fixture(scope="module")
def toy_lm() -> Any:
    return load_zoo("toy-lm")


def induction_prompts(n: int = 8, length: int = 12) -> tuple[list[str], list[str], list[str], list[str]]:
    """Repeated random tokens, cut one token short: the answer is the induction prediction.
    Corrupted: other repeated random tokens, whose own induction answer is the wrong answer."""
    from mechwidgets.zoo import tasks

    clean_seqs = tasks.induction_sequences(n, length=length, seed=11, model="induction-2l")
    other_seqs = tasks.induction_sequences(n, length=length, seed=12, model="induction-2l")

    def cut(seq: Any) -> tuple[str, str]:
        words = list(seq.words)
        return " ".join(words + words[:-1]), words[-1]

    clean, answers = zip(*(cut(s) for s in clean_seqs), strict=True)
    corrupted, wrong = zip(*(cut(s) for s in other_seqs), strict=True)
    return list(clean), list(corrupted), list(answers), list(wrong)


def test_induction_proof_previous_token_to_induction_key_edge(induction_model: Any) -> None:
    """ACDC (at the widget's default threshold, 2% of the clean-corrupted gap) on induction-2l
    keeps the induction circuit: the previous-token head's value reads the embeddings, its output
    feeds the induction head's key, the embeddings feed that head's query, and the head writes to
    the logits; the previous-token -> induction-key edge is among the top 5 of 81 by |ACDC score|.

    EAP and EAP-IG are printed for comparison: their linear estimates rank that edge far lower
    (the induction heads' attention is saturated, so the gradient at the clean run is small)."""
    from mechwidgets.analysis.attention import get_attention_patterns, head_scores

    model = induction_model
    clean, corrupted, answers, wrong = induction_prompts()
    w = show_circuit(model, clean, corrupted, method="acdc", answer=answers, wrong_answer=wrong)
    result, patcher = w.result, w.patcher
    assert result.clean_metric > 0 > result.corrupted_metric
    # the previous-token head (layer 0) and the induction head it feeds (layer 1), found by their patterns
    pats = get_attention_patterns(model, clean[0] + " " + answers[0])
    scores = head_scores(pats.patterns, pats.tokens)
    prev = int(scores["previous_token"][0].argmax())
    assert float(scores["previous_token"][0, prev]) >= 0.5
    edge_scores = {h: float(result.scores[result.graph.edge_index(f"a0.h{prev}->a1.h{h}.k")]) for h in range(4)}
    ind = min(edge_scores, key=edge_scores.__getitem__)  # the induction head most hurt by the corrupted key
    assert float(scores["induction"][1, ind]) >= 0.3
    edge = f"a0.h{prev}->a1.h{ind}.k"
    rank = result.rank(edge)
    eap = patcher.result("eap")
    ig = patcher.result("eap-ig", patcher.eap_ig_scores(IG_STEPS))
    kept = set(w.circuit_edges())
    print(f"\ninduction-2l ACDC (threshold {result.threshold:.3g}): {len(kept)} of {result.n_edges} edges kept, "
          f"faithfulness {w.faithfulness['normalized']:.3f}; {edge} ranks {rank + 1} by |ACDC score| "
          f"({edge_scores[ind]:.3f}); by |EAP| {eap.rank(edge) + 1}, by |EAP-IG| {ig.rank(edge) + 1}; "
          f"top ACDC edges {result.top_edges(6)}")
    assert rank < 5 and edge_scores[ind] < 0  # a top edge, and removing it lowers the logit difference
    assert {f"embed->a0.h{prev}.v", edge, f"embed->a1.h{ind}.q", f"a1.h{ind}->logits"} <= kept
    assert w.faithfulness["normalized"] >= 0.8


@pytest.mark.skipif(not TL3, reason="two ACDC runs on 16 pairs cost half a minute through a TransformerBridge; "
                    "test_circuits_tl4.py shows ACDC on toy-lm's bridge equals 3.x's, where this proof runs")
def test_ioi_proof_small_circuit_recovers_the_logit_difference(toy_lm: Any) -> None:
    """Signed ACDC at 1.5% of the clean-corrupted gap, on 16 IOI pairs of the training templates
    (ABC-corrupted): a circuit of at most 10% of toy-lm's 479 edges that recovers at least 80% of
    the logit difference, with heads writing to the logits. EAP, EAP-IG and |change| ACDC at the
    same threshold are printed for comparison (on held-out templates, see the closing note of
    issue #6: the same threshold keeps 45 edges at 0.81)."""
    from mechwidgets.zoo import tasks

    pairs = tasks.ioi_pairs(16, seed=0, held_out=False)
    w = show_circuit(toy_lm, [p.clean for p in pairs], [p.corrupted for p in pairs],
                     answer=[p.answer for p in pairs], wrong_answer=[p.wrong_answer for p in pairs])
    n = w.n_edges_total
    gap = w.patcher.clean_metric - w.patcher.corrupted_metric
    assert gap > 1.0
    lines = [f"toy-lm IOI (16 pairs): logit diff clean {w.patcher.clean_metric:.3f}, corrupted "
             f"{w.patcher.corrupted_metric:.3f}; {n} edges"]
    for ig in (False, True):
        w.use_eap(ig=ig)
        f = w.keep_top(n // 10)
        lines.append(f"  top 10% by |{'EAP-IG' if ig else 'EAP'}|: {f.n_edges} edges, faithfulness {f.normalized:.3f}")
    tau = round(0.015 * gap, 4)
    w.run_acdc(tau)
    f = w.last_faithfulness
    assert f is not None
    lines.append(f"  |change| ACDC at 1.5% of the gap ({tau}): {f.n_edges} edges ({100 * f.edge_fraction:.1f}%), "
                 f"faithfulness {f.normalized:.3f}")
    w.run_acdc(tau, signed=True)
    f = w.last_faithfulness
    assert f is not None
    kept = w.circuit_edges()
    lines.append(f"  signed ACDC at 1.5% of the gap: {f.n_edges} edges ({100 * f.edge_fraction:.1f}%), "
                 f"faithfulness {f.normalized:.3f}; to the logits: {[e for e in kept if e.endswith('->logits')]}")
    print("\n" + "\n".join(lines))
    assert f.n_edges <= 0.1 * n and f.normalized >= 0.8
    assert f.metric == pytest.approx(w.result.circuit_metric, abs=1e-5)
    assert any(e.startswith("a") and e.endswith("->logits") for e in kept)  # heads write the answer
