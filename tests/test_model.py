"""ModelHandle: tokens, names, and the guarantee that the user's model is left as it was."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from support import TL3, assert_unchanged, snapshot

from mechwidgets import ModelHandle
from mechwidgets._model import hook_count, tl_major_version
from mechwidgets.errors import AnswerError, ComponentError, ModelError, PromptError

PROMPT = "When Mary and John went to the store, John gave a drink to"


def test_version_detected() -> None:
    assert tl_major_version() == (3 if TL3 else 4)


def test_rejects_non_models() -> None:
    with pytest.raises(ModelError, match="TransformerLens model"):
        ModelHandle(torch.nn.Linear(2, 2))
    with pytest.raises(ModelError, match="HookedTransformer"):
        ModelHandle("gpt2")


def test_tokens_and_errors(model: Any) -> None:
    h = ModelHandle(model)
    toks = h.tokens(PROMPT)
    assert toks.shape == (1, 15)
    assert h.str_tokens(toks)[:3] == ["<|endoftext|>", "When", " Mary"]
    assert torch.equal(h.tokens(toks[0]), toks)
    with pytest.raises(PromptError, match="empty"):
        h.tokens("   ")
    with pytest.raises(PromptError, match="n_ctx"):
        h.tokens(" the" * 40)
    with pytest.raises(PromptError, match="max_positions=4"):
        h.tokens(PROMPT, max_positions=4)
    with pytest.raises(PromptError, match="outside the vocabulary"):
        h.tokens(torch.tensor([0, 10**6]))


def test_str_tokens_of_many_prompts_match_one_at_a_time(model: Any) -> None:
    """The one-call batch decoder gives exactly TransformerLens's to_str_tokens, prompt by prompt
    (byte pieces of multi-byte characters, BOS and unknown words included)."""
    h = ModelHandle(model)
    prompts = [PROMPT, "naïve café — 東京 🙂 <|endoftext|>", "x"]
    toks = [h.tokens(p)[0] for p in prompts] + [torch.arange(0, model.cfg.d_vocab, 7)]
    many = h.str_tokens_many(toks)
    assert many == [h.str_tokens(t) for t in toks] == [list(model.to_str_tokens(t)) for t in toks]
    assert [len(m) for m in many] == [t.numel() for t in toks]


@pytest.mark.parametrize("which", ["tiny", "tiny-no-bos", "tiny-raw", "toy-lm", "toy-lm-no-bos", "toy-lm-left"])
def test_tokens_of_many_prompts_match_one_at_a_time(which: str, make_model: Any, tokenizer: Any) -> None:
    """One tokenizer call for many prompts (and answers) gives exactly TransformerLens's
    to_tokens of each: with a tokenizer that adds the BOS itself (toy-lm's, and the tiny model's
    as TransformerLens 3.x reloads it) and one that does not ("tiny-raw": the BOS text is put in
    front), with the BOS off, and with left padding; errors name the prompt, in order."""
    from mechwidgets import zoo

    if which == "tiny-raw" and not TL3:
        pytest.skip("HookedTransformer.to_tokens's own BOS branch (TransformerLens 3.x)")
    model = zoo.load("toy-lm") if which.startswith("toy-lm") else make_model(
        default_prepend_bos=which != "tiny-no-bos")
    if which == "tiny-raw":
        model.tokenizer = tokenizer  # adds no BOS of its own
        model.cfg.tokenizer_prepends_bos = False
    if which == "toy-lm-no-bos":
        model.cfg.default_prepend_bos = False
    if which == "toy-lm-left":
        model.tokenizer.padding_side = "left"  # TransformerLens drops the BOS it finds first
    h = ModelHandle(model)
    texts = [PROMPT, " Mary", "When", PROMPT + " Mary.", "When <|endoftext|> Mary"]
    prompts = [*texts, torch.tensor([0, 5, 6])]
    one_by_one = [h.tokens(p).tolist() for p in prompts]
    assert [t.tolist() for t in h.tokens_many(prompts, max_positions=40)] == one_by_one
    bos = bool(model.cfg.default_prepend_bos)
    assert (one_by_one[1][0][0] == model.tokenizer.bos_token_id) == bos
    answers = [" Mary", " John", 7, " Mary"]
    assert h.single_tokens(answers) == [h.single_token(a) for a in answers]
    if TL3:  # a HookedTransformer: the strings really go through one call (or none where it can't)
        fast, fast_answers = h._encode_many(texts, bos=bos), h._encode_many([" Mary", " John"], bos=False)
        if which == "toy-lm-left":
            assert fast_answers is None  # TransformerLens would drop the first BOS it finds
        else:
            assert fast_answers == [[h.single_token(" Mary")], [h.single_token(" John")]]
        assert fast == [t[0] for t in one_by_one[:len(texts)]]
    with pytest.raises(AnswerError, match=r"wrong answer ' Mary John' is 2 tokens"):
        h.single_tokens([" Mary", " Mary John"], what="wrong answer")
    with pytest.raises(PromptError, match="the corrupted prompt 1 is empty"):
        h.tokens_many([PROMPT, " "], what=["clean prompt 1", "corrupted prompt 1"])
    with pytest.raises(PromptError, match=r"the a is 1[345] tokens long, more than max_positions=4"):
        h.tokens_many([PROMPT, " "], max_positions=4, what=["a", "b"])  # the first error first


def test_single_token(model: Any) -> None:
    h = ModelHandle(model)
    assert h.token_str(h.single_token(" Mary")) == " Mary"
    with pytest.raises(AnswerError, match=r"2 tokens.*' Mary', ' John'"):
        h.single_token(" Mary John")
    with pytest.raises(AnswerError):
        h.single_token("")


def test_hook_names(model: Any) -> None:
    h = ModelHandle(model)
    assert h.hook_name("resid_pre", 1) == "blocks.1.hook_resid_pre"
    assert h.hook_name("pattern", 0) == "blocks.0.attn.hook_pattern"
    with pytest.raises(ComponentError, match=r"layers 0\.\.1"):
        h.hook_name("resid_pre", 2)
    with pytest.raises(ComponentError, match="unknown component"):
        h.hook_name("resid_sideways", 0)
    with pytest.raises(ComponentError, match=r"heads 0\.\.3"):
        h.check_head(0, 4)


def test_gqa_kv_head(make_model: Any) -> None:
    h = ModelHandle(make_model(n_heads=4, n_key_value_heads=2))
    assert h.n_kv_heads == 2
    assert [h.kv_head(i) for i in range(4)] == [0, 0, 1, 1]


def test_session_restores_everything_after_an_exception(model: Any) -> None:
    h = ModelHandle(model)
    model.train()
    model.blocks[0].eval()  # modes that differ between modules come back as they were
    before = snapshot(model)
    tokens = h.tokens(PROMPT)

    def boom(act: torch.Tensor, hook: Any) -> None:
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"), h.session(grad=True):
        assert not model.training and torch.is_grad_enabled()
        h.run(tokens, fwd_hooks=[("blocks.0.hook_resid_pre", boom)])
    assert_unchanged(model, before)
    model.eval()


def test_run_with_cache_sees_patched_activation(model: Any) -> None:
    h = ModelHandle(model)
    tokens = h.tokens(PROMPT)

    def zero(act: torch.Tensor, hook: Any) -> torch.Tensor:
        return torch.zeros_like(act)

    with h.session():
        _, cache = h.run_with_cache(tokens, ["blocks.0.hook_attn_out"], fwd_hooks=[("blocks.0.hook_attn_out", zero)])
    assert torch.all(cache["blocks.0.hook_attn_out"] == 0)
    assert hook_count(model) == 0


def test_users_own_hooks_survive(model: Any) -> None:
    """Our cleanup removes only our hooks: a hook the user added stays."""
    from mechwidgets import show_attention

    calls = []
    model.add_hook("blocks.0.hook_resid_pre", lambda act, hook: calls.append(1))
    try:
        n = hook_count(model)
        show_attention(model, PROMPT).ablate([(0, 0)])
        assert hook_count(model) == n
        assert calls, "the user's hook should still run"
    finally:
        model.reset_hooks()
