"""Causal scrubbing: one evaluation of an induction hypothesis on ``induction-2l``, 256 inputs.

Model: the zoo's ``induction-2l`` (2 attention-only layers, d_model 64, 4 heads). Where it cannot
be loaded, a randomly initialised model of its shape stands in (the table says so). Data:
``zoo.tasks.induction_sequences(256, length=20)`` (BOS + 20 random tokens repeated: 41 tokens;
the 19 predictions of the repeated half are scored, 4,864 in all). ``torch.set_num_threads(1)``.

Measured in one process (medians of ``BENCH_REPEATS`` runs, wall and CPU time, which a busy
machine disturbs less):

- **prepare**: :class:`~mechwidgets.analysis.scrubbing.Scrubber` set-up: tokenising, one clean
  forward pass over the dataset with every component cached, and the self-check that rebuilds
  the clean run from the cache;
- **one evaluation** (target <= 2 s): ``Scrubber.evaluate`` of the refined induction hypothesis
  (:func:`~mechwidgets.analysis.scrubbing.induction_hypothesis`: every induction head recomputed
  from its query, key and value inputs; the previous-token heads feed the keys) with the default
  5 seeds, each seed a random-baseline pass and a scrubbed pass, fully treeified (every key and
  value position of every recomputed head is its own sampled row); the first one also evaluates
  the features on every prefix, later ones (a click in the widget) reuse them; the naive
  hypothesis (one head) alongside;
- a **deeper hypothesis** (the previous-token head itself recomputed from its query, key and
  value, inside the induction head's key: rows multiply by the sequence length), one seed, for
  scale;
- one plain forward pass over the same 256 inputs, as a yardstick.

Environment: ``BENCH_REPEATS`` (default 5).
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch

REPEATS = int(os.environ.get("BENCH_REPEATS", "5"))
TARGET_S = 2.0
N_INPUTS, HALF = 256, 20


def _timed(fn: Callable[[], Any]) -> tuple[float, float, Any]:
    w0, c0 = time.perf_counter(), time.process_time()
    out = fn()
    return time.perf_counter() - w0, time.process_time() - c0, out


def _median(fn: Callable[[], Any], repeats: int) -> tuple[float, float, Any]:
    walls, cpus, out = [], [], None
    for _ in range(repeats):
        w, c, out = _timed(fn)
        walls.append(w)
        cpus.append(c)
    return statistics.median(walls), statistics.median(cpus), out


def load_case() -> tuple[Any, Any, str]:
    """The zoo model and its data, or a random model of its shape on the same tokens."""
    from mechwidgets import zoo

    seqs = zoo.tasks.induction_sequences(N_INPUTS, length=HALF, seed=1, model="induction-2l")
    try:
        return zoo.load("induction-2l"), seqs, "zoo induction-2l"
    except Exception as exc:  # the zoo model is missing: same shape, random weights
        from transformer_lens import HookedTransformer, HookedTransformerConfig

        from mechwidgets._model import ModelHandle
        from mechwidgets.zoo.train import INDUCTION_2L_CONFIG

        cfg = {k: v for k, v in INDUCTION_2L_CONFIG.items() if k != "model_name"}
        model = HookedTransformer(HookedTransformerConfig(**cfg, seed=0))
        g = torch.Generator().manual_seed(1)
        half = torch.randint(1, 127, (N_INPUTS, HALF), generator=g)
        toks = torch.cat([torch.zeros(N_INPUTS, 1, dtype=torch.long), half, half], 1)
        handle = ModelHandle.wrap_token_ids(model)
        return handle, toks, f"random model of induction-2l's shape ({type(exc).__name__})"


def main() -> str:
    from mechwidgets.analysis.scrubbing import (
        HypothesisNode,
        Scrubber,
        induction_heads,
        induction_hypothesis,
    )

    torch.set_num_threads(1)
    model, data, what = load_case()
    prev, ind = induction_heads(model)
    n_heads = int(model.cfg.n_heads)
    # the proof's hypothesis: every induction head, refined, the previous-token heads as they are
    hypothesis = induction_hypothesis(prev, ind, key_feature="identity", n_heads=n_heads)
    naive = induction_hypothesis(prev[:1], ind[:1], refined=False)
    (pl, ph), (il, ih) = prev[0], ind[0]
    deeper = HypothesisNode("output", children=[
        HypothesisNode(f"L{il}H{ih}", children=[
            HypothesisNode("q", children=[HypothesisNode("embed", "token")]),
            HypothesisNode("k", children=[HypothesisNode(f"L{pl}H{ph}", children=[
                HypothesisNode("q", children=[HypothesisNode("pos_embed", "position")]),
                HypothesisNode("k", children=[HypothesisNode("pos_embed", "position")]),
                HypothesisNode("v", children=[HypothesisNode("embed", "token")]),
            ])]),
            HypothesisNode("v", children=[HypothesisNode("embed", "token")]),
        ]),
    ])

    positions = list(range(HALF + 1, 2 * HALF))  # the repeated half, as the model cards score it
    prep_w, prep_c, scrubber = _timed(lambda: Scrubber(model, data, positions=positions))
    first_w, first_c, result = _timed(lambda: scrubber.evaluate(hypothesis))
    eval_w, eval_c, result = _median(lambda: scrubber.evaluate(hypothesis), REPEATS)
    naive_w, naive_c, naive_result = _median(lambda: scrubber.evaluate(naive), REPEATS)
    deep_w, deep_c, deep = _median(lambda: scrubber.evaluate(deeper, n_seeds=1), max(1, REPEATS // 2))
    toks = scrubber.tokens.to(scrubber.device)

    def forward() -> Any:
        with torch.no_grad():
            return scrubber.handle.model(toks)

    fwd_w, fwd_c, _ = _median(forward, REPEATS)

    rows = [
        ("prepare (clean run, cache, self-check)", prep_w, prep_c, ""),
        ("first evaluation (5 seeds, features evaluated)", first_w, first_c, ""),
        (f"one evaluation (5 seeds, {len(ind)} heads recomputed)", eval_w, eval_c,
         "ok" if eval_w <= TARGET_S else "OVER"),
        ("naive hypothesis, one head (5 seeds)", naive_w, naive_c, ""),
        ("deeper hypothesis (1 seed)", deep_w, deep_c, ""),
        ("plain forward, 256 inputs", fwd_w, fwd_c, ""),
    ]
    lines = [
        f"Causal scrubbing on {what}: {scrubber.n_inputs} inputs × {scrubber.length} tokens, "
        f"{len(scrubber.refs)} scored predictions. Refined induction hypothesis, previous-token "
        f"heads {prev} → induction heads {ind}: loss recovered {100 * result.fraction:.1f}% ± "
        f"{100 * result.fraction_std:.1f}% (naive: {100 * naive_result.fraction:.1f}%; deeper: "
        f"{100 * deep.fraction:.1f}%). torch threads: {torch.get_num_threads()}; medians of "
        f"{REPEATS} runs.",
        "",
        f"| step | wall s | CPU s | target {TARGET_S:.0f} s |",
        "|---|---|---|---|",
    ]
    lines += [f"| {name} | {w:.3f} | {c:.3f} | {flag} |" for name, w, c, flag in rows]
    table = "\n".join(lines)
    print(table)
    return table


if __name__ == "__main__":
    main()
