"""The one trait type for synced values that hold arrays.

``Arrays()`` holds an array, or a dict or list with arrays at any depth (a grid with its labels,
a panel's histograms). It encodes itself, as lonboard's accessors do:

- **on assignment** every tensor or NumPy array inside is detached, moved to the CPU and cast
  to the dtype it travels in (:func:`wire_dtype`: ``float16`` stays ``float16``, other floats
  become ``float32``, ``bool`` ``uint8``, other integers ``int32``), so what Python reads back
  from the trait is exactly what the page draws;
- **on the wire** (widget state, saved notebooks, exported pages) each array becomes
  ``{"dtype", "shape", "buffer"}`` (:func:`mechwidgets._tensor.encode_array`), whose bytes
  ipywidgets sends as a binary buffer; ``js/lib/array.ts`` decodes it;
- **from the page** such a dict comes back as a NumPy array.

Declare it with a comment that says what it holds, e.g.
``grids = Arrays().tag(sync=True)  # {key: {"exact": [rows, cols] float32, ...}}``.
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import torch
import traitlets

from .._tensor import decode_array, encode_array


def wire_dtype(dtype: np.dtype[Any]) -> str:
    """The dtype an array of ``dtype`` travels in (one of :data:`mechwidgets._tensor.DTYPES`)."""
    if dtype == np.float16:
        return "float16"
    if dtype.kind == "f":
        return "float32"
    if dtype == np.bool_ or dtype == np.uint8:
        return "uint8"
    if dtype == np.uint16:
        return "uint16"
    if dtype.kind in "iu":
        return "int32"
    raise TypeError(f"an array of dtype {dtype} cannot be sent to the page (use a float or int dtype)")


def as_wire(value: Any) -> Any:
    """``value`` with every tensor and array cast (on the CPU, as NumPy) to its wire dtype."""
    if isinstance(value, torch.Tensor):
        t = value.detach().cpu()
        if t.dtype == torch.bfloat16:
            t = t.float()
        value = t.numpy()
    if isinstance(value, np.ndarray):
        return np.ascontiguousarray(value.astype(wire_dtype(value.dtype), copy=False))
    if isinstance(value, dict):
        return {k: as_wire(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [as_wire(v) for v in value]
    return value


def to_json(value: Any, _widget: Any = None) -> Any:
    """Serializer: every array becomes ``{dtype, shape, buffer}``."""
    if isinstance(value, np.ndarray):
        return encode_array(value, wire_dtype(value.dtype))
    if isinstance(value, dict):
        return {k: to_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_json(v) for v in value]
    return value


def _is_encoded(value: Any) -> bool:
    return isinstance(value, dict) and set(value) == {"dtype", "shape", "buffer"}


def from_json(value: Any, _widget: Any = None) -> Any:
    """Deserializer: every ``{dtype, shape, buffer}`` becomes a NumPy array."""
    if _is_encoded(value):
        return decode_array(value).copy()
    if isinstance(value, dict):
        return {k: from_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [from_json(v) for v in value]
    return value


class Arrays(traitlets.TraitType[Any, Any]):
    """A synced value whose arrays (at any depth) travel as binary buffers (module docstring)."""

    info_text = "an array, or a dict or list holding arrays"

    def __init__(self, default_value: Any = None, **kwargs: Any) -> None:
        super().__init__(default_value={} if default_value is None else default_value, **kwargs)
        self.tag(to_json=to_json, from_json=from_json)

    def make_dynamic_default(self) -> Any:
        return copy.deepcopy(self.default_value)

    def validate(self, obj: Any, value: Any) -> Any:
        return as_wire(value)


__all__ = ["Arrays", "as_wire", "from_json", "to_json", "wire_dtype"]
