"""activation_patch: equal to TransformerLens's patching on many model shapes, direction and
normalisation semantics, metrics by hand, errors that say what to fix, model left unchanged."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
from support import TL3, assert_unchanged, snapshot

from mechwidgets.analysis import metrics
from mechwidgets.analysis.patching import COMPONENTS, PatchingResult, activation_patch
from mechwidgets.errors import (
    AnswerError,
    ComponentError,
    MechWidgetsError,
    MetricError,
    PromptError,
)

# Two name tokens swapped (positions 2 and 4); positions 0-1 are identical in both prompts.
CLEAN = "When Mary and John, John"
CORRUPTED = "When John and Mary, John"
ANSWERS = {"answer": " Mary", "wrong_answer": " John"}

#: The model shapes every component is checked on (tiny: 2 layers, d_model 32, 4 heads).
SHAPES: dict[str, dict[str, Any]] = {
    "layernorm": {},
    "no_norm": {"normalization_type": None},
    "attn_only": {"attn_only": True},
    "rotary": {"positional_embedding_type": "rotary", "rotary_dim": 8},
    "parallel": {"parallel_attn_mlp": True},
    "gqa": {"n_key_value_heads": 2},
}


def tl_function(component: str) -> Callable[..., torch.Tensor]:
    from transformer_lens import patching

    name = {
        "resid_pre": "resid_pre",
        "resid_mid": "resid_mid",
        "attn_out": "attn_out",
        "mlp_out": "mlp_out",
        "head_out": "attn_head_out_all_pos",
    }.get(component)
    if name is None:
        kind = component.removeprefix("head_").removesuffix("_by_pos")
        name = f"attn_head_{kind}_{'by_pos' if component.endswith('_by_pos') else 'all_pos'}"
    return getattr(patching, f"get_act_patch_{name}")


def transformer_lens_grid(
    model: Any,
    component: str,
    run: str | torch.Tensor,
    other: str | torch.Tensor,
    metric: Callable[[torch.Tensor], torch.Tensor],
) -> torch.Tensor:
    """TransformerLens's grid, laid out as ours: TL runs ``run`` and patches in ``other``'s
    activations (denoising when run = corrupted), and orders by-position head grids
    [layer, pos, head] where we use [layer, head, pos]."""
    run_tokens = run if isinstance(run, torch.Tensor) else model.to_tokens(run)
    other_tokens = other if isinstance(other, torch.Tensor) else model.to_tokens(other)
    _, cache = model.run_with_cache(other_tokens)
    with torch.no_grad():
        grid = tl_function(component)(
            model, run_tokens, cache, lambda logits: metric(logits[:, -1]).sum()
        )
    if component.endswith("_by_pos") and component != "head_pattern_by_pos":
        grid = grid.permute(0, 2, 1)
    return grid.cpu()


def supported(shape: dict[str, Any], component: str) -> bool:
    if shape.get("attn_only") and component in ("mlp_out", "resid_mid"):
        return False
    return not (shape.get("parallel_attn_mlp") and component == "resid_mid")


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Any:
    """Tiny models run fastest on one thread; on a busy machine a second OpenMP thread spins."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


_models: dict[str, Any] = {}


@pytest.fixture
def shape_model(make_model: Callable[..., Any]) -> Callable[[str], Any]:
    def get(name: str) -> Any:
        if name not in _models:
            _models[name] = make_model(**SHAPES[name])
        return _models[name]

    return get


# ---------------------------------------------------------------------------- exactness
@pytest.mark.skipif(not TL3, reason="HookedTransformer shapes (TransformerLens 3.x)")
@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("component", list(COMPONENTS))
def test_equals_transformer_lens(
    shape: str, component: str, shape_model: Callable[[str], Any]
) -> None:
    if not supported(SHAPES[shape], component):
        pytest.skip(f"{shape} models have no {component}")
    model = shape_model(shape)
    before = snapshot(model)
    for direction, run, other in (("denoising", CORRUPTED, CLEAN), ("noising", CLEAN, CORRUPTED)):
        result = activation_patch(
            model,
            CLEAN,
            CORRUPTED,
            component=component,
            direction=direction,
            normalize=False,
            **ANSWERS,
        )
        a, w = result.answer, result.wrong_answer
        assert a is not None and w is not None
        expected = transformer_lens_grid(
            model, component, run, other, lambda x, a=a, w=w: x[:, a] - x[:, w]
        )
        assert result.values.shape == expected.shape
        torch.testing.assert_close(result.values, expected, atol=1e-4, rtol=0)
    assert_unchanged(model, before)


#: More layouts, on a few components: the first two use the batched-hooks engine (the fast one
#: does not implement shortformer or ALiBi positions), the others the fast one.
MORE_SHAPES: dict[str, dict[str, Any]] = {
    "shortformer": {"positional_embedding_type": "shortformer"},
    "alibi": {"positional_embedding_type": "alibi"},
    "rms": {"normalization_type": "RMS"},
    "lnpre_relu": {"normalization_type": "LNPre", "act_fn": "relu"},
    "rmspre_silu": {"normalization_type": "RMSPre", "act_fn": "silu"},
}


@pytest.mark.skipif(not TL3, reason="HookedTransformer shapes (TransformerLens 3.x)")
@pytest.mark.parametrize("shape", list(MORE_SHAPES))
def test_more_shapes_equal_transformer_lens(shape: str, make_model: Callable[..., Any]) -> None:
    model = make_model(**MORE_SHAPES[shape])
    before = snapshot(model)
    for component in ("resid_pre", "mlp_out", "head_out", "head_k_by_pos"):
        for direction, run, other in (("denoising", CORRUPTED, CLEAN), ("noising", CLEAN, CORRUPTED)):
            result = activation_patch(
                model, CLEAN, CORRUPTED, component=component, direction=direction,
                normalize=False, **ANSWERS,
            )
            a, w = result.answer, result.wrong_answer
            expected = transformer_lens_grid(
                model, component, run, other, lambda x, a=a, w=w: x[:, a] - x[:, w]
            )
            torch.testing.assert_close(result.values, expected, atol=1e-4, rtol=0)
    assert_unchanged(model, before)


@pytest.mark.skipif(not TL3, reason="HookedTransformer (TransformerLens 3.x)")
@pytest.mark.parametrize("component", list(COMPONENTS))
def test_hooks_engine_equals_transformer_lens(component: str, model: Any, unchanged: Any) -> None:
    """The batched-hooks engine (used for TransformerBridge and unsupported models)."""
    result = activation_patch(
        model, CLEAN, CORRUPTED, component=component, normalize=False, engine="hooks", **ANSWERS
    )
    a, w = result.answer, result.wrong_answer
    expected = transformer_lens_grid(
        model, component, CORRUPTED, CLEAN, lambda x: x[:, a] - x[:, w]
    )
    torch.testing.assert_close(result.values, expected, atol=1e-4, rtol=0)


@pytest.mark.skipif(not TL3, reason="HookedTransformer (TransformerLens 3.x)")
@pytest.mark.parametrize("metric", ["logprob", "prob", "kl", "callable"])
def test_other_metrics_equal_transformer_lens(metric: str, model: Any, unchanged: Any) -> None:
    clean_logits = model(model.to_tokens(CLEAN))[0, -1].detach()
    mary = model.to_single_token(" Mary")

    def entropy(logits: torch.Tensor) -> torch.Tensor:
        return -(logits.log_softmax(-1) * logits.softmax(-1)).sum(-1)

    by_hand = {
        "logprob": lambda x: x.log_softmax(-1)[:, mary],
        "prob": lambda x: x.softmax(-1)[:, mary],
        "kl": lambda x: (
            clean_logits.softmax(-1) * (clean_logits.log_softmax(-1) - x.log_softmax(-1))
        ).sum(-1),
        "callable": entropy,
    }[metric]
    for component in ("resid_pre", "head_out", "head_v_by_pos"):
        result = activation_patch(
            model,
            CLEAN,
            CORRUPTED,
            component=component,
            normalize=False,
            answer=" Mary",
            metric=entropy if metric == "callable" else metric,
        )
        expected = transformer_lens_grid(model, component, CORRUPTED, CLEAN, by_hand)
        torch.testing.assert_close(result.values, expected, atol=1e-4, rtol=0)


ZOO_PROMPTS = {"induction-2l": [7, 8, 9, 10, 7, 8, 9], "toy-lm": [4, 5, 6, 7, 8, 9, 10]}


@pytest.mark.parametrize("name", list(ZOO_PROMPTS))
def test_zoo_models_equal_transformer_lens(name: str) -> None:
    """Both directions; noising per position only on the tiny shapes above, to keep this quick."""
    from mechwidgets import zoo

    model = zoo.load(name)  # the zoo ships with the package: a failure to load fails the test
    bos = getattr(getattr(model, "tokenizer", None), "bos_token_id", None) or 0
    clean = torch.tensor([bos, *ZOO_PROMPTS[name]])
    corrupted = clean.clone()
    corrupted[3] = corrupted[3] + 20  # one token replaced in the middle
    layout = {
        "attn_only": getattr(model.cfg, "attn_only", False),
        "parallel_attn_mlp": getattr(model.cfg, "parallel_attn_mlp", False),
    }
    before = snapshot(model)
    for component in COMPONENTS:
        if not supported(layout, component):
            continue
        for direction, run, other in (("denoising", corrupted, clean), ("noising", clean, corrupted)):
            if direction == "noising" and COMPONENTS[component].by_pos and component != "resid_pre":
                continue
            result = activation_patch(
                model, clean, corrupted, component=component, direction=direction,
                normalize=False, answer=1, wrong_answer=2,
            )
            expected = transformer_lens_grid(
                model, component, run[None], other[None], lambda x: x[:, 1] - x[:, 2]
            )
            torch.testing.assert_close(result.values, expected, atol=1e-4, rtol=0)
    assert_unchanged(model, before)


@pytest.mark.skipif(TL3, reason="TransformerBridge (TransformerLens 4.x)")
@pytest.mark.parametrize("component", list(COMPONENTS))
def test_bridge_equals_transformer_lens(component: str, model: Any, unchanged: Any) -> None:
    result = activation_patch(
        model, CLEAN, CORRUPTED, component=component, normalize=False, **ANSWERS
    )
    a, w = result.answer, result.wrong_answer
    expected = transformer_lens_grid(
        model, component, CORRUPTED, CLEAN, lambda x: x[:, a] - x[:, w]
    )
    torch.testing.assert_close(result.values, expected, atol=1e-4, rtol=0)


# ---------------------------------------------------------------------------- semantics
ONE_SWAP_CLEAN = "When Mary and John went, John"
ONE_SWAP_CORRUPTED = "When Mary and Mary went, John"  # position 4 differs


@pytest.mark.parametrize("direction", ["denoising", "noising"])
def test_direction_semantics(direction: str, model: Any, unchanged: Any) -> None:
    result = activation_patch(
        model, ONE_SWAP_CLEAN, ONE_SWAP_CORRUPTED, component="resid_pre", direction=direction
    )
    assert result.differing_positions == [4]
    # Patching the only position that differs, before the first block, is the other run: 1.
    assert result.values[0, 4].item() == 1.0
    # Every other position at layer 0, and every earlier position, is identical: a no-op, 0.
    assert torch.all(result.values[0, [0, 1, 2, 3, 5, 6, 7]] == 0.0)
    assert torch.all(result.values[:, :4] == 0.0)
    if direction == "denoising":
        assert result.baseline == result.corrupted_value and result.target == result.clean_value
        assert "clean activations" in result.patched and "corrupted run" in result.patched
    else:
        assert result.baseline == result.clean_value and result.target == result.corrupted_value
        assert "corrupted activations" in result.patched and "into the clean run" in result.patched


def test_normalisation(model: Any, unchanged: Any) -> None:
    raw = activation_patch(model, CLEAN, CORRUPTED, component="head_out", normalize=False)
    norm = activation_patch(model, CLEAN, CORRUPTED, component="head_out")
    expected = (raw.values - raw.corrupted_value) / (raw.clean_value - raw.corrupted_value)
    torch.testing.assert_close(norm.values, expected)
    noising = activation_patch(
        model, CLEAN, CORRUPTED, component="head_out", direction="noising", normalize=False
    )
    noising_norm = activation_patch(
        model, CLEAN, CORRUPTED, component="head_out", direction="noising"
    )
    expected = (noising.values - noising.clean_value) / (
        noising.corrupted_value - noising.clean_value
    )
    torch.testing.assert_close(noising_norm.values, expected)


def test_result_labels(model: Any, unchanged: Any) -> None:
    result = activation_patch(model, CLEAN, CORRUPTED, component="head_out_by_pos", **ANSWERS)
    assert isinstance(result, PatchingResult)
    assert result.axes == ("layer", "head", "pos")
    assert result.values.shape == (2, 4, 7)
    assert result.labels["layer"] == ["L0", "L1"]
    assert result.labels["head"] == ["H0", "H1", "H2", "H3"]
    assert result.labels["pos"][2] == "2: ' Mary' → ' John'"
    assert result.labels["pos"][1] == "1: 'When'"
    assert result.clean_str_tokens[2] == " Mary" and result.corrupted_str_tokens[2] == " John"
    assert result.differing_positions == [2, 4]
    assert result.hook_names == ["blocks.0.attn.hook_z", "blocks.1.attn.hook_z"]
    assert (result.answer_str, result.wrong_answer_str) == (" Mary", " John")
    assert result.metric == "logit_diff" and result.method == "activation"
    assert len(result.top(3)) == 3 and result.top(1)[0][0].startswith("L")


def test_gqa_key_value_heads(shape_model: Callable[[str], Any]) -> None:
    result = activation_patch(shape_model("gqa"), CLEAN, CORRUPTED, component="head_k")
    assert result.values.shape == (2, 2)
    assert result.labels["head"] == ["KV0 (H0-H1)", "KV1 (H2-H3)"]


def test_default_answers(model: Any, unchanged: Any) -> None:
    clean_logits = model(model.to_tokens(CLEAN))[0, -1]
    corrupted_logits = model(model.to_tokens(CORRUPTED))[0, -1]
    result = activation_patch(model, CLEAN, CORRUPTED, component="resid_pre", normalize=False)
    assert result.answer == int(clean_logits.argmax())
    expected_wrong = int(corrupted_logits.argmax())
    if expected_wrong == result.answer:
        expected_wrong = int(clean_logits.argsort(descending=True)[1])
    assert result.wrong_answer == expected_wrong
    # Identical prompts: both top tokens coincide, so the wrong answer is the clean run's second.
    same = activation_patch(model, CLEAN, CLEAN, component="resid_pre", normalize=False)
    assert same.wrong_answer == int(clean_logits.argsort(descending=True)[1])
    assert any("next most likely" in note for note in same.notes)
    assert torch.all(same.values == same.clean_value)  # every patch is a no-op


def test_metric_values_by_hand(model: Any, unchanged: Any) -> None:
    clean_logits = model(model.to_tokens(CLEAN))[0, -1].detach()
    corrupted_logits = model(model.to_tokens(CORRUPTED))[0, -1].detach()
    mary, john = model.to_single_token(" Mary"), model.to_single_token(" John")
    expected = {
        "logit_diff": lambda x: x[mary] - x[john],
        "logprob": lambda x: torch.log(torch.exp(x[mary]) / torch.exp(x).sum()),
        "prob": lambda x: torch.exp(x[mary]) / torch.exp(x).sum(),
        "kl": lambda x: sum(
            p * (torch.log(p) - torch.log(q))
            for p, q in zip(clean_logits.softmax(-1), x.softmax(-1), strict=True)
        ),
    }
    for name, by_hand in expected.items():
        result = activation_patch(
            model, CLEAN, CORRUPTED, component="attn_out", metric=name, normalize=False, **ANSWERS
        )
        assert result.clean_value == pytest.approx(float(by_hand(clean_logits)), abs=1e-5)
        assert result.corrupted_value == pytest.approx(float(by_hand(corrupted_logits)), abs=1e-5)
    # The module's functions on [batch, d_vocab].
    both = torch.stack([clean_logits, corrupted_logits])
    torch.testing.assert_close(metrics.logit_diff(both, mary, john), both[:, mary] - both[:, john])
    torch.testing.assert_close(
        metrics.prob(both, mary), torch.exp(both[:, mary]) / torch.exp(both).sum(-1)
    )
    torch.testing.assert_close(metrics.logprob(both, mary), torch.log(metrics.prob(both, mary)))
    assert metrics.kl_div(clean_logits[None], clean_logits).abs().item() < 1e-6


def test_token_tensors_and_tokenless_model(model: Any, unchanged: Any) -> None:
    clean, corrupted = model.to_tokens(CLEAN)[0], model.to_tokens(CORRUPTED)[0]
    from_text = activation_patch(model, CLEAN, CORRUPTED, component="resid_pre", **ANSWERS)
    from_tokens = activation_patch(model, clean, corrupted[None], component="resid_pre", **ANSWERS)
    torch.testing.assert_close(from_text.values, from_tokens.values)
    if not TL3:
        return
    from transformer_lens import HookedTransformer

    bare = HookedTransformer(model.cfg)  # no tokenizer: token tensors only, labelled by id
    bare.load_state_dict(model.state_dict())
    bare.eval()
    result = activation_patch(
        bare, clean, corrupted, component="resid_pre", answer=5, wrong_answer=6
    )
    assert result.labels["pos"][0].startswith("0: '#")
    with pytest.raises(PromptError, match="no tokenizer"):
        activation_patch(bare, CLEAN, corrupted, component="resid_pre")


# ---------------------------------------------------------------------------- errors
def test_error_different_token_counts(model: Any, unchanged: Any) -> None:
    with pytest.raises(PromptError) as info:
        activation_patch(model, CLEAN, "When John and Mary, John gave", component="resid_pre")
    msg = str(info.value)
    assert "7 tokens" in msg and "8" in msg and "differ at [2, 4]" in msg
    assert "' Mary'" in msg and "' gave'" in msg  # both tokenisations shown


def test_error_multi_token_answer(model: Any, unchanged: Any) -> None:
    with pytest.raises(AnswerError, match=r"2 tokens.*' Mary', ' John'"):
        activation_patch(model, CLEAN, CORRUPTED, component="resid_pre", answer=" Mary John")


def test_error_same_answers(model: Any, unchanged: Any) -> None:
    with pytest.raises(AnswerError, match="same token ' Mary'"):
        activation_patch(
            model, CLEAN, CORRUPTED, component="resid_pre", answer=" Mary", wrong_answer=" Mary"
        )


@pytest.mark.parametrize(
    ("bad_metric", "match"),
    [
        (lambda x: x[:, 0] * float("nan"), "NaN"),
        (lambda x: x, r"shape \(2, \d+\)"),
        (lambda x: x.sum(), "single number"),
        (lambda x: 3.0, "not a tensor"),
        ("accuracy", "unknown metric"),
    ],
)
def test_error_bad_metric(bad_metric: Any, match: str, model: Any, unchanged: Any) -> None:
    with pytest.raises(MetricError, match=match):
        activation_patch(model, CLEAN, CORRUPTED, component="resid_pre", metric=bad_metric)


def test_error_equal_baselines(model: Any, unchanged: Any) -> None:
    with pytest.raises(MetricError, match="normalize=False"):
        activation_patch(model, CLEAN, CLEAN, component="resid_pre")


def test_error_too_long(model: Any, unchanged: Any) -> None:
    long = " the" * 40
    with pytest.raises(PromptError, match="n_ctx"):
        activation_patch(model, long, long, component="resid_pre")


def test_error_unknown_component_and_direction(
    model: Any, unchanged: Any, make_model: Callable[..., Any]
) -> None:
    with pytest.raises(ComponentError, match="head_out_by_pos"):
        activation_patch(model, CLEAN, CORRUPTED, component="heads")
    with pytest.raises(ComponentError, match="'denoising'"):
        activation_patch(model, CLEAN, CORRUPTED, component="resid_pre", direction="forwards")  # type: ignore[arg-type]
    attn_only = make_model(attn_only=True)
    before = snapshot(attn_only)
    with pytest.raises(ComponentError, match="attention-only"):
        activation_patch(attn_only, CLEAN, CORRUPTED, component="mlp_out")
    assert_unchanged(attn_only, before)


def test_errors_are_mechwidgets_errors() -> None:
    for cls in (PromptError, AnswerError, MetricError, ComponentError):
        assert issubclass(cls, MechWidgetsError)


def test_model_state_restored_after_error_inside_run(model: Any, unchanged: Any) -> None:
    """A metric that fails on the patched runs (not the baselines) still leaves no hooks."""
    calls = []

    def flaky(logits: torch.Tensor) -> torch.Tensor:
        calls.append(1)
        return logits[:, 0] if len(calls) == 1 else logits[:, 0] * float("nan")

    model.train()
    try:
        with pytest.raises(MetricError):
            activation_patch(
                model, CLEAN, CORRUPTED, component="head_q", metric=flaky, engine="hooks"
            )
        assert model.training
    finally:
        model.eval()
