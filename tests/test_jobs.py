"""Jobs follow their inputs (issue 15, part 3).

A widget's long jobs (the patching grid, ACDC, a scrubbing evaluation) run a step at a time on the
kernel's event loop, so clicks arrive between two steps. These tests drive the widgets as a page
does, through the frontend message handler, with an asyncio loop stepping the jobs:

- flow 2 of the issue: a grid still streaming when its corrupted prompt (or its answers) change
  must not write its old rows back, nor be resumed by the next view: the grid shown equals a
  fresh ``activation_patch`` (through TransformerLens's hooks) on the new prompt;
- ACDC finishing must not overwrite the EAP view asked for while it ran; a scrubbing evaluation
  finishing must not overwrite the history step restored while it ran;
- closing a widget cancels its jobs (their generators closed: nothing stays hooked);
- two views: a cancel names the request it cancels, and stops nothing else;
- the generation check, and a KeyboardInterrupt during a job run from Python.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable, Generator
from typing import Any

import pytest
import torch
from test_widget_protocol import Slow

from mechwidgets import show_circuit, show_patching, zoo
from mechwidgets._model import hook_count
from mechwidgets.analysis.circuits import EdgePatcher
from mechwidgets.analysis.patching import activation_patch
from mechwidgets.analysis.scrubbing import Scrubber, induction_heads, induction_hypothesis
from mechwidgets.errors import CancelledError
from mechwidgets.widgets._base import MechWidget
from mechwidgets.widgets._scrubbing_tree import tree_rows
from mechwidgets.widgets.scrubbing import show_scrubbing

HEAD_OUT_NOISING: dict[str, Any] = {"component": "head_out", "direction": "noising", "metric": "logit_diff"}


@pytest.fixture(scope="module")
def toy_lm() -> Any:
    return zoo.load("toy-lm")


@pytest.fixture(scope="module")
def ioi() -> Any:
    return zoo.tasks.ioi_pairs(1, seed=0)[0]


class Page:
    """The frontend's side of one view: requests with this view's ids, every message recorded."""

    def __init__(self, widget: MechWidget, view: str = "v1") -> None:
        self.widget, self.view, self.n = widget, view, 0
        self.sent: list[dict[str, Any]] = []
        widget.send = lambda content, buffers=None: self.sent.append(content)  # type: ignore[method-assign]

    def request(self, kind: str, **args: Any) -> str:
        self.n += 1
        rid = f"{self.view}:{self.n}"
        self.widget._on_frontend_message(self.widget, {"type": "request", "id": rid, "kind": kind, "args": args}, [])
        return rid

    def cancel(self, kind: str, rid: str) -> None:
        self.widget._on_frontend_message(self.widget, {"type": "cancel", "kind": kind, "id": rid}, [])

    def reply(self, rid: str) -> dict[str, Any]:
        (found,) = [m for m in self.sent if m.get("type") == "reply" and m.get("id") == rid]
        return found


async def turns(n: int) -> None:
    """Let the event loop run ``n`` rounds (a job steps once a round)."""
    for _ in range(n):
        await asyncio.sleep(0)


async def until_idle(widget: MechWidget, limit: int = 10_000) -> None:
    for _ in range(limit):
        if not widget._jobs:
            return
        await asyncio.sleep(0)
    raise AssertionError("the widget's jobs did not finish")


# ------------------------------------------------------------------------------ flow 2: patching
CHANGES: dict[str, Callable[[Page], str]] = {
    "corrupt": lambda page: page.request("corrupt", pos=2, token=" Ryan"),
    "set_corrupted": lambda page: page.request(
        "set_corrupted", text="While Emma and Adam were working at the beach, Emma sent a gift to"),
    "set_answers": lambda page: page.request("set_answers", answer=" Nora", wrong_answer=" Adam"),
}


@pytest.mark.parametrize("change", list(CHANGES))
def test_a_streaming_grid_follows_a_change_of_its_prompt_or_answers(toy_lm: Any, ioi: Any, change: str) -> None:
    """Flow 2: start the exact head_out noising grid, change the corrupted prompt (or the
    answers) while it streams, let everything finish: the grid on screen is the new prompt's.
    (Before jobs followed their inputs, it differed by 0.47 here: the old job wrote its grid back
    and the next view resumed from it.)"""
    w = show_patching(toy_lm, ioi.clean, answer=" Emma", wrong_answer=" Nora", components=["head_out"])
    page = Page(w)
    first = page.request("corrupt", pos=11, token=" Emma")  # no loop running: answered at once
    assert "error" not in page.reply(first) and w.differing == [11]
    old_corrupted = w._need_corrupted().clone()

    async def clicks() -> tuple[str, str]:
        view = page.request("view", **HEAD_OUT_NOISING)
        await turns(2)
        assert w.progress["kind"] == "view" and 0 < w.progress["done"] < toy_lm.cfg.n_layers  # mid-grid
        changed = CHANGES[change](page)
        await turns(3)  # the page's round trip: then it asks for the view again
        page.request("view", **HEAD_OUT_NOISING)
        await until_idle(w)
        return view, changed

    view, changed = asyncio.run(clicks())
    assert "error" not in page.reply(changed) and w.error == ""
    if change == "set_answers":
        assert torch.equal(w._need_corrupted(), old_corrupted) and (w.answer, w.wrong_answer) == (" Nora", " Adam")
    else:
        assert not torch.equal(w._need_corrupted(), old_corrupted)
    fresh = activation_patch(toy_lm, w._clean, w._need_corrupted(), answer=w.answer, wrong_answer=w.wrong_answer,
                             engine="hooks", **HEAD_OUT_NOISING)
    shown = w.values()
    assert w.grids[next(iter(w.grids))]["exact_done"] == toy_lm.cfg.n_layers and len(w.grids) == 1
    assert shown.shape == fresh.values.shape
    torch.testing.assert_close(shown, fresh.values, atol=1e-4, rtol=0)
    # the old job was told why it stopped (a cancel: no error banner on the page)
    assert page.reply(view)["cancelled"] is True and "changed" in page.reply(view)["error"]
    assert hook_count(toy_lm) == 0


def test_closing_a_widget_cancels_its_job(toy_lm: Any, ioi: Any) -> None:
    w = show_patching(toy_lm, ioi.clean, ioi.corrupted, answer=" Emma", wrong_answer=" Nora", components=["resid_pre", "head_out"])
    page = Page(w)

    async def scenario() -> tuple[str, Any, int]:
        rid = page.request("view", **HEAD_OUT_NOISING)
        await turns(2)
        job = w._jobs["view"]
        done = int(w.grids["head_out|noising|logit_diff"]["exact_done"])
        assert w.progress["id"] == rid and done >= 1
        w.close()  # as re-running its cell does
        assert inspect.getgeneratorstate(job.gen) == "GEN_CLOSED"  # closed now, not left to the loop
        await turns(20)  # the loop runs on: the job must not
        return rid, job, done

    rid, job, done = asyncio.run(scenario())
    assert job.cancelled and w._jobs == {} and w.progress == {}
    assert int(w.grids["head_out|noising|logit_diff"]["exact_done"]) == done < toy_lm.cfg.n_layers
    assert page.reply(rid)["cancelled"] is True and "closed" in page.reply(rid)["error"]
    assert hook_count(toy_lm) == 0


# ------------------------------------------------------------------------------ circuit: ACDC vs EAP
def test_acdc_finishing_does_not_overwrite_the_eap_view_asked_for_meanwhile(toy_lm: Any, ioi: Any) -> None:
    w = show_circuit(toy_lm, ioi.clean, ioi.corrupted, answer=" Emma", wrong_answer=" Nora", method="eap-ig")
    page = Page(w)

    async def clicks() -> tuple[str, str]:
        acdc = page.request("acdc", threshold=0.01)
        await turns(3)
        assert w.progress["kind"] == "acdc" and w.method == "eap-ig"  # ACDC is on its way
        eap = page.request("eap", ig=False)
        await until_idle(w)
        await turns(5)
        return acdc, eap

    acdc, eap = asyncio.run(clicks())
    assert w.method == "eap" and page.reply(eap)["result"] == {"method": "eap"}
    assert page.reply(acdc)["cancelled"] is True and "EAP was asked for" in page.reply(acdc)["error"]
    # what is on screen is EAP's, as a fresh patcher computes it
    fresh = EdgePatcher(toy_lm, ioi.clean, ioi.corrupted, answer=" Emma", wrong_answer=" Nora")
    assert w.method == "eap" and w.result.method == "eap"
    torch.testing.assert_close(w.result.scores, fresh.result("eap").scores, atol=1e-4, rtol=0)
    faith = fresh.faithfulness(fresh.result("eap").circuit(w.threshold))
    assert w.faithfulness["n_edges"] == faith.n_edges
    assert w.faithfulness["metric"] == pytest.approx(faith.metric, abs=1e-4)
    assert w.progress == {} and hook_count(toy_lm) == 0


# ------------------------------------------------------------------------------ scrubbing: restore vs evaluate
def test_a_restore_during_an_evaluation_is_not_overwritten_by_it() -> None:
    model = zoo.load("induction-2l")
    data = zoo.tasks.induction_sequences(48, length=12, seed=1, model="induction-2l")
    prev, ind = induction_heads(model)
    naive = induction_hypothesis(prev, ind, refined=False)
    w = show_scrubbing(model, naive, data, n_seeds=3)
    w.evaluate(induction_hypothesis(prev, ind, key_feature="identity", n_heads=model.cfg.n_heads), label="refined")
    assert [h["step"] for h in w.history] == [1, 2]
    page = Page(w)
    path = w.tree[1]["path"]

    async def clicks() -> tuple[str, str]:
        evaluate = page.request("evaluate", nodes={path: {"kept": not w.tree[1]["kept"]}})
        await turns(2)
        assert w.progress["kind"] == "evaluate" and w.progress["done"] < w.progress["total"]  # mid-evaluation
        restore = page.request("restore", step=1)
        await until_idle(w)
        await turns(5)
        return evaluate, restore

    evaluate, restore = asyncio.run(clicks())
    assert [h["step"] for h in w.history] == [1, 2]  # the evaluation added no step
    assert w.result["step"] == 1 and w.last_result is w.results[0]
    assert page.reply(restore)["result"] == {"step": 1}
    assert page.reply(evaluate)["cancelled"] is True and "restored" in page.reply(evaluate)["error"]
    assert w.tree == tree_rows(naive, lambda spec: w.scrubber.feature(spec).name) and w.progress == {}
    # the loss recovered on screen is the restored hypothesis's, as a fresh scrubber finds it
    fresh = Scrubber(model, data, n_seeds=3).evaluate(naive)
    assert w.result["fraction"] == pytest.approx(fresh.fraction, abs=1e-4)
    assert w.result["scrubbed"] == pytest.approx(fresh.scrubbed, abs=1e-4)
    assert hook_count(model) == 0


# ------------------------------------------------------------------------------ the job runner
class Hooked(Slow):
    """A widget whose job holds a hook on a model across its steps (removed in its finally)."""

    def __init__(self, model: Any) -> None:
        super().__init__()
        self.model = model

    def _req_slow(self, tag: str, steps: int = 5) -> Generator[dict[str, Any], None, Any]:
        point = self.model.hook_dict["blocks.0.hook_resid_pre"]
        point.add_hook(lambda x, hook: x)
        try:
            return (yield from super()._req_slow(tag, steps))
        finally:
            point.remove_hooks("fwd")


def test_close_closes_the_generator_so_no_hook_is_left(toy_lm: Any) -> None:
    w = Hooked(toy_lm)
    page = Page(w)

    async def scenario() -> None:
        page.request("slow", tag="a", steps=50)
        await turns(3)
        assert hook_count(toy_lm) > 0  # held across steps
        w.close()
        assert hook_count(toy_lm) == 0 and w.cleaned == ["a"]  # at once, not when the loop gets to it
        await turns(60)

    asyncio.run(scenario())
    assert w.finished == [] and w.progress == {} and hook_count(toy_lm) == 0


def test_two_views_a_cancel_names_the_request_it_cancels(toy_lm: Any) -> None:
    w = Hooked(toy_lm)
    one, two = Page(w, "one"), Page(w, "two")
    two.sent = one.sent  # one comm: both views see every message

    async def scenario() -> tuple[str, str, str]:
        a = one.request("slow", tag="a", steps=30)
        await turns(3)
        b = two.request("slow", tag="b", steps=6)  # the other view's newer job supersedes a
        await turns(2)
        one.cancel("slow", a)  # view one's cancel of its own (finished) job: b runs on
        await until_idle(w)
        c = two.request("slow", tag="c", steps=30)
        await turns(3)
        one.cancel("slow", b)  # an old id: c runs on
        assert w._jobs["slow"].id == c
        two.cancel("slow", c)  # its own id: c stops
        await turns(3)
        return a, b, c

    a, b, c = asyncio.run(scenario())
    assert one.reply(a)["cancelled"] is True and "superseded" in one.reply(a)["error"]
    assert one.reply(b)["result"] == {"tag": "b"}
    assert one.reply(c)["cancelled"] is True and "cancelled by the user" in one.reply(c)["error"]
    assert w.finished == ["b"] and w.cleaned == ["a", "b", "c"] and hook_count(toy_lm) == 0


def test_a_job_of_an_old_generation_never_steps(toy_lm: Any) -> None:
    w = Hooked(toy_lm)
    page = Page(w)

    async def scenario() -> str:
        rid = page.request("slow", tag="a", steps=30)
        await turns(3)
        job = w._jobs["slow"]
        steps = job.steps
        assert steps >= 2
        w._generation += 1  # as a change of the job's inputs does (here without cancelling it)
        await turns(3)
        assert job.steps == steps and job.cancelled  # it never stepped again
        return rid

    rid = asyncio.run(scenario())
    assert page.reply(rid)["cancelled"] is True and "inputs changed" in page.reply(rid)["error"]
    assert w._jobs == {} and w.finished == [] and w.cleaned == ["a"] and hook_count(toy_lm) == 0


def interrupt_at(widget: MechWidget, done: int) -> Callable[[dict[str, Any]], None]:
    """Press Ctrl-C (as Jupyter's interrupt does) when the widget's job reports step ``done``."""

    def interrupt(change: dict[str, Any]) -> None:
        if change["new"].get("done") == done:
            raise KeyboardInterrupt

    widget.observe(interrupt, "progress")
    return interrupt


def test_python_job_interrupted_clears_progress_and_unhooks(toy_lm: Any) -> None:
    w = Hooked(toy_lm)
    interrupt = interrupt_at(w, 2)
    with pytest.raises(KeyboardInterrupt):
        w._call("slow", tag="a", steps=10)
    assert w.progress == {} and w.cleaned == ["a"] and w.finished == [] and hook_count(toy_lm) == 0
    w.unobserve(interrupt, "progress")

    # a job run from Python whose inputs change while it runs stops with a clear error
    def change_inputs(change: dict[str, Any]) -> None:
        if change["new"].get("done") == 1:
            w._invalidate_jobs("test")

    w.observe(change_inputs, "progress")
    with pytest.raises(CancelledError, match="inputs changed"):
        w._call("slow", tag="b", steps=10)
    assert w.progress == {} and w.cleaned == ["a", "b"] and "inputs changed" in w.error and hook_count(toy_lm) == 0


def test_frontend_job_interrupted_clears_progress_and_unhooks(toy_lm: Any) -> None:
    w = Hooked(toy_lm)
    page = Page(w)
    interrupt_at(w, 2)
    with pytest.raises(KeyboardInterrupt):
        page.request("slow", tag="a", steps=10)  # no loop running: the job runs at once
    assert w.progress == {} and w._jobs == {} and w.cleaned == ["a"] and hook_count(toy_lm) == 0
    assert page.reply("v1:1")["cancelled"] is True and "interrupted" in page.reply("v1:1")["error"]


class SelfInvalidating(Slow):
    """A job whose second step changes its own inputs (as a recompute after a model edit may)."""

    def _req_slow(self, tag: str, steps: int = 5) -> Generator[dict[str, Any], None, Any]:
        for i in range(steps):
            if i == 2:
                self._invalidate_jobs("the model changed")
            yield {"done": i, "total": steps, "message": tag}
        self.finished.append(tag)
        return {"tag": tag}


def test_a_job_that_changes_its_own_inputs_stops_cleanly() -> None:
    w = SelfInvalidating()
    page = Page(w)
    page.request("slow", tag="a", steps=10)  # no loop running: the job runs at once
    assert page.reply("v1:1")["cancelled"] is True and "the model changed" in page.reply("v1:1")["error"]
    assert w._jobs == {} and w.progress == {} and w.finished == [] and w.error == ""
