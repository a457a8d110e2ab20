"""Activation and attribution patching against TransformerLens's patching, in one process.

Models: randomly initialised ``HookedTransformer``s built from a config (no tokenizer, token
tensors): GPT-2-small-shaped (12 layers, d_model 768, 12 heads, d_mlp 3072, d_vocab 50257,
n_ctx 1024) and a 4-layer one (d_model 256, 8 heads, d_mlp 1024, same vocabulary).
``torch.set_num_threads(1)``.

Prompts (20 tokens, shaped like an indirect-object-identification sentence, "<bos> When A and B
went to the store to buy milk, B gave a bottle of milk to", A and B two name tokens; the weights
are random, so which ids does not matter, only where the prompts differ):

- **names swapped** (the main case): the corrupted prompt has A and B swapped everywhere,
  positions 2, 4 and 13 (the answer flips from A to B). The first difference is at position 2,
  so skipping identical earlier positions saves only positions 0-1 of 20.
- **S2 replaced**: only the second mention of the subject (position 13) is replaced, the
  corruption of Wang et al. (2022) and ARENA; positions 0-12 are identical in both prompts.

Measured (wall clock, median of ``repeats``; CPU time alongside, which a busy machine disturbs
less): the full ``resid_pre`` grid (``get_act_patch_resid_pre``, layers x 20 positions) and the
head grid (``get_act_patch_attn_head_out_all_pos``), with a logit difference at the last
position, TransformerLens under ``torch.no_grad()`` (its progress bars off); and
``attribution_patch`` against one plain forward pass (``model(tokens)``, full logits).
TransformerLens runs one full forward per cell whatever the prompts, so it is timed once, on the
names-swapped pair, and both cases are compared with that time. Targets: resid_pre >= 20x, heads
>= 15x, attribution <= 2.5 forward passes. With a user's hook attached (an identity on
``blocks.0.hook_resid_pre``) every patched run goes through TransformerLens's hooks: its own row,
no target. ``max |diff|`` is the largest difference between our
grid and TransformerLens's (``normalize=False``, names-swapped pair).

Environment: ``BENCH_REPEATS`` (default 3) repeats of each of our runs and of TransformerLens on
the 4-layer model; ``BENCH_TL_REPEATS_LARGE`` (default 1) of TransformerLens on the GPT-2-shaped
model, where the two grids are 384 full forward passes (about two minutes).
"""

from __future__ import annotations

import os
import statistics
import time
import warnings
from collections.abc import Callable
from typing import Any

import torch

MODELS: dict[str, dict[str, Any]] = {
    "GPT-2-small shape (12 layers, d_model 768)": dict(
        n_layers=12, d_model=768, n_heads=12, d_head=64, d_mlp=3072
    ),
    "4 layers, d_model 256": dict(n_layers=4, d_model=256, n_heads=8, d_head=32, d_mlp=1024),
}
COMMON = dict(d_vocab=50257, n_ctx=1024, act_fn="gelu_new", normalization_type="LN", seed=0)

A, B = 5335, 1757  # two name tokens ("Mary", "John" in GPT-2's vocabulary)
N_POS = 20
NAMES = {2: A, 4: B, 13: B}  # clean: "When A and B went ..., B gave ... to" -> A
TARGETS = {"resid_pre": 20.0, "head_out": 15.0, "attribution": 2.5}


def prompts() -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """``{case: (clean, corrupted)}`` ``[1, 20]`` token tensors (see the module docstring)."""
    gen = torch.Generator().manual_seed(0)
    clean = torch.randint(1000, 40000, (N_POS,), generator=gen)
    clean[0] = 50256  # <|endoftext|> as BOS
    for pos, name in NAMES.items():
        clean[pos] = name
    swapped = clean.clone()
    for pos, name in NAMES.items():
        swapped[pos] = B if name == A else A
    s2 = clean.clone()
    s2[13] = A
    return {
        "names swapped (pos 2, 4, 13)": (clean[None], swapped[None]),
        "S2 replaced (pos 13)": (clean[None], s2[None]),
    }


def timed(fn: Callable[[], Any], repeats: int) -> tuple[float, float, Any]:
    """Median wall-clock and CPU seconds of ``repeats`` calls, and the last result."""
    walls, cpus, out = [], [], None
    for _ in range(repeats):
        w0, c0 = time.perf_counter(), time.process_time()
        out = fn()
        walls.append(time.perf_counter() - w0)
        cpus.append(time.process_time() - c0)
    return statistics.median(walls), statistics.median(cpus), out


def bench_model(
    label: str, shape: dict[str, Any], repeats: int, tl_repeats: int
) -> list[list[str]]:
    from transformer_lens import HookedTransformer, HookedTransformerConfig
    from transformer_lens import patching as tl_patching

    from mechwidgets.analysis import activation_patch, attribution_patch

    tl_patching.tqdm = lambda items, **kwargs: items  # progress bars would flood the table
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = HookedTransformer(HookedTransformerConfig(**shape, **COMMON))
    model.eval()
    cases = prompts()
    clean, swapped = cases["names swapped (pos 2, 4, 13)"]

    def tl_metric(logits: torch.Tensor) -> torch.Tensor:
        return logits[:, -1, A] - logits[:, -1, B]

    with torch.no_grad():
        model(clean)  # warm-up
        fwd_wall, fwd_cpu, _ = timed(lambda: model(clean), 5)
        _, clean_cache = model.run_with_cache(clean)
    s2_clean, s2_corrupted = cases["S2 replaced (pos 13)"]  # warm-up (the cheapest case)
    activation_patch(model, s2_clean, s2_corrupted, component="head_out", answer=A, wrong_answer=B)
    attribution_patch(model, s2_clean, s2_corrupted, component="head_out", answer=A, wrong_answer=B)
    print(f"  {label}: one forward {fwd_wall * 1e3:.0f} ms", flush=True)
    rows = []
    for component, tl_fn in (
        ("resid_pre", tl_patching.get_act_patch_resid_pre),
        ("head_out", tl_patching.get_act_patch_attn_head_out_all_pos),
    ):

        def theirs(tl_fn: Any = tl_fn) -> torch.Tensor:
            with torch.no_grad():
                return tl_fn(model, swapped, clean_cache, tl_metric)

        tl_wall, tl_cpu, tl_grid = timed(theirs, tl_repeats)
        print(f"  {component}: TransformerLens {tl_wall:.2f} s", flush=True)
        target = TARGETS[component]
        for case, (clean_tokens, corrupted_tokens) in cases.items():

            def ours(
                component: str = component,
                clean: torch.Tensor = clean_tokens,
                corrupted: torch.Tensor = corrupted_tokens,
            ) -> Any:
                return activation_patch(
                    model,
                    clean,
                    corrupted,
                    component=component,
                    answer=A,
                    wrong_answer=B,
                    normalize=False,
                )

            our_wall, our_cpu, result = timed(ours, repeats)
            diff = (
                f"{(result.values - tl_grid.cpu()).abs().max().item():.1e}"
                if corrupted_tokens is swapped
                else "(see tests)"
            )
            ratio = tl_wall / our_wall
            print(f"    {case}: ours {our_wall:.3f} s ({ratio:.1f}x)", flush=True)
            rows.append(
                [
                    label,
                    f"`{component}` grid {tuple(result.values.shape)}",
                    case,
                    f"{tl_wall:.2f} ({tl_repeats})",
                    f"{our_wall:.3f} ({repeats})",
                    f"**{ratio:.1f}x** ({tl_cpu / our_cpu:.1f}x)",
                    f">= {target:g}x",
                    met(ratio >= target, tl_cpu / our_cpu >= target),
                    diff,
                ]
            )
        # a user's hook attached (an identity here, as a spliced SAE or a steering vector would
        # be attached): every run goes through TransformerLens's hooks, which must see it
        model.add_hook("blocks.0.hook_resid_pre", identity, is_permanent=True)
        try:
            hooked_wall, hooked_cpu, hooked = timed(lambda component=component: activation_patch(
                model, clean, swapped, component=component, answer=A, wrong_answer=B, normalize=False), repeats)
        finally:
            model.reset_hooks(including_permanent=True)
        ratio = tl_wall / hooked_wall
        print(f"    with a user hook: ours {hooked_wall:.3f} s ({ratio:.1f}x)", flush=True)
        rows.append([
            label, f"`{component}` grid, a user hook attached (hooks path)", "names swapped (pos 2, 4, 13)",
            f"{tl_wall:.2f} ({tl_repeats})", f"{hooked_wall:.3f} ({repeats})",
            f"**{ratio:.1f}x** ({tl_cpu / hooked_cpu:.1f}x)", "(its own row)", "",
            f"{(hooked.values - tl_grid.cpu()).abs().max().item():.1e}",
        ])
    for component in ("resid_pre", "head_out"):

        def attribution(component: str = component) -> Any:
            return attribution_patch(
                model, clean, swapped, component=component, answer=A, wrong_answer=B
            )

        att_wall, att_cpu, _ = timed(attribution, repeats)
        forwards = att_wall / fwd_wall
        target = TARGETS["attribution"]
        rows.append(
            [
                label,
                f"attribution `{component}`",
                "names swapped (pos 2, 4, 13)",
                f"1 forward: {fwd_wall:.3f} (5)",
                f"{att_wall:.3f} ({repeats})",
                f"**{forwards:.2f} forwards** ({att_cpu / fwd_cpu:.2f})",
                f"<= {target:g} forwards",
                met(forwards <= target, att_cpu / fwd_cpu <= target),
                "",
            ]
        )
    return rows


def identity(act: torch.Tensor, hook: Any) -> torch.Tensor:
    return act


def met(wall: bool, cpu: bool) -> str:
    return f"{'yes' if wall else 'NO'} (CPU {'yes' if cpu else 'NO'})"


def main() -> str:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    repeats = int(os.environ.get("BENCH_REPEATS", "3"))
    tl_large = int(os.environ.get("BENCH_TL_REPEATS_LARGE", "1"))
    rows = []
    try:
        for i, (label, shape) in enumerate(MODELS.items()):
            rows += bench_model(label, shape, repeats, tl_large if i == 0 else repeats)
    finally:
        torch.set_num_threads(threads)
    header = [
        "model",
        "what",
        "clean/corrupted differ",
        "TransformerLens s (runs)",
        "mechwidgets s (runs)",
        "speed-up, wall (CPU)",
        "target",
        "met, wall (CPU)",
        "max abs diff",
    ]
    lines = [
        "Activation patching vs TransformerLens in one process (torch 1 thread; median seconds "
        "of (runs); 20-token IOI-shaped prompts; see benchmarks/bench_patching.py)",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(main())
