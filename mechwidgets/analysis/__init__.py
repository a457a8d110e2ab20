"""Headless analyses: pure torch, no widgets. Each function takes a TransformerLens model (or a
:class:`~mechwidgets._model.ModelHandle`) and returns a small typed result."""

from .attention import (
    AblationResult,
    AttentionPatterns,
    ablate_heads,
    get_attention_patterns,
    head_scores,
)
from .attribution import attribution_patch
from .metrics import METRICS, Metric, MetricFn
from .patching import COMPONENTS, DIRECTIONS, PatchingResult, activation_patch

__all__ = [
    "COMPONENTS",
    "DIRECTIONS",
    "METRICS",
    "AblationResult",
    "AttentionPatterns",
    "Metric",
    "MetricFn",
    "PatchingResult",
    "ablate_heads",
    "activation_patch",
    "attribution_patch",
    "get_attention_patterns",
    "head_scores",
]
