"""Attribution patching: a gradient estimate of every activation patch at once.

Activation patching (:mod:`mechwidgets.analysis.patching`) runs the model once per patched
activation. Attribution patching (Nanda 2023, "Attribution Patching: Activation Patching At
Industrial Scale"; Syed, Rager & Conmy 2023) replaces each of those runs by a first-order Taylor
expansion of the metric around the run being patched:

    metric(patched) ≈ metric(run) + (source_act - run_act) · d metric / d act |_run

where ``run`` is the run being patched (the corrupted run for denoising, the clean run for
noising) and ``source`` the other run. One forward pass of the other run (for its activations),
one forward and one backward pass of the run being patched (for activations and gradients) give
the estimate for every layer, position and head: about three forward passes' worth of compute,
whatever the grid size.

The estimate is exact for a metric linear in the activation (e.g. the logit difference and a
component that feeds the unembedding only through the residual stream and a final LayerNorm
whose scale barely moves), and can be badly wrong where the model is far from linear: attention
patterns that saturate, and the residual stream at early layers, where a patch changes
everything downstream (Heimersheim & Nanda 2024). Check the cells that matter with
:func:`~mechwidgets.analysis.patching.activation_patch`.

:func:`attribution_patch` takes the same arguments and returns the same
:class:`~mechwidgets.analysis.patching.PatchingResult` grids as ``activation_patch``. With
``normalize=False`` the values are the *estimated metric* of each patched run (the baseline plus
the attribution), on the same scale as ``activation_patch``'s raw values; ``values -
result.baseline`` is the attribution itself.
"""

from __future__ import annotations

from typing import Any

import torch

from .metrics import MetricFn
from .patching import (
    Direction,
    PatchingResult,
    Prompt,
    check_direction,
    choose_metric,
    get_component,
    make_result,
    metric_values,
    token_pair,
    wrap_model,
)


def attribution_patch(
    model: Any,
    clean: Prompt,
    corrupted: Prompt,
    *,
    component: str,
    metric: str | MetricFn = "logit_diff",
    direction: Direction = "denoising",
    answer: str | int | None = None,
    wrong_answer: str | int | None = None,
    normalize: bool = True,
) -> PatchingResult:
    """Estimate every patch of ``component`` from one backward pass (module docstring).

    Arguments, result and errors are those of
    :func:`~mechwidgets.analysis.patching.activation_patch` (``result.method == "attribution"``).
    A callable metric must be differentiable (built from torch operations).
    """
    handle = wrap_model(model)
    comp = get_component(handle, component)
    check_direction(direction)
    clean_tokens, corrupted_tokens = token_pair(handle, clean, corrupted)
    names = [handle.hook_name(comp.hook, layer) for layer in range(handle.n_layers)]
    denoising = direction == "denoising"
    base_tokens, source_tokens = (
        (corrupted_tokens, clean_tokens) if denoising else (clean_tokens, corrupted_tokens)
    )
    saved: dict[str, torch.Tensor] = {}

    def saver(name: str) -> Any:
        def save(act: torch.Tensor, hook: Any) -> torch.Tensor:
            if not act.requires_grad:  # a model with frozen parameters: track from here on
                act.requires_grad_(True)
            saved[name] = act
            return act  # returned, so that models whose hooks see a reshaped view use it

        return save

    with handle.session(grad=True):
        with torch.no_grad():
            source_logits, source = handle.run_last_logits(source_tokens, names)
        base_logits, _ = handle.run_last_logits(
            base_tokens, fwd_hooks=[(n, saver(n)) for n in names]
        )
        clean_logits, corrupted_logits = (
            (source_logits, base_logits) if denoising else (base_logits, source_logits)
        )
        resolved, answer_id, wrong_id, notes = choose_metric(
            handle,
            metric,
            clean_logits[0].detach(),
            corrupted_logits[0].detach(),
            answer,
            wrong_answer,
        )
        base_metric = metric_values(resolved, base_logits)
        grads = torch.autograd.grad(base_metric.sum(), [saved[n] for n in names])
        source_value = float(metric_values(resolved, source_logits))
    base_value = float(base_metric.detach())
    rows = []
    for name, grad in zip(names, grads, strict=True):
        product = ((source[name] - saved[name].detach()) * grad)[0].float()
        if comp.hook == "pattern":  # [head, dest, src]
            rows.append(product.sum(-1) if comp.by_pos else product.sum((1, 2)))
        elif comp.per_head:  # [pos, head, d_head]
            rows.append(product.sum(-1).T if comp.by_pos else product.sum((0, 2)))
        else:  # [pos, d_model]
            rows.append(product.sum(-1))
    values = base_value + torch.stack(rows).detach()
    clean_value, corrupted_value = (
        (source_value, base_value) if denoising else (base_value, source_value)
    )
    return make_result(
        handle,
        comp,
        values,
        direction=direction,
        method="attribution",
        metric=resolved,
        normalized=normalize,
        clean_value=clean_value,
        corrupted_value=corrupted_value,
        answer=answer_id,
        wrong_answer=wrong_id,
        clean_tokens=clean_tokens,
        corrupted_tokens=corrupted_tokens,
        notes=notes,
    )


__all__ = ["attribution_patch"]
