"""Patching widget latency and message size in a real browser (system Chromium, headless).

Where: the light harness of ``tests/browser/harness.py`` (as ``bench_attention_browser.py``
explains): the widget's built ES module on a blank 127.0.0.1 page, its model wired to the real
Python :class:`~mechwidgets.PatchingWidget` in this process. Python work, encoding, transport,
decoding and drawing are included; the Jupyter server hop is not.

Model: the zoo's ``toy-lm``; prompt "When Mary and John went to the store, John gave a drink
to". Measured in the page with ``performance.now()``, from the click (a capture listener on the
document, before the widget's handler) to the first DOM mutation after which the view shows it:

- **token replacement click → attribution grid drawn** (target ≤ 500 ms): a fresh widget with no
  corrupted prompt, a clean token clicked, a proposed replacement clicked; until the attribution
  heatmap is drawn. Includes the corrupted run for the default answers and attribution patching.
- **same click → first exact layer painted** (target ≤ 1 s).
- **direction toggle on cached results → redrawn** (target ≤ 100 ms): both directions computed
  first; a click on *noising*/*denoising* redraws from the trait without a kernel call.
- **metric change on cached results → redrawn** (target ≤ 100 ms), the same through the select.
- **largest single update** (target ≤ 4 MiB).

Run: ``python benchmarks/bench_patching_browser.py [--repeats 5] [--threads 1]``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests" / "browser"))

import harness  # noqa: E402

PROMPT = "When Mary and John went to the store, John gave a drink to"
TARGETS = {"attribution": 500.0, "exact_first": 1000.0, "toggle": 100.0, "metric": 100.0}
TARGET_UPDATE_BYTES = 4 * 1024 * 1024

_MEASURE_JS = r"""
(() => {
  // t0 at the click or change (capture phase, before the widget's handler); t1 when `done(root)`
  // first holds after a DOM mutation inside `root`.
  window.__bench = {
    arm(root, done) {
      return new Promise((resolve, reject) => {
        let t0 = null;
        const start = () => { if (t0 === null) t0 = performance.now(); };
        document.addEventListener("click", start, true);
        document.addEventListener("change", start, true);
        const check = new Function("root", "return (" + done + ")(root)");
        const timer = setTimeout(() => { obs.disconnect(); reject(new Error("timed out: " + done)); }, 30000);
        const obs = new MutationObserver(() => {
          if (t0 === null || !check(root)) return;
          const t1 = performance.now();
          obs.disconnect();
          clearTimeout(timer);
          document.removeEventListener("click", start, true);
          document.removeEventListener("change", start, true);
          resolve(t1 - t0);
        });
        obs.observe(root, { subtree: true, childList: true, characterData: true, attributes: true });
      });
    },
  };
})();
"""

ATTRIBUTION_DRAWN = "r => r.querySelector('[data-testid=\"attribution-grid\"]').style.visibility === 'visible'"
EXACT_FIRST = (
    "r => { const t = r.querySelector('[data-testid=\"exact-title\"]').textContent;"
    " const m = t.match(/\\((\\d+)\\//); return r.querySelector('[data-testid=\"exact-grid\"]').style.visibility"
    " === 'visible' && (m ? Number(m[1]) >= 1 : t.trim() === 'Exact patching'); }"
)


def _help_starts(word: str) -> str:
    return f"r => r.querySelector('[data-testid=\"direction-help\"]').textContent.startsWith({word!r})"


def _metric_drawn(label: str) -> str:
    return f"r => r.querySelector('[data-testid=\"baselines\"]').textContent.startsWith({label!r})"


def _wait(page: Any, m: Any, expr: str, timeout_s: float = 60.0) -> Any:
    """Poll ``expr`` in the page until it is not null, delivering what Python sent meanwhile.

    The harness delivers kernel → page messages when Python flushes them (a kernel pushes them
    itself): a long job's updates (the exact grid, layer by layer) reach the page at the next
    poll, every ~5 ms, which the measured times include."""
    deadline = time.monotonic() + timeout_s
    while True:
        m.flush()
        value = page.evaluate(expr)
        if value is not None:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(expr)
        page.wait_for_timeout(5)  # the event loop runs the widget's job steps meanwhile


def _measure(page: Any, m: Any, root: str, done: str, action: Any) -> float:
    page.evaluate("([sel, done]) => { window.__bench.value = null;"
                  " window.__bench.arm(document.querySelector(sel), done).then(v => { window.__bench.value = v; }); }",
                  [root, done])
    action()
    return float(_wait(page, m, "() => window.__bench.value"))


def run(repeats: int = 5, threads: int = 1) -> dict[str, Any]:
    import torch
    from playwright.sync_api import sync_playwright

    import mechwidgets
    from mechwidgets import zoo

    model = zoo.load("toy-lm")
    torch.set_num_threads(threads)
    res: dict[str, list[float]] = {k: [] for k in TARGETS}
    updates: list[harness.Update] = []
    server = harness.StaticServer()
    try:
        with sync_playwright() as pw:
            chromium = harness.launch_chromium(pw)
            context, guard = harness.new_guarded_context(chromium)
            context.add_init_script(_MEASURE_JS)
            ph = harness.WidgetHarness(context, server)
            page = ph.page
            for r in range(repeats):
                w = mechwidgets.show_patching(model, PROMPT)
                m = ph.mount(w)
                root = f'[data-mw-host="{m.id}"]'
                pos = [2, 4, 10][r % 3]  # Mary, John, John (S2)
                m.el.locator(f'[data-testid="clean-tokens"] .mw-token[data-pos="{pos}"]').click()
                cand = m.el.locator('[data-testid="candidate"]').nth(r % 4)
                cand.wait_for()
                m.settle()
                page.evaluate("([sel, a, b]) => { window.__bench.both = null; Promise.all(["
                              "window.__bench.arm(document.querySelector(sel), a),"
                              "window.__bench.arm(document.querySelector(sel), b)])"
                              ".then(v => { window.__bench.both = v; }); }",
                              [root, ATTRIBUTION_DRAWN, EXACT_FIRST])
                cand.click()
                attribution, exact_first = _wait(page, m, "() => window.__bench.both")
                res["attribution"].append(float(attribution))
                res["exact_first"].append(float(exact_first))
                m.settle(timeout_ms=60_000)
                # both directions and two metrics cached, then toggles from the page
                w.show(direction="noising")
                w.show(direction="noising", metric="logprob")
                w.show(direction="denoising", metric="logprob")
                w.show(direction="denoising", metric="logit_diff")
                m.settle()
                for direction, word in (("noising", "Noising"), ("denoising", "Denoising")):
                    button = m.el.locator(f'[data-testid="direction"] [data-value="{direction}"]')
                    res["toggle"].append(_measure(page, m, root, _help_starts(word), button.click))
                    m.settle()
                select = m.el.locator('[data-testid="metric"]')
                for metric, label in (("logprob", "log prob of answer"), ("logit_diff", "logit difference")):
                    res["metric"].append(_measure(page, m, root, _metric_drawn(label),
                                                  lambda s=select, v=metric: s.select_option(v)))
                    m.settle()
                assert len(w.grids) == 4, sorted(w.grids)  # the toggles computed nothing new
                updates += m.updates
                m.unmount()
            assert guard.blocked == [], guard.blocked
            assert ph.py_errors == [], ph.py_errors
            context.close()
            chromium.close()
    finally:
        server.close()
    return {"res": res, "largest": max(updates, key=lambda u: u.nbytes),
            "n_updates": len(updates), "threads": threads, "repeats": repeats,
            "model": f"zoo toy-lm ({model.cfg.n_layers} layers, {model.cfg.n_heads} heads)",
            "positions": len(model.to_str_tokens(PROMPT))}


def report(out: dict[str, Any]) -> str:
    names = {
        "attribution": "token replacement click → attribution grid drawn",
        "exact_first": "same click → first exact layer painted",
        "toggle": "direction toggle, cached → redrawn",
        "metric": "metric change, cached → redrawn",
    }
    lines = [
        f"Patching widget in headless system Chromium, light harness (no Jupyter server). Model: "
        f"{out['model']}; {out['positions']} tokens; torch threads {out['threads']}; load average "
        f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs.",
        "",
        "| measurement | median ms | min – max | n | target | met |",
        "|---|---:|---:|---:|---|---|",
    ]
    for key, label in names.items():
        v = out["res"][key]
        med = statistics.median(v)
        lines.append(f"| {label} | {med:.1f} | {min(v):.1f} – {max(v):.1f} | {len(v)} | <= {TARGETS[key]:g} ms | "
                     f"{'yes' if med <= TARGETS[key] else 'NO'} |")
    big: harness.Update = out["largest"]
    lines.append(f"| largest single update ({big.method} {big.what}), bytes | {big.nbytes:,} | | {out['n_updates']} msgs | "
                 f"<= 4 MiB | {'yes' if big.nbytes <= TARGET_UPDATE_BYTES else 'NO'} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args([] if argv is None else argv)
    start = time.perf_counter()
    table = report(run(args.repeats, args.threads))
    print(table)
    print(f"\n(bench took {time.perf_counter() - start:.0f} s)")
    return table


if __name__ == "__main__":
    main(sys.argv[1:])
