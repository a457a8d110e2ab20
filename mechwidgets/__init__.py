"""mechwidgets: live Jupyter widgets for mechanistic interpretability of TransformerLens models.

Quick start::

    from mechwidgets import show_attention, zoo
    model = zoo.load("induction-2l")
    show_attention(model, "...")
"""

from . import (
    _nnsight as _nnsight,  # registers the nnsight backend's handle (nnsight is imported on use)
)
from . import widgets
from ._model import ModelHandle
from .errors import MechWidgetsError
from .widgets import *  # noqa: F403  the widget classes and show_* functions: widgets.__all__

__version__ = "0.1.0"

__all__ = ["MechWidgetsError", "ModelHandle", "__version__", *widgets.__all__]
