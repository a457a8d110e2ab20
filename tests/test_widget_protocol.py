"""The request protocol of MechWidget: replies, errors, supersession, progress and cancel."""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
import pytest
import traitlets

from mechwidgets import show_attention
from mechwidgets._args import Int, Str
from mechwidgets._tensor import decode_array, encode_array, join_buffers, split_buffers
from mechwidgets.errors import BudgetError, ComponentError
from mechwidgets.widgets._base import MAX_UPDATE_BYTES, MechWidget
from mechwidgets.widgets._requests import page_request

PROMPT = "When Mary and John went to the store, John gave a drink to"


def capture(widget: Any) -> list[tuple[dict[str, Any], list[bytes]]]:
    sent: list[tuple[dict[str, Any], list[bytes]]] = []
    widget.send = lambda content, buffers=None: sent.append((content, list(buffers or [])))
    return sent


def request(widget: Any, rid: Any, kind: str, **args: Any) -> None:
    widget._on_frontend_message(widget, {"type": "request", "id": rid, "kind": kind, "args": args}, [])


def test_encode_roundtrip_and_split() -> None:
    x = np.arange(12, dtype=np.float32).reshape(3, 4) / 7
    for dtype in ("float32", "float16"):
        enc = encode_array(x, dtype)
        assert enc["shape"] == [3, 4] and len(enc["buffer"]) == 12 * (4 if dtype == "float32" else 2)
        np.testing.assert_allclose(decode_array(enc), x, atol=1e-3)
    body, buffers = split_buffers({"a": [enc, {"b": b"xy"}], "n": 1})
    assert body["buffer_paths"] == [["a", 0, "buffer"], ["a", 1, "b"]]
    assert "buffer" not in body["a"][0] and body["a"][1] == {}
    assert buffers[1] == b"xy" and body["n"] == 1
    assert join_buffers(body, buffers) == {"a": [enc, {"b": b"xy"}], "n": 1}


def test_reply_with_binary_buffers(model: Any) -> None:
    w = show_attention(model, PROMPT)
    sent = capture(w)
    request(w, 7, "layer_patterns", layer=0)
    (content, buffers), = sent
    assert content["type"] == "reply" and content["id"] == 7 and "error" not in content
    enc = content["result"]["patterns"]
    assert content["buffer_paths"] == [["result", "patterns", "buffer"]] and enc["dtype"] == "float16"
    arr = np.frombuffer(buffers[0], dtype="<f2").reshape(enc["shape"])
    np.testing.assert_allclose(arr, w.patterns[0].numpy(), atol=1e-3)


def test_error_reply_sets_banner_and_never_raises(model: Any) -> None:
    w = show_attention(model, PROMPT)
    sent = capture(w)
    request(w, 1, "select_head", layer=0, head=99)
    assert "out of range" in sent[-1][0]["error"] and w.error == sent[-1][0]["error"]
    request(w, 2, "no_such_kind")
    assert "unknown request kind" in sent[-1][0]["error"]
    request(w, 3, "select_head", wrong_arg=1)  # refused by the request's declaration
    assert sent[-1][0]["error"] == "request 'select_head' has no argument 'wrong_arg': it takes layer, head."
    request(w, 4, "select_head", layer=1, head=0)
    assert "error" not in sent[-1][0] and w.error == ""


def test_python_call_raises_same_error(model: Any) -> None:
    w = show_attention(model, PROMPT)
    with pytest.raises(ComponentError) as info:
        w.select_head(0, 99)
    assert w.error == str(info.value)


class Slow(MechWidget):
    """A widget with a long job, to test progress, supersession and cancel."""

    _bundle = "attention.js"

    def __init__(self) -> None:
        super().__init__()
        self.finished: list[Any] = []
        self.cleaned: list[Any] = []

    @page_request(tag=Str(), steps=Int(0, 1000, optional=True))
    def _req_slow(self, tag: str, steps: int = 5) -> Any:
        try:
            for i in range(steps):
                yield {"done": i, "total": steps, "message": tag}
            self.finished.append(tag)
            return {"tag": tag}
        finally:
            self.cleaned.append(tag)




def test_long_job_runs_to_the_end_without_a_loop() -> None:
    w = Slow()
    sent = capture(w)
    request(w, 1, "slow", tag="a")
    assert sent[-1][0]["result"] == {"tag": "a"} and w.progress == {}
    assert w._call("slow", tag="b") == {"tag": "b"}


def test_long_job_progress_supersede_and_cancel() -> None:
    w = Slow()
    sent = capture(w)
    progress: list[dict[str, Any]] = []
    w.observe(lambda ch: progress.append(ch["new"]), "progress")

    async def scenario() -> None:
        request(w, 1, "slow", tag="first", steps=50)
        for _ in range(3):
            await asyncio.sleep(0)
        request(w, 2, "slow", tag="second", steps=3)  # supersedes the first
        for _ in range(10):
            await asyncio.sleep(0)
        request(w, 3, "slow", tag="third", steps=50)
        for _ in range(3):
            await asyncio.sleep(0)
        w._on_frontend_message(w, {"type": "cancel", "kind": "slow"}, [])
        for _ in range(5):
            await asyncio.sleep(0)

    asyncio.run(scenario())
    assert w.finished == ["second"]
    assert w.cleaned == ["first", "second", "third"]  # every job's finally ran: nothing leaks
    replies = {c["id"]: c for c, _ in sent}
    assert replies[1]["cancelled"] and "superseded" in replies[1]["error"]
    assert replies[2]["result"] == {"tag": "second"}
    assert replies[3]["cancelled"] and "cancelled by the user" in replies[3]["error"]
    assert any(p.get("message") == "first" for p in progress)
    assert w.progress == {}


class Big(MechWidget):
    """A widget with a synced dict trait and a request whose reply size the test chooses."""

    _bundle = "attention.js"

    data = traitlets.Dict({}).tag(sync=True)

    @page_request(n=Int(0, 2**30))
    def _req_blob(self, n: int) -> Any:
        return {"blob": encode_array(np.zeros(n, np.uint8), "uint8")}

    @page_request(n=Int(0, 2**30))
    def _req_store(self, n: int) -> Any:
        self.data = {"blob": encode_array(np.zeros(n, np.uint8), "uint8")}
        return {}


def test_every_reply_and_trait_update_respects_the_budget() -> None:
    w = Big()
    sent = capture(w)
    request(w, 1, "blob", n=MAX_UPDATE_BYTES - 100)  # at the budget (the key and dtype text count)
    assert "result" in sent[-1][0] and len(sent[-1][1][0]) == MAX_UPDATE_BYTES - 100
    request(w, 2, "blob", n=MAX_UPDATE_BYTES + 1)
    assert "result" not in sent[-1][0] and "over the 4 MiB budget" in sent[-1][0]["error"]
    request(w, 3, "store", n=1000)
    assert "error" not in sent[-1][0] and w.data["blob"]["shape"] == [1000]
    request(w, 4, "store", n=MAX_UPDATE_BYTES + 1)
    assert "'data' trait" in sent[-1][0]["error"] and "over the 4 MiB budget" in w.error
    assert w.data["blob"]["shape"] == [1000]  # refused: the trait keeps its old value
    with pytest.raises(BudgetError):  # from Python too
        w._call("store", n=MAX_UPDATE_BYTES + 1)
    with pytest.raises(BudgetError):
        w.data = {"x": b"\0" * (MAX_UPDATE_BYTES + 1)}
    assert w.data["blob"]["shape"] == [1000]
