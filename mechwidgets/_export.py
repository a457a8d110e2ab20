"""Self-contained HTML of widgets and notebooks: every widget's last view, offline.

``jupyter nbconvert --to html`` loads require.js, the ipywidgets HTML manager and anywidget from
CDNs, so offline its widgets are blank. This module writes ONE HTML file that needs nothing but
itself:

- a small runtime (``js/standalone.ts``, built to ``mechwidgets/static/standalone.js``) that
  implements the anywidget model interface (``get/set/on/off``; ``send`` and ``save_changes``
  do nothing) over the saved state, puts the saved binary buffers back at their nested paths as
  ``DataView`` s, imports each widget's ES module from a Blob URL and calls its ``render``;
- a payload in ``<script type="application/json" id="mw-export-data">``: each widget's saved
  state and buffers (base64), its ES module and CSS (stored once per distinct text);
- for every widget, a fallback inside its host element (the static SVG/PNG picture of its MIME
  bundle, else its ``text/plain``), shown when scripts are off and replaced once the widget drew.

Entry points: :func:`widget_to_html` (``widget.to_html(path)``), :func:`notebook_to_html` and
:func:`export_notebook` (``python -m mechwidgets export notebook.ipynb -o out.html``). A notebook
must carry its widget state (``nbclient`` saves it when it executes a notebook; JupyterLab's
"Save Widget State Automatically"), or be exported with ``execute=True``.

Safety: a shared notebook is untrusted. Everything a widget shows goes in as data, never as
markup: the payload is JSON inside a ``<script type="application/json">`` with every ``<``, ``>``
and ``&`` written as ``\\u003c``/``\\u003e``/``\\u0026`` (so ``</script>`` or ``<!--`` in a token
cannot end or confuse the script element), the widgets insert text with ``textContent``, and
fallback pictures are ``<img src="data:...">`` (an SVG in an ``<img>`` runs no script). Other
anywidgets whose ES module imports from a URL are shown by their fallback, so the page never makes a
network request. The notebook's own HTML outputs and Markdown are rendered as nbconvert renders
them; pass ``sanitize_html=True`` (``--sanitize-html``) to clean them too.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import html
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

WIDGET_STATE_MIME = "application/vnd.jupyter.widget-state+json"
WIDGET_VIEW_MIME = "application/vnd.jupyter.widget-view+json"

#: Traits a static page overrides for mechwidgets widgets: there is no model behind the page.
STATIC_OVERRIDES: dict[str, Any] = {"live": False}

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
def _split_buffers(obj: Any, path: list[Any], out: list[dict[str, Any]]) -> Any:
    """Remove ``bytes``/``memoryview`` values from a state, recording them ipywidgets-style."""
    if isinstance(obj, (bytes, bytearray, memoryview)):
        raw = obj.tobytes() if isinstance(obj, memoryview) else bytes(obj)
        out.append({"path": list(path), "data": base64.b64encode(raw).decode("ascii"), "encoding": "base64"})
        return None
    if isinstance(obj, dict):
        kept: dict[str, Any] = {}
        for k, v in obj.items():
            if isinstance(v, (bytes, bytearray, memoryview)):
                _split_buffers(v, [*path, k], out)  # ipywidgets drops the key; put_buffers adds it
            else:
                kept[k] = _split_buffers(v, [*path, k], out)
        return kept
    if isinstance(obj, (list, tuple)):
        return [_split_buffers(v, [*path, i], out) for i, v in enumerate(obj)]
    return obj


def widget_saved_state(widget: Any) -> dict[str, Any]:
    """The entry a notebook saves for ``widget`` (ipywidgets' widget-state format, version 2).

    ``{"model_name", "model_module", "model_module_version", "state", "buffers": [{path, data
    (base64), encoding}]}``, with every trait (``drop_defaults=False``: anywidget's ``_esm`` is
    kept). Its JSON size is what the widget adds to a saved notebook.
    """
    state = widget.get_state()
    buffers: list[dict[str, Any]] = []
    clean = _split_buffers(state, [], buffers)
    return {
        "model_name": clean.get("_model_name", ""),
        "model_module": clean.get("_model_module", ""),
        "model_module_version": clean.get("_model_module_version", ""),
        "state": clean,
        "buffers": buffers,
    }


def saved_state_nbytes(widget: Any) -> int:
    """Bytes of ``widget``'s saved state as JSON, base64 buffers included (its notebook cost)."""
    return len(json.dumps(widget_saved_state(widget), separators=(",", ":")).encode("utf-8"))


def _esm_of(state: dict[str, Any]) -> str | None:
    esm = state.get("_esm")
    if not isinstance(esm, str) or not esm.strip():
        return None
    if re.match(r"^\s*(?:https?:)?//", esm) or _REMOTE_IMPORT.search(esm):
        return None
    return esm


def is_renderable(entry: dict[str, Any]) -> bool:
    """True for a saved anywidget whose ES module is inline and imports nothing from a URL."""
    state = entry.get("state") if isinstance(entry, dict) else None
    return isinstance(state, dict) and _esm_of(state) is not None


@dataclass
class _Payload:
    """What the runtime reads: modules and styles stored once, models referencing them."""

    modules: dict[str, str] = field(default_factory=dict)
    styles: dict[str, str] = field(default_factory=dict)
    models: dict[str, dict[str, Any]] = field(default_factory=dict)

    def add(self, model_id: str, entry: dict[str, Any]) -> bool:
        if not is_renderable(entry):
            return False
        state = dict(entry["state"])
        esm = state.pop("_esm")
        css = state.pop("_css", None)
        module = _hash(esm)
        self.modules[module] = esm
        style = None
        if isinstance(css, str) and css.strip():
            style = _hash(css)
            self.styles[style] = css
        if str(state.get("_anywidget_id", "")).startswith("mechwidgets."):
            for key, value in STATIC_OVERRIDES.items():
                if key in state:
                    state[key] = value
        self.models[model_id] = {
            "module": module,
            "style": style,
            "state": state,
            "buffers": list(entry.get("buffers") or []),
        }
        return True

    def script(self) -> str:
        data = {"version": 1, "modules": self.modules, "styles": self.styles, "models": self.models}
        return (
            f'<script type="application/json" id="mw-export-data">{json_for_script(data)}</script>\n'
            f'<script type="module">{runtime_js()}</script>\n'
        )


def runtime_js() -> str:
    """The built standalone runtime, checked to be safe to inline in a ``<script>`` element."""
    from .widgets._base import static_file

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
def widget_to_html(widget: Any, path: str | os.PathLike[str] | None = None, *, title: str | None = None) -> str:
    """One self-contained HTML page of ``widget``'s current view; written to ``path`` if given.

    The page inlines the runtime, the widget's ES module, CSS and state (buffers in base64), and
    the static picture as a fallback: opening it makes no network request and needs no kernel.
    Clicks that would ask the kernel for more (another head's full pattern, an ablation) do
    nothing there; everything saved in the traits is drawn.

    Returns:
        The HTML text.
    """
    entry = widget_saved_state(widget)
    model_id = str(getattr(widget, "model_id", None) or "widget")
    payload = _Payload()
    if not payload.add(model_id, entry):
        raise ValueError(f"{type(widget).__name__} has no inline ES module (_esm): it cannot be exported as HTML")
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

    Args:
        path: where to write it; ``None`` only returns the text.
        title: the page title (default: the widget's class name).

    Returns:
        The HTML text. Opening it makes no network request: the runtime, the widget's code and
        its data are all inside.
    """
    return widget_to_html(self, path, title=title)


# ------------------------------------------------------------------------------------ notebooks
_TEMPLATE_NAME = "mechwidgets_export.html.j2"
_TEMPLATE = r"""{%- extends 'index.html.j2' -%}
{%- block html_head_js -%}{%- endblock html_head_js -%}
{%- block jupyter_widgets -%}{%- endblock jupyter_widgets -%}
{%- block html_head_js_mathjax -%}{%- endblock html_head_js_mathjax -%}
{%- block html_head_js_mermaidjs -%}{%- endblock html_head_js_mermaidjs -%}
{%- block extra_css -%}<style type="text/css">{{ resources.mw_css }}</style>{%- endblock extra_css -%}
{%- block data_widget_view scoped -%}
<div class="jp-OutputArea-output {{ extra_class }}">{{ output.metadata.get('mechwidgets_host', '') }}</div>
{%- endblock data_widget_view -%}
{%- block body_footer -%}
</main>
{{ resources.mw_footer }}
</body>
{%- endblock body_footer -%}
{%- block footer -%}
</html>
{%- endblock footer -%}
"""


@dataclass
class ExportSummary:
    """What :func:`export_notebook` wrote."""

    path: Path | None
    nbytes: int
    interactive: int = 0
    static: int = 0
    warnings: list[str] = field(default_factory=list)


def _widget_outputs(nb: Any) -> list[Any]:
    return [
        out
        for cell in nb.get("cells", [])
        if cell.get("cell_type") == "code"
        for out in cell.get("outputs", [])
        if out.get("output_type") in ("display_data", "execute_result") and WIDGET_VIEW_MIME in out.get("data", {})
    ]


def notebook_to_html(nb: Any, *, sanitize_html: bool = False, name: str = "notebook") -> tuple[str, ExportSummary]:
    """Render a notebook (an ``nbformat`` node, with saved widget state) as one offline HTML page.

    Markdown, code, text, images and HTML outputs are rendered by nbconvert's ``lab`` template with
    every script that would load from a CDN (require.js, the widget manager, MathJax, Mermaid)
    removed; each widget output becomes a host drawn by the standalone runtime from the saved
    state. A widget with no saved state, or not an anywidget with an inline ES module (e.g. an
    ``ipywidgets`` slider), shows its static picture or its text.

    Returns:
        The HTML text and an :class:`ExportSummary` (``path`` is ``None``).
    """
    import nbformat
    from jinja2 import DictLoader
    from nbconvert import HTMLExporter

    nb = copy.deepcopy(nb)
    widgets_meta = nb.get("metadata", {}).pop("widgets", None) or {}
    saved = (widgets_meta.get(WIDGET_STATE_MIME) or {}).get("state") or {}
    summary = ExportSummary(path=None, nbytes=0)
    payload = _Payload()
    outputs = _widget_outputs(nb)
    if outputs and not saved:
        summary.warnings.append(
            "the notebook carries no saved widget state, so its widgets show their static "
            "pictures only: execute it with `python -m mechwidgets export --execute` (nbclient "
            "saves the state) or, in JupyterLab, turn on Settings → Save Widget State "
            "Automatically and save the notebook."
        )
    for out in outputs:
        view = out["data"][WIDGET_VIEW_MIME]
        model_id = str(view.get("model_id", "")) if isinstance(view, dict) else ""
        entry = saved.get(model_id)
        others = {k: v for k, v in out["data"].items() if k != WIDGET_VIEW_MIME}
        if entry is not None and (model_id in payload.models or payload.add(model_id, entry)):
            out.setdefault("metadata", {})["mechwidgets_host"] = _host(model_id, fallback_html(others))
            summary.interactive += 1
            continue
        # not drawable here: let nbconvert show the next best representation
        summary.static += 1
        del out["data"][WIDGET_VIEW_MIME]
        if not out["data"]:
            out["data"]["text/plain"] = "[widget: no saved state; execute the notebook with its widget state saved]"
    # nbconvert draws a widget view only when its model is in the saved state: keep a stub of the
    # state (the template writes none of it out; the payload holds the real one)
    nb.setdefault("metadata", {})["widgets"] = {WIDGET_STATE_MIME: {"state": {mid: {} for mid in payload.models}}}
    nb = nbformat.from_dict(nb)
    footer = payload.script() if payload.models else ""
    exporter = HTMLExporter(
        template_name="lab",
        extra_loaders=[DictLoader({_TEMPLATE_NAME: _TEMPLATE})],
        template_file=_TEMPLATE_NAME,
        sanitize_html=sanitize_html,
        embed_images=True,
    )
    body, _ = exporter.from_notebook_node(
        nb, resources={"metadata": {"name": name}, "mw_footer": footer, "mw_css": _FALLBACK_CSS}
    )
    summary.nbytes = len(body.encode("utf-8", "replace"))
    return body, summary


def export_notebook(
    notebook: str | os.PathLike[str],
    output: str | os.PathLike[str] | None = None,
    *,
    execute: bool = False,
    timeout: int = 600,
    kernel_name: str | None = None,
    sanitize_html: bool = False,
) -> ExportSummary:
    """Write ``notebook`` as one self-contained HTML file (default: next to it, ``.html``).

    Args:
        notebook: the ``.ipynb`` file; its saved widget state is what the widgets draw.
        output: the HTML file to write (default: the notebook's path with ``.html``).
        execute: run the notebook first with nbclient (which saves the widget state); the
            notebook file itself is left unchanged.
        timeout: per-cell timeout in seconds when executing.
        kernel_name: kernel to execute with (default: the notebook's own).
        sanitize_html: clean the notebook's HTML outputs and Markdown (for untrusted notebooks);
            widget text is always shown as text.
    """
    import nbformat

    src = Path(notebook)
    nb = nbformat.read(src, as_version=4)
    if execute:
        from nbclient import NotebookClient

        kwargs: dict[str, Any] = {"timeout": timeout, "store_widget_state": True,
                                  "resources": {"metadata": {"path": str(src.resolve().parent)}}}
        if kernel_name:
            kwargs["kernel_name"] = kernel_name
        NotebookClient(nb, **kwargs).execute()
    text, summary = notebook_to_html(nb, sanitize_html=sanitize_html, name=src.stem)
    dest = Path(output) if output is not None else src.with_suffix(".html")
    dest.write_text(text, encoding="utf-8", errors="replace")
    summary.path = dest
    return summary


__all__ = [
    "ExportSummary",
    "export_notebook",
    "fallback_html",
    "is_renderable",
    "json_for_script",
    "notebook_to_html",
    "runtime_js",
    "saved_state_nbytes",
    "to_html",
    "widget_saved_state",
    "widget_to_html",
]
