"""Attention widget latency and message size in a real browser (system Chromium, headless).

Where: by default the LIGHT harness of ``tests/browser/harness.py``, not JupyterLab. The widget's
built ES module runs on a blank 127.0.0.1 page; its model is wired to the real Python
:class:`~mechwidgets.AttentionWidget` in this process: page → Python through one Playwright
binding, Python → page as JSON through the binding plus binary buffers fetched over HTTP from
127.0.0.1 (as a websocket carries them). That stands in for the Jupyter comm (websocket → server
→ ZMQ → kernel). Python work, message encoding, transport, decoding and drawing are included; the
Jupyter server hop is not. ``--lab`` runs the same clicks on a real JupyterLab page too (kernel in
its own process, real comm), and reports that table as well.

Model: the zoo's ``induction-2l`` when it loads and fits 128 positions, otherwise a random 2-layer
model (8 heads, d_model 64) with the test suite's offline tokenizer. Prompt: 128 tokens (BOS +
a random segment repeated, so induction heads have something to do).

Measured in the page with ``performance.now()``:

- **head click → pattern drawn**: from the ``click`` event (a capture listener on the document,
  before the widget's handler) to the moment a MutationObserver sees the detail title name the
  head with its float pattern, after the widget has painted the 128×128 canvas (it draws
  synchronously before the title mutation is observed); "+frame" adds the wait for the next
  animation frame, i.e. when the browser can put it on screen. Two cases: *layer prefetched*
  (the pointer hovered the thumbnail first, which fetches that layer's patterns; the click then
  needs no kernel round trip) and *cold* (a fresh widget; the click's own request brings the
  pattern from Python).
- **ablation toggle → predictions drawn**: from the click on "Ablate"/"Restore" to the
  predictions table showing the new set of ablated heads; includes the model's forward passes in
  Python (clean + ablated run, 128 positions).
- **largest single update**: the biggest kernel → page message (state update or custom reply:
  JSON text plus binary buffers) seen during the run; the initial state (sent once, when the
  widget is displayed, holding the ESM and CSS too) is listed separately.

The kernel side runs torch with 1 thread by default (``--threads``), as the speed table in
NOTES does: on a busy 2-core machine more threads spin against each other.

Run: ``python benchmarks/bench_attention_browser.py [--repeats 9] [--positions 128] [--lab]``
(``main()`` with no arguments is what ``benchmarks/run.py`` calls).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests" / "browser"))

import harness  # noqa: E402

TARGET_CLICK_MS = 100.0
TARGET_ABLATE_MS = 300.0
TARGET_UPDATE_BYTES = 4 * 1024 * 1024

_MEASURE_JS = r"""
(() => {
  // One measurement: t0 at the click (capture phase, before the widget's handler), t1 when
  // `done()` first holds after a DOM mutation inside `root`, t2 at the next animation frame.
  window.__bench = {
    arm(root, done) {
      return new Promise((resolve, reject) => {
        let t0 = null;
        const onClick = () => { if (t0 === null) t0 = performance.now(); };
        document.addEventListener("click", onClick, true);
        const timer = setTimeout(() => { obs.disconnect(); reject(new Error("timed out: " + done)); }, 20000);
        const check = new Function("root", "return (" + done + ")(root)");
        const obs = new MutationObserver(() => {
          if (t0 === null || !check(root)) return;
          const t1 = performance.now();
          obs.disconnect();
          clearTimeout(timer);
          document.removeEventListener("click", onClick, true);
          requestAnimationFrame(() => resolve({ dom: t1 - t0, frame: performance.now() - t0 }));
        });
        obs.observe(root, { subtree: true, childList: true, characterData: true, attributes: true });
      });
    },
  };
})();
"""


def build_model(positions: int) -> tuple[Any, str]:
    try:
        from mechwidgets import zoo

        model = zoo.load("induction-2l")
        if model.cfg.n_ctx >= positions and model.cfg.n_layers == 2:
            return model, "zoo induction-2l"
    except Exception:
        pass
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sys.path.insert(0, str(REPO / "tests"))
    from support import build_tokenizer, tiny_model

    tok = build_tokenizer(Path(tempfile.mkdtemp(prefix="mw-bench-tok-")))
    model = tiny_model(tok, n_layers=2, d_model=64, n_heads=8, d_head=8, d_mlp=256, n_ctx=max(positions, 128))
    return model, "random 2-layer model, 8 heads, d_model 64 (zoo induction-2l not available)"


def prompt_tokens(model: Any, positions: int) -> Any:
    import torch

    gen = torch.Generator().manual_seed(0)
    bos = model.tokenizer.bos_token_id
    vocab = int(model.cfg.d_vocab)
    low = 2 if vocab > 3 else 0
    half = (positions - 1) // 2
    seg = torch.randint(low, min(vocab, len(model.tokenizer)), (half,), generator=gen)
    rest = positions - 1 - 2 * half
    extra = torch.randint(low, min(vocab, len(model.tokenizer)), (rest,), generator=gen)
    return torch.cat([torch.tensor([bos]), seg, seg, extra]).long()


def _title_done(layer: int, head: int) -> str:
    text = f"L{layer}H{head} pattern (rows: destination token, columns: source token)"
    return f"r => r.querySelector('[data-testid=\"detail-title\"]').textContent === {text!r}"


def _table_done(heads: str) -> str:
    return (
        "r => { const t = r.querySelector('[data-testid=\"predictions\"] thead');"
        f" return !!t && t.textContent.includes({heads!r}); }}"
    )


def _measure(page: Any, root_selector: str, done: str, action: Any, settle: Any) -> dict[str, float]:
    page.evaluate(
        "([sel, done]) => { window.__bench.pending = window.__bench.arm(document.querySelector(sel), done); }",
        [root_selector, done],
    )
    action()
    result = page.evaluate("() => window.__bench.pending")  # Python serves the page's calls meanwhile
    settle()
    return {"dom": float(result["dom"]), "frame": float(result["frame"])}


def _check_canvas(root: Any, n: int, patterns: Any = None, layer_index: int = 0, head: int = 0) -> None:
    """The drawn canvas is the full pattern: n×n cells (and, given the patterns, the right colour
    at the last diagonal cell)."""
    canvas = root.locator(".mw-heatmap-canvas")
    assert canvas.evaluate("c => [c.width, c.height]") == [n, n]
    if patterns is None:
        return
    rgb = canvas.evaluate(f"c => Array.from(c.getContext('2d').getImageData({n - 1}, {n - 1}, 1, 1).data.slice(0, 3))")
    u = float(patterns[layer_index, head, n - 1, n - 1])
    expected = [round(255 - 225 * u), round(255 - 180 * u), round(255 - 75 * u)]
    assert all(abs(a - b) <= 1 for a, b in zip(rgb, expected, strict=True)), (rgb, expected)


def _cold_head(r: int, n_layers: int, n_heads: int) -> tuple[int, int]:
    return r % n_layers, (3 * r + 1) % n_heads


def _warm_head(r: int, n_layers: int, n_heads: int) -> tuple[int, int]:
    return r % n_layers, (5 * r + 2) % n_heads


def run(repeats: int = 9, positions: int = 128, threads: int = 1) -> dict[str, Any]:
    """The light harness: the widget on a blank page, wired to the Python widget in this process."""
    import torch
    from playwright.sync_api import sync_playwright

    import mechwidgets

    model, model_name = build_model(positions)
    torch.set_num_threads(threads)
    toks = prompt_tokens(model, positions)
    n_layers, n_heads = int(model.cfg.n_layers), int(model.cfg.n_heads)

    warm: list[dict[str, float]] = []
    cold: list[dict[str, float]] = []
    ablate: list[dict[str, float]] = []
    py_ablate: list[float] = []
    py_cold: list[float] = []
    updates: list[harness.Update] = []
    initial: harness.Update | None = None
    server = harness.StaticServer()
    try:
        with sync_playwright() as pw:
            chromium = harness.launch_chromium(pw)
            context, guard = harness.new_guarded_context(chromium)
            context.add_init_script(_MEASURE_JS)
            page_harness = harness.WidgetHarness(context, server)
            page = page_harness.page

            def mount() -> tuple[Any, Any, str]:
                w = mechwidgets.show_attention(model, toks)
                m = page_harness.mount(w)
                m.el.locator(".mw-thumb").first.wait_for()
                return w, m, f'[data-mw-host="{m.id}"]'

            # cold clicks: a fresh widget each time; nothing of its patterns is in the page yet
            for r in range(repeats):
                w, m, root = mount()
                layer, head = _cold_head(r, n_layers, n_heads)
                thumb = m.el.locator(f'[data-testid="thumb-{layer}-{head}"]')
                n_calls = len(page_harness.calls)
                cold.append(_measure(page, root, _title_done(layer, head), thumb.click, m.settle))
                py_cold.append(sum(t for _, t in page_harness.calls[n_calls:]))
                _check_canvas(m.el, len(toks), w.patterns, w.layers.index(layer), head)
                updates += m.updates
                initial = m.initial
                m.unmount()

            # prefetched clicks and ablation toggles on one widget
            w, m, root = mount()
            for r in range(repeats):
                layer, head = _warm_head(r, n_layers, n_heads)
                thumb = m.el.locator(f'[data-testid="thumb-{layer}-{head}"]')
                thumb.hover()  # prefetches the layer, as a user's pointer does on its way
                m.settle()
                warm.append(_measure(page, root, _title_done(layer, head), thumb.click, m.settle))
                _check_canvas(m.el, len(toks), w.patterns, w.layers.index(layer), head)

            layer, head = n_layers - 1, 0
            m.el.locator(f'[data-testid="thumb-{layer}-{head}"]').click()
            m.settle()
            button = m.el.locator('[data-testid="ablate-button"]')
            for r in range(2 * repeats):
                heads = f"after (zero: L{layer}H{head})" if r % 2 == 0 else "after (zero: none)"
                n_calls = len(page_harness.calls)
                ablate.append(_measure(page, root, _table_done(heads), button.click, m.settle))
                py_ablate += [t for what, t in page_harness.calls[n_calls:] if what == "custom:ablate"]
            updates += m.updates
            assert guard.blocked == [], guard.blocked
            assert page_harness.py_errors == [] and m.js_errors() == []
            context.close()
            chromium.close()
    finally:
        server.close()

    biggest = max(updates, key=lambda u: u.nbytes)
    return {
        "where": "light harness (blank 127.0.0.1 page, no Jupyter server)",
        "model": model_name,
        "positions": len(toks),
        "n_layers": n_layers,
        "n_heads": n_heads,
        "repeats": repeats,
        "click_cold": cold,
        "click_warm": warm,
        "ablate": ablate,
        "py_ablate_ms": [1000 * t for t in py_ablate],
        "py_cold_ms": [1000 * t for t in py_cold],
        "threads": threads,
        "largest_update": biggest,
        "initial": initial,
        "n_updates": len(updates),
    }


_LAB_SETUP = """\
import sys, json, warnings
warnings.filterwarnings("ignore")
sys.path.insert(0, {bench!r})
import torch, mechwidgets
import bench_attention_browser as _bench
model, model_name = _bench.build_model({positions})
torch.set_num_threads({threads})
toks = _bench.prompt_tokens(model, {positions})
sizes = []

def show():
    w = mechwidgets.show_attention(model, toks)
    send = w.comm.send
    def measured(data=None, metadata=None, buffers=None, **kw):
        what = data.get("method", "?") if isinstance(data, dict) else "?"
        content = data.get("content") if isinstance(data, dict) else None
        if isinstance(content, dict):
            what += " " + str(content.get("type")) + ":" + str(content.get("kind", ""))
        elif isinstance(data, dict) and "state" in data:
            what += " " + ",".join(sorted(data["state"]))
        sizes.append([what, len(json.dumps(data, default=str).encode()),
                      sum(memoryview(b).nbytes for b in (buffers or []))])
        return send(data=data, metadata=metadata, buffers=buffers, **kw)
    w.comm.send = measured
    return w

print(model_name)
"""


def run_lab(repeats: int = 5, positions: int = 128, threads: int = 1) -> dict[str, Any]:
    """The same clicks on a real JupyterLab page (kernel in its own process, real comm)."""
    from playwright.sync_api import sync_playwright

    lab = harness.JupyterLab()
    cold: list[dict[str, float]] = []
    warm: list[dict[str, float]] = []
    ablate: list[dict[str, float]] = []
    try:
        with sync_playwright() as pw:
            chromium = harness.launch_chromium(pw)
            context, guard = harness.new_guarded_context(chromium)
            context.add_init_script(_MEASURE_JS)
            lp = harness.LabPage(lab, context.new_page())
            lp.open("bench.ipynb", [_LAB_SETUP.format(bench=str(REPO / "benchmarks"), positions=positions, threads=threads)])
            model_name = lp.run_cell(0, timeout_ms=300_000).strip()
            info = lp.py_json("[int(model.cfg.n_layers), int(model.cfg.n_heads), len(toks)]")
            n_layers, n_heads, n = info

            def settle() -> None:
                lp.page.wait_for_timeout(200)
                lp.wait_idle()

            def show(tag: str) -> tuple[Any, str]:
                idx = lp.append_cell("w = show()\nw")
                lp.run_cell(idx)
                root = lp.cell(idx).locator(".mw-attention")
                root.locator(".mw-thumb").first.wait_for()
                root.evaluate("(el, tag) => { el.dataset.benchRoot = tag; }", tag)
                root.scroll_into_view_if_needed()
                return root, f'[data-bench-root="{tag}"]'

            for r in range(repeats):
                root, sel = show(f"cold{r}")
                layer, head = _cold_head(r, n_layers, n_heads)
                thumb = root.locator(f'[data-testid="thumb-{layer}-{head}"]')
                cold.append(_measure(lp.page, sel, _title_done(layer, head), thumb.click, settle))
                _check_canvas(root, n)

            root, sel = show("warm")
            for r in range(repeats):
                layer, head = _warm_head(r, n_layers, n_heads)
                thumb = root.locator(f'[data-testid="thumb-{layer}-{head}"]')
                thumb.hover()
                settle()
                warm.append(_measure(lp.page, sel, _title_done(layer, head), thumb.click, settle))
                _check_canvas(root, n)

            layer, head = n_layers - 1, 0
            root.locator(f'[data-testid="thumb-{layer}-{head}"]').click()
            settle()
            button = root.locator('[data-testid="ablate-button"]')
            for r in range(2 * repeats):
                heads = f"after (zero: L{layer}H{head})" if r % 2 == 0 else "after (zero: none)"
                ablate.append(_measure(lp.page, sel, _table_done(heads), button.click, settle))
            sizes = lp.py_json("sizes")
            assert guard.blocked == [], guard.blocked
            context.close()
            chromium.close()
    finally:
        lab.close()
    what, json_bytes, buffer_bytes = max(sizes, key=lambda s: s[1] + s[2])
    method, _, what = what.partition(" ")
    return {
        "where": "JupyterLab 4 page (kernel in its own process, real comm over websocket)",
        "model": model_name,
        "positions": n,
        "n_layers": n_layers,
        "n_heads": n_heads,
        "repeats": repeats,
        "click_cold": cold,
        "click_warm": warm,
        "ablate": ablate,
        "threads": threads,
        "largest_update": harness.Update(method, what, json_bytes, buffer_bytes),
        "initial": None,
        "n_updates": len(sizes),
    }


def _row(name: str, values: list[float], target: float | None, unit: str = "ms") -> str:
    med = statistics.median(values)
    lo, hi = min(values), max(values)
    if target is None:
        verdict = "(info)"
    else:
        verdict = "yes" if med <= target else "NO"
    tgt = f"<= {target:g} {unit}" if target is not None else ""
    return f"| {name} | {med:.1f} | {lo:.1f} – {hi:.1f} | {len(values)} | {tgt} | {verdict} |"


def report(res: dict[str, Any]) -> str:
    big: harness.Update = res["largest_update"]
    init: harness.Update | None = res["initial"]
    lines = [
        f"Attention widget in headless system Chromium — {res['where']}. "
        f"Model: {res['model']}; {res['positions']} tokens; {res['n_layers']} layers × {res['n_heads']} heads; "
        f"torch threads {res['threads']}; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs.",
        "",
        "| measurement | median ms | min – max | n | target | met |",
        "|---|---:|---:|---:|---|---|",
        _row("head click → 128-token pattern drawn, layer prefetched by hover", [m["dom"] for m in res["click_warm"]], TARGET_CLICK_MS),
        _row("  same, to the next animation frame", [m["frame"] for m in res["click_warm"]], None),
        _row("head click → pattern drawn, cold (pattern from the kernel)", [m["dom"] for m in res["click_cold"]], TARGET_CLICK_MS),
        _row("  same, to the next animation frame", [m["frame"] for m in res["click_cold"]], None),
    ]
    if res.get("py_cold_ms"):
        lines.append(_row("  of which Python (layer_patterns + select_head, encoding)", res["py_cold_ms"], None))
    lines += [
        _row("ablation toggle click → predictions drawn", [m["dom"] for m in res["ablate"]], TARGET_ABLATE_MS),
        _row("  same, to the next animation frame", [m["frame"] for m in res["ablate"]], None),
    ]
    if res.get("py_ablate_ms"):
        lines.append(_row("  of which Python (clean + ablated runs, encoding)", res["py_ablate_ms"], None))
    lines.append(
        f"| largest single update ({big.method} {big.what}), bytes | {big.nbytes:,} | | {res['n_updates']} msgs | <= 4 MiB | "
        f"{'yes' if big.nbytes <= TARGET_UPDATE_BYTES else 'NO'} |"
    )
    if init is not None:
        lines.append(
            f"| initial state (once, at display; {init.json_bytes:,} B of it JSON incl. ESM + CSS), bytes | {init.nbytes:,} | | 1 | | (info) |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--positions", type=int, default=128)
    parser.add_argument(
        "--threads", type=int, default=1,
        help="torch threads for the kernel side (default 1, as in NOTES' speed table: on a busy "
        "2-core machine OpenMP threads spin against each other and a 40 ms ablation takes 0.3-1.5 s)",
    )
    parser.add_argument(
        "--lab", action="store_true",
        help="also run the clicks on a real JupyterLab page (adds ~1 min: server and kernel start)",
    )
    args = parser.parse_args([] if argv is None else argv)
    start = time.perf_counter()
    res = run(args.repeats, args.positions, args.threads)
    print(report(res))
    out: dict[str, Any] = {"light": res}
    if args.lab:
        out["lab"] = run_lab(min(args.repeats, 5), args.positions, args.threads)
        print()
        print(report(out["lab"]))
    print(f"\n(bench took {time.perf_counter() - start:.0f} s)")
    return out


if __name__ == "__main__":
    main(sys.argv[1:])
