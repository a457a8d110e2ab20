"""The arguments of a circuit analysis: prompts, answers, metric, method, and their checks."""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import Any, Literal

import torch

from ..._model import ModelHandle
from ...errors import AnswerError, MechWidgetsError, PromptError
from ..metrics import MetricFn

MetricName = Literal["logit_diff", "logprob", "prob", "kl"]
#: The scoring methods: edge attribution patching, EAP with integrated gradients, ACDC.
METHODS: tuple[str, ...] = ("eap", "eap-ig", "acdc")
#: Interpolation steps of EAP-IG (as in Hanna et al. 2024).
IG_STEPS = 5

Prompts = str | Sequence[str] | torch.Tensor
Answers = str | int | Sequence[str | int] | None
MetricArg = str | MetricFn


class CircuitError(MechWidgetsError, ValueError):
    """An unknown method, edge or threshold was given to a circuit analysis."""


def check_threshold(threshold: Any, what: str = "the threshold") -> float:
    """``threshold`` as a float, or :class:`CircuitError` unless it is a finite number >= 0."""
    ok = isinstance(threshold, numbers.Real) and not isinstance(threshold, bool)
    if not ok or not threshold >= 0 or not math.isfinite(threshold):
        raise CircuitError(f"{what} must be a finite number >= 0, got {threshold!r}.")
    return float(threshold)


def check_signed(signed: Any) -> bool:
    if not isinstance(signed, bool):
        raise CircuitError(f"signed must be true or false, got {signed!r}.")
    return signed


def check_method(method: Any) -> str:
    if method not in METHODS:
        raise CircuitError(f"unknown method {method!r}: use 'eap' (edge attribution patching), 'eap-ig' "
                           f"(EAP with integrated gradients) or 'acdc'.")
    return str(method)


def prompt_list(prompts: Prompts, what: str) -> list[Any]:
    if isinstance(prompts, str):
        return [prompts]
    if isinstance(prompts, torch.Tensor):
        if prompts.ndim == 1:
            return [prompts]
        if prompts.ndim == 2:
            return list(prompts)
        raise PromptError(f"the {what} tokens must be [pos] or [batch, pos], got shape {tuple(prompts.shape)}.")
    if isinstance(prompts, Sequence) and prompts and all(isinstance(p, str) for p in prompts):
        return list(prompts)
    if isinstance(prompts, Sequence) and prompts and all(isinstance(p, torch.Tensor) for p in prompts):
        return list(prompts)
    raise PromptError(
        f"the {what} prompts must be a string, a list of strings or a token tensor; got "
        f"{type(prompts).__name__}{' (empty)' if isinstance(prompts, Sequence) and not prompts else ''}."
    )


def answer_list(answers: Answers, n: int, what: str) -> list[str | int | None]:
    if answers is None:
        return [None] * n
    items: list[str | int | None] = [answers] if isinstance(answers, (str, int)) else list(answers)
    if len(items) == 1 and n > 1:
        items = items * n
    if len(items) != n:
        raise AnswerError(
            f"got {len(items)} {what}s for {n} prompts: pass one {what} per prompt, or a single "
            f"one for all of them."
        )
    return items


def resolve(handle: ModelHandle, answers: list[str | int | None], what: str) -> list[int | None]:
    """Answer strings and ids as checked token ids (``None`` stays: the default answer)."""
    given = [a for a in answers if a is not None]
    ids = iter(handle.single_tokens(given, what=what))
    return [None if a is None else next(ids) for a in answers]

