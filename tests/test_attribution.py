"""attribution_patch: the gradient product, checked against hooks written by hand; exact where
the metric is linear in the patched activation; same grids and errors as activation_patch."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
from support import assert_unchanged, snapshot

from mechwidgets.analysis import activation_patch, attribution_patch
from mechwidgets.analysis.patching import COMPONENTS
from mechwidgets.errors import ComponentError, PromptError

CLEAN = "When Mary and John, John"
CORRUPTED = "When John and Mary, John"
ANSWERS = {"answer": " Mary", "wrong_answer": " John"}


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Any:
    """Tiny models run fastest on one thread; on a busy machine a second OpenMP thread spins."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


#: hook kind, and how the per-layer product (batch axis dropped) reduces to a grid row.
BY_HAND: dict[str, tuple[str, Callable[[torch.Tensor], torch.Tensor]]] = {
    "resid_pre": ("hook_resid_pre", lambda p: p.sum(-1)),  # [pos, d_model] -> [pos]
    "attn_out": ("hook_attn_out", lambda p: p.sum(-1)),
    "mlp_out": ("hook_mlp_out", lambda p: p.sum(-1)),
    "head_out": ("attn.hook_z", lambda p: p.sum((0, 2))),  # [pos, head, d_head] -> [head]
    "head_q_by_pos": ("attn.hook_q", lambda p: p.sum(-1).T),  # -> [head, pos]
    "head_v": ("attn.hook_v", lambda p: p.sum((0, 2))),
    "head_pattern": ("attn.hook_pattern", lambda p: p.sum((1, 2))),  # [head, dest, src] -> [head]
    "head_pattern_by_pos": ("attn.hook_pattern", lambda p: p.sum(-1)),  # -> [head, dest]
}


def gradient_product(model: Any, component: str, run: str, other: str) -> torch.Tensor:
    """(other_act - run_act) · d logit_diff / d act on ``run``, with hooks written here."""
    hook, reduce = BY_HAND[component]
    names = [f"blocks.{layer}.{hook}" for layer in range(model.cfg.n_layers)]
    mary, john = model.to_single_token(" Mary"), model.to_single_token(" John")
    _, other_cache = model.run_with_cache(model.to_tokens(other))
    acts: dict[str, torch.Tensor] = {}

    def keeper(name: str) -> Callable[..., torch.Tensor]:
        def keep(act: torch.Tensor, hook: Any) -> torch.Tensor:
            acts[name] = act
            return act  # a TransformerBridge hook sees a reshaped view: return it to use it

        return keep

    with model.hooks(fwd_hooks=[(name, keeper(name)) for name in names]):
        logits = model(model.to_tokens(run))
    metric = logits[0, -1, mary] - logits[0, -1, john]
    grads = torch.autograd.grad(metric, [acts[name] for name in names])
    rows = [
        reduce(((other_cache[n] - acts[n].detach()) * g)[0])
        for n, g in zip(names, grads, strict=True)
    ]
    return torch.stack(rows).detach()


@pytest.mark.parametrize("direction", ["denoising", "noising"])
@pytest.mark.parametrize("component", list(BY_HAND))
def test_equals_gradient_product(
    component: str, direction: str, model: Any, unchanged: Any
) -> None:
    run, other = (CORRUPTED, CLEAN) if direction == "denoising" else (CLEAN, CORRUPTED)
    expected = gradient_product(model, component, run, other)
    raw = attribution_patch(
        model,
        CLEAN,
        CORRUPTED,
        component=component,
        direction=direction,
        normalize=False,
        **ANSWERS,
    )
    assert raw.method == "attribution"
    torch.testing.assert_close(raw.values - raw.baseline, expected, atol=1e-4, rtol=1e-4)
    norm = attribution_patch(
        model, CLEAN, CORRUPTED, component=component, direction=direction, **ANSWERS
    )
    torch.testing.assert_close(
        norm.values, expected / (raw.target - raw.baseline), atol=1e-4, rtol=1e-4
    )
    # Baselines are the same as activation patching's.
    exact = activation_patch(
        model,
        CLEAN,
        CORRUPTED,
        component="resid_pre",
        direction=direction,
        normalize=False,
        **ANSWERS,
    )
    assert raw.clean_value == pytest.approx(exact.clean_value, abs=1e-5)
    assert raw.corrupted_value == pytest.approx(exact.corrupted_value, abs=1e-5)


def test_same_grids_as_activation_patching(model: Any, unchanged: Any) -> None:
    for component in COMPONENTS:
        approx = attribution_patch(model, CLEAN, CORRUPTED, component=component, **ANSWERS)
        exact = activation_patch(model, CLEAN, CORRUPTED, component=component, **ANSWERS)
        assert approx.values.shape == exact.values.shape, component
        assert approx.axes == exact.axes and approx.labels == exact.labels


@pytest.mark.parametrize("component", ["attn_out", "head_out", "head_out_by_pos"])
def test_exact_where_metric_is_linear(component: str, make_model: Callable[..., Any]) -> None:
    """Without LayerNorm, the logit difference is linear in the last layer's attention output,
    so there the first-order estimate is the patching result itself."""
    linear = make_model(normalization_type=None, attn_only=True)
    before = snapshot(linear)
    approx = attribution_patch(linear, CLEAN, CORRUPTED, component=component, **ANSWERS)
    exact = activation_patch(linear, CLEAN, CORRUPTED, component=component, **ANSWERS)
    torch.testing.assert_close(approx.values[-1], exact.values[-1], atol=1e-4, rtol=1e-4)
    assert_unchanged(linear, before)


def test_frozen_parameters(make_model: Callable[..., Any]) -> None:
    frozen = make_model(seed=3)
    for p in frozen.parameters():
        p.requires_grad_(False)
    before = snapshot(frozen)
    result = attribution_patch(
        frozen, CLEAN, CORRUPTED, component="resid_pre", normalize=False, **ANSWERS
    )
    assert torch.isfinite(result.values).all() and (result.values != result.baseline).any()
    assert_unchanged(frozen, before)
    assert not any(p.requires_grad for p in frozen.parameters())


def test_errors(model: Any, unchanged: Any) -> None:
    with pytest.raises(ComponentError, match="unknown component"):
        attribution_patch(model, CLEAN, CORRUPTED, component="neurons")
    with pytest.raises(PromptError, match="same number"):
        attribution_patch(model, CLEAN, CLEAN + " gave", component="resid_pre")
