"""Browser test machinery shared by the browser tests and ``benchmarks/bench_attention_browser.py``.

Nothing here imports pytest, so a benchmark can use it too.

- :func:`launch_chromium`: the system Chromium (``/usr/bin/chromium``; never ``playwright
  install``), headless, with no background networking. Playwright gives every launch a fresh,
  temporary user-data dir.
- :class:`NetworkGuard`: routes every request of a browser context; requests to 127.0.0.1 /
  localhost go on, every other one is aborted and recorded ("rendering makes no network request
  other than to 127.0.0.1").
- :class:`StaticServer`: a tiny HTTP server on 127.0.0.1 serving a blank page and
  ``harness.js``.
- :class:`WidgetHarness` (the light harness, no Jupyter): mounts any ``anywidget`` /
  :class:`~mechwidgets.widgets._base.MechWidget` on that blank page by importing its ``_esm``
  and calling ``render({model, el})`` with a fake model wired to the REAL Python widget object:
  the widget's comm is replaced by :class:`HarnessComm`, so every state update and custom message
  the widget sends is captured (and measured) and delivered to the page, and every
  ``save_changes``/``send`` of the page goes through ipywidgets' own ``_handle_msg`` (and so
  through ``MechWidget._on_frontend_message``). Binary buffers travel as binary (fetched once from the 127.0.0.1 server, as a websocket
  carries them, not as base64 through Playwright) and arrive in JS as ``DataView``.
- :class:`JupyterLab` / :class:`LabPage`: a real JupyterLab server on 127.0.0.1 and helpers to
  open a notebook, wait for its kernel, run cells and read their output. ``JupyterLab(settings=
  {**DARK_THEME, **NO_WINDOWING})`` starts it with extra user settings (the dark theme, every
  cell in the DOM); ``JupyterLab(app="notebook")`` starts Jupyter Notebook 7 instead, whose
  notebooks :class:`Notebook7Page` opens.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
ARTIFACTS = REPO / "test-artifacts"

CHROMIUM = os.environ.get("MECHWIDGETS_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
LOCAL_HOSTS = {"127.0.0.1", "localhost", "[::1]", "::1"}


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def artifact_path(name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS / name


def launch_chromium(playwright: Any) -> Any:
    """One headless system Chromium (Playwright makes a fresh temporary profile for it)."""
    return playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)


# ---------------------------------------------------------------------------------------- network
def is_local(url: str) -> bool:
    parts = urlsplit(url)
    if parts.scheme in ("data", "blob", "about"):
        return True
    return (parts.hostname or "") in LOCAL_HOSTS


@dataclass
class NetworkGuard:
    """Let requests to 127.0.0.1 through; abort and record every other one."""

    blocked: list[str] = field(default_factory=list)

    def attach(self, context: Any) -> NetworkGuard:
        context.route("**/*", self._route)

        def on_page(page: Any) -> None:
            page.on("websocket", lambda ws: None if is_local(ws.url) else self.blocked.append(ws.url))

        context.on("page", on_page)
        for page in context.pages:
            on_page(page)
        return self

    def _route(self, route: Any) -> None:
        url = route.request.url
        if is_local(url):
            route.continue_()
        else:
            self.blocked.append(url)
            route.abort()


def new_guarded_context(chromium: Any, **kwargs: Any) -> tuple[Any, NetworkGuard]:
    kwargs.setdefault("viewport", {"width": 1400, "height": 1000})
    kwargs.setdefault("service_workers", "block")  # their fetches would bypass the router
    context = chromium.new_context(**kwargs)
    return context, NetworkGuard().attach(context)


# ---------------------------------------------------------------------------------------- server
BLANK_PAGE = b"""<!doctype html>
<html><head><meta charset="utf-8"><title>mechwidgets harness</title>
<style>body { margin: 8px; font-family: sans-serif; background: #fff; }</style>
<script src="/harness.js"></script></head>
<body></body></html>
"""


class StaticServer:
    """Serves the blank page and harness.js on 127.0.0.1 (a thread of this process)."""

    def __init__(self) -> None:
        blobs: dict[str, bytes] = {}
        self._blobs = blobs
        self._lock = threading.Lock()
        lock = self._lock
        files = {
            "/": ("text/html; charset=utf-8", BLANK_PAGE),
            "/harness.js": ("text/javascript; charset=utf-8", (HERE / "harness.js").read_bytes()),
        }

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                if path.startswith("/buf/"):  # one binary buffer, served once
                    with lock:
                        blob = blobs.pop(path, None)
                    if blob is None:
                        self.send_error(404)
                        return
                    self.send_response(200)
                    self.send_header("Content-Type", "application/octet-stream")
                    self.send_header("Content-Length", str(len(blob)))
                    self.send_header("Cache-Control", "no-store")
                    self.end_headers()
                    self.wfile.write(blob)
                    return
                if path not in files:
                    self.send_error(404)
                    return
                ctype, body = files[path]
                self.send_response(200)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Cache-Control", "no-store")
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/"
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self._thread.start()

    def put(self, data: Any) -> str:
        """Serve ``data`` once at the returned path (binary buffers travel as binary, as on a
        websocket, not as base64 through the Playwright channel)."""
        path = f"/buf/{uuid.uuid4().hex}"
        with self._lock:
            self._blobs[path] = bytes(data)
        return path

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


# ---------------------------------------------------------------------------------------- light harness
def _b64(buf: Any) -> str:
    return base64.b64encode(bytes(buf)).decode("ascii")


@dataclass
class Update:
    """One kernel → frontend message, as measured: JSON text plus binary buffers."""

    method: str
    what: str
    json_bytes: int
    buffer_bytes: int

    @property
    def nbytes(self) -> int:
        return self.json_bytes + self.buffer_bytes


class HarnessComm:
    """Stands in for the widget's comm: captures what the widget sends, measured."""

    kernel = True  # ipywidgets only sends when comm.kernel is not None

    def __init__(self, server: StaticServer) -> None:
        self.server = server
        self.comm_id = uuid.uuid4().hex
        self.outbox: list[dict[str, Any]] = []
        self.updates: list[Update] = []
        self._callback: Any = None

    # the parts of comm.base_comm.BaseComm that ipywidgets uses
    def on_msg(self, callback: Any) -> None:
        self._callback = callback

    def send(self, data: Any = None, metadata: Any = None, buffers: Any = None) -> None:
        buffers = list(buffers or [])
        text = json.dumps(data, separators=(",", ":"), default=str)
        method = data.get("method", "?") if isinstance(data, dict) else "?"
        if method in ("update", "echo_update"):
            what = ",".join(sorted(data.get("state", {})))
        else:
            content = data.get("content", {}) if isinstance(data, dict) else {}
            what = f"{content.get('type', '?')}:{content.get('kind', '')}" if isinstance(content, dict) else "?"
        self.updates.append(Update(method, what, len(text.encode()), sum(len(bytes(b)) for b in buffers)))
        self.outbox.append({**data, "buffers": [self.server.put(b) for b in buffers]})

    def close(self, *args: Any, **kwargs: Any) -> None:
        pass

    def drain(self) -> list[dict[str, Any]]:
        out, self.outbox = self.outbox, []
        return out


class MountedWidget:
    """A Python widget rendered on the harness page."""

    def __init__(self, harness: WidgetHarness, widget: Any, comm: HarnessComm, initial: Update) -> None:
        self.harness = harness
        self.widget = widget
        self.comm = comm
        self.id = comm.comm_id
        self.initial = initial
        self.kernel = True
        self.el = harness.page.locator(f'[data-mw-host="{self.id}"]')

    @property
    def updates(self) -> list[Update]:
        """Every kernel → frontend message since mounting (state updates and custom messages)."""
        return self.comm.updates

    def flush(self) -> None:
        """Deliver what the Python widget sent (e.g. after a call made from Python) to the page."""
        msgs = self.comm.drain()
        if msgs:
            self.harness.page.evaluate("([id, m]) => window.__mw.deliver(id, m)", [self.id, msgs])

    def settle(self, timeout_ms: float = 10_000) -> None:
        """Wait until no page → Python call is in flight and everything sent was delivered."""
        deadline = time.monotonic() + timeout_ms / 1000
        while True:
            self.harness.page.wait_for_function("() => window.__mw.idle()", timeout=timeout_ms)
            if not self.comm.outbox:
                return
            self.flush()
            if time.monotonic() > deadline:
                raise TimeoutError("widget did not settle")

    def js_errors(self) -> list[str]:
        return list(self.harness.page.evaluate("() => window.__mw.errors"))

    def unmount(self) -> None:
        self.harness.page.evaluate("id => window.__mw.unmount(id)", self.id)


class WidgetHarness:
    """The light harness: widgets rendered on a blank 127.0.0.1 page, no Jupyter.

    Usage::

        harness = WidgetHarness(context, server)
        mounted = harness.mount(widget)      # renders it; returns a MountedWidget
        mounted.el.locator("...").click()    # requests reach widget._on_frontend_message
        widget.some_python_call(); mounted.flush()
    """

    def __init__(self, context: Any, server: StaticServer) -> None:
        self.context = context
        self.server = server
        self.page = context.new_page()
        self.mounted: dict[str, MountedWidget] = {}
        self.py_errors: list[str] = []
        #: (message, seconds) for every page → Python call: handling it plus encoding the replies
        self.calls: list[tuple[str, float]] = []
        self.page.expose_function("__mw_to_py", self._to_py)
        self.page.goto(server.url)
        self.page.wait_for_function("() => !!window.__mw")

    def _to_py(self, widget_id: str, payload: str) -> str:
        """Page → Python: one comm message for the widget; returns what the widget sent back."""
        mounted = self.mounted.get(widget_id)
        if mounted is None or not mounted.kernel:
            return "[]"
        start = time.perf_counter()
        what = "?"
        try:
            body = json.loads(payload)
            data = body["data"]
            content = data.get("content")
            what = f"{data.get('method')}:{content.get('kind', content.get('type')) if isinstance(content, dict) else ''}"
            buffers = [memoryview(base64.b64decode(b)) for b in body.get("buffers", [])]
            mounted.widget._handle_msg({"content": {"data": data}, "buffers": buffers})
        except Exception as exc:  # surfaced by tests through py_errors
            self.py_errors.append(f"{type(exc).__name__}: {exc}")
        out = json.dumps(mounted.comm.drain())
        self.calls.append((what, time.perf_counter() - start))
        return out

    def mount(self, widget: Any, *, kernel: bool = True, timeout_ms: float = 15_000) -> MountedWidget:
        """Render ``widget`` on the page. ``kernel=False``: its saved state only, as a notebook
        opened with no kernel (messages from the page are dropped unanswered)."""
        from ipywidgets.widgets.widget import _remove_buffers

        comm = HarnessComm(self.server)
        widget.comm = comm  # ipywidgets re-registers its _handle_msg on the new comm
        state, paths, buffers = _remove_buffers(widget.get_state())
        text = json.dumps(state, separators=(",", ":"), default=str)
        initial = Update("open", "initial state", len(text.encode()), sum(len(bytes(b)) for b in buffers))
        mounted = MountedWidget(self, widget, comm, initial)
        mounted.kernel = kernel
        self.mounted[comm.comm_id] = mounted
        self.page.evaluate(
            "([id, p]) => window.__mw.mount(id, p)",
            [comm.comm_id, {"state": state, "buffer_paths": paths, "buffers": [self.server.put(b) for b in buffers]}],
        )
        mounted.el.wait_for(state="attached", timeout=timeout_ms)
        return mounted

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.page.close()


# ---------------------------------------------------------------------------------------- JupyterLab
#: the server application classes (``python -m <app>``) whose ``expose_app_in_browser`` we set
_APP_CLASSES = {"jupyterlab": "LabApp", "notebook": "JupyterNotebookApp"}

#: user settings for :class:`JupyterLab`: the dark theme, every cell in the DOM (no windowing:
#: a widget far down a notebook renders and can be screenshotted without scrolling first)
DARK_THEME: dict[str, dict[str, Any]] = {
    "@jupyterlab/apputils-extension:themes": {"theme": "JupyterLab Dark"},
}
NO_WINDOWING: dict[str, dict[str, Any]] = {
    "@jupyterlab/notebook-extension:tracker": {"windowingMode": "none"},
}


class JupyterLab:
    """A JupyterLab server on 127.0.0.1: free port, no token, no password, temporary dirs."""

    def __init__(
        self,
        startup_timeout: float = 120.0,
        *,
        settings: dict[str, dict[str, Any]] | None = None,
        app: str = "jupyterlab",
    ) -> None:
        """``settings``: extra user settings, ``{"<extension>:<plugin>": {...}}`` (e.g.
        :data:`DARK_THEME`). ``app``: ``"jupyterlab"`` or ``"notebook"`` (Jupyter Notebook 7,
        which reads the same settings; open its notebooks with :class:`Notebook7Page`)."""
        if app not in _APP_CLASSES:
            raise ValueError(f"app must be one of {sorted(_APP_CLASSES)}, not {app!r}")
        self.tmp = Path(tempfile.mkdtemp(prefix="mw-lab-"))
        self.root = self.tmp / "notebooks"
        for d in ("notebooks", "config", "data", "runtime", "settings", "workspaces"):
            (self.tmp / d).mkdir()
        # No news / update toasts over the notebook, no network fetches for them.
        notif = self.tmp / "settings" / "@jupyterlab" / "apputils-extension"
        notif.mkdir(parents=True)
        (notif / "notification.jupyterlab-settings").write_text(
            json.dumps({"fetchNews": "false", "checkForUpdates": False})
        )
        for key, values in (settings or {}).items():
            extension, plugin = key.split(":")
            folder = self.tmp / "settings" / extension
            folder.mkdir(parents=True, exist_ok=True)
            (folder / f"{plugin}.jupyterlab-settings").write_text(json.dumps(values))
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = dict(os.environ)
        env.update(
            JUPYTER_CONFIG_DIR=str(self.tmp / "config"),
            JUPYTER_RUNTIME_DIR=str(self.tmp / "runtime"),
            JUPYTERLAB_SETTINGS_DIR=str(self.tmp / "settings"),
            JUPYTERLAB_WORKSPACES_DIR=str(self.tmp / "workspaces"),
            HF_HUB_OFFLINE="1",
            TRANSFORMERS_OFFLINE="1",
            PYTHONUNBUFFERED="1",
        )
        app_class = _APP_CLASSES[app]
        cmd = [
            sys.executable, "-m", app,
            "--no-browser",
            "--allow-root",
            "--ServerApp.ip=127.0.0.1",
            f"--ServerApp.port={self.port}",
            "--ServerApp.port_retries=0",
            "--IdentityProvider.token=",
            "--ServerApp.password=",
            "--ServerApp.disable_check_xsrf=True",
            f"--ServerApp.root_dir={self.root}",
            f"--{app_class}.expose_app_in_browser=True",
            *(
                [
                    "--LabApp.news_url=None",
                    "--LabApp.check_for_updates_class=jupyterlab.handlers.announcements.NeverCheckForUpdate",
                ]
                if app == "jupyterlab"
                else []
            ),
            "--MappingKernelManager.cull_idle_timeout=0",
        ]
        self.log_path = self.tmp / "server.log"
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(cmd, env=env, stdout=self._log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        self._wait_ready(startup_timeout)

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"JupyterLab exited early:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(f"{self.url}/api/status", timeout=2) as r:
                    if r.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
                pass
            time.sleep(0.25)
        self.close()
        raise TimeoutError(f"JupyterLab did not start in {timeout} s:\n{self.log_tail()}")

    def log_tail(self, n: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def write_notebook(self, name: str, cells: list[str]) -> Path:
        import nbformat

        nb = nbformat.v4.new_notebook()
        nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"}
        nb.cells = [nbformat.v4.new_code_cell(c) for c in cells]
        path = self.root / name
        nbformat.write(nb, str(path))
        return path

    def close(self) -> None:
        if self.proc.poll() is None:
            # the server shuts its kernels down on SIGTERM; its process group holds only them
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=5)
        self._log.close()
        shutil.rmtree(self.tmp, ignore_errors=True)


_PROMPT_DONE = re.compile(r"^\[\d+\]:$")


class LabPage:
    """A JupyterLab page with one open notebook; cells are run through JupyterLab's own commands."""

    def __init__(self, lab: JupyterLab, page: Any) -> None:
        self.lab = lab
        self.page = page
        self.panel: Any = None

    def open(self, name: str, cells: list[str], timeout_ms: float = 120_000) -> None:
        """Write a notebook and open it alone, in a fresh workspace (no tabs restored from other
        tests sharing the server), then wait for its kernel."""
        self.lab.write_notebook(name, cells)
        workspace = f"t{uuid.uuid4().hex[:12]}"
        self.page.goto(f"{self.lab.url}/lab/workspaces/{workspace}/tree/{name}?reset")
        self._attach(name, timeout_ms)

    def _attach(self, name: str, timeout_ms: float) -> None:
        """Wait for notebook ``name`` to be the app's current widget; keep its panel; wait for
        its kernel."""
        self.page.wait_for_function(
            """(name) => {
                const w = window.jupyterapp && window.jupyterapp.shell.currentWidget;
                return !!(w && w.context && w.context.path === name && w.content && w.content.widgets);
            }""",
            arg=name,
            timeout=timeout_ms,
        )
        panel_id = self.page.evaluate(
            "() => { window.__mwPanel = window.jupyterapp.shell.currentWidget; return window.__mwPanel.id; }"
        )
        self.panel = self.page.locator(f"[id='{panel_id}']")
        self.panel.locator(".jp-Cell").first.wait_for(timeout=timeout_ms)
        self.wait_idle(timeout_ms)

    def open_widget(self, name: str, setup: str, root: str, timeout_ms: float = 180_000) -> Any:
        """Open a notebook whose one cell (``setup``) prints ``model: ...`` and ends with a
        widget; run it; the widget's root element (CSS class ``root``)."""
        self.open(name, [setup])
        out = self.run_cell(0, timeout_ms=timeout_ms)
        assert "model:" in out, out
        return self.cell(0).locator(root)

    def wait_idle(self, timeout_ms: float = 120_000) -> None:
        """The kernel is connected and idle: the status bar reads '… | Idle' (not the toolbar)."""
        self.page.locator("#jp-main-statusbar").get_by_text(re.compile(r"\|\s*Idle")).first.wait_for(
            timeout=timeout_ms
        )

    def cell(self, index: int) -> Any:
        """Cell ``index`` of this notebook (scoped to its panel: other open notebooks have cells too)."""
        return self.panel.locator(".jp-Notebook .jp-Cell").nth(index)

    def n_cells(self) -> int:
        return int(self.page.evaluate("() => window.__mwPanel.content.widgets.length"))

    def run_cell(self, index: int, timeout_ms: float = 120_000) -> str:
        """Run one cell (as Run ▸ Run Selected Cell does); wait for it to finish; its output text."""
        count_before = self.page.evaluate(
            "i => window.__mwPanel.content.widgets[i].model.executionCount", index
        )
        self.page.evaluate(
            """async (i) => {
                const app = window.jupyterapp;
                const panel = window.__mwPanel;
                app.shell.activateById(panel.id);
                const nb = panel.content;
                nb.activeCellIndex = i;
                nb.deselectAll();
                await app.commands.execute('notebook:run-cell');
            }""",
            index,
        )
        self.page.wait_for_function(
            """([i, before]) => {
                const cell = window.__mwPanel.content.widgets[i];
                const n = cell.model.executionCount;
                const prompt = cell.node.querySelector('.jp-InputPrompt');
                return n !== null && n !== before && prompt && /^\\[\\d+\\]:$/.test(prompt.textContent.trim());
            }""",
            arg=[index, count_before],
            timeout=timeout_ms,
        )
        return self.output_text(index)

    def output_text(self, index: int) -> str:
        return str(self.cell(index).locator(".jp-OutputArea").first.inner_text())

    def append_cell(self, code: str) -> int:
        """Add a code cell at the end of the notebook; its index."""
        return int(
            self.page.evaluate(
                """(code) => {
                    const nb = window.__mwPanel.content;
                    const n = nb.model.cells.length;
                    nb.model.sharedModel.insertCell(n, {cell_type: 'code', source: code});
                    return n;
                }""",
                code,
            )
        )

    def run_code(self, code: str, timeout_ms: float = 120_000) -> str:
        """Append a cell with ``code``, run it, return its output text."""
        return self.run_cell(self.append_cell(code), timeout_ms)

    def py_json(self, expr: str, timeout_ms: float = 60_000) -> Any:
        """Evaluate a Python expression in the kernel (in a new cell); its value through JSON."""
        out = self.run_code(f"import json as _j; print('@@' + _j.dumps({expr}) + '@@')", timeout_ms)
        m = re.search(r"@@(.*)@@", out, re.S)
        if not m:
            raise AssertionError(f"no JSON in the cell output for {expr!r}: {out!r}")
        return json.loads(m.group(1))

    def wait_until(self, expr: str, timeout_s: float = 120.0) -> None:
        """Poll a Python expression in the kernel until it is true (each poll is a cell, run when
        the kernel gets to it, so it also waits for work the widget queued before)."""
        deadline = time.monotonic() + timeout_s
        while not self.py_json(f"bool({expr})"):
            if time.monotonic() > deadline:
                raise AssertionError(f"still false after {timeout_s} s: {expr}")
            self.page.wait_for_timeout(250)


class Notebook7Page(LabPage):
    """A Jupyter Notebook 7 page (``JupyterLab(app="notebook")``) with one open notebook.

    Notebook 7 is built from JupyterLab's packages: the notebook panel, its commands and its
    cells are the same, so :class:`LabPage`'s helpers work; only the URL and the kernel status
    (Notebook 7 has no status bar) differ."""

    def open(self, name: str, cells: list[str], timeout_ms: float = 120_000) -> None:
        self.lab.write_notebook(name, cells)
        self.page.goto(f"{self.lab.url}/notebooks/{name}")
        self._attach(name, timeout_ms)

    def wait_idle(self, timeout_ms: float = 120_000) -> None:
        """The notebook's kernel is connected and idle (read from its session context)."""
        self.page.wait_for_function(
            """() => {
                const k = window.__mwPanel.sessionContext.session?.kernel;
                return !!(k && k.connectionStatus === 'connected' && k.status === 'idle');
            }""",
            timeout=timeout_ms,
        )


# ---------------------------------------------------------------------------------------- text helpers
_INVISIBLE = re.compile(
    "[\u0000-\u0008\u000b-\u001f\u007f-\u009f\u00ad\u061c\u180e\u200b-\u200f"
    "\u2028-\u202e\u2060-\u206f\ufeff\ufff9-\ufffb]"
)


def show_token(tok: str) -> str:
    """Python twin of js/lib/dom.ts:showToken (whitespace, controls and bidi marks made visible)."""
    out = tok.replace("\n", "\\n").replace("\t", "\\t").replace("\r", "\\r").replace(" ", "\u00b7")
    return _INVISIBLE.sub(lambda m: f"\\u{ord(m.group()):04X}", out)


def clip(text: str, n: int = 24) -> str:
    """Python twin of js/lib/dom.ts:clip (JS string length counts UTF-16 code units)."""
    units = text.encode("utf-16-le")
    if len(units) // 2 <= n:
        return text
    return units[: 2 * (n - 1)].decode("utf-16-le", errors="ignore") + "\u2026"


def js_fmt(x: float, digits: int = 3) -> str:
    """Python twin of js/lib/dom.ts:fmt (toFixed / toExponential(2), JS rounding)."""
    import math
    from decimal import ROUND_HALF_UP, Decimal

    if not math.isfinite(x):
        return {math.inf: "Infinity", -math.inf: "-Infinity"}.get(x, "NaN")
    a = abs(x)
    if a != 0 and (a < 1e-3 or a >= 1e4):
        mant, exp = f"{x:.2e}".split("e")
        return f"{mant}e{int(exp):+d}"
    # toFixed rounds the exact binary value of |x|, ties to the larger magnitude
    q = Decimal(x).quantize(Decimal(1).scaleb(-digits), rounding=ROUND_HALF_UP)
    return f"{q:.{digits}f}"
