"""Attention analysis and widget, checked against TransformerLens and hand-written hooks."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from support import TL3

from mechwidgets import AttentionWidget, attention_patterns, show_attention
from mechwidgets._tensor import decode_array
from mechwidgets.analysis.attention import ablate_heads, get_attention_patterns, head_scores
from mechwidgets.errors import ComponentError, MechWidgetsError, ModelError, PromptError

PROMPT = "When Mary and John went to the store, John gave a drink to"
REPEATED = "A B C D E F G H A B C D E F G H"


def test_patterns_equal_cache(model: Any, unchanged: Any) -> None:
    res = get_attention_patterns(model, PROMPT)
    _, cache = model.run_with_cache(PROMPT)
    for i, layer in enumerate(res.layers):
        torch.testing.assert_close(res.patterns[i], cache["pattern", layer][0], rtol=0, atol=1e-6)
    assert res.str_tokens == [str(s) for s in model.to_str_tokens(PROMPT)]


def test_layers_budget(model: Any) -> None:
    res = get_attention_patterns(model, PROMPT, layers=[1])
    assert res.layers == [1] and res.patterns.shape[0] == 1
    with pytest.raises(ComponentError):
        get_attention_patterns(model, PROMPT, layers=[7])


@pytest.mark.skipif(not TL3, reason="head_detector needs HookedTransformer (TransformerLens 3.x)")
@pytest.mark.parametrize(
    ("ours", "theirs"),
    [("previous_token", "previous_token_head"), ("duplicate_token", "duplicate_token_head"), ("induction", "induction_head")],
)
def test_head_scores_match_head_detector(model: Any, ours: str, theirs: str) -> None:
    from transformer_lens.head_detector import detect_head

    res = get_attention_patterns(model, REPEATED)
    scores = head_scores(res.patterns, res.tokens)
    expected = detect_head(model, REPEATED, theirs)
    torch.testing.assert_close(scores[ours], expected.float(), rtol=0, atol=1e-5)


def test_first_token_score(model: Any) -> None:
    res = get_attention_patterns(model, PROMPT)
    first = head_scores(res.patterns, res.tokens)["first_token"]
    torch.testing.assert_close(first, res.patterns[..., 0].mean(-1))


def _by_hand(model: Any, heads: list[tuple[int, int]], fn: Any) -> torch.Tensor:
    """Logits with a hand-written hook on hook_z applying fn(z_head) -> new z_head."""
    hooks = []
    for layer, head in heads:
        name = f"blocks.{layer}.attn.hook_z"

        def hook(z: torch.Tensor, hook: Any, head: int = head, name: str = name) -> torch.Tensor:
            z = z.clone()
            z[:, :, head] = fn(z[:, :, head], name, head)
            return z
        hooks.append((name, hook))
    with torch.no_grad():
        return model.run_with_hooks(PROMPT, fwd_hooks=hooks)


@pytest.mark.parametrize("mode", ["zero", "mean", "resample"])
def test_ablation_equals_hand_written_hook(model: Any, unchanged: Any, mode: str) -> None:
    other = "When John and Mary went to the store, Mary gave a drink to"
    heads = [(0, 1), (1, 2)]
    res = ablate_heads(model, PROMPT, heads, mode=mode, ablation_prompt=other)
    _, other_cache = model.run_with_cache(other)
    fns = {
        "zero": lambda z, name, h: torch.zeros_like(z),
        "mean": lambda z, name, h: z.mean(dim=1, keepdim=True).expand_as(z),
        "resample": lambda z, name, h: other_cache[name][:, :, h],
    }
    logits = _by_hand(model, heads, fns[mode])
    probs = logits[0, -1].softmax(-1)
    top = probs.topk(10)
    assert res.after.token_ids == top.indices.tolist()
    torch.testing.assert_close(res.after.probs, top.values, rtol=0, atol=1e-5)
    logp = logits[0, :-1].log_softmax(-1)
    toks = model.to_tokens(PROMPT)[0]
    loss = -logp.gather(-1, toks[1:, None])[:, 0]
    torch.testing.assert_close(res.loss_after, loss, rtol=0, atol=1e-5)
    # clean run untouched
    clean = model(PROMPT)[0, -1].softmax(-1)
    torch.testing.assert_close(res.before.probs, clean.topk(10).values, rtol=0, atol=1e-6)
    # layer-0 heads' patterns cannot change; layer-1 heads' can
    assert torch.all(res.pattern_change[0] == 0)
    assert res.pattern_change[1].sum() > 0 or mode == "resample"


def test_ablation_bad_input(model: Any, unchanged: Any) -> None:
    with pytest.raises(ComponentError, match="out of range"):
        ablate_heads(model, PROMPT, [(2, 0)])
    with pytest.raises(ComponentError, match="out of range"):
        ablate_heads(model, PROMPT, [(0, 9)])
    with pytest.raises(PromptError, match="same length"):
        ablate_heads(model, PROMPT, [(0, 0)], mode="resample", ablation_prompt="the cat sat")
    with pytest.raises(PromptError, match="ablation_prompt"):
        ablate_heads(model, PROMPT, [(0, 0)], mode="resample")
    with pytest.raises(ComponentError, match="unknown ablation mode"):
        ablate_heads(model, PROMPT, [(0, 0)], mode="gaussian")  # type: ignore[arg-type]


# ------------------------------------------------------------------ widget


def test_widget_state(model: Any, unchanged: Any) -> None:
    w = show_attention(model, PROMPT)
    assert isinstance(w, AttentionWidget)
    assert w.tokens == [str(s) for s in model.to_str_tokens(PROMPT)]
    thumbs = decode_array(w.thumbnails)
    assert thumbs.shape == (2, 4, 15, 15) and thumbs.dtype == np.uint8
    np.testing.assert_allclose(thumbs / 255, w.patterns.numpy(), atol=0.5 / 255 + 1e-6)
    scores = {k: decode_array(v) for k, v in w.scores.items()}
    assert set(scores) == {"previous_token", "duplicate_token", "induction", "first_token"}
    w.select_head(1, 3)
    assert w.selected == {"layer": 1, "head": 3}
    np.testing.assert_array_equal(decode_array(w.pattern), w.patterns[1, 3].numpy())


def test_widget_layer_patterns_request(model: Any) -> None:
    w = show_attention(model, PROMPT)
    reply = w._req_layer_patterns(layer=1)
    pats = decode_array(reply["patterns"]).astype(np.float32)
    np.testing.assert_allclose(pats, w.patterns[1].numpy(), atol=1e-3)


def test_widget_ablation_and_errors(model: Any, unchanged: Any) -> None:
    w = show_attention(model, PROMPT)
    res = w.ablate([(0, 1)], mode="mean")
    assert w.ablated == [[0, 1]] and w.ablation["mode"] == "mean"
    assert w.ablation["after"]["tokens"] == res.after.str_tokens
    with pytest.raises(ComponentError, match="out of range") as info:
        w.ablate([(5, 0)])
    assert w.error == str(info.value)
    with pytest.raises(PromptError, match="ablation_prompt"):
        w.ablate([(0, 1)], mode="resample")
    w.clear_ablation()
    assert w.error == "" and w.ablated == []


def test_widget_bad_input(model: Any, unchanged: Any) -> None:
    with pytest.raises(PromptError, match="empty"):
        show_attention(model, "")
    with pytest.raises(PromptError, match="n_ctx"):
        show_attention(model, " the" * 40)
    with pytest.raises(PromptError, match="max_positions"):
        show_attention(model, PROMPT, max_positions=5)
    with pytest.raises(ModelError):
        show_attention(object(), PROMPT)
    with pytest.raises(PromptError, match="same length"):
        show_attention(model, PROMPT, ablation_prompt="the cat")
    with pytest.raises(ComponentError):
        show_attention(model, PROMPT, layers=[3])


def test_attention_patterns_without_model() -> None:
    toks = ["<bos>", "A", "B", "A", "B"]
    att = torch.rand(3, 5, 5).tril()
    att = att / att.sum(-1, keepdim=True)
    w = attention_patterns(toks, att)
    assert w.live is False and w.n_heads == 3 and w.layers == [0]
    w.select_head(0, 2)
    np.testing.assert_allclose(decode_array(w.pattern), att[2].numpy(), atol=1e-7)
    induction = decode_array(w.scores["induction"])
    assert induction.shape == (1, 3)
    with pytest.raises(ComponentError, match="no model"):
        w.ablate([(0, 0)])
    with pytest.raises(PromptError, match="one str token per position"):
        attention_patterns(toks[:3], att)
    with pytest.raises(MechWidgetsError):
        attention_patterns(toks, torch.rand(5, 4))


def test_static_svg_escapes_tokens(model: Any) -> None:
    w = attention_patterns(["<script>alert(1)</script>", "&amp;", '"q"'], torch.eye(3)[None])
    data, _ = w._repr_mimebundle_()
    svg = data["image/svg+xml"]
    assert svg.startswith("<svg") and "<script>" not in svg
    assert "&lt;script&gt;" in svg


def test_widget_over_an_analysis_object(model: Any, unchanged: Any) -> None:
    """The widget is a view over an analysis object, built with a plain constructor call (from a
    model or from precomputed patterns); the analysis works headless, with the numbers of the
    analysis functions, and checks every argument itself."""
    from mechwidgets.analysis.attention import AttentionAnalysis, LiveAttention

    live = LiveAttention(model, PROMPT, layers=[1])
    torch.testing.assert_close(live.patterns, get_attention_patterns(model, PROMPT, layers=[1]).patterns)
    got = live.ablate([(0, 1)], "mean")
    want = ablate_heads(model, PROMPT, [(0, 1)], mode="mean")
    torch.testing.assert_close(got.loss_after, want.loss_after)
    torch.testing.assert_close(got.pattern_change, want.pattern_change)
    assert got.before.token_ids == want.before.token_ids and got.after.token_ids == want.after.token_ids
    with pytest.raises(ComponentError, match="not shown"):
        live.pattern(0, 0)
    with pytest.raises(PromptError, match="ablation_prompt"):
        live.ablate([(0, 1)], "resample")
    w = AttentionWidget(live)
    assert w.layers == [1] and w.n_layers == 2 and w.live
    att = torch.rand(2, 3, 4, 4).tril()
    pre = AttentionAnalysis.from_patterns(["a", "b", "a", "b"], att / att.sum(-1, keepdim=True))
    w2 = AttentionWidget(pre)
    assert not w2.live and w2.n_layers == 2 and w2.n_heads == 3
    np.testing.assert_allclose(decode_array(w2.scores["induction"]), pre.scores["induction"].numpy())
    assert decode_array(w2.thumbnails).dtype == np.uint8
