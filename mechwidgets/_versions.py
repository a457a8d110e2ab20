"""Which TransformerLens is installed: asked in one place (the execution core, the zoo and the
tests ask here)."""

from __future__ import annotations

import functools


def tl_major_version() -> int:
    """3 when TransformerLens has ``HookedTransformer``, else 4.

    TransformerLens 4.x raises ``ImportError`` (not ``AttributeError``) when the removed
    ``HookedTransformer`` is looked up, so a bare ``hasattr`` is not enough.
    """
    import transformer_lens

    try:
        return 3 if getattr(transformer_lens, "HookedTransformer", None) is not None else 4
    except ImportError:
        return 4


@functools.cache
def tl_version() -> tuple[int, ...]:
    """The installed TransformerLens version as numbers (``(0,)`` when unknown)."""
    from importlib.metadata import version

    try:
        return tuple(int(x) for x in version("transformer_lens").split(".")[:2])
    except Exception:  # pragma: no cover - not installed as a distribution, or a local version
        return (0,)


__all__ = ["tl_major_version", "tl_version"]
