"""Causal scrubbing: its guarantees on tiny models, checked against independent computations,
the induction proof on the zoo's ``induction-2l``, bad input, and the widget's state and protocol.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from support import assert_unchanged, snapshot

import mechwidgets
import mechwidgets.zoo
from mechwidgets.analysis.scrubbing import (
    FEATURES,
    Feature,
    HypothesisNode,
    Scrubber,
    induction_heads,
    induction_hypothesis,
    scrub,
)
from mechwidgets.errors import HypothesisError, MetricError, PromptError
from mechwidgets.widgets._base import _Job
from mechwidgets.widgets._scrubbing_tree import initial_collapsed
from mechwidgets.widgets.scrubbing import ScrubbingWidget, show_scrubbing, tree_layout

N_SEQ, LENGTH = 64, 12


def random_tokens(n: int = N_SEQ, length: int = LENGTH, vocab: tuple[int, int] = (2, 40), seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    toks = torch.randint(vocab[0], vocab[1], (n, length), generator=g)
    toks[:, 0] = 0  # BOS
    return toks


def sharpened(model: Any) -> Any:
    """A tiny random model made confident (large unembedding), so its predictions depend
    strongly on its input."""
    with torch.no_grad():
        model.unembed.W_U.mul_(8)
    return model


@pytest.fixture(scope="module")
def sharp_model(make_model: Callable[..., Any]) -> Any:
    return sharpened(make_model())


@pytest.fixture(scope="module")
def attn_only_model(make_model: Callable[..., Any]) -> Any:
    return sharpened(make_model(attn_only=True, d_mlp=None))


def model_samples(model: Any, n: int = N_SEQ, length: int = LENGTH, seed: int = 0) -> torch.Tensor:
    """Sequences sampled from the model itself (tokens 2..39 only): data it predicts well, so the
    clean loss is low and resampling what matters raises it."""
    g = torch.Generator().manual_seed(seed)
    toks = random_tokens(n, 2, seed=seed)
    with torch.no_grad():
        while toks.shape[1] < length:
            logits = model(toks)[:, -1, 2:40]
            nxt = torch.multinomial(logits.softmax(-1), 1, generator=g) + 2
            toks = torch.cat([toks, nxt], 1)
    return toks


def full_hypothesis(model: Any, feature: Any = None) -> HypothesisNode:
    """Every path of the model named, each node with ``feature``: heads recomputed from q/k/v
    inputs that name every component of their residual stream, MLPs from theirs."""
    cfg = model.cfg
    mlps = not cfg.attn_only

    def components(layer: int, *, mlp_input: bool = False) -> list[HypothesisNode]:
        out = [HypothesisNode("embed", feature), HypothesisNode("pos_embed", feature)]
        for lay in range(layer + (1 if mlp_input else 0)):
            out += [HypothesisNode(f"L{lay}H{h}", feature) for h in range(cfg.n_heads)]
            if mlps and lay < layer:
                out.append(HypothesisNode(f"mlp{lay}", feature))
        return out

    kids = [HypothesisNode("embed", feature), HypothesisNode("pos_embed", feature)]
    for layer in range(cfg.n_layers):
        kids += [
            HypothesisNode(f"L{layer}H{h}", feature, [HypothesisNode(w, feature, components(layer)) for w in "qkv"])
            for h in range(cfg.n_heads)
        ]
        if mlps:
            kids.append(HypothesisNode(f"mlp{layer}", feature, components(layer, mlp_input=True)))
    return HypothesisNode("output", children=kids)


def all_resampled(node: HypothesisNode) -> HypothesisNode:
    tree = node.copy()
    for path, n in tree.walk():
        if path != "output":
            n.kept = False
    return tree


# ----------------------------------------------------------------------------------------- guarantees
@pytest.mark.parametrize("which", ["mlp", "attn_only"])
def test_every_node_kept_with_identifying_features_gives_the_clean_loss(
    which: str, sharp_model: Any, attn_only_model: Any
) -> None:
    model = sharp_model if which == "mlp" else attn_only_model
    toks = model_samples(model)
    scrubber = Scrubber(model, toks, n_seeds=2)
    # the clean loss is the model's own, from a plain forward pass
    with torch.no_grad():
        logits = model(toks)
    want = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), toks[:, 1:].reshape(-1))
    assert scrubber.clean_value == pytest.approx(float(want), abs=1e-5)
    # every path named and recomputed (heads from rebuilt q/k/v, MLPs from rebuilt inputs)
    result = scrubber.evaluate(full_hypothesis(model))
    assert torch.allclose(result.scrubbed_per_seed, torch.tensor(result.clean), atol=1e-4)
    assert result.random > result.clean + 0.5  # the random baseline really differs
    assert result.fraction == pytest.approx(1.0, abs=1e-4)
    # the same with a user feature that identifies the input fully (the whole prefix): every
    # agreeing input is an identical prefix, so the activations are the clean ones
    def whole_prefix(prefix: tuple[int, ...]) -> tuple[int, ...]:
        return prefix

    strict = Scrubber(model, toks, n_seeds=2, min_agreeing=1)
    result = strict.evaluate(full_hypothesis(model, whole_prefix))
    assert torch.allclose(result.scrubbed_per_seed, torch.tensor(result.clean), atol=1e-4)
    # and in many small chunks (chunking changes nothing)
    chunked = Scrubber(model, toks, n_seeds=1, max_floats=1 << 15)
    assert chunked.evaluate(full_hypothesis(model)).scrubbed == pytest.approx(result.clean, abs=1e-4)


def independent_random_loss(model: Any, toks: torch.Tensor, seeds: int, gen: torch.Generator) -> float:
    """The random-resample loss computed from TransformerLens's own cache, with no scrubbing code:
    every component of the final residual stream taken at its own random (sequence, position)."""
    cfg = model.cfg
    names = ["hook_embed", "hook_pos_embed"] + [f"blocks.{lay}.attn.hook_z" for lay in range(cfg.n_layers)]
    if not cfg.attn_only:
        names += [f"blocks.{lay}.hook_mlp_out" for lay in range(cfg.n_layers)]
    with torch.no_grad():
        _, cache = model.run_with_cache(toks, names_filter=lambda n: n in names)
        n, length = toks.shape
        comps = [cache["hook_embed"].reshape(n * length, -1),
                 cache["hook_pos_embed"].expand(n, -1, -1).reshape(n * length, -1)]
        for lay in range(cfg.n_layers):
            z = cache[f"blocks.{lay}.attn.hook_z"]
            for h in range(cfg.n_heads):
                comps.append((z[:, :, h] @ model.W_O[lay, h]).reshape(n * length, -1))
            if not cfg.attn_only:
                comps.append(cache[f"blocks.{lay}.hook_mlp_out"].reshape(n * length, -1))
        refs = (torch.arange(n)[:, None] * length + torch.arange(length - 1)[None]).reshape(-1)
        targets = toks.reshape(-1)[refs + 1]
        losses = []
        for _ in range(seeds):
            resid = model.b_O.sum(0) + sum(c[torch.randint(0, n * length, (len(refs),), generator=gen)] for c in comps)
            logits = model.unembed(model.ln_final(resid[None]))[0]
            losses.append(float(F.cross_entropy(logits, targets)))
    return sum(losses) / len(losses)


def test_nothing_kept_gives_the_random_resample_loss(sharp_model: Any) -> None:
    toks = model_samples(sharp_model, 128)
    scrubber = Scrubber(sharp_model, toks, n_seeds=12)
    hypothesis = all_resampled(full_hypothesis(sharp_model, "token"))
    result = scrubber.evaluate(hypothesis)
    # per seed, the random baseline and "nothing kept" are two independent draws of the same
    # thing; their means agree within the sampling noise
    spread = float(torch.cat([result.random_per_seed, result.scrubbed_per_seed]).std())
    noise = 4 * spread / math.sqrt(len(result.random_per_seed)) + 1e-3
    assert abs(result.scrubbed - result.random) < noise
    assert result.fraction == pytest.approx(0.0, abs=4 * result.fraction_std / math.sqrt(12) + 0.02)
    # and both agree with the random-resample loss computed with no scrubbing code at all
    other = independent_random_loss(sharp_model, toks, 12, torch.Generator().manual_seed(1))
    assert abs(other - result.random) < noise
    assert result.random > result.clean + 0.5


def test_resampling_respects_equivalence_classes_enumerated(sharp_model: Any) -> None:
    # every sequence over two tokens: BOS + 4 tokens from {a, b}: 16 inputs x 5 positions
    seqs = torch.tensor([[0, *bits] for bits in itertools.product((2, 3), repeat=4)])
    scrubber = Scrubber(sharp_model, seqs, n_seeds=1, min_agreeing=1)
    prefixes = scrubber.prefixes()
    assert len(prefixes) == 16 * 5 and prefixes[7] == tuple(seqs[1, :3].tolist())

    def count_of_a(prefix: tuple[int, ...]) -> int:
        """How many a tokens so far (a feature of the whole prefix)."""
        return prefix.count(2)

    gen = torch.Generator().manual_seed(0)
    draws = 4000
    for feature in [FEATURES["token"], FEATURES["previous_token"], FEATURES["seen_before"],
                    FEATURES["induction_target"], Feature("count_of_a", count_of_a)]:
        classes = scrubber.feature_classes(feature)
        for ref in range(len(prefixes)):
            members = [i for i, p in enumerate(prefixes) if feature.fn(p) == feature.fn(prefixes[ref])]
            got = classes.sample(torch.full((draws,), ref), gen)
            counts = torch.bincount(got, minlength=len(prefixes))
            # only agreeing prefixes are drawn, and every one of them (itself included), uniformly
            assert set(torch.nonzero(counts)[:, 0].tolist()) == set(members), (feature.name, ref)
            expected = draws / len(members)
            assert float((counts[members] - expected).abs().max()) < 5 * math.sqrt(expected) + 1


def test_treeified_draws_agree_and_keys_come_from_the_sampled_prefix(sharp_model: Any) -> None:
    toks = random_tokens(48, vocab=(2, 8))
    scrubber = Scrubber(sharp_model, toks, n_seeds=1)
    hypothesis = HypothesisNode("output", children=[
        HypothesisNode("L1H0", "seen_before", [
            HypothesisNode("q", children=[HypothesisNode("embed", "token")]),
            HypothesisNode("k", "position", [HypothesisNode("L0H1", "previous_token"), HypothesisNode("resid", "token")]),
            HypothesisNode("v", children=[HypothesisNode("embed", "token")]),
        ]),
        HypothesisNode("mlp1", "token"),
    ])
    scrubber._trace = []
    scrubber.evaluate(hypothesis)
    trace, scrubber._trace = scrubber._trace, None
    prefixes = scrubber.prefixes()
    P = scrubber.length
    feats = {"output/L1H0": "seen_before", "output/L1H0/q/embed": "token", "output/L1H0/k": "position",
             "output/L1H0/k/L0H1": "previous_token", "output/L1H0/k/resid": "token",
             "output/L1H0/v/embed": "token", "output/mlp1": "token"}
    seen = {path for path, _, _ in trace}
    assert set(feats) <= seen
    draws = {path: (refs, x) for path, refs, x in trace}
    for path, name in feats.items():
        refs, x = draws[path]
        fn = FEATURES[name].fn
        assert all(fn(prefixes[r]) == fn(prefixes[s]) for r, s in zip(refs.tolist(), x.tolist(), strict=True)), path
    # the head's references are the scored predictions; its key inputs are asked for at every
    # position of the sequences the head was resampled to (one row per sequence and position,
    # read by every query of that sequence: the head occurs once in each prediction's tree)
    head_refs, head_x = draws["output/L1H0"]
    assert torch.equal(head_refs, scrubber.refs)
    k_refs, k_x = draws["output/L1H0/k"]
    width = int((head_x % P).max()) + 1
    expected = (torch.unique(head_x // P)[:, None] * P + torch.arange(width)[None]).reshape(-1)
    assert torch.equal(k_refs, expected)
    # children are resampled relative to their parent's sampled input, not the original
    kk_refs, _ = draws["output/L1H0/k/L0H1"]
    assert torch.equal(kk_refs, k_x)
    # key rows of one query are drawn independently: different key positions of one prefix are
    # (almost always) sent to different sequences
    assert (k_x // P).unique().numel() > 10

    # without sharing, and for a head nested under another head's key (it occurs once per key
    # row of the outer head, so in one tree many times), every query has rows of its own
    nested = HypothesisNode("output", children=[HypothesisNode("L1H0", children=[
        HypothesisNode("k", children=[HypothesisNode("L0H1", "previous_token", [HypothesisNode("v", children=[HypothesisNode("embed", "token")])])]),
    ])])
    for share, hyp, head, key in [(False, hypothesis, "output/L1H0", "output/L1H0/k"),
                                  (True, nested, "output/L1H0/k/L0H1", "output/L1H0/k/L0H1/v")]:
        other = Scrubber(sharp_model, toks, n_seeds=1, share_rows=share)
        other._trace = []
        other.evaluate(hyp)
        got = {path: (refs, x) for path, refs, x in other._trace}
        expected = torch.cat([torch.arange(int(x) // P * P, int(x) + 1) for x in got[head][1]])
        assert torch.equal(got[key][0], expected), key


def test_shared_rows_leave_the_estimate_unbiased(sharp_model: Any) -> None:
    toks = model_samples(sharp_model, 64)
    hyp = HypothesisNode("output", children=[
        HypothesisNode(f"L1H{h}", children=[
            HypothesisNode("q", children=[HypothesisNode("embed", "token"), HypothesisNode("resid", "position")]),
            HypothesisNode("k", children=[HypothesisNode("L0H1", "previous_token"), HypothesisNode("resid", "position")]),
            HypothesisNode("v", children=[HypothesisNode("embed", "token")]),
        ]) for h in range(2)
    ] + [HypothesisNode("resid")])
    shared = Scrubber(sharp_model, toks, n_seeds=16, min_agreeing=1).evaluate(hyp)
    separate = Scrubber(sharp_model, toks, n_seeds=16, min_agreeing=1, share_rows=False).evaluate(hyp)
    sem = math.hypot(float(shared.scrubbed_per_seed.std()), float(separate.scrubbed_per_seed.std())) / 4
    assert abs(shared.scrubbed - separate.scrubbed) < 4 * sem + 1e-3
    assert separate.random > separate.scrubbed + 0.3  # the hypothesis is far from trivial here


def test_exact_expectation_on_an_enumerable_hypothesis(sharp_model: Any) -> None:
    """Everything named and kept as it is except one head, resampled among prefixes with the same
    previous token: the scrubbed loss is an average over those classes, enumerated exactly."""
    toks = model_samples(sharp_model, 24, length=8)
    # every component of the final residual stream named, as it is, except L1H2
    hypothesis = HypothesisNode("output", children=[
        HypothesisNode(c.component, "previous_token" if c.component == "L1H2" else None)
        for c in full_hypothesis(sharp_model).children
    ])
    scrubber = Scrubber(sharp_model, toks, n_seeds=300, min_agreeing=1)
    result = scrubber.evaluate(hypothesis)

    with torch.no_grad():
        _, cache = sharp_model.run_with_cache(toks)
        n, P = toks.shape
        head = (cache["blocks.1.attn.hook_z"][:, :, 2] @ sharp_model.W_O[1, 2]).reshape(n * P, -1)
        resid = cache["blocks.1.hook_resid_post"].reshape(n * P, -1)
        prefixes = scrubber.prefixes()
        fn = FEATURES["previous_token"].fn
        losses = []
        for r in scrubber.refs.tolist():
            members = [i for i, p in enumerate(prefixes) if fn(p) == fn(prefixes[r])]
            swapped = resid[r] - head[r] + head[members]
            logits = sharp_model.unembed(sharp_model.ln_final(swapped[None]))[0]
            target_tok = torch.full((len(members),), int(toks.reshape(-1)[r + 1]))
            losses.append(F.cross_entropy(logits, target_tok, reduction="mean"))
        exact = float(torch.stack(losses).mean())
    sem = float(result.scrubbed_per_seed.std()) / math.sqrt(300)
    assert abs(result.scrubbed - exact) < 5 * sem + 1e-4
    assert abs(exact - result.clean) > 10 * sem  # the resampling really matters here


# ----------------------------------------------------------------------------------------- induction
def test_induction_hypothesis_on_the_zoo_model() -> None:
    """Redwood's induction experiment on the zoo's induction-2l: the refined induction hypothesis
    recovers most of the loss; the naive one, and ones with the key wired wrong, far less."""
    model = mechwidgets.zoo.load("induction-2l")
    prev, ind = induction_heads(model)
    data = mechwidgets.zoo.tasks.induction_sequences(96, length=20, seed=1, model="induction-2l")
    scrubber = Scrubber(model, data, n_seeds=2)
    n_heads = model.cfg.n_heads
    # K-composition with the previous-token heads (their outputs as they are), the current token
    # and position in the query, the token at the key's position in the value
    correct = scrubber.evaluate(induction_hypothesis(prev, ind, key_feature="identity", n_heads=n_heads))
    assert correct.clean < correct.random - 1.0, (
        f"the zoo's induction-2l does not predict the repeated half (clean loss {correct.clean:.2f}, "
        f"random {correct.random:.2f}): there is no induction behaviour to explain"
    )
    naive = scrubber.evaluate(induction_hypothesis(prev, ind, refined=False))
    # the previous-token heads said to carry the current token instead
    wrong_feature = scrubber.evaluate(induction_hypothesis(prev, ind, key_feature="token", n_heads=n_heads))
    # the key said to read the other layer-0 heads instead of the previous-token heads
    others = [(0, h) for h in range(n_heads) if (0, h) not in prev]
    wrong_heads = scrubber.evaluate(induction_hypothesis(others, ind, key_feature="identity", n_heads=n_heads))
    print(f"\ninduction-2l, previous-token heads {prev}, induction heads {ind}:\n"
          f"  correct: {correct.summary()}\n  naive: {naive.summary()}\n"
          f"  key feature 'token': {wrong_feature.summary()}\n  key from {others}: {wrong_heads.summary()}")
    assert correct.fraction >= 0.8
    for other in (naive, wrong_feature, wrong_heads):
        assert other.fraction <= correct.fraction - 0.25


# ----------------------------------------------------------------------------------------- bad input
BAD_HYPOTHESES = [
    (HypothesisNode("output", children=[HypothesisNode("L5H0")]), "output/L5H0", "no layer 5"),
    (HypothesisNode("output", children=[HypothesisNode("L1H9")]), "output/L1H9", "no head 9"),
    (HypothesisNode("output", children=[HypothesisNode("attn7")]), "output/attn7", "unknown component"),
    (HypothesisNode("output", children=[HypothesisNode("q")]), "output/q", "directly under a head"),
    (HypothesisNode("output", children=[HypothesisNode("L0H0", children=[HypothesisNode("embed")])]), "output/L0H0/embed", "'q', 'k' and 'v'"),
    (HypothesisNode("output", children=[HypothesisNode("L0H0", children=[HypothesisNode("k", children=[HypothesisNode("L1H0")])])]),
     "output/L0H0/k/L1H0", "does not feed layer 0's attention"),
    (HypothesisNode("output", children=[HypothesisNode("embed", children=[HypothesisNode("L0H0")])]), "output/embed", "cannot have children"),
    (HypothesisNode("output", children=[HypothesisNode("L0H1"), HypothesisNode("L0H1")]), "output", "twice"),
    (HypothesisNode("L1H0"), "root", "HypothesisNode('output'"),
    (HypothesisNode("output", kept=False), "output", "always kept"),
    (HypothesisNode("output", children=[HypothesisNode("embed", "no_such_feature")]), "output/embed", "unknown feature"),
]


@pytest.mark.parametrize("hypothesis,where,what", BAD_HYPOTHESES, ids=[w + ":" + m for _, w, m in BAD_HYPOTHESES])
def test_bad_hypotheses_are_refused_with_the_node(model: Any, unchanged: Any, hypothesis: HypothesisNode, where: str, what: str) -> None:
    with pytest.raises(HypothesisError) as info:
        scrub(model, hypothesis, random_tokens(16), n_seeds=1)
    message = str(info.value)
    assert what in message
    if where != "root":
        assert repr(where) in message or where in message
    unchanged()


def test_mlp_named_in_an_attention_only_model(attn_only_model: Any) -> None:
    with pytest.raises(HypothesisError, match="attention-only"):
        scrub(attn_only_model, HypothesisNode("output", children=[HypothesisNode("mlp0")]), random_tokens(16), n_seeds=1)


def test_a_feature_that_raises_or_returns_unhashable_values(model: Any, unchanged: Any) -> None:
    def third_token(prefix: tuple[int, ...]) -> int:
        return prefix[2]

    def as_list(prefix: tuple[int, ...]) -> list[int]:
        return list(prefix[-2:])

    hyp = HypothesisNode("output", children=[HypothesisNode("L1H0", children=[HypothesisNode("k", children=[HypothesisNode("L0H3", third_token)])])])
    with pytest.raises(HypothesisError) as info:
        scrub(model, hyp, random_tokens(16), n_seeds=1)
    msg = str(info.value)
    assert "'output/L1H0/k/L0H3'" in msg and "'third_token' raised IndexError" in msg and "position 0" in msg
    with pytest.raises(HypothesisError) as info:
        scrub(model, HypothesisNode("output", children=[HypothesisNode("embed", as_list)]), random_tokens(16), n_seeds=1)
    msg = str(info.value)
    assert "'output/embed'" in msg and "unhashable list" in msg and "hashable" in msg
    unchanged()


def test_a_dataset_too_small_to_find_agreeing_inputs(model: Any, unchanged: Any) -> None:
    hyp = HypothesisNode("output", children=[HypothesisNode("L1H0", children=[HypothesisNode("q", "token_and_position")])])
    with pytest.raises(HypothesisError) as info:
        scrub(model, hyp, random_tokens(8), n_seeds=1)
    msg = str(info.value)
    assert "'output/L1H0/q'" in msg and "'token_and_position'" in msg and "too small" in msg
    assert "at least 2 inputs agreeing" in msg and "8 inputs of 12 tokens" in msg
    # a larger bound is reported as asked
    with pytest.raises(HypothesisError, match="at least 40 inputs agreeing"):
        scrub(model, HypothesisNode("output", children=[HypothesisNode("embed", "token")]), random_tokens(8), n_seeds=1,
              min_agreeing=40)
    # with enough inputs (or the bound lowered) the same hypothesis runs
    assert math.isfinite(scrub(model, hyp, random_tokens(8), n_seeds=1, min_agreeing=1).scrubbed)
    unchanged()


def test_bad_datasets_and_metrics(model: Any, unchanged: Any) -> None:
    hyp = HypothesisNode("output", children=[HypothesisNode("embed", "token")])
    with pytest.raises(PromptError, match="same number of tokens"):
        scrub(model, hyp, ["A B C", "A B C D"], n_seeds=1)
    with pytest.raises(PromptError, match="positions must be"):
        scrub(model, hyp, random_tokens(8), positions=[11], n_seeds=1)
    with pytest.raises(PromptError, match="empty"):
        scrub(model, hyp, [], n_seeds=1)
    with pytest.raises(MetricError, match="finite"):
        scrub(model, hyp, random_tokens(8), n_seeds=1, metric=lambda logits, t: logits[:, 0] * float("nan"))
    with pytest.raises(HypothesisError, match="n_seeds"):
        scrub(model, hyp, random_tokens(8), n_seeds=0)
    unchanged()


def test_custom_metric_and_strings(model: Any) -> None:
    texts = ["A B C D A B C D", "E F G H E F G H", "A C E G A C E G", "B D F H B D F H"] * 4

    def logprob(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Log-probability of the next token."""
        return logits.log_softmax(-1).gather(-1, targets[:, None])[:, 0]

    result = scrub(model, HypothesisNode("output", children=[HypothesisNode("embed", "token")]), texts, metric=logprob,
                   n_seeds=2, positions=[5, 6, 7], min_agreeing=1)
    assert result.metric == "logprob" and result.positions == [5, 6, 7] and result.n_references == 48
    assert result.clean < 0


# ----------------------------------------------------------------------------------------- widget
@pytest.fixture
def widget(sharp_model: Any) -> ScrubbingWidget:
    hyp = HypothesisNode("output", children=[
        HypothesisNode("L1H0", children=[
            HypothesisNode("q", children=[HypothesisNode("embed", "token")]),
            HypothesisNode("k", children=[HypothesisNode("L0H1", "previous_token")]),
        ]),
        HypothesisNode("embed", "token"),
    ])
    return show_scrubbing(sharp_model, hyp, model_samples(sharp_model), n_seeds=2, min_agreeing=1)


def test_widget_state_history_and_python_api(widget: ScrubbingWidget) -> None:
    w = widget
    assert [r["path"] for r in w.tree] == [
        "output", "output/L1H0", "output/L1H0/q", "output/L1H0/q/embed", "output/L1H0/k",
        "output/L1H0/k/L0H1", "output/embed",
    ]
    assert [r["parent"] for r in w.tree] == [-1, 0, 1, 2, 1, 4, 0]
    assert len(w.history) == 1 and w.history[0]["label"] == "initial hypothesis"
    first = w.last_result
    assert w.result["fraction"] == pytest.approx(first.fraction) and w.result["step"] == 1
    names = [f["name"] for f in w.features]
    assert names[:3] == ["identity", "token", "previous_token"]

    r2 = w.set_kept("output/L1H0", False)
    assert len(w.history) == 2 and w.history[1]["label"] == "output/L1H0: kept → resampled"
    rows = {r["path"]: r for r in w.tree}
    assert rows["output/L1H0"]["kept"] is False and rows["output/L1H0/k/L0H1"]["active"] is False
    assert rows["output/L1H0/k/L0H1"]["kept"] is True
    assert w.history[1]["nodes"]["output/L1H0"] == {"kept": False, "feature": "identity"}
    assert w.result["step"] == 2 and w.last_result is r2 and w.results[-1] is r2

    w.set_feature("output/embed", "position")
    assert w.history[2]["label"] == "output/embed: feature token → position"
    assert {r["path"]: r for r in w.tree}["output/embed"]["feature"] == "position"

    # a feature given as a function joins the menu under its name
    def parity(prefix: tuple[int, ...]) -> int:
        """Parity of the token."""
        return prefix[-1] % 2

    w.set_feature("output/embed", parity)
    assert {"name": "parity", "description": "Parity of the token."} in w.features

    w.restore(1)
    assert w.result["step"] == 1 and w.last_result is first and len(w.history) == 4
    assert {r["path"]: r for r in w.tree}["output/L1H0"]["kept"] is True
    # changes after a restore start from that step's hypothesis
    w.set_kept("output/embed", False)
    assert w.history[-1]["nodes"]["output/L1H0"]["kept"] is True
    # several nodes at once: one history step, its label grouped by change
    w.update({p: {"kept": False} for p in ("output/L1H0/q", "output/L1H0/k", "output/L1H0/q/embed")})
    assert w.history[-1]["label"] == "3 nodes (L1H0/q, L1H0/k, …): kept → resampled"
    # a whole new hypothesis from Python
    w.evaluate(HypothesisNode("output", children=[HypothesisNode("embed", "token")]), label="embeddings only")
    assert w.history[-1]["label"] == "embeddings only" and [r["path"] for r in w.tree] == ["output", "output/embed"]


def test_widget_errors_raise_and_show_in_the_banner(widget: ScrubbingWidget, sharp_model: Any) -> None:
    before = snapshot(sharp_model)
    w = widget
    history = list(w.history)
    with pytest.raises(HypothesisError) as info:
        w.set_feature("output/embed", "no_such_feature")
    assert w.error == str(info.value) and "'output/embed'" in w.error
    with pytest.raises(HypothesisError, match="no node 'output/L7H0'"):
        w.set_kept("output/L7H0", False)
    assert "output/L7H0" in w.error
    with pytest.raises(HypothesisError, match="always kept"):
        w.set_kept("output", False)

    def broken(prefix: tuple[int, ...]) -> int:
        raise RuntimeError("boom")

    with pytest.raises(HypothesisError, match="'broken' raised RuntimeError: boom"):
        w.set_feature("output/L1H0/k/L0H1", broken)
    assert w.history == history  # nothing was added, nothing changed on screen
    assert_unchanged(sharp_model, before)
    # a successful call clears the banner
    w.set_kept("output/embed", False)
    assert w.error == ""


class Sent:
    def __init__(self, widget: ScrubbingWidget) -> None:
        self.messages: list[dict[str, Any]] = []
        widget._send_message = self.messages.append  # type: ignore[method-assign]


def test_widget_requests_from_the_frontend_and_cancel(widget: ScrubbingWidget) -> None:
    w = widget
    sent = Sent(w)
    w._on_frontend_message(w, {"type": "request", "id": 7, "kind": "evaluate",
                               "args": {"nodes": {"output/L1H0/k/L0H1": {"feature": "token"}}}}, [])
    reply = sent.messages[-1]
    assert reply["id"] == 7 and reply["result"]["step"] == 2
    assert w.history[-1]["label"] == "output/L1H0/k/L0H1: feature previous_token → token"
    # a bad request is answered with an error, shown in the banner
    w._on_frontend_message(w, {"type": "request", "id": 8, "kind": "evaluate",
                               "args": {"nodes": {"output/nope": {"kept": False}}}}, [])
    assert "no node 'output/nope'" in sent.messages[-1]["error"] and "output/nope" in w.error
    w._on_frontend_message(w, {"type": "request", "id": 9, "kind": "restore", "args": {"step": 99}}, [])
    assert "'step' takes an integer in 1..2; got 99" in sent.messages[-1]["error"]

    # a long evaluation runs step by step (progress), and a cancel stops it: nothing changes
    tree, history = list(w.tree), list(w.history)
    job = w._handler("evaluate")(nodes={"output/embed": {"kept": False}})
    w._latest["evaluate"] = 10
    w._jobs["evaluate"] = _Job(10, "evaluate", job)
    assert w._step(w._jobs["evaluate"]) and w.progress["kind"] == "evaluate" and w.progress["total"] == 2
    w._on_frontend_message(w, {"type": "cancel", "kind": "evaluate"}, [])
    assert sent.messages[-1]["cancelled"] is True and w.progress == {}
    assert w.tree == tree and w.history == history and "evaluate" not in w._jobs


def test_widget_static_svg(widget: ScrubbingWidget) -> None:
    svg = widget._static_svg()
    assert svg is not None and svg.startswith("<svg")
    for text in ("L1H0", "previous_token · kept", "Loss recovered", "History of refinements"):
        assert text in svg
    widget.set_kept("output/L1H0", False)
    svg = widget._static_svg()
    assert "identity · resampled" in svg and 'stroke-dasharray="4 3"' in svg
    bundle = widget._repr_mimebundle_()
    data = bundle[0] if isinstance(bundle, tuple) else bundle
    assert data["image/svg+xml"] == svg

    # hostile names are drawn as text
    def evil(prefix: tuple[int, ...]) -> int:
        return 0

    evil.__name__ = "<script>x</script>"
    widget.set_feature("output/embed", evil)
    assert "<script>" not in widget._static_svg()


def _row(path: str, parent: int) -> dict[str, Any]:
    return {"path": path, "component": path.rsplit("/", 1)[-1], "depth": path.count("/"), "parent": parent}


TREE = [_row("output", -1), _row("output/L1H2", 0), _row("output/L1H2/q", 1), _row("output/L1H2/k", 1),
        _row("output/L1H2/k/L0H2", 3), _row("output/embed", 0)]


def test_tree_layout_centres_parents_and_folds() -> None:
    # by hand: boxes 96 wide, 8 apart, 10 margin; leaves q, L0H2, embed at 58, 162, 266; k over
    # L0H2; L1H2 between q and k; output between L1H2 and embed; levels 58 apart from y = 28
    layout = tree_layout(TREE)
    nodes = layout["nodes"]
    assert [n["row"] for n in nodes] == list(range(6)) and [n["parent"] for n in nodes] == [-1, 0, 1, 1, 3, 0]
    assert [n["x"] for n in nodes] == [188, 110, 58, 162, 162, 266]
    assert [n["y"] for n in nodes] == [28, 86, 144, 144, 202, 86]
    assert (layout["width"], layout["height"]) == (324, 230) and all(n["hidden"] == 0 for n in nodes)
    # folding L1H2 hides its three descendants: two leaves left, one level less deep
    folded = tree_layout(TREE, ["output/L1H2"])
    assert [(n["row"], n["parent"], n["hidden"], n["x"], n["y"]) for n in folded["nodes"]] == [
        (0, -1, 0, 110, 28), (1, 0, 3, 58, 86), (5, 0, 0, 162, 86)]
    assert (folded["width"], folded["height"]) == (220, 114)
    # a fold under a fold counts toward the outer one
    assert [n["hidden"] for n in tree_layout(TREE, ["output/L1H2", "output/L1H2/k"])["nodes"]] == [0, 3, 0]
    assert [n["hidden"] for n in tree_layout(TREE, ["output/L1H2/k"])["nodes"]] == [0, 0, 0, 1, 0]


def test_wide_trees_open_with_head_inputs_folded() -> None:
    wide = [_row("output", -1)]
    for w in "qkv":
        parent = len(wide)
        wide.append(_row(f"output/L1H0/{w}", 0))
        wide += [_row(f"output/L1H0/{w}/L0H{c}", parent) for c in range(5)]
    assert initial_collapsed(wide) == ["output/L1H0/q", "output/L1H0/k", "output/L1H0/v"]
    assert initial_collapsed(TREE) == []  # 3 leaves: all open
    assert len(tree_layout(wide, initial_collapsed(wide))["nodes"]) == 4


def test_widget_layout_trait_folds_and_the_svg_draws_it(widget: ScrubbingWidget) -> None:
    w = widget
    assert w.collapsed == [] and w.layout == tree_layout(w.tree, [])
    sent = Sent(w)
    w._on_frontend_message(w, {"type": "request", "id": 3, "kind": "fold",
                               "args": {"path": "output/L1H0", "folded": True}}, [])
    assert sent.messages[-1]["result"] == {} and w.collapsed == ["output/L1H0"]
    assert w.layout == tree_layout(w.tree, ["output/L1H0"])
    assert [w.tree[n["row"]]["path"] for n in w.layout["nodes"]] == ["output", "output/L1H0", "output/embed"]
    assert w.layout["nodes"][1]["hidden"] == 4
    svg = w._static_svg()
    assert svg is not None and ">+4</text>" in svg and "L0H1" not in svg
    # the picture's boxes stand where the layout says (x = centre - 48, y = 30 + centre - 18)
    for n in w.layout["nodes"]:
        assert f'<rect x="{n["x"] - 48:.1f}" y="{30 + n["y"] - 18:.1f}"' in svg
    # a node switched keeps the folds; a new hypothesis opens afresh
    w.set_kept("output/embed", False)
    assert w.collapsed == ["output/L1H0"] and w.layout["nodes"][1]["hidden"] == 4
    w.fold("output/L1H0", False)
    assert w.collapsed == [] and len(w.layout["nodes"]) == len(w.tree)
    with pytest.raises(HypothesisError, match="no node 'output/nope'"):
        w.fold("output/nope")
    w.fold("output/L1H0")
    w.evaluate(HypothesisNode("output", children=[HypothesisNode("embed", "token")]))
    assert w.collapsed == [] and [n["row"] for n in w.layout["nodes"]] == [0, 1]
