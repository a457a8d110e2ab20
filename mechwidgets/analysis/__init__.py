"""Headless analyses: pure torch, no widgets. Each function takes a TransformerLens model (or a
:class:`~mechwidgets._model.ModelHandle`) and returns a small typed result."""

from .attention import (
    AblationResult,
    AttentionPatterns,
    ablate_heads,
    get_attention_patterns,
    head_scores,
)

__all__ = [
    "AblationResult",
    "AttentionPatterns",
    "ablate_heads",
    "get_attention_patterns",
    "head_scores",
]
