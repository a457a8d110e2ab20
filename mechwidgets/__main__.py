"""Command line: ``python -m mechwidgets export notebook.ipynb [-o out.html]``.

Writes one self-contained HTML file of the notebook in which every widget draws its last view
from the notebook's saved widget state, with no kernel and no network (see
:mod:`mechwidgets._export`). A notebook is untrusted unless ``--trust`` says otherwise: only
mechwidgets' own widgets are drawn, by the installed package's code, never by code saved in it.
Needs the ``export`` extra (``pip install 'mechwidgets[export]'``).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m mechwidgets", description="mechwidgets command line.")
    sub = parser.add_subparsers(dest="command", required=True)
    exp = sub.add_parser(
        "export",
        help="write a notebook as one self-contained, offline HTML file",
        description=(
            "Write NOTEBOOK as one self-contained HTML file: Markdown, code and outputs, and every "
            "widget drawn from the notebook's saved widget state, offline (no CDN, no kernel). "
            "Execute the notebook with its widget state saved first (nbclient does; in JupyterLab "
            "turn on Settings > Save Widget State Automatically), or pass --execute. Only "
            "mechwidgets' own widgets are drawn, by the installed package's JavaScript, never by "
            "code saved in the notebook; other widgets show their saved picture or text unless "
            "--trust."
        ),
    )
    exp.add_argument("notebook", help="the .ipynb file")
    exp.add_argument("-o", "--output", help="the HTML file to write (default: NOTEBOOK with .html)")
    exp.add_argument("--execute", action="store_true", help="run the notebook first (saves its widget state)")
    exp.add_argument("--timeout", type=int, default=600, help="per-cell timeout in seconds with --execute (600)")
    exp.add_argument("--kernel", default=None, help="kernel name for --execute (default: the notebook's)")
    exp.add_argument(
        "--sanitize-html",
        action="store_true",
        help="also clean the notebook's own HTML outputs and Markdown, so that no script saved in "
        "the notebook runs (for notebooks you did not write)",
    )
    exp.add_argument(
        "--trust",
        action="store_true",
        help="the notebook is trusted: also draw other packages' anywidgets from the JavaScript "
        "saved in it (that code runs when the page is opened)",
    )
    exp.add_argument(
        "--max-state-mb",
        type=float,
        default=None,
        metavar="MB",
        help="the most saved state one widget may bring into the page, in MiB (default 32)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command == "export":
        if args.max_state_mb is not None and not args.max_state_mb > 0:
            parser.error(f"--max-state-mb must be a positive number of MiB, not {args.max_state_mb}")
        from ._export import MAX_STATE_BYTES, export_notebook
        from .errors import MechWidgetsError

        cap = MAX_STATE_BYTES if args.max_state_mb is None else int(args.max_state_mb * 2**20)
        try:
            summary = export_notebook(
                args.notebook,
                args.output,
                execute=args.execute,
                timeout=args.timeout,
                kernel_name=args.kernel,
                sanitize_html=args.sanitize_html,
                trust=args.trust,
                max_state_bytes=cap,
            )
        except (FileNotFoundError, IsADirectoryError, MechWidgetsError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        for warning in summary.warnings:
            print(f"warning: {warning}", file=sys.stderr)
        print(
            f"wrote {summary.path} ({summary.nbytes / 1024:.0f} KiB): {summary.interactive} "
            f"interactive widget view(s), {summary.static} shown as static picture/text"
            + (f" ({summary.untrusted} of other packages, not run: --trust runs them)" if summary.untrusted else "")
        )
        return 0
    return 1  # pragma: no cover - argparse rejects unknown commands


if __name__ == "__main__":
    sys.exit(main())
