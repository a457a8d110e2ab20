"""The circuit and scrubbing widgets on a real JupyterLab page: move the threshold slider, click a
node, switch to EAP-IG and run signed ACDC in the circuit widget; switch a node of a causal
scrubbing hypothesis to resampled; and check in the kernel, against computations run there
independently of the widget, that Python computed each step.

Models: the zoo's ``toy-lm`` (IOI) and ``induction-2l`` when they load, otherwise tiny random
models. Screenshots: ``test-artifacts/test_*_in_jupyterlab-*.png``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from harness import LabPage, js_fmt
from playwright.sync_api import expect

TESTS = Path(__file__).resolve().parent.parent

CIRCUIT_SETUP = f"""\
import os, sys, pathlib, tempfile, warnings
os.environ.setdefault("HF_HUB_OFFLINE", "1")
warnings.filterwarnings("ignore", category=DeprecationWarning)
from mechwidgets import show_circuit
try:
    from mechwidgets import zoo
    model = zoo.load("toy-lm")
    pairs = zoo.tasks.ioi_pairs(4, seed=0)
    clean, corrupted = [p.clean for p in pairs], [p.corrupted for p in pairs]
    answers, wrong = [p.answer for p in pairs], [p.wrong_answer for p in pairs]
    source = "zoo toy-lm"
except Exception as exc:
    sys.path.insert(0, {str(TESTS)!r})
    from support import build_tokenizer, tiny_model
    model = tiny_model(build_tokenizer(pathlib.Path(tempfile.mkdtemp())))
    clean, corrupted = ["When Mary and John went to the store , John gave a drink to"], ["When A and B went to the store , C gave a drink to"]
    answers, wrong = [" Mary"], [" John"]
    source = f"tiny random model (zoo: {{type(exc).__name__}})"
print("model:", source)
w = show_circuit(model, clean, corrupted, answer=answers, wrong_answer=wrong)
w
"""


def test_circuit_in_jupyterlab(lab_page: LabPage, screenshot: Any) -> None:
    lab = lab_page
    widget = lab.open_widget("circuit.ipynb", CIRCUIT_SETUP, ".mw-circuit")
    n_nodes = lab.py_json("len(w.nodes)")
    expect(widget.locator(".mw-circuit-node")).to_have_count(n_nodes)
    faith = widget.locator('[data-testid="faithfulness"]')
    expect(faith).to_contain_text(f"faithfulness {js_fmt(lab.py_json('w.faithfulness')['normalized'], 3)}")

    # the slider to its end (threshold 0): every edge, and Python measures the full graph exactly
    widget.locator('[data-testid="threshold-slider"]').focus()
    lab.page.keyboard.press("Home")
    lab.wait_until("w.faithfulness['n_edges'] == w.n_edges_total")
    expect(faith).to_contain_text("faithfulness 1.000")

    # click the head with the strongest edge into the logits: its patching detail, computed in
    # Python, equals a circuit_faithfulness run here with every outgoing edge of that head removed
    lab.run_code(
        "from mechwidgets.analysis.circuits import circuit_faithfulness, edge_attribution_patching\n"
        "top = next(e.split('->')[0] for e, _ in w.result.top_edges(200) if e.startswith('a') and e.endswith('->logits'))\n"
        "names = w.result.graph.edge_names()\n"
        "kept = [n for n in names if not n.startswith(top + '->')]\n"
        "ref = circuit_faithfulness(model, clean, corrupted, kept, answer=answers, wrong_answer=wrong)\n"
    )
    top = lab.py_json("top")
    widget.locator(f'[data-testid="node-{top}"]').click()
    expect(widget.locator('[data-testid="detail-title"]')).to_contain_text(f"{top} —", timeout=60_000)
    lab.wait_until(f"w.selected == {top!r}")
    got = lab.py_json("{'effect': w.last_node_effect.output, 'ref': ref.metric}")
    assert abs(got["effect"] - got["ref"]) < 1e-4, got
    expect(widget.locator('[data-testid="node-effects"]')).to_contain_text(f"logit_diff → {js_fmt(got['effect'], 3)}")
    widget.scroll_into_view_if_needed()
    screenshot(lab.page, "node")

    # EAP-IG from its button: the scores equal edge_attribution_patching(ig_steps=5) run here
    widget.locator('[data-testid="eap-ig-button"]').click()
    expect(widget.locator('[data-testid="circuit-title"]')).to_contain_text("EAP-IG", timeout=60_000)
    lab.wait_until("w.method == 'eap-ig'")
    diff = lab.py_json(
        "float((w.result.scores - edge_attribution_patching(model, clean, corrupted, answer=answers, "
        "wrong_answer=wrong, ig_steps=5).scores).abs().max())"
    )
    assert diff < 1e-4, diff

    # signed ACDC at a typed threshold: progress, then its circuit drawn and measured
    tau = lab.py_json("round(0.05 * abs(w.patcher.clean_metric - w.patcher.corrupted_metric), 4)")
    widget.locator('[data-testid="acdc-threshold"]').fill(str(tau))
    widget.locator('[data-testid="acdc-signed"]').check()
    widget.locator('[data-testid="acdc-button"]').click()
    expect(widget.locator('[data-testid="circuit-title"]')).to_contain_text(f"ACDC (signed, threshold {js_fmt(tau, 3)})",
                                                                             timeout=120_000)
    lab.wait_until("w.method == 'acdc' and w.acdc_signed and not w.progress")
    state = lab.py_json("{'n': int(w.result.circuit().sum()), 'f': w.faithfulness, 'm': w.result.circuit_metric}")
    assert state["f"]["n_edges"] == state["n"] and abs(state["f"]["metric"] - state["m"]) < 1e-4
    expect(faith).to_contain_text(f"faithfulness {js_fmt(state['f']['normalized'], 3)}")
    expect(widget).to_have_attribute("data-visible-edges", str(state["n"]))
    widget.scroll_into_view_if_needed()
    screenshot(lab.page, "signed-acdc")

    # bad input: a negative threshold; the banner says so and the kernel lives on
    widget.locator('[data-testid="acdc-threshold"]').fill("-1")
    widget.locator('[data-testid="acdc-button"]').click()
    expect(widget.locator(".mw-error")).to_contain_text("finite number >= 0", timeout=60_000)
    assert lab.py_json("w.method") == "acdc"
    assert lab.guard.blocked == []  # type: ignore[attr-defined]


SCRUB_SETUP = f"""\
import os, sys, pathlib, tempfile, warnings
os.environ.setdefault("HF_HUB_OFFLINE", "1")
warnings.filterwarnings("ignore", category=DeprecationWarning)
import torch
from mechwidgets import show_scrubbing
from mechwidgets.analysis.scrubbing import induction_heads, induction_hypothesis
try:
    from mechwidgets import zoo
    model = zoo.load("induction-2l")
    data = zoo.tasks.induction_sequences(128, length=20, seed=1, model="induction-2l")
    source = "zoo induction-2l"
except Exception as exc:
    sys.path.insert(0, {str(TESTS)!r})
    from support import build_tokenizer, tiny_model
    model = tiny_model(build_tokenizer(pathlib.Path(tempfile.mkdtemp())))
    g = torch.Generator().manual_seed(0)
    half = torch.randint(5, 40, (128, 10), generator=g)
    data = torch.cat([torch.zeros(128, 1, dtype=torch.long), half, half], 1)
    source = f"tiny random model (zoo: {{type(exc).__name__}})"
print("model:", source)
prev, ind = induction_heads(model)
w = show_scrubbing(model, induction_hypothesis(prev, ind, key_feature="identity", n_heads=model.cfg.n_heads), data)
w
"""


def test_scrubbing_in_jupyterlab(lab_page: LabPage, screenshot: Any) -> None:
    lab = lab_page
    widget = lab.open_widget("scrubbing.ipynb", SCRUB_SETUP, ".mw-scrubbing")
    # a wide tree opens with the heads' q/k/v subtrees collapsed: every node down to them shows
    shallow = lab.py_json("[r['path'] for r in w.tree if r['path'].count('/') <= 2]")
    for p in shallow:
        expect(widget.get_by_test_id(f"node-{p}")).to_be_visible()
    first = lab.py_json("{'f': w.last_result.fraction, 's': w.last_result.fraction_std}")
    expect(widget.get_by_test_id("recovered-text")).to_have_text(
        f"{js_fmt(100 * first['f'], 1)}% ± {js_fmt(100 * first['s'], 1)}%")

    # switch the first node under the output to resampled: the kernel re-runs the scrubbing
    path = lab.py_json("[r['path'] for r in w.tree if r['path'].count('/') == 1][0]")
    widget.get_by_test_id(f"toggle-{path}").click()
    lab.wait_until("len(w.history) == 2 and not w._jobs")
    second = lab.py_json(
        "{'f': w.last_result.fraction, 's': w.last_result.fraction_std, 'label': w.history[-1]['label'],"
        " 'kept': w.last_result.hypothesis.find(" + repr(path) + ").kept}"
    )
    assert second["label"] == f"{path}: kept → resampled" and second["kept"] is False
    expect(widget.get_by_test_id("recovered-text")).to_have_text(
        f"{js_fmt(100 * second['f'], 1)}% ± {js_fmt(100 * second['s'], 1)}%")
    expect(widget.locator('[data-testid="history-table"] tbody tr')).to_have_count(2)
    # the same hypothesis evaluated here, outside the widget, gives the same fraction
    again = lab.py_json("w.evaluate(w.last_result.hypothesis, label='again').fraction")
    assert abs(again - second["f"]) < 1e-6, (again, second)
    widget.scroll_into_view_if_needed()
    screenshot(lab.page, "resampled")
    assert lab.guard.blocked == []  # type: ignore[attr-defined]
