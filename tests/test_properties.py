"""Property tests (issue 15): every number a widget shows is the model's, as it is now.

For each widget, a seeded random sequence of actions, as a page and a notebook user interleave
them: the widget's own requests (through the frontend message handler, with valid random
arguments), the event loop stepping the widget's jobs a random number of times, a permanent user
hook added or removed (TransformerLens's ``add_hook(..., is_permanent=True)``, scaling a head's
``hook_z`` or an MLP's ``hook_mlp_out``), a weight edited in place (``.data.mul_``), prompts and
answers changed. After every action:

- nothing is hooked beyond the user's own hooks, and those are the very hooks the user attached;
- when no job is running and the model has not changed since the last click, every number the
  widget's traits show (grids and their baselines, head scores and patterns, ablation
  predictions and losses, feature activations and interventions, EAP scores, faithfulness, node
  effects, loss recovered) equals a fresh computation on the model as it is then, ≤ 1e-4: with
  TransformerLens's own hooks written here (``run_with_cache``, ``run_with_hooks``,
  ``transformer_lens.patching``), or, for what has no short hand-written form (attribution
  grids, the scores of a fresh ``EdgePatcher``, a fresh ``Scrubber``'s resampling), the analysis
  layer run afresh (``engine="hooks"`` for patching);
- while a patching grid still streams, its finished layers already equal the fresh grid's.

After a change of the model and before the next click, a widget cannot know: what it shows is
then not compared (the next click recomputes, and is compared). Weights are restored and every
hook removed at the end, whatever happens.
"""

from __future__ import annotations

import asyncio
import functools
import random
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from support import TL3

from mechwidgets import show_attention, show_circuit, show_features, show_patching, zoo
from mechwidgets._fingerprint import model_fingerprint
from mechwidgets._model import hook_count
from mechwidgets._tensor import decode_array, join_buffers
from mechwidgets.analysis.attention import head_scores
from mechwidgets.analysis.attribution import attribution_patch
from mechwidgets.analysis.patching import activation_patch
from mechwidgets.widgets._base import MechWidget

TOL = 1e-4
SEEDS = (0, 1, 2)

CLEAN = "While Emma and Nora were working at the beach, Nora sent a gift to"
CORRUPTED = "While Ryan and Adam were working at the beach, Arthur sent a gift to"
OTHER_CORRUPTED = (
    CORRUPTED,
    "While Emma and Nora were working at the beach, Emma sent a gift to",
    "While Adam and Emma were working at the beach, Ryan sent a gift to",
)
NAMES = (" Emma", " Nora", " Ryan", " Adam", " Arthur")


def decode(enc: dict[str, Any]) -> torch.Tensor:
    return torch.from_numpy(decode_array(enc).copy()).float()


def assert_close(shown: Any, want: Any, what: str, atol: float = TOL) -> None:
    shown = torch.as_tensor(shown).float()
    want = torch.as_tensor(want).float().reshape(shown.shape)
    assert torch.allclose(shown, want, atol=atol, rtol=0, equal_nan=True), (
        f"{what}: shown differs from a fresh computation by {float((shown - want).abs().nan_to_num().max()):.3g}")


# ------------------------------------------------------------------------------ the user and the page
def _scale(x: torch.Tensor, hook: Any, factor: float) -> torch.Tensor:
    return x * factor


class User:
    """The notebook user: permanent hooks of their own, weights edited in place; and the page:
    requests with ids, every message recorded, the event loop stepped."""

    def __init__(self, model: Any, widget: MechWidget, seed: int, hook_points: list[str], params: list[str],
                 max_turns: int = 4) -> None:
        self.model, self.widget, self.rng = model, widget, random.Random(seed)
        self.max_turns = max_turns
        self.hook_points, self.param_names = hook_points, params
        self.user_hooks: dict[str, frozenset[Any]] = {}  # hook point -> ids of the user's torch hooks there
        self.expected_hooks = hook_count(model)
        self.changed = False  # the model changed since the last click
        self.sent: list[dict[str, Any]] = []
        self.n = 0
        self.ids: list[str] = []
        self.kinds: dict[str, str] = {}  # request id -> kind, in the order they were made
        widget.send = lambda content, buffers=None: self.sent.append(join_buffers(content, buffers or []))  # type: ignore[method-assign]

    # -- the page
    def request(self, kind: str, **args: Any) -> str:
        self.n += 1
        rid = f"v1:{self.n}"
        self.ids.append(rid)
        self.kinds[rid] = kind
        self.changed = False
        self.widget._on_frontend_message(self.widget, {"type": "request", "id": rid, "kind": kind, "args": args}, [])
        return rid

    def reply(self, rid: str) -> dict[str, Any] | None:
        found = [m for m in self.sent if m.get("type") == "reply" and m.get("id") == rid]
        assert len(found) <= 1, f"{rid} answered twice"
        return found[0] if found else None

    async def step(self) -> None:
        for _ in range(self.rng.randint(1, self.max_turns)):
            await asyncio.sleep(0)

    async def drain(self) -> None:
        for _ in range(100_000):
            if not self.widget._jobs:
                return
            await asyncio.sleep(0)
        raise AssertionError("the widget's jobs did not finish")

    async def act(self, actions: dict[str, tuple[float, Callable[[], None]]], *, step: float, drain: float) -> None:
        """One random action, drawn by weight: a click or a change of the model (``actions``:
        name -> (weight, do it)), the loop stepping the jobs a few turns (``step``) or running them
        to their end (``drain``); then the hooks are checked."""
        kind = pick(self.rng, {**{k: v[0] for k, v in actions.items()}, "step": step, "drain": drain})
        if kind == "step":
            await self.step()
        elif kind == "drain":
            await self.drain()
        else:
            actions[kind][1]()
        self.check_hooks()

    # -- the user
    def add_hook(self) -> None:
        free = [p for p in self.hook_points if p not in self.user_hooks]
        if not free:
            return
        name = self.rng.choice(free)
        factor = self.rng.choice([0.5, 1.5, -1.0])
        self.model.add_hook(name, functools.partial(_scale, factor=factor), is_permanent=True)
        self.user_hooks[name] = frozenset(self.model.hook_dict[name]._forward_hooks)
        self.expected_hooks = hook_count(self.model)
        self.changed = True

    def remove_hook(self) -> None:
        if not self.user_hooks:
            return
        name = self.rng.choice(sorted(self.user_hooks))
        self.model.hook_dict[name].remove_hooks("fwd", including_permanent=True)
        del self.user_hooks[name]
        self.expected_hooks = hook_count(self.model)
        self.changed = True

    def edit_weight(self) -> None:
        name = self.rng.choice(self.param_names)
        factor = self.rng.choice([0.5, 1.5, -1.0])
        weight = self.model.get_submodule(name.rsplit(".", 1)[0])
        before = getattr(weight, name.rsplit(".", 1)[1]).detach().clone()
        getattr(weight, name.rsplit(".", 1)[1]).data.mul_(factor)  # a TransformerBridge's W_O: a view of attn.o
        assert not torch.equal(getattr(weight, name.rsplit(".", 1)[1]), before), f"{name} was not edited"
        self.changed = True

    def check_hooks(self) -> None:
        assert hook_count(self.model) == self.expected_hooks, "a hook was left on the model (or one of the user's removed)"
        for name, ids in self.user_hooks.items():
            assert frozenset(self.model.hook_dict[name]._forward_hooks) == ids, f"the user's hook on {name} was touched"

    def check_replies(self, allowed: tuple[str, ...] = ("model changed while",)) -> None:
        """Every request answered so far succeeded, was cancelled, or stopped on a changed model."""
        for rid in self.ids:
            reply = self.reply(rid)
            if reply is None or "result" in reply or reply.get("cancelled"):
                continue
            assert any(a in reply["error"] for a in allowed), f"{rid}: {reply['error']}"


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """One torch thread while these tests run: on the shared 2-core machine, conftest's two
    threads made an ACDC 13x slower (68 s instead of 5 s, spinning against other processes)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def restored() -> Iterator[Callable[[Any], Any]]:
    """Load a zoo model; afterwards its weights are put back and every hook removed."""
    loaded: list[tuple[Any, dict[str, torch.Tensor]]] = []

    def load(name: str) -> Any:
        model = zoo.load(name)
        with torch.no_grad():  # a TransformerBridge wires hooks of its own on its first forward
            model(model.to_tokens("a"))
        loaded.append((model, {k: v.detach().clone() for k, v in model.named_parameters()}))
        return model

    yield load
    for model, saved in loaded:
        model.reset_hooks(including_permanent=True)
        with torch.no_grad():
            for k, v in model.named_parameters():
                v.data.copy_(saved[k])
        assert hook_count(model) == 0
        assert all(torch.equal(v, saved[k]) for k, v in model.named_parameters())


def run(scenario: Callable[[], Any]) -> None:
    asyncio.run(scenario())


def pick(rng: random.Random, weights: dict[str, float]) -> str:
    return rng.choices(list(weights), list(weights.values()))[0]


def hooked_points(model: Any, with_mlp: bool = True) -> list[str]:
    points = [f"blocks.{layer}.attn.hook_z" for layer in range(model.cfg.n_layers)]
    if with_mlp and not model.cfg.attn_only:
        points += [f"blocks.{layer}.hook_mlp_out" for layer in range(model.cfg.n_layers)]
    return points


def edited_params(model: Any) -> list[str]:
    """The weights the user edits: each block's W_O, and its MLP's W_in and W_out."""
    names = [f"blocks.{layer}.attn.W_O" for layer in range(model.cfg.n_layers)]
    if not model.cfg.attn_only:
        names += [f"blocks.{layer}.mlp.{w}" for layer in range(model.cfg.n_layers) for w in ("W_in", "W_out")]
    return names


def tl_logit_diff(model: Any, tokens: torch.Tensor, a: int, w: int) -> float:
    with torch.no_grad():
        logits = model(tokens)[0, -1]
    return float(logits[a] - logits[w])


# ------------------------------------------------------------------------------ patching
COMPONENTS = ["resid_pre", "attn_out", "head_out"]
METRICS = ["logit_diff", "logprob"]


class PatchingReference:
    """Fresh grids on the model as it is, cached by the model's fingerprint and the inputs."""

    def __init__(self, model: Any) -> None:
        self.model, self.cache = model, {}  # type: ignore[var-annotated]

    def get(self, what: str, clean: torch.Tensor, corrupted: torch.Tensor, a: int, w: int, *view: str) -> Any:
        key = (model_fingerprint(self.model), what, tuple(corrupted[0].tolist()), a, w, view)
        if key not in self.cache:
            component, direction, metric = view
            args: dict[str, Any] = dict(component=component, direction=direction, metric=metric, answer=a, wrong_answer=w)
            if what == "exact":
                self.cache[key] = activation_patch(self.model, clean, corrupted, engine="hooks", **args)
            elif what == "attribution":
                self.cache[key] = attribution_patch(self.model, clean, corrupted, **args)
            else:  # TransformerLens's own patching: the denoising resid_pre logit-diff grid, normalised
                from transformer_lens import patching

                with torch.no_grad():
                    _, cache = self.model.run_with_cache(clean)
                    c = tl_logit_diff(self.model, clean, a, w)
                    k = tl_logit_diff(self.model, corrupted, a, w)

                    def metric_fn(logits: torch.Tensor) -> torch.Tensor:
                        return (logits[0, -1, a] - logits[0, -1, w] - k) / (c - k)

                    self.cache[key] = patching.get_act_patch_resid_pre(self.model, corrupted, cache, metric_fn)
        return self.cache[key]


def check_patching(user: User, ref: PatchingReference, state: dict[str, Any], *, partial: bool) -> int:
    """Compare every grid on screen (only finished layers when ``partial``); how many numbers."""
    w, model = user.widget, user.model
    assert w.answer == state["answer"] and w.wrong_answer == state["wrong"]
    corrupted = state["corrupted"]
    assert torch.equal(w._need_corrupted(), corrupted)
    assert w.corrupted_tokens == model.to_str_tokens(corrupted)
    a, wr = model.to_single_token(state["answer"]), model.to_single_token(state["wrong"])
    checked = 0
    for key, grid in w.grids.items():
        view = tuple(key.split("|"))
        exact_ref = ref.get("exact", w._clean, corrupted, a, wr, *view)
        exact = decode(grid["exact"])
        done = int(grid["exact_done"]) * int(grid["rows_per_layer"])
        # a view left for another is kept half-done (the next view of it resumes); the one on
        # screen is complete once no job runs
        current = key == f"{w.component}|{w.direction}|{w.metric}"
        assert partial or not current or done == exact.shape[0], f"{key}: the view on screen left half-done"
        want = exact_ref.values.reshape(exact.shape)
        assert_close(exact[:done], want[:done], f"{key} exact, rows 0..{done}")
        assert torch.isnan(exact[done:]).all()
        if view == ("resid_pre", "denoising", "logit_diff") and TL3 and done == exact.shape[0]:
            assert_close(exact, ref.get("tl", w._clean, corrupted, a, wr, *view), f"{key} vs transformer_lens.patching")
        attr = ref.get("attribution", w._clean, corrupted, a, wr, *view)
        assert_close(decode(grid["attribution"]), attr.values, f"{key} attribution")
        assert abs(grid["baselines"]["clean"] - exact_ref.clean_value) <= TOL
        assert abs(grid["baselines"]["corrupted"] - exact_ref.corrupted_value) <= TOL
        if view[2] == "logit_diff":
            assert abs(grid["baselines"]["clean"] - tl_logit_diff(model, w._clean, a, wr)) <= TOL
            assert abs(grid["baselines"]["corrupted"] - tl_logit_diff(model, corrupted, a, wr)) <= TOL
        checked += done * exact.shape[1] + exact.numel() + 2
    detail = w.detail
    if detail.get("kind") == "logits" and not partial:
        checked += check_patched_logits(user, state)
    return checked


def check_patching_detail_args(w: Any) -> tuple[int, int] | None:
    grid = w.grids.get(f"{w.component}|{w.direction}|{w.metric}")
    return None if not grid else (len(grid["rows"]), len(grid["cols"]))


def check_patched_logits(user: User, state: dict[str, Any]) -> int:
    """A clicked cell's next-token predictions with that one patch, by TransformerLens's hooks."""
    w, model = user.widget, user.model
    layer, col, component, direction = state["cell"]
    name = {"resid_pre": f"blocks.{layer}.hook_resid_pre", "attn_out": f"blocks.{layer}.hook_attn_out"}[component]
    base, source = (state["corrupted"], w._clean) if direction == "denoising" else (w._clean, state["corrupted"])
    with torch.no_grad():
        _, cache = model.run_with_cache(source, names_filter=name)

        def patch(x: torch.Tensor, hook: Any) -> torch.Tensor:
            x = x.clone()
            x[:, col] = cache[name][:, col]
            return x

        before = model(base)[0, -1].softmax(-1)
        after = model.run_with_hooks(base, fwd_hooks=[(name, patch)])[0, -1].softmax(-1)
    ids = [model.to_single_token(t) for t in w.detail["top_tokens"]]
    base_ids = [model.to_single_token(t) for t in w.detail["base_tokens"]]
    assert_close(decode(w.detail["top_probs"]), after[ids], "patched top predictions")
    assert_close(decode(w.detail["base_probs"]), before[base_ids], "base top predictions")
    assert_close(decode(w.detail["top_probs"]), after.topk(len(ids)).values, "patched top-k")
    return 2 * len(ids)


@pytest.mark.parametrize("seed", SEEDS)
def test_patching_widget_shows_the_models_numbers(restored: Callable[[str], Any], seed: int) -> None:
    model = restored("toy-lm")
    w = show_patching(model, CLEAN, CORRUPTED, answer=" Emma", wrong_answer=" Nora", components=COMPONENTS)
    user = User(model, w, seed, hooked_points(model), edited_params(model))
    rng, ref = user.rng, PatchingReference(model)
    state: dict[str, Any] = {"answer": " Emma", "wrong": " Nora", "corrupted": model.to_tokens(CORRUPTED), "cell": None,
                             "view_again": 0}
    n_pos = w._clean.shape[1]
    checked = {"n": 0, "full": 0, "raced": 0}

    def view() -> None:
        user.request("view", component=rng.choice(COMPONENTS), direction=rng.choice(["denoising", "noising"]),
                     metric=rng.choice(METRICS))

    def view_again() -> None:
        """What the page does after a new prompt or new answers, a round trip later (a few turns
        of the loop, or never if the user closes the tab first)."""
        state["view_again"] = rng.randint(1, 3) if rng.random() < 0.7 else 0

    def page_round_trip() -> None:
        if state["view_again"]:
            state["view_again"] -= 1
            if not state["view_again"]:
                user.request("view", component=w.component, direction=w.direction, metric=w.metric)

    def corrupt() -> None:
        checked["raced"] += "view" in w._jobs
        pos = rng.randrange(1, n_pos)
        now = (int(w._clean[0, pos]), int(state["corrupted"][0, pos]))  # a token that changes the prompt
        token = rng.choice([t for t in NAMES if model.to_single_token(t) not in now])
        rid = user.request("corrupt", pos=pos, token=token)
        assert "result" in (user.reply(rid) or {}), user.reply(rid)
        state["corrupted"] = state["corrupted"].clone()
        state["corrupted"][0, pos] = model.to_single_token(token)
        view_again()

    def set_corrupted() -> None:
        checked["raced"] += "view" in w._jobs
        text = rng.choice([t for t in OTHER_CORRUPTED if not torch.equal(model.to_tokens(t), state["corrupted"])])
        rid = user.request("set_corrupted", text=text)
        assert "result" in (user.reply(rid) or {}), user.reply(rid)
        state["corrupted"] = model.to_tokens(text)
        view_again()

    def set_answers() -> None:
        checked["raced"] += "view" in w._jobs
        answer, wrong = rng.choice([(a, b) for a in NAMES for b in NAMES
                                    if a != b and (a, b) != (state["answer"], state["wrong"])])
        rid = user.request("set_answers", answer=answer, wrong_answer=wrong)
        assert "result" in (user.reply(rid) or {}), user.reply(rid)
        state["answer"], state["wrong"] = answer, wrong
        view_again()

    def cell() -> None:
        shape = check_patching_detail_args(w)
        if shape is None or w.component == "head_out":
            return
        grid = w.grids[f"{w.component}|{w.direction}|{w.metric}"]
        row, col = rng.randrange(shape[0]), rng.randrange(shape[1])
        state["cell"] = (row // int(grid["rows_per_layer"]), col, w.component, w.direction)
        rid = user.request("cell", row=row, col=col)
        assert "result" in (user.reply(rid) or {}), user.reply(rid)

    actions: dict[str, tuple[float, Callable[[], None]]] = {
        "view": (3, view), "corrupt": (2, corrupt), "set_corrupted": (1, set_corrupted),
        "set_answers": (1.5, set_answers), "cell": (1.5, cell), "add_hook": (1.5, user.add_hook),
        "remove_hook": (1, user.remove_hook), "edit_weight": (1.5, user.edit_weight),
    }

    async def scenario() -> None:
        for _ in range(22):
            page_round_trip()
            await user.act(actions, step=4, drain=2)
            if not user.changed:
                if not w._jobs:
                    checked["full"] += 1
                checked["n"] += check_patching(user, ref, state, partial=bool(w._jobs))
        # and once for sure: a grid streams, the prompt changes, the loop turns (issue 15's flow 2)
        await user.drain()
        state["view_again"] = 0
        view()
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        raced = checked["raced"]
        rng.choice([corrupt, set_corrupted, set_answers])()
        assert checked["raced"] == raced + 1
        for _ in range(3):
            await asyncio.sleep(0)
            checked["n"] += check_patching(user, ref, state, partial=bool(w._jobs))
        user.request("view", component=w.component, direction=w.direction, metric=w.metric)  # a last click
        await user.drain()
        user.check_hooks()
        checked["n"] += check_patching(user, ref, state, partial=False)
        user.check_replies()

    run(scenario)
    # a prompt or the answers changed while a grid streamed (issue 15's flow 2), at least once
    assert checked["full"] >= 3 and checked["n"] > 300 and checked["raced"] >= 1, checked
    w.close()
    user.check_hooks()


# ------------------------------------------------------------------------------ attention
ABLATION_PROMPT = "While Ryan and Adam were working at the beach, Arthur sent a gift to"


def tl_patterns(model: Any, tokens: torch.Tensor, fwd_hooks: tuple[Any, ...] = ()) -> tuple[torch.Tensor, torch.Tensor]:
    """``[layer, head, dest, src]`` patterns and the ``[pos, vocab]`` logits, by TransformerLens."""
    names = [f"blocks.{layer}.attn.hook_pattern" for layer in range(model.cfg.n_layers)]
    store: dict[str, torch.Tensor] = {}

    def keep(x: torch.Tensor, hook: Any) -> None:
        store[hook.name] = x.detach().clone()

    with torch.no_grad():
        logits = model.run_with_hooks(tokens, fwd_hooks=[*fwd_hooks, *((n, keep) for n in names)])
    return torch.stack([store[n][0] for n in names]).float(), logits[0].float()


def tl_ablation_hooks(model: Any, heads: list[list[int]], mode: str, tokens_other: torch.Tensor) -> list[Any]:
    hooks = []
    for layer in sorted({h[0] for h in heads}):
        hs = [h[1] for h in heads if h[0] == layer]
        name = f"blocks.{layer}.attn.hook_z"
        other = None
        if mode == "resample":
            with torch.no_grad():
                _, cache = model.run_with_cache(tokens_other, names_filter=name)
            other = cache[name]

        def hook(z: torch.Tensor, hook: Any, hs: list[int] = hs, other: Any = other) -> torch.Tensor:
            z = z.clone()
            for h in hs:
                z[:, :, h] = 0.0 if mode == "zero" else (z[:, :, h].mean(1, keepdim=True) if mode == "mean" else other[:, :, h])
            return z

        hooks.append((name, hook))
    return hooks


def per_token_loss(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits[:-1], tokens[0, 1:], reduction="none")


def check_attention(user: User, last_layer_reply: dict[str, Any] | None) -> int:
    w, model = user.widget, user.model
    tokens = model.to_tokens(CLEAN)
    patterns, _ = tl_patterns(model, tokens)
    checked = 0
    for name, want in head_scores(patterns, tokens[0]).items():
        assert_close(decode(w.scores[name]), want, f"head score {name}")
        assert_close(w.scores_tensors[name], want, f"head score {name} (Python)")
        checked += want.numel()
    thumbs = decode(w.thumbnails)
    want_thumbs = decode(w._thumbnails(patterns))  # the same pooling, of the fresh patterns
    assert (thumbs - want_thumbs).abs().max() <= 1, "thumbnails (uint8)"
    if w.selected:
        layer, head = w.selected["layer"], w.selected["head"]
        assert_close(decode(w.pattern), patterns[layer, head], f"pattern of L{layer}H{head}")
        checked += patterns[layer, head].numel()
    if last_layer_reply is not None:
        layer = last_layer_reply["layer"]
        assert_close(decode(last_layer_reply["patterns"]), patterns[layer], f"layer {layer} patterns (float16)", atol=1e-3)
    if w.ablation:
        heads, mode = w.ablation["heads"], w.ablation["mode"]
        hooks = tl_ablation_hooks(model, heads, mode, model.to_tokens(ABLATION_PROMPT))
        after_patterns, after = tl_patterns(model, tokens, tuple(hooks))
        _, before = tl_patterns(model, tokens)
        for side, logits in (("before", before), ("after", after)):
            shown = w.ablation[side]
            probs = logits[-1].softmax(-1)
            assert_close(decode(shown["probs"]), probs[shown["token_ids"]], f"ablation {side}: probabilities")
            assert_close(decode(shown["probs"]), probs.topk(len(shown["token_ids"])).values, f"ablation {side}: top-k")
            assert_close(decode(w.ablation[f"loss_{side}"]), per_token_loss(logits, tokens), f"ablation {side}: loss")
        change = 0.5 * (after_patterns - patterns).abs().sum(-1).mean(-1)
        for item in w.ablation["changed"]:
            assert abs(item["change"] - float(change[item["layer"], item["head"]])) <= TOL
        checked += 2 * (tokens.shape[1] - 1) + 20 + len(w.ablation["changed"])
    return checked


@pytest.mark.parametrize("seed", SEEDS)
def test_attention_widget_shows_the_models_numbers(restored: Callable[[str], Any], seed: int) -> None:
    model = restored("toy-lm")
    w = show_attention(model, CLEAN, ablation_prompt=ABLATION_PROMPT)
    user = User(model, w, seed, hooked_points(model), edited_params(model))
    rng = user.rng
    L, H = model.cfg.n_layers, model.cfg.n_heads
    layer_reply: dict[str, Any] = {"rid": None}
    checked = {"n": 0}

    def layer_patterns() -> None:
        layer_reply["rid"] = user.request("layer_patterns", layer=rng.randrange(L))

    def select_head() -> None:
        user.request("select_head", layer=rng.randrange(L), head=rng.randrange(H))

    def ablate() -> None:
        heads = [[rng.randrange(L), rng.randrange(H)] for _ in range(rng.randint(0, 3))]
        user.request("ablate", heads=heads, mode=rng.choice(["zero", "mean", "resample"]))

    actions: dict[str, tuple[float, Callable[[], None]]] = {
        "layer_patterns": (2, layer_patterns), "select_head": (2, select_head), "ablate": (3, ablate),
        "add_hook": (1.5, user.add_hook), "remove_hook": (1, user.remove_hook), "edit_weight": (1.5, user.edit_weight),
    }

    def layer_reply_now() -> dict[str, Any] | None:
        reply = user.reply(layer_reply["rid"]) if layer_reply["rid"] else None
        return None if reply is None else reply["result"]

    for _ in range(20):
        kind = pick(rng, {k: v[0] for k, v in actions.items()})
        actions[kind][1]()
        if kind in ("add_hook", "remove_hook", "edit_weight"):
            layer_reply["rid"] = None  # the page's copy of a layer is the old model's until it asks again
        user.check_hooks()
        if not user.changed:
            checked["n"] += check_attention(user, layer_reply_now())
    select_head()
    checked["n"] += check_attention(user, layer_reply_now())
    user.check_replies(allowed=())
    assert checked["n"] > 500, checked
    w.close()
    user.check_hooks()


# ------------------------------------------------------------------------------ features
def check_features(user: User, saes: dict[str, Any]) -> int:
    w, model = user.widget, user.model
    tokens = model.to_tokens(CLEAN)
    names = list(saes)
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens, names_filter=lambda n: n in names)
    top_idx, top_val = decode(w.top["indices"]).long(), decode(w.top["values"])
    n_active, total = decode(w.overview["n_active"]), decode(w.overview["total"])
    err_norm, act_norm = decode(w.recon["error_norm"]), decode(w.recon["act_norm"])
    acts = {}
    checked = 0
    for i, name in enumerate(w.hook_names):
        sae = saes[name]
        with torch.no_grad():
            x = cache[name][0]
            f = sae.encode(x).float()
            err = x.float() - sae.decode(sae.encode(x)).float()
        acts[i] = f
        k = top_idx.shape[-1]
        want_vals = f.topk(k, -1).values.clamp(min=0)
        assert_close(top_val[i], want_vals, f"{name}: top feature activations")
        on = top_idx[i] >= 0
        assert_close(top_val[i][on], f.gather(-1, top_idx[i].clamp(min=0))[on], f"{name}: top features' values")
        assert torch.equal(on, want_vals > 0)
        assert torch.equal(n_active[i], (f > 0).sum(-1).float()), f"{name}: features firing"
        assert_close(total[i], f.clamp(min=0).sum(-1), f"{name}: total activation")
        assert_close(err_norm[i], err.norm(dim=-1), f"{name}: error norm")
        assert_close(act_norm[i], x.float().norm(dim=-1), f"{name}: activation norm")
        checked += 2 * top_val[i].numel() + 4 * f.shape[0]
    if w.feature:
        i, feature = w.feature["sae"], w.feature["feature"]
        assert_close(decode(w.feature["activations"]), acts[i][:, feature], "the selected feature's activations")
        assert abs(w.feature["max_activation"] - float(acts[i][:, feature].max())) <= TOL
        checked += acts[i].shape[0] + 1
    if w.intervention:
        hooks = []
        for name in names:
            edits = [iv for iv in w.interventions if iv["hook_name"] == name]
            if not edits:
                continue

            def splice(x: torch.Tensor, hook: Any, sae: Any = saes[name], edits: list[Any] = edits) -> torch.Tensor:
                f = sae.encode(x)
                g = f.clone()
                for iv in edits:
                    where = slice(None) if iv["positions"] is None else iv["positions"]
                    g[..., where, iv["feature"]] = iv["value"] if iv["mode"] == "clamp" else 0.0
                return x + (sae.decode(g) - sae.decode(f))

            hooks.append((name, splice))
        with torch.no_grad():
            before = model(tokens)[0].float()
            after = model.run_with_hooks(tokens, fwd_hooks=hooks)[0].float()
        shown = w.intervention
        pos = shown["position"]
        for side, logits in (("before", before), ("after", after)):
            probs = logits[pos].softmax(-1)
            assert_close(decode(shown[side]["probs"]), probs[shown[side]["token_ids"]], f"intervention {side}: probabilities")
            assert_close(decode(shown[f"loss_{side}"]), per_token_loss(logits, tokens), f"intervention {side}: loss")
        assert abs(shown["max_logit_change"] - float((after[pos] - before[pos]).abs().max())) <= TOL
        checked += 2 * (tokens.shape[1] - 1) + 21
    return checked


@pytest.mark.parametrize("seed", SEEDS)
def test_features_widget_shows_the_models_numbers(restored: Callable[[str], Any], seed: int) -> None:
    model = restored("toy-lm")
    saes = zoo.load_saes("toy-lm")
    w = show_features(model, saes, CLEAN, link_prompts=[CLEAN, CORRUPTED])
    user = User(model, w, seed, hooked_points(model), edited_params(model))
    rng = user.rng
    n_pos, n_sae = len(w.tokens), len(w.hook_names)
    checked = {"n": 0}

    def some_feature(i: int) -> int:
        """A feature that fires on the prompt (as the page offers them), or any."""
        idx = decode(w.top["indices"]).long()[i].flatten()
        idx = idx[idx >= 0]
        return int(rng.choice(idx.tolist())) if len(idx) and rng.random() < 0.8 else rng.randrange(w.d_sae[i])

    def select_token() -> None:
        user.request("select_token", pos=rng.randrange(n_pos))

    def select_feature() -> None:
        i = rng.randrange(n_sae)
        user.request("select_feature", sae=i, feature=some_feature(i))

    def intervene() -> None:
        ivs = []
        for _ in range(rng.randint(0, 2)):
            i = rng.randrange(n_sae)
            mode = rng.choice(["ablate", "clamp"])
            positions = None if rng.random() < 0.5 else sorted(rng.sample(range(n_pos), 2))
            ivs.append({"sae": i, "feature": some_feature(i), "mode": mode,
                        "value": rng.choice([2.0, 5.0]) if mode == "clamp" else 0.0, "positions": positions})
        user.request("intervene", interventions=ivs)

    actions: dict[str, tuple[float, Callable[[], None]]] = {
        "select_token": (1, select_token), "select_feature": (3, select_feature), "intervene": (3, intervene),
        "add_hook": (1.5, user.add_hook), "remove_hook": (1, user.remove_hook), "edit_weight": (1.5, user.edit_weight),
    }
    for _ in range(20):
        kind = pick(rng, {k: v[0] for k, v in actions.items()})
        actions[kind][1]()
        user.check_hooks()
        if not user.changed:
            checked["n"] += check_features(user, saes)
    select_token()
    checked["n"] += check_features(user, saes)
    user.check_replies(allowed=())
    assert checked["n"] > 500, checked
    w.close()
    user.check_hooks()


# ------------------------------------------------------------------------------ circuit
class CircuitReference:
    """A fresh EdgePatcher's scores (EAP, EAP-IG, ACDC) on the model as it is, cached by its
    fingerprint; faithfulness of kept edges by hand-written TransformerLens hooks."""

    def __init__(self, model: Any) -> None:
        self.model, self.cache = model, {}  # type: ignore[var-annotated]

    def scores(self, method: str, threshold: float, signed: bool) -> torch.Tensor:
        from mechwidgets._steps import run_to_end
        from mechwidgets.analysis.circuits import IG_STEPS, EdgePatcher

        key = (model_fingerprint(self.model), method, threshold if method == "acdc" else None, signed)
        if key not in self.cache:
            patcher = EdgePatcher(self.model, CLEAN, CORRUPTED, answer=" Emma", wrong_answer=" Nora")
            if method == "acdc":
                result = run_to_end(patcher.acdc_steps(threshold, signed=signed))
            elif method == "eap-ig":
                result = patcher.result("eap-ig", patcher.eap_ig_scores(IG_STEPS))
            else:
                result = patcher.result("eap")
            self.cache[key] = result.scores
        return self.cache[key]


def hand_faithfulness(model: Any, graph: Any, kept: torch.Tensor) -> float:
    """The clean run with every edge not kept patched, by test_circuits's hand-written hooks
    (TransformerLens's per-head inputs and results, switched on for it and back off)."""
    from test_circuits import SETTINGS, hand_hooks_on, hand_patch

    before = {name: getattr(model.cfg, name) for name in SETTINGS}
    hand_hooks_on(model)
    try:
        removed = [graph.edge_name(e) for e in (~kept).nonzero()[:, 0].tolist()]
        return hand_patch(model, removed, clean_prompt=CLEAN, corrupted_prompt=CORRUPTED, answers=(" Emma", " Nora"))
    finally:
        for name, value in before.items():
            setattr(model.cfg, name, value)


def tl_node_output(model: Any, node: str, a: int, w: int) -> float:
    """The clean run with one node's output taken from the corrupted run, everywhere it is read."""
    clean, corrupted = model.to_tokens(CLEAN), model.to_tokens(CORRUPTED)
    if node == "embed":
        return tl_logit_diff(model, corrupted, a, w)
    if node.startswith("a"):
        layer, head = (int(v) for v in node[1:].split(".h"))
        name, index = f"blocks.{layer}.attn.hook_z", (slice(None), slice(None), slice(head, head + 1))
    else:
        name, index = f"blocks.{int(node[1:])}.hook_mlp_out", (slice(None), slice(None), slice(None))
    with torch.no_grad():
        _, cache = model.run_with_cache(corrupted, names_filter=name)

        def patch(x: torch.Tensor, hook: Any) -> torch.Tensor:
            x = x.clone()
            x[index] = cache[name][index]
            return x

        logits = model.run_with_hooks(clean, fwd_hooks=[(name, patch)])[0, -1]
    return float(logits[a] - logits[w])


def last_succeeded(user: User, kinds: dict[str, Callable[[dict[str, Any]], Any]]) -> Any:
    """What the last request (in the order they were made) of ``kinds`` that succeeded asked
    for, as ``kinds[kind](reply["result"])`` says; None if none did."""
    found = None
    for rid, kind in user.kinds.items():
        reply = user.reply(rid)
        if kind in kinds and reply is not None and "result" in reply:
            found = kinds[kind](reply["result"])
    return found


def check_circuit(user: User, ref: CircuitReference) -> int:
    w, model = user.widget, user.model
    asked = last_succeeded(user, {"eap": lambda r: r["method"], "acdc": lambda r: "acdc"})
    assert w.method == (asked or "eap"), "the method on screen is not the last one asked for"
    a, wr = model.to_single_token(" Emma"), model.to_single_token(" Nora")
    clean, corrupted = tl_logit_diff(model, model.to_tokens(CLEAN), a, wr), tl_logit_diff(model, model.to_tokens(CORRUPTED), a, wr)
    assert abs(w.baseline["clean"] - clean) <= TOL and abs(w.baseline["corrupted"] - corrupted) <= TOL
    result = w.result
    assert w.method == result.method
    want = ref.scores(result.method, w.acdc_threshold, w.acdc_signed)
    if result.method == "acdc":
        assert torch.equal(result.circuit(w.acdc_threshold), want.abs() >= w.acdc_threshold), "ACDC's kept edges"
    assert_close(result.scores, want, f"{result.method} scores")
    order = result.order()[: len(decode(w.edges["score"]))]
    assert_close(decode(w.edges["score"]), want[order], f"{result.method} scores sent")
    kept = result.circuit(w.threshold)
    faith = w.faithfulness
    assert faith["threshold"] == w.threshold and faith["n_edges"] == int(kept.sum())
    if TL3:
        assert abs(faith["metric"] - hand_faithfulness(model, result.graph, kept)) <= TOL, "faithfulness"
    if faith["n_edges"] == faith["total_edges"]:
        assert abs(faith["metric"] - clean) <= TOL
    if faith["n_edges"] == 0:
        assert abs(faith["metric"] - corrupted) <= TOL
    assert abs(faith["normalized"] - (faith["metric"] - corrupted) / (clean - corrupted)) <= TOL
    checked = 2 * want.numel() + 4
    if w.node_detail and w.node_detail["output"] is not None:
        node = w.node_detail["node"]
        assert abs(w.node_detail["output"]["metric"] - tl_node_output(model, node, a, wr)) <= TOL, f"{node}'s output patched"
        for item in w.node_detail["incoming"] + w.node_detail["outgoing"]:
            e = result.graph.edge_index(item["edge"])
            assert abs(item["score"] - float(want[e])) <= TOL and item["in_circuit"] == bool(kept[e])
        checked += 1 + len(w.node_detail["incoming"]) + len(w.node_detail["outgoing"])
    return checked


@pytest.mark.parametrize("seed", SEEDS if TL3 else SEEDS[:1])  # a bridge's runs are slower: one seed there
def test_circuit_widget_shows_the_models_numbers(restored: Callable[[str], Any], seed: int) -> None:
    model = restored("toy-lm")
    w = show_circuit(model, CLEAN, CORRUPTED, answer=" Emma", wrong_answer=" Nora")
    user = User(model, w, seed, hooked_points(model), edited_params(model))
    rng, ref = user.rng, CircuitReference(model)
    nodes = [n.name for n in w.patcher.graph.nodes if n.name != "logits"]
    checked = {"n": 0, "full": 0, "raced": 0}

    def faithfulness() -> None:
        top = float(w.result.scores.abs().max())
        user.request("faithfulness", threshold=rng.choice([0.0, rng.uniform(0, top), 2 * top]))

    def select_node() -> None:
        user.request("select_node", node=rng.choice(nodes))

    def acdc() -> None:
        user.request("acdc", threshold=rng.choice([0.23, 0.5]), signed=rng.random() < 0.3)

    def eap() -> None:
        checked["raced"] += "acdc" in w._jobs
        user.request("eap", ig=rng.random() < 0.4)

    actions: dict[str, tuple[float, Callable[[], None]]] = {
        "faithfulness": (3, faithfulness), "select_node": (3, select_node), "acdc": (1.5, acdc), "eap": (2, eap),
        "add_hook": (1.5, user.add_hook), "remove_hook": (1, user.remove_hook), "edit_weight": (1.5, user.edit_weight),
    }

    async def scenario() -> None:
        for _ in range(22):
            await user.act(actions, step=3, drain=1)
            if not user.changed and not w._jobs:
                checked["full"] += 1
                checked["n"] += check_circuit(user, ref)
        if not checked["raced"]:  # EAP asked for while ACDC runs, at least once
            await user.drain()
            acdc()
            await asyncio.sleep(0)
            eap()
            await user.drain()
            checked["n"] += check_circuit(user, ref)
        select_node()  # a last click
        await user.drain()
        user.check_hooks()
        checked["n"] += check_circuit(user, ref)
        user.check_replies()

    run(scenario)
    # EAP asked for while ACDC ran, at least once
    assert checked["full"] >= 5 and checked["n"] > 2000 and checked["raced"] >= 1, checked
    w.close()
    user.check_hooks()


@pytest.mark.parametrize("then", ["finish", "cancel"])
def test_an_acdc_that_starts_on_a_changed_model_leaves_no_old_number(restored: Callable[[str], Any], then: str) -> None:
    """What the property test found: ACDC requested, a weight edited before the loop's first
    turn. ACDC's first step refreshed the patcher (and its stamp) on the new model, so the
    widget's baseline kept the old model's (off by 9.4) and, with ACDC cancelled, the next click
    saw nothing stale and left the old EAP scores on screen."""
    model = restored("toy-lm")
    w = show_circuit(model, CLEAN, CORRUPTED, answer=" Emma", wrong_answer=" Nora")
    user = User(model, w, 0, hooked_points(model), edited_params(model))
    ref = CircuitReference(model)

    async def scenario() -> None:
        rid = user.request("acdc", threshold=0.5)
        user.edit_weight()  # before the job's first step
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        assert "acdc" in w._jobs and w._jobs["acdc"].steps >= 1
        if then == "cancel":
            w._on_frontend_message(w, {"type": "cancel", "kind": "acdc", "id": rid}, [])
            user.request("faithfulness", threshold=w.threshold)  # the next click
        await user.drain()

    run(scenario)
    check_circuit(user, ref)
    assert w.method == ("acdc" if then == "finish" else "eap")
    user.check_hooks()


# ------------------------------------------------------------------------------ scrubbing
def tl_loss(model: Any, tokens: torch.Tensor, positions: list[int]) -> float:
    """Mean next-token cross-entropy at ``positions`` over the dataset, by TransformerLens."""
    with torch.no_grad():
        logits = model(tokens)
    pos = torch.tensor(positions)
    return float(F.cross_entropy(logits[:, pos].flatten(0, 1).float(), tokens[:, pos + 1].flatten()))


def check_scrubbing(user: User, data: Any, n_seeds: int, cache: dict[Any, Any]) -> int:
    """The loss recovered on screen against a fresh Scrubber's (cached by the model's
    fingerprint and the hypothesis), the clean loss against TransformerLens's forward."""
    from mechwidgets.analysis.scrubbing import Scrubber

    w, model = user.widget, user.model
    key = (model_fingerprint(model), repr(w.tree))
    if key not in cache:
        cache[key] = Scrubber(model, data, n_seeds=n_seeds, min_agreeing=1).evaluate(w.hypothesis)
    fresh = cache[key]
    shown = w.result
    assert abs(shown["clean"] - tl_loss(model, w.scrubber.tokens, w.dataset["positions"])) <= TOL, "clean loss"
    for name in ("clean", "random", "scrubbed", "fraction", "fraction_std"):
        assert abs(shown[name] - getattr(fresh, name)) <= TOL, name
    per_seed = torch.stack([fresh.random_per_seed, fresh.scrubbed_per_seed, fresh.fraction_per_seed])
    assert_close(decode(shown["per_seed"]), per_seed, "per seed")
    asked = last_succeeded(user, {"evaluate": lambda r: r["step"], "restore": lambda r: r["step"]})
    assert shown["step"] == (asked or 1), "the step on screen is not the last one asked for"
    entry = w.history[shown["step"] - 1]
    for name in ("clean", "random", "scrubbed", "fraction"):
        assert abs(entry[name] - getattr(fresh, name)) <= TOL, f"history: {name}"
    assert entry["nodes"] == {r["path"]: {"kept": r["kept"], "feature": r["feature"]} for r in w.tree}
    return 5 + per_seed.numel() + 4


REFUSED = "cannot honour hooks"


@pytest.mark.parametrize("seed", SEEDS)
def test_scrubbing_widget_shows_the_models_numbers(restored: Callable[[str], Any], seed: int) -> None:
    from mechwidgets.analysis.scrubbing import induction_heads, induction_hypothesis
    from mechwidgets.widgets.scrubbing import show_scrubbing

    model = restored("induction-2l")
    data = zoo.tasks.induction_sequences(32, length=12, seed=1, model="induction-2l")
    prev, ind = induction_heads(model)
    n_seeds = 3
    w = show_scrubbing(model, induction_hypothesis(prev, ind, refined=False), data, n_seeds=n_seeds, min_agreeing=1)
    user = User(model, w, seed, hooked_points(model), edited_params(model), max_turns=2)
    rng = user.rng
    checked = {"n": 0, "full": 0, "refused": 0, "raced": 0}
    cache: dict[Any, Any] = {}
    last: dict[str, Any] = {"rid": None}

    def evaluate() -> None:
        row = rng.choice(w.tree[1:])
        state: dict[str, Any] = {"kept": not row["kept"]} if rng.random() < 0.7 else {
            "feature": rng.choice([f["name"] for f in w.features])}
        last["rid"] = user.request("evaluate", nodes={row["path"]: state})

    def restore() -> None:
        checked["raced"] += "evaluate" in w._jobs
        last["rid"] = user.request("restore", step=rng.randint(1, len(w.history)))

    actions: dict[str, tuple[float, Callable[[], None]]] = {
        "evaluate": (3, evaluate), "restore": (2, restore),
        "add_hook": (1, user.add_hook), "remove_hook": (1.5, user.remove_hook), "edit_weight": (1.5, user.edit_weight),
    }

    def check() -> None:
        reply = user.reply(last["rid"]) if last["rid"] else None
        if user.user_hooks and reply is not None and "error" in reply and not reply.get("cancelled"):
            # scrubbing rebuilds every node with the model's own arithmetic: it refuses, and says so
            assert REFUSED in reply["error"] and w.error == reply["error"]
            checked["refused"] += 1
            return
        if w.error:  # stopped by a model changed under it (the next click recomputes)
            assert "model changed while scrubbing was running" in w.error
            return
        if not user.user_hooks:
            checked["full"] += 1
            checked["n"] += check_scrubbing(user, data, n_seeds, cache)

    async def scenario() -> None:
        for _ in range(18):
            await user.act(actions, step=3, drain=1.5)
            if not user.changed and not w._jobs:
                check()
        if not checked["raced"]:  # a history step restored while an evaluation runs, at least once
            await user.drain()
            while user.user_hooks:
                user.remove_hook()
            evaluate()
            await asyncio.sleep(0)
            restore()
            await user.drain()
            check()
        if not user.user_hooks:
            user.add_hook()
        evaluate()  # refused on a hooked model
        await user.drain()
        check()
        while user.user_hooks:
            user.remove_hook()
        restore()  # a last click
        await user.drain()
        user.check_hooks()
        check()
        user.check_replies(allowed=("model changed while", REFUSED))

    run(scenario)
    # a history step restored while an evaluation ran, at least once
    assert checked["full"] >= 3 and checked["refused"] >= 1 and checked["raced"] >= 1, checked
    w.close()
    user.check_hooks()
