"""Circuits under TransformerLens 4.x: EAP, EAP-IG, ACDC and faithfulness on a TransformerBridge
equal the same analyses under TransformerLens 3.x on the same trained weights (the zoo's toy-lm).

The 3.x numbers are computed, not stored: the test starts the 3.x venv's Python (``.venv`` beside
``.venv-tl4``, both built by ``make test``; ``MECHWIDGETS_TL3_PYTHON`` names another) on this
very file, which runs :func:`analyses` on toy-lm as a ``HookedTransformer`` there and writes
JSON to a temporary folder, while the test runs the same analyses through ``show_circuit`` on
the ``TransformerBridge`` here. A committed fixture would go stale with the weights or the code,
and toy-lm's bridge (``boot_native``) supports neither ``use_split_qkv_input`` nor
``use_attn_result``, so TransformerLens 4's own per-head hooks cannot check it directly. The 3.x
side is checked against TransformerLens 3's split q/k/v inputs and per-head results by
tests/test_circuits.py; and on a Hugging Face GPT-2 wrapped by ``boot_transformers`` (whose
attention has them) the second test checks the bridge's numbers against TransformerLens 4's own
per-head hooks, with test_circuits's hand-written EAP and patching.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
#: toy-lm IOI pairs (the training templates, as in test_circuits's IOI proof), few for speed.
N_PAIRS = 4
#: ACDC's threshold (|change| rule), in logit difference: about 1.5% of these pairs' gap.
ACDC_THRESHOLD = 0.15


def ioi() -> tuple[list[str], list[str], list[str], list[str]]:
    from mechwidgets.zoo import tasks

    pairs = tasks.ioi_pairs(N_PAIRS, seed=0, held_out=False)
    return ([p.clean for p in pairs], [p.corrupted for p in pairs], [p.answer for p in pairs],
            [p.wrong_answer for p in pairs])


def analyses() -> dict[str, Any]:
    """EAP, EAP-IG, ACDC and faithfulness on toy-lm with the functions of analysis.circuits."""
    from mechwidgets import zoo
    from mechwidgets._model import tl_major_version
    from mechwidgets._steps import run_to_end
    from mechwidgets.analysis.circuits import IG_STEPS, EdgePatcher

    model = zoo.load("toy-lm")
    clean, corrupted, answers, wrong = ioi()
    patcher = EdgePatcher(model, clean, corrupted, answer=answers, wrong_answer=wrong)
    eap = patcher.result("eap")
    acdc = run_to_end(patcher.acdc_steps(ACDC_THRESHOLD))
    top = eap.circuit(eap.threshold_for(eap.n_edges // 10))
    return {
        "tl_major": tl_major_version(),
        "model": type(model).__name__,
        "clean_metric": patcher.clean_metric,
        "corrupted_metric": patcher.corrupted_metric,
        "eap": eap.scores.tolist(),
        "eap_ig": patcher.eap_ig_scores(IG_STEPS).tolist(),
        "acdc": acdc.scores.tolist(),
        "acdc_kept": acdc.circuit().tolist(),
        "acdc_metric": acdc.circuit_metric,
        "eap_top_faithfulness": patcher.faithfulness(top).metric,
        "edge_names": eap.graph.edge_names(),
    }


def tl3_python() -> Path | None:
    given = os.environ.get("MECHWIDGETS_TL3_PYTHON")
    path = Path(given) if given else ROOT / ".venv" / "bin" / "python"
    return path if path.exists() else None


def test_circuits_on_a_bridge_equal_those_under_tl3(tmp_path: Path) -> None:
    """EAP and EAP-IG scores, ACDC's kept edges, scores and circuit metric, and a circuit's
    faithfulness on toy-lm: the TransformerBridge (4.x, through show_circuit) equals the
    HookedTransformer (3.x, through EdgePatcher) to 1e-4; the bridge is left as it was."""
    from support import TL3, assert_unchanged, snapshot

    if TL3:
        pytest.skip("runs under TransformerLens 4.x (make test-tl4) against a 3.x subprocess")
    python = tl3_python()
    if python is None:
        pytest.skip(f"no TransformerLens 3.x venv at {ROOT / '.venv'} (make test builds it; or set "
                    f"MECHWIDGETS_TL3_PYTHON)")
    from mechwidgets import zoo
    from mechwidgets._model import hook_count
    from mechwidgets.widgets.circuit import show_circuit

    out = tmp_path / "tl3.json"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
           "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    # the 3.x side runs meanwhile, in its own process
    proc = subprocess.Popen([str(python), __file__, str(out)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        model = zoo.load("toy-lm")
        assert type(model).__name__ == "TransformerBridge"
        before = snapshot(model)
        clean, corrupted, answers, wrong = ioi()
        w = show_circuit(model, clean, corrupted, answer=answers, wrong_answer=wrong)
        eap = w.result.scores.clone()
        f = w.keep_top(w.n_edges_total // 10)
        w.use_eap(ig=True)  # the widget's EAP-IG: IG_STEPS steps, as analyses() takes
        eap_ig = w.result.scores.clone()
        w.run_acdc(ACDC_THRESHOLD)
        acdc = w.result
        assert hook_count(model) == 0 and not model.cfg.use_hook_mlp_in
        assert_unchanged(model, before)
        log, _ = proc.communicate(timeout=600)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == 0, f"the TransformerLens 3.x run failed:\n{log}"
    tl3 = json.loads(out.read_text())
    assert tl3["tl_major"] == 3 and tl3["model"] == "HookedTransformer"
    assert tl3["edge_names"] == acdc.graph.edge_names()
    assert w.patcher.clean_metric == pytest.approx(tl3["clean_metric"], abs=1e-4)
    assert w.patcher.corrupted_metric == pytest.approx(tl3["corrupted_metric"], abs=1e-4)
    assert abs(tl3["clean_metric"] - tl3["corrupted_metric"]) > 1.0  # a real behaviour to explain
    np.testing.assert_allclose(eap.numpy(), tl3["eap"], rtol=0, atol=1e-4)
    np.testing.assert_allclose(eap_ig.numpy(), tl3["eap_ig"], rtol=0, atol=1e-4)
    assert float(eap.abs().max()) > 1.0 and not np.allclose(tl3["eap"], tl3["eap_ig"], atol=1e-2)
    kept = acdc.circuit()
    assert kept.tolist() == tl3["acdc_kept"]
    assert 0 < int(kept.sum()) < acdc.n_edges  # pruned, not trivially all or nothing
    np.testing.assert_allclose(acdc.scores.numpy(), tl3["acdc"], rtol=0, atol=1e-4)
    assert acdc.circuit_metric == pytest.approx(tl3["acdc_metric"], abs=1e-4)
    assert w.faithfulness["metric"] == pytest.approx(tl3["acdc_metric"], abs=1e-4)
    assert f.metric == pytest.approx(tl3["eap_top_faithfulness"], abs=1e-4)


def test_eap_and_patching_on_a_hugging_face_bridge_equal_tl4s_own_per_head_hooks(tmp_path: Path) -> None:
    """A random GPT-2 (2 layers, 4 heads, random biases and norm weights) wrapped by
    ``TransformerBridge.boot_transformers``: EAP, EAP-IG and patched forwards equal the
    hand-written computations of test_circuits on TransformerLens 4's own split q/k/v inputs
    (``hook_q_input``...), per-head results (``hook_result``) and ``hook_mlp_in``; the model is
    left as it was."""
    import torch
    from support import TL3, assert_unchanged, build_tokenizer, snapshot
    from test_circuits import CLEAN, CORRUPTED, hand_eap, hand_hooks_on, hand_patch, removed_mask

    if TL3:
        pytest.skip("TransformerBridge is TransformerLens 4.x (make test-tl4)")
    from transformer_lens.model_bridge import TransformerBridge
    from transformers import GPT2Config, GPT2LMHeadModel

    from mechwidgets.analysis.circuits import EdgePatcher

    tok = build_tokenizer(tmp_path)
    torch.manual_seed(0)
    hf = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=32, n_head=4, vocab_size=len(tok), n_positions=32))
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for param in hf.parameters():
            param.add_(0.3 * torch.randn(param.shape, generator=gen))
    model = TransformerBridge.boot_transformers("gpt2", hf_model=hf.eval(), tokenizer=tok, device="cpu")
    before = snapshot(model)
    p = EdgePatcher(model, CLEAN, CORRUPTED, answer=" Mary", wrong_answer=" John")
    eap, ig = p.result("eap"), p.eap_ig_scores(3)
    edges = ["embed->a0.h0.v", "a0.h0->logits", "m0->a1.h1.q", "a0.h2->a1.h3.k", "a1.h1->m1", "a0.h3->m0"]
    patched = p.patched_metric(removed_mask(p, edges))
    assert_unchanged(model, before)
    hand_hooks_on(model)
    names = eap.graph.edge_names()
    np.testing.assert_allclose(eap.scores.numpy(), hand_eap(model, names), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(ig.numpy(), hand_eap(model, names, 3), rtol=1e-4, atol=1e-5)
    assert float(eap.scores.abs().max()) > 0.1 and not np.allclose(eap.scores.numpy(), ig.numpy(), atol=1e-3)
    assert patched == pytest.approx(hand_patch(model, edges), abs=2e-5)
    assert abs(patched - p.clean_metric) > 1e-2  # the patch does something


if __name__ == "__main__":  # the 3.x side: python tests/test_circuits_tl4.py OUT.json
    import torch

    torch.set_num_threads(1)
    Path(sys.argv[1]).write_text(json.dumps(analyses()))
