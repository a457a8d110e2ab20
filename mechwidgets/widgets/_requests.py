"""Which requests the page may send a widget, and what their arguments are: declared once.

A handler meant for the page is marked with :func:`page_request`, which declares its arguments
with the schemas of :mod:`mechwidgets._args`::

    @page_request(layer=Int(0, lambda w: w._handle.n_layers - 1), head=Int(0, ...))
    def _req_select_head(self, layer: int, head: int) -> dict[str, Any]: ...

:meth:`MechWidget._dispatch <mechwidgets.widgets._base.MechWidget._dispatch>` answers a request
from the page only if its kind is so marked, and checks its arguments against the declaration
(types, ranges, sizes; missing and undeclared arguments) before the handler runs: a hostile or
malformed message is refused with a :class:`~mechwidgets.errors.RequestError` that names the
request, the argument and what it takes, and never reaches the model. Handlers without the mark
(``_req_set_corrupted_tokens_``, which takes a tensor) are reachable from Python only, through
``MechWidget._call``. Bounds given as functions of the widget read its Python-side state (the
model handle, the analysis object), never traits the page can write.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from .._args import Spec, check_args
from ..errors import RequestError

F = TypeVar("F", bound=Callable[..., Any])

_ATTR = "_page_args"


def page_request(**fields: Spec) -> Callable[[F], F]:
    """Mark a ``_req_<kind>`` handler as reachable from the page, with its arguments' schemas."""

    def mark(fn: F) -> F:
        setattr(fn, _ATTR, dict(fields))
        return fn

    return mark


@functools.cache
def page_requests(cls: type) -> Mapping[str, Mapping[str, Spec]]:
    """``{kind: {argument: schema}}`` of every request the page may send a widget class."""
    out: dict[str, Mapping[str, Spec]] = {}
    for name in sorted(dir(cls)):
        if not name.startswith("_req_"):
            continue
        # an override of a declared handler keeps its declaration (declared once, in the base)
        for klass in cls.__mro__:
            fields = getattr(klass.__dict__.get(name), _ATTR, None)
            if fields is not None:
                out[name[len("_req_"):]] = fields
                break
    return out


def checked_page_request(widget: Any, kind: Any, args: Any) -> tuple[Callable[..., Any], dict[str, Any]]:
    """The handler of a request from the page and its checked arguments.

    Raises:
        RequestError: a kind the page may not send, or arguments that do not fit its declaration.
    """
    declared = page_requests(type(widget))  # type: ignore[arg-type]
    if not isinstance(kind, str) or kind not in declared:
        shown = repr(kind) if len(repr(kind)) <= 60 else repr(kind)[:57] + "..."
        raise RequestError(
            f"unknown request kind {shown} for {type(widget).__name__}: the page may send "
            f"{', '.join(declared) or 'nothing'}."
        )
    checked = check_args(kind, declared[kind], args, widget)
    return getattr(widget, f"_req_{kind}"), checked


__all__ = ["checked_page_request", "page_request", "page_requests"]
