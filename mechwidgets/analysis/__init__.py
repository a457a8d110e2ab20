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
from .lens import (
    DLAResult,
    LensResult,
    NormResult,
    direct_logit_attribution,
    logit_lens,
    residual_norms,
)
from .metrics import METRICS, Metric, MetricFn
from .patching import COMPONENTS, DIRECTIONS, PatchingResult, activation_patch

__all__ = [
    "COMPONENTS",
    "DIRECTIONS",
    "METRICS",
    "AblationResult",
    "AttentionPatterns",
    "DLAResult",
    "LensResult",
    "Metric",
    "MetricFn",
    "NormResult",
    "PatchingResult",
    "ablate_heads",
    "activation_patch",
    "attribution_patch",
    "direct_logit_attribution",
    "get_attention_patterns",
    "head_scores",
    "logit_lens",
    "residual_norms",
]
