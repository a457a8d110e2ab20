"""Self-contained HTML of widgets and notebooks: every widget's last view, offline.

``jupyter nbconvert --to html`` loads require.js, the ipywidgets HTML manager and anywidget from
CDNs, so offline its widgets are blank. This module writes ONE HTML file that needs nothing but
itself: the standalone runtime, each drawn widget's saved state and code (stored once per distinct
text), and for every widget a fallback (its static picture, else its text), shown when scripts
are off and replaced once the widget drew.

The page's pieces (saved state, payload, runtime, fallback) are in :mod:`mechwidgets._standalone`,
which also writes one widget's page (``widget.to_html(path)``, :func:`widget_to_html`); this module
decides how each widget of a notebook is drawn (its trust rules, below) and renders the notebook
around them. Entry points: :func:`notebook_to_html` and
:func:`export_notebook` (``python -m mechwidgets export notebook.ipynb -o out.html``). A notebook
must carry its widget state (``nbclient`` saves it when it executes a notebook; JupyterLab's
"Save Widget State Automatically"), or be exported with ``execute=True``.

Trust: a shared notebook is untrusted input, and exporting it must not run its author's code.

- By default only mechwidgets' own widgets are drawn, and always from the JavaScript and CSS of
  the *installed* package (``mechwidgets/static/``), never from the ES module (``_esm``) saved in
  the notebook, even when the saved state says it is a mechwidgets widget. Which bundle draws a
  widget is decided from its saved class name (``_anywidget_id``, e.g.
  ``mechwidgets.widgets.attention.AttentionWidget``) and model name (``anywidget``'s
  ``AnyModel``); the saved state is only data. Every other widget (another package's anywidget,
  an ipywidgets slider, an unknown class) shows its fallback: the picture or text the cell saved
  beside it.
- ``trust=True`` (``--trust``: the user says the notebook is trusted) also draws other
  anywidgets from the modules saved in the notebook, unless they import from a URL.
- ``sanitize_html=True`` (``--sanitize-html``) cleans the notebook's own HTML outputs and Markdown
  (nbconvert's sanitizer) and never lets a saved script run, so it cannot be combined with
  ``trust``. Without it, HTML outputs and Markdown are copied as nbconvert copies them, scripts
  included: pass it for a notebook you did not write.
- Images: Markdown images are embedded only from the notebook's attachments and from image files
  (recognised by their content, not their name) inside the notebook's own folder; any other
  path (outside the folder, through ``..`` or a symlink, absolute, a URL, not an image) stays a
  link and is never read into the page.
- Saved state: non-finite numbers (``NaN``, ``Infinity``) become ``null``, as a browser's
  ``JSON.stringify`` writes them; buffer paths may only hold plain keys and indices (no
  ``__proto__``); one widget's state may be at most ``max_state_bytes`` (an
  :class:`~mechwidgets.errors.ExportError` says so and how to raise the limit).

Everything a widget shows goes in as data, never as markup: the payload is JSON inside a
``<script type="application/json">`` with every ``<``, ``>`` and ``&`` written as
``\\u003c``/``\\u003e``/``\\u0026`` (so ``</script>`` or ``<!--`` in a token cannot end or confuse
the script element), the widgets insert text with ``textContent``, and fallback pictures are
``<img src="data:...">`` (an SVG in an ``<img>`` runs no script).
"""

from __future__ import annotations

import base64
import copy
import os
import re
import secrets
import struct
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import unquote, urlsplit

from ._standalone import (
    _FALLBACK_CSS,
    MAX_STATE_BYTES,
    STATIC_OVERRIDES,
    _esm_of,
    _host,
    _Payload,
    fallback_html,
    json_for_script,
    runtime_js,
    saved_state_nbytes,
    static_file,
    to_html,
    widget_saved_state,
    widget_to_html,
    without_nonfinite,
)
from .errors import ExportError, MissingDependencyError

WIDGET_STATE_MIME = "application/vnd.jupyter.widget-state+json"
WIDGET_VIEW_MIME = "application/vnd.jupyter.widget-view+json"

#: The largest image file embedded from the notebook's folder.
MAX_IMAGE_BYTES = 16 * 1024 * 1024
#: Keys a saved buffer path may not hold (they would reach an object's prototype in JS).
UNSAFE_KEYS = frozenset({"__proto__", "constructor", "prototype"})
#: The install command named when the export's dependencies are missing.
EXPORT_EXTRA = "pip install 'mechwidgets[export]'"

# CSS that loads something from a URL (a trusted widget's saved style is dropped if it does).
_REMOTE_CSS = re.compile(r"""@import|url\(\s*["']?\s*(?:[a-z][a-z0-9+.-]*:)?//""", re.I)

# ------------------------------------------------------------------------------------ trust
def is_renderable(entry: dict[str, Any]) -> bool:
    """True for a saved anywidget whose ES module is inline and imports nothing from a URL.

    Such a module is only ever run with ``trust=True``; see :func:`how_drawn`.
    """
    state = entry.get("state") if isinstance(entry, dict) else None
    return isinstance(state, dict) and _esm_of(state) is not None


def mechwidgets_bundles() -> dict[str, str]:
    """The saved class name (``_anywidget_id``) of every mechwidgets widget → its built bundle.

    Only classes defined inside the ``mechwidgets`` package count: a subclass in a notebook is
    unknown code, like any other package's widget.
    """
    from . import widgets  # noqa: F401  (defines every widget class)
    from .widgets._base import MechWidget

    out: dict[str, str] = {}
    stack: list[type] = [MechWidget]
    while stack:
        subclasses: list[type] = stack.pop().__subclasses__()
        for sub in subclasses:
            stack.append(sub)
            bundle = sub.__dict__.get("_bundle")
            if isinstance(bundle, str) and bundle and sub.__module__.startswith("mechwidgets."):
                out[f"{sub.__module__}.{sub.__name__}"] = bundle
    return out


def buffers_problem(buffers: Any) -> str | None:
    """Why a saved ``buffers`` list cannot be put back safely, or ``None`` when it can.

    Each must be ``{path, data, encoding}`` with a non-empty path of plain string keys (none of
    :data:`UNSAFE_KEYS`) and non-negative integer indices, ``data`` a string, ``encoding``
    ``"base64"`` (ipywidgets' saved format) or ``"hex"``.
    """
    if buffers is None:
        return None
    if not isinstance(buffers, list):
        return "its buffers are not a list"
    for b in buffers:
        if not isinstance(b, dict) or not isinstance(b.get("data"), str):
            return "a buffer has no data string"
        if b.get("encoding", "base64") not in ("base64", "hex"):
            return f"a buffer has the unknown encoding {str(b.get('encoding'))[:40]!r}"
        path = b.get("path")
        if not isinstance(path, list) or not path:
            return "a buffer has no path"
        for key in path:
            if isinstance(key, bool) or not isinstance(key, (str, int)) or (isinstance(key, int) and key < 0):
                return f"a buffer path holds {str(key)[:40]!r}, neither a key nor an index"
            if key in UNSAFE_KEYS:
                return f"a buffer path holds the key {key!r}, which would reach a JavaScript prototype"
    return None


#: The reason of a :class:`Verdict` for a widget that only ``trust`` would draw.
UNTRUSTED = "untrusted: its code is saved in the notebook"
#: ... and for a widget no standalone code can draw (an ipywidgets slider): it was never drawn.
NOT_ANYWIDGET = "not an anywidget"


@dataclass(frozen=True)
class Verdict:
    """How a saved widget is drawn in an export.

    ``how``: ``"installed"`` (a mechwidgets widget, drawn by ``bundle`` from the installed
    package), ``"saved"`` (another anywidget, drawn by its saved module: only with trust) or
    ``"fallback"`` (its saved picture or text; ``reason`` says why).
    """

    how: Literal["installed", "saved", "fallback"]
    bundle: str = ""
    reason: str = ""
    name: str = ""


def how_drawn(entry: Any, *, trust: bool = False, bundles: dict[str, str] | None = None) -> Verdict:
    """Decide how one saved widget-state entry (``{model_name, model_module, state, buffers}``)
    is drawn, from its saved class and model names only: its saved code decides nothing."""
    if not isinstance(entry, dict) or not isinstance(entry.get("state"), dict):
        return Verdict("fallback", reason="its saved state is not an object")
    state = entry["state"]
    name = str(state.get("_anywidget_id") or entry.get("model_name") or "?")[:200]
    problem = buffers_problem(entry.get("buffers"))
    if problem:
        return Verdict("fallback", reason=f"its saved state is malformed: {problem}", name=name)
    is_anywidget = entry.get("model_module") == "anywidget" and entry.get("model_name") == "AnyModel"
    bundle = (bundles if bundles is not None else mechwidgets_bundles()).get(str(state.get("_anywidget_id")))
    if is_anywidget and bundle:
        return Verdict("installed", bundle=bundle, name=name)
    if not is_anywidget:
        return Verdict("fallback", reason=NOT_ANYWIDGET, name=name)
    if not is_renderable(entry):
        return Verdict("fallback", reason="its saved ES module is missing or imports from a URL", name=name)
    if not trust:
        return Verdict("fallback", reason=UNTRUSTED, name=name)
    return Verdict("saved", name=name)



# ------------------------------------------------------------------------------------ images
def sniff_image(data: bytes) -> str | None:
    """The MIME type of an image recognised by its content (PNG, JPEG, GIF, WebP, SVG), else None.

    Raster formats by their signature and header (a PNG must start with its IHDR chunk and give a
    non-zero size); SVG by parsing it as XML whose root element is ``<svg>``. The file name is
    never consulted.
    """
    if data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) >= 24 and data[12:16] == b"IHDR":
        width, height = struct.unpack(">II", data[16:24])
        return "image/png" if width and height else None
    if data.startswith(b"\xff\xd8\xff") and len(data) >= 4:
        return "image/jpeg"
    if data[:6] in (b"GIF87a", b"GIF89a") and len(data) >= 13:
        return "image/gif"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP" and data[12:15] == b"VP8":
        return "image/webp"
    head = data.lstrip(b"\xef\xbb\xbf \t\r\n")
    if head.startswith(b"<") and b"<svg" in data[:4096]:
        try:
            root = ET.fromstring(data.decode("utf-8"))
        except (ET.ParseError, UnicodeDecodeError, ValueError):
            return None
        return "image/svg+xml" if root.tag.rsplit("}", 1)[-1] == "svg" else None
    return None


_ATTACHMENT_MIMES = ("image/svg+xml", "image/png", "image/jpeg", "image/gif", "image/webp")
_BASE64 = re.compile(r"[A-Za-z0-9+/=\s]*")


@dataclass
class ImageEmbedder:
    """Turns a Markdown image's ``src`` into a ``data:`` URL where that is safe, else leaves it.

    Embedded: the cell's attachments (``attachment:name``, image types only) and image files
    (by content, :func:`sniff_image`) inside ``folder``, the notebook's own folder, after
    resolving symlinks. Left as they are: URLs, absolute paths, anything outside ``folder`` or
    not an image, files over :data:`MAX_IMAGE_BYTES`; every local file when ``folder`` is None.
    A missing attachment becomes an empty ``src``.
    """

    folder: Path | None
    attachments: dict[str, Any] = field(default_factory=dict)

    def __call__(self, src: str) -> str:
        if src.startswith("attachment:"):
            att = self.attachments.get(src[len("attachment:"):]) if isinstance(self.attachments, dict) else None
            for mime in _ATTACHMENT_MIMES:
                data = att.get(mime) if isinstance(att, dict) else None
                if isinstance(data, list):
                    data = "".join(data)
                if isinstance(data, str) and _BASE64.fullmatch(data):
                    return f"data:{mime};base64," + re.sub(r"\s+", "", data)
            return ""
        return self.local_file(src) or src

    def local_file(self, src: str) -> str | None:
        if self.folder is None:
            return None
        parts = urlsplit(src)
        if parts.scheme or parts.netloc:
            return None  # http:, data:, file:, //host, C:\\...
        rel = unquote(parts.path)
        if not rel or rel.startswith(("/", "\\")) or os.path.isabs(rel) or "\x00" in rel:
            return None
        try:
            base = self.folder.resolve(strict=True)
            target = (base / rel).resolve(strict=True)
            if not target.is_relative_to(base) or not target.is_file():
                return None
            if target.stat().st_size > MAX_IMAGE_BYTES:
                return None
            data = target.read_bytes()
        except (OSError, RuntimeError, ValueError):
            return None
        mime = sniff_image(data)
        return None if mime is None else f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def _html_exporter(folder: Path | None) -> Any:
    """nbconvert's HTMLExporter whose Markdown embeds images only as :class:`ImageEmbedder` allows."""
    import bs4
    from jinja2 import pass_context
    from nbconvert import HTMLExporter
    from nbconvert.filters.markdown_mistune import MISTUNE_V3, IPythonRenderer, MarkdownWithMath

    class Renderer(IPythonRenderer):  # type: ignore[misc]
        def __init__(self, embed: ImageEmbedder, **kwargs: Any) -> None:
            super().__init__(embed_images=False, **kwargs)
            self.mw_embed = embed

        def image(self, text: str, url: str, title: str | None = None) -> str:
            if MISTUNE_V3:
                url = self.mw_embed(url)
            else:  # mistune 2 passes the URL first
                text = self.mw_embed(text)
            return str(super().image(text, url, title))

        def _embed_html(self, fragment: str) -> str:
            if "<img" not in fragment.lower():
                return fragment
            soup = bs4.BeautifulSoup(fragment, features="html.parser")
            for img in soup.find_all("img"):
                src = img.attrs.get("src")
                if isinstance(src, str):
                    img.attrs["src"] = self.mw_embed(src)
            return str(soup)

        def block_html(self, fragment: str) -> str:
            return str(super().block_html(self._embed_html(fragment)))

        def inline_html(self, fragment: str) -> str:
            return str(super().inline_html(self._embed_html(fragment)))

    class Exporter(HTMLExporter):  # type: ignore[misc]
        @pass_context
        def markdown2html(self, context: Any, source: str) -> str:
            cell = context.get("cell", {})
            attachments = cell.get("attachments", {}) if isinstance(cell, dict) else {}
            renderer = Renderer(
                ImageEmbedder(folder, attachments if isinstance(attachments, dict) else {}),
                escape=False,
                anchor_link_text=self.anchor_link_text,
                exclude_anchor_links=self.exclude_anchor_links,
                **self.lexer_options,
            )
            return str(MarkdownWithMath(renderer=renderer).render(source))

    return Exporter


# ------------------------------------------------------------------------------------ notebooks
_TEMPLATE_NAME = "mechwidgets_export.html.j2"
_TEMPLATE = r"""{%- extends 'index.html.j2' -%}
{%- block html_head_js -%}{%- endblock html_head_js -%}
{%- block jupyter_widgets -%}{%- endblock jupyter_widgets -%}
{%- block html_head_js_mathjax -%}{%- endblock html_head_js_mathjax -%}
{%- block html_head_js_mermaidjs -%}{%- endblock html_head_js_mermaidjs -%}
{%- block extra_css -%}<style type="text/css">{{ resources.mw_css }}</style>{%- endblock extra_css -%}
{%- block data_widget_view scoped -%}
<div class="jp-OutputArea-output {{ extra_class }}">{{ resources.mw_hosts.get(output.metadata.get('mechwidgets_host') | string, '') }}</div>
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
    #: widget views drawn by a widget module
    interactive: int = 0
    #: widget views shown as their saved picture or text
    static: int = 0
    #: of the static ones: widgets of other packages whose saved code was not run (no trust)
    untrusted: int = 0
    warnings: list[str] = field(default_factory=list)


def _export_modules() -> tuple[Any, Any]:
    """``(nbformat, nbconvert)``, or an error naming the extra that installs them."""
    try:
        import nbconvert
        import nbformat
    except ImportError as exc:
        raise MissingDependencyError(
            f"exporting a notebook needs nbformat and nbconvert, which are not installed "
            f"({exc}): {EXPORT_EXTRA}"
        ) from exc
    return nbformat, nbconvert


def _outputs(nb: Any) -> list[Any]:
    return [
        out
        for cell in nb.get("cells", []) if isinstance(cell, dict) and cell.get("cell_type") == "code"
        for out in cell.get("outputs", []) or [] if isinstance(out, dict)
    ]


def _widget_outputs(nb: Any) -> list[Any]:
    return [
        out
        for out in _outputs(nb)
        if out.get("output_type") in ("display_data", "execute_result")
        and isinstance(out.get("data"), dict) and WIDGET_VIEW_MIME in out["data"]
    ]


def _check_trust(trust: bool, sanitize_html: bool) -> None:
    if trust and sanitize_html:
        raise ExportError(
            "trust and sanitize_html contradict each other: --trust runs the code saved in the "
            "notebook's widgets, --sanitize-html promises that no saved script runs. Pass one."
        )


def _names(names: list[str]) -> str:
    distinct = sorted(set(names))
    return ", ".join(distinct[:5]) + (f" and {len(distinct) - 5} more" if len(distinct) > 5 else "")


def notebook_to_html(
    nb: Any,
    *,
    sanitize_html: bool = False,
    trust: bool = False,
    folder: str | os.PathLike[str] | None = None,
    name: str = "notebook",
    max_state_bytes: int = MAX_STATE_BYTES,
) -> tuple[str, ExportSummary]:
    """Render a notebook (an ``nbformat`` node, with saved widget state) as one offline HTML page.

    Markdown, code, text, images and HTML outputs are rendered by nbconvert's ``lab`` template with
    every script that would load from a CDN (require.js, the widget manager, MathJax, Mermaid)
    removed; each widget output becomes a host drawn by the standalone runtime from the saved
    state, as the module docstring's trust rules say: mechwidgets widgets by the installed
    package's JavaScript, other anywidgets by their saved module only with ``trust``. Any other
    widget, or one with no saved state, shows its static picture or its text.

    Args:
        nb: the notebook.
        sanitize_html: clean the notebook's HTML outputs and Markdown; no saved script runs.
        trust: the notebook is trusted: draw other packages' anywidgets from their saved code.
        folder: the notebook's folder; Markdown images are embedded only from files inside it
            (and from attachments). ``None``: no local file is embedded.
        name: the page title.
        max_state_bytes: the most saved state one drawn widget may bring into the page.

    Raises:
        ExportError: ``trust`` with ``sanitize_html``, or a widget's state over ``max_state_bytes``.
        MissingDependencyError: nbformat or nbconvert is not installed.

    Returns:
        The HTML text and an :class:`ExportSummary` (``path`` is ``None``).
    """
    _check_trust(trust, sanitize_html)
    nbformat, _ = _export_modules()
    from jinja2 import DictLoader

    nb = copy.deepcopy(nb)
    metadata = nb.get("metadata") if isinstance(nb.get("metadata"), dict) else {}
    widgets_meta = metadata.pop("widgets", None)
    saved = widgets_meta.get(WIDGET_STATE_MIME) if isinstance(widgets_meta, dict) else None
    saved = saved.get("state") if isinstance(saved, dict) else None
    saved = saved if isinstance(saved, dict) else {}
    summary = ExportSummary(path=None, nbytes=0)
    payload = _Payload(max_state_bytes=max_state_bytes)
    bundles = mechwidgets_bundles()
    installed: dict[str, str] = {}
    # The template draws a widget output from resources.mw_hosts under a key only this export
    # knows: whatever a notebook put in its outputs' metadata is never written into the page.
    nonce = secrets.token_hex(8)
    hosts: dict[str, str] = {}
    for out in _outputs(nb):
        if isinstance(out.get("metadata"), dict):
            out["metadata"].pop("mechwidgets_host", None)
    outputs = _widget_outputs(nb)
    if outputs and not saved:
        summary.warnings.append(
            "the notebook carries no saved widget state, so its widgets show their static "
            "pictures only: execute it with `python -m mechwidgets export --execute` (nbclient "
            "saves the state) or, in JupyterLab, turn on Settings → Save Widget State "
            "Automatically and save the notebook."
        )
    untrusted: list[str] = []
    for k, out in enumerate(outputs):
        view = out["data"][WIDGET_VIEW_MIME]
        model_id = str(view.get("model_id", "")) if isinstance(view, dict) else ""
        entry = saved.get(model_id) if model_id else None
        others = {key: v for key, v in out["data"].items() if key != WIDGET_VIEW_MIME}
        verdict = how_drawn(entry, trust=trust, bundles=bundles) if entry is not None else None
        if entry is not None and verdict is not None and verdict.how != "fallback" and model_id not in payload.models:
            state, buffers = entry["state"], list(entry.get("buffers") or [])
            label = f"the widget {verdict.name} (model {model_id[:40]})"
            if verdict.how == "installed":
                if verdict.bundle not in installed:
                    installed[verdict.bundle] = _installed_text(verdict.bundle)
                payload.add(model_id, state, buffers, installed[verdict.bundle], _installed_text("style.css"),
                            ours=True, label=label)
            else:
                css = state.get("_css")
                if isinstance(css, str) and _REMOTE_CSS.search(css):
                    css = None  # it would load something from the network
                payload.add(model_id, state, buffers, str(_esm_of(state)), css, ours=False, label=label)
        if model_id in payload.models:
            key = f"{nonce}-{k}"
            hosts[key] = _host(model_id, fallback_html(others))
            out.setdefault("metadata", {})["mechwidgets_host"] = key
            summary.interactive += 1
            continue
        # not drawn here: let nbconvert show the next best representation
        summary.static += 1
        if verdict is not None and verdict.reason == UNTRUSTED:
            untrusted.append(verdict.name)
        elif verdict is not None and verdict.reason != NOT_ANYWIDGET:
            summary.warnings.append(f"the widget {verdict.name} is shown as its saved picture or text: {verdict.reason}.")
        del out["data"][WIDGET_VIEW_MIME]
        if not out["data"]:
            out["data"]["text/plain"] = "[widget: no saved state; execute the notebook with its widget state saved]"
    summary.untrusted = len(untrusted)
    if untrusted:
        summary.warnings.append(
            f"{len(untrusted)} widget view(s) of other packages ({_names(untrusted)}) are shown as "
            f"their saved picture or text: drawing them would run JavaScript saved in the notebook. "
            f"If you trust this notebook, export it with --trust (trust=True)."
        )
    if payload.nonfinite:
        summary.warnings.append(
            f"{payload.nonfinite} NaN/Infinity number(s) in the saved widget state were written as "
            f"null (JSON has no such numbers)."
        )
    # nbconvert draws a widget view only when its model is in the saved state: keep a stub of the
    # state (the template writes none of it out; the payload holds the real one)
    nb.setdefault("metadata", {})["widgets"] = {WIDGET_STATE_MIME: {"state": {mid: {} for mid in payload.models}}}
    nb = nbformat.from_dict(nb)
    footer = payload.script() if payload.models else ""
    exporter = _html_exporter(Path(folder) if folder is not None else None)(
        template_name="lab",
        extra_loaders=[DictLoader({_TEMPLATE_NAME: _TEMPLATE})],
        template_file=_TEMPLATE_NAME,
        sanitize_html=sanitize_html,
    )
    body, _ = exporter.from_notebook_node(
        nb, resources={"metadata": {"name": name}, "mw_footer": footer, "mw_css": _FALLBACK_CSS, "mw_hosts": hosts}
    )
    summary.nbytes = len(body.encode("utf-8", "replace"))
    return body, summary


def _installed_text(name: str) -> str:
    return static_file(name).read_text(encoding="utf-8")


def export_notebook(
    notebook: str | os.PathLike[str],
    output: str | os.PathLike[str] | None = None,
    *,
    execute: bool = False,
    timeout: int = 600,
    kernel_name: str | None = None,
    sanitize_html: bool = False,
    trust: bool = False,
    max_state_bytes: int = MAX_STATE_BYTES,
) -> ExportSummary:
    """Write ``notebook`` as one self-contained HTML file (default: next to it, ``.html``).

    Args:
        notebook: the ``.ipynb`` file; its saved widget state is what the widgets draw.
        output: the HTML file to write (default: the notebook's path with ``.html``).
        execute: run the notebook first with nbclient (which saves the widget state); the
            notebook file itself is left unchanged.
        timeout: per-cell timeout in seconds when executing.
        kernel_name: kernel to execute with (default: the notebook's own).
        sanitize_html: clean the notebook's HTML outputs and Markdown; no saved script runs
            (for notebooks you did not write). Widget text is always shown as text.
        trust: the notebook is trusted: also draw other packages' anywidgets from the code saved
            in it. mechwidgets widgets are always drawn by the installed package's code.
        max_state_bytes: the most saved state one drawn widget may bring into the page.

    Raises:
        ExportError: the file is not a notebook, ``trust`` with ``sanitize_html``, or a widget's
            saved state is over ``max_state_bytes``.
        MissingDependencyError: nbformat/nbconvert (or nbclient for ``execute``) is missing.
    """
    nbformat, _ = _export_modules()
    src = Path(notebook)
    _check_trust(trust, sanitize_html)
    if not src.is_file():
        raise FileNotFoundError(f"no notebook file {src}")
    try:
        nb = nbformat.read(src, as_version=4)
        nbformat.validate(nb)
    except Exception as exc:  # not JSON, not a notebook, or one nbformat's schema refuses
        raise ExportError(
            f"{src} is not a valid notebook (nbformat could not read it: {type(exc).__name__}: "
            f"{str(exc)[:300]}). Open and save it in Jupyter, or fix the file."
        ) from exc
    if execute:
        try:
            from nbclient import NotebookClient
        except ImportError as exc:
            raise MissingDependencyError(f"--execute needs nbclient, which is not installed ({exc}): {EXPORT_EXTRA}") from exc

        kwargs: dict[str, Any] = {"timeout": timeout, "store_widget_state": True,
                                  "resources": {"metadata": {"path": str(src.resolve().parent)}}}
        if kernel_name:
            kwargs["kernel_name"] = kernel_name
        NotebookClient(nb, **kwargs).execute()
    text, summary = notebook_to_html(
        nb, sanitize_html=sanitize_html, trust=trust, folder=src.resolve().parent, name=src.stem,
        max_state_bytes=max_state_bytes,
    )
    dest = Path(output) if output is not None else src.with_suffix(".html")
    dest.write_text(text, encoding="utf-8", errors="replace")
    summary.path = dest
    return summary


__all__ = [
    "EXPORT_EXTRA",
    "MAX_STATE_BYTES",
    "STATIC_OVERRIDES",
    "UNTRUSTED",
    "ExportSummary",
    "ImageEmbedder",
    "Verdict",
    "buffers_problem",
    "export_notebook",
    "fallback_html",
    "how_drawn",
    "is_renderable",
    "json_for_script",
    "mechwidgets_bundles",
    "notebook_to_html",
    "runtime_js",
    "saved_state_nbytes",
    "sniff_image",
    "to_html",
    "widget_saved_state",
    "widget_to_html",
    "without_nonfinite",
]
