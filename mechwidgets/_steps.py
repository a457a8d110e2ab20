"""Long analyses are generators that yield progress and return their result (so a widget can run
them step by step, with progress and cancel); this runs one to its end from plain Python."""

from __future__ import annotations

from collections.abc import Generator
from typing import Any, TypeVar

T = TypeVar("T")


def run_to_end(steps: Generator[Any, Any, T]) -> T:
    """Exhaust a progress generator and return the value it returns."""
    while True:
        try:
            next(steps)
        except StopIteration as stop:
            return stop.value  # type: ignore[no-any-return]
