"""The zoo through every backend (issue 18): the same trained weights as a TransformerLens model,
a Hugging Face GPT-2 and an nnsight model give the same logits, and a TransformerBridge booted
over the Hugging Face model (TransformerLens 4.x) gives them too."""

from __future__ import annotations

import pytest
import torch

from mechwidgets import zoo
from mechwidgets.errors import ZooError
from mechwidgets.zoo import tasks
from mechwidgets.zoo._loading import tl_major_version

TOL = 1e-4


@pytest.fixture(scope="module")
def tl_model():
    return zoo.load("toy-lm")


@pytest.fixture(scope="module")
def batch(tl_model):
    """IOI prompts of one length and a generated-text row, as token ids (BOS first)."""
    rows = [tl_model.to_tokens(p.clean) for p in tasks.ioi_pairs(12, seed=3)]
    n = rows[0].shape[1]
    toks = torch.cat([r for r in rows if r.shape[1] == n])
    assert toks.shape[0] >= 2
    text = tl_model.to_tokens(tasks.sample_text(1, seed=5)[0], truncate=False)[:, :40]
    return toks, text


def test_hf_logits_equal_transformer_lens(tl_model, batch):
    hf = zoo.load("toy-lm", backend="hf")
    assert type(hf).__name__ == "GPT2LMHeadModel" and not hf.training
    assert hf.lm_head.weight is hf.transformer.wte.weight  # tied, as GPT-2's
    for toks in batch:
        with torch.no_grad():
            diff = (hf(toks).logits - tl_model(toks)).abs().max().item()
        assert diff <= TOL, diff
    # the zoo's tokenizer; TransformerLens, not the tokenizer, puts BOS in front
    assert hf.tokenizer.get_vocab() == tl_model.tokenizer.get_vocab()
    assert hf.tokenizer.bos_token_id == tl_model.tokenizer.bos_token_id == int(batch[0][0, 0])


def test_nnsight_trace_equals_transformer_lens(tl_model, batch):
    import nnsight  # imported here, not at collection: importing nnsight breaks a later `import marimo`

    lm = zoo.load("toy-lm", backend="nnsight")
    toks = batch[0]
    # a value read inside the trace (the last block's MLP output), and the logits
    with lm.trace(toks):
        mlp = nnsight.save(lm.transformer.h[3].mlp.output)
        logits = nnsight.save(lm.output.logits)
    _, cache = tl_model.run_with_cache(toks, names_filter="blocks.3.hook_mlp_out")
    assert (logits - tl_model(toks)).abs().max().item() <= TOL
    assert (mlp - cache["blocks.3.hook_mlp_out"]).abs().max().item() <= TOL


@pytest.mark.skipif(tl_major_version() < 4, reason="TransformerBridge.boot_transformers is TransformerLens 4.x")
def test_bridge_over_the_hf_model_equals_the_zoo_bridge(tl_model, batch):
    from transformer_lens.model_bridge import TransformerBridge

    hf = zoo.load("toy-lm", backend="hf")
    bridge = TransformerBridge.boot_transformers("toy-lm", hf_model=hf, tokenizer=hf.tokenizer, device="cpu")
    for toks in batch:
        with torch.no_grad():
            assert (bridge(toks) - tl_model(toks)).abs().max().item() <= TOL


def test_backend_errors():
    with pytest.raises(ZooError, match="attention-only"):
        zoo.load("induction-2l", backend="hf")
    with pytest.raises(ZooError, match="unknown backend 'jax': use one of transformer_lens, hf, nnsight"):
        zoo.load("toy-lm", backend="jax")
