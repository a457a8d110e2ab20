"""The Arrays trait: what Python holds, what goes on the wire, what comes back."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from mechwidgets._args import Int
from mechwidgets._tensor import decode_array, join_buffers
from mechwidgets.errors import BudgetError
from mechwidgets.widgets._base import MAX_UPDATE_BYTES, MechWidget
from mechwidgets.widgets._requests import page_request
from mechwidgets.widgets._traits import Arrays, from_json, to_json


class _W(MechWidget):
    _bundle = "attention.js"
    data = Arrays().tag(sync=True)


def test_assignment_casts_to_the_wire_dtype_and_python_reads_numpy() -> None:
    w = _W()
    x = torch.randn(3, 4, dtype=torch.float64)
    w.data = {"grid": x, "ids": torch.arange(5), "half": x.half(), "mask": x > 0, "label": "a", "n": [x[0]]}
    d = w.data
    assert isinstance(d["grid"], np.ndarray) and d["grid"].dtype == np.float32
    np.testing.assert_allclose(d["grid"], x.float().numpy())
    assert d["ids"].dtype == np.int32 and d["half"].dtype == np.float16 and d["mask"].dtype == np.uint8
    assert d["label"] == "a" and d["n"][0].shape == (4,)
    # decode_array passes an array through, so readers of encoded and held values agree
    assert decode_array(d["grid"]) is d["grid"]


def test_state_is_binary_and_round_trips() -> None:
    w = _W()
    x = torch.randn(2, 5)
    w.data = {"a": {"b": x}, "k": [1, 2]}
    state = w.get_state()["data"]
    enc = state["a"]["b"]
    assert enc["dtype"] == "float32" and enc["shape"] == [2, 5] and isinstance(enc["buffer"], bytes)
    assert state["k"] == [1, 2]
    back = from_json(to_json(w.data))
    np.testing.assert_array_equal(back["a"]["b"], x.numpy())


def test_default_is_not_shared_and_budget_applies() -> None:
    a, b = _W(), _W()
    a.data["x"] = 1
    assert b.data == {}
    big = np.zeros(MAX_UPDATE_BYTES // 4 + 16, np.float32)
    with pytest.raises(BudgetError):
        a.data = {"big": big}
    assert "big" not in a.data


def test_unsupported_dtype_is_refused() -> None:
    with pytest.raises(TypeError, match="cannot be sent"):
        _W().data = np.array(["x"])


class _Replies(MechWidget):
    _bundle = "attention.js"

    @page_request(n=Int(0, 10**9))
    def _req_tensor(self, n: int) -> Any:
        return {"x": torch.ones(n, dtype=torch.float64)}  # float64: travels as float32


def test_reply_tensors_are_measured_cast_and_sent_as_buffers() -> None:
    w = _Replies()
    sent: list[tuple[dict[str, Any], list[Any]]] = []
    w.send = lambda content, buffers=None: sent.append((content, list(buffers or [])))  # type: ignore[method-assign]
    w._on_frontend_message(w, {"type": "request", "id": 1, "kind": "tensor", "args": {"n": 3}}, [])
    content, buffers = sent[-1]
    assert content["buffer_paths"] == [["result", "x", "buffer"]] and len(buffers) == 1
    page = join_buffers(content, buffers)["result"]["x"]
    assert page["dtype"] == "float32" and page["shape"] == [3]
    np.testing.assert_array_equal(decode_array(page), np.ones(3, np.float32))
    # 4 bytes a value on the wire: just over the budget is refused, measured after the cast
    over = MAX_UPDATE_BYTES // 4 + 1
    w._on_frontend_message(w, {"type": "request", "id": 2, "kind": "tensor", "args": {"n": over}}, [])
    content, buffers = sent[-1]
    assert "MAX_UPDATE_BYTES" in content["error"] and buffers == [] and "result" not in content
    assert "MAX_UPDATE_BYTES" in w.error
