"""Argument checks shared by the public API and the widgets' requests from the page.

Two layers use it:

- the public API (``show_*``, the analysis functions, :class:`~mechwidgets._model.ModelHandle`)
  turns layers, heads and positions into plain ints with :func:`as_int`: Python and numpy
  integers (and 0-d integer tensors) pass, booleans, floats (``1.9`` is not a layer) and anything
  else are refused with an error that names the argument and what it takes;
- the widgets declare the arguments of every request the page may send with the small typed
  schemas below (:class:`Int`, :class:`Float`, :class:`Str`, :class:`ListOf`, :class:`Record`,
  ...), and :func:`check_args` checks a request against its declaration before any handler runs
  (see :mod:`mechwidgets.widgets._requests`). Bounds may be callables of the widget, so that they
  come from its Python-side state (the model handle, the analysis object), never from traits the
  page can write.

A schema of our own rather than pydantic: pydantic is not a dependency of this package, its
messages do not say what a layer or a head may be, and bounds here depend on the widget.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from .errors import ComponentError, MechWidgetsError, RequestError

#: A bound: a number, or a function of the widget (its Python-side state) returning one.
Bound = int | float | Callable[[Any], Any] | None

#: Longest string a request may carry (a prompt, a token, a node path, a label).
MAX_STR = 20_000
#: Most items a list or a dict in a request may hold when its declaration names no size.
MAX_ITEMS = 10_000


def _type_name(value: Any) -> str:
    return "None" if value is None else type(value).__name__


def _show(value: Any) -> str:
    """A short rendering of a value for an error message."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def is_int(value: Any) -> bool:
    """An integer for our purposes: a Python or numpy integer, or a 0-d integer tensor; never a
    bool (``True`` is not layer 1)."""
    if isinstance(value, bool):
        return False
    if isinstance(value, torch.Tensor):
        return value.ndim == 0 and not value.dtype.is_floating_point and value.dtype != torch.bool \
            and not value.dtype.is_complex
    if type(value).__module__ == "numpy" and type(value).__name__ == "bool_":
        return False
    return isinstance(value, numbers.Integral)


def as_int(
    value: Any,
    what: str,
    *,
    lo: int | None = None,
    hi: int | None = None,
    error: type[MechWidgetsError] = ComponentError,
    hint: str = "",
) -> int:
    """``value`` as a plain int in ``lo..hi`` (inclusive), or ``error`` naming ``what``.

    Accepts Python and numpy integers and 0-d integer tensors; refuses booleans, floats (even
    ``2.0``: a position is counted, not measured), strings and everything else.
    """
    if not is_int(value):
        if isinstance(value, float) or (isinstance(value, torch.Tensor) and value.dtype.is_floating_point):
            why = f"got the float {_show(value)}; a float is not truncated, pass int(...) on purpose"
        else:
            why = f"got {_show(value)} ({_type_name(value)})"
        raise error(f"{what} must be an integer{_range(lo, hi)}, {why}.{hint}")
    out = int(value)
    if (lo is not None and out < lo) or (hi is not None and out > hi):
        raise error(f"{what} {out} is out of range: it must be{_range(lo, hi)}.{hint}")
    return out


def _range(lo: Any, hi: Any) -> str:
    if lo is not None and hi is not None:
        return f" in {lo}..{hi}" if hi >= lo else f" in {lo}..{hi} (there is none)"
    if lo is not None:
        return f" >= {lo}"
    if hi is not None:
        return f" <= {hi}"
    return ""


# ============================================================================ request schemas
class Spec:
    """One argument's declaration. ``optional``: the page may leave it out (the handler's own
    default applies); ``nullable``: ``None`` (JSON null) is accepted as is; ``note``: said in
    parentheses after what it takes (e.g. ``"0 is BOS"``)."""

    def __init__(self, *, optional: bool = False, nullable: bool = False, note: str = "") -> None:
        self.optional = optional
        self.nullable = nullable
        self.note = note

    def describe(self, widget: Any) -> str:
        raise NotImplementedError

    def full_description(self, widget: Any) -> str:
        text = self.describe(widget) + (" or null" if self.nullable else "")
        return f"{text} ({self.note})" if self.note else text

    def check(self, value: Any, widget: Any, where: str) -> Any:
        if value is None and self.nullable:
            return None
        return self._check(value, widget, where)

    def _check(self, value: Any, widget: Any, where: str) -> Any:
        raise NotImplementedError

    def fail(self, value: Any, widget: Any, where: str, why: str = "") -> RequestError:
        got = why or f"got {_show(value)} ({_type_name(value)})"
        return RequestError(f"{where} takes {self.full_description(widget)}; {got}.")


def _bound(bound: Bound, widget: Any) -> Any:
    return bound(widget) if callable(bound) else bound


class _Ranged(Spec):
    """A number in ``lo..hi`` (inclusive; each a number, a function of the widget, or None)."""

    noun = "a number"

    def __init__(self, lo: Bound = None, hi: Bound = None, **kw: Any) -> None:
        super().__init__(**kw)
        self.lo, self.hi = lo, hi

    def bounds(self, widget: Any) -> tuple[Any, Any]:
        return _bound(self.lo, widget), _bound(self.hi, widget)

    def describe(self, widget: Any) -> str:
        return self.noun + _range(*self.bounds(widget))


class Int(_Ranged):
    """An integer in ``lo..hi`` (inclusive; each a number or a function of the widget)."""

    noun = "an integer"

    def _check(self, value: Any, widget: Any, where: str) -> int:
        lo, hi = self.bounds(widget)
        if not is_int(value):
            raise self.fail(value, widget, where)
        out = int(value)
        if (lo is not None and out < lo) or (hi is not None and out > hi):
            raise self.fail(value, widget, where, f"got {out}, out of range")
        return out


class Float(_Ranged):
    """A finite number (ints accepted) in ``lo..hi``."""

    noun = "a finite number"

    def _check(self, value: Any, widget: Any, where: str) -> float:
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise self.fail(value, widget, where)
        out = float(value)
        lo, hi = self.bounds(widget)
        if not math.isfinite(out) or (lo is not None and out < lo) or (hi is not None and out > hi):
            raise self.fail(value, widget, where, f"got {_show(value)}")
        return out


class Bool(Spec):
    """``true`` or ``false`` (not 0/1)."""

    def describe(self, widget: Any) -> str:
        return "true or false"

    def _check(self, value: Any, widget: Any, where: str) -> bool:
        if not isinstance(value, bool):
            raise self.fail(value, widget, where)
        return value


class Str(Spec):
    """A string of at most ``max_len`` characters, one of ``choices`` if given (a sequence or a
    function of the widget)."""

    def __init__(self, *, max_len: int = MAX_STR, choices: Sequence[str] | Callable[[Any], Sequence[str]] | None = None,
                 **kw: Any) -> None:
        super().__init__(**kw)
        self.max_len, self.choices = max_len, choices

    def _choices(self, widget: Any) -> list[str] | None:
        choices = self.choices(widget) if callable(self.choices) else self.choices
        return None if choices is None else [str(c) for c in choices]

    def describe(self, widget: Any) -> str:
        choices = self._choices(widget)
        if choices is not None:
            return "one of " + ", ".join(repr(c) for c in choices)
        return f"a string (at most {self.max_len} characters)"

    def _check(self, value: Any, widget: Any, where: str) -> str:
        if not isinstance(value, str):
            raise self.fail(value, widget, where)
        if len(value) > self.max_len:
            raise self.fail(value, widget, where, f"got {len(value)} characters")
        choices = self._choices(widget)
        if choices is not None and value not in choices:
            raise self.fail(value, widget, where, f"got {_show(value)}")
        return value


class OneOf(Spec):
    """The first of several declarations that accepts the value (e.g. a token as text or id)."""

    def __init__(self, *options: Spec, **kw: Any) -> None:
        super().__init__(**kw)
        self.options = options

    def describe(self, widget: Any) -> str:
        return " or ".join(o.full_description(widget) for o in self.options)

    def _check(self, value: Any, widget: Any, where: str) -> Any:
        for option in self.options:
            try:
                return option.check(value, widget, where)
            except RequestError:
                continue
        raise self.fail(value, widget, where)


class ListOf(Spec):
    """A list (JSON array) of items of one declaration, at most ``max_len`` of them."""

    def __init__(self, item: Spec, *, max_len: Bound = MAX_ITEMS, **kw: Any) -> None:
        super().__init__(**kw)
        self.item, self.max_len = item, max_len

    def describe(self, widget: Any) -> str:
        return f"a list of at most {_bound(self.max_len, widget)} items, each {self.item.full_description(widget)}"

    def _check(self, value: Any, widget: Any, where: str) -> list[Any]:
        if not isinstance(value, (list, tuple)):
            raise self.fail(value, widget, where)
        limit = _bound(self.max_len, widget)
        if len(value) > limit:
            raise self.fail(value, widget, where, f"got {len(value)} items")
        return [self.item.check(v, widget, f"{where}[{i}]") for i, v in enumerate(value)]


class Tuple(Spec):
    """A fixed-length list, e.g. ``[layer, head]``; ``names`` name its items in messages."""

    def __init__(self, *items: Spec, names: Sequence[str] = (), **kw: Any) -> None:
        super().__init__(**kw)
        self.items = items
        self.names = list(names) or [str(i) for i in range(len(items))]

    def describe(self, widget: Any) -> str:
        parts = ", ".join(f"{n}: {s.full_description(widget)}" for n, s in zip(self.names, self.items, strict=True))
        return f"a list [{', '.join(self.names)}] ({parts})"

    def _check(self, value: Any, widget: Any, where: str) -> list[Any]:
        if not isinstance(value, (list, tuple)) or len(value) != len(self.items):
            raise self.fail(value, widget, where)
        return [s.check(v, widget, f"{where}.{n}") for s, v, n in zip(self.items, value, self.names, strict=True)]


class Record(Spec):
    """A dict (JSON object) with the declared keys only; keys whose declaration is not
    ``optional`` are required."""

    def __init__(self, fields: Mapping[str, Spec], **kw: Any) -> None:
        super().__init__(**kw)
        self.fields = dict(fields)

    def describe(self, widget: Any) -> str:
        keys = ", ".join(f"{k}{'?' if s.optional else ''}" for k, s in self.fields.items())
        return f"an object {{{keys}}}"

    def _check(self, value: Any, widget: Any, where: str) -> dict[str, Any]:
        if not isinstance(value, Mapping):
            raise self.fail(value, widget, where)
        return check_fields(self.fields, value, widget, where)


class MapOf(Spec):
    """A dict (JSON object) from string keys (``key``) to values of one declaration."""

    def __init__(self, key: Str, value: Spec, *, max_len: int = MAX_ITEMS, **kw: Any) -> None:
        super().__init__(**kw)
        self.key, self.value, self.max_len = key, value, max_len

    def describe(self, widget: Any) -> str:
        return (f"an object of at most {self.max_len} entries, each key {self.key.full_description(widget)} "
                f"and each value {self.value.full_description(widget)}")

    def _check(self, value: Any, widget: Any, where: str) -> dict[str, Any]:
        if not isinstance(value, Mapping):
            raise self.fail(value, widget, where)
        if len(value) > self.max_len:
            raise self.fail(value, widget, where, f"got {len(value)} entries")
        out = {}
        for k, v in value.items():
            key = self.key.check(k, widget, f"{where} key")
            out[key] = self.value.check(v, widget, f"{where}[{key!r}]")
        return out


def check_fields(fields: Mapping[str, Spec], args: Mapping[str, Any], widget: Any, where: str) -> dict[str, Any]:
    """``args`` checked against ``fields``: every key declared, every required key present, each
    value of its declaration; returns the checked (converted) values."""
    for key in args:
        if key not in fields:
            takes = ", ".join(fields) or "nothing"
            raise RequestError(f"{where} has no argument {_show(key)}: it takes {takes}.")
    out = {}
    for key, spec in fields.items():
        if key not in args:
            if spec.optional:
                continue
            raise RequestError(f"{where} is missing {key!r}: {spec.full_description(widget)}.")
        out[key] = spec.check(args[key], widget, f"{where}: {key!r}")
    return out


def check_args(kind: str, fields: Mapping[str, Spec], args: Any, widget: Any) -> dict[str, Any]:
    """Check a request's arguments against its declaration (see the module docstring).

    Raises:
        RequestError: not a dict, an undeclared argument, a missing one, or a value of the wrong
            type, range or size; the message names the request, the argument and what it takes.
    """
    where = f"request {kind!r}"
    if not isinstance(args, Mapping):
        raise RequestError(f"{where} needs an object of arguments, got {_show(args)} ({_type_name(args)}).")
    return check_fields(fields, args, widget, where)


__all__ = [
    "Bool",
    "Float",
    "Int",
    "ListOf",
    "MapOf",
    "OneOf",
    "Record",
    "Spec",
    "Str",
    "Tuple",
    "as_int",
    "check_args",
    "is_int",
]
