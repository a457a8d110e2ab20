"""How the activation-patching grids are computed, exactly: which cells to run and which are
no-ops, the generic engine (one hooked forward per patch, batched per layer) and the fast one
(batched patched runs that start at the patched layer and position, see the package docstring
:mod:`mechwidgets.analysis.patching`), and :func:`activation_patch`, which uses them."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import torch

from ..._args import is_int
from ..._model import ModelHandle
from ...errors import ComponentError
from ..metrics import Metric
from .setup import Component, PatchingResult, PatchOptions, Prompt, prepare

if TYPE_CHECKING:
    from typing_extensions import Unpack


# ---------------------------------------------------------------------------- cells
def grid_shape(handle: ModelHandle, comp: Component, n_pos: int) -> tuple[int, ...]:
    n_heads = handle.n_kv_heads if comp.hook in ("k", "v") else handle.n_heads
    sizes = {"layer": handle.n_layers, "head": n_heads, "pos": n_pos}
    return tuple(sizes[a] for a in comp.axes)


def cell_index(comp: Component, head: int, pos: int) -> tuple[Any, ...]:
    """Where a cell sits in one run's activation at its hook (batch axis dropped)."""
    if comp.hook == "pattern":  # [head, dest, src]
        return (head, pos) if comp.by_pos else (head,)
    if comp.per_head:  # [pos, head, d_head]
        return (pos, head) if comp.by_pos else (slice(None), head)
    return (pos,)  # [pos, d_model]


@dataclass
class _Cell:
    flat: int  # index into values.flatten()
    layer: int
    index: tuple[Any, ...]  # into the activation at this layer's hook (no batch axis)
    pos: int  # first position whose residual the patch can change


#: Components whose patch, within its block, changes only the residual at the patched positions
#: (unlike resid_pre, keys and values, which later positions attend to).
POSITION_LOCAL = ("resid_mid", "attn_out", "mlp_out", "z", "q", "pattern")


def cells_to_run(
    comp: Component,
    shape: tuple[int, ...],
    base: dict[str, torch.Tensor],
    source: dict[str, torch.Tensor],
    names: list[str],
) -> tuple[list[_Cell], list[int], list[int]]:
    """Split the grid into cells to compute, no-ops (value = baseline) and, for residual-stream
    patches that turn the run being patched into the other run, full restores (value = target).

    A patch is a no-op where the two runs' activations are equal there, and in the last block
    where it only changes positions other than the last (the only one the metric reads)."""
    n_layers = shape[0]
    last = base[names[0]].shape[2 if comp.hook == "pattern" else 1] - 1
    todo, noop, restore = [], [], []
    for flat, idx in enumerate(itertools.product(*map(range, shape))):
        layer = idx[0]
        head = idx[1] if comp.per_head else 0
        pos = idx[-1] if comp.by_pos else 0
        index = cell_index(comp, head, pos)
        b, s = base[names[layer]][0], source[names[layer]][0]
        if torch.equal(b[index], s[index]):
            noop.append(flat)
            continue
        if comp.hook in ("resid_pre", "resid_mid"):
            same = (b == s).all(-1)
            same[pos] = True
            if bool(same.all()):
                restore.append(flat)
                continue
        if not comp.by_pos:  # first position where the patched slice differs
            changed = (b[index] != s[index]).flatten(1).any(1)
            pos = int(changed.nonzero()[0, 0])
        if layer == n_layers - 1 and comp.hook in POSITION_LOCAL:
            if (pos != last) if comp.by_pos else not bool(changed[last]):
                noop.append(flat)
                continue
        todo.append(_Cell(flat, layer, index, pos))
    return todo, noop, restore


def patch_hook(cells: Sequence[_Cell], source_act: torch.Tensor) -> Any:
    """A forward hook that patches, in batch row ``i``, ``cells[i]``'s slice from ``source_act``.

    It writes in place (no autograd runs here): where a hook sees a view, e.g. a
    TransformerBridge's ``hook_resid_mid``, which is the MLP norm's input, the write reaches the
    tensor the rest of the model reads too, as in a HookedTransformer."""

    def hook(act: torch.Tensor, hook: Any) -> torch.Tensor:
        for row, cell in enumerate(cells):
            target, origin = (row, *cell.index), (0, *cell.index)
            act[target] = source_act[origin]
        return act

    return hook


def chunks(items: list[Any], size: int) -> list[list[Any]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


# ---------------------------------------------------------------------------- engines
def names_needed(handle: ModelHandle, comp: Component, fast: bool) -> tuple[list[str], list[str]]:
    """Hook names to cache on the run being patched (base) and on the other run (source)."""
    layers = range(handle.n_layers)
    source = [handle.hook_name(comp.hook, layer) for layer in layers]
    base = [*source, *(handle.hook_name("resid_pre", layer) for layer in layers)]
    if fast:
        kinds = ["resid_post", "k", "v"]
        if comp.hook in ("resid_mid", "attn_out", "mlp_out", "z"):
            kinds += ["attn_out"]
            if not handle.cfg.attn_only:
                kinds += ["mlp_out"] + ([] if handle.cfg.parallel_attn_mlp else ["resid_mid"])
        base += [handle.hook_name(kind, layer) for kind in kinds for layer in layers]
    return sorted(set(base)), source


def run_generic(
    handle: ModelHandle,
    comp: Component,
    cells: list[_Cell],
    base_tokens: torch.Tensor,
    base: dict[str, torch.Tensor],
    source: dict[str, torch.Tensor],
    metric: Metric,
    max_batch: int,
) -> dict[int, torch.Tensor]:
    """Each patch as a hooked forward pass, batched per layer (starting at the layer if the model
    can): the reference engine, used where the fast one is not supported."""
    out: dict[int, torch.Tensor] = {}
    for layer in range(handle.n_layers):
        name = handle.hook_name(comp.hook, layer)
        resid = base[handle.hook_name("resid_pre", layer)]
        for chunk in chunks([c for c in cells if c.layer == layer], max_batch):
            hook = patch_hook(chunk, source[name])
            x = resid.repeat(len(chunk), 1, 1)  # a copy: hooks write in place
            logits = handle.run_patched(
                base_tokens, x, layer, fwd_hooks=[(name, hook)], columns=metric.columns
            )
            for cell, value in zip(chunk, metric(logits), strict=True):
                out[cell.flat] = value
    return out


@dataclass
class _Entry:
    """A patched run, from the first block it has to go through: ``rows`` is the residual
    entering block ``layer`` (``n_layers``: after the last block) at positions ``pos..``."""

    flat: int
    pos: int
    layer: int
    rows: torch.Tensor  # [n_pos - pos, d_model]


def entries_for_layer(
    handle: ModelHandle,
    runner: Any,
    comp: Component,
    layer: int,
    cells: list[_Cell],
    base: dict[str, torch.Tensor],
    source: dict[str, torch.Tensor],
) -> list[_Entry]:
    """The residual stream after each patch, at the first block the patch has not yet been
    through (see the package docstring for why each step is exact)."""
    cfg = handle.cfg
    n_pos = base[handle.hook_name("resid_pre", 0)].shape[1]

    def act(kind: str, layer: int = layer, cache: dict[str, torch.Tensor] = base) -> torch.Tensor:
        return cache[handle.hook_name(kind, layer)][0]

    def after_attention(positions: Any, attn_out: torch.Tensor) -> torch.Tensor:
        """resid_post at ``positions`` given a (patched) attention output there."""
        resid_pre = act("resid_pre")[positions]
        if cfg.attn_only:
            return resid_pre + attn_out
        if cfg.parallel_attn_mlp:
            return resid_pre + attn_out + act("mlp_out")[positions]
        return runner(layer, resid_pre + attn_out, mid=True)

    def spliced(row: torch.Tensor, cell: _Cell) -> torch.Tensor:
        """The base run's resid_post from the cell's position on, the first position replaced."""
        rows = act("resid_post")[cell.pos :].clone()
        rows[0] = row
        return rows

    if comp.hook == "resid_pre":
        entries = []
        for cell in cells:
            rows = act("resid_pre")[cell.pos :].clone()
            rows[0] = act("resid_pre", cache=source)[cell.pos]
            entries.append(_Entry(cell.flat, cell.pos, layer, rows))
        return entries
    if comp.hook in ("resid_mid", "attn_out", "mlp_out") or (comp.hook == "z" and comp.by_pos):
        # Within this block only the residual at the cell's position changes: one row each.
        p = torch.tensor([c.pos for c in cells])
        if comp.hook == "resid_mid":
            post = runner(layer, act("resid_mid", cache=source)[p], mid=True)
        elif comp.hook == "mlp_out":
            before_mlp = (
                act("resid_pre")[p] + act("attn_out")[p]
                if cfg.parallel_attn_mlp
                else act("resid_mid")[p]
            )
            post = before_mlp + act("mlp_out", cache=source)[p]
        elif comp.hook == "attn_out":
            post = after_attention(p, act("attn_out", cache=source)[p])
        else:  # z at one position of one head
            z = act("z")[p].clone()  # [cells, head, d_head]
            for row, cell in enumerate(cells):
                z[row, cell.index[1]] = act("z", cache=source)[cell.index]
            post = after_attention(p, handle.attn_out_from_z(layer, z[:, None])[:, 0])
        return [_Entry(c.flat, c.pos, layer + 1, spliced(post[i], c)) for i, c in enumerate(cells)]
    if comp.hook == "z":  # one head at all positions: attn_out from z, no attention recomputed
        # (after the last block only the last position is read)
        start = min(c.pos for c in cells) if layer < handle.n_layers - 1 else n_pos - 1
        z = act("z")[start:].repeat(len(cells), 1, 1, 1)
        for row, cell in enumerate(cells):
            z[row, :, cell.index[1]] = act("z", cache=source)[start:, cell.index[1]]
        post = after_attention(slice(start, None), handle.attn_out_from_z(layer, z))
        firsts = [max(c.pos, start) for c in cells]
        return [
            _Entry(c.flat, q, layer + 1, post[i, q - start :])
            for i, (c, q) in enumerate(zip(cells, firsts, strict=True))
        ]
    # q, k, v, pattern: run this block with a patching hook, then continue from the next block.
    name = handle.hook_name(comp.hook, layer)
    x = act("resid_pre").expand(len(cells), -1, -1)
    hook = patch_hook(cells, source[name])
    out = handle.run_layers(x, layer, layer + 1, fwd_hooks=[(name, hook)])
    return [_Entry(c.flat, c.pos, layer + 1, out[i, c.pos :]) for i, c in enumerate(cells)]


#: Per-block-call overhead of a batch, in token rows: reading a block's weights and launching its
#: operations costs about as much as computing this many more rows (measured on CPU).
CALL_COST_ROWS = 24.0


def batches(entries: list[_Entry], n_layers: int, n_pos: int) -> list[tuple[int, list[_Entry]]]:
    """Group entries into batches that compute the same positions, ``pos..``.

    Entries starting at the same position share a batch. Neighbouring batches are merged (the
    later entries then also compute a few positions that their patch leaves unchanged) where that
    saves more per-call overhead than the extra positions cost: small batches near the end of the
    prompt."""

    def cost(pos: int, first_layer: int, row_layers: int) -> float:
        return (n_layers - first_layer) * CALL_COST_ROWS + row_layers * (n_pos - pos)

    by_pos: dict[int, list[_Entry]] = {}
    for entry in entries:
        by_pos.setdefault(entry.pos, []).append(entry)
    merged: list[tuple[int, list[_Entry], int, int]] = []  # pos, entries, first layer, row-layers
    for pos, group in sorted(by_pos.items(), reverse=True):  # shortest suffixes first
        first = min(e.layer for e in group)
        row_layers = sum(max(0, n_layers - e.layer) for e in group)
        if merged:
            last_pos, last, last_first, last_rows = merged[-1]
            both_first, both_rows = min(first, last_first), row_layers + last_rows
            if cost(pos, both_first, both_rows) <= cost(last_pos, last_first, last_rows) + cost(
                pos, first, row_layers
            ):
                merged[-1] = (pos, last + group, both_first, both_rows)
                continue
        merged.append((pos, group, first, row_layers))
    return [(pos, group) for pos, group, _, _ in reversed(merged)]


def run_fast(
    handle: ModelHandle,
    comp: Component,
    cells: list[_Cell],
    base: dict[str, torch.Tensor],
    source: dict[str, torch.Tensor],
    metric: Metric,
    max_batch: int,
) -> dict[int, torch.Tensor]:
    """Batched patched runs that start at the patched layer and position (package docstring)."""
    n_layers = handle.n_layers
    runner = handle.block_runner()
    entries: list[_Entry] = []
    for layer in range(n_layers):
        layer_cells = [c for c in cells if c.layer == layer]
        for chunk in chunks(layer_cells, max_batch):
            entries += entries_for_layer(handle, runner, comp, layer, chunk, base, source)
    keys = [base[handle.hook_name("k", layer)] for layer in range(n_layers)]
    values = [base[handle.hook_name("v", layer)] for layer in range(n_layers)]
    out: dict[int, torch.Tensor] = {}
    resid_pre = [base[handle.hook_name("resid_pre", layer)][0] for layer in range(n_layers)]
    for pos, group in batches(entries, n_layers, resid_pre[0].shape[0]):
        for entry in group:  # rows from `pos` on (positions before the entry's are the base run's)
            if entry.pos > pos and entry.layer < n_layers:
                entry.rows = torch.cat([resid_pre[entry.layer][pos : entry.pos], entry.rows])
        group.sort(key=lambda e: e.layer)
        for chunk in chunks(group, max_batch):
            finals = []
            x: torch.Tensor | None = None
            done = 0  # entries of the chunk already in x
            for layer in range(chunk[0].layer, n_layers):
                start = done
                while done < len(chunk) and chunk[done].layer == layer:
                    done += 1
                if done > start:
                    new = torch.stack([e.rows for e in chunk[start:done]])
                    x = new if x is None else torch.cat([x, new])
                if x is not None:
                    x = runner(
                        layer,
                        x,
                        keys[layer][:, :pos],
                        values[layer][:, :pos],
                        last_only=layer == n_layers - 1,
                    )
            if x is not None:
                finals.append(x[:, -1])
            finals += [e.rows[-1:] for e in chunk[done:]]  # patched after the last block
            logits = handle.last_logits(torch.cat(finals), metric.columns)
            for entry, value in zip(chunk, metric(logits), strict=True):
                out[entry.flat] = value
    return out


# ---------------------------------------------------------------------------- public API
def check_layers(handle: ModelHandle, layers: Sequence[int] | None) -> set[int] | None:
    """``layers`` as a set, each checked against the model (None: every layer)."""
    if layers is None:
        return None
    if is_int(layers):
        layers = [layers]  # type: ignore[list-item]
    elif isinstance(layers, (str, bytes, dict)) or not hasattr(layers, "__len__"):
        raise ComponentError(f"layers= must be a list of layer numbers (or None for all), got {layers!r}.")
    if not len(layers):
        raise ComponentError("layers= is empty: pass some layers, or None for all of them.")
    for layer in layers:
        handle.check_layer(layer)
    return {int(layer) for layer in layers}


def activation_patch(
    model: Any,
    clean: Prompt,
    corrupted: Prompt,
    *,
    component: str,
    max_batch: int = 256,
    engine: Literal["auto", "hooks"] = "auto",
    layers: Sequence[int] | None = None,
    **options: Unpack[PatchOptions],
) -> PatchingResult:
    """Patch every cell of ``component`` and measure the metric (see
    :mod:`mechwidgets.analysis.patching`).

    ``metric``, ``direction``, ``answer``, ``wrong_answer`` and ``normalize`` are the options
    shared with :func:`~mechwidgets.analysis.attribution_patch` (:class:`~.setup.PatchOptions`;
    their defaults are declared once, by :func:`~.setup.prepare`).

    Args:
        model: a TransformerLens model or :class:`~mechwidgets._model.ModelHandle`.
        clean / corrupted: text (BOS prepended) or ``[pos]``/``[1, pos]`` token tensors, of the
            same token length.
        component: a key of :data:`COMPONENTS`, e.g. ``"resid_pre"`` or ``"head_out"``.
        metric: ``"logit_diff"`` (default), ``"logprob"``, ``"prob"``, ``"kl"`` or a callable
            ``logits[batch, d_vocab] -> [batch]`` (see :data:`~.metrics.MetricFn`).
        direction: ``"denoising"`` (default: run corrupted, patch in clean; what is sufficient)
            or ``"noising"`` (run clean, patch in corrupted; what is necessary).
        answer / wrong_answer: single tokens (text or ids). Default: the clean run's top token
            and the corrupted run's top token (see ``result.notes``).
        normalize: 0 = run being patched, 1 = other run (default); False: the raw metric.
        max_batch: at most this many patched runs per batched forward (memory budget).
        engine: ``"auto"`` (fastest exact method the model supports) or ``"hooks"`` (one hooked
            forward per patch, batched; the reference, for checking).
        layers: compute only these layers' cells (the others are NaN); default all. The widget
            streams a grid layer by layer with it.

    Returns:
        A :class:`PatchingResult` with a ``[layer, pos]``, ``[layer, head]`` or
        ``[layer, head, pos]`` grid.

    Raises:
        PromptError: prompts of different token lengths (with both tokenisations), empty, or
            longer than ``n_ctx``.
        AnswerError: an answer that is not one token, or answer == wrong_answer.
        ComponentError: unknown component or direction, or one the model lacks.
        MetricError: unknown metric, a metric returning NaN or not one value per run, or equal
            baselines with ``normalize=True``.
    """
    job = prepare(model, clean, corrupted, component, **options)
    handle, comp = job.handle, job.comp
    if engine not in ("auto", "hooks"):
        raise ComponentError(f"unknown engine {engine!r}: use 'auto' or 'hooks'.")
    if not isinstance(max_batch, int) or max_batch < 1:
        raise ComponentError(f"max_batch must be a positive integer, got {max_batch!r}.")
    wanted = check_layers(handle, layers)
    fast = engine == "auto" and handle.supports_partial_blocks()
    base_names, source_names = names_needed(handle, comp, fast)
    with handle.session():
        # Both runs as one batch of two: clean (row 0), corrupted (row 1).
        both, cache = handle.run_last_logits(
            torch.cat([job.clean_tokens, job.corrupted_tokens]), sorted({*base_names, *source_names})
        )
        baselines, _ = job.measure(both[0:1], both[1:2])
        base_row = 1 if job.denoising else 0
        base = {name: act[base_row : base_row + 1] for name, act in cache.items()}
        source = {name: act[1 - base_row : 2 - base_row] for name, act in cache.items()}
        shape = grid_shape(handle, comp, job.clean_tokens.shape[1])
        todo, noop, restore = cells_to_run(comp, shape, base, source, source_names)
        if wanted is not None:
            per_layer = int(torch.tensor(shape[1:]).prod())
            todo = [cell for cell in todo if cell.layer in wanted]
            noop = [flat for flat in noop if flat // per_layer in wanted]
            restore = [flat for flat in restore if flat // per_layer in wanted]
        if fast:
            computed = run_fast(handle, comp, todo, base, source, baselines.metric, max_batch)
        else:
            computed = run_generic(
                handle, comp, todo, job.base_tokens, base, source, baselines.metric, max_batch
            )
    values = torch.full((int(torch.tensor(shape).prod()),), float("nan"))
    values[noop] = baselines.corrupted_value if job.denoising else baselines.clean_value
    values[restore] = baselines.clean_value if job.denoising else baselines.corrupted_value
    for flat, value in computed.items():
        values[flat] = float(value)
    return job.result(values.view(shape), method="activation", baselines=baselines)


__all__ = ["activation_patch"]
