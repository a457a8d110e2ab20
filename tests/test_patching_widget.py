"""show_patching: the widget's grids equal the headless analysis, its requests (propose, corrupt,
view, cell) do what the page asks, errors reach the banner and Python, the model is unchanged."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from support import request

from mechwidgets import show_patching
from mechwidgets._model import hook_count
from mechwidgets._tensor import decode_array
from mechwidgets.analysis.attribution import attribution_patch
from mechwidgets.analysis.patching import activation_patch
from mechwidgets.analysis.patching.session import view_key as grid_key
from mechwidgets.errors import AnswerError, ComponentError, MetricError, PromptError
from mechwidgets.widgets.patching import PatchingWidget

CLEAN = "When Mary and John went to the store, John gave a drink to"
CORRUPTED = "When Mary and John went to the store, Mary gave a drink to"
ANSWERS = {"answer": " Mary", "wrong_answer": " John"}
MAX_UPDATE_BYTES = 4 * 2**20


def grid(widget: PatchingWidget, kind: str = "exact") -> np.ndarray:
    g = widget.grids[grid_key(widget.component, widget.direction, widget.metric)]
    return decode_array(g[kind])


def test_grids_equal_the_headless_analysis(model: Any, unchanged: Any) -> None:
    w = show_patching(model, CLEAN, CORRUPTED, **ANSWERS, components=["resid_pre", "head_out", "head_out_by_pos"])
    g = w.grids[grid_key("resid_pre", "denoising", "logit_diff")]
    assert g["exact_done"] == model.cfg.n_layers
    exact = activation_patch(model, CLEAN, CORRUPTED, component="resid_pre", **ANSWERS)
    attr = attribution_patch(model, CLEAN, CORRUPTED, component="resid_pre", **ANSWERS)
    np.testing.assert_allclose(grid(w), exact.values.numpy(), atol=1e-5)
    np.testing.assert_allclose(grid(w, "attribution"), attr.values.numpy(), atol=1e-5)
    assert g["baselines"] == {"clean": pytest.approx(exact.clean_value), "corrupted": pytest.approx(exact.corrupted_value)}
    assert g["cols"] == exact.labels["pos"] and g["rows"] == exact.labels["layer"]
    assert w.differing == [10] and w.answer == " Mary" and w.wrong_answer == " John"
    # per head by position: rows are layer × head, columns positions
    w.show("head_out_by_pos", "noising")
    ref = activation_patch(model, CLEAN, CORRUPTED, component="head_out_by_pos", direction="noising", **ANSWERS)
    n_layers, n_heads, n_pos = ref.values.shape
    np.testing.assert_allclose(grid(w), ref.values.reshape(n_layers * n_heads, n_pos).numpy(), atol=1e-5)
    assert len(w.grids[grid_key("head_out_by_pos", "noising", "logit_diff")]["rows"]) == n_layers * n_heads
    assert w.values().shape == (n_layers * n_heads, n_pos)


def test_layers_argument_computes_only_those_layers(model: Any, unchanged: Any) -> None:
    full = activation_patch(model, CLEAN, CORRUPTED, component="head_out", **ANSWERS)
    one = activation_patch(model, CLEAN, CORRUPTED, component="head_out", layers=[1], **ANSWERS)
    assert torch.isnan(one.values[0]).all()
    torch.testing.assert_close(one.values[1], full.values[1])
    with pytest.raises(ComponentError, match=r"layers 0\.\.1"):
        activation_patch(model, CLEAN, CORRUPTED, component="head_out", layers=[2])


def test_token_click_proposes_single_token_replacements_and_builds_the_corrupted_prompt(model: Any, unchanged: Any) -> None:
    w = show_patching(model, CLEAN)
    assert w.corrupted_tokens == [] and w.grids == {}
    sent = request(w, 1, "propose", pos=2)
    assert sent[-1]["result"] == {"pos": 2}
    cands = w.candidates["tokens"]
    assert w.candidates["pos"] == 2 and 0 < len(cands) <= 8 and " Mary" not in cands
    # nearest by embedding cosine similarity, each one token on its own
    w_e = torch.nn.functional.normalize(model.W_E.detach(), dim=-1)
    mary = model.to_single_token(" Mary")
    sims = [float(w_e[model.to_single_token(c)] @ w_e[mary]) for c in cands]
    assert sims == sorted(sims, reverse=True)
    sent = request(w, 2, "corrupt", pos=2, token=cands[0])
    assert "error" not in sent[-1], sent[-1]
    assert w.corrupted_tokens[2] == cands[0] and w.differing == [2]
    # answers default to the clean and corrupted runs' top tokens
    clean_top = model(CLEAN)[0, -1].argmax().item()
    assert w.answer == model.to_string([clean_top])
    # a view request: attribution at once, then exact layer by layer
    sent = request(w, 3, "view", component="resid_pre", direction="denoising", metric="logit_diff")
    assert sent[-1]["result"] == {"key": "resid_pre|denoising|logit_diff"}
    ref = activation_patch(model, CLEAN, w.session.corrupted, component="resid_pre", answer=w.answer, wrong_answer=w.wrong_answer)
    np.testing.assert_allclose(grid(w), ref.values.numpy(), atol=1e-5)
    # the differing position at layer 0 fully restores the clean run (denoising)
    assert grid(w)[0, 2] == pytest.approx(1.0)
    # a full corrupted prompt typed in
    sent = request(w, 4, "set_corrupted", text=CORRUPTED)
    assert "error" not in sent[-1] and w.differing == [10] and w.grids == {}


def test_toggles_reuse_cached_views(model: Any, unchanged: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    w = show_patching(model, CLEAN, CORRUPTED, **ANSWERS)
    w.show(direction="noising")
    import mechwidgets.analysis.patching.session as session

    calls: list[str] = []
    monkeypatch.setattr(session, "activation_patch", lambda *a, **k: calls.append("exact"))
    monkeypatch.setattr(session, "attribution_patch", lambda *a, **k: calls.append("attribution"))
    sent = request(w, 1, "view", component="resid_pre", direction="denoising", metric="logit_diff")
    assert "error" not in sent[-1] and calls == []
    assert w.direction == "denoising"


def test_cell_detail_for_heads_and_residual_cells(model: Any, unchanged: Any) -> None:
    w = show_patching(model, CLEAN, CORRUPTED, **ANSWERS, components=["head_out", "resid_pre"])
    sent = request(w, 1, "cell", row=1, col=3)
    assert "error" not in sent[-1]
    _, cache = model.run_with_cache(CLEAN)
    np.testing.assert_allclose(decode_array(w.detail["clean_pattern"]), cache["pattern", 1][0, 3].numpy(), atol=1e-6)
    assert w.detail["kind"] == "head" and "L1H3" in w.detail["title"]
    # resid_pre cell (layer 1, position 10): top-10 next tokens with that one patch, by hand
    w.show("resid_pre")
    w.select_cell(1, 10)
    _, clean_cache = model.run_with_cache(CLEAN)

    def patch(act: torch.Tensor, hook: Any) -> torch.Tensor:
        act[:, 10] = clean_cache["blocks.1.hook_resid_pre"][:, 10]
        return act

    logits = model.run_with_hooks(CORRUPTED, fwd_hooks=[("blocks.1.hook_resid_pre", patch)])[0, -1]
    probs, ids = logits.softmax(-1).topk(10)
    assert w.detail["kind"] == "logits"
    assert w.detail["top_tokens"] == [model.to_string([i]) for i in ids.tolist()]
    np.testing.assert_allclose(decode_array(w.detail["top_probs"]), probs.detach().numpy(), atol=1e-5)


def test_bad_input_is_raised_and_shown_in_the_banner(model: Any, unchanged: Any) -> None:
    w = show_patching(model, CLEAN)
    with pytest.raises(PromptError, match="no corrupted prompt yet"):
        w.show()
    assert "no corrupted prompt yet" in w.error
    sent = request(w, 1, "set_corrupted", text=CLEAN + " Mary")
    assert "differ at" in sent[-1]["error"] and "same number of tokens" in w.error
    assert w.corrupted_tokens == []
    with pytest.raises(PromptError, match="identical"):
        w.set_corrupted(CLEAN)
    w.set_corrupted(CORRUPTED)
    assert w.error == ""
    with pytest.raises(AnswerError, match="2 tokens"):
        w.set_answers(" Mary John", " John")
    assert "2 tokens" in w.error and w.answer != " Mary John"
    with pytest.raises(AnswerError, match="same token"):
        w.set_answers(" Mary", " Mary")
    sent = request(w, 2, "propose", pos=0)
    assert "BOS" in sent[-1]["error"]
    sent = request(w, 3, "corrupt", pos=3, token=" Mary John")
    assert "2 tokens" in sent[-1]["error"]
    sent = request(w, 4, "view", component="resid_pre", direction="sideways", metric="logit_diff")
    assert "direction" in sent[-1]["error"]
    sent = request(w, 5, "cell", row=99, col=0)
    assert "outside" in sent[-1]["error"]
    with pytest.raises(MetricError, match="offers the metrics"):
        w.show(metric="accuracy")
    with pytest.raises(PromptError, match="n_ctx"):
        show_patching(model, " the" * 40)
    with pytest.raises(ComponentError, match="unknown component"):
        show_patching(model, CLEAN, components=["resid_post_typo"])
    assert hook_count(model) == 0


def test_static_picture_and_update_sizes(model: Any, unchanged: Any) -> None:
    w = show_patching(model, CLEAN, CORRUPTED, **ANSWERS, components=["resid_pre", "head_out_by_pos"])
    w.show("head_out_by_pos")
    svg = w._static_svg()
    assert svg is not None and svg.startswith("<svg") and "exact patching, head_out_by_pos" in svg
    assert "&#x27; Mary&#x27;" in svg or "&#39; Mary&#39;" in svg or "' Mary'" in svg
    from mechwidgets._tensor import split_buffers

    for name in ("grids", "detail", "candidates"):
        state, buffers = split_buffers(getattr(w, name))
        assert sum(len(b) for b in buffers) + len(repr(state)) <= MAX_UPDATE_BYTES


def test_session_headless_views_refresh_and_stale_jobs(make_model: Any) -> None:
    """PatchingSession without a widget: its views equal the headless functions; a view job
    stores nothing once its inputs change and stops when the model changes; refresh drops the
    views of a changed model."""
    from mechwidgets.analysis.patching import PatchingSession
    from mechwidgets.errors import ModelChangedError

    model = make_model()  # a model of its own: this test edits its weights

    s = PatchingSession(model, CLEAN, **ANSWERS)
    with pytest.raises(PromptError, match="no corrupted prompt yet"):
        s.view("head_out")
    s.corrupt(10, " Mary")
    assert s.differing == [10] and torch.equal(s.corrupted, model.to_tokens(CORRUPTED))
    view = s.view("head_out", "noising")
    exact = activation_patch(model, CLEAN, CORRUPTED, component="head_out", direction="noising", **ANSWERS)
    attr = attribution_patch(model, CLEAN, CORRUPTED, component="head_out", direction="noising", **ANSWERS)
    assert view.complete and view.row_labels == exact.labels["layer"] and view.col_labels == exact.labels["head"]
    torch.testing.assert_close(view.exact, exact.values, atol=1e-5, rtol=0)
    torch.testing.assert_close(view.attribution_grid, attr.values, atol=1e-5, rtol=0)
    assert s.view("head_out", "noising") is view  # cached
    # a job whose answers change after its first step stores nothing more
    steps = s.view_steps("resid_pre", "denoising", "logprob")
    next(steps)
    assert s.views["resid_pre|denoising|logprob"].exact_done == 0
    s.set_answers(" John", " Mary")
    assert s.views == {} and list(steps) == [] and s.views == {}
    # the model changes while a job runs: it stops, the views are dropped, refresh re-resolves
    steps = s.view_steps("resid_pre", "denoising", "logit_diff")
    next(steps)
    with torch.no_grad():
        model.W_U[:, model.to_single_token(" John")] += 1.0
    with pytest.raises(ModelChangedError, match="exact patching grid"):
        next(steps)
    assert s.views == {} and s.refresh() is not None and s.refresh() is None
    fresh = activation_patch(model, CLEAN, CORRUPTED, component="resid_pre", answer=" John", wrong_answer=" Mary")
    torch.testing.assert_close(s.view("resid_pre").exact, fresh.values, atol=1e-5, rtol=0)
