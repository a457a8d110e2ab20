"""Widget classes (anywidget). Each turns clicks into :mod:`mechwidgets.analysis` calls."""

from .attention import AttentionWidget, attention_patterns, show_attention
from .circuit import CircuitWidget, show_circuit
from .features import FeaturesWidget, show_features
from .lens import LogitLensWidget, show_logit_lens
from .patching import PatchingWidget, show_patching
from .scrubbing import ScrubbingWidget, show_scrubbing

__all__ = [
    "AttentionWidget",
    "CircuitWidget",
    "FeaturesWidget",
    "LogitLensWidget",
    "PatchingWidget",
    "ScrubbingWidget",
    "attention_patterns",
    "show_attention",
    "show_circuit",
    "show_features",
    "show_logit_lens",
    "show_patching",
    "show_scrubbing",
]
