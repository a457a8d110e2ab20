"""Binary array transport between Python and the frontend.

An array travels as ``{"dtype": str, "shape": [int, ...], "buffer": bytes}``. In widget state
ipywidgets lifts the ``bytes`` out of the JSON and sends them as binary buffers; in custom
messages :func:`split_buffers` does the same by hand. The TypeScript side decodes both with
``js/lib/array.ts`` (which honours the ``DataView``'s ``byteOffset``). Nothing here calls
``.tolist()`` on a tensor: numbers stay binary end to end.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

#: dtypes the frontend decoder understands.
DTYPES = ("float32", "float16", "uint8", "int32", "uint16")


def encode_array(x: torch.Tensor | np.ndarray, dtype: str = "float32") -> dict[str, Any]:
    """Encode a tensor or array as ``{dtype, shape, buffer}`` (C order, little endian).

    Args:
        x: any tensor or array; it is detached, moved to the CPU and cast to ``dtype``.
        dtype: one of :data:`DTYPES`. ``float16`` halves the size for views that need no more
            precision (attention thumbnails, heatmaps).
    """
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
    if isinstance(x, torch.Tensor):
        arr = x.detach().to("cpu", torch.float32 if x.is_floating_point() else None).numpy()
    else:
        arr = np.asarray(x)
    arr = np.ascontiguousarray(arr.astype(np.dtype(dtype).newbyteorder("<"), copy=False))
    return {"dtype": dtype, "shape": list(arr.shape), "buffer": arr.tobytes()}


def decode_array(d: dict[str, Any] | np.ndarray) -> np.ndarray:
    """Inverse of :func:`encode_array` (used by tests and by saved-state readers). An array
    (what an :class:`~mechwidgets.widgets._traits.Arrays` trait holds in Python) is returned
    as it is."""
    if isinstance(d, np.ndarray):
        return d
    buf = d["buffer"]
    if isinstance(buf, memoryview):
        buf = buf.tobytes()
    return np.frombuffer(buf, dtype=np.dtype(d["dtype"]).newbyteorder("<")).reshape(d["shape"])


def encoded_nbytes(obj: Any) -> int:
    """Total size of the binary buffers inside a (nested) message or state value."""
    if isinstance(obj, (bytes, bytearray, memoryview)):
        return len(obj) if not isinstance(obj, memoryview) else obj.nbytes
    if isinstance(obj, np.ndarray):
        return int(obj.nbytes)
    if isinstance(obj, dict):
        return sum(encoded_nbytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(encoded_nbytes(v) for v in obj)
    return 0


def split_buffers(obj: Any, buffers: list[bytes] | None = None) -> tuple[Any, list[bytes]]:
    """Replace every ``bytes`` in a nested structure by ``{"$buffer": i}`` and collect them.

    Used for custom messages (``widget.send(content, buffers)``), which, unlike widget
    state, do not lift buffers out by themselves. ``js/lib/array.ts:putBuffers`` undoes it.
    """
    if buffers is None:
        buffers = []
    if isinstance(obj, (bytes, bytearray, memoryview)):
        buffers.append(bytes(obj))
        return {"$buffer": len(buffers) - 1}, buffers
    if isinstance(obj, dict):
        return {k: split_buffers(v, buffers)[0] for k, v in obj.items()}, buffers
    if isinstance(obj, (list, tuple)):
        return [split_buffers(v, buffers)[0] for v in obj], buffers
    return obj, buffers
