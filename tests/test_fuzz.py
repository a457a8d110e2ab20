"""Fuzz every widget's message handler with random and hostile requests from the page.

For each widget, a seeded stream of :data:`N_MESSAGES` messages goes through
``_on_frontend_message`` as the page sends them: well-formed requests (with a budget for those
that run the model), requests with an argument dropped, added, of the wrong type, ``None``, NaN,
infinite, huge, out of range by one, a dict where a string goes, a list where a number goes;
unknown kinds, the Python-only handlers (``set_corrupted_tokens_``) and the names of other
methods; arguments that are not an object, ids that are not strings, cancels of anything.

Every message must be answered without the handler raising (nothing is logged as an error),
every request gets a reply for its id, **no** reply says "Unexpected error" (each error is a
:class:`~mechwidgets.errors.MechWidgetsError` whose message says what to fix), the model's
weights, modes and hooks are as before (``support.snapshot``), no hook of ours is left, and the
widget still answers a good request at the end. Most hostile messages are refused by the
requests' declarations before any handler runs (``_args`` / ``_requests``), which keeps the file
fast; the count of each outcome is printed (``pytest -s``).
"""

from __future__ import annotations

import logging
import math
import random
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from support import assert_unchanged, snapshot

from mechwidgets import show_attention, show_circuit, show_features, show_patching, zoo
from mechwidgets._model import hook_count
from mechwidgets.widgets._requests import page_requests

#: Messages per widget (CI: at least 2,000 each).
N_MESSAGES = 2000

PROMPT = "When Mary and John went to the store, John gave a drink to"
CORRUPTED = "When Mary and John went to the store, Mary gave a drink to"

HOSTILE: list[Any] = [
    None, True, False, 0, -1, 1, 2, 3, 7, 10**30, -(10**30), 2**63, 1.5, -0.0, 1e308,
    math.nan, math.inf, -math.inf, "", "0", "a", " Mary", "x" * 50_000, "\x00", "__proto__",
    [], [0], [0, 0], [[0, 0]], [None], [[1, 2, 3]], ["a", "b"], [0] * 5000,
    {}, {"a": 1}, {"sae": 0}, {"layer": 0, "head": 0}, {"__proto__": {}}, {"kept": "yes"},
]
#: Kinds no page may send: unknown ones, Python-only handlers, other attributes of a widget.
BAD_KINDS: list[Any] = [
    "set_corrupted_tokens_", "no_such_kind", "", "__init__", "close", "_call", "handler",
    "send", "__class__", "None", "req_ablate", None, 5, ["ablate"], {"kind": "ablate"},
]

Gen = Callable[[random.Random, Any], dict[str, Any]]


class Spec:
    """How to fuzz one widget: a valid-argument generator per request kind, and how many valid
    requests of each kind may reach the handler (the ones that run the model are budgeted)."""

    def __init__(self, widget: Any, model: Any, valid: dict[str, Gen], budget: dict[str, int]) -> None:
        self.widget, self.model, self.valid, self.budget = widget, model, valid, dict(budget)


def _mutate(rng: random.Random, value: Any) -> Any:
    """A hostile variant of a value: another type, a boundary, or a nested part replaced."""
    r = rng.random()
    if isinstance(value, bool) or value is None:
        return rng.choice(HOSTILE)
    if isinstance(value, int) and r < 0.4:
        return rng.choice([value + 1, value - 1, -value - 1, value + 10**6, float(value), str(value)])
    if isinstance(value, list) and value and r < 0.5:
        out = list(value)
        i = rng.randrange(len(out))
        out[i] = _mutate(rng, out[i])
        return out
    if isinstance(value, dict) and value and r < 0.5:
        out = dict(value)
        key = rng.choice(list(out))
        if rng.random() < 0.3:
            del out[key]
        else:
            out[key] = _mutate(rng, out[key])
        if rng.random() < 0.2:
            out[rng.choice(["extra", "__proto__", "mode", "x"])] = rng.choice(HOSTILE)
        return out
    return rng.choice(HOSTILE)


def _hostile_args(rng: random.Random, args: dict[str, Any]) -> Any:
    """Valid arguments made hostile: an argument dropped, added, or replaced (once or more)."""
    out = dict(args)
    for _ in range(rng.choice([1, 1, 1, 2, 3])):
        r = rng.random()
        if r < 0.15 and out:
            del out[rng.choice(list(out))]
        elif r < 0.3:
            out[rng.choice(["extra", "hypothesis", "tokens", "self", "kwargs", "__class__"])] = rng.choice(HOSTILE)
        elif out:
            key = rng.choice(list(out))
            out[key] = _mutate(rng, out[key])
    return out


def messages(rng: random.Random, spec: Spec, n: int) -> Iterator[tuple[str, dict[str, Any]]]:
    """``n`` messages: (what kind of message it is, the message)."""
    kinds = list(spec.valid)
    for i in range(n):
        r = rng.random()
        rid: Any = f"f{i}" if rng.random() > 0.03 else rng.choice([None, 7, 1.5, {"a": 1}, [1]])
        if r < 0.06:
            args = rng.choice([{}, {"tokens": [[0, 1]]}, {"layer": 0}, rng.choice(HOSTILE)])
            yield "bad kind", {"type": "request", "id": rid, "kind": rng.choice(BAD_KINDS), "args": args}
        elif r < 0.09:
            kind = rng.choice(kinds)
            yield "args not an object", {"type": "request", "id": rid, "kind": kind,
                                         "args": rng.choice([[1, 2], "x", 3, 1.5, True, [{"a": 1}]])}
        elif r < 0.11:
            yield "cancel", {"type": "cancel", "kind": rng.choice(kinds + BAD_KINDS), "id": rng.choice([rid, None, 0])}
        elif r < 0.12:
            yield "odd envelope", rng.choice([
                {"type": "request"}, {"type": "reply", "id": rid}, {"kind": "x"}, {"type": None},
                {"type": "request", "id": rid, "kind": rng.choice(kinds)},  # no args: {} (may be fine)
            ])
        else:
            kind = rng.choice(kinds)
            args = spec.valid[kind](rng, spec.widget)
            if spec.budget.get(kind, 10**9) > 0 and rng.random() < 0.25:
                spec.budget[kind] = spec.budget.get(kind, 10**9) - 1
                yield "valid", {"type": "request", "id": rid, "kind": kind, "args": args}
            else:
                hostile = _hostile_args(rng, args)
                if spec.budget.get(kind, 10**9) <= 0:
                    hostile["not_an_argument"] = 1  # past its budget: must stay a cheap refusal
                yield "hostile", {"type": "request", "id": rid, "kind": kind, "args": hostile}


class Errors(logging.Handler):
    """Collects what mechwidgets logs at ERROR: a handler that raised, an unexpected error."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record.getMessage())


def fuzz(spec: Spec, seed: int) -> Counter[str]:
    """Send the messages; check each reply; return the counts of what happened."""
    w, model = spec.widget, spec.model
    before = snapshot(model)
    hooks_before = hook_count(model)
    assert hooks_before == 0
    sent: list[dict[str, Any]] = []
    w.send = lambda content, buffers=None: sent.append(content)
    errors = Errors()
    log = logging.getLogger("mechwidgets")
    log.addHandler(errors)
    counts: Counter[str] = Counter()
    try:
        for what, msg in messages(random.Random(seed), spec, N_MESSAGES):
            start = len(sent)
            w._on_frontend_message(w, msg, [])  # must never raise
            assert not errors.records, f"{what} {msg!r} was logged as an error: {errors.records[-1][:500]}"
            replies = sent[start:]
            for reply in replies:
                text = str(reply.get("error", ""))
                assert "Unexpected error" not in text, f"{what} {msg!r} got: {text[:500]}"
            counts[what] += 1
            if msg.get("type") == "request" and "kind" in msg and "args" in msg:
                mine = [r for r in replies if r.get("id") is msg["id"] or r.get("id") == msg["id"]]
                assert mine, f"{what} {msg!r} got no reply"
                last = mine[-1]
                if "error" not in last:
                    counts["answered with a result"] += 1
                elif str(last["error"]).startswith(("request ", "unknown request kind")):
                    counts["refused by the declaration"] += 1
                else:
                    counts["refused by the handler"] += 1
            assert "Unexpected error" not in w.error
    finally:
        log.removeHandler(errors)
    assert_unchanged(model, before)
    assert hook_count(model) == hooks_before == 0
    return counts


# ------------------------------------------------------------------------------ the widgets
@pytest.fixture(scope="module")
def toy_lm() -> Any:
    return zoo.load("toy-lm")


def _int(rng: random.Random, lo: int, hi: int) -> int:
    return rng.randint(lo, hi)


def attention_spec(model: Any) -> Spec:
    w = show_attention(model, PROMPT)
    L, H = model.cfg.n_layers, model.cfg.n_heads
    return Spec(w, model, {
        "layer_patterns": lambda rng, w: {"layer": _int(rng, 0, L - 1)},
        "select_head": lambda rng, w: {"layer": _int(rng, 0, L - 1), "head": _int(rng, 0, H - 1)},
        "ablate": lambda rng, w: {"heads": [[_int(rng, 0, L - 1), _int(rng, 0, H - 1)] for _ in range(rng.randint(0, 3))],
                                  "mode": rng.choice(["zero", "mean"])},
    }, {"ablate": 40})


def patching_spec(model: Any) -> Spec:
    w = show_patching(model, PROMPT, CORRUPTED, answer=" Mary", wrong_answer=" John",
                      components=("resid_pre", "attn_out", "head_out"))
    n = len(w.clean_tokens)
    words = [" Mary", " John", " the", " store", " cat"]
    return Spec(w, model, {
        "propose": lambda rng, w: {"pos": _int(rng, 1, n - 1)},
        "corrupt": lambda rng, w: {"pos": _int(rng, 1, n - 1), "token": rng.choice(words)},
        "set_corrupted": lambda rng, w: {"text": rng.choice([CORRUPTED, PROMPT.replace("John", "Mary", 1)])},
        "set_answers": lambda rng, w: {"answer": rng.choice([" Mary", None, ""]), "wrong_answer": rng.choice([" John", None])},
        "view": lambda rng, w: {"component": rng.choice(["resid_pre", "attn_out", "head_out"]),
                                "direction": rng.choice(["denoising", "noising"]), "metric": rng.choice(["logit_diff", "kl"])},
        "cell": lambda rng, w: {"row": _int(rng, 0, 8), "col": _int(rng, 0, n - 1)},
    }, {"corrupt": 4, "set_corrupted": 3, "set_answers": 4, "view": 6, "cell": 30})


def features_spec(model: Any) -> Spec:
    saes = list(zoo.load_saes("toy-lm").values())[:2]
    w = show_features(model, saes, PROMPT, link_prompts=[PROMPT])
    n, names, d = len(w.tokens), list(w.hook_names), list(w.d_sae)

    def intervention(rng: random.Random) -> dict[str, Any]:
        i = rng.randrange(len(names))
        return {"sae": rng.choice([i, names[i]]), "feature": _int(rng, 0, d[i] - 1),
                "mode": rng.choice(["ablate", "clamp"]), "value": rng.uniform(-5, 5),
                "positions": rng.choice([None, [_int(rng, 0, n - 1)]])}

    return Spec(w, model, {
        "select_token": lambda rng, w: {"pos": _int(rng, 0, n - 1)},
        "select_feature": lambda rng, w: {"sae": rng.randrange(len(names)), "feature": _int(rng, 0, min(d) - 1)},
        "intervene": lambda rng, w: {"interventions": [intervention(rng) for _ in range(rng.randint(0, 2))]},
        "corpus": lambda rng, w: {"sae": rng.randrange(len(names))},
        "search": lambda rng, w: {"sae": rng.randrange(len(names)),
                                  "query": rng.choice([" Mary", " the", f"#{_int(rng, 0, min(d) - 1)}", "two words"])},
    }, {"select_feature": 40, "intervene": 30, "corpus": 1, "search": 20})


def scrubbing_spec() -> Spec:
    from mechwidgets.analysis.scrubbing import induction_heads, induction_hypothesis
    from mechwidgets.widgets.scrubbing import show_scrubbing

    model = zoo.load("induction-2l")
    data = zoo.tasks.induction_sequences(48, length=12, seed=1, model="induction-2l")
    prev, ind = induction_heads(model)
    w = show_scrubbing(model, induction_hypothesis(prev, ind, refined=False), data, n_seeds=2, min_agreeing=1)
    paths = [row["path"] for row in w.tree]
    feats = [f["name"] for f in w.features]
    return Spec(w, model, {
        "evaluate": lambda rng, w: {"nodes": {rng.choice(paths[1:]): {"kept": rng.random() < 0.5,
                                                                     "feature": rng.choice(feats)}},
                                    "label": rng.choice([None, "try"])},
        "restore": lambda rng, w: {"step": _int(rng, 1, len(w.results))},
        "fold": lambda rng, w: {"path": rng.choice(paths), "folded": rng.random() < 0.5},
    }, {"evaluate": 3})


def circuit_spec(model: Any) -> Spec:
    w = show_circuit(model, PROMPT, CORRUPTED, answer=" Mary", wrong_answer=" John")
    names = [node["name"] for node in w.nodes]
    return Spec(w, model, {
        "faithfulness": lambda rng, w: {"threshold": rng.uniform(0, 1)},
        "select_node": lambda rng, w: {"node": rng.choice(names)},
        "acdc": lambda rng, w: {"threshold": rng.uniform(0, 1), "signed": rng.random() < 0.5},
        "eap": lambda rng, w: {"ig": False},
    }, {"acdc": 1, "faithfulness": 40, "select_node": 40, "eap": 10})


def lens_spec(model: Any) -> Spec:
    from mechwidgets import show_logit_lens

    w = show_logit_lens(model, PROMPT, answer=" Mary", wrong_answer=" John", ablation_prompt=CORRUPTED)
    L, H, rows = model.cfg.n_layers, model.cfg.n_heads, len(w.layers)
    return Spec(w, model, {
        "layer_topk": lambda rng, w: {"layer": _int(rng, 0, rows - 1), "run": rng.choice(["clean", "ablated"])},
        "ablate": lambda rng, w: {"heads": [[_int(rng, 0, L - 1), _int(rng, 0, H - 1)] for _ in range(rng.randint(0, 2))],
                                  "mlps": [_int(rng, 0, L - 1) for _ in range(rng.randint(0, 1))],
                                  "mode": rng.choice(["zero", "mean", "resample"])},
        "complete_lens": lambda rng, w: {},
    }, {"ablate": 30})


def _check(spec: Spec, seed: int, good: tuple[str, dict[str, Any]]) -> None:
    declared = set(page_requests(type(spec.widget)))
    assert set(spec.valid) == declared, "the fuzz covers every request kind the page may send"
    assert "set_corrupted_tokens_" not in declared
    counts = fuzz(spec, seed)
    print(type(spec.widget).__name__, dict(counts))
    assert counts["valid"] > 0 and counts["answered with a result"] > 0
    assert counts["refused by the declaration"] > N_MESSAGES // 2
    # still alive: a good request is answered
    sent: list[dict[str, Any]] = []
    spec.widget.send = lambda content, buffers=None: sent.append(content)
    spec.widget._on_frontend_message(spec.widget, {"type": "request", "id": "end", "kind": good[0], "args": good[1]}, [])
    assert sent and "error" not in sent[-1], sent[-1:]


def test_fuzz_attention(toy_lm: Any) -> None:
    _check(attention_spec(toy_lm), 1, ("select_head", {"layer": 1, "head": 2}))


def test_fuzz_patching(toy_lm: Any) -> None:
    _check(patching_spec(toy_lm), 2, ("propose", {"pos": 3}))


def test_fuzz_lens(toy_lm: Any) -> None:
    _check(lens_spec(toy_lm), 6, ("layer_topk", {"layer": 1}))


def test_fuzz_features(toy_lm: Any) -> None:
    _check(features_spec(toy_lm), 3, ("select_token", {"pos": 2}))


def test_fuzz_scrubbing() -> None:
    _check(scrubbing_spec(), 4, ("restore", {"step": 1}))


def test_fuzz_circuit(make_model: Callable[..., Any]) -> None:
    # one layer, two heads and an MLP (13 edges): its ACDC run is quick
    _check(circuit_spec(make_model(n_layers=1, n_heads=2, d_head=16)), 5, ("select_node", {"node": "embed"}))


def test_python_only_handlers_and_page_written_traits(toy_lm: Any) -> None:
    """The page reaches only declared handlers, and bounds come from the Python side's state:
    traits the page can write (``n_layers``, ``n_heads``) change nothing."""
    from support import request

    w = show_patching(toy_lm, PROMPT, CORRUPTED, answer=" Mary", wrong_answer=" John", components=("resid_pre",))
    before = list(w.corrupted_tokens)
    sent = request(w, 1, "set_corrupted_tokens_", tokens=[[0, 1, 2]])
    assert sent[-1]["error"].startswith("unknown request kind 'set_corrupted_tokens_' for PatchingWidget")
    assert "set_corrupted_tokens_" not in sent[-1]["error"].split("may send")[1]
    assert w.corrupted_tokens == before
    sent = request(w, 2, "_req_propose", pos=1)
    assert sent[-1]["error"].startswith("unknown request kind")

    a = show_attention(toy_lm, PROMPT)
    a.n_layers, a.n_heads = 100, 100  # as a hostile page could
    sent = request(a, 3, "select_head", layer=50, head=0)
    assert sent[-1]["error"] == "request 'select_head': 'layer' takes an integer in 0..3; got 50, out of range."
    a.n_layers, a.n_heads = 1, 1
    sent = request(a, 4, "select_head", layer=3, head=3)
    assert "error" not in sent[-1] and a.selected == {"layer": 3, "head": 3}
