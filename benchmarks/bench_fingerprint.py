"""What knowing that the model is unchanged costs: :func:`mechwidgets._fingerprint.model_fingerprint`.

Every click compares the model's fingerprint with its caches' (one fingerprint), and a long job
compares it before each step. Measured with ``torch.set_num_threads(1)``, medians of
``BENCH_REPEATS`` (default 15) rounds of 20 calls:

- the whole fingerprint, and its part without the weights' content (identity, version counters,
  storage, dtype, device, shape of every parameter and buffer, every hook), on the zoo's
  ``toy-lm`` and on a randomly initialised GPT-2-small-shaped ``HookedTransformer`` (12 layers,
  d_model 768, 124M parameters), beside one plain forward pass of a 20-token prompt;
- ACDC on ``toy-lm`` (one IOI pair, 479 edges; a check between edges, skipped while it would
  take more than :data:`~mechwidgets._fingerprint.JOB_BUDGET` of the time, and one in full at the
  end): time per edge with the checks and with them switched off, over the first 120 edges.

Run: ``python -m benchmarks.run fingerprint``.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch

REPEATS = int(os.environ.get("BENCH_REPEATS", "15"))


def _median_ms(fn: Callable[[], Any], calls: int = 20) -> float:
    fn()
    times = []
    for _ in range(REPEATS):
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        times.append((time.perf_counter() - t0) / calls * 1e3)
    return statistics.median(times)


def _rows(name: str, model: Any, tokens: torch.Tensor) -> list[str]:
    from mechwidgets import _fingerprint as fp

    full = _median_ms(lambda: fp.model_fingerprint(model))
    content = fp._content
    fp._content = lambda params: b""  # type: ignore[assignment]
    try:
        meta = _median_ms(lambda: fp.model_fingerprint(model))
    finally:
        fp._content = content  # type: ignore[assignment]
    with torch.no_grad():
        forward = _median_ms(lambda: model(tokens), calls=3)
    n = sum(p.numel() for p in model.parameters())
    return [f"| {name} | {n / 1e6:.1f}M | {full:.3f} | {meta:.3f} | {forward:.2f} | {full / forward:.1%} |"]


def _no_check(stamp: Any, what: str, *, budget: float | None = None) -> None:
    return None


def _acdc_rows(model: Any) -> list[str]:
    import mechwidgets.analysis.circuits as circuits
    import mechwidgets.analysis.circuits.patcher as acdc_module  # where ACDC calls the check

    clean = "When Mary and John went to the store , John gave a drink to"
    corrupted = "When Mary and John went to the store , Mary gave a drink to"
    patcher = circuits.EdgePatcher(model, clean, corrupted, answer=" John", wrong_answer=" Mary")
    edges = 120

    def run() -> float:
        steps = patcher.acdc_steps(0.01)
        t0 = time.perf_counter()
        for _ in range(edges):
            next(steps)
        steps.close()
        return (time.perf_counter() - t0) / edges * 1e3

    check = acdc_module.check_unchanged
    with_check, without = [], []
    for _ in range(max(3, REPEATS // 3)):  # interleaved
        with_check.append(run())
        acdc_module.check_unchanged = _no_check
        try:
            without.append(run())
        finally:
            acdc_module.check_unchanged = check
    a, b = statistics.median(with_check), statistics.median(without)
    return [
        "",
        "| ACDC on toy-lm, per edge | with the check (ms) | without (ms) | overhead |",
        "|---|---|---|---|",
        f"| first {edges} edges | {a:.2f} | {b:.2f} | {a / b - 1:+.1%} |",
    ]


def main() -> str:
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    from mechwidgets import zoo

    torch.set_num_threads(1)
    lines = [
        "| model | parameters | fingerprint (ms) | without the content (ms) | one forward (ms) | "
        "fingerprint / forward |",
        "|---|---|---|---|---|---|",
    ]
    toy = zoo.load("toy-lm")
    tokens = toy.to_tokens("When Mary and John went to the store , John gave a drink to Mary and")[:, :20]
    lines += _rows("toy-lm", toy, tokens)
    cfg = HookedTransformerConfig(n_layers=12, d_model=768, n_heads=12, d_head=64, d_mlp=3072, n_ctx=1024,
                                  d_vocab=50257, act_fn="gelu_new", normalization_type="LN", seed=0)
    gpt2 = HookedTransformer(cfg).eval()
    lines += _rows("GPT-2-small shape", gpt2, torch.randint(0, 50257, (1, 20)))
    del gpt2
    lines += _acdc_rows(toy)
    table = "\n".join(lines)
    print(table)
    return table


if __name__ == "__main__":
    main()
