"""A cheap fingerprint of a model as it is now: what a cache must match to be reused.

Every cached run (records, baselines, grids, traces) is computed on the model as it
was at that moment. :func:`model_fingerprint` captures that moment; two fingerprints compare with
``==``, and a cache whose fingerprint no longer equals the model's is recomputed rather than
mixed with fresh numbers. A long job compares between its steps (:func:`check_unchanged`; at most
:data:`JOB_BUDGET` of its time) and in full before it writes a result, stopping with
:class:`~mechwidgets.errors.ModelChangedError`.

What it covers (each measured in ``tests/test_stale.py``):

- **every parameter and buffer**: the tensor object (``id``), its autograd version counter
  (``_version``: bumped by any in-place edit through the parameter itself, e.g. ``with
  torch.no_grad(): p.zero_()``, ``p.detach().mul_(2)``, and by ``model.load_state_dict``, which
  copies in place), its storage address (``data_ptr()``: ``p.data = other``, ``model.to(...)``),
  dtype, device and shape; a replaced submodule brings new tensor objects;
- **in-place edits through ``p.data``** (``p.data.zero_()``, ``p.data[i] = x``,
  ``p.data.copy_(w)``): ``p.data`` is a new tensor with a version counter of its own, so the
  parameter's ``_version`` does not move (measured: ``p._version`` and ``p.data._version`` both
  unchanged). They are caught by the content: each parameter's sum (float32; compared bitwise,
  so NaN weights still equal themselves). This is the only part that reads the weights, one
  pass over them: ~0.25-0.75 ms of the fingerprint's 0.5-1.1 ms on ``toy-lm``, ~72 of 74 ms at
  GPT-2-small shape (163M float32 parameters), one CPU thread on a busy machine
  (``python -m benchmarks.run fingerprint``). Buffers are compared by version and address only: they are not edited through
  ``.data`` in practice, and TransformerLens's masks are large;
- **hooks**: every module's torch hooks (forward, forward-pre, backward, backward-pre; every
  TransformerLens hook point is a module) and TransformerLens's own ``fwd_hooks``/``bwd_hooks``
  lists, by handle id and function id, and torch's global module hooks. A hook added and removed
  leaves the fingerprint as it was; a hook replaced by another is a change.

What it does not cover, on purpose or because no cheap check sees it:

- train/eval mode and grad mode: every analysis runs the model in eval mode with its own grad
  mode (and restores the user's), so they cannot change a number shown;
- an in-place ``.data`` edit that keeps every parameter's float32 sum bit for bit the same (a
  permutation of a tensor's entries, or a change below float32 rounding of the sum), and an
  in-place ``.data`` edit of a *buffer*;
- ``model.cfg`` edited by hand and monkey-patched ``forward`` methods (neither is a parameter,
  buffer or hook).
"""

from __future__ import annotations

import copy
import time
import weakref
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.nn.modules import module as _torch_module

from .errors import ModelChangedError

_HOOK_DICTS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")
_GLOBAL_HOOK_DICTS = (
    "_global_forward_hooks", "_global_forward_pre_hooks", "_global_backward_hooks",
    "_global_backward_pre_hooks",
)


@dataclass(frozen=True, eq=False)
class Fingerprint:
    """What a model's computation depends on, at one moment; compare two with ``==``.

    Attributes:
        tensors: per module (depth first, as ``modules()``) and per parameter / buffer:
            ``(module index, attribute name, id, _version, data_ptr, dtype, device, shape)``.
        content: every parameter's sum as float32 bytes (catches edits through ``p.data``).
        hooks: ``(module index, hook kind, handle ids and function ids)`` for every module with
            hooks, then torch's global module hooks.
        types: every module's class, in the same order (a module replaced by another kind).
        modules / roots: weak references to the modules and the roots (not compared; they keep
            nothing alive), to name a difference in words.
    """

    tensors: tuple[tuple[Any, ...], ...]
    content: bytes
    hooks: tuple[tuple[Any, ...], ...]
    types: tuple[type, ...]
    modules: tuple[weakref.ref[Any], ...] = field(repr=False)
    roots: tuple[weakref.ref[Any], ...] = field(repr=False)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Fingerprint):
            return NotImplemented
        return (self.tensors == other.tensors and self.content == other.content and self.hooks == other.hooks
                and self.types == other.types)

    def __hash__(self) -> int:
        return hash((self.tensors, self.content, self.hooks, self.types))

    def difference(self, other: Fingerprint) -> str:
        """What changed from ``self`` to ``other``, in words (for error and status messages)."""
        if self == other:
            return "nothing"
        if self.hooks != other.hooks:
            return "hooks were added or removed"
        if len(self.tensors) != len(other.tensors) or self.types != other.types:
            return "modules, parameters or buffers were replaced"
        for a, b in zip(self.tensors, other.tensors, strict=True):
            if a != b:
                return f"{self._name(a)} changed ({_how(a, b)})"
        mine = torch.frombuffer(bytearray(self.content), dtype=torch.int32)
        theirs = torch.frombuffer(bytearray(other.content), dtype=torch.int32)
        params = [t for t in self.tensors if t[1] == "param"]
        if len(mine) == len(theirs) == len(params):
            edited = (mine != theirs).nonzero().flatten().tolist()
            if edited:
                return f"the weights of {self._name(params[edited[0]])} were edited in place"
        return "weights were edited in place"

    def _name(self, entry: tuple[Any, ...]) -> str:
        module = self.modules[entry[0]]()
        for r, ref in enumerate(self.roots):
            root = ref()
            if root is None or module is None:
                continue
            for name, mod in root.named_modules(remove_duplicate=False):
                if mod is module:
                    name = f"[{r}].{name}" if r and name else (f"[{r}]" if r else name)
                    return f"{name}.{entry[2]}" if name else str(entry[2])
        return str(entry[2])


def _how(a: tuple[Any, ...], b: tuple[Any, ...]) -> str:
    if a[3] != b[3]:
        return "a new tensor"
    if a[4] != b[4]:
        return "edited in place"
    if a[5] != b[5]:
        return "new storage"
    return f"{a[6]} -> {b[6]}, {a[7]} -> {b[7]}"


def model_fingerprint(model: Any, *others: Any) -> Fingerprint:
    """The fingerprint of ``model`` (and of ``others``: SAEs or other modules a cache also
    depends on) as they are now; objects that are not ``torch.nn.Module`` are ignored.

    Cost (``python -m benchmarks.run fingerprint``, one CPU thread): 0.5-1.1 ms on the zoo's
    ``toy-lm`` (124 modules, 70 parameters, 1.1M weights; the higher figure on a loaded machine),
    of which 0.35 ms without the pass over the weights; 74 ms at GPT-2-small shape (9% of one
    forward pass). A ``TransformerBridge`` (248 modules) costs 2-3 ms.
    """
    tensors: list[tuple[Any, ...]] = []
    hooks: list[tuple[Any, ...]] = []
    modules: list[Any] = []
    params: list[torch.Tensor] = []
    # an nnsight model wraps its torch module (``_module``): the module is the state
    unwrapped = (getattr(r, "_module", r) if type(r).__module__.split(".")[0] == "nnsight" else r
                 for r in (model, *others))
    roots = [r for r in unwrapped if isinstance(r, torch.nn.Module)]
    # depth first, children in registration order (as modules(), without its generators)
    stack = roots[::-1]
    seen: set[int] = set()  # a module reachable twice (a TransformerBridge's wrapped HF modules)
    while stack:
        mod = stack.pop()
        if id(mod) in seen:
            continue
        seen.add(id(mod))
        i = len(modules)
        modules.append(mod)
        d = mod.__dict__
        for attr, p in d["_parameters"].items():
            if p is not None:
                tensors.append((i, "param", attr, id(p), p._version, p.data_ptr(), p.dtype, p.device, p.shape))
                params.append(p)
        for attr, b in d["_buffers"].items():
            if b is not None:
                tensors.append((i, "buffer", attr, id(b), b._version, b.data_ptr(), b.dtype, b.device, b.shape))
        for kind in _HOOK_DICTS:
            h = d.get(kind)
            if h:
                hooks.append((i, kind, tuple((k, id(f)) for k, f in h.items())))
        for kind in ("fwd_hooks", "bwd_hooks"):  # TransformerLens HookPoint's own lists
            lens = d.get(kind)
            if lens:
                hooks.append((i, kind, tuple(id(x) for x in lens)))
        children = d["_modules"]
        if children:
            stack.extend(c for c in reversed(children.values()) if c is not None)
    for kind in _GLOBAL_HOOK_DICTS:
        h = getattr(_torch_module, kind, None)
        if h:
            hooks.append((-1, kind, tuple((k, id(f)) for k, f in h.items())))
    return Fingerprint(tuple(tensors), _content(params), tuple(hooks), tuple(type(m) for m in modules),
                       tuple(weakref.ref(m) for m in modules), tuple(weakref.ref(r) for r in roots))


def _content(params: list[torch.Tensor]) -> bytes:
    """Every parameter's sum as float32, as bytes (so that NaN equals NaN, bit for bit)."""
    if not params:
        return b""
    f32 = torch.float32
    with torch.no_grad():
        sums = [p.sum() if p.dtype == f32 else p.sum(dtype=f32) for p in params]
        devices = {s.device for s in sums}
        if len(devices) > 1:  # a model split over devices: one transfer per device
            sums = [s.cpu() for s in sums]
        return torch.stack(sums).cpu().numpy().tobytes()


#: The share of a long job's time its checks between steps may take (see :meth:`Stamp.stale`).
JOB_BUDGET = 0.05


class Stamp:
    """The fingerprint of the model (and other modules) a cache was computed on.

    ``stamp.stale()`` is ``None`` while the model is as it was, else what changed (words);
    ``stamp.renew()`` takes a new fingerprint (after recomputing). ``stamp.stale(budget=b)``
    (a long job's check between two steps) skips the check when the last one was so recent that
    checking again would take more than the share ``b`` of the time since: on a fast job the
    change is then seen a few steps later (milliseconds), and a job checks once more in full
    before it writes any result.
    """

    def __init__(self, model: Any, *others: Any) -> None:
        self._roots = (model, *others)
        self.renew()

    def renew(self) -> None:
        self.fingerprint = self._take()

    def fork(self) -> Stamp:
        """A stamp of its own with this one's fingerprint: a job's, which a later :meth:`renew`
        of this one (a click recomputing the caches while the job runs) does not move."""
        return copy.copy(self)

    def _take(self) -> Fingerprint:
        t0 = time.perf_counter()
        fingerprint = model_fingerprint(*self._roots)
        self._checked_at = time.perf_counter()
        self._cost = self._checked_at - t0
        return fingerprint

    def stale(self, *, budget: float | None = None) -> str | None:
        if budget is not None and time.perf_counter() - self._checked_at < self._cost / budget:
            return None
        now = self._take()
        return None if now == self.fingerprint else self.fingerprint.difference(now)


def check_unchanged(stamp: Stamp, what: str, *, budget: float | None = None) -> None:
    """Raise :class:`ModelChangedError` if the model changed since ``stamp`` was taken; ``what``
    names the work that stops (e.g. ``"ACDC"``). ``budget``: see :meth:`Stamp.stale` (a job
    checks each step with a budget and once in full before it writes its result)."""
    change = stamp.stale(budget=budget)
    if change is not None:
        raise ModelChangedError(
            f"the model changed while {what} was running ({change}), so it stopped: its results so "
            f"far would mix the old model's numbers with the new one's. Nothing is left hooked; "
            f"the next click (or call) recomputes on the model as it is now."
        )


__all__ = ["Fingerprint", "Stamp", "check_unchanged", "model_fingerprint"]
