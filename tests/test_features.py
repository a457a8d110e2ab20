"""SAE features: activations vs the SAEs' own encode, splicing with the error term, interventions
vs hand-written hooks, cross-layer statistics vs a direct computation, bad input, the widget.

Tiny random models (conftest) with small TopK / ReLU SAEs built here; sae-lens SAEs when sae-lens
is installed; the zoo's toy-lm and its SAEs when they are shipped.
"""

from __future__ import annotations

import math
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
from support import request

from mechwidgets._model import ModelHandle, hook_count
from mechwidgets._tensor import decode_array, encoded_nbytes
from mechwidgets.analysis.features import (
    DecoderLinks,
    FeatureIntervention,
    FeatureSession,
    bind_saes,
    decoder_cosine_top_k,
    feature_activations,
    feature_corpus,
    feature_links,
    feature_logit_effects,
    features_promoting,
    intervene_features,
    lineage,
    logit_effect_matrix,
    splice_hooks,
)
from mechwidgets.errors import ComponentError, SAEError
from mechwidgets.widgets._base import MAX_UPDATE_BYTES
from mechwidgets.widgets.features import FeaturesWidget, show_features
from mechwidgets.zoo import SimpleSAE, SimpleSAEConfig

PROMPT = "When Mary and John went to the store , John gave a drink to Mary"
SAMPLE = [
    PROMPT,
    "the cat sat on the mat and then ran to the store",
    "A B C D E F A B C D E F",
    "When John and Mary went to the mat , Mary gave a cat to John",
]
HOOKS = ["blocks.0.hook_resid_pre", "blocks.1.hook_resid_pre", "blocks.1.hook_resid_post"]


def make_sae(hook: str, d_in: int = 32, d_sae: int = 48, *, arch: str = "topk", k: int = 6,
             seed: int = 0, dtype: torch.dtype = torch.float32) -> SimpleSAE:
    g = torch.Generator().manual_seed(seed)
    cfg = SimpleSAEConfig(d_in=d_in, d_sae=d_sae, architecture=arch, k=k if arch == "topk" else None,
                          metadata=SimpleNamespace(hook_name=hook))
    sae = SimpleSAE(cfg)
    with torch.no_grad():
        sae.W_enc.copy_(torch.randn(d_in, d_sae, generator=g) * 0.4)
        sae.b_enc.copy_(torch.randn(d_sae, generator=g) * 0.05 - (0.2 if arch == "standard" else 0))
        sae.W_dec.copy_(torch.nn.functional.normalize(torch.randn(d_sae, d_in, generator=g), dim=-1))
        sae.b_dec.copy_(torch.randn(d_in, generator=g) * 0.1)
    return sae.to(dtype).eval()


@pytest.fixture(scope="module")
def saes() -> list[SimpleSAE]:
    return [make_sae(h, seed=i, arch="standard" if i == 1 else "topk") for i, h in enumerate(HOOKS)]


def cached(model: Any, names: list[str], prompt: str = PROMPT, hooks: Any = ()) -> tuple[torch.Tensor, dict]:
    handle = ModelHandle.wrap(model)
    toks = handle.tokens(prompt)
    with handle.session():
        return handle.run_with_cache(toks, names, fwd_hooks=hooks)


# ------------------------------------------------------------------------------------- activations
def test_activations_equal_the_saes_encode(model: Any, saes: list[SimpleSAE], unchanged: Any) -> None:
    trace = feature_activations(model, {s.hook_name: s for s in reversed(saes)}, PROMPT, top_k=4)
    assert trace.hook_names == HOOKS  # forward order, whatever order they came in
    assert trace.labels == ["L0 pre", "L1 pre", "L1 post"]
    _, cache = cached(model, HOOKS)
    for i, sae in enumerate(saes):
        with torch.no_grad():
            f = sae.encode(cache[sae.hook_name][0])
            x_hat = sae.decode(f)
        assert torch.equal(trace.dense(i), f)
        fired = f > 0
        assert torch.equal(trace.n_active[i], fired.sum(-1).int())
        torch.testing.assert_close(trace.total_activation[i], f.sum(-1))
        # top-k: the largest activations, in order, -1 padding where fewer fire
        vals, idx = f.topk(4, dim=-1)
        on = vals > 0
        assert torch.equal(trace.top_indices[i], torch.where(on, idx, -1).int())
        torch.testing.assert_close(trace.top_values[i], torch.where(on, vals, 0.0))
        # every feature's activation over the prompt
        feat = int(idx[5, 0])
        assert torch.equal(trace.feature_values(i, feat), f[:, feat])
        # reconstruction statistics, BOS excluded from the summaries
        x = cache[sae.hook_name][0]
        err = x - x_hat
        torch.testing.assert_close(trace.error_norm[i], err.norm(dim=-1))
        torch.testing.assert_close(trace.act_norm[i], x.norm(dim=-1))
        xs, es = x[1:], err[1:]
        ev = 1 - es.pow(2).sum() / (xs - xs.mean(0)).pow(2).sum()
        torch.testing.assert_close(trace.explained_variance[i], ev)
        torch.testing.assert_close(trace.relative_error[i], (es.pow(2).sum() / xs.pow(2).sum()).sqrt())
    assert saes[0].cfg.architecture == "topk" and bool((trace.n_active[0] == 6).all())



def _sae_lens_copy(sae: SimpleSAE) -> Any:
    from sae_lens.saes.sae import SAEMetadata
    from sae_lens.saes.standard_sae import StandardSAE, StandardSAEConfig
    from sae_lens.saes.topk_sae import TopKSAE, TopKSAEConfig

    meta = SAEMetadata(hook_name=sae.hook_name)
    if sae.cfg.architecture == "topk":
        lens: Any = TopKSAE(TopKSAEConfig(d_in=sae.d_in, d_sae=sae.d_sae, k=int(sae.cfg.k), metadata=meta))
    else:
        lens = StandardSAE(StandardSAEConfig(d_in=sae.d_in, d_sae=sae.d_sae, metadata=meta))
    lens.load_state_dict({k: v.detach().clone() for k, v in sae.state_dict().items()})
    return lens.eval()


def test_activations_equal_sae_lens_encode(model: Any, saes: list[SimpleSAE], unchanged: Any) -> None:
    pytest.importorskip("sae_lens")
    lens = [_sae_lens_copy(s) for s in saes]
    bound = bind_saes(model, lens)
    assert [b.hook_name for b in bound] == HOOKS and [b.d_sae for b in bound] == [48, 48, 48]
    trace = feature_activations(model, lens, PROMPT)
    _, cache = cached(model, HOOKS)
    for i, sae in enumerate(lens):
        with torch.no_grad():
            f = sae.encode(cache[HOOKS[i]][0])
        torch.testing.assert_close(trace.dense(i), f, rtol=0, atol=1e-6)
        assert torch.equal(trace.n_active[i], (f > 0).sum(-1).int())
    # splicing sae-lens SAEs with the error term leaves the logits unchanged, and an edit through
    # them equals the same edit through the protocol SAEs (same weights)
    res0 = intervene_features(model, lens, PROMPT, [])
    assert res0.max_abs_logit_change <= 1e-5
    edit = [FeatureIntervention(HOOKS[0], int(trace.top_indices[0, 3, 0]), "clamp", 3.0, [3, 5])]
    a = intervene_features(model, lens, PROMPT, edit)
    b = intervene_features(model, saes, PROMPT, edit)
    torch.testing.assert_close(a.logits_after, b.logits_after, rtol=0, atol=1e-5)
    assert a.max_abs_logit_change > 1e-3


# ------------------------------------------------------------------------------------- sae-lens architectures
LENS_HOOKS = ["blocks.0.hook_resid_pre", "blocks.0.attn.hook_z", "blocks.0.hook_mlp_out", "blocks.1.hook_resid_post"]


def _sae_lens_sae(arch: str, hook: str, seed: int, d_in: int = 32, d_sae: int = 40) -> Any:
    """An sae-lens SAE of one architecture built from its config (no download), random weights."""
    from sae_lens.saes.gated_sae import GatedSAE, GatedSAEConfig
    from sae_lens.saes.jumprelu_sae import JumpReLUSAE, JumpReLUSAEConfig
    from sae_lens.saes.sae import SAEMetadata
    from sae_lens.saes.standard_sae import StandardSAE, StandardSAEConfig
    from sae_lens.saes.topk_sae import TopKSAE, TopKSAEConfig

    common = dict(d_in=d_in, d_sae=d_sae, metadata=SAEMetadata(hook_name=hook),
                  reshape_activations="hook_z" if hook.endswith("hook_z") else "none")
    sae: Any = {
        "standard": lambda: StandardSAE(StandardSAEConfig(**common)),
        "gated": lambda: GatedSAE(GatedSAEConfig(**common)),
        "topk": lambda: TopKSAE(TopKSAEConfig(k=5, **common)),
        "jumprelu": lambda: JumpReLUSAE(JumpReLUSAEConfig(**common)),
    }[arch]()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sae.named_parameters():
            p.copy_(torch.randn(p.shape, generator=g) * (0.4 if name == "W_enc" else 0.1))
        sae.W_dec.copy_(torch.nn.functional.normalize(sae.W_dec, dim=-1))
        if arch == "jumprelu":
            sae.threshold.copy_(torch.rand(d_sae, generator=g) * 0.6)
    return sae.eval()


def _lens_hidden_pre(sae: Any, x: torch.Tensor) -> torch.Tensor:
    """JumpReLU's pre-activation written out: ``(x - b_dec) @ W_enc + b_enc``."""
    x = x.flatten(-2) if x.shape[-1] != sae.cfg.d_in else x
    return (x - sae.b_dec) @ sae.W_enc + sae.b_enc


@pytest.mark.parametrize("arch", ["standard", "gated", "topk", "jumprelu"])
def test_every_sae_lens_architecture_encodes_and_splices_exactly(model: Any, unchanged: Any, arch: str) -> None:
    pytest.importorskip("sae_lens")
    lens = [_sae_lens_sae(arch, h, seed=40 + i) for i, h in enumerate(LENS_HOOKS)]
    assert [b.hook_name for b in bind_saes(model, lens)] == LENS_HOOKS
    trace = feature_activations(model, lens, PROMPT)
    _, cache = cached(model, LENS_HOOKS)
    for i, sae in enumerate(lens):
        x = cache[LENS_HOOKS[i]][0]  # hook_z as [pos, head, d_head], as sae-lens takes it
        with torch.no_grad():
            f = sae.encode(x)
        torch.testing.assert_close(trace.dense(i), f, rtol=0, atol=1e-6)
        assert int((f > 0).sum()) > 0
        if arch == "jumprelu":  # the thresholds cut: some positive pre-activations stay off
            with torch.no_grad():
                pre = _lens_hidden_pre(sae, x)
            assert bool(((pre > 0) & (f == 0)).any()) and bool((f[f > 0] > sae.threshold.expand_as(f)[f > 0]).all())
    # a splice at every SAE with an edit that changes no code reproduces the logits
    zeros = [torch.nonzero(trace.dense(i) == 0)[0].tolist() for i in range(len(LENS_HOOKS))]
    noop = [FeatureIntervention(h, zeros[i][1], "ablate", positions=[zeros[i][0]])
            for i, h in enumerate(LENS_HOOKS)]
    res0 = intervene_features(model, lens, PROMPT, noop, before=trace)
    assert res0.max_abs_logit_change <= 1e-5
    # a clamp equals sae-lens's own forward with its error term and the code edited at its hook
    handle = ModelHandle.wrap(model)
    toks = handle.tokens(PROMPT)
    where = [2, toks.shape[1] - 1]  # the last position too: the logits are read there
    for i, hook in enumerate(LENS_HOOKS):
        feat = int(trace.top_indices[i, 4, 0])
        res = intervene_features(model, lens, PROMPT, [FeatureIntervention(hook, feat, "clamp", 3.0, where)], before=trace)
        sae = lens[i]

        def edit(acts: torch.Tensor, hook: Any, feat: int = feat) -> torch.Tensor:
            acts = acts.clone()
            acts[:, where, feat] = 3.0
            return acts

        sae.use_error_term = True
        try:
            with torch.no_grad(), sae.hooks(fwd_hooks=[("hook_sae_acts_post", edit)]):
                want = model.run_with_hooks(toks, fwd_hooks=[(hook, lambda x, hook, sae=sae: sae(x))])[0, -1]
        finally:
            sae.use_error_term = False
        torch.testing.assert_close(res.logits_after, want, rtol=0, atol=1e-5)
        assert res.max_abs_logit_change > 1e-4


def test_sae_lens_transcoder_reads_one_hook_and_edits_another(model: Any, unchanged: Any) -> None:
    pytest.importorskip("sae_lens")
    from sae_lens.saes.sae import SAEMetadata
    from sae_lens.saes.transcoder import Transcoder, TranscoderConfig

    hook_in, hook_out = "blocks.0.ln2.hook_normalized", "blocks.0.hook_mlp_out"
    tc = Transcoder(TranscoderConfig(d_in=32, d_sae=40, d_out=32, apply_b_dec_to_input=False,
                                     metadata=SAEMetadata(hook_name=hook_in, hook_name_out=hook_out)))
    g = torch.Generator().manual_seed(9)
    with torch.no_grad():
        for _, p in tc.named_parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    tc.eval()
    saes = [tc, make_sae(HOOKS[2], seed=3)]
    bound = bind_saes(model, saes)
    assert bound[0].hook_out == hook_out and bound[0].is_transcoder and bound[0].label == "L0 ln2.normalized→mlp"
    trace = feature_activations(model, saes, PROMPT)
    _, cache = cached(model, [hook_in, hook_out])
    with torch.no_grad():
        f = tc.encode(cache[hook_in][0])
        err = (cache[hook_out][0] - tc.decode(f)).norm(dim=-1)
    torch.testing.assert_close(trace.dense(0), f, rtol=0, atol=1e-6)
    torch.testing.assert_close(trace.error_norm[0], err, rtol=0, atol=1e-5)
    torch.testing.assert_close(trace.act_norm[0], cache[hook_out][0].norm(dim=-1), rtol=0, atol=1e-5)
    # an edit: the code read at ln2, the change of its decode added to mlp_out
    feat = int(trace.top_indices[0, 4, 0])
    handle = ModelHandle.wrap(model)
    toks = handle.tokens(PROMPT)
    where = [2, toks.shape[1] - 1]
    res = intervene_features(model, saes, PROMPT, [FeatureIntervention(hook_in, feat, "clamp", 4.0, where)], before=trace)
    seen: dict[str, torch.Tensor] = {}

    def read(x: torch.Tensor, hook: Any) -> None:
        seen["x"] = x.clone()

    def write(y: torch.Tensor, hook: Any) -> torch.Tensor:
        f0 = tc.encode(seen["x"])
        f1 = f0.clone()
        f1[:, where, feat] = 4.0
        return y + tc.decode(f1) - tc.decode(f0)

    with torch.no_grad():
        want = model.run_with_hooks(toks, fwd_hooks=[(hook_in, read), (hook_out, write)])[0, -1]
    torch.testing.assert_close(res.logits_after, want, rtol=0, atol=1e-5)
    assert res.max_abs_logit_change > 1e-4
    assert all(c.sae >= 0 for c in res.changes)
    # the label and the lazy links read the transcoder's decoder in the residual stream
    links = DecoderLinks(model, saes, n_links=3)
    dense = (torch.nn.functional.normalize(tc.W_dec.detach().double(), dim=-1)
             @ torch.nn.functional.normalize(saes[1].W_dec.detach().double(), dim=-1).T)[feat]
    assert [lk["feature"] for lk in links.links(0, feat, "successors")] == dense.topk(3).indices.tolist()
    w = show_features(model, saes, PROMPT, link_by="cosine")
    w.select_feature(0, feat)
    assert w.feature["hook_name"] == hook_in


def test_simple_sae_jumprelu_equals_sae_lens(tmp_path: Any) -> None:
    pytest.importorskip("sae_lens")
    from sae_lens import SAE

    lens = _sae_lens_sae("jumprelu", HOOKS[0], seed=5)
    mine = SimpleSAE(SimpleSAEConfig(d_in=32, d_sae=40, architecture="jumprelu",
                                     metadata=SimpleNamespace(hook_name=HOOKS[0])))
    mine.load_state_dict({k: v.detach().clone() for k, v in lens.state_dict().items()})
    x = torch.randn(7, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        f = mine.encode(x)
        torch.testing.assert_close(f, lens.encode(x), rtol=0, atol=1e-6)
        torch.testing.assert_close(mine.decode(f), lens.decode(f), rtol=0, atol=1e-6)
    assert 0 < int((f > 0).sum()) < f.numel()
    mine.save_model(tmp_path / "sae")
    back = SAE.load_from_disk(str(tmp_path / "sae"))
    assert type(back).__name__ == "JumpReLUSAE"
    again = SimpleSAE.load_from_disk(tmp_path / "sae")
    with torch.no_grad():
        torch.testing.assert_close(back.encode(x), f, rtol=0, atol=1e-6)
        torch.testing.assert_close(again.encode(x), f, rtol=0, atol=0)


# ------------------------------------------------------------------------------------- splicing
def test_splicing_with_the_error_term_leaves_logits_unchanged(model: Any, saes: list[SimpleSAE], unchanged: Any) -> None:
    handle = ModelHandle.wrap(model)
    bound = bind_saes(handle, saes)
    toks = handle.tokens(PROMPT)
    record: dict[str, torch.Tensor] = {}
    with handle.session():
        clean = handle.run(toks)
        spliced = handle.run(toks, fwd_hooks=splice_hooks(bound, splice_all=True, record=record))
        # without the error term the SAEs' reconstructions would change the logits a lot
        lossy = handle.run(toks, fwd_hooks=[(b.hook_name, lambda x, hook, b=b: b.decode(b.encode(x))) for b in bound])
    assert (spliced - clean).abs().max() <= 1e-5
    assert (lossy - clean).abs().max() > 1e-2
    assert set(record) == set(HOOKS)
    res = intervene_features(model, saes, PROMPT, [])
    assert res.max_abs_logit_change <= 1e-5 and res.changes == []
    torch.testing.assert_close(res.loss_after, res.loss_before, rtol=0, atol=1e-5)
    assert res.before.token_ids == res.after.token_ids


def hand_hook(sae: SimpleSAE, feature: int, value: float | None, positions: list[int] | None) -> Any:
    """The intervention written out: x + (f_edit - f) @ W_dec (the SAE's decoder is linear)."""

    def hook(x: torch.Tensor, hook: Any) -> torch.Tensor:
        f = sae.encode(x)
        f_edit = f.clone()
        where = slice(None) if positions is None else positions
        f_edit[0, where, feature] = 0.0 if value is None else value
        return x + (f_edit - f) @ sae.W_dec

    return hook


@pytest.mark.parametrize(
    ("sae_i", "mode", "value", "positions"),
    [(0, "ablate", None, None), (0, "ablate", None, [4, -1]), (1, "clamp", 2.5, None), (1, "clamp", 7.0, [3]),
     (0, "clamp", 0.0, [2, 3])],
)
def test_each_intervention_equals_a_hand_written_hook(
    model: Any, saes: list[SimpleSAE], unchanged: Any, sae_i: int, mode: str, value: float | None,
    positions: list[int] | None,
) -> None:
    trace = feature_activations(model, saes, PROMPT)
    n = len(trace.str_tokens)
    pos = 4 if positions is None else positions[0] % n
    feature = int(trace.top_indices[sae_i, pos, 0])  # a feature that fires there
    iv = FeatureIntervention(HOOKS[sae_i], feature, mode, value or 0.0, positions)  # type: ignore[arg-type]
    res = intervene_features(model, saes, PROMPT, [iv], before=trace)
    abs_pos = None if positions is None else [p % n for p in positions]
    hook = hand_hook(saes[sae_i], feature, value if mode == "clamp" else None, abs_pos)
    logits, cache = cached(model, HOOKS, hooks=[(HOOKS[sae_i], hook)])
    torch.testing.assert_close(res.logits_after, logits[0, -1], rtol=0, atol=1e-5)
    assert res.max_abs_logit_change > 1e-4
    # the edited run's features downstream are the SAEs' encode of the hand-hooked activations
    for j in range(sae_i + 1, len(HOOKS)):
        with torch.no_grad():
            f = saes[j].encode(cache[HOOKS[j]][0])
        torch.testing.assert_close(res.trace_after.dense(j), f, rtol=0, atol=1e-5)
    # and at the edited SAE, the edited code
    assert float(res.trace_after.feature_values(sae_i, feature)[pos]) == (value if mode == "clamp" else 0.0)
    # the reported changes are the largest |after - before| downstream, edited feature excluded
    best = []
    for j in range(sae_i, len(HOOKS)):
        d = (res.trace_after.dense(j) - trace.dense(j)).abs().max(0).values
        for f_i, v in enumerate(d.tolist()):
            if v > 0 and (j, f_i) != (sae_i, feature):
                best.append(v)
    top = sorted(best, reverse=True)[: len(res.changes)]
    np.testing.assert_allclose([c.max_change for c in res.changes], top, rtol=1e-6)
    assert res.interventions[0].positions == abs_pos


def test_interventions_combine_and_read_predictions_at_a_position(model: Any, saes: list[SimpleSAE], unchanged: Any) -> None:
    trace = feature_activations(model, saes, PROMPT)
    f0, f1 = int(trace.top_indices[0, 6, 0]), int(trace.top_indices[1, 6, 1])
    ivs = [{"hook_name": HOOKS[0], "feature": f0, "mode": "ablate"},
           {"hook_name": 1, "feature": f1, "mode": "clamp", "value": 4.0, "positions": [6]}]
    res = intervene_features(model, saes, PROMPT, ivs, position=6)
    hooks = [(HOOKS[0], hand_hook(saes[0], f0, None, None)), (HOOKS[1], hand_hook(saes[1], f1, 4.0, [6]))]
    logits, _ = cached(model, HOOKS, hooks=hooks)
    torch.testing.assert_close(res.logits_after, logits[0, 6], rtol=0, atol=1e-5)
    assert res.position == 6
    assert res.after.token_ids[0] == int(logits[0, 6].argmax())


# ------------------------------------------------------------------------------------- logit effects
def test_logit_effects_equal_the_decoder_through_ln_and_unembedding(model: Any, saes: list[SimpleSAE]) -> None:
    sae = saes[1]
    eff = feature_logit_effects(model, sae, [3, 7], k=5, ln_scale=0.5)
    d = sae.W_dec[[3, 7]].detach()
    d = d - d.mean(-1, keepdim=True)
    direct = (d * model.ln_final.w.detach()) @ model.W_U.detach() * 0.5
    vals, ids = direct.topk(5, dim=-1)
    assert torch.equal(eff.promoted_ids, ids)
    torch.testing.assert_close(eff.promoted_values, vals)
    lo, lo_ids = (-direct).topk(5, dim=-1)
    assert torch.equal(eff.suppressed_ids, lo_ids)
    torch.testing.assert_close(eff.suppressed_values, -lo)
    assert eff.promoted_tokens[0][0] == model.to_str_tokens(torch.tensor([int(ids[0, 0])]))[0]
    # the ranking does not depend on the constant LayerNorm scale
    assert torch.equal(feature_logit_effects(model, sae, 3, k=5).promoted_ids[0], ids[0])


# ------------------------------------------------------------------------------------- links
def test_cross_layer_statistics_equal_a_direct_computation(model: Any, saes: list[SimpleSAE], unchanged: Any) -> None:
    links = feature_links(model, saes, SAMPLE, n_links=4)
    handle = ModelHandle.wrap(model)
    acts: list[list[np.ndarray]] = [[] for _ in saes]
    for p in SAMPLE:
        _, cache = cached(model, HOOKS, prompt=p)
        for i, s in enumerate(saes):
            with torch.no_grad():
                acts[i].append(s.encode(cache[HOOKS[i]][0])[1:].numpy())  # BOS dropped
    A = [np.concatenate(a).astype(np.float64) for a in acts]
    assert links.n_tokens == A[0].shape[0] == sum(len(handle.tokens(p)[0]) - 1 for p in SAMPLE)
    for p in range(len(saes) - 1):
        a, b = A[p], A[p + 1]
        corr = np.zeros((a.shape[1], b.shape[1]))
        live_a, live_b = a.std(0) > 0, b.std(0) > 0
        full = np.corrcoef(a[:, live_a], b[:, live_b], rowvar=False)
        corr[np.ix_(live_a, live_b)] = full[: live_a.sum(), live_a.sum():]
        wa = saes[p].W_dec.detach().double().numpy()
        wb = saes[p + 1].W_dec.detach().double().numpy()
        cos = (wa / np.linalg.norm(wa, axis=1, keepdims=True)) @ (wb / np.linalg.norm(wb, axis=1, keepdims=True)).T
        succ, pred = links.successors[p], links.predecessors[p]
        for i in range(a.shape[1]):
            order = np.argsort(-corr[i], kind="stable")[:4]
            np.testing.assert_allclose(succ.correlation[i].numpy(), corr[i, order], atol=1e-5)
            np.testing.assert_allclose(succ.cosine[i].numpy(), cos[i, succ.indices[i].numpy()], atol=1e-5)
            np.testing.assert_allclose(corr[i, succ.indices[i].numpy()], corr[i, order], atol=1e-5)
        for j in range(b.shape[1]):
            order = np.argsort(-corr[:, j], kind="stable")[:4]
            np.testing.assert_allclose(pred.correlation[j].numpy(), corr[order, j], atol=1e-5)
            np.testing.assert_allclose(pred.cosine[j].numpy(), cos[pred.indices[j].numpy(), j], atol=1e-5)
        np.testing.assert_allclose(links.frequency[p].numpy(), (a > 0).mean(0), atol=1e-6)
    # ranked by cosine: the top links are the most similar decoder directions
    by_cos = feature_links(model, saes, SAMPLE, n_links=3, by="cosine")
    wa = torch.nn.functional.normalize(saes[0].W_dec.detach().double(), dim=-1)
    wb = torch.nn.functional.normalize(saes[1].W_dec.detach().double(), dim=-1)
    assert torch.equal(by_cos.successors[0].indices, (wa @ wb.T).topk(3, dim=1).indices)
    # the lineage graph follows the links
    graph = lineage(links, 1, 5, per_node=2)
    nodes = {(n["sae"], n["feature"]) for n in graph["nodes"]}
    assert (1, 5) in nodes
    for e in graph["edges"]:
        assert tuple(e["from"]) in nodes and tuple(e["to"]) in nodes and e["to"][0] == e["from"][0] + 1
    succ_ids = [lk["feature"] for lk in links.links(1, 5, "successors")[:2] if lk["correlation"] > 0]
    assert {(2, f) for f in succ_ids} <= nodes


# ------------------------------------------------------------------------------------- bad input
class NotAnSAE:
    hook_name = "blocks.0.hook_resid_pre"


def test_chunked_cosine_top_k_equals_the_dense_top_k() -> None:
    g = torch.Generator().manual_seed(3)
    rows = torch.randn(1000, 24, generator=g)
    rows[17] = 0.0  # a dead feature: cosine 0, as the dense normalize gives
    q = torch.randn(9, 24, generator=g)
    dense = torch.nn.functional.normalize(q.double(), dim=-1) @ torch.nn.functional.normalize(rows.double(), dim=-1).T
    for chunk, k in ((64, 7), (1000, 5), (333, 1), (50, 1000)):
        idx, cos = decoder_cosine_top_k(q, lambda lo, hi: rows[lo:hi], rows.shape[0], k, chunk=chunk)
        v, i = dense.topk(min(k, 1000), dim=1)
        assert torch.equal(idx, i), (chunk, k)
        assert float((cos.double() - v).abs().max()) <= 1e-5


def test_lazy_decoder_links_equal_a_dense_computation(model: Any, unchanged: Any) -> None:
    hooks = ["blocks.0.hook_resid_pre", "blocks.1.attn.hook_z", "blocks.1.hook_resid_post"]
    saes = [make_sae(h, d_sae=300, seed=20 + i) for i, h in enumerate(hooks)]
    links = DecoderLinks(model, saes, n_links=6, chunk=64)
    # the dense reference: every pair of features, in the residual stream (hook_z through W_O,
    # which TransformerLens's W_O holds per head as [head, d_head, d_model])
    w_o = model.blocks[1].attn.W_O.detach().double()
    dirs = [saes[0].W_dec.detach().double(),
            torch.einsum("fhd,hdm->fm", saes[1].W_dec.detach().double().reshape(300, 4, 8), w_o),
            saes[2].W_dec.detach().double()]
    unit = [torch.nn.functional.normalize(d, dim=-1) for d in dirs]
    feats = [0, 5, 64, 123, 299]
    for p in range(2):
        dense = unit[p] @ unit[p + 1].T  # [300, 300]
        v, i = dense[feats].topk(6, dim=1)
        got = links.links_many(p, feats, "successors")
        for r in range(len(feats)):
            assert [lk["feature"] for lk in got[r]] == i[r].tolist()
            assert all(lk["sae"] == p + 1 and lk["correlation"] is None for lk in got[r])
            np.testing.assert_allclose([lk["cosine"] for lk in got[r]], v[r].numpy(), atol=1e-5, rtol=0)
        v, i = dense[:, feats].T.topk(6, dim=1)
        got = links.links_many(p + 1, feats, "predecessors")
        for r in range(len(feats)):
            assert [lk["feature"] for lk in got[r]] == i[r].tolist()
            np.testing.assert_allclose([lk["cosine"] for lk in got[r]], v[r].numpy(), atol=1e-5, rtol=0)
        assert links.links(p, 5, "successors") == links.links_many(p, [5], "successors")[0]
    assert links.links(0, 3, "predecessors") == [] and links.links(2, 3, "successors") == []
    with pytest.raises(SAEError, match=r"features 0\.\.299"):
        links.links(0, 300, "successors")
    # the lineage follows the lazy links
    graph = lineage(links, 1, 7, per_node=2)
    succ = [lk["feature"] for lk in links.links(1, 7, "successors")[:2]]
    pred = [lk["feature"] for lk in links.links(1, 7, "predecessors")[:2]]
    edges = {(tuple(e["from"]), tuple(e["to"])) for e in graph["edges"]}
    assert {((1, 7), (2, g)) for g in succ if links.links(1, 7, "successors")[succ.index(g)]["cosine"] > 0} <= edges
    assert {((0, g), (1, 7)) for g in pred if links.links(1, 7, "predecessors")[pred.index(g)]["cosine"] > 0} <= edges


def test_widget_with_lazy_links(model: Any, saes: list[SimpleSAE], unchanged: Any) -> None:
    w = show_features(model, saes, PROMPT, link_by="cosine")
    assert isinstance(w.links, DecoderLinks) and w.links_info["by"] == "cosine"
    f = int(w.trace.top_indices[1, 4, 0])
    w.select_feature(1, f)
    assert w.feature["frequency"] is None
    edges = {(tuple(e["from"]), tuple(e["to"])): e["cosine"] for e in w.feature["lineage"]["edges"]}
    dense = (torch.nn.functional.normalize(saes[1].W_dec.detach().double(), dim=-1)
             @ torch.nn.functional.normalize(saes[2].W_dec.detach().double(), dim=-1).T)[f]
    for g in dense.topk(3).indices.tolist():
        if float(dense[g]) > 0:
            assert edges[((1, f), (2, g))] == pytest.approx(float(dense[g]), abs=1e-5)
    with pytest.raises(SAEError, match="link_by="):
        show_features(model, saes, PROMPT, link_by="dense")



def test_corpus_panel_equals_a_brute_force_pass(model: Any, unchanged: Any) -> None:
    sae = make_sae(HOOKS[1], seed=11, arch="standard")
    corpus = [*SAMPLE, "the store gave a cat to Mary and the mat to John", "F E D C B A"]
    fc = feature_corpus(model, sae, corpus, k=4, batch_size=3)  # batches of 3 documents: 2 batches
    handle = ModelHandle.wrap(model)
    seen: list[tuple[float, int, int, int]] = []  # (value, feature, doc, pos) of every firing
    n_tok = 0
    for doc, text in enumerate(corpus):
        toks = handle.tokens(text)
        assert torch.equal(fc.tokens[doc], toks[0].cpu())
        with handle.session():
            _, cache = handle.run_with_cache(toks, [HOOKS[1]])
        with torch.no_grad():
            f = sae.encode(cache[HOOKS[1]][0])[1:]  # BOS excluded
        n_tok += f.shape[0]
        for p, feat in (f > 0).nonzero().tolist():
            seen.append((float(f[p, feat]), feat, doc, p + 1))
    assert fc.n_tokens == n_tok and fc.n_docs == len(corpus)
    for feat in range(sae.d_sae):
        mine = sorted([(v, d, p) for v, g, d, p in seen if g == feat], key=lambda t: -t[0])
        assert int(fc.count[feat]) == len(mine)
        assert fc.density(feat) == pytest.approx(len(mine) / n_tok)
        got = fc.top_contexts(feat)
        np.testing.assert_allclose([v for v, _, _ in got], [v for v, _, _ in mine[:4]], atol=1e-5, rtol=0)
        where = {(d, p): v for v, d, p in mine}
        # the same tokens (equal activations, e.g. the same first word in two documents, may swap)
        assert len({(d, p) for _, d, p in got}) == len(got)
        for v, d, p in got:
            assert where[(d, p)] == pytest.approx(v, abs=1e-5)
        want_hist = torch.bincount(torch.bucketize(torch.tensor([v for v, _, _ in mine], dtype=torch.float32),
                                                   fc.hist_edges[1:-1]), minlength=fc.histogram.shape[1])
        assert torch.equal(fc.histogram[feat].long(), want_hist)
        # every sample lies in its bin, and comes from a token where the feature fires
        for b in range(fc.histogram.shape[1]):
            d, p = int(fc.example_doc[feat, b]), int(fc.example_pos[feat, b])
            assert (d >= 0) == bool(fc.histogram[feat, b] > 0)
            if d >= 0:
                assert int(torch.bucketize(torch.tensor(where[(d, p)]), fc.hist_edges[1:-1])) == b
        for q, lo, hi, d, p in fc.quantile_samples(feat):
            assert (d, p) in where and 0 < q < 1 and lo < hi
    assert any(fc.quantile_samples(f) for f in range(sae.d_sae))



def test_widget_corpus_panel_job_and_search(model: Any, saes: list[SimpleSAE], unchanged: Any) -> None:
    corpus = [*SAMPLE, "the store gave a cat to Mary"]
    w = show_features(model, saes, PROMPT, corpus=corpus, link_by="cosine")
    assert w.corpus_info == {"n_docs": len(corpus), "source": "corpus", "done": []}
    f = int(w.trace.top_indices[1, 4, 0])
    w.select_feature(1, f)
    assert w.feature["corpus"] is None
    steps: list[dict[str, Any]] = []
    w.observe(lambda ch: steps.append(dict(ch["new"])) if ch["new"] else None, "progress")
    sent = request(w, 1, "corpus", sae=1)  # a job: progress per batch, then the reply
    assert sent[-1]["result"] == {"sae": 1, "n_tokens": w.corpus_stats[1].n_tokens}
    assert steps and steps[-1]["kind"] == "corpus" and steps[-1]["done"] == steps[-1]["total"] == len(corpus)
    assert w.progress == {} and w.corpus_info["done"] == [1]
    want = feature_corpus(model, saes[1], corpus, k=20)
    panel = w.feature["corpus"]  # the selected feature's detail was refreshed
    assert panel["density"] == pytest.approx(want.density(f)) and panel["n_tokens"] == want.n_tokens
    assert [(c["doc"], c["pos"]) for c in panel["top"]] == [(d, p) for _, d, p in want.top_contexts(f)]
    top = panel["top"][0]
    doc_strs = ModelHandle.wrap(model).str_tokens(want.tokens[top["doc"]][None])
    assert top["tokens"][top["highlight"]] == doc_strs[top["pos"]]
    np.testing.assert_array_equal(decode_array(panel["hist_counts"]), want.histogram[f].numpy())
    assert encoded_nbytes(w.feature) <= MAX_UPDATE_BYTES
    # search: a feature number selects it; a token lists the features promoting it most
    w.search_features(0, "#7")
    assert w.selected_feature == {"sae": 0, "feature": 7}
    out = w.search_features(1, " Mary")
    tok = int(model.to_tokens(" Mary", prepend_bos=False)[0, 0])
    col = logit_effect_matrix(model, bind_saes(model, [saes[1]])[0], list(range(48)), ln_scale=w.trace.ln_scale)[:, tok]
    v, i = col.topk(10)
    assert [x["feature"] for x in out["features"]] == i.tolist() and w.search == out
    np.testing.assert_allclose([x["effect"] for x in out["features"]], v.numpy(), atol=1e-5, rtol=0)
    assert features_promoting(model, saes[1], tok, k=3, chunk=7)[0].tolist() == i[:3].tolist()
    assert all(str(x["feature"]) in w.feature_labels[1] for x in out["features"])
    with pytest.raises(SAEError, match="one token"):
        w.search_features(1, " Mary went")
    # no corpus: the request says what to pass
    bare = show_features(model, saes, PROMPT, link_by="cosine")
    with pytest.raises(SAEError, match="corpus="):
        bare.compute_corpus(0)



@pytest.mark.parametrize(
    ("make", "needle"),
    [
        (lambda: [make_sae("blocks.0.hook_resid_pre", d_in=16)], "d_in=16"),
        (lambda: [make_sae("blocks.7.hook_resid_pre")], "does not have"),
        (lambda: [make_sae("blocks.0.hook_resid_pre", dtype=torch.float64)], "torch.float64"),
        (lambda: [make_sae("blocks.0.hook_resid_pre").to("meta")], "on meta"),
        (lambda: [], "no SAE was given"),
        (lambda: {}, "no SAE was given"),
        (lambda: [NotAnSAE()], "lacks encode, decode, W_dec"),
        (lambda: {"blocks.1.hook_resid_pre": make_sae("blocks.0.hook_resid_pre")}, "keyed by"),
        (lambda: [make_sae("blocks.0.hook_resid_pre"), make_sae("blocks.0.hook_resid_pre", seed=3)], "one SAE per hook"),
    ],
    ids=["d_in", "missing-hook", "dtype", "device", "empty-list", "empty-dict", "not-an-sae", "wrong-key", "duplicate"],
)
def test_bad_saes_raise_clear_errors_and_leave_nothing_hooked(model: Any, unchanged: Any, make: Any, needle: str) -> None:
    for call in (
        lambda s: feature_activations(model, s, PROMPT),
        lambda s: intervene_features(model, s, PROMPT, []),
        lambda s: feature_links(model, s, SAMPLE),
        lambda s: show_features(model, s, PROMPT),
    ):
        with pytest.raises(SAEError) as info:
            call(make())
        assert needle in str(info.value), str(info.value)
        assert hook_count(model) == 0


def test_bad_interventions_raise(model: Any, saes: list[SimpleSAE], unchanged: Any) -> None:
    cases = [
        (FeatureIntervention(HOOKS[0], 48), SAEError, r"features 0\.\.47"),
        (FeatureIntervention("blocks.0.hook_mlp_out", 1), SAEError, "no SAE reads"),
        (FeatureIntervention(HOOKS[0], 1, "scale"), SAEError, "unknown intervention mode"),  # type: ignore[arg-type]
        (FeatureIntervention(HOOKS[0], 1, "clamp", math.nan), SAEError, "finite"),
        (FeatureIntervention(HOOKS[0], 1, positions=[99]), ComponentError, "position 99"),
    ]
    for iv, exc, needle in cases:
        with pytest.raises(exc, match=needle):
            intervene_features(model, saes, PROMPT, [iv])
        assert hook_count(model) == 0


def test_an_error_inside_a_spliced_sae_leaves_nothing_hooked(model: Any, unchanged: Any) -> None:
    sae = make_sae(HOOKS[0])
    w = show_features(model, [sae, make_sae(HOOKS[1], seed=1)], PROMPT)
    sae.decode = lambda f: (_ for _ in ()).throw(RuntimeError("boom"))  # type: ignore[method-assign]
    with pytest.raises(RuntimeError, match="boom"):
        w.ablate(0, 1)
    assert hook_count(model) == 0
    assert w.error.startswith("Unexpected error: RuntimeError: boom")


# ------------------------------------------------------------------------------------- widget
def test_widget_state_requests_and_python_api(model: Any, saes: list[SimpleSAE], unchanged: Any) -> None:
    w = show_features(model, saes, PROMPT, link_prompts=SAMPLE, top_k=5)
    assert isinstance(w, FeaturesWidget)
    n = len(w.tokens)
    assert w.sae_labels == ["L0 pre", "L1 pre", "L1 post"] and w.d_sae == [48, 48, 48]
    np.testing.assert_array_equal(decode_array(w.overview["n_active"]), w.trace.n_active.numpy())
    np.testing.assert_array_equal(decode_array(w.top["indices"]), w.trace.top_indices.numpy())
    assert w.links_info["source"] == "link_prompts" and w.links_info["n_prompts"] == len(SAMPLE)
    # every feature in the bars has a label: its top promoted tokens
    for i in range(3):
        feats = {int(f) for f in w.trace.top_indices[i].flatten() if f >= 0}
        assert feats <= {int(k) for k in w.feature_labels[i]}
        some = next(iter(feats))
        eff = feature_logit_effects(model, saes[i], some, k=3, ln_scale=w.trace.ln_scale)
        assert w.feature_labels[i][str(some)] == eff.promoted_tokens[0]
    # requests as the page sends them
    sent = request(w, 1, "select_token", pos=4)
    assert sent[-1]["result"] == {"pos": 4} and w.selected_token == 4
    f = int(w.trace.top_indices[1, 4, 0])
    sent = request(w, 2, "select_feature", sae=1, feature=f)
    assert "error" not in sent[-1] and w.selected_feature == {"sae": 1, "feature": f}
    np.testing.assert_array_equal(decode_array(w.feature["activations"]), w.trace.feature_values(1, f).numpy())
    eff = feature_logit_effects(model, saes[1], f, k=8, ln_scale=w.trace.ln_scale)
    assert w.feature["promoted"]["tokens"] == eff.promoted_tokens[0]
    nodes = w.feature["lineage"]["nodes"]
    assert {"sae": 1, "feature": f, "score": 1.0} in nodes and len(nodes) > 1
    for node in nodes:
        assert str(node["feature"]) in w.feature_labels[node["sae"]]
    sent = request(w, 3, "intervene", interventions=[{"sae": 1, "feature": f, "mode": "clamp", "value": 5.0, "positions": [4]}])
    assert "error" not in sent[-1]
    res = w.last_intervention
    assert res is not None and res.interventions[0].positions == [4]
    assert w.interventions == [{"sae": 1, "hook_name": HOOKS[1], "feature": f, "mode": "clamp", "value": 5.0, "positions": [4]}]
    assert w.intervention["after"]["tokens"] == res.after.str_tokens
    assert [c["feature"] for c in w.intervention["changed"]] == [c.feature for c in res.changes]
    assert all(c["sae"] >= 1 for c in w.intervention["changed"])
    # the Python API: same handlers; steer replaces the intervention on the same feature
    out = w.steer(HOOKS[1], f, 9.0)
    assert len(w.interventions) == 1 and w.interventions[0]["value"] == 9.0 and out.interventions[0].positions is None
    w.ablate(0, int(w.trace.top_indices[0, 4, 0]), positions=[4])
    assert len(w.interventions) == 2
    w.remove_intervention(HOOKS[1], f)
    assert [iv["sae"] for iv in w.interventions] == [0]
    w.clear_interventions()
    assert w.interventions == [] and w.intervention == {} and w.last_intervention is None
    # errors: raised in Python, shown in the banner; from the page, replied as errors
    with pytest.raises(SAEError, match=r"features 0\.\.47"):
        w.select_feature(0, 99)
    assert "features 0..47" in w.error
    sent = request(w, 4, "intervene", interventions=[{"sae": 0, "feature": 1, "mode": "clamp", "value": 1.0, "positions": [n]}])
    assert "out of range" in sent[-1]["error"] and w.error == sent[-1]["error"]
    sent = request(w, 5, "select_token", pos=n)
    assert "out of range" in sent[-1]["error"]
    w.select_token(0)
    assert w.error == ""
    # every update is small
    for name in ("overview", "top", "recon", "feature", "intervention", "feature_labels"):
        assert encoded_nbytes(getattr(w, name)) <= MAX_UPDATE_BYTES
    svg = w._static_svg()
    assert svg is not None and svg.startswith("<svg") and "L1 post" in svg
    bundle = w._repr_mimebundle_()
    assert "image/svg+xml" in (bundle[0] if isinstance(bundle, tuple) else bundle)


def test_the_session_works_headless_and_the_widget_draws_it(model: Any, saes: list[SimpleSAE], unchanged: Any) -> None:
    s = FeatureSession(model, saes, PROMPT, link_prompts=SAMPLE, top_k=4)
    f = int(s.trace.top_indices[1, 4, 0])
    detail = s.feature_detail(HOOKS[1], f)
    torch.testing.assert_close(detail["activations"], s.trace.feature_values(1, f))
    eff = feature_logit_effects(model, saes[1], f, k=8, ln_scale=s.trace.ln_scale)
    assert detail["promoted"]["tokens"] == eff.promoted_tokens[0] and str(f) in s.labels[1]
    # an edit through the session equals intervene_features run directly
    state = s.intervene([{"sae": 1, "feature": f, "mode": "clamp", "value": 3.0, "positions": [4]}])
    want = intervene_features(model, saes, PROMPT, [FeatureIntervention(HOOKS[1], f, "clamp", 3.0, [4])])
    assert state == s.interventions and state[0]["hook_name"] == HOOKS[1]
    assert s.last_intervention is not None
    torch.testing.assert_close(s.last_intervention.logits_after, want.logits_after, atol=1e-5, rtol=0)
    assert s.with_intervention(1, f, None) == [] and s.intervene([]) == [] and s.intervention_view() == {}
    with pytest.raises(SAEError, match=r"features 0\.\.47"):
        s.feature_detail(0, 48)
    # the widget is a view over it: its traits are the session's numbers
    w = FeaturesWidget(s, colour_by="total")
    assert w.session is s and w.trace is s.trace and w.colour_by == "total"
    np.testing.assert_array_equal(w.top["values"], s.trace.top_values.numpy())
    assert w.top["indices"].dtype == np.int32 and w.recon["error_norm"].dtype == np.float32
    with pytest.raises(SAEError, match="colour_by="):
        FeaturesWidget(s, colour_by="depth")


def test_widget_links_default_to_the_prompt_and_accept_precomputed(model: Any, saes: list[SimpleSAE]) -> None:
    w = show_features(model, saes[:2], PROMPT)
    assert w.links_info["source"].startswith("this prompt only")
    links = feature_links(model, saes, SAMPLE, n_links=3)
    w2 = show_features(model, saes, PROMPT, links=links)
    assert w2.links is links
    with pytest.raises(SAEError, match="links= was computed"):
        show_features(model, saes[:2], PROMPT, links=links)
    single = show_features(model, saes[0], PROMPT)
    single.select_feature(0, int(single.trace.top_indices[0, 2, 0]))
    assert len(single.feature["lineage"]["nodes"]) == 1


# ------------------------------------------------------------------------------------- the zoo's toy-lm
def _toy_lm() -> tuple[Any, dict[str, Any]]:
    from mechwidgets import zoo

    model = zoo.load("toy-lm")
    saes = zoo.load_saes("toy-lm")
    if not saes:
        pytest.skip("toy-lm has no SAEs")
    return model, saes


def test_toy_lm_saes_splice_exactly_and_explain_their_hooks() -> None:
    model, saes = _toy_lm()
    from mechwidgets.zoo import tasks

    prompt = tasks.sample_text(1, seed=7)[0]
    trace = feature_activations(model, saes, prompt, max_positions=model.cfg.n_ctx)
    assert trace.hook_names == list(saes)
    assert float(trace.explained_variance.min()) > 0.5, trace.explained_variance
    res = intervene_features(model, saes, prompt, [], before=trace)
    assert res.max_abs_logit_change <= 1e-5
    for i, (hook, sae) in enumerate(saes.items()):
        _, cache = cached(model, [hook], prompt=prompt)
        with torch.no_grad():
            f = sae.encode(cache[hook][0])
        torch.testing.assert_close(trace.dense(i), f.float(), rtol=0, atol=1e-5)
    before = hook_count(model)
    f = int(trace.top_indices[1, 5, 0])
    res = intervene_features(model, saes, prompt, [FeatureIntervention(list(saes)[1], f, "clamp", 10.0)], before=trace)
    assert res.max_abs_logit_change > 0 and res.changes and hook_count(model) == before
