"""Fields that the results of several analyses share, declared once.

- :class:`PromptResult`: a result computed on one prompt carries its tokens and their strings.
- :class:`BeforeAfter`: a result of editing a run (ablating heads, editing SAE features)
  carries the model's next-token predictions and its per-token loss before and after the edit.

Result dataclasses inherit these fields (their own fields follow), so a result is still built
with keywords and read as before (``result.str_tokens``, ``result.loss_after``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from jaxtyping import Float, Int

if TYPE_CHECKING:  # analysis/attention.py may build on these classes: no import at run time
    from .attention import Predictions


@dataclass
class PromptResult:
    """Attributes:
    tokens: ``[pos]`` the prompt's token ids (on the CPU).
    str_tokens: the tokens as strings.
    """

    tokens: Int[torch.Tensor, " pos"]
    str_tokens: list[str]


@dataclass
class BeforeAfter:
    """Attributes:
    before / after: top-k next-token predictions of the clean and the edited run.
    loss_before / loss_after: ``[pos - 1]`` per-token loss of the clean and the edited run.
    """

    before: Predictions
    after: Predictions
    loss_before: Float[torch.Tensor, " pos_minus_1"]
    loss_after: Float[torch.Tensor, " pos_minus_1"]


__all__ = ["BeforeAfter", "PromptResult"]
