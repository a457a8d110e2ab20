"""Logit lens, direct logit attribution and residual norms, checked against TransformerLens's own
cache computations (``accumulated_resid(apply_ln=True)``, ``decompose_resid``,
``stack_head_results``, ``apply_ln_to_stack``, ``logit_attrs``) and hand-written hooks; and the
logit-lens widget through its frontend message handler."""

from __future__ import annotations

import functools
import inspect
from typing import Any

import numpy as np
import pytest
import torch
from support import request

from mechwidgets import LogitLensWidget, show_logit_lens, zoo
from mechwidgets._tensor import decode_array, encoded_nbytes, join_buffers
from mechwidgets.analysis.lens import (
    direct_logit_attribution,
    lens_view,
    logit_lens,
    residual_norms,
)
from mechwidgets.errors import AnswerError, ComponentError, MechWidgetsError, PromptError

PROMPT = "When Mary and John went to the store, John gave a drink to"
OTHER = "When John and Mary went to the store, Mary gave a drink to"
IOI = "When Mary and John went to the store, John gave a drink to"

ARCHS = {
    "ln": {},
    "no_norm": {"normalization_type": None},
    "rms": {"normalization_type": "RMS"},
    "rotary": {"positional_embedding_type": "rotary", "rotary_dim": 8},
    "parallel": {"parallel_attn_mlp": True},
    "attn_only": {"attn_only": True},
    "gqa": {"n_key_value_heads": 2},
}


@functools.cache
def toy_lm() -> Any:
    return zoo.load("toy-lm")


def _randomise_norms(model: Any, seed: int = 0) -> None:
    """Norm weights away from (1, 0), so that applying them (or not) shows."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "ln" in name and name.endswith(".w"):
                p.copy_(1 + 0.3 * torch.randn(p.shape, generator=gen))
            elif "ln" in name and name.endswith(".b"):
                p.copy_(0.3 * torch.randn(p.shape, generator=gen))


@functools.cache
def _arch_model(arch: str, tokenizer_dir: str) -> Any:
    from support import tiny_model
    from transformers import PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast.from_pretrained(tokenizer_dir)
    model = tiny_model(tok, **ARCHS[arch])
    _randomise_norms(model)
    return model


def _prompt_for(name: str) -> str:
    return IOI if name == "toy-lm" else PROMPT


def _final_norm_affine(model: Any) -> tuple[torch.Tensor, torch.Tensor]:
    ln = getattr(model, "ln_final", None)
    d = model.cfg.d_model
    w = getattr(ln, "w", None)
    b = getattr(ln, "b", None)
    return (torch.ones(d) if w is None else w.detach()), (torch.zeros(d) if b is None else b.detach())


# ---------------------------------------------------------------------------- logit lens
def _streams(model: Any, cache: Any) -> torch.Tensor:
    """[layer + 1, pos, d_model]: TransformerLens's accumulated_resid, no norm."""
    return cache.accumulated_resid()[:, 0]


def _has_recompute(cache: Any) -> bool:
    return "recompute_ln" in inspect.signature(cache.apply_ln_to_stack).parameters


@pytest.mark.parametrize("ln_scale", ["own", "final"])
@pytest.mark.parametrize("arch", ["toy-lm", *ARCHS])
def test_lens_equals_transformer_lens(tokenizer: Any, arch: str, ln_scale: str) -> None:
    model = toy_lm() if arch == "toy-lm" else _arch_model(arch, tokenizer.name_or_path)
    prompt = _prompt_for(arch)
    res = logit_lens(model, prompt, answer=" Mary", top_k=4, ln_scale=ln_scale)  # type: ignore[arg-type]
    with torch.no_grad():
        logits, cache = model.run_with_cache(prompt)
        if ln_scale == "own":
            # each stream through ln_final with its own statistics: accumulated_resid(apply_ln=True)
            # where it recomputes them (TransformerLens 3.9), ln_final on each stream otherwise
            if _has_recompute(cache):
                normed = cache.accumulated_resid(apply_ln=True)[:, 0]
            else:
                normed = torch.stack([model.ln_final(s[None])[0] for s in _streams(model, cache)])
        else:  # the final stream's scale (apply_ln_to_stack), then the norm's weight and bias
            kwargs = {"recompute_ln": False} if _has_recompute(cache) else {}
            scaled = cache.apply_ln_to_stack(cache.accumulated_resid(), **kwargs)[:, 0]
            w, b = _final_norm_affine(model)
            normed = scaled * w + b
        theirs = model.unembed(normed).log_softmax(-1)  # TransformerLens's own unembed
    assert theirs.shape[0] == len(res.layers) == model.cfg.n_layers + 1
    torch.testing.assert_close(res.top_probs.log(), theirs.gather(-1, res.top_ids), atol=1e-4, rtol=0)
    # the top ids are TransformerLens's top ids (up to ties)
    torch.testing.assert_close(res.top_probs[..., 0], theirs.exp().max(-1).values, atol=1e-4, rtol=0)
    final = logits[0].log_softmax(-1)
    torch.testing.assert_close(theirs[-1], final, atol=1e-4, rtol=0)  # last row: the model's
    kl = (final.exp() * (final - theirs)).sum(-1)
    torch.testing.assert_close(res.kl, kl.clamp_min(0), atol=1e-4, rtol=0)
    assert torch.all(res.kl[-1] < 1e-4)
    a = model.to_single_token(" Mary")
    assert res.answer_prob is not None and res.answer_rank is not None
    torch.testing.assert_close(res.answer_prob, theirs[..., a].exp(), atol=1e-4, rtol=0)
    assert torch.equal(res.answer_rank, (theirs > theirs[..., a : a + 1]).sum(-1))


# ---------------------------------------------------------------------------- DLA
def _tl_dla(model: Any, prompt: str, stack: torch.Tensor, a: int, w_id: int, cache: Any) -> torch.Tensor:
    """TransformerLens's apply_ln_to_stack (final scale), then the norm's weight and the
    unembedding direction (logit_attrs itself leaves the norm's weight out)."""
    scaled = cache.apply_ln_to_stack(stack, layer=-1, pos_slice=-1)[:, 0]
    w, _ = _final_norm_affine(model)
    direction = model.W_U[:, a] - model.W_U[:, w_id]
    return (scaled * w) @ direction


@pytest.mark.parametrize("arch", ["toy-lm", *ARCHS])
def test_dla_components_and_heads_equal_transformer_lens(tokenizer: Any, arch: str) -> None:
    model = toy_lm() if arch == "toy-lm" else _arch_model(arch, tokenizer.name_or_path)
    prompt = _prompt_for(arch)
    a, w_id = (model.to_single_token(t) for t in (" Mary", " John"))
    comp = direct_logit_attribution(model, prompt, answer=" Mary", wrong_answer=" John")
    head = direct_logit_attribution(model, prompt, answer=" Mary", wrong_answer=" John", by="head")
    with torch.no_grad():
        logits, cache = model.run_with_cache(prompt)
        stack, labels = cache.decompose_resid(return_labels=True, pos_slice=-1)
        theirs = _tl_dla(model, prompt, stack, a, w_id, cache)
        heads_stack = cache.stack_head_results(layer=-1, pos_slice=-1)
        theirs_heads = _tl_dla(model, prompt, heads_stack, a, w_id, cache)
    assert len(comp.labels) == len(labels)
    torch.testing.assert_close(comp.values, theirs.float(), atol=1e-4, rtol=0)
    torch.testing.assert_close(head.heads.flatten(), theirs_heads.float(), atol=1e-4, rtol=0)
    # the parts add up to the model's logit difference, with the norm's bias reported
    total = float(logits[0, -1, a] - logits[0, -1, w_id])
    assert comp.total == pytest.approx(total, abs=1e-4)
    assert float(comp.values.sum()) + comp.norm_bias == pytest.approx(total, abs=1e-4)
    assert float(head.values.sum()) + head.norm_bias == pytest.approx(total, abs=1e-4)
    _, b = _final_norm_affine(model)
    with torch.no_grad():
        expected_bias = float(b @ (model.W_U[:, a] - model.W_U[:, w_id]) + model.b_U[a] - model.b_U[w_id])
    assert comp.norm_bias == pytest.approx(expected_bias, abs=1e-5)


def test_logit_attrs_agrees_when_the_norm_has_no_weight(make_model: Any) -> None:
    """On a model whose final norm has no weight or bias, TransformerLens's logit_attrs is the
    same number end to end."""
    model = make_model(normalization_type="LNPre")
    a, w_id = model.to_single_token(" Mary"), model.to_single_token(" John")
    head = direct_logit_attribution(model, PROMPT, answer=a, wrong_answer=w_id, by="head")
    with torch.no_grad():
        _, cache = model.run_with_cache(PROMPT)
        stack = cache.stack_head_results(layer=-1, pos_slice=-1)
        theirs = cache.logit_attrs(stack, tokens=torch.tensor([a]), incorrect_tokens=torch.tensor([w_id]), pos_slice=-1)
    torch.testing.assert_close(head.heads.flatten(), theirs[:, 0].float(), atol=1e-4, rtol=0)


@pytest.mark.parametrize("arch", ["toy-lm", "rotary", "gqa"])
def test_dla_by_position_sums_to_heads_and_matches_a_hand_computation(tokenizer: Any, arch: str) -> None:
    model = toy_lm() if arch == "toy-lm" else _arch_model(arch, tokenizer.name_or_path)
    prompt = _prompt_for(arch)
    res = direct_logit_attribution(model, prompt, answer=" Mary", wrong_answer=" John", by="position")
    assert res.head_positions is not None
    torch.testing.assert_close(res.head_positions.sum(-1), res.heads, atol=1e-4, rtol=0)
    # one head by hand: keep only source position s of its pattern and read hook_z's W_O term
    a, w_id = model.to_single_token(" Mary"), model.to_single_token(" John")
    layer, head, src = model.cfg.n_layers - 1, 0, 2
    with torch.no_grad():
        _, cache = model.run_with_cache(prompt)
        pat = cache["pattern", layer][0, head, -1]
        v = cache["v", layer][0, src, head]
        out = pat[src] * v @ model.blocks[layer].attn.W_O[head]
        scaled = cache.apply_ln_to_stack(out[None, None, None], layer=-1, pos_slice=-1)[0, 0]
        w, _ = _final_norm_affine(model)
        want = float((scaled[0] * w) @ (model.W_U[:, a] - model.W_U[:, w_id]))
    assert float(res.head_positions[layer, head, src]) == pytest.approx(want, abs=1e-4)


def test_dla_single_answer_and_top() -> None:
    model = toy_lm()
    res = direct_logit_attribution(model, IOI, answer=" Mary")
    with torch.no_grad():
        logits = model(IOI)
    assert res.total == pytest.approx(float(logits[0, -1, model.to_single_token(" Mary")]), abs=1e-4)
    assert float(res.values.sum()) + res.norm_bias == pytest.approx(res.total, abs=1e-4)
    top = res.top(3)
    assert len(top) == 3 and abs(top[0][1]) >= abs(top[1][1]) >= abs(top[2][1])


def test_toy_lm_ioi_heads_from_the_card_lead_the_dla() -> None:
    """toy-lm's card (Known circuits, measured on held-out pairs of the template `When {A} and
    {B} went to the {PLACE}, {S} gave a {OBJECT} to`): L3H0 has by far the largest DLA to
    logit(IO) - logit(S), and L1H0 is the other head raising IO over S."""
    model = toy_lm()
    heads = []
    for pair in zoo.tasks.ioi_pairs(8, seed=0, template=(0, 0)):
        res = direct_logit_attribution(model, pair.clean, answer=pair.answer, wrong_answer=pair.wrong_answer, by="head")
        assert res.total > 2, pair.clean  # the model gets the IOI answer right
        assert int(res.heads.flatten().argmax()) == 3 * 4 + 0, (pair.clean, res.heads)
        heads.append(res.heads)
    mean = torch.stack(heads).mean(0)
    top4 = mean.flatten().argsort(descending=True)[:4].tolist()
    assert top4[0] == 12 and 4 in top4, mean
    assert float(mean[1, 0]) > 0.3


# ---------------------------------------------------------------------------- norms
def test_residual_norms_equal_the_cache_and_fit(model: Any) -> None:
    prompts = [PROMPT, "A B C D"]
    res = residual_norms(model, prompts)
    n = model.cfg.n_layers
    for prompt, got in zip(prompts, res.norms, strict=True):
        _, cache = model.run_with_cache(prompt)
        acc = cache.accumulated_resid()[:, 0]  # resid_pre of each layer, then the final stream
        torch.testing.assert_close(got, acc.norm(dim=-1), atol=1e-4, rtol=1e-5)
    assert res.mean.shape == (n + 1,)
    want = torch.cat([x[:, 1:] for x in res.norms], 1).mean(1)
    torch.testing.assert_close(res.mean, want)
    slope = np.polyfit(np.arange(n + 1), np.log(res.mean.numpy()), 1)[0]
    assert res.fitted_growth == pytest.approx(float(np.exp(slope)), rel=1e-4)
    torch.testing.assert_close(res.growth, res.mean[1:] / res.mean[:-1])


# ---------------------------------------------------------------------------- ablation
def _hand_ablated_logits(model: Any, heads: list[tuple[int, int]], mlps: list[int], mode: str) -> torch.Tensor:
    _, other = model.run_with_cache(OTHER)
    hooks = []
    for layer, head in heads:
        name = f"blocks.{layer}.attn.hook_z"

        def hz(z: torch.Tensor, hook: Any, head: int = head, name: str = name) -> torch.Tensor:
            z = z.clone()
            zh = z[:, :, head]
            z[:, :, head] = {"zero": torch.zeros_like(zh), "mean": zh.mean(1, keepdim=True).expand_as(zh),
                             "resample": other[name][:, :, head]}[mode]
            return z

        hooks.append((name, hz))
    for layer in mlps:
        name = f"blocks.{layer}.hook_mlp_out"

        def hm(x: torch.Tensor, hook: Any, name: str = name) -> torch.Tensor:
            return {"zero": torch.zeros_like(x), "mean": x.mean(1, keepdim=True).expand_as(x),
                    "resample": other[name]}[mode]

        hooks.append((name, hm))
    with torch.no_grad():
        return model.run_with_hooks(PROMPT, fwd_hooks=hooks)


@pytest.mark.parametrize("mode", ["zero", "mean", "resample"])
def test_ablated_view_equals_hand_written_hooks(model: Any, unchanged: Any, mode: str) -> None:
    heads, mlps = [(1, 2)], [0]
    view = lens_view(model, PROMPT, answer=" Mary", wrong_answer=" John", ablate_heads=heads,
                     ablate_mlps=mlps, mode=mode, ablation_prompt=OTHER)
    logits = _hand_ablated_logits(model, heads, mlps, mode)
    lp = logits[0].log_softmax(-1)
    torch.testing.assert_close(view.lens.top_probs[-1].log(), lp.gather(-1, view.lens.top_ids[-1]), atol=1e-4, rtol=0)
    a, w_id = model.to_single_token(" Mary"), model.to_single_token(" John")
    assert view.dla is not None
    assert view.dla.total == pytest.approx(float(logits[0, -1, a] - logits[0, -1, w_id]), abs=1e-4)
    assert float(view.dla.values.sum()) + view.dla.norm_bias == pytest.approx(view.dla.total, abs=1e-4)
    if mode == "zero":
        assert float(view.dla.heads[1, 2]) == 0.0 and float(view.dla.mlps[0]) == 0.0
    clean = lens_view(model, PROMPT, answer=" Mary", wrong_answer=" John")
    assert not torch.allclose(clean.lens.top_probs, view.lens.top_probs)


def test_bad_inputs_raise_clear_errors(model: Any) -> None:
    with pytest.raises(AnswerError, match="single token"):
        logit_lens(model, PROMPT, answer=" Mary John")
    with pytest.raises(AnswerError, match="same token"):
        direct_logit_attribution(model, PROMPT, answer=" Mary", wrong_answer=" Mary")
    with pytest.raises(ComponentError, match="by must be"):
        direct_logit_attribution(model, PROMPT, answer=" Mary", by="layer")  # type: ignore[arg-type]
    with pytest.raises(ComponentError, match="ln_scale"):
        logit_lens(model, PROMPT, ln_scale="mine")  # type: ignore[arg-type]
    with pytest.raises(ComponentError, match="top_k"):
        logit_lens(model, PROMPT, top_k=0)
    with pytest.raises(PromptError, match="empty"):
        logit_lens(model, "  ")
    with pytest.raises(PromptError, match="ablation_prompt"):
        lens_view(model, PROMPT, ablate_heads=[(0, 0)], mode="resample")
    with pytest.raises(PromptError, match="same length"):
        lens_view(model, PROMPT, ablate_heads=[(0, 0)], mode="resample", ablation_prompt="A B")
    with pytest.raises(ComponentError, match="out of range"):
        lens_view(model, PROMPT, ablate_heads=[(0, 9)])
    with pytest.raises(PromptError, match="wrong_answer"):
        lens_view(model, PROMPT, wrong_answer=" John")


# ---------------------------------------------------------------------------- widget
def _ask(widget: Any, rid: Any, kind: str, **args: Any) -> dict[str, Any]:
    """The last message the widget sends back for a request, binary buffers put back."""
    sent: list[tuple[Any, list[bytes]]] = []
    widget.send = lambda content, buffers=None: sent.append((content, list(buffers or [])))
    widget._on_frontend_message(widget, {"type": "request", "id": rid, "kind": kind, "args": args}, [])
    content, buffers = sent[-1]
    return join_buffers(content, buffers)


@pytest.fixture
def widget(model: Any) -> LogitLensWidget:
    return show_logit_lens(model, PROMPT, answer=" Mary", wrong_answer=" John", ablation_prompt=OTHER)


def test_widget_state_is_binary_and_matches_the_analysis(model: Any, widget: LogitLensWidget) -> None:
    lens = logit_lens(model, PROMPT, answer=" Mary", top_k=widget.top_k)
    top1 = decode_array(widget.lens["top1"])
    vocab = widget.lens["vocab"]
    assert [[vocab[i] for i in row] for row in top1] == [
        [str(s) for s in model.to_str_tokens(row)] for row in lens.top_ids[..., 0]
    ]
    np.testing.assert_allclose(decode_array(widget.lens["top1_prob"]), lens.top_probs[..., 0].numpy(), atol=1e-6)
    np.testing.assert_allclose(decode_array(widget.lens["answer_rank"]), lens.answer_rank.numpy())
    dla = direct_logit_attribution(model, PROMPT, answer=" Mary", wrong_answer=" John", by="position")
    np.testing.assert_allclose(decode_array(widget.dla["heads"]), dla.heads.numpy(), atol=1e-6)
    assert widget.dla["labels"] == dla.labels
    assert widget.tokens == [str(s) for s in model.to_str_tokens(PROMPT)]
    for trait in ("lens", "dla", "norms"):
        state = getattr(widget, trait)
        assert encoded_nbytes(state) > 0, f"{trait} carries binary arrays"
        assert not any(isinstance(v, list) and v and isinstance(v[0], float) for v in state.values())


def test_widget_layer_topk_on_request(model: Any, widget: LogitLensWidget) -> None:
    reply = _ask(widget, 7, "layer_topk", layer=1)
    assert reply["id"] == 7 and "error" not in reply, reply
    result = reply["result"]
    lens = logit_lens(model, PROMPT, answer=" Mary", top_k=widget.top_k)
    ids = decode_array(result["ids"])
    np.testing.assert_array_equal(ids, lens.top_ids[1].numpy())
    np.testing.assert_allclose(decode_array(result["probs"]), lens.top_probs[1].numpy(), atol=1e-6)
    assert result["strs"][0] == [str(s) for s in model.to_str_tokens(lens.top_ids[1, 0])]
    bad = _ask(widget, 8, "layer_topk", layer=99)
    assert "out of range" in bad["error"] and widget.error


def test_widget_click_ablates_and_shows_before_after(model: Any, widget: LogitLensWidget, unchanged: Any) -> None:
    before_top1 = decode_array(widget.lens["top1_prob"]).copy()
    sent = request(widget, 3, "ablate", heads=[[1, 2]], mlps=[0], mode="resample")
    assert "error" not in sent[-1], sent[-1]
    assert widget.ablated == {"heads": [[1, 2]], "mlps": [0], "mode": "resample"}
    view = lens_view(model, PROMPT, answer=" Mary", wrong_answer=" John", ablate_heads=[(1, 2)],
                     ablate_mlps=[0], mode="resample", ablation_prompt=OTHER, top_k=widget.top_k)
    after = widget.ablation
    np.testing.assert_allclose(decode_array(after["lens"]["top1_prob"]), view.lens.top_probs[..., 0].numpy(), atol=1e-6)
    np.testing.assert_allclose(decode_array(after["dla"]["values"]), view.dla.values.numpy(), atol=1e-6)
    assert after["dla"]["total"] == pytest.approx(view.dla.total, abs=1e-5)
    assert after["predictions"]["tokens"] and after["predictions_before"]["tokens"]
    # the clean view is kept for the before/after comparison
    np.testing.assert_array_equal(decode_array(widget.lens["top1_prob"]), before_top1)
    # clearing
    request(widget, 4, "ablate", heads=[], mlps=[])
    assert widget.ablation == {} and widget.ablated == {"heads": [], "mlps": [], "mode": "resample"}


def test_widget_python_api_and_errors(model: Any, widget: LogitLensWidget) -> None:
    view = widget.ablate(heads=[(0, 1)], mode="zero")
    assert view.dla is not None and float(view.dla.heads[0, 1]) == 0.0
    with pytest.raises(ComponentError):
        widget.ablate(heads=[(5, 0)])
    assert "out of range" in widget.error
    sent = request(widget, 9, "ablate", heads=[[0]], mlps=[])
    assert "[layer, head]" in sent[-1]["error"]
    sent = request(widget, 10, "ablate", heads=[], mlps=[0], mode="sideways")
    assert "mode" in sent[-1]["error"]
    widget.clear_ablation()
    assert widget.error == ""


def test_widget_without_answer_and_svg(model: Any) -> None:
    w = show_logit_lens(model, PROMPT)
    assert w.dla == {} and w.lens["answer_rank"] == {}
    svg = w._static_svg()
    assert svg is not None and svg.startswith("<svg") and "Logit lens" in svg
    w2 = show_logit_lens(model, "<b>A</b> B", answer=" A")
    assert "<b>" not in (w2._static_svg() or "")
    with pytest.raises(MechWidgetsError, match="resample"):
        w.ablate(heads=[(0, 0)], mode="resample")


def test_topk_inline_for_short_prompts_per_layer_for_long_ones(model: Any) -> None:
    from mechwidgets.widgets._base import MAX_UPDATE_BYTES

    lens = logit_lens(model, PROMPT, top_k=5)
    short = show_logit_lens(model, PROMPT)
    vocab = short.lens["vocab"]
    ids = decode_array(short.lens["topk_ids"])
    assert [[[vocab[i] for i in cell] for cell in row] for row in ids] == [
        [[str(s) for s in model.to_str_tokens(cell)] for cell in row] for row in lens.top_ids
    ]
    np.testing.assert_allclose(decode_array(short.lens["topk_probs"]), lens.top_probs.numpy(), atol=1e-6)
    long = show_logit_lens(model, PROMPT, answer=" A", top_k=50, max_inline_cells=0)
    assert long.lens["topk_ids"] == {} and long.lens["topk_probs"] == {}
    for trait in ("lens", "dla", "norms"):
        assert encoded_nbytes(getattr(long, trait)) < MAX_UPDATE_BYTES
    reply = _ask(long, 1, "layer_topk", layer=0)["result"]
    assert decode_array(reply["ids"]).shape == (len(long.tokens), 50)


def test_model_left_unchanged_by_everything(model: Any, unchanged: Any) -> None:
    lens_view(model, PROMPT, answer=" Mary", ablate_heads=[(0, 0)], ablate_mlps=[1], mode="mean")
    residual_norms(model, PROMPT)
    direct_logit_attribution(model, PROMPT, answer=" Mary", by="position")


def test_the_widget_follows_an_edited_model() -> None:
    """A weight edited in place and a user's hook attached between two clicks: the next click
    shows the lens of the model as it is then (issue 15), equal to a fresh computation."""
    from mechwidgets import show_logit_lens, zoo
    from mechwidgets._model import hook_count
    from mechwidgets.analysis.lens import lens_view

    model = zoo.load("toy-lm")
    prompt = "When Mary and John went to the store, John gave a drink to"
    w = show_logit_lens(model, prompt, answer=" Mary", wrong_answer=" John")
    w_o = model.blocks[3].attn.W_O
    saved = w_o.detach().clone()
    try:
        w_o.data.mul_(0.25)
        w.ablate([(1, 0)], mode="zero")
        fresh = lens_view(model, prompt, answer=" Mary", wrong_answer=" John", by="position")
        assert w.view.dla is not None and fresh.dla is not None
        torch.testing.assert_close(w.view.dla.values, fresh.dla.values, atol=1e-4, rtol=0)
        torch.testing.assert_close(w.view.lens.kl, fresh.lens.kl, atol=1e-4, rtol=0)
        ablated = lens_view(model, prompt, answer=" Mary", wrong_answer=" John", by="position",
                            ablate_heads=[(1, 0)], mode="zero")
        assert w.last_ablation is not None and ablated.dla is not None and w.last_ablation.dla is not None
        torch.testing.assert_close(w.last_ablation.dla.values, ablated.dla.values, atol=1e-4, rtol=0)
        model.add_hook("blocks.2.hook_mlp_out", lambda act, hook: 0 * act, is_permanent=True)
        with_hook = hook_count(model)
        w._call("layer_topk", layer=0)  # any click
        hooked = lens_view(model, prompt, answer=" Mary", wrong_answer=" John", by="position")
        assert hooked.dla is not None
        torch.testing.assert_close(w.view.dla.values, hooked.dla.values, atol=1e-4, rtol=0)
        assert float((hooked.dla.values - fresh.dla.values).abs().max()) > 1e-3  # the hook mattered
        assert hook_count(model) == with_hook  # the user's own, and only it
    finally:
        model.reset_hooks(including_permanent=True)
        w_o.data.copy_(saved)


def test_a_long_prompt_shows_its_last_positions_first_then_the_rest(model: Any, unchanged: Any) -> None:
    """With ``eager_cells`` (show_logit_lens: FIRST_VIEW_CELLS) the lens comes first at the last
    positions only (the rest zeros, ``computed_from``); ``complete_lens`` (the page asks once
    drawn) fills in the rest from the same run, equal to the whole lens; a layer's top-k asked
    before that completes it first."""
    from mechwidgets.analysis.lens import LensAnalysis

    full = lens_view(model, PROMPT, answer=" Mary", wrong_answer=" John", ablate_heads=[(1, 2)], mode="mean")
    clean = lens_view(model, PROMPT, answer=" Mary", wrong_answer=" John")
    n_rows, n_pos = full.lens.kl.shape
    analysis = LensAnalysis(model, PROMPT, answer=" Mary", wrong_answer=" John", eager_cells=3 * n_rows)
    w = LogitLensWidget(analysis)
    start = w.lens["computed_from"]
    assert start == n_pos - 3 and w.view.lens.computed_from == start
    assert not decode_array(w.lens["top1_prob"])[:, :start].any()
    np.testing.assert_allclose(decode_array(w.lens["top1_prob"])[:, start:], clean.lens.top_probs[:, start:, 0].numpy(), atol=1e-6)
    view = w.ablate(heads=[(1, 2)], mode="mean")
    assert w.ablation["lens"]["computed_from"] == start
    np.testing.assert_allclose(decode_array(w.ablation["dla"]["values"]), full.dla.values.numpy(), atol=1e-5)
    sent = request(w, 1, "complete_lens")
    assert "error" not in sent[-1], sent[-1]
    assert w.lens["computed_from"] == 0 and w.ablation["lens"]["computed_from"] == 0
    for got, want in ((w.view.lens, clean.lens), (view.lens, full.lens)):
        assert torch.equal(got.top_ids, want.top_ids) and torch.equal(got.answer_rank, want.answer_rank)
        for name in ("top_probs", "kl", "answer_prob"):
            torch.testing.assert_close(getattr(got, name), getattr(want, name), atol=1e-6, rtol=0)
    np.testing.assert_allclose(decode_array(w.ablation["lens"]["top1_prob"]), full.lens.top_probs[..., 0].numpy(), atol=1e-6)
    lazy = LensAnalysis(model, PROMPT, answer=" Mary", eager_cells=1)
    assert lazy.view.lens.computed_from == n_pos - 1
    ids, _ = lazy.layer_topk(0)
    assert lazy.view.lens.computed_from == 0 and torch.equal(ids, clean.lens.top_ids[0])
