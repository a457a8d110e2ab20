"""Run every ``benchmarks/bench_*.py`` (``make bench``): ``python -m benchmarks.run [name ...]``.

Each benchmark module has a ``main()``. Its table goes to the terminal and to
``benchmarks/results/<name>.md`` (git-ignored), ``name`` being the module name without
``bench_`` (``patching`` for ``bench_patching.py``): the Markdown string ``main()`` returns, or,
where it returns nothing, everything it printed. Pass names to run only those.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"


def discover() -> list[str]:
    """Benchmark names, in file-name order."""
    return sorted(p.stem.removeprefix("bench_") for p in HERE.glob("bench_*.py"))


class _Tee(io.StringIO):
    """Keeps what is printed while still printing it."""

    def __init__(self, stream: Any):
        super().__init__()
        self.stream = stream

    def write(self, text: str) -> int:
        self.stream.write(text)
        self.stream.flush()
        return super().write(text)


def main(argv: list[str] | None = None) -> int:
    names = list(sys.argv[1:] if argv is None else argv) or discover()
    unknown = sorted(set(names) - set(discover()))
    if unknown:
        print(f"unknown benchmark(s) {unknown}; known: {discover()}", file=sys.stderr)
        return 2
    RESULTS.mkdir(exist_ok=True)
    failed = []
    for name in names:
        start = time.perf_counter()
        print(f"== benchmarks/bench_{name}.py", flush=True)
        tee = _Tee(sys.stdout)
        try:
            with contextlib.redirect_stdout(tee):
                table = importlib.import_module(f"benchmarks.bench_{name}").main()
        except Exception as exc:  # one failing benchmark does not stop the others
            print(f"bench_{name} failed: {type(exc).__name__}: {exc}", file=sys.stderr)
            failed.append(name)
            continue
        if isinstance(table, str):
            print(table)
        else:
            table = tee.getvalue()
        out = RESULTS / f"{name}.md"
        out.write_text(table if table.endswith("\n") else table + "\n")
        print(
            f"({time.perf_counter() - start:.0f} s; written to {out.relative_to(HERE.parent)})\n",
            flush=True,
        )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
