"""Widget classes (anywidget). Each turns clicks into :mod:`mechwidgets.analysis` calls."""

from .attention import AttentionWidget, attention_patterns, show_attention
from .features import FeaturesWidget, show_features
from .patching import PatchingWidget, show_patching

__all__ = [
    "AttentionWidget",
    "FeaturesWidget",
    "PatchingWidget",
    "attention_patterns",
    "show_attention",
    "show_features",
    "show_patching",
]
