"""mechwidgets: live Jupyter widgets for mechanistic interpretability of TransformerLens models.

Quick start::

    from mechwidgets import show_attention, zoo
    model = zoo.load("induction-2l")
    show_attention(model, "...")
"""

from ._model import ModelHandle
from .errors import MechWidgetsError
from .widgets import (
    AttentionWidget,
    CircuitWidget,
    FeaturesWidget,
    LogitLensWidget,
    PatchingWidget,
    ScrubbingWidget,
    attention_patterns,
    show_attention,
    show_circuit,
    show_features,
    show_logit_lens,
    show_patching,
    show_scrubbing,
)

__version__ = "0.1.0"

__all__ = [
    "AttentionWidget",
    "CircuitWidget",
    "FeaturesWidget",
    "LogitLensWidget",
    "MechWidgetsError",
    "ModelHandle",
    "PatchingWidget",
    "ScrubbingWidget",
    "__version__",
    "attention_patterns",
    "show_attention",
    "show_circuit",
    "show_features",
    "show_logit_lens",
    "show_patching",
    "show_scrubbing",
]
