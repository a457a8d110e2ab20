"""Errors raised by mechwidgets.

Every error is a :class:`MechWidgetsError`; its message says what was wrong and how to fix it.
Widgets show the same message in their error banner. Input errors also subclass the built-in
exception a user would expect (``ValueError``, ``TypeError``, ``KeyError``), so existing
``except ValueError`` code keeps working.
"""

from __future__ import annotations


class MechWidgetsError(Exception):
    """Base class of every error mechwidgets raises on purpose."""


class ModelError(MechWidgetsError, TypeError):
    """The object passed as a model is not a TransformerLens model this package can drive."""


class PromptError(MechWidgetsError, ValueError):
    """A prompt is empty, too long, or does not match another prompt it must pair with."""


class ComponentError(MechWidgetsError, ValueError):
    """A layer, head, position or hook name does not exist in the model."""


class AnswerError(MechWidgetsError, ValueError):
    """An answer token is not a single token, or the answers cannot be told apart."""


class MetricError(MechWidgetsError, ValueError):
    """A metric returned something that is not a finite scalar, or an unknown metric was named."""


class SAEError(MechWidgetsError, ValueError):
    """A sparse autoencoder does not fit the model or hook it is used with."""


class HypothesisError(MechWidgetsError, ValueError):
    """A causal-scrubbing hypothesis or its dataset cannot be evaluated."""


class ZooError(MechWidgetsError, KeyError):
    """A zoo model is unknown, or its files are missing or corrupted."""

    def __str__(self) -> str:  # KeyError would otherwise quote the message
        return str(self.args[0]) if self.args else ""


class RequestError(MechWidgetsError, ValueError):
    """A request from the widget's page is unknown to it, or has a missing, undeclared or
    ill-typed argument (the message names the request, the argument and what it takes)."""


class BudgetError(MechWidgetsError, ValueError):
    """A message or trait update would exceed its size budget (see ``MAX_UPDATE_BYTES``)."""


class CancelledError(MechWidgetsError):
    """Long work was cancelled by the user or superseded by a newer request."""


class ExportError(MechWidgetsError, ValueError):
    """A notebook or widget cannot be exported as HTML (bad or oversized saved state, bad options)."""


class MissingDependencyError(MechWidgetsError, ImportError):
    """An optional feature needs a package that is not installed; the message names the extra."""


class ModelChangedError(MechWidgetsError):
    """The model (its weights, dtype, device or hooks) changed while long work ran on it; the
    work stopped, and the next click or call recomputes on the model as it is now."""


class RemoteError(MechWidgetsError, RuntimeError):
    """A remote trace (nnsight on NDIF) failed: no key, the model not hosted, NDIF unreachable,
    or the trace failed there. The message says what to do; the model still runs locally."""


__all__ = [
    "AnswerError",
    "BudgetError",
    "CancelledError",
    "ComponentError",
    "ExportError",
    "HypothesisError",
    "MechWidgetsError",
    "MetricError",
    "MissingDependencyError",
    "ModelChangedError",
    "ModelError",
    "PromptError",
    "RemoteError",
    "RequestError",
    "SAEError",
    "ZooError",
]
