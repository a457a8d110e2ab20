"""Attribution patching: a gradient estimate of every activation patch at once; the technique and
the code are in :mod:`mechwidgets.analysis.patching.attribution`, beside activation patching."""

from .patching.attribution import attribution_patch

__all__ = ["attribution_patch"]
