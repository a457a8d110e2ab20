"""Patching metrics: what "the behaviour" is, measured on the logits at the last position.

Activation patching (see :mod:`mechwidgets.analysis.patching`) runs the model many times with one
activation swapped and measures each run with a metric. Heimersheim & Nanda (2024, "How to use
and interpret activation patching") recommend a metric that is continuous and, where possible,
linear in the logits:

- ``"logit_diff"`` (default): ``logit(answer) - logit(wrong_answer)``. Linear in the output of
  the final LayerNorm (so nearly linear in the residual stream: contributions of components
  roughly add up), and it compares the two answers the prompts are about while ignoring what the
  rest of the vocabulary does. The recommended default.
- ``"logprob"``: ``log p(answer)``. Also sees probability moving to unrelated tokens.
- ``"prob"``: ``p(answer)``. Saturates (near 0 or 1 it hides effects), so small components can
  look unimportant; use for intuition rather than discovery.
- ``"kl"``: ``KL(p_clean || p_run)``, the KL divergence of the run's next-token distribution
  from the clean run's: 0 for the clean run, needs no answer tokens, and sees every change in the
  distribution.
- a callable (see :data:`MetricFn` for the contract).

Normalisation (:func:`normalize`) maps the metric so that 0 is the value of the run being patched
and 1 the value of the other run: for denoising (corrupted run, clean activations patched in) 1
means "this component alone restores the clean behaviour"; for noising (clean run, corrupted
activations patched in) 1 means "this component alone breaks it".
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float

from ..errors import MetricError

#: The one contract of a callable metric, for :func:`~mechwidgets.analysis.activation_patch`,
#: :func:`~mechwidgets.analysis.attribution_patch`, :class:`~mechwidgets.analysis.circuits.EdgePatcher`
#: and :func:`~mechwidgets.show_circuit` (:func:`~mechwidgets.show_patching` offers the named
#: metrics only): logits at the last position of ``batch`` runs, ``[batch, d_vocab]`` (float32),
#: to one finite number per run, ``[batch]``. It is called on batches of any size (the clean and
#: corrupted baselines first), must not modify its input, and must be built from differentiable
#: torch operations to be used with attribution patching or EAP. Returning NaN or infinity, a
#: single number for the whole batch, or several numbers per run raises MetricError; so does a
#: metric that fails on ``[batch, d_vocab]`` logits (e.g. one written for TransformerLens's
#: ``[batch, pos, d_vocab]``), with the rewrite in the message.
MetricFn = Callable[[Float[torch.Tensor, "batch d_vocab"]], Float[torch.Tensor, " batch"]]

#: The contract in words, as error messages state it.
METRIC_CONTRACT = (
    "A metric takes the last position's logits of each run, [batch, d_vocab], and returns one "
    "number per run, [batch]. A TransformerLens-style metric on [batch, pos, d_vocab] such as "
    "`lambda logits: logits[0, -1, a] - logits[0, -1, b]` becomes "
    "`lambda logits: logits[:, a] - logits[:, b]`."
)

#: The metrics known by name.
METRICS: tuple[str, ...] = ("logit_diff", "logprob", "prob", "kl")


def logit_diff(
    logits: Float[torch.Tensor, "batch d_vocab"], answer: int, wrong_answer: int
) -> Float[torch.Tensor, " batch"]:
    """``logit(answer) - logit(wrong_answer)`` per run."""
    return logits[:, answer] - logits[:, wrong_answer]


def logprob(
    logits: Float[torch.Tensor, "batch d_vocab"], answer: int
) -> Float[torch.Tensor, " batch"]:
    """``log p(answer)`` per run (log-softmax over the vocabulary)."""
    return logits.float().log_softmax(-1)[:, answer]


def prob(
    logits: Float[torch.Tensor, "batch d_vocab"], answer: int
) -> Float[torch.Tensor, " batch"]:
    """``p(answer)`` per run."""
    return logits.float().softmax(-1)[:, answer]


def kl_div(
    logits: Float[torch.Tensor, "batch d_vocab"], clean_logits: Float[torch.Tensor, " d_vocab"]
) -> Float[torch.Tensor, " batch"]:
    """``KL(p_clean || p_run) = sum_t p_clean(t) (log p_clean(t) - log p_run(t))`` per run."""
    clean_logp = clean_logits.float().log_softmax(-1)
    logp = logits.float().log_softmax(-1)
    return (clean_logp.exp() * (clean_logp - logp)).sum(-1)


@dataclass(frozen=True)
class Metric:
    """A metric ready to run on the columns of the logits it reads.

    Attributes:
        name: ``"logit_diff"``, ``"logprob"``, ``"prob"``, ``"kl"`` or the callable's name.
        description: what is measured, in words (with the answer tokens).
        columns: the vocabulary columns the metric reads (``[answer, wrong_answer]`` for a logit
            difference), or None for all ``d_vocab``. Patching computes only these logits.
        fn: ``logits[:, columns] -> [batch]``.
    """

    name: str
    description: str
    columns: tuple[int, ...] | None
    fn: Callable[[torch.Tensor], torch.Tensor]

    def __call__(
        self, logits: Float[torch.Tensor, "batch n_columns"]
    ) -> Float[torch.Tensor, " batch"]:
        """Evaluate on ``logits[:, self.columns]`` (all columns if ``columns`` is None)."""
        return call_metric(self.fn, logits.float(), self.name)


def call_metric(fn: Callable[[torch.Tensor], Any], logits: torch.Tensor, name: str) -> torch.Tensor:
    """``fn(logits)`` for ``[batch, ...]`` logits, checked as :func:`check_metric_output` does.

    Raises:
        MetricError: the metric raised an ``IndexError`` (e.g. ``too many indices``: written
            for ``[batch, pos, d_vocab]``), or returned something other than ``[batch]`` finite
            numbers; the message states the contract and the one-line rewrite. Other errors
            of the metric's own propagate as they are.
    """
    try:
        out = fn(logits)
    except IndexError as exc:
        raise MetricError(
            f"the metric {name!r} failed on logits of shape {list(logits.shape)} with "
            f"{type(exc).__name__}: {exc}. {METRIC_CONTRACT}"
        ) from exc
    return check_metric_output(out, logits.shape[0], name)


def check_metric_output(out: Any, batch: int, name: str) -> torch.Tensor:
    """Check a metric returned one finite number per run (``[batch]``) and return it.

    Raises:
        MetricError: not a tensor, the wrong shape, or NaN/infinite values (the message says
            what came back).
    """
    if not isinstance(out, torch.Tensor):
        raise MetricError(
            f"the metric {name!r} returned a {type(out).__name__}, not a tensor: it must map "
            f"logits [batch, d_vocab] to a tensor of shape [batch] (one number per run)."
        )
    if out.shape != (batch,):
        hint = (
            "a single number for the whole batch (did it reduce over the batch, e.g. .mean()?)"
            if out.ndim == 0
            else f"a tensor of shape {tuple(out.shape)}"
        )
        raise MetricError(
            f"the metric {name!r} returned {hint} for a batch of {batch} runs; it must return "
            f"shape [batch] = ({batch},): one number per run, reducing only over the vocabulary. "
            f"{METRIC_CONTRACT}"
        )
    bad = ~torch.isfinite(out.detach())
    if bool(bad.any()):
        values = [float(v) for v in out.detach().flatten()[:8]]
        raise MetricError(
            f"the metric {name!r} returned NaN or infinite values for {int(bad.sum())} of "
            f"{batch} runs ({values}); it must return a finite number per run. Check for "
            f"log(0), division by zero or an empty selection."
        )
    return out.float()


def resolve_metric(
    metric: str | MetricFn,
    *,
    answer: int | None = None,
    wrong_answer: int | None = None,
    clean_logits: Float[torch.Tensor, " d_vocab"] | None = None,
    token_str: Callable[[int], str] = str,
) -> Metric:
    """Turn a metric name (see :data:`METRICS`) or callable into a :class:`Metric`.

    Args:
        answer / wrong_answer: token ids; ``logit_diff`` needs both, ``logprob``/``prob`` the answer.
        clean_logits: the clean run's last-position logits (needed by ``kl``).
        token_str: renders token ids in the description.

    Raises:
        MetricError: unknown name, or an argument the metric needs is missing.
    """
    if callable(metric) and not isinstance(metric, str):
        name = getattr(metric, "__name__", type(metric).__name__)
        return Metric(name, f"custom metric {name}", None, metric)
    if metric not in METRICS:
        raise MetricError(
            f"unknown metric {metric!r}: use one of {list(METRICS)} or a callable mapping "
            f"logits [batch, d_vocab] at the last position to [batch]."
        )
    if metric == "kl":
        if clean_logits is None:
            raise MetricError("the 'kl' metric needs the clean run's logits (clean_logits=).")
        clean = clean_logits.detach().float()
        return Metric(
            "kl",
            "KL(clean || run) of the next-token distribution",
            None,
            lambda x: kl_div(x, clean),
        )
    if answer is None or (metric == "logit_diff" and wrong_answer is None):
        raise MetricError(
            f"the {metric!r} metric needs answer= (and wrong_answer= for logit_diff)."
        )
    a = int(answer)
    if metric == "logit_diff":
        assert wrong_answer is not None
        w = int(wrong_answer)
        return Metric(
            "logit_diff",
            f"logit({token_str(a)!r}) - logit({token_str(w)!r})",
            (a, w),
            lambda x: x[:, 0] - x[:, 1],
        )
    if metric == "logprob":
        return Metric("logprob", f"log p({token_str(a)!r})", None, lambda x: logprob(x, a))
    return Metric("prob", f"p({token_str(a)!r})", None, lambda x: prob(x, a))


def normalize(
    values: torch.Tensor, baseline: float, target: float, *, metric: str = "metric"
) -> torch.Tensor:
    """``(values - baseline) / (target - baseline)``: 0 at the run being patched, 1 at the other.

    Raises:
        MetricError: the two baselines are equal, so the scale is undefined.
    """
    span = target - baseline
    if abs(span) <= 1e-6 * max(1.0, abs(baseline), abs(target)):
        raise MetricError(
            f"the {metric} is {baseline:.6g} on the run being patched and {target:.6g} on the "
            f"other run: they are equal, so normalising (0 at one, 1 at the other) is undefined. "
            f"Use prompts or answers on which the clean and corrupted runs differ, or pass "
            f"normalize=False for the raw metric."
        )
    return (values - baseline) / span


__all__ = [
    "METRICS",
    "METRIC_CONTRACT",
    "Metric",
    "MetricFn",
    "call_metric",
    "check_metric_output",
    "kl_div",
    "logit_diff",
    "logprob",
    "normalize",
    "prob",
    "resolve_metric",
]
