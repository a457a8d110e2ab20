"""The zoo: shipped models load offline and still do what their model cards say.

Every metric is re-measured here on freshly drawn held-out data (never read from a card), with the
thresholds of the issue. Scores are computed in this file from attention patterns and logits, not
with the package's own metric helpers, so a bug there cannot hide a bad model. Nothing is trained
and nothing is downloaded.

Runs under TransformerLens 3.x (``HookedTransformer``) and 4.x (``TransformerBridge``); the sae-lens
tests are skipped where sae-lens is not installed.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from mechwidgets import zoo
from mechwidgets.errors import MechWidgetsError, ZooError
from mechwidgets.zoo import tasks
from mechwidgets.zoo._loading import tl_major_version

try:
    import sae_lens  # noqa: F401

    HAS_SAE_LENS = True
except Exception:  # pragma: no cover - depends on the environment
    HAS_SAE_LENS = False

needs_sae_lens = pytest.mark.skipif(not HAS_SAE_LENS, reason="sae-lens is not installed")

SAE_HOOKS = [f"blocks.{layer}.hook_resid_pre" for layer in range(4)] + ["blocks.3.hook_resid_post"]


@pytest.fixture(scope="module", autouse=True)
def offline():
    """No network: the hub must never be asked."""
    keys = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    old = {k: os.environ.get(k) for k in keys}
    for k in keys:
        os.environ[k] = "1"
    torch.set_grad_enabled(False)
    yield
    torch.set_grad_enabled(True)
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="module")
def induction_2l():
    return zoo.load("induction-2l")


@pytest.fixture(scope="module")
def toy_lm():
    return zoo.load("toy-lm")


def tokens(model, text: str) -> torch.Tensor:
    return model.to_tokens(text, prepend_bos=True)[0]


def last_logits(model, prompts: list[str]) -> torch.Tensor:
    """Logits at the last position, batching prompts of equal token length together."""
    toks = [tokens(model, p) for p in prompts]
    out = [None] * len(prompts)
    for length in {len(t) for t in toks}:
        idx = [i for i, t in enumerate(toks) if len(t) == length]
        logits = model(torch.stack([toks[i] for i in idx]))[:, -1]
        for j, i in enumerate(idx):
            out[i] = logits[j]
    return torch.stack(out)


def token_id(model, s: str) -> int:
    ids = model.to_tokens(s, prepend_bos=False)[0]
    assert len(ids) == 1, f"{s!r} is not one token"
    return int(ids[0])


def attention_patterns(model, toks: torch.Tensor) -> torch.Tensor:
    """[n_layers, batch, n_heads, q, k]"""
    _, cache = model.run_with_cache(toks, names_filter=lambda n: n.endswith("hook_pattern"))
    return torch.stack([cache[f"blocks.{i}.attn.hook_pattern"] for i in range(model.cfg.n_layers)])


def repeated(model, n: int, half: int, seed: int, name: str) -> torch.Tensor:
    seqs = tasks.induction_sequences(n, length=half, seed=seed, model=name)
    toks = torch.stack([tokens(model, s.text) for s in seqs])
    assert toks.shape == (n, 1 + 2 * half)
    assert torch.equal(toks[:, 1:half + 1], toks[:, half + 1:])
    return toks


def head_scores(model, toks: torch.Tensor, half: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Previous-token and induction scores [n_layers, n_heads] (TransformerLens-style)."""
    pats = attention_patterns(model, toks)
    q = torch.arange(1, toks.shape[1])
    prev = pats[:, :, :, q, q - 1].mean(dim=(1, 3))
    q2 = torch.arange(half + 1, 2 * half + 1)  # repeated half; earlier occurrence at q - half
    ind = pats[:, :, :, q2, q2 - half + 1].mean(dim=(1, 3))
    return prev, ind


def half_losses(model, toks: torch.Tensor, half: int) -> tuple[float, float]:
    logits = model(toks)
    nll = F.cross_entropy(logits[:, :-1].transpose(1, 2), toks[:, 1:], reduction="none")
    # column j predicts token j + 1; first half: tokens 2..half; repeated: half+2..2*half
    return nll[:, 1:half].mean().item(), nll[:, half + 1:].mean().item()


# ------------------------------------------------------------------------------------------
# Registry, loading, tokenizers


def test_names_and_cards():
    assert zoo.names() == ["induction-2l", "toy-lm"]
    for name in zoo.names():
        card = zoo.model_card(name)
        for heading in ("## Architecture", "## Data", "## Training", "## Metrics",
                        "## Known circuits"):
            assert heading in card, (name, heading)
    assert "## Sparse autoencoders" in zoo.model_card("toy-lm")


@pytest.mark.parametrize("name", ["induction-2l", "toy-lm"])
def test_load_offline_eval_mode_with_tokenizer(name, induction_2l, toy_lm):
    model = {"induction-2l": induction_2l, "toy-lm": toy_lm}[name]
    if tl_major_version() >= 4:
        from transformer_lens.model_bridge import TransformerBridge

        assert isinstance(model, TransformerBridge)
    else:
        from transformer_lens import HookedTransformer

        assert isinstance(model, HookedTransformer)
    assert not model.training
    assert model.tokenizer is not None
    meta = json.loads((zoo.model_dir(name) / "config.json").read_text())
    cfg = meta["hooked_transformer_config"]
    assert model.cfg.n_layers == cfg["n_layers"]
    assert model.cfg.d_vocab == cfg["d_vocab"] == len(model.tokenizer.get_vocab())
    assert all(p.device.type == "cpu" for p in model.parameters())


def test_toy_lm_tokenizer_round_trip(toy_lm):
    prompt = "When Mary and John went to the store, John gave a drink to"
    assert toy_lm.to_str_tokens(prompt) == [
        "<|endoftext|>", "When", " Mary", " and", " John", " went", " to", " the", " store", ",",
        " John", " gave", " a", " drink", " to"]
    assert toy_lm.to_str_tokens("The war lasted from the year 1732 to the year 17",
                                prepend_bos=False)[-5:] == ["32", " to", " the", " year", " 17"]
    unk = toy_lm.tokenizer.convert_tokens_to_ids("<|unk|>")
    for text in tasks.sample_text(20, seed=7, n_segments=4):
        toks = toy_lm.to_tokens(text, truncate=False)[0]  # the tokenizer alone: no n_ctx cut
        assert toks[0].item() == toy_lm.tokenizer.convert_tokens_to_ids("<|endoftext|>")
        assert unk not in toks.tolist()
        assert toy_lm.to_string(toks[1:]) == text
    for y in range(100):
        assert len(toy_lm.to_tokens(f"{y:02d}", prepend_bos=False)[0]) == 1


def test_induction_2l_tokenizer_round_trip(induction_2l):
    text = "t0 t17 t125 t3"
    toks = tokens(induction_2l, text)
    assert toks.tolist() == [0, 1, 18, 126, 4]
    assert induction_2l.to_str_tokens(text, prepend_bos=False) == text.split()
    assert induction_2l.to_string(toks[1:]).split() == text.split()


def _reference_logits(folder: Path, toks: torch.Tensor) -> torch.Tensor:
    """A from-scratch forward pass over the shipped HookedTransformer-layout weights."""
    from safetensors.torch import load_file

    cfg = json.loads((folder / "config.json").read_text())["hooked_transformer_config"]
    w = load_file(str(folder / "model.safetensors"))

    def ln(x, p):
        x = x - x.mean(-1, keepdim=True)
        return x / (x.pow(2).mean(-1, keepdim=True) + 1e-5).sqrt() * w[p + ".w"] + w[p + ".b"]

    x = w["embed.W_E"][toks] + w["pos_embed.W_pos"][: toks.shape[1]]
    t = toks.shape[1]
    mask = torch.ones(t, t).triu(1).bool()
    for layer in range(cfg["n_layers"]):
        p = f"blocks.{layer}."
        h = ln(x, p + "ln1")
        q = torch.einsum("bpd,hde->bhpe", h, w[p + "attn.W_Q"]) + w[p + "attn.b_Q"][:, None]
        k = torch.einsum("bpd,hde->bhpe", h, w[p + "attn.W_K"]) + w[p + "attn.b_K"][:, None]
        v = torch.einsum("bpd,hde->bhpe", h, w[p + "attn.W_V"]) + w[p + "attn.b_V"][:, None]
        scores = (q @ k.transpose(-1, -2)) / math.sqrt(cfg["d_head"])
        z = scores.masked_fill(mask, float("-inf")).softmax(-1) @ v
        x = x + torch.einsum("bhpe,hed->bpd", z, w[p + "attn.W_O"]) + w[p + "attn.b_O"]
        if not cfg.get("attn_only"):
            h = ln(x, p + "ln2")
            x = x + F.gelu(h @ w[p + "mlp.W_in"] + w[p + "mlp.b_in"]) @ w[p + "mlp.W_out"] \
                + w[p + "mlp.b_out"]
    return ln(x, "ln_final") @ w["unembed.W_U"] + w["unembed.b_U"]


@pytest.mark.parametrize("name", ["induction-2l", "toy-lm"])
def test_logits_match_an_independent_forward(name, induction_2l, toy_lm):
    """Same weights, same function, under TL 3.x and under the 4.x bridge converter."""
    model = {"induction-2l": induction_2l, "toy-lm": toy_lm}[name]
    if name == "toy-lm":
        toks = torch.stack([tokens(model, p.clean) for p in tasks.ioi_pairs(4, seed=5,
                                                                              held_out=False)
                            if len(tokens(model, p.clean)) == len(tokens(model, tasks.ioi_pairs(
                                4, seed=5, held_out=False)[0].clean))])
    else:
        toks = repeated(model, 3, 40, seed=5, name="induction-2l")
    expected = _reference_logits(zoo.model_dir(name), toks)
    assert (model(toks) - expected).abs().max().item() <= 1e-4


def test_zoo_size_budget():
    total = sum(p.stat().st_size for p in Path(zoo.__file__).parent.rglob("*")
                if p.is_file() and "__pycache__" not in p.parts)
    assert total <= 15 * 1024 * 1024, total


# ------------------------------------------------------------------------------------------
# induction-2l


@pytest.mark.parametrize("half", [30, 50])
def test_induction_2l_heads_and_loss(induction_2l, half):
    """Segments longer than any in training (3-20 tokens); 50 is also a distance training never
    used (its distances are 3-39 and 61-110)."""
    toks = repeated(induction_2l, 32, half, seed=4242, name="induction-2l")
    prev, ind = head_scores(induction_2l, toks, half)
    assert prev[0].max().item() >= 0.5, prev
    assert ind[1].max().item() >= 0.5, ind
    first, second = half_losses(induction_2l, toks, half)
    assert first > math.log(tasks.INDUCTION_2L_N_TOKENS) - 0.3  # random tokens: ~uniform
    assert second < 0.25 * first, (first, second)


@pytest.mark.parametrize("distance", [20, 45, 60])
def test_induction_2l_repeats_at_other_distances(induction_2l, distance):
    """A 10-token segment of fresh random tokens repeated after random filler, at distances
    within training's (at most 70 apart; the card also reports 100, which it does not reach)."""
    gen = torch.Generator().manual_seed(distance)
    toks = torch.randint(1, tasks.INDUCTION_2L_N_TOKENS + 1, (32, 1 + distance + 10),
                         generator=gen)
    toks[:, 0] = 0
    toks[:, 1 + distance:] = toks[:, 1:11]
    pred = induction_2l(toks)[:, distance + 1:-1].argmax(-1)
    assert (pred == toks[:, distance + 2:]).float().mean().item() >= 0.8


# ------------------------------------------------------------------------------------------
# toy-lm tasks


def _ioi_held_out(toy_lm):
    pairs = tasks.ioi_pairs(200, seed=31337, held_out=True)
    assert all(tasks.is_held_out_pair(p.io, p.s) for p in pairs)
    assert all(tasks.is_held_out_template(p.intro, p.action) for p in pairs)
    logits = last_logits(toy_lm, [p.clean for p in pairs])
    io = torch.tensor([token_id(toy_lm, p.answer) for p in pairs])
    s = torch.tensor([token_id(toy_lm, p.wrong_answer) for p in pairs])
    return pairs, logits, io, s


def test_ioi_held_out_accuracy(toy_lm):
    _, logits, io, _ = _ioi_held_out(toy_lm)
    accuracy = (logits.argmax(-1) == io).float().mean().item()
    assert accuracy >= 0.9, accuracy


def test_ioi_held_out_logit_difference(toy_lm):
    """The IOI behaviour the demos and the circuit proofs stand on: a clear clean logit
    difference IO - S on held-out names and templates, gone in the ABC-corrupted prompts."""
    pairs, logits, io, s = _ioi_held_out(toy_lm)
    ar = torch.arange(len(pairs))
    corrupted = last_logits(toy_lm, [p.corrupted for p in pairs])
    clean_diff = (logits[ar, io] - logits[ar, s]).mean().item()
    corrupted_diff = (corrupted[ar, io] - corrupted[ar, s]).mean().item()
    assert clean_diff > 2.0 and abs(corrupted_diff) < 0.5 * clean_diff, (clean_diff,
                                                                         corrupted_diff)


def test_greater_than_mass(toy_lm):
    pairs = tasks.greater_than_pairs(200, seed=31337, held_out=True)
    probs = last_logits(toy_lm, [p.clean for p in pairs]).softmax(-1)
    yy = torch.tensor([token_id(toy_lm, f"{y:02d}") for y in range(100)])
    above = torch.arange(100)[None] > torch.tensor([p.year for p in pairs])[:, None]
    mass = (probs[:, yy] * above).sum(-1).mean().item()
    assert mass >= 0.8, mass
    # the corrupted prompt ("01") carries no threshold: mass spreads over all years
    corr = last_logits(toy_lm, [p.corrupted for p in pairs]).softmax(-1)[:, yy]
    assert (corr * above).sum(-1).mean().item() < mass


def test_toy_lm_card_says_what_it_does_on_induction(toy_lm):
    """The card says whether toy-lm has an induction head (the shipped one has none: the card
    sends readers to induction-2l), and what it says is true, re-measured here on fresh random
    word lists: a re-trained model that forms one gets a card that says so."""
    from mechwidgets.zoo.train import INDUCTION_HEAD_SCORE

    card = zoo.model_card("toy-lm")
    toks = repeated(toy_lm, 32, 20, seed=777, name="toy-lm")
    _, ind = head_scores(toy_lm, toks, 20)
    assert ("**No induction.**" in card) == (ind.max().item() < INDUCTION_HEAD_SCORE), (ind.max(), card[:600])
    assert "`induction-2l` is the zoo's" in card


def test_toy_lm_card_is_the_generators_output():
    """The card is what `zoo.train.toy_lm_card` writes from the stored config and metrics: no
    hand edits drift from the generator."""
    from mechwidgets.zoo import train

    folder = Path(zoo.__file__).parent / "toy-lm"
    cfg = json.loads((folder / "config.json").read_text())["hooked_transformer_config"]
    report = json.loads((folder / "metrics.json").read_text())
    assert train.toy_lm_card(cfg, report) == (folder / "README.md").read_text()


def test_toy_lm_facts(toy_lm):
    facts = tasks.fact_prompts("capital")
    logits = last_logits(toy_lm, [f.prompt for f in facts])
    hits = (logits.argmax(-1) == torch.tensor([token_id(toy_lm, f.answer) for f in facts]))
    assert hits.float().mean().item() >= 0.8


def test_toy_lm_agreement(toy_lm):
    pairs = tasks.agreement_pairs(100, seed=4)
    logits = last_logits(toy_lm, [p.clean for p in pairs])
    ar = torch.arange(len(pairs))
    good = torch.tensor([token_id(toy_lm, p.answer) for p in pairs])
    bad = torch.tensor([token_id(toy_lm, p.wrong_answer) for p in pairs])
    assert (logits[ar, good] > logits[ar, bad]).float().mean().item() >= 0.8


@pytest.mark.parametrize("kind", ["ioi", "greater_than", "agreement"])
def test_pairs_have_equal_token_counts(toy_lm, kind):
    if kind == "ioi":
        pairs = tasks.ioi_pairs(50, seed=1) + tasks.ioi_pairs(50, seed=2, held_out=False)
    elif kind == "greater_than":
        pairs = tasks.greater_than_pairs(50, seed=1)
    else:
        pairs = tasks.agreement_pairs(50, seed=1)
    for p in pairs:
        assert len(tokens(toy_lm, p.clean)) == len(tokens(toy_lm, p.corrupted)), p
        assert len(toy_lm.to_tokens(p.answer, prepend_bos=False)[0]) == 1
        assert len(toy_lm.to_tokens(p.wrong_answer, prepend_bos=False)[0]) == 1


def test_task_generators_are_deterministic_and_held_out():
    assert tasks.ioi_pairs(5, seed=3) == tasks.ioi_pairs(5, seed=3)
    assert tasks.sample_text(3, seed=3) == tasks.sample_text(3, seed=3)
    train = tasks.ioi_pairs(300, seed=0, held_out=False)
    assert not any(tasks.is_held_out_pair(p.io, p.s) for p in train)
    assert not any(tasks.is_held_out_template(p.intro, p.action) for p in train)
    for p in tasks.ioi_pairs(50, seed=0):
        assert len({p.io, p.s, *p.corrupted_names}) == 5
        assert p.clean.count(p.s) == 2 and p.clean.count(p.io) == 1
    # the training corpus's IOI segments never use a held-out template or name pair
    rng = tasks.training_rng(0)
    held_out_intros = [
        re.compile(re.escape(tasks.IOI_INTROS[i]).replace(r"\{A\}", r"\w+").replace(
            r"\{B\}", r"\w+").replace(r"\{PLACE\}", r"\w+").replace(r"\{OBJECT2\}", r"\w+"))
        for i in tasks.IOI_HELD_OUT_INTROS]
    assert held_out_intros[0].match(tasks.ioi_pairs(1, seed=0, template=(
        tasks.IOI_HELD_OUT_INTROS[0], 0))[0].clean)
    for _ in range(500):
        seg = tasks.segment(rng, "ioi")
        assert not any(h.match(seg) for h in held_out_intros), seg
        assert " offered " not in seg
        names = [w.strip(",.") for w in seg.split() if w.strip(",.") in tasks.NAMES]
        assert not tasks.is_held_out_pair(*sorted(set(names))), seg


# ------------------------------------------------------------------------------------------
# SAEs


@pytest.fixture(scope="module")
def simple_saes():
    return zoo.load_saes("toy-lm", use_sae_lens=False)


@pytest.fixture(scope="module")
def held_out_acts(toy_lm):
    """Residual-stream activations at non-BOS positions of held-out text."""
    texts = tasks.sample_text(120, seed=424242, n_segments=12)
    toks = [tokens(toy_lm, t)[: toy_lm.cfg.n_ctx] for t in texts]
    length = min(len(t) for t in toks)
    batch = torch.stack([t[:length] for t in toks])
    _, cache = toy_lm.run_with_cache(batch, names_filter=lambda n: n in SAE_HOOKS)
    return {h: cache[h][:, 1:].reshape(-1, cache[h].shape[-1]) for h in SAE_HOOKS}


def test_saes_keyed_by_hook(simple_saes):
    assert list(simple_saes) == SAE_HOOKS
    for hook, sae in simple_saes.items():
        assert isinstance(sae, zoo.SimpleSAE)
        assert sae.hook_name == hook == sae.cfg.metadata.hook_name
        assert (sae.d_in, sae.W_enc.shape, sae.W_dec.shape) == (
            128, (128, sae.d_sae), (sae.d_sae, 128))
        assert sae.b_enc.shape == (sae.d_sae,) and sae.b_dec.shape == (128,)
    assert zoo.load_saes("induction-2l") == {}


def test_sae_reconstruction_thresholds(simple_saes, held_out_acts):
    for hook, sae in simple_saes.items():
        x = held_out_acts[hook]
        f = sae.encode(x)
        x_hat = sae.decode(f)
        ev = 1 - ((x - x_hat) ** 2).sum() / ((x - x.mean(0)) ** 2).sum()
        l0 = (f != 0).sum(-1).float().mean()
        dead = 1 - (f != 0).any(0).float().mean()
        assert ev.item() >= 0.85, (hook, ev)
        assert l0.item() <= 32, (hook, l0)
        assert dead.item() <= 0.10, (hook, dead)


@needs_sae_lens
def test_saes_load_with_sae_lens_and_agree(simple_saes, held_out_acts):
    from sae_lens import SAE

    lens_saes = zoo.load_saes("toy-lm", use_sae_lens=True)
    assert list(lens_saes) == SAE_HOOKS
    for hook, sae in lens_saes.items():
        assert isinstance(sae, SAE)
        assert sae.cfg.architecture() == "topk"
        assert sae.cfg.metadata.hook_name == hook
        direct = SAE.load_from_disk(str(zoo.model_dir("toy-lm") / "saes" / hook))
        x = held_out_acts[hook][:2000]
        simple = simple_saes[hook]
        torch.testing.assert_close(sae.encode(x), simple.encode(x), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(direct.encode(x), simple.encode(x), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(sae.decode(sae.encode(x)), simple.decode(simple.encode(x)),
                                   atol=1e-5, rtol=1e-5)


@needs_sae_lens
def test_sae_files_are_what_sae_lens_writes(tmp_path):
    """Loading with sae-lens and saving again reproduces the shipped files' content."""
    from sae_lens import SAE
    from safetensors.torch import load_file

    src = zoo.model_dir("toy-lm") / "saes" / SAE_HOOKS[0]
    SAE.load_from_disk(str(src)).save_model(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in src.iterdir())
    shipped = json.loads((src / "cfg.json").read_text())
    resaved = json.loads((tmp_path / "cfg.json").read_text())
    for d in (shipped, resaved):
        d["metadata"].pop("sae_lens_version"), d["metadata"].pop("sae_lens_training_version")
    assert shipped == resaved
    a, b = load_file(str(src / "sae_weights.safetensors")), load_file(
        str(tmp_path / "sae_weights.safetensors"))
    assert a.keys() == b.keys() == {"W_enc", "b_enc", "W_dec", "b_dec"}
    for k in a:
        assert torch.equal(a[k], b[k])


# ------------------------------------------------------------------------------------------
# Bad input


def test_unknown_name_lists_known_names():
    for bad in ("gpt2", "", None):
        with pytest.raises(ZooError) as err:
            zoo.load(bad)
        assert isinstance(err.value, MechWidgetsError)
        assert "induction-2l" in str(err.value) and "toy-lm" in str(err.value)
    with pytest.raises(ZooError, match="toy-lm"):
        zoo.load_saes("toy_lm")


@pytest.fixture
def zoo_copy(tmp_path, monkeypatch):
    """A private copy of the zoo folders for breaking files in."""
    for name in zoo.names():
        shutil.copytree(zoo.model_dir(name), tmp_path / name)
    monkeypatch.setattr(zoo, "ZOO_DIR", tmp_path)
    return tmp_path


def test_copy_loads(zoo_copy):
    assert zoo.model_dir("induction-2l") == zoo_copy / "induction-2l"
    zoo.load("induction-2l")


@pytest.mark.parametrize("damage", ["missing", "truncated", "flipped"])
def test_broken_weight_file_names_the_file(zoo_copy, damage):
    path = zoo_copy / "induction-2l" / "model.safetensors"
    data = path.read_bytes()
    if damage == "missing":
        path.unlink()
    elif damage == "truncated":
        path.write_bytes(data[: len(data) // 2])
    else:  # a bit flip deep inside the tensor data: still parses, must still be caught
        i = len(data) - 100
        path.write_bytes(data[:i] + bytes([data[i] ^ 0x40]) + data[i + 1:])
    with pytest.raises(ZooError, match=r"model\.safetensors") as err:
        zoo.load("induction-2l")
    assert str(path) in str(err.value)


@pytest.mark.parametrize("damage", ["missing_weights", "flipped_weights", "bad_cfg"])
@pytest.mark.parametrize("use_sae_lens", [False, pytest.param(True, marks=needs_sae_lens)])
def test_broken_sae_file_names_the_file(zoo_copy, damage, use_sae_lens):
    folder = zoo_copy / "toy-lm" / "saes" / SAE_HOOKS[1]
    if damage == "missing_weights":
        (folder / "sae_weights.safetensors").unlink()
        name = "sae_weights.safetensors"
    elif damage == "flipped_weights":
        path = folder / "sae_weights.safetensors"
        data = path.read_bytes()
        path.write_bytes(data[:-50] + bytes([data[-50] ^ 0x10]) + data[-49:])
        name = "sae_weights.safetensors"
    else:
        (folder / "cfg.json").write_text("{not json")
        name = "cfg.json"
    with pytest.raises(ZooError, match=name):
        zoo.load_saes("toy-lm", use_sae_lens=use_sae_lens)


def test_missing_tokenizer_and_config(zoo_copy):
    (zoo_copy / "induction-2l" / "tokenizer" / "tokenizer.json").unlink()
    with pytest.raises(ZooError, match=r"tokenizer\.json"):
        zoo.load("induction-2l")
    (zoo_copy / "toy-lm" / "config.json").unlink()
    with pytest.raises(ZooError, match=r"config\.json"):
        zoo.load("toy-lm")
