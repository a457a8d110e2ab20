"""SAE feature widget: encoding speed, steering latency (browser-timed) and message sizes.

Model: the zoo's ``toy-lm`` with its SAEs when shipped; otherwise a random model of toy-lm's shape
(4 layers, d_model 128, d_mlp 512) with random TopK SAEs of the zoo's shape (512 features, k 24)
on the same five hooks: the arithmetic, and so the timings, are the same. Prompt: 128 tokens.

Rows (median of ``--repeats``; torch on ``--threads`` CPU threads, default 1):

- **encode all SAEs**: :func:`~mechwidgets.analysis.features.feature_activations` (one forward
  pass with caching hooks, every SAE's encode and decode, top-k, reconstruction statistics).
  Target ≤ 200 ms. Ratio against the bare minimum done by hand with TransformerLens in the same
  process: ``run_with_cache`` of the five hooks and each SAE's ``encode``.
- **steer (Python)**: ``widget.steer(...)``: the intervention request as the kernel handles it
  (clean and spliced forward passes, every SAE read, changed features, traits written).
- **steer click → view updated (browser)**: in headless Chromium through the light harness of
  ``tests/browser/harness.py`` (the real Python widget behind a Playwright binding standing in
  for the Jupyter comm): from the slider's ``change`` event to the results header naming the
  new clamp value, measured in the page with ``performance.now()``. Target ≤ 300 ms.
- **feature click → detail drawn (browser)**: a bar's click to the feature's title.
- **largest update**: the biggest kernel → page message seen (target ≤ 4 MiB); the initial state
  (with the ESM and CSS) is listed separately.

Real size (issue 19), run in a fresh process so that its memory figures are its own
(``--scale gpt2``; ``main()`` runs it after the toy rows unless ``--no-scale``): a randomly
initialised GPT-2-small-shaped model (12 layers, d_model 768, vocabulary 50,257) with 12 random
TopK SAEs (24,576 features, k 32) on every ``hook_resid_pre``, a 128-token prompt: widget built
(target ≤ 5 s), feature click with its lineage (≤ 300 ms of kernel time), token click (labels),
steer click (≤ 500 ms), each also as a multiple of the plain forward on the same prompt in the
same run; peak memory (VmHWM, reset after the model and SAEs are built) above the resident size
before the widget, against a budget of the SAEs' weights + 1 GB. ``--scale gemma`` measures a
scaled-down Gemma-2-2B width case (d_model 2,304, 65,536-feature TopK SAEs, 64 tokens; see
``--gemma-saes``): the full 26 SAEs (about 31 GB of weights) do not fit a 24 GB machine, so the
figures are reported per SAE.

Run: ``python benchmarks/bench_features.py [--repeats 15]`` (``make bench`` runs every bench).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests" / "browser"))

TARGET_ENCODE_MS = 200.0
TARGET_STEER_MS = 300.0
TARGET_UPDATE_BYTES = 4 * 1024 * 1024
N_POS = 128


def _toy_lm() -> tuple[Any, Any, str]:
    """The zoo's toy-lm and SAEs, or a random model and random SAEs of the same shapes."""
    from mechwidgets import zoo

    try:
        if (zoo.model_dir("toy-lm") / "config.json").is_file():
            saes = zoo.load_saes("toy-lm")
            if saes:
                return zoo.load("toy-lm"), saes, "zoo toy-lm + its SAEs"
    except Exception as exc:  # a broken zoo must not stop the benchmark
        print(f"(zoo toy-lm did not load: {exc}; using a random model of its shape)")
    from transformers import PreTrainedTokenizerFast

    from mechwidgets.zoo import SimpleSAE, SimpleSAEConfig
    from mechwidgets.zoo._tokenizers import save_tokenizer, toy_lm_tokenizer
    from mechwidgets.zoo.train import SAE_HOOKS, SAE_TRAIN, TOY_LM_CONFIG

    folder = Path(tempfile.mkdtemp(prefix="mw-bench-tok-"))
    save_tokenizer(toy_lm_tokenizer(), folder)
    tok = PreTrainedTokenizerFast.from_pretrained(str(folder))
    try:
        from transformer_lens import HookedTransformer, HookedTransformerConfig

        cfg = {k: v for k, v in TOY_LM_CONFIG.items()}
        cfg["d_vocab"] = len(tok)
        model = HookedTransformer(HookedTransformerConfig(**cfg, seed=0), tokenizer=tok).eval()
    except ImportError:  # TransformerLens 4.x
        from transformer_lens import TransformerBridge, TransformerBridgeConfig

        from mechwidgets.zoo._loading import bridge_config_dict

        cfg = bridge_config_dict({**TOY_LM_CONFIG, "d_vocab": len(tok)})
        cfg["init_weights"] = True
        model = TransformerBridge.boot_native(TransformerBridgeConfig.from_dict(cfg), tokenizer=tok).eval()
    saes = {}
    g = torch.Generator().manual_seed(0)
    d = TOY_LM_CONFIG["d_model"]
    for hook in SAE_HOOKS:
        sae = SimpleSAE(SimpleSAEConfig(d_in=d, d_sae=SAE_TRAIN["d_sae"], architecture="topk",
                                        k=SAE_TRAIN["k"], metadata=SimpleNamespace(hook_name=hook)))
        with torch.no_grad():
            sae.W_enc.copy_(torch.randn(d, SAE_TRAIN["d_sae"], generator=g) / d**0.5)
            sae.W_dec.copy_(torch.nn.functional.normalize(torch.randn(SAE_TRAIN["d_sae"], d, generator=g), dim=-1))
        saes[hook] = sae.eval()
    return model, saes, "random model and SAEs of toy-lm's shape (toy-lm not shipped)"


def _prompt(model: Any) -> torch.Tensor:
    """A 128-token prompt (BOS + generated text, cut to length)."""
    from mechwidgets.zoo import tasks

    text = " ".join(tasks.sample_text(4, seed=3, n_segments=12))
    toks = model.to_tokens(text, truncate=False)[0, :N_POS]
    assert toks.shape[0] == N_POS, f"sample text too short: {toks.shape[0]} tokens"
    return toks


def _median_ms(fn: Any, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


_STEER_JS = """async ([id, value, expected]) => {
    const root = document.querySelector(`[data-mw-host="${id}"]`);
    const slider = root.querySelector('[data-testid="steer-slider"]');
    slider.value = String(value);
    const t0 = performance.now();
    slider.dispatchEvent(new Event('input'));
    slider.dispatchEvent(new Event('change'));
    while (true) {
        const t = root.querySelector('[data-testid="results-title"]');
        if (t && t.textContent.includes(expected)) return performance.now() - t0;
        if (performance.now() - t0 > 20000) return -1;
        await new Promise(r => setTimeout(r, 0));
    }
}"""

_CLICK_JS = """async ([id, testid, expected]) => {
    const root = document.querySelector(`[data-mw-host="${id}"]`);
    const t0 = performance.now();
    root.querySelector(`[data-testid="${testid}"]`).click();
    while (true) {
        const t = root.querySelector('[data-testid="feature-title"]');
        if (t && t.textContent.includes(expected) && !t.textContent.includes('loading')) return performance.now() - t0;
        if (performance.now() - t0 > 20000) return -1;
        await new Promise(r => setTimeout(r, 0));
    }
}"""


def _browser(widget: Any, repeats: int) -> dict[str, Any]:
    import harness
    from playwright.sync_api import sync_playwright

    from mechwidgets.analysis.features import short_hook_label

    out: dict[str, Any] = {}
    server = harness.StaticServer()
    try:
        with sync_playwright() as pw:
            chromium = harness.launch_chromium(pw)
            try:
                context, _guard = harness.new_guarded_context(chromium)
                wh = harness.WidgetHarness(context, server)
                m = wh.mount(widget)
                pos, sae = N_POS - 1, 1
                m.el.locator(f'[data-testid="token-{pos}"]').click()
                m.settle()
                feats = [int(f) for f in widget.trace.top_indices[sae, pos] if f >= 0]
                clicks = []
                for r in range(repeats + 1):
                    f = feats[r % len(feats)]
                    expected = f"{short_hook_label(widget.hook_names[sae])} #{f} —"
                    ms = wh.page.evaluate(_CLICK_JS, [m.id, f"bar-{sae}-{f}", expected])
                    m.settle()
                    if r:
                        clicks.append(ms)
                steers = []
                wh.calls.clear()
                for r in range(repeats + 1):
                    value = round(2.0 + 0.5 * r, 2)
                    ms = wh.page.evaluate(_STEER_JS, [m.id, value, f"clamp to {value:.2f}"])
                    m.settle()
                    if r:
                        steers.append(ms)
                out["click"] = statistics.median(clicks)
                out["steer"] = statistics.median(steers)
                out["steer_max"] = max(steers)
                py = [sec * 1000 for what, sec in wh.calls if what.endswith(":intervene")][1:]
                out["steer_py"] = statistics.median(py) if py else float("nan")
                out["largest"] = max(u.nbytes for u in m.updates)
                out["largest_what"] = max(m.updates, key=lambda u: u.nbytes).what
                out["initial"] = m.initial.nbytes
                out["errors"] = m.js_errors() + wh.py_errors
                wh.close()
                context.close()
            finally:
                chromium.close()
    finally:
        server.close()
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--no-browser", action="store_true")
    parser.add_argument("--scale", choices=("toy", "gpt2", "gemma"), default="toy",
                        help="toy (default; then gpt2 in a subprocess unless --no-scale), or only a real-size case")
    parser.add_argument("--no-scale", action="store_true", help="skip the real-size case")
    parser.add_argument("--gemma-saes", type=int, default=2, help="SAEs in the Gemma-width case (default 2)")
    parser.add_argument("--corpus-tokens", type=int, default=4096,
                        help="tokens of the corpus-panel row at real size (default 4096; issue 19 names 100k)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (default 1: steady on a shared 2-core machine)")
    args = parser.parse_args(argv if argv is not None else [])
    threads_before = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        if args.scale != "toy":
            _run_scale(args)
            return
        _run(args)
        if not args.no_scale:
            import subprocess

            cmd = [sys.executable, "-m", "benchmarks.bench_features", "--scale", "gpt2",
                   "--threads", str(max(args.threads, 2)), "--repeats", str(min(args.repeats, 5))]
            done = subprocess.run(cmd, cwd=str(REPO), check=False, capture_output=True, text=True)
            print(done.stdout)  # through sys.stdout, so that benchmarks.run records it too
            if done.returncode:
                print(f"(the real-size case failed: {done.stderr.strip().splitlines()[-1:]})")
    finally:
        torch.set_num_threads(threads_before)


def _run(args: Any) -> None:
    from mechwidgets._model import ModelHandle
    from mechwidgets.analysis.features import bind_saes, feature_activations
    from mechwidgets.widgets.features import show_features

    model, saes, what = _toy_lm()
    toks = _prompt(model)
    handle = ModelHandle.wrap(model)
    bound = bind_saes(handle, saes)
    names = [b.hook_name for b in bound]

    def by_hand() -> None:
        with torch.no_grad():
            _, cache = model.run_with_cache(toks[None], names_filter=lambda n: n in names)
            for b in bound:
                b.sae.encode(cache[b.hook_name])

    def forward() -> None:
        with torch.no_grad():
            model(toks[None])

    encode = _median_ms(lambda: feature_activations(handle, bound, toks), args.repeats)
    hand = _median_ms(by_hand, args.repeats)
    fwd = _median_ms(forward, args.repeats)
    t0 = time.perf_counter()
    widget = show_features(model, saes, toks)
    build = (time.perf_counter() - t0) * 1000
    f = int(widget.trace.top_indices[1, N_POS - 1, 0])
    counter = iter(range(10**6))
    steer_py = _median_ms(lambda: widget.steer(1, f, 1.0 + next(counter) % 7), args.repeats)

    rows = [
        ("encode all SAEs (128 tokens)", f"{encode:.1f} ms", f"≤ {TARGET_ENCODE_MS:.0f} ms",
         f"{encode / hand:.2f}x TL run_with_cache + encode ({hand:.1f} ms); one forward {fwd:.1f} ms"),
        ("widget built (trace, labels, links)", f"{build:.0f} ms", "", f"links on {widget.links_info.get('n_tokens')} tokens"),
        ("steer (Python)", f"{steer_py:.1f} ms", "", "clean + spliced forward, all SAEs read"),
    ]
    if not args.no_browser:
        try:
            b = _browser(widget, args.repeats)
        except Exception as exc:  # no Chromium: report, do not fail the whole bench run
            rows.append(("browser rows", "skipped", "", f"{type(exc).__name__}: {exc}"[:90]))
        else:
            rows += [
                ("feature click → detail drawn (browser)", f"{b['click']:.1f} ms", "", ""),
                ("steer click → view updated (browser)", f"{b['steer']:.1f} ms", f"≤ {TARGET_STEER_MS:.0f} ms",
                 f"max {b['steer_max']:.1f} ms; of which Python handling {b['steer_py']:.1f} ms"),
                ("largest update", f"{b['largest'] / 1024:.1f} KiB", "≤ 4096 KiB", b["largest_what"][:40]),
                ("initial state (with ESM + CSS)", f"{b['initial'] / 1024:.1f} KiB", "", ""),
            ]
            if b["errors"]:
                rows.append(("page errors", str(len(b["errors"])), "0", str(b["errors"][0])[:80]))
    load = ""
    if hasattr(os, "getloadavg"):
        load = f", load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs"
    print(f"\nSAE features — {what}; {len(bound)} SAEs, torch threads {torch.get_num_threads()}{load}")
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    print(f"{'measure':<{widths[0]}}  {'value':>{widths[1]}}  {'target':<{widths[2]}}  notes")
    for r in rows:
        print(f"{r[0]:<{widths[0]}}  {r[1]:>{widths[1]}}  {r[2]:<{widths[2]}}  {r[3]}")


# ----------------------------------------------------------------------------------- real size
def _word_tokenizer(n_vocab: int) -> Any:
    """A word-level tokenizer of ``n_vocab`` tokens (``w0``, `` w1``, ...; BOS is 0), offline."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<|endoftext|>": 0, "<unk>": 1}
    for i in range(2, n_vocab):
        vocab[f" w{i}"] = i
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(" ", behavior="merged_with_next")
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|endoftext|>",
                                   eos_token="<|endoftext|>", unk_token="<unk>", pad_token="<|endoftext|>")
    folder = Path(tempfile.mkdtemp(prefix="mw-bench-words-"))
    fast.save_pretrained(str(folder))
    return PreTrainedTokenizerFast.from_pretrained(str(folder))


def _random_saes(hooks: list[str], d_in: int, d_sae: int, k: int, seed: int = 0,
                 jumprelu_scale: dict[str, float] | None = None) -> dict[str, Any]:
    """Random TopK SAEs, or JumpReLU SAEs (threshold 3, encoder scaled by ``1 / |x|`` of each
    hook so that about 0.1% of the features fire) when ``jumprelu_scale`` gives each hook's
    mean activation norm."""
    from mechwidgets.zoo import SimpleSAE, SimpleSAEConfig

    g = torch.Generator().manual_seed(seed)
    saes = {}
    for hook in hooks:
        arch = "jumprelu" if jumprelu_scale else "topk"
        sae = SimpleSAE(SimpleSAEConfig(d_in=d_in, d_sae=d_sae, architecture=arch,
                                        k=k if arch == "topk" else None,
                                        metadata=SimpleNamespace(hook_name=hook)))
        with torch.no_grad():
            if jumprelu_scale:
                sae.W_enc.normal_(0.0, 1.0 / jumprelu_scale[hook], generator=g)
                sae.threshold.fill_(3.0)
            else:
                sae.W_enc.normal_(0.0, d_in**-0.5, generator=g)
            sae.W_dec.normal_(0.0, 1.0, generator=g)
            sae.W_dec.div_(sae.W_dec.norm(dim=-1, keepdim=True))
        saes[hook] = sae.eval()
    return saes


def _rss(field: str = "VmRSS") -> int:
    """Bytes of ``field`` (VmRSS, VmHWM) from /proc/self/status."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    return 0


def _reset_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
    except OSError:
        return False
    return True


def _run_scale(args: Any) -> None:
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    from mechwidgets.widgets.features import show_features

    shape: dict[str, Any]
    if args.scale == "gpt2":
        shape = dict(n_layers=12, d_model=768, n_heads=12, d_head=64, d_mlp=3072, d_vocab=50257)
        n_saes, d_sae, k, n_pos = 12, 24576, 32, N_POS
        what = "GPT-2-small shape, 12 TopK SAEs x 24,576 features on hook_resid_pre"
    else:  # Gemma-2-2B width; a 50,257 vocabulary (Gemma's 256k embedding alone is 2.4 GB)
        shape = dict(n_layers=max(2, args.gemma_saes), d_model=2304, n_heads=8, d_head=256,
                     d_mlp=9216, d_vocab=50257)
        n_saes, d_sae, k, n_pos = args.gemma_saes, 65536, 64, 64
        what = (f"Gemma-2-2B width (d_model 2304, {shape['n_layers']} layers, vocabulary 50,257), "
                f"{n_saes} JumpReLU SAEs x 65,536 features")
    tok = _word_tokenizer(shape["d_vocab"])
    torch.manual_seed(0)
    model = HookedTransformer(HookedTransformerConfig(
        **shape, n_ctx=1024, act_fn="gelu_new", normalization_type="LN", seed=0), tokenizer=tok).eval()
    hooks = [f"blocks.{layer}.hook_resid_pre" for layer in range(n_saes)]
    g = torch.Generator().manual_seed(1)
    toks = torch.cat([torch.tensor([0]), torch.randint(2, shape["d_vocab"], (n_pos - 1,), generator=g)])
    scale = None
    if args.scale == "gemma":
        with torch.no_grad():
            _, cache = model.run_with_cache(toks[None], names_filter=lambda n: n in hooks)
        scale = {h: float(cache[h][0, 1:].norm(dim=-1).mean()) for h in hooks}
        del cache
    saes = _random_saes(hooks, shape["d_model"], d_sae, k, jumprelu_scale=scale)
    weights = sum(p.numel() * p.element_size() for s in saes.values() for p in s.parameters())

    def forward() -> None:
        with torch.no_grad():
            model(toks[None])

    fwd = _median_ms(forward, args.repeats)
    rss0 = _rss()
    reset = _reset_peak()
    t0 = time.perf_counter()
    widget = show_features(model, saes, toks, max_positions=n_pos)
    build = (time.perf_counter() - t0) * 1000
    tokens_ms, clicks, steers = [], [], []
    for r in range(args.repeats):
        pos = n_pos - 1 - r
        t0 = time.perf_counter()
        widget.select_token(pos)
        tokens_ms.append((time.perf_counter() - t0) * 1000)
        sae = min(n_saes - 1, 1 + r % max(1, n_saes - 1))
        f = int(widget.trace.top_indices[sae, pos, 0])
        t0 = time.perf_counter()
        widget.select_feature(sae, f)  # a feature not clicked before: its links are computed now
        clicks.append((time.perf_counter() - t0) * 1000)
    n_nodes = len(widget.feature["lineage"]["nodes"])
    f = int(widget.trace.top_indices[min(1, n_saes - 1), n_pos - 1, 0])
    for r in range(args.repeats + 1):
        t0 = time.perf_counter()
        widget.steer(min(1, n_saes - 1), f, 2.0 + r)
        if r:  # the first also runs the clean forward it keeps
            steers.append((time.perf_counter() - t0) * 1000)
    peak = _rss("VmHWM") if reset else 0
    budget = weights + 2**30
    # the corpus panel of one SAE: documents of 128 tokens, as the widget's job runs it
    n_docs = max(1, args.corpus_tokens // N_POS)
    corpus = torch.randint(2, shape["d_vocab"], (n_docs, N_POS), generator=g)
    corpus[:, 0] = 0
    steps: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    widget.session.corpus = corpus
    widget.observe(lambda ch: steps.append(ch["new"]) if ch["new"] else None, "progress")
    fc = widget.compute_corpus(min(1, n_saes - 1))
    corpus_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    with torch.no_grad():
        for lo in range(0, n_docs, 8):
            model(corpus[lo:lo + 8], return_type=None)
    corpus_fwd = time.perf_counter() - t0
    med = statistics.median
    rows = [
        ("plain forward (same prompt)", f"{fwd:.0f} ms", "", f"{n_pos} tokens"),
        ("features firing per token (median over SAEs)",
         f"{float(widget.trace.n_active[:, 1:].float().median()):.0f}", "", f"of {d_sae}"),
        ("widget built", f"{build:.0f} ms", "≤ 5000 ms" if args.scale == "gpt2" else "≤ 30000 ms",
         f"{build / fwd:.1f}x forward; links: {widget.links_info['by']}"),
        ("token click (labels of its features)", f"{med(tokens_ms):.0f} ms", "", f"{med(tokens_ms) / fwd:.2f}x forward"),
        ("feature click (links, lineage, logit effects)", f"{med(clicks):.0f} ms",
         "≤ 300 ms" if args.scale == "gpt2" else "≤ 1000 ms",
         f"{med(clicks) / fwd:.2f}x forward; max {max(clicks):.0f} ms; lineage of {n_nodes} nodes"),
        ("steer click (all positions)", f"{med(steers):.0f} ms", "≤ 500 ms" if args.scale == "gpt2" else "",
         f"{med(steers) / fwd:.2f}x forward; max {max(steers):.0f} ms"),
        ("peak memory above the resident size before the widget",
         f"{(peak - rss0) / 2**30:.2f} GiB" if reset else "n/a", "",
         f"resident before: {rss0 / 2**30:.2f} GiB (model + SAE weights {weights / 2**30:.2f} GiB)"),
        ("peak resident (whole widget phase)", f"{peak / 2**30:.2f} GiB" if reset else "n/a",
         f"≤ {(rss0 - weights + budget) / 2**30:.2f} GiB",
         "budget: model and process before the SAEs + SAE weights + 1 GiB"),
        (f"corpus panel, one SAE, {fc.n_tokens} tokens", f"{corpus_s:.1f} s", "",
         f"{corpus_s / corpus_fwd:.2f}x the plain forward over the same batches ({corpus_fwd:.1f} s); "
         f"{len(steps)} progress steps; at this rate 100k tokens: {corpus_s * 1e5 / max(1, fc.n_tokens):.0f} s"),
    ]
    if args.scale == "gemma":
        rows.append(("per SAE", f"{build / n_saes:.0f} ms built", "",
                     f"{(peak - rss0) / n_saes / 2**30:.2f} GiB above resident; weights "
                     f"{weights / n_saes / 2**30:.2f} GiB per SAE"))
    load = f", load average {os.getloadavg()[0]:.1f}" if hasattr(os, "getloadavg") else ""
    print(f"\nSAE features at real size — {what}; torch threads {torch.get_num_threads()}{load}")
    widths = [max(len(row[c]) for row in rows) for c in range(3)]
    print(f"{'measure':<{widths[0]}}  {'value':>{widths[1]}}  {'target':<{widths[2]}}  notes")
    for row in rows:
        print(f"{row[0]:<{widths[0]}}  {row[1]:>{widths[1]}}  {row[2]:<{widths[2]}}  {row[3]}")


if __name__ == "__main__":
    main(sys.argv[1:])
