"""The execution core's one decision (mechwidgets._fast.unsupported, asked before every run): its
arithmetic stands in for TransformerLens only where that is exact, and any hook of the user's
sends the run through TransformerLens's own hooks, which then see it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
from support import TL3, assert_unchanged, snapshot

from mechwidgets import _fast
from mechwidgets._model import ModelHandle, hook_count
from mechwidgets.analysis.patching import activation_patch

pytestmark = pytest.mark.skipif(not TL3, reason="the fast path covers TransformerLens 3.x models")

CLEAN = "When Mary and John, John"
CORRUPTED = "When John and Mary, John"
ANSWERS = {"answer": " Mary", "wrong_answer": " John"}


def zero(act: torch.Tensor, hook: Any) -> torch.Tensor:
    return 0 * act


def test_flow_1_a_users_hook_is_seen_by_every_patched_run() -> None:
    """Issue 15, flow 1: toy-lm with a permanent hook zeroing blocks.2.attn.hook_z. The fast path
    used to skip it in the patched runs (0.56 in logit difference against the hooked engine);
    now the decision sees the hook and the grid equals the hooked engine's (which equals
    TransformerLens's own patching on hooked models: test_users_hooks_anywhere_are_honoured)."""
    from mechwidgets import zoo

    model = zoo.load("toy-lm")
    clean, corrupted = "When Mary and John went to the store, John gave a drink to", \
        "When Mary and John went to the store, Mary gave a drink to"
    model.add_hook("blocks.2.attn.hook_z", zero, is_permanent=True)
    try:
        before = hook_count(model)
        assert ModelHandle(model).fast_path_blocker() == _fast.HOOKED
        auto = activation_patch(model, clean, corrupted, component="resid_pre", normalize=False, **ANSWERS)
        hooks = activation_patch(model, clean, corrupted, component="resid_pre", normalize=False,
                                 engine="hooks", **ANSWERS)
        torch.testing.assert_close(auto.values, hooks.values, atol=1e-4, rtol=0)
        # the user's hook is still there, and only it
        assert hook_count(model) == before > 0
        # the figure of the issue: the arithmetic without the hook (what the fast path computed)
        # is far from the model's numbers, so the test above can fail
        model.reset_hooks(including_permanent=True)
        unhooked = activation_patch(model, clean, corrupted, component="resid_pre", normalize=False, **ANSWERS)
        assert float((unhooked.values - auto.values).abs().max()) > 0.1
    finally:
        model.reset_hooks(including_permanent=True)


@pytest.mark.parametrize("hook_name", ["blocks.1.hook_mlp_out", "ln_final.hook_normalized", "blocks.0.attn.hook_z",
                                       "blocks.1.hook_resid_pre"])
@pytest.mark.parametrize("component", ["resid_pre", "attn_out", "head_out", "head_q"])
def test_users_hooks_anywhere_are_honoured(make_model: Callable[..., Any], hook_name: str, component: str) -> None:
    """A hook on any hook point (before, inside or after the patched layers, on the final norm,
    which the last-position shortcut used to compute on its own) is seen by every run: equal to
    TransformerLens's own patching and to the reference engine on the same hooked model."""
    from test_patching import transformer_lens_grid

    model = make_model()

    gen = torch.Generator().manual_seed(2)
    mul = 1 + 0.5 * torch.rand(model.cfg.d_model, generator=gen)
    add = 0.3 * torch.randn(model.cfg.d_model, generator=gen)

    def scale(act: torch.Tensor, hook: Any) -> torch.Tensor:  # per dimension: a norm cannot undo it
        fits = act.shape[-1] == mul.shape[0]
        return act * (mul if fits else 0.7) + (add if fits else 0.1)

    model.add_hook(hook_name, scale, is_permanent=True)
    try:
        before = snapshot(model)
        auto = activation_patch(model, CLEAN, CORRUPTED, component=component, **ANSWERS)
        ref = activation_patch(model, CLEAN, CORRUPTED, component=component, engine="hooks", **ANSWERS)
        torch.testing.assert_close(auto.values, ref.values, atol=1e-4, rtol=0, equal_nan=True)
        a, b = auto.answer, auto.wrong_answer
        tl = transformer_lens_grid(model, component, CORRUPTED, CLEAN, lambda lg: lg[:, a] - lg[:, b])
        torch.testing.assert_close(auto.values, (tl - auto.corrupted_value) / (auto.clean_value - auto.corrupted_value),
                                   atol=1e-4, rtol=0)
        assert hook_count(model) == 2  # the user's (TransformerLens counts it twice), and only it
        assert_unchanged(model, before)
    finally:
        model.reset_hooks(including_permanent=True)


def test_the_decision_is_made_per_call(make_model: Callable[..., Any]) -> None:
    """A hook attached between two calls sends the second through the hooks, and its numbers
    change with it; removed again, the fast path is back and equals the first call."""
    model = make_model()
    handle = ModelHandle(model)
    assert handle.fast_path_blocker() is None and handle.supports_partial_blocks()
    first = activation_patch(model, CLEAN, CORRUPTED, component="resid_pre", normalize=False, **ANSWERS)
    model.add_hook("blocks.1.hook_resid_pre", zero, is_permanent=True)
    try:
        assert handle.fast_path_blocker() == _fast.HOOKED and not handle.supports_partial_blocks()
        hooked = activation_patch(model, CLEAN, CORRUPTED, component="resid_pre", normalize=False, **ANSWERS)
        ref = activation_patch(model, CLEAN, CORRUPTED, component="resid_pre", normalize=False,
                               engine="hooks", **ANSWERS)
        torch.testing.assert_close(hooked.values, ref.values, atol=1e-4, rtol=0)
        assert float((hooked.values - first.values).abs().max()) > 1e-3
    finally:
        model.reset_hooks(including_permanent=True)
    assert handle.fast_path_blocker() is None
    again = activation_patch(model, CLEAN, CORRUPTED, component="resid_pre", normalize=False, **ANSWERS)
    torch.testing.assert_close(again.values, first.values, atol=1e-6, rtol=0)


def test_torch_hooks_and_reasons(make_model: Callable[..., Any]) -> None:
    """Plain torch hooks on any module count as hooks; architectures outside the table are named."""
    model = make_model()
    handle = ModelHandle(model)
    remove = model.blocks[0].mlp.register_forward_hook(lambda m, i, o: o)
    try:
        assert handle.fast_path_blocker() == _fast.HOOKED
        assert _fast.hooked_modules(model) == ["blocks.0.mlp"]
    finally:
        remove.remove()
    assert handle.fast_path_blocker() is None
    assert "gated_mlp" in str(ModelHandle(make_model(gated_mlp=True)).fast_path_blocker())
    # rotary and grouped-query attention: the block runner follows them, the recording run does not
    rotary = ModelHandle(make_model(positional_embedding_type="rotary", rotary_dim=8))
    assert rotary.fast_path_blocker("blocks") is None
    assert "rotary" in str(rotary.fast_path_blocker("record"))


def test_last_logits_per_row_columns(make_model: Callable[..., Any]) -> None:
    """One set of columns per row (EAP's per-prompt answers) equals the full logits gathered."""
    model = make_model()
    resid = torch.randn(3, model.cfg.d_model)
    full = _fast.last_logits(model, resid)
    ids = torch.tensor([[1, 2], [5, 3], [7, 7]])
    torch.testing.assert_close(_fast.last_logits(model, resid, ids), full.gather(1, ids))
    torch.testing.assert_close(_fast.last_logits(model, resid, [4, 9]), full[:, [4, 9]])
    with torch.no_grad():
        expected = model.unembed(model.ln_final(resid[:, None]))[:, 0]
    torch.testing.assert_close(full, expected, atol=1e-5, rtol=0)


def test_scrubbing_refuses_hooks(make_model: Callable[..., Any]) -> None:
    """Causal scrubbing rebuilds nodes with the model's arithmetic: a user's hook would be
    ignored, so it is refused (at construction, and by an evaluation after a hook was attached)
    with a message that says how to go on."""
    from mechwidgets.analysis.scrubbing import HypothesisNode, Scrubber
    from mechwidgets.errors import HypothesisError

    model = make_model()
    toks = torch.randint(0, model.cfg.d_vocab, (8, 6), generator=torch.Generator().manual_seed(0))
    model.add_hook("blocks.0.attn.hook_z", zero, is_permanent=True)
    try:
        with pytest.raises(HypothesisError, match="reset_hooks"):
            Scrubber(model, toks, n_seeds=1, min_agreeing=1)
    finally:
        model.reset_hooks(including_permanent=True)
    scrubber = Scrubber(model, toks, n_seeds=1, min_agreeing=1)
    model.add_hook("blocks.1.hook_mlp_out", zero, is_permanent=True)
    try:
        with pytest.raises(HypothesisError, match=r"blocks\.1\.hook_mlp_out"):
            scrubber.evaluate(HypothesisNode("output"))
    finally:
        model.reset_hooks(including_permanent=True)
    assert hook_count(model) == 0


def test_a_hook_where_a_patched_run_restarts_is_applied_once(make_model: Callable[..., Any],
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """EdgePatcher restarts patched runs at the first layer an edge enters, from the cached
    residual, which has been through a user's hook at that layer's hook_resid_pre already: such
    a run starts from the embeddings instead (TransformerLens would apply the hook again).
    Reference: the same patched run as one whole forward pass."""
    from mechwidgets.analysis.circuits import EdgePatcher

    model = make_model()
    steer = torch.randn(model.cfg.d_model, generator=torch.Generator().manual_seed(1))  # not a constant:
    model.add_hook("blocks.1.hook_resid_pre", lambda act, hook: act + steer, is_permanent=True)  # LN removes those
    try:
        patcher = EdgePatcher(model, CLEAN, CORRUPTED, **ANSWERS)
        removed = torch.zeros_like(patcher._allowed)
        dst = int((patcher._dest_layer == 1).nonzero()[0])  # an edge into layer 1
        removed[:, dst] = True
        value = patcher.patched_metric(removed)
        monkeypatch.setattr(_fast, "restart_hooked", lambda m, layer: True)  # always a whole forward
        whole = patcher.patched_metric(removed)
        monkeypatch.setattr(_fast, "restart_hooked", lambda m, layer: False)  # the old restart
        twice = patcher.patched_metric(removed)
    finally:
        model.reset_hooks(including_permanent=True)
    assert abs(value - whole) < 1e-4
    assert abs(twice - whole) > 1e-3  # the hook applied twice is a different number
