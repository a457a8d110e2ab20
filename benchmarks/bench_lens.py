"""Logit-lens widget: the whole view's kernel time, an ablation click's, and message sizes.

Rows (median of ``--repeats``; torch on ``--threads`` CPU threads, default 1), each also as a
ratio to one plain forward pass of the same model and prompt, measured in the same process
(``model(tokens)``, full logits, no hooks; for the kernel-side rows the forward and the measured
call alternate and the ratio is the median of the per-pair ratios, so that a load change on a
shared machine hits both; the browser rows divide by the median forward):

- **toy-lm, 64 tokens** (the zoo's model, an IOI-like prompt repeated to 64 tokens):
  - ``lens_view``: the analysis alone (one forward with caching hooks; the lens for every layer
    and position; DLA by head and source position; norms);
  - **whole view**: ``show_logit_lens(...)``: the analysis plus predictions, encoding every trait,
    the widget built (the issue's target: ≤ 100 ms);
  - **ablation click**: the ``ablate`` request for one head as the kernel handles it (re-run,
    traits written), Python side;
  - **ablation click → view redrawn (browser)**: in headless Chromium through the light harness
    of ``tests/browser/harness.py`` (the real Python widget behind a Playwright binding standing
    in for the Jupyter comm): from the click on L3H0's bar to the DLA line reading the ablated
    logit difference, measured in the page with ``performance.now()`` (target ≤ 300 ms); the
    harness fetches every binary buffer over HTTP from a server thread of this process, which a
    Jupyter comm does not, so the same click is also timed
  - **in a real JupyterLab page** (a JupyterLab server and kernel started by the browser tests'
    harness; the widget built in the notebook; the click timed in the page the same way);
- **GPT-2-small shape, 256 tokens** (random weights: 12 layers, d_model 768, 12 heads, d_mlp
  3072, d_vocab 50257; toy-lm's tokenizer labels the ids it knows): the whole view as
  ``show_logit_lens`` builds it; target ≤ 2 forward passes plus drawing. The lens of every layer
  at every position would unembed 12 × 256 streams (as much as 12 final unembeddings, over 3
  forward passes on this CPU): the widget computes it first at the last positions that fit in
  ``FIRST_VIEW_CELLS`` cells (32 of 256 here) and the page then asks ``complete_lens``, which
  fills in the rest from the same run's recorded streams (no second forward); that job is the
  next row (timed alone, on a freshly built widget).
- **largest update**: the biggest trait or reply in bytes (target ≤ 4 MiB).

Run: ``python -m benchmarks.bench_lens [--repeats 7]`` (``make bench`` runs every bench).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parent.parent
TARGET_VIEW_MS = 100.0
TARGET_CLICK_MS = 300.0
TARGET_UPDATE_BYTES = 4 * 1024 * 1024


def _paired_ms(base: Callable[[], Any], fn: Callable[[], Any], repeats: int) -> tuple[float, float, float]:
    """Medians of ``base`` and ``fn`` timed alternately (a load change on the shared machine hits
    both), and the median of the per-pair ratios ``fn / base``."""
    base()
    fn()
    pairs = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        base()
        t1 = time.perf_counter()
        fn()
        t2 = time.perf_counter()
        pairs.append(((t1 - t0) * 1000, (t2 - t1) * 1000))
    return (statistics.median(a for a, _ in pairs), statistics.median(b for _, b in pairs),
            statistics.median(b / a for a, b in pairs))


_CLICK_JS = """async ([id, testid, expected]) => {
    const root = document.querySelector(`[data-mw-host="${id}"]`);
    const t0 = performance.now();
    root.querySelector(`[data-testid="${testid}"]`).click();
    while (true) {
        const t = root.querySelector('[data-testid="dla-total"]');
        const ablated = root.querySelector(`[data-testid="${testid}"]`).classList.contains('mw-ablated');
        if (t && (expected ? t.textContent.includes(expected) && ablated : !t.textContent.includes('after ablation')))
            return performance.now() - t0;
        if (performance.now() - t0 > 20000) return -1;
        await new Promise(r => setTimeout(r, 0));
    }
}"""


def _browser_clicks(widget: Any, repeats: int) -> list[float]:
    """Browser-timed ablation clicks on L3H0 (each followed by an untimed click restoring it)."""
    sys.path.insert(0, str(REPO / "tests" / "browser"))
    import harness
    from playwright.sync_api import sync_playwright

    times = []
    server = harness.StaticServer()
    try:
        with sync_playwright() as pw:
            chromium = harness.launch_chromium(pw)
            try:
                context, _guard = harness.new_guarded_context(chromium)
                wh = harness.WidgetHarness(context, server)
                m = wh.mount(widget)
                m.settle()
                for r in range(repeats + 1):
                    ms = wh.page.evaluate(_CLICK_JS, [m.id, "dla-row-L3H0", "after ablation"])
                    m.settle()
                    if ms < 0:
                        raise RuntimeError("the ablated view was not drawn within 20 s")
                    if r:
                        times.append(ms)
                    wh.page.evaluate(_CLICK_JS, [m.id, "dla-row-L3H0", ""])
                    m.settle()
                errors = m.js_errors() + wh.py_errors
                if errors:
                    raise RuntimeError(f"errors in the page or the widget: {errors}")
                wh.close()
                context.close()
            finally:
                chromium.close()
    finally:
        server.close()
    return times


_LAB_SETUP = """import os, torch
os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads({threads})
from mechwidgets import show_logit_lens, zoo
model = zoo.load("toy-lm")
print("model: toy-lm")
text = {text!r}
tokens = torch.cat([model.to_tokens(text)[:, :63], model.to_tokens(" to", prepend_bos=False)], 1)
w = show_logit_lens(model, tokens, answer=" Olivia", wrong_answer=" Simon")
w
"""


def _lab_clicks(text: str, repeats: int, threads: int) -> list[float]:
    """The same click, timed the same way, on the widget in a real JupyterLab notebook."""
    sys.path.insert(0, str(REPO / "tests" / "browser"))
    from harness import JupyterLab, LabPage, launch_chromium, new_guarded_context
    from playwright.sync_api import sync_playwright

    times = []
    lab = JupyterLab()
    try:
        with sync_playwright() as pw:
            chromium = launch_chromium(pw)
            try:
                context, _guard = new_guarded_context(chromium)
                page = LabPage(lab, context.new_page())
                widget = page.open_widget("bench_lens.ipynb", _LAB_SETUP.format(threads=threads, text=text), ".mw-lens")
                widget.locator(".mw-lens-cell").first.wait_for(timeout=120_000)
                page.page.evaluate("() => document.querySelector('.mw-lens').setAttribute('data-mw-host', 'lab')")
                for r in range(repeats + 1):
                    ms = page.page.evaluate(_CLICK_JS, ["lab", "dla-row-L3H0", "after ablation"])
                    if ms < 0:
                        raise RuntimeError("the ablated view was not drawn within 20 s in JupyterLab")
                    if r:
                        times.append(ms)
                    page.page.evaluate(_CLICK_JS, ["lab", "dla-row-L3H0", ""])
                context.close()
            finally:
                chromium.close()
    finally:
        lab.close()
    return times


def _gpt2_shape(tokenizer: Any) -> Any:
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    cfg = HookedTransformerConfig(
        n_layers=12, d_model=768, n_heads=12, d_head=64, d_mlp=3072, n_ctx=1024, d_vocab=50257,
        act_fn="gelu_new", normalization_type="LN", seed=0,
    )
    return HookedTransformer(cfg, tokenizer=tokenizer).eval()


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv or [])
    torch.set_num_threads(args.threads)

    from mechwidgets import show_logit_lens, zoo
    from mechwidgets._tensor import encoded_nbytes
    from mechwidgets.analysis.lens import lens_view

    rows: list[tuple[str, float, float, str]] = []
    sizes: dict[str, int] = {}

    model = zoo.load("toy-lm")
    text = "When Olivia and Simon went to the zoo, Simon gave a flower to Olivia. " * 6
    tokens = model.to_tokens(text)[:, :63]
    tokens = torch.cat([tokens, model.to_tokens(" to", prepend_bos=False)], 1)  # 64, ends on " to"
    assert tokens.shape[1] == 64
    answer, wrong = " Olivia", " Simon"
    def forward() -> None:
        with torch.no_grad():
            model(tokens)

    fwd, view, view_ratio = _paired_ms(forward, lambda: lens_view(model, tokens, answer=answer, wrong_answer=wrong), args.repeats)
    _, whole, whole_ratio = _paired_ms(forward, lambda: show_logit_lens(model, tokens, answer=answer, wrong_answer=wrong), args.repeats)
    widget = show_logit_lens(model, tokens, answer=answer, wrong_answer=wrong)
    flip = iter([[[3, 0]], [[2, 1]]] * (args.repeats + 2))  # a different head each click
    _, click, click_ratio = _paired_ms(forward, lambda: widget._call("ablate", heads=next(flip), mlps=[], mode="zero"), args.repeats)
    widget._call("ablate", heads=[[3, 0]], mlps=[], mode="zero")
    for trait in ("lens", "dla", "norms", "predictions", "ablation"):
        sizes[f"toy-lm 64: {trait}"] = encoded_nbytes(getattr(widget, trait))
    browser = show_logit_lens(model, tokens, answer=answer, wrong_answer=wrong)
    clicks = _browser_clicks(browser, args.repeats)
    click_ms = statistics.median(clicks)
    lab_clicks = _lab_clicks(text, args.repeats, args.threads)
    lab_ms = statistics.median(lab_clicks)
    rows += [
        ("toy-lm, 64 tokens: one plain forward", fwd, 1.0, ""),
        ("toy-lm, 64 tokens: lens_view (analysis)", view, view_ratio, ""),
        ("toy-lm, 64 tokens: whole view (show_logit_lens)", whole, whole_ratio,
         f"target ≤ {TARGET_VIEW_MS:.0f} ms: {'met' if whole <= TARGET_VIEW_MS else 'MISSED'}"),
        ("toy-lm, 64 tokens: ablation click (kernel side)", click, click_ratio, ""),
        ("toy-lm, 64 tokens: ablation click → view redrawn (browser)", click_ms, click_ms / fwd,
         f"max {max(clicks):.0f} ms; target ≤ {TARGET_CLICK_MS:.0f} ms: "
         f"{'met' if click_ms <= TARGET_CLICK_MS else 'MISSED'}"),
        ("toy-lm, 64 tokens: ablation click → view redrawn (real JupyterLab)", lab_ms, lab_ms / fwd,
         f"max {max(lab_clicks):.0f} ms; target ≤ {TARGET_CLICK_MS:.0f} ms: "
         f"{'met' if lab_ms <= TARGET_CLICK_MS else 'MISSED'}"),
    ]

    big = _gpt2_shape(model.tokenizer)
    big_tokens = torch.randint(100, 1250, (1, 256), generator=torch.Generator().manual_seed(0))
    big_tokens[0, 0] = model.tokenizer.bos_token_id
    def big_forward() -> None:
        with torch.no_grad():
            big(big_tokens)

    big_fwd, big_whole, big_ratio = _paired_ms(
        big_forward, lambda: show_logit_lens(big, big_tokens, answer=5, wrong_answer=6), max(3, args.repeats // 2)
    )
    fills = []
    for _ in range(max(3, args.repeats // 2)):
        fresh = show_logit_lens(big, big_tokens, answer=5, wrong_answer=6)
        t0 = time.perf_counter()
        big_forward()
        t1 = time.perf_counter()
        fresh.complete_lens()
        fills.append((time.perf_counter() - t1) / (t1 - t0))
    fill_ratio = statistics.median(fills)
    big_widget = show_logit_lens(big, big_tokens, answer=5, wrong_answer=6)
    for trait in ("lens", "dla", "norms"):
        sizes[f"gpt2-shape 256: {trait}"] = encoded_nbytes(getattr(big_widget, trait))
    sizes["gpt2-shape 256: layer_topk reply"] = encoded_nbytes(big_widget._req_layer_topk(6))
    rows += [
        ("GPT-2-small shape, 256 tokens: one plain forward", big_fwd, 1.0, ""),
        ("GPT-2-small shape, 256 tokens: whole view", big_whole, big_ratio,
         f"target ≤ 2 forwards: {'met' if big_ratio <= 2 else 'MISSED'}"),
        ("GPT-2-small shape, 256 tokens: the rest of the lens (complete_lens job, after drawing)",
         fill_ratio * big_fwd, fill_ratio, "the grid's earlier positions, filled in after the view shows"),
    ]

    largest = max(sizes.values())
    lines = [
        f"# Logit lens (torch threads {args.threads}, median of {args.repeats})",
        "",
        "| what | ms | × forward | note |",
        "|---|---:|---:|---|",
        *[f"| {name} | {ms:.1f} | {ratio:.2f} | {note} |" for name, ms, ratio, note in rows],
        "",
        "| update | bytes |",
        "|---|---:|",
        *[f"| {name} | {n:,} |" for name, n in sizes.items()],
        "",
        f"Largest update: {largest:,} bytes (target ≤ {TARGET_UPDATE_BYTES:,}: "
        f"{'met' if largest <= TARGET_UPDATE_BYTES else 'MISSED'}).",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    print(main(sys.argv[1:]))
