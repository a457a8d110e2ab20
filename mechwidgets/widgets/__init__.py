"""Widget classes (anywidget). Each turns clicks into :mod:`mechwidgets.analysis` calls."""

from .attention import AttentionWidget, attention_patterns, show_attention

__all__ = ["AttentionWidget", "attention_patterns", "show_attention"]
