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

from typing import TYPE_CHECKING, Any

import torch

from .setup import PatchingResult, PatchOptions, Prompt, prepare

if TYPE_CHECKING:
    from typing_extensions import Unpack


def attribution_patch(
    model: Any, clean: Prompt, corrupted: Prompt, *, component: str, **options: Unpack[PatchOptions]
) -> PatchingResult:
    """Estimate every patch of ``component`` from one backward pass (module docstring).

    Arguments, result and errors are those of
    :func:`~mechwidgets.analysis.patching.activation_patch` (``result.method == "attribution"``).
    A callable metric must be differentiable (built from torch operations).
    """
    job = prepare(model, clean, corrupted, component, **options)
    handle, comp = job.handle, job.comp
    names = [handle.hook_name(comp.hook, layer) for layer in range(handle.n_layers)]
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
            source_logits, source = handle.run_last_logits(job.source_tokens, names)
        base_logits, _ = handle.run_last_logits(
            job.base_tokens, fwd_hooks=[(n, saver(n)) for n in names]
        )
        pair = (source_logits, base_logits) if job.denoising else (base_logits, source_logits)
        baselines, both = job.measure(*pair)
        base_metric = both[1] if job.denoising else both[0]  # both: clean, corrupted
        grads = torch.autograd.grad(base_metric, [saved[n] for n in names])
    rows = []
    for name, grad in zip(names, grads, strict=True):
        product = ((source[name] - saved[name].detach()) * grad)[0].float()
        if comp.hook == "pattern":  # [head, dest, src]
            rows.append(product.sum(-1) if comp.by_pos else product.sum((1, 2)))
        elif comp.per_head:  # [pos, head, d_head]
            rows.append(product.sum(-1).T if comp.by_pos else product.sum((0, 2)))
        else:  # [pos, d_model]
            rows.append(product.sum(-1))
    values = float(base_metric.detach()) + torch.stack(rows).detach()
    return job.result(values, method="attribution", baselines=baselines)


__all__ = ["attribution_patch"]
