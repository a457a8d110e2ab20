"""Binary array transport between Python and the frontend.

An array travels as ``{"dtype": str, "shape": [int, ...], "buffer": bytes}``. Binary values
travel in one scheme, ipywidgets' own: lifted out of the JSON (a dict's key removed, a list's
item set to ``None``) and sent beside it as buffers, each with its path. ipywidgets does it for
widget state (live, and saved by ``ipywidgets.embed``); :func:`split_buffers` does it, with
anywidget's copy of the same function, for custom messages, which carry the paths as
``buffer_paths``. On the page
``js/lib/array.ts:putBuffers`` puts them back (also for saved state, ``js/lib/static_model.ts``)
and ``decodeArray`` decodes an array (honouring the ``DataView``'s ``byteOffset``). Nothing here
calls ``.tolist()`` on a tensor: numbers stay binary end to end.
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import torch
from anywidget._util import put_buffers, remove_buffers

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


def split_buffers(message: dict[str, Any]) -> tuple[dict[str, Any], list[Any]]:
    """Lift every ``bytes``/``memoryview`` out of a custom message (``widget.send(body, buffers)``).

    Returns the message without them plus ``"buffer_paths"`` (one path of keys and indices per
    buffer; absent when there are none) and the buffers in that order. It is anywidget's copy of
    ipywidgets' ``_remove_buffers``, which splits widget state: one scheme for state, saved state
    and messages. :func:`join_buffers` and ``js/lib/array.ts:putBuffers`` undo it.
    """
    body, paths, buffers = remove_buffers(message)
    return ({**body, "buffer_paths": paths} if buffers else body), buffers


def join_buffers(message: dict[str, Any], buffers: list[Any]) -> dict[str, Any]:
    """Inverse of :func:`split_buffers`: the message with each buffer back at its path, as the
    page reads it (for tests and Python readers of sent messages)."""
    body = copy.deepcopy({k: v for k, v in message.items() if k != "buffer_paths"})
    put_buffers(body, message.get("buffer_paths", []), buffers)
    return body
