"""Nothing stale (issue 15, flow 3): every cache carries the fingerprint of the model it was
computed on, a click on a changed model recomputes, and a long job on a model changed under it
stops with ModelChangedError, leaving nothing hooked.

Each widget and analysis object is built on the zoo's toy-lm, the model is then changed between
two clicks (a weight zeroed through ``.data``, other weights loaded with ``load_state_dict``, a
permanent user hook added and removed), and what the click shows is checked against a fresh
computation with TransformerLens's own forward pass and hooks on the model as it is then."""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from support import TL3, request

from mechwidgets import zoo
from mechwidgets._fingerprint import Stamp, model_fingerprint
from mechwidgets._model import hook_count
from mechwidgets._tensor import decode_array
from mechwidgets.analysis.attention import head_scores
from mechwidgets.errors import ModelChangedError

TOL = 1e-4
CLEAN = "When Mary and John went to the store , John gave a drink to"
CORRUPTED = "When Mary and John went to the store , Mary gave a drink to"


# ------------------------------------------------------------------------------ model changes
def zero_w_o(model: Any) -> None:
    """An in-place edit through ``.data`` (invisible to the parameter's version counter)."""
    model.blocks[1].attn.W_O.data.zero_()


def load_other_weights(model: Any) -> None:
    """A "fine-tuned checkpoint" loaded into the same object: every parameter moved."""
    gen = torch.Generator().manual_seed(7)
    params = dict(model.named_parameters())
    sd = {k: (v + 0.05 * v.std() * torch.randn(v.shape, generator=gen)) if k in params else v
          for k, v in model.state_dict().items()}
    model.load_state_dict(sd)


def half_pos_embed(x: torch.Tensor, hook: Any) -> torch.Tensor:
    return 0.5 * x


def add_user_hook(model: Any) -> None:
    """A permanent user hook, as an SAE splice or steering vector is attached. On the positional
    embedding: every path (the fast ones too) starts from the hooked embedding there."""
    model.add_hook("hook_pos_embed", half_pos_embed, is_permanent=True)


def remove_user_hooks(model: Any) -> None:
    model.reset_hooks(including_permanent=True)


CHANGES: dict[str, Callable[[Any], None]] = {
    "data_zero": zero_w_o,
    "load_state_dict": load_other_weights,
    "user_hook": add_user_hook,
}


@pytest.fixture
def toy() -> Iterator[Any]:
    """A toy-lm of the test's own (edited freely), with every hook removed afterwards."""
    model = zoo.load("toy-lm")
    yield model
    remove_user_hooks(model)


def logits_now(model: Any, text: str) -> torch.Tensor:
    """The last position's logits from TransformerLens's own forward (user hooks apply)."""
    with torch.no_grad():
        return model(model.to_tokens(text))[0, -1]


def close(a: Any, b: Any) -> bool:
    return bool(torch.allclose(torch.as_tensor(a).float(), torch.as_tensor(b).float(), atol=TOL, rtol=0))


# ------------------------------------------------------------------------------ the fingerprint
def test_fingerprint_is_stable_and_ignores_mode_and_runs(toy: Any) -> None:
    with torch.no_grad():  # a TransformerBridge wires hooks of its own on its first forward
        toy(toy.to_tokens(CLEAN))
    before = model_fingerprint(toy)
    assert model_fingerprint(toy) == before
    toy.train()
    toy.eval()
    with torch.no_grad():
        toy(toy.to_tokens(CLEAN))
        toy.run_with_cache(toy.to_tokens(CLEAN))
    with toy.hooks(fwd_hooks=[("hook_embed", lambda x, hook: x)]):
        assert model_fingerprint(toy) != before  # a hook on, while it is on
    assert model_fingerprint(toy) == before  # and off again


def test_nan_weights_equal_themselves(toy: Any) -> None:
    toy.blocks[0].attn.b_O.data[0] = float("nan")
    assert model_fingerprint(toy) == model_fingerprint(toy)


def _replace_ln(model: Any) -> None:
    model.blocks[0].ln1 = copy.deepcopy(model.blocks[0].ln1)  # same values, new module


def _new_data(model: Any) -> None:
    p = list(model.parameters())[5]
    p.data = p.data.clone()  # same values, new storage


def _buffer_in_place(model: Any) -> None:
    b = next(iter(model.buffers()))
    b.copy_(b.clone())  # same values, written in place


EDITS: dict[str, Callable[[Any], None]] = {
    "data.zero_": lambda m: m.blocks[1].attn.W_O.data.zero_(),
    "data.neg_": lambda m: m.blocks[1].attn.W_O.data.neg_(),
    "data one element": lambda m: m.unembed.W_U.data.__setitem__((3, 5), 10.0),
    "no_grad zero_": lambda m: torch.no_grad()(lambda: m.blocks[1].attn.W_O.zero_())(),
    "detach mul_": lambda m: m.blocks[0].mlp.W_in.detach().mul_(2.0),
    "data = new tensor": _new_data,
    "load_state_dict": load_other_weights,
    "load_state_dict same values": lambda m: m.load_state_dict(m.state_dict()),
    "to float64": lambda m: m.to(torch.float64),
    "replaced submodule": _replace_ln,
    "module of another kind": lambda m: setattr(m.blocks[0], "hook_resid_pre", torch.nn.Identity()),
    "buffer in place": _buffer_in_place,
    "permanent user hook": add_user_hook,
    "torch forward hook": lambda m: m.blocks[0].mlp.register_forward_hook(lambda *a: None),
    "torch pre hook": lambda m: m.blocks[2].register_forward_pre_hook(lambda *a: None),
    "global hook": None,  # type: ignore[dict-item]
}


@pytest.mark.parametrize("kind", list(EDITS))
def test_fingerprint_sees_each_edit(toy: Any, kind: str) -> None:
    before = model_fingerprint(toy)
    if kind == "global hook":
        handle = torch.nn.modules.module.register_module_forward_hook(lambda *a: None)
        try:
            assert model_fingerprint(toy) != before
        finally:
            handle.remove()
        assert model_fingerprint(toy) == before
        return
    EDITS[kind](toy)
    after = model_fingerprint(toy)
    assert after != before, f"{kind} was not seen"
    assert before.difference(after) != "nothing"


def test_fingerprints_keep_no_module_alive() -> None:
    import gc
    import weakref

    model = zoo.load("toy-lm")
    fingerprint = model_fingerprint(model)
    ref = weakref.ref(model)
    del model
    gc.collect()
    assert ref() is None and fingerprint == fingerprint


def test_difference_names_what_changed(toy: Any) -> None:
    stamp = Stamp(toy)
    assert stamp.stale() is None
    zero_w_o(toy)
    change = stamp.stale()  # a TransformerBridge's W_O is a view of its attn.o weight
    assert change is not None and change.startswith("the weights of blocks.1.")
    assert change.endswith(" were edited in place")
    stamp.renew()
    add_user_hook(toy)
    assert stamp.stale() == "hooks were added or removed"
    remove_user_hooks(toy)
    assert stamp.stale() is None


def test_fingerprint_covers_other_modules(toy: Any) -> None:
    sae = torch.nn.Linear(4, 8)  # an SAE, say
    before = model_fingerprint(toy, sae, "not a module")
    assert model_fingerprint(toy, sae, "not a module") == before
    sae.weight.data.mul_(2.0)
    assert model_fingerprint(toy, sae, "not a module") != before


# ------------------------------------------------------------------------------ circuits


def tl_logit_diff(model: Any, text: str, a: int, w: int) -> float:
    logits = logits_now(model, text)
    return float(logits[a] - logits[w])


def tl_head_patched_logit_diff(model: Any, layer: int, head: int, a: int, w: int) -> float:
    """The clean run with one head's output (hook_z) taken from the corrupted run: TransformerLens
    hooks only."""
    name = f"blocks.{layer}.attn.hook_z"
    with torch.no_grad():
        _, cache = model.run_with_cache(model.to_tokens(CORRUPTED), names_filter=name)

        def patch(z: torch.Tensor, hook: Any) -> torch.Tensor:
            z = z.clone()
            z[:, :, head] = cache[name][:, :, head]
            return z

        logits = model.run_with_hooks(model.to_tokens(CLEAN), fwd_hooks=[(name, patch)])[0, -1]
    return float(logits[a] - logits[w])


@pytest.mark.parametrize("change", list(CHANGES))
def test_edge_patcher_recomputes_after_a_change(toy: Any, change: str) -> None:
    from mechwidgets.analysis.circuits import EdgePatcher

    patcher = EdgePatcher(toy, CLEAN, CORRUPTED, answer=" John", wrong_answer=" Mary")
    a, w = int(patcher.answer_ids[0]), int(patcher.wrong_ids[0])
    n = patcher.graph.n_edges
    half = torch.arange(n) % 2 == 0
    patcher.faithfulness(half)  # a first click on the old model
    CHANGES[change](toy)
    hooks = hook_count(toy)  # the user's own, if any
    full = patcher.faithfulness(torch.ones(n, dtype=torch.bool))
    empty = patcher.faithfulness(torch.zeros(n, dtype=torch.bool))
    assert abs(full.metric - tl_logit_diff(toy, CLEAN, a, w)) < TOL
    assert abs(empty.metric - tl_logit_diff(toy, CORRUPTED, a, w)) < TOL
    effect = patcher.node_effect("a2.h1")
    assert effect.output is not None
    assert abs(effect.output - tl_head_patched_logit_diff(toy, 2, 1, a, w)) < TOL
    fresh = EdgePatcher(toy, CLEAN, CORRUPTED, answer=" John", wrong_answer=" Mary")
    assert close(patcher.result("eap").scores, fresh.result("eap").scores)
    assert abs(patcher.faithfulness(half).metric - fresh.faithfulness(half).metric) < TOL
    assert hook_count(toy) == hooks
    if change == "user_hook":  # removed again: back to the hook-free numbers
        remove_user_hooks(toy)
        assert abs(patcher.faithfulness(torch.ones(n, dtype=torch.bool)).metric
                   - tl_logit_diff(toy, CLEAN, a, w)) < TOL


def test_circuit_widget_click_after_an_edit_shows_the_new_model(toy: Any) -> None:
    from mechwidgets.analysis.circuits import EdgePatcher
    from mechwidgets.widgets.circuit import show_circuit

    w = show_circuit(toy, CLEAN, CORRUPTED, answer=" John", wrong_answer=" Mary")
    zero_w_o(toy)
    a, wr = int(w.patcher.answer_ids[0]), int(w.patcher.wrong_ids[0])
    faith = w.set_threshold(0.0)  # every edge kept: the clean run
    assert abs(w.baseline["clean"] - tl_logit_diff(toy, CLEAN, a, wr)) < TOL
    assert abs(w.baseline["corrupted"] - tl_logit_diff(toy, CORRUPTED, a, wr)) < TOL
    assert abs(faith.metric - tl_logit_diff(toy, CLEAN, a, wr)) < TOL
    fresh = EdgePatcher(toy, CLEAN, CORRUPTED, answer=" John", wrong_answer=" Mary")
    assert close(w.result.scores, fresh.result("eap").scores)
    assert hook_count(toy) == 0


def test_acdc_stops_when_the_model_changes_under_it(toy: Any) -> None:
    from mechwidgets.widgets.circuit import show_circuit

    w = show_circuit(toy, CLEAN, CORRUPTED, answer=" John", wrong_answer=" Mary")
    sent: list[dict[str, Any]] = []
    shown = w.result.scores.clone()

    async def scenario() -> None:
        sent.extend(request(w, 1, "acdc", threshold=0.01))  # the job runs on this loop
        w.send = lambda content, buffers=None: sent.append(content)
        for _ in range(3):
            await asyncio.sleep(0)
        zero_w_o(toy)  # a cell run between two steps of the job
        for _ in range(200):  # it stops within a few steps (its checks take <= 5% of its time)
            if any(c.get("type") == "reply" for c in sent):
                break
            await asyncio.sleep(0)

    asyncio.run(scenario())
    reply = next(c for c in sent if c.get("type") == "reply" and c.get("id") == 1)
    assert "model changed while ACDC was running" in reply["error"]
    # the parameter by its name in the model (a TransformerBridge's path differs)
    assert ("blocks.1.attn.W_O" if TL3 else "blocks.1.") in reply["error"] and "next click" in reply["error"]
    assert w.error == reply["error"] and w.progress == {}
    assert torch.equal(w.result.scores, shown) and w.method == "eap"  # the stopped run wrote nothing
    assert hook_count(toy) == 0
    # the next click recomputes on the edited model
    a, wr = int(w.patcher.answer_ids[0]), int(w.patcher.wrong_ids[0])
    w.set_threshold(0.0)
    assert w.error == "" and abs(w.baseline["clean"] - tl_logit_diff(toy, CLEAN, a, wr)) < TOL
    # from Python, the generator raises
    steps = w.patcher.acdc_steps(0.01)
    next(steps)
    add_user_hook(toy)
    hooks = hook_count(toy)
    with pytest.raises(ModelChangedError, match="hooks were added or removed"):
        for _ in steps:  # within a few edges, or in full before it returns
            pass
    assert hook_count(toy) == hooks > 0  # the user's own hook only


def test_acdc_checks_in_full_before_it_returns(make_model: Callable[..., Any]) -> None:
    """Even where every check between steps is skipped (a slow check on a fast job), a model
    changed under ACDC never gets a result back: the last check is in full."""
    from mechwidgets.analysis.circuits import EdgePatcher

    small = make_model(n_layers=1, n_heads=2, d_head=16)  # 13 edges
    patcher = EdgePatcher(small, CLEAN, CORRUPTED, answer=" Mary", wrong_answer=" John")
    steps = patcher.acdc_steps(1e9)  # removes edge after edge
    next(steps)
    patcher._stamp._cost = 1e9  # as if a check took so long that none fits the budget
    small.blocks[0].attn.W_O.data.zero_()
    with pytest.raises(ModelChangedError, match="ACDC"):
        for _ in steps:
            pass
    assert hook_count(small) == 0


# ------------------------------------------------------------------------------ scrubbing
def _tl_loss(model: Any, data: torch.Tensor) -> float:
    with torch.no_grad():
        logits = model(data)
    return float(F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), data[:, 1:].reshape(-1)))


def _scrub_data(model: Any) -> torch.Tensor:
    gen = torch.Generator().manual_seed(3)
    body = torch.randint(5, model.cfg.d_vocab, (6, 9), generator=gen)
    return torch.cat([torch.full((6, 1), model.tokenizer.bos_token_id), body], 1)


def _identity_hypothesis() -> Any:
    """Every node identity: the scrubbed run is the clean run, rebuilt through the Scrubber's own
    recomputation of head L1H0 (its copies of W_Q, W_K, W_V, W_O)."""
    from mechwidgets.analysis.scrubbing import HypothesisNode

    def resid() -> Any:
        return HypothesisNode("resid", "identity")

    head = HypothesisNode("L1H0", "identity", [HypothesisNode(p, "identity", [resid()]) for p in ("q", "k", "v")])
    return HypothesisNode("output", "identity", [head, resid()])


@pytest.mark.parametrize("change", ["data_zero", "load_state_dict"])
def test_scrubber_recomputes_after_a_change(toy: Any, change: str) -> None:
    from mechwidgets.analysis.scrubbing import Scrubber

    data = _scrub_data(toy)
    scrubber = Scrubber(toy, data, n_seeds=1, min_agreeing=1)
    hyp = _identity_hypothesis()
    first = scrubber.evaluate(hyp)
    assert abs(first.scrubbed - _tl_loss(toy, data)) < TOL
    CHANGES[change](toy)
    hooks = hook_count(toy)  # the user's own, if any
    again = scrubber.evaluate(hyp)
    assert abs(again.clean - _tl_loss(toy, data)) < TOL
    assert abs(again.scrubbed - _tl_loss(toy, data)) < TOL
    assert hook_count(toy) == hooks


def test_scrubbing_evaluate_stops_when_the_model_changes(toy: Any) -> None:
    from mechwidgets.analysis.scrubbing import Scrubber

    data = _scrub_data(toy)
    scrubber = Scrubber(toy, data, n_seeds=3, min_agreeing=1)
    for skip_checks in (False, True):
        steps = scrubber.evaluate_steps(_identity_hypothesis())
        next(steps)
        if skip_checks:  # as if no check between steps fit the budget: the last one is in full
            scrubber._stamp._cost = 1e9
        zero_w_o(toy) if not skip_checks else load_other_weights(toy)
        with pytest.raises(ModelChangedError, match="scrubbing"):
            for _ in steps:
                pass
    assert hook_count(toy) == 0
    assert abs(scrubber.evaluate(_identity_hypothesis()).scrubbed - _tl_loss(toy, data)) < TOL


# ------------------------------------------------------------------------------ features
def _hand_feature_acts(model: Any, sae: Any, hook: str, feature: int) -> torch.Tensor:
    with torch.no_grad():
        _, cache = model.run_with_cache(model.to_tokens(CLEAN), names_filter=hook)
        return sae.encode(cache[hook][0])[:, feature]


@pytest.mark.parametrize("change", list(CHANGES))
def test_features_widget_recomputes_after_a_change(toy: Any, change: str) -> None:
    from mechwidgets.widgets.features import show_features

    saes = zoo.load_saes("toy-lm")
    hook = list(saes)[-1]
    w = show_features(toy, saes, CLEAN, link_prompts=[CLEAN, CORRUPTED])
    i = w.hook_names.index(hook)
    feature = int(w.trace.top_indices[i, -1, 0])
    w.select_feature(i, feature)
    w.ablate(0, int(w.trace.top_indices[0, -1, 0]))  # caches the clean logits
    CHANGES[change](toy)
    hooks = hook_count(toy)  # the user's own, if any
    w.select_feature(i, feature)
    shown = torch.from_numpy(decode_array(w.feature["activations"]).copy())
    assert close(shown, _hand_feature_acts(toy, saes[hook], hook, feature))
    result = w.last_intervention  # the intervention in force was re-run on the new model
    assert result is not None
    with torch.no_grad():
        logits = toy(toy.to_tokens(CLEAN))[0]
    assert close(result.logits_before, logits[result.position])
    assert close(result.loss_before, F.cross_entropy(logits[:-1], toy.to_tokens(CLEAN)[0, 1:], reduction="none"))
    assert hook_count(toy) == hooks


# ------------------------------------------------------------------------------ attention
def _tl_patterns(model: Any) -> torch.Tensor:
    names = [f"blocks.{layer}.attn.hook_pattern" for layer in range(model.cfg.n_layers)]
    with torch.no_grad():
        _, cache = model.run_with_cache(model.to_tokens(CLEAN), names_filter=lambda n: n in names)
    return torch.stack([cache[n][0] for n in names])


@pytest.mark.parametrize("change", list(CHANGES))
def test_attention_widget_recomputes_after_a_change(toy: Any, change: str) -> None:
    from mechwidgets.widgets.attention import show_attention

    w = show_attention(toy, CLEAN)
    w.select_head(2, 1)
    CHANGES[change](toy)
    hooks = hook_count(toy)  # the user's own, if any
    reply = w._call("layer_patterns", layer=2)  # the reply a click on layer 2 gets
    want = _tl_patterns(toy)
    got = torch.from_numpy(decode_array(reply["patterns"]).astype("float32"))
    assert torch.allclose(got, want[2], atol=1e-3)  # sent as float16
    assert close(torch.from_numpy(decode_array(w.pattern).copy()), want[2, 1])  # the selected head
    tokens = toy.to_tokens(CLEAN)[0]
    for name, scores in head_scores(want, tokens).items():
        assert close(w.scores_tensors[name], scores), name
        assert close(torch.from_numpy(decode_array(w.scores[name]).copy()), scores), name
    assert hook_count(toy) == hooks
    if change == "user_hook":
        remove_user_hooks(toy)
        w.select_head(2, 1)
        assert close(torch.from_numpy(decode_array(w.pattern).copy()), _tl_patterns(toy)[2, 1])


# ------------------------------------------------------------------------------ patching
def _tl_resid_pre_grid(model: Any, answer: int, wrong: int) -> tuple[torch.Tensor, float, float]:
    """TransformerLens's own denoising resid_pre grid, normalised, and its two baselines."""
    from transformer_lens import patching

    clean, corrupted = model.to_tokens(CLEAN), model.to_tokens(CORRUPTED)
    with torch.no_grad():
        _, cache = model.run_with_cache(clean)
        c = tl_logit_diff(model, CLEAN, answer, wrong)
        k = tl_logit_diff(model, CORRUPTED, answer, wrong)

        def metric(logits: torch.Tensor) -> torch.Tensor:
            return (logits[0, -1, answer] - logits[0, -1, wrong] - k) / (c - k)

        grid = patching.get_act_patch_resid_pre(model, corrupted, cache, metric)
    return grid, c, k


@pytest.mark.skipif(not TL3, reason="transformer_lens.patching needs a HookedTransformer")
@pytest.mark.parametrize("change", list(CHANGES))
def test_patching_widget_recomputes_after_a_change(toy: Any, change: str) -> None:
    from mechwidgets.widgets.patching import show_patching

    w = show_patching(toy, CLEAN, CORRUPTED, components=["resid_pre"])
    CHANGES[change](toy)
    hooks = hook_count(toy)  # the user's own, if any
    w.select_cell(2, 3)  # a click on the stale grid recomputes the view first
    a, wr = w._answer_ids
    assert a is not None and wr is not None
    want, c, k = _tl_resid_pre_grid(toy, a, wr)
    # the default answers are the runs' top tokens, re-chosen on the new model
    assert a == int(logits_now(toy, CLEAN).argmax())
    grid = w.grids["resid_pre|denoising|logit_diff"]
    assert abs(grid["baselines"]["clean"] - c) < TOL and abs(grid["baselines"]["corrupted"] - k) < TOL
    assert close(w.values("exact"), want)
    assert hook_count(toy) == hooks


@pytest.mark.skipif(not TL3, reason="transformer_lens.patching needs a HookedTransformer")
def test_patching_view_job_stops_when_the_model_changes(toy: Any) -> None:
    from mechwidgets.widgets.patching import show_patching

    w = show_patching(toy, CLEAN, components=["resid_pre"])
    w.set_corrupted(CORRUPTED)
    w.set_answers(" John", " Mary")
    w.session.views.clear()  # as if the view had never been computed
    sent: list[dict[str, Any]] = []

    async def scenario() -> None:
        sent.extend(request(w, 1, "view", component="resid_pre", direction="denoising", metric="logit_diff"))
        w.send = lambda content, buffers=None: sent.append(content)
        for _ in range(2):
            await asyncio.sleep(0)
        load_other_weights(toy)
        for _ in range(6):
            await asyncio.sleep(0)

    asyncio.run(scenario())
    reply = next(c for c in sent if c.get("type") == "reply" and c.get("id") == 1)
    assert "model changed while the exact patching grid was running" in reply["error"]
    assert w.error == reply["error"] and w.grids == {} and hook_count(toy) == 0
    w.show()  # the next click recomputes
    a, wr = w._answer_ids
    want, _, _ = _tl_resid_pre_grid(toy, int(a), int(wr))  # type: ignore[arg-type]
    assert w.error == "" and close(w.values("exact"), want)


# ------------------------------------------------------------------------------ status line
def test_status_line_says_a_slow_recompute_is_running(toy: Any) -> None:
    from mechwidgets.widgets.attention import show_attention

    w = show_attention(toy, CLEAN)
    seen: list[dict[str, Any]] = []
    w.observe(lambda change: seen.append(change["new"]), "progress")
    zero_w_o(toy)
    w._seconds = 0.5  # a recompute expected to be quick: nothing said
    w.select_head(0, 0)
    assert seen == []
    load_other_weights(toy)
    w._seconds = 2.0  # as if the patterns had taken two seconds
    w.select_head(0, 0)
    assert seen[0]["message"].startswith("the model changed (") and seen[0]["message"].endswith("): recomputing")
    assert seen[0]["kind"] == "recompute" and seen[-1] == {} and w.progress == {} and w.error == ""


def test_circuit_widget_reruns_acdc_after_a_change(make_model: Callable[..., Any]) -> None:
    from mechwidgets.analysis.circuits import acdc
    from mechwidgets.widgets.circuit import show_circuit

    small = make_model(n_layers=1, n_heads=2, d_head=16)
    w = show_circuit(small, CLEAN, CORRUPTED, answer=" Mary", wrong_answer=" John", method="acdc", threshold=0.01)
    small.blocks[0].attn.W_O.data.mul_(-1.0)
    w.set_threshold(0.0)
    fresh = acdc(small, CLEAN, CORRUPTED, threshold=0.01, answer=" Mary", wrong_answer=" John")
    assert w.method == "acdc" and torch.equal(w.result.circuit(), fresh.circuit())
    assert close(w.result.scores, fresh.scores)
    a, wr = int(w.patcher.answer_ids[0]), int(w.patcher.wrong_ids[0])
    assert abs(w.faithfulness["metric"] - tl_logit_diff(small, CLEAN, a, wr)) < TOL
    assert hook_count(small) == 0


# ------------------------------------------------------------------------------ scrubbing widget
def test_scrubbing_widget_job_stops_and_restore_recomputes(toy: Any) -> None:
    from mechwidgets.widgets.scrubbing import show_scrubbing

    data = _scrub_data(toy)
    hyp = _identity_hypothesis()
    w = show_scrubbing(toy, hyp, data, n_seeds=2, min_agreeing=1)
    w.set_kept("output/L1H0", False)  # a second history step
    sent: list[dict[str, Any]] = []

    async def scenario() -> None:
        sent.extend(request(w, 1, "evaluate", nodes={"output/L1H0": {"kept": True}}))
        w.send = lambda content, buffers=None: sent.append(content)
        await asyncio.sleep(0)
        zero_w_o(toy)
        for _ in range(200):
            if any(c.get("type") == "reply" for c in sent):
                break
            await asyncio.sleep(0)

    asyncio.run(scenario())
    reply = next(c for c in sent if c.get("type") == "reply" and c.get("id") == 1)
    assert "model changed while scrubbing was running" in reply["error"] and w.error == reply["error"]
    assert len(w.results) == 2 and hook_count(toy) == 0
    # history step 1 (every node identity) was scrubbed on the old model: restoring it re-scrubs
    restored = w.restore(1)
    assert abs(restored.scrubbed - _tl_loss(toy, data)) < TOL and abs(restored.clean - _tl_loss(toy, data)) < TOL
    assert w.history[0]["scrubbed"] == restored.scrubbed and w.result["scrubbed"] == restored.scrubbed
    assert w.error == "" and hook_count(toy) == 0


def test_a_click_that_recomputes_does_not_let_a_running_acdc_go_on(toy: Any) -> None:
    """A click on a changed model recomputes the patcher's runs while ACDC is between two
    steps: ACDC (whose earlier edges were measured on the old model) is cancelled by it."""
    from mechwidgets.widgets.circuit import show_circuit

    w = show_circuit(toy, CLEAN, CORRUPTED, answer=" John", wrong_answer=" Mary")
    sent: list[dict[str, Any]] = []

    async def scenario() -> None:
        sent.extend(request(w, 1, "acdc", threshold=0.01))
        w.send = lambda content, buffers=None: sent.append(content)
        for _ in range(3):
            await asyncio.sleep(0)
        zero_w_o(toy)
        w._on_frontend_message(w, {"type": "request", "id": 2, "kind": "faithfulness", "args": {"threshold": 0.0}}, [])
        for _ in range(200):
            if any(c.get("type") == "reply" and c.get("id") == 1 for c in sent):
                break
            await asyncio.sleep(0)

    asyncio.run(scenario())
    replies = {c["id"]: c for c in sent if c.get("type") == "reply"}
    assert "error" not in replies[2]  # the click recomputed on the new model
    # ACDC stopped: the recomputing click cancelled it (no banner: the view was recomputed)
    assert replies[1].get("cancelled") and "the model changed" in replies[1]["error"]
    a, wr = int(w.patcher.answer_ids[0]), int(w.patcher.wrong_ids[0])
    assert abs(w.faithfulness["metric"] - tl_logit_diff(toy, CLEAN, a, wr)) < TOL and w.method == "eap"
    assert hook_count(toy) == 0


# ----------------------------------------------------------------------------- from the page
def test_a_page_click_recomputes_too(toy: Any) -> None:
    """The page's requests go through the same stale-cache check as Python's calls (a merge
    once lost it for the page path: every click then served the old model's caches)."""
    from mechwidgets import show_logit_lens
    from mechwidgets.analysis.lens import lens_view

    prompt = "When Mary and John went to the store, John gave a drink to"
    w = show_logit_lens(toy, prompt, answer=" Mary", wrong_answer=" John")
    zero_w_o(toy)
    sent = request(w, 1, "layer_topk", layer=0)
    assert "error" not in sent[-1], sent[-1]
    fresh = lens_view(toy, prompt, answer=" Mary", wrong_answer=" John", by="position")
    assert w.view.dla is not None and fresh.dla is not None
    torch.testing.assert_close(w.view.dla.values, fresh.dla.values, atol=TOL, rtol=0)


def test_page_written_traits_never_reach_a_recompute(toy: Any) -> None:
    """What a recompute re-applies (the selected feature, the interventions in force) is
    Python's own record, not the page-writable traits: garbage written there by a page is
    never passed to a handler."""
    from mechwidgets import show_features

    saes = list(zoo.load_saes("toy-lm").values())[:2]
    w = show_features(toy, saes, "When Mary and John went to the store", link_prompts=["When Mary and John"])
    w.set_state({"interventions": [5], "selected_feature": {"sae": "x", "feature": None}})
    zero_w_o(toy)
    sent = request(w, 1, "select_token", pos=2)
    assert "error" not in sent[-1], sent[-1]
    assert w.error == ""


def test_the_corpus_job_stops_when_the_model_changes(toy: Any) -> None:
    """A corpus panel being computed when the model changes is never stored (it would mix
    batches of the old model and the new one)."""
    from mechwidgets import show_features

    saes = list(zoo.load_saes("toy-lm").values())[:1]
    w = show_features(toy, saes, "When Mary and John went to the store",
                      corpus=[f"When Mary and John went to the store number {i}" for i in range(400)])
    sent: list[dict[str, Any]] = []

    async def scenario() -> None:
        sent.extend(request(w, 1, "corpus", sae=0))
        w.send = lambda content, buffers=None: sent.append(content)
        await asyncio.sleep(0)
        zero_w_o(toy)
        for _ in range(2000):
            if any(c.get("type") == "reply" and c.get("id") == 1 for c in sent):
                break
            await asyncio.sleep(0)

    asyncio.run(scenario())
    reply = next(c for c in sent if c.get("type") == "reply" and c.get("id") == 1)
    assert "model changed" in reply.get("error", ""), reply
    assert 0 not in w.corpus_stats
