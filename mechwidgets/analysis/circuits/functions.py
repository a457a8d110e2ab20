"""The headless entry points: each builds an :class:`EdgePatcher` (whose docstring says what
``metric``, ``answer``, ``wrong_answer`` and ``max_positions`` take) and asks it one thing."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, TypedDict

import torch

from .inputs import Answers, MetricArg, Prompts
from .patcher import EdgePatcher
from .results import CircuitResult, Faithfulness

if TYPE_CHECKING:
    from typing_extensions import Unpack


class PatcherOptions(TypedDict, total=False):
    """The keyword arguments of :class:`EdgePatcher`, passed through as they are."""

    metric: MetricArg
    answer: Answers
    wrong_answer: Answers
    max_positions: int


def edge_attribution_patching(model: Any, clean: Prompts, corrupted: Prompts, *, ig_steps: int | None = None,
                              **options: Unpack[PatcherOptions]) -> CircuitResult:
    """Score every edge with edge attribution patching (Syed, Rager & Conmy, 2023).

    Costs about three forward passes (clean with gradients, corrupted, one backward). See
    :mod:`mechwidgets.analysis.circuits` for the graph and the sign convention.

    Args:
        ig_steps: with a number, EAP-IG instead (:meth:`EdgePatcher.eap_ig_scores`): the
            gradients averaged over that many runs whose input embeddings go from the corrupted
            to the clean prompts (``ig_steps`` more forward and backward passes).
        model, clean, corrupted, options: as :class:`EdgePatcher`.

    Returns:
        A :class:`CircuitResult` with ``method="eap"`` (or ``"eap-ig"``); ``scores[e]``
        estimates the change of the metric when edge ``e`` alone is patched from the
        corrupted run.
    """
    return EdgePatcher(model, clean, corrupted, **options).eap(ig_steps=ig_steps)


def acdc(model: Any, clean: Prompts, corrupted: Prompts, *, threshold: float, signed: bool = False,
         **options: Unpack[PatcherOptions]) -> CircuitResult:
    """Prune the graph with ACDC (Conmy et al., 2023): one exact patched forward per edge.

    Args:
        threshold: an edge is removed when removing it moves the metric by less than this (in
            the metric's units), ``|Δ| < threshold``; 0 keeps every edge.
        signed: remove an edge when removing it moves the metric away from the clean behaviour
            by less than ``threshold`` (edges that work against the behaviour always go), as
            ACDC's own code does; see :meth:`EdgePatcher.acdc_steps`.
        model, clean, corrupted, options: as :class:`EdgePatcher`.

    Returns:
        A :class:`CircuitResult` with ``method="acdc"``; ``result.circuit()`` is the circuit
        found and ``result.circuit_metric`` its metric.
    """
    return EdgePatcher(model, clean, corrupted, **options).acdc(threshold, signed=signed)


def circuit_faithfulness(model: Any, clean: Prompts, corrupted: Prompts, edges: Sequence[str] | torch.Tensor,
                         **options: Unpack[PatcherOptions]) -> Faithfulness:
    """Faithfulness of a circuit given as edge names (``["a0.h1->a1.h3.k", ...]``) or an
    ``[edge]`` boolean mask: the metric with every other edge patched from the corrupted run,
    by a real forward pass, normalised to 1 for the full graph and 0 for the empty one.
    ``model``, ``clean``, ``corrupted`` and ``options``: as :class:`EdgePatcher`."""
    patcher = EdgePatcher(model, clean, corrupted, **options)
    return patcher.faithfulness(patcher.circuit_mask(edges))


__all__ = ["PatcherOptions", "acdc", "circuit_faithfulness", "edge_attribution_patching"]
