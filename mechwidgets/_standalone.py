"""One widget's last view as a self-contained page: the saved state, the payload, the runtime.

The pieces every export is made of (:mod:`mechwidgets._export` builds notebook pages from them;
:meth:`mechwidgets.widgets._base.MechWidget.to_html` builds a one-widget page):

- the built frontend files (:func:`static_file`): each widget's ES module, ``style.css`` and the
  standalone runtime (``js/standalone.ts`` → ``mechwidgets/static/standalone.js``), which
  implements the anywidget model interface over saved state (``send`` and ``save_changes`` do
  nothing), puts the saved binary buffers back at their paths and calls each widget's ``render``;
- a widget's saved state (:func:`widget_saved_state`): ipywidgets' own embed state;
- the payload (``<script type="application/json" id="mw-export-data">``): each drawn widget's
  state and base64 buffers, its ES module and CSS stored once per distinct text. Non-finite
  numbers become ``null``; one widget's state may be at most ``max_state_bytes``;
- a fallback inside every widget's host element: its static picture (``<img src="data:...">``,
  where an SVG runs no script) or its escaped text.

This module imports nothing of :mod:`mechwidgets.widgets` (the widget base imports it).
Everything a widget shows goes in as data, never as markup: the payload is JSON with every
``<``, ``>`` and ``&`` written as ``\\u003c``/``\\u003e``/``\\u0026`` (:func:`json_for_script`).
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ExportError, MechWidgetsError

#: Where the built frontend files are (``npm run build``; inside the wheel).
STATIC = Path(__file__).resolve().parent / "static"

#: Traits a static page overrides for mechwidgets widgets: there is no model behind the page.
STATIC_OVERRIDES: dict[str, Any] = {"live": False}

#: The most saved state (JSON, base64 buffers included) one widget may bring into a page. A
#: mechwidgets view is at most ~2 MB on a 128-token prompt (tests/test_export.py measures it).
MAX_STATE_BYTES = 32 * 1024 * 1024

_FALLBACK_CSS = """
.mw-export-fallback img { max-width: 100%; height: auto; }
.mw-export-fallback pre { white-space: pre-wrap; word-break: break-all; }
"""
_STATIC_PAGE_CSS = (
    "body { margin: 16px; background: #fff; color: #1f2328; font-family: system-ui, sans-serif; }"
    + _FALLBACK_CSS
)

# An ES module that imports from a URL would reach the network: such widgets keep their picture.
_REMOTE_IMPORT = re.compile(r"""(?:\bfrom\s*|\bimport\s*\(?\s*)["'`](?:https?:)?//""")


def static_file(name: str) -> Path:
    """Path of a built frontend file, with a clear error when the JS was never built."""
    path = STATIC / name
    if not path.exists():
        raise MechWidgetsError(
            f"the widget's frontend file {path} is missing: the JavaScript was not built. In a "
            f"source checkout run `npm ci && npm run build` (or `make dev`); an installed wheel "
            f"always contains it."
        )
    return path


# ------------------------------------------------------------------------------------ escaping
def json_for_script(obj: Any) -> str:
    """JSON that is safe inside a ``<script>`` element, whatever strings ``obj`` holds.

    ``<``, ``>`` and ``&`` only occur inside JSON strings, where ``\\u003c`` etc. mean the same
    character to ``JSON.parse``; with them gone the text can neither close the element
    (``</script>``) nor open an HTML comment (``<!--``). Non-ASCII (right-to-left marks, lone
    surrogates of broken tokens) is written as ``\\uXXXX`` too.
    """
    text = json.dumps(obj, ensure_ascii=True, separators=(",", ":"), allow_nan=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:16]



# ------------------------------------------------------------------------------------ state
def widget_saved_state(widget: Any) -> dict[str, Any]:
    """The entry a notebook saves for ``widget`` (ipywidgets' widget-state format, version 2).

    ``{"model_name", "model_module", "model_module_version", "state", "buffers": [{path, data
    (base64), encoding}]}``, with every trait (``drop_defaults=False``: anywidget's ``_esm`` is
    kept; ``buffers`` is ``[]`` when there are none). Its JSON size is what the widget adds to a
    saved notebook.

    Made by ipywidgets itself: ``ipywidgets.embed.dependency_state([widget],
    drop_defaults=False)`` is this method's entry for ``widget`` plus those of the widgets its
    traits reference (for a mechwidgets widget only its ``layout``, which no page draws). The
    method is called directly because the package imports nothing from ipywidgets
    (``tests/test_export.py::test_package_uses_no_ipywidgets_containers``). For all six widgets
    its entry is the same JSON as ``dependency_state``'s and as the hand-written copy it replaced.
    """
    entry: dict[str, Any] = widget._get_embed_state(drop_defaults=False)
    entry.setdefault("buffers", [])
    return entry


def saved_state_nbytes(widget: Any) -> int:
    """Bytes of ``widget``'s saved state as JSON, base64 buffers included (its notebook cost)."""
    return len(json.dumps(widget_saved_state(widget), separators=(",", ":")).encode("utf-8"))


def without_nonfinite(obj: Any) -> tuple[Any, int]:
    """``obj`` with every ``NaN``/``Infinity`` float replaced by ``None``, and how many there were.

    JSON has no such numbers: a browser's ``JSON.stringify`` writes them as ``null`` (what a
    widget manager would have received), while Python's ``json`` writes invalid ``NaN`` tokens.
    """
    count = 0

    def walk(v: Any) -> Any:
        nonlocal count
        if isinstance(v, float) and not math.isfinite(v):
            count += 1
            return None
        if isinstance(v, dict):
            return {k: walk(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [walk(x) for x in v]
        return v

    return walk(obj), count


def _esm_of(state: dict[str, Any]) -> str | None:
    esm = state.get("_esm")
    if not isinstance(esm, str) or not esm.strip():
        return None
    if re.match(r"^\s*(?:https?:)?//", esm) or _REMOTE_IMPORT.search(esm):
        return None
    return esm



@dataclass
class _Payload:
    """What the runtime reads: modules and styles stored once, models referencing them."""

    max_state_bytes: int = MAX_STATE_BYTES
    modules: dict[str, str] = field(default_factory=dict)
    styles: dict[str, str] = field(default_factory=dict)
    models: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: NaN/Infinity numbers written as null
    nonfinite: int = 0

    def add(self, model_id: str, state: dict[str, Any], buffers: list[Any], esm: str, css: Any,
            *, ours: bool, label: str) -> None:
        """Add one widget drawn by ``esm``; its state's own ``_esm``/``_css`` are never used."""
        state = {k: v for k, v in state.items() if k not in ("_esm", "_css")}
        if ours:
            for key, value in STATIC_OVERRIDES.items():
                if key in state:
                    state[key] = value
        state, nonfinite = without_nonfinite(state)
        nbytes = len(json.dumps(state, separators=(",", ":"))) + sum(len(b["data"]) for b in buffers)
        if nbytes > self.max_state_bytes:
            mb = math.ceil(nbytes / 2**20)
            raise ExportError(
                f"{label} has {nbytes / 2**20:.1f} MiB of saved state, over the limit of "
                f"{self.max_state_bytes / 2**20:g} MiB for one widget (a page that large is slow to "
                f"open and share). If you mean it, raise the limit: --max-state-mb {mb} "
                f"(max_state_bytes={mb} * 2**20); otherwise give the widget smaller budgets "
                f"(max_positions, top_k, layers) or clear that output before saving."
            )
        self.nonfinite += nonfinite
        module = _hash(esm)
        self.modules[module] = esm
        style = None
        if isinstance(css, str) and css.strip():
            style = _hash(css)
            self.styles[style] = css
        self.models[model_id] = {"module": module, "style": style, "state": state, "buffers": list(buffers)}

    def script(self) -> str:
        data = {"version": 1, "modules": self.modules, "styles": self.styles, "models": self.models}
        return (
            f'<script type="application/json" id="mw-export-data">{json_for_script(data)}</script>\n'
            f'<script type="module">{runtime_js()}</script>\n'
        )


def runtime_js() -> str:
    """The built standalone runtime, checked to be safe to inline in a ``<script>`` element."""
    code = static_file("standalone.js").read_text(encoding="utf-8")
    lowered = code.lower()
    if "</script" in lowered or "<!--" in lowered:  # pragma: no cover - guarded by a test
        raise RuntimeError("standalone.js contains '</script' or '<!--' and cannot be inlined")
    return code


# ------------------------------------------------------------------------------------ fallback
def fallback_html(data: dict[str, Any], *, alt: str = "widget") -> str:
    """Markup for a MIME bundle where no widget can draw: its picture, else its text.

    Pictures go in ``<img src="data:...">``, so an SVG cannot run a script; text is escaped.
    """
    alt_attr = html.escape(alt, quote=True)
    svg = data.get("image/svg+xml")
    if isinstance(svg, list):
        svg = "".join(svg)
    if isinstance(svg, str) and svg.strip():
        b64 = base64.b64encode(svg.encode("utf-8", "replace")).decode("ascii")
        return f'<img class="mw-export-picture" alt="{alt_attr}" src="data:image/svg+xml;base64,{b64}">'
    for mime in ("image/png", "image/jpeg"):
        img = data.get(mime)
        if isinstance(img, list):
            img = "".join(img)
        if isinstance(img, str) and img.strip():
            b64 = re.sub(r"\s+", "", img)
            if re.fullmatch(r"[A-Za-z0-9+/=]*", b64):
                return f'<img class="mw-export-picture" alt="{alt_attr}" src="data:{mime};base64,{b64}">'
    text = data.get("text/plain", "")
    if isinstance(text, list):
        text = "".join(text)
    return f"<pre>{html.escape(str(text), quote=True)}</pre>" if text else ""


def _host(model_id: str, fallback: str) -> str:
    mid = html.escape(model_id, quote=True)
    return (
        f'<div class="mw-export-widget" data-mw-model-id="{mid}">'
        f'<div class="mw-export-fallback">{fallback}</div></div>'
    )


# ------------------------------------------------------------------------------------ one widget
def widget_to_html(
    widget: Any,
    path: str | os.PathLike[str] | None = None,
    *,
    title: str | None = None,
    max_state_bytes: int = MAX_STATE_BYTES,
) -> str:
    """One self-contained HTML page of ``widget``'s current view; written to ``path`` if given.

    The page inlines the runtime, the widget's ES module, CSS and state (buffers in base64), and
    the static picture as a fallback: opening it makes no network request and needs no kernel.
    Clicks that would ask the kernel for more (another head's full pattern, an ablation) do
    nothing there; everything saved in the traits is drawn. A live widget is the user's own, so
    its own ES module draws it; ``NaN``/``Infinity`` in its traits are written as ``null``.

    Raises:
        ExportError: the widget has no inline ES module, or more than ``max_state_bytes`` of state.

    Returns:
        The HTML text.
    """
    entry = widget_saved_state(widget)
    model_id = str(getattr(widget, "model_id", None) or "widget")
    esm = _esm_of(entry["state"])
    if esm is None:
        raise ExportError(
            f"{type(widget).__name__} has no inline ES module (_esm) that imports nothing from a "
            f"URL: it cannot be drawn offline, so it cannot be exported as HTML."
        )
    payload = _Payload(max_state_bytes=max_state_bytes)
    ours = str(entry["state"].get("_anywidget_id", "")).startswith("mechwidgets.")
    payload.add(model_id, entry["state"], entry["buffers"], esm, entry["state"].get("_css"),
                ours=ours, label=f"this {type(widget).__name__}")
    bundle: dict[str, Any] = {"text/plain": repr(widget)}
    try:
        svg = widget._static_svg() if hasattr(widget, "_static_svg") else None
    except Exception:  # the picture is a fallback: never let it break the export
        svg = None
    if svg:
        bundle["image/svg+xml"] = svg
    name = title if title is not None else type(widget).__name__
    page = (
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{html.escape(name)}</title>\n<style>{_STATIC_PAGE_CSS}</style>\n</head>\n<body>\n<main>\n"
        f"{_host(model_id, fallback_html(bundle, alt=name))}\n</main>\n{payload.script()}</body>\n</html>\n"
    )
    if path is not None:
        Path(path).write_text(page, encoding="utf-8", errors="replace")
    return page


def to_html(self: Any, path: str | os.PathLike[str] | None = None, *, title: str | None = None) -> str:
    """Write this widget's current view as one self-contained, offline HTML file.

    The page inlines a small runtime, the widget's ES module, CSS and state (binary buffers in
    base64) and its static picture as a fallback: opening it makes no network request and needs
    no kernel. Clicks that would ask the kernel for more do nothing there. (``MechWidget.to_html``
    is this function.)

    Args:
        path: where to write the file; ``None`` only returns the text.
        title: the page title (default: the widget's class name).

    Returns:
        The HTML text.
    """
    return widget_to_html(self, path, title=title)


__all__ = [
    "MAX_STATE_BYTES",
    "STATIC",
    "STATIC_OVERRIDES",
    "fallback_html",
    "json_for_script",
    "runtime_js",
    "saved_state_nbytes",
    "static_file",
    "to_html",
    "widget_saved_state",
    "widget_to_html",
    "without_nonfinite",
]
