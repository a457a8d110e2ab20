"""The base every mechwidgets widget stands on.

- **State** that must survive a save and an export (the data on screen, the user's selections)
  lives in synced traits. Traits that hold arrays are :class:`~mechwidgets.widgets._traits.Arrays`:
  each array goes on the wire as ``{dtype, shape, buffer}`` (:mod:`mechwidgets._tensor`), whose
  bytes ipywidgets sends as a binary buffer.
- **Live work** against the model goes through one request protocol. The frontend sends
  ``{"type": "request", "id", "kind", "args"}``; the widget answers
  ``{"type": "reply", "id", "kind", "result"}`` or ``{..., "error": message}``, and usually also
  writes the result into traits. A result may hold tensors and arrays: they are encoded as an
  ``Arrays`` trait's are and travel as binary buffers with their ``buffer_paths``
  (:func:`mechwidgets._tensor.split_buffers`). Each view of the widget (the same output shown twice, a second
  tab) prefixes its request ids with an id of its own and takes only the replies to its own ids.
- **Long work** is a generator that yields progress; it runs one step at a time on the kernel's
  event loop, so a message gets in between two steps. A job is tied to the inputs it started
  from: a newer request of its kind supersedes it; a request that changes its inputs (or the
  view it would write into) calls :meth:`MechWidget._invalidate_jobs`, which bumps the widget's
  *generation* and cancels it; before each step the runner checks that the job's generation is
  still the widget's, so a stale job never writes a trait or a reply. A ``{"type": "cancel",
  "kind", "id"}`` message cancels that request's job if it is still the one running; closing
  the widget cancels every job. A cancelled job's generator is closed (its ``finally`` blocks
  run: nothing stays hooked) and its request gets ``{..., "cancelled": true, "error": reason}``,
  which the frontend shows as no error.
- **Errors** are drawn as a banner from the ``error`` trait. A call made from Python raises the
  same :class:`~mechwidgets.errors.MechWidgetsError`; an unexpected exception is reported, never
  allowed to kill the kernel or vanish silently in a message handler.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import itertools
import logging
import traceback
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass, field
from typing import Any

import anywidget
import numpy as np
import traitlets
from anywidget._util import try_file_contents

from .. import _standalone
from .._standalone import static_file
from .._tensor import encoded_nbytes, split_buffers
from ..errors import BudgetError, CancelledError, MechWidgetsError
from ._requests import checked_page_request, page_requests
from ._traits import as_wire, to_json

log = logging.getLogger("mechwidgets")

#: The update budget, in bytes, checked in two places (the size is :func:`payload_nbytes`'s
#: estimate of a value after its tensors are cast to their wire dtypes):
#:
#: - the result of a request from the page: :meth:`MechWidget._reply` sends a ``BudgetError``
#:   reply in its place and shows it in the banner (a call from Python gets its result back
#:   directly: nothing is sent, nothing is measured);
#: - a synced trait's new value: :meth:`MechWidget.notify_change` puts the old value back and
#:   raises :class:`~mechwidgets.errors.BudgetError` to whoever assigned it (a request handler,
#:   whose reply becomes that error; the Python caller; for a value the page sent, ipywidgets'
#:   message handler, which logs it), so the value is neither kept nor sent.
#:
#: The other messages (cancel notices, error replies) are not measured. Jupyter's own cap
#: on a message from the browser is 10 MiB; this keeps each update well under it.
MAX_UPDATE_BYTES = 4 * 1024 * 1024


def payload_nbytes(obj: Any) -> int:
    """An estimate of the bytes a message or trait value takes on the wire: the bytes of its
    binary buffers and NumPy arrays, plus one per character of its strings (keys included), plus
    8 per other value (numbers, ``None``, tensors: cast a tensor with ``as_wire`` first to count
    its bytes). JSON punctuation is not counted."""
    if isinstance(obj, str):
        return len(obj)
    if isinstance(obj, dict):
        return sum(payload_nbytes(k) + payload_nbytes(v) for k, v in obj.items())
    if isinstance(obj, (list, tuple)):
        return sum(payload_nbytes(v) for v in obj)
    return encoded_nbytes(obj) if isinstance(obj, (bytes, bytearray, memoryview, np.ndarray)) else 8


def _over_budget(what: str, size: int) -> BudgetError:
    return BudgetError(
        f"{what} would send {size / 2**20:.1f} MiB, over the {MAX_UPDATE_BYTES / 2**20:.0f} MiB "
        f"budget per update (MAX_UPDATE_BYTES): show less at once, e.g. a shorter prompt, a "
        f"smaller max_positions=, fewer layers= or SAEs."
    )


def error_message(exc: BaseException) -> str:
    """The text shown in the banner for an exception."""
    if isinstance(exc, MechWidgetsError):
        return str(exc)
    return (
        f"Unexpected error: {type(exc).__name__}: {exc}. This is probably a bug in mechwidgets; "
        f"the model was left unchanged. The full traceback is in the log (logger 'mechwidgets')."
    )


def _load_frontend(cls: type) -> None:
    """Point a widget class's ``_esm``/``_css`` at its built files, on first use.

    Done lazily (not as class attributes) so that ``import mechwidgets`` works in a source
    checkout before the JS is built; anywidget's file watching (``ANYWIDGET_HMR=1``) still
    applies, since ``try_file_contents`` returns a watched ``FileContents``.
    """
    if "_esm" in cls.__dict__:
        return
    cls._esm = try_file_contents(static_file(cls._bundle))  # type: ignore[attr-defined]
    cls._css = try_file_contents(static_file("style.css"))  # type: ignore[attr-defined]


@dataclass
class _Job:
    id: Any
    kind: str
    gen: Generator[Any, None, Any]
    cancelled: bool = False
    steps: int = field(default=0)
    #: the widget's generation when the job started; the job runs only while it is current
    generation: int = 0


class MechWidget(anywidget.AnyWidget):
    """Base class: error banner, progress, request protocol, static fallback picture."""

    #: File name of this widget's built ES module in ``mechwidgets/static/``.
    _bundle: str = ""

    #: Message of the last failed request, drawn as a banner; "" when all is well.
    error = traitlets.Unicode("").tag(sync=True)
    #: Progress of the long job running now: ``{kind, id, done, total, message}``; {} when idle.
    progress = traitlets.Dict({}).tag(sync=True)

    def __init__(self, **kwargs: Any) -> None:
        _load_frontend(type(self))
        super().__init__(**kwargs)
        self._latest: dict[str, Any] = {}
        self._jobs: dict[str, _Job] = {}
        #: bumped by every change of what running jobs compute (see _invalidate_jobs)
        self._generation = 0
        self._python_ids = itertools.count(1)
        self.on_msg(self._on_frontend_message)

    # ------------------------------------------------------------ handlers
    def _handler(self, kind: str) -> Callable[..., Any]:
        fn = getattr(self, f"_req_{kind}", None)
        if fn is None:
            raise MechWidgetsError(f"unknown request kind {kind!r} for {type(self).__name__}.")
        self._before_request(kind)
        return fn  # type: ignore[no-any-return]

    # ------------------------------------------------------------ stale caches
    def _before_request(self, kind: str) -> None:
        """Called before every request's handler (from the frontend or from Python). A widget
        whose caches were computed on the model as it was recomputes them here when the model
        changed since (see :mod:`mechwidgets._fingerprint`); errors go to the banner."""

    def _refresh(self, analysis: Any, redraw: Callable[[], None]) -> None:
        """If ``analysis`` (an object with ``stale()``, ``recompute()`` and ``seconds``) was
        computed on the model as it was: recompute it and ``redraw`` what is on screen, inside
        :meth:`_recomputing` (the status line says why; running jobs are cancelled)."""
        change = analysis.stale()
        if change is None:
            return
        with self._recomputing(change, analysis.seconds):
            analysis.recompute()
            redraw()

    @contextlib.contextmanager
    def _recomputing(self, change: str, expected_seconds: float) -> Iterator[None]:
        """Around a recomputation forced by a changed model: running jobs are of the old model,
        so they are cancelled (what they would write is recomputed here or by the next click);
        when the recomputation is expected to take more than a second, the status line says so
        while it runs."""
        self._invalidate_jobs(f"the model changed ({change})")
        slow = expected_seconds > 1.0
        if slow:
            self.progress = {"kind": "recompute", "id": None, "done": 0, "total": 1,
                             "message": f"the model changed ({change}): recomputing"}
        try:
            yield
        finally:
            if slow:
                self.progress = {}

    # ------------------------------------------------------------ from Python
    def _call(self, kind: str, **args: Any) -> Any:
        """Run a request from Python: same handler, same error banner, and the error is raised.

        A long job runs to its end here; whatever stops it (an error, a KeyboardInterrupt, a
        change of its inputs) closes its generator and clears ``progress``."""
        self._cancel_job(kind)
        req_id = self._latest[kind] = f"py{next(self._python_ids)}"
        out: Any = None
        try:
            out = self._handler(kind)(**args)
            if inspect.isgenerator(out):
                steps, generation = out, self._generation
                while True:
                    if self._generation != generation:
                        raise CancelledError(f"{kind}: stopped, its inputs changed while it ran; run it again.")
                    try:
                        step = next(steps)
                    except StopIteration as stop:
                        out = stop.value
                        break
                    self._set_progress(kind, req_id, step)
        except Exception as exc:
            self._record_error(exc)
            raise
        finally:
            if inspect.isgenerator(out):
                out.close()  # its finally blocks run now (no-op once it has finished)
            self.progress = {}
        self.error = ""
        return out

    # ------------------------------------------------------------ from the frontend
    def _on_frontend_message(self, _widget: Any, content: Any, buffers: Any) -> None:
        # Never let an exception escape: ipywidgets would only log it, and the frontend would
        # wait forever for its reply.
        try:
            if not isinstance(content, dict):
                return
            mtype = content.get("type")
            if mtype == "request":
                args = content.get("args")
                self._dispatch(content.get("id"), str(content.get("kind")), {} if args is None else args)
            elif mtype == "cancel":
                self._cancel_request(str(content.get("kind")), content)
        except Exception as exc:  # pragma: no cover - defensive
            log.exception("mechwidgets: failed to handle a frontend message")
            self._record_error(exc)

    def _dispatch(self, req_id: Any, kind: str, args: dict[str, Any]) -> None:
        """A request from the page: only kinds declared with ``page_request`` are answered, and
        their arguments are checked against the declaration before the handler runs (see
        :mod:`mechwidgets.widgets._requests`). A request of a declared kind supersedes the
        running job of its kind even when its arguments are refused (the page has moved on);
        one of an unknown kind touches nothing."""
        if kind in page_requests(type(self)):  # type: ignore[arg-type]
            self._cancel_job(kind, reason="superseded by a newer request")
            self._latest[kind] = req_id
        try:
            handler, checked = checked_page_request(self, kind, args)
            self._before_request(kind)  # caches of a changed model are recomputed first
            out = handler(**checked)
        except Exception as exc:
            self._reply_error(req_id, kind, exc)
            return
        if inspect.isgenerator(out):
            job = _Job(req_id, kind, out, generation=self._generation)  # type: ignore[arg-type]
            self._jobs[kind] = job
            self._schedule(job)
        else:
            self._reply(req_id, kind, out)

    def _schedule(self, job: _Job) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        if loop is None:
            # No event loop (plain Python, tests): run the job to the end now.
            while self._step(job):
                pass
        else:
            loop.call_soon(self._step_and_reschedule, job)

    def _step_and_reschedule(self, job: _Job) -> None:
        if self._step(job):
            asyncio.get_running_loop().call_soon(self._step_and_reschedule, job)

    def _step(self, job: _Job) -> bool:
        """Advance a job by one step; False once it has finished, failed or been cancelled.

        Nothing runs (so nothing is written) unless the job is still its kind's running job and
        of the widget's current generation."""
        if job.cancelled:
            return False
        if self._jobs.get(job.kind) is not job:
            self._stop(job, "superseded by a newer request")
            return False
        if job.generation != self._generation:
            self._stop(job, "its inputs changed")
            return False
        try:
            progress = next(job.gen)
            if job.cancelled:  # it changed its own inputs: already answered as cancelled
                job.gen.close()
                return False
            job.steps += 1
            self._set_progress(job.kind, job.id, progress)
        except StopIteration as stop:
            self._end(job)
            self._reply(job.id, job.kind, stop.value)
            return False
        except Exception as exc:
            self._end(job)
            self._reply_error(job.id, job.kind, exc)
            return False
        except BaseException:  # KeyboardInterrupt: the job is over, and no cancel button stays
            self._stop(job, "interrupted")
            raise
        return True

    def _end(self, job: _Job) -> None:
        """A job has finished or failed: forget it, close its generator, clear the progress."""
        if self._jobs.get(job.kind) is job:
            del self._jobs[job.kind]
        job.gen.close()  # a no-op once it has returned or raised
        self.progress = {}

    def _cancel_job(self, kind: str, reason: str = "superseded by a newer request") -> None:
        """Cancel the running job of ``kind``, if any."""
        job = self._jobs.get(kind)
        if job is not None:
            self._stop(job, reason)

    def _cancel_request(self, kind: str, content: dict[str, Any]) -> None:
        """A cancel message from a view: ``{kind, id}`` cancels that request's job if it is still
        the one running (another view's newer job of the kind runs on). Without an ``id`` (the
        form Python code may send) it cancels the running job of the kind."""
        job = self._jobs.get(kind)
        if job is not None and ("id" not in content or content["id"] == job.id):
            self._stop(job, "cancelled by the user")

    def _invalidate_jobs(self, reason: str) -> None:
        """What running jobs compute (or the view they would write into) has changed: a new
        prompt, new answers, a view the user asked for. Bump the generation and cancel them all,
        so that none writes an old result back. Widgets call it right after such a change is
        accepted (after its checks: a refused request changes nothing)."""
        self._generation = getattr(self, "_generation", 0) + 1
        for job in list(getattr(self, "_jobs", {}).values()):
            self._stop(job, reason)

    def _stop(self, job: _Job, reason: str) -> None:
        """Cancel a job: close its generator (its finally blocks run: hooks come off), clear the
        progress and tell its request it was cancelled (not an error: no banner)."""
        if self._jobs.get(job.kind) is job:
            del self._jobs[job.kind]
        if job.cancelled:
            return
        job.cancelled = True
        if inspect.getgeneratorstate(job.gen) != "GEN_RUNNING":  # else closed when its step returns
            job.gen.close()
        if self.progress.get("id") == job.id:
            self.progress = {}
        self._send_message({"type": "reply", "id": job.id, "kind": job.kind, "cancelled": True,
                            "error": f"{job.kind}: {reason}"})

    def close(self) -> None:
        """Close the widget (as re-running its cell does): its running jobs are cancelled first."""
        self._invalidate_jobs("the widget was closed")
        super().close()

    def notify_change(self, change: Any) -> None:
        """Refuse a synced trait value over :data:`MAX_UPDATE_BYTES`: the trait keeps its old
        value and :class:`~mechwidgets.errors.BudgetError` is raised (to the request that set
        it, or to the Python caller), so the value is never sent."""
        name = change.get("name") if isinstance(change, dict) else None
        if change.get("type") == "change" and name in getattr(self, "keys", ()):
            size = payload_nbytes(change.get("new"))
            if size > MAX_UPDATE_BYTES:
                if "old" in change and change["old"] is not traitlets.Undefined:
                    self._trait_values[name] = change["old"]
                raise _over_budget(f"the {name!r} trait", size)
        super().notify_change(change)

    def _set_progress(self, kind: str, req_id: Any, step: Any) -> None:
        step = step if isinstance(step, dict) else {}
        self.progress = {
            "kind": kind,
            "id": req_id,
            "done": step.get("done", 0),
            "total": step.get("total", 0),
            "message": step.get("message", ""),
        }

    # ------------------------------------------------------------ replies
    def _send_message(self, content: dict[str, Any]) -> None:
        # a handler may return tensors or arrays: they travel as an Arrays trait's do, their
        # bytes as buffers with their paths (split_buffers)
        body, buffers = split_buffers(to_json(as_wire(content)))
        if self.comm is not None:
            self.send(body, buffers)

    def _reply(self, req_id: Any, kind: str, result: Any) -> None:
        if self._latest.get(kind) != req_id:
            return  # superseded while running: its reply would be dropped anyway
        result = as_wire(result)  # tensors become NumPy arrays of their wire dtype: measurable
        size = payload_nbytes(result)
        if size > MAX_UPDATE_BYTES:
            self._reply_error(req_id, kind, _over_budget(f"the reply to {kind!r}", size))
            return
        self.error = ""
        self._send_message({"type": "reply", "id": req_id, "kind": kind, "result": result})

    def _reply_error(self, req_id: Any, kind: str, exc: BaseException) -> None:
        self._record_error(exc)
        self._send_message({"type": "reply", "id": req_id, "kind": kind, "error": error_message(exc)})

    def _record_error(self, exc: BaseException) -> None:
        if not isinstance(exc, (MechWidgetsError, CancelledError)):
            log.error("mechwidgets: unexpected error\n%s", traceback.format_exc())
        self.error = error_message(exc)

    # ------------------------------------------------------------ display
    def _static_svg(self) -> str | None:
        """An SVG picture of the current view for places without a widget manager."""
        return None

    #: Write this widget's current view as one self-contained, offline HTML file (see
    #: :func:`mechwidgets._standalone.to_html`).
    to_html = _standalone.to_html

    def _repr_mimebundle_(self, **kwargs: Any) -> Any:
        bundle = super()._repr_mimebundle_(**kwargs)
        try:
            svg = self._static_svg()
        except Exception:  # a failed picture must never break display
            log.exception("mechwidgets: static picture failed")
            svg = None
        if svg is not None and isinstance(bundle, dict):
            bundle["image/svg+xml"] = svg
        elif svg is not None and isinstance(bundle, tuple):
            bundle[0]["image/svg+xml"] = svg
        return bundle


__all__ = ["MAX_UPDATE_BYTES", "MechWidget", "error_message", "payload_nbytes", "static_file"]
