"""The dataset causal scrubbing resamples from: ``N`` token sequences of one length."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from jaxtyping import Int

from ..._model import ModelHandle
from ...errors import PromptError

# ------------------------------------------------------------------------------------------------
# Datasets


def dataset_tokens(
    handle: ModelHandle, dataset: Any, *, max_inputs: int = 4096
) -> tuple[Int[torch.Tensor, "n pos"], list[int] | None]:
    """Tokenise a dataset to ``[n, pos]`` (BOS first), with its default measured positions.

    ``dataset`` is a ``[n, pos]`` token tensor, a list of strings of equal token length, or a list
    of :class:`~mechwidgets.zoo.tasks.InductionSequence` (then the default positions are those
    predicting the repeated half, as the zoo's model cards measure it).
    """
    default_positions: list[int] | None = None
    if isinstance(dataset, torch.Tensor):
        toks = dataset.detach().long().cpu()
        if toks.ndim != 2:
            raise PromptError(f"a token dataset must be [n, pos]; got shape {tuple(toks.shape)}.")
        if toks.numel() and (int(toks.min()) < 0 or int(toks.max()) >= handle.d_vocab):
            raise PromptError(f"the dataset holds token ids outside [0, {handle.d_vocab}).")
    else:
        if isinstance(dataset, (str, bytes)) or not isinstance(dataset, Sequence):
            raise PromptError(
                "the dataset must be a list of strings, a [n, pos] token tensor, or a list of "
                "zoo task objects (e.g. zoo.tasks.induction_sequences(...)); got "
                f"{type(dataset).__name__}."
            )
        items = list(dataset)
        if not items:
            raise PromptError("the dataset is empty: causal scrubbing needs inputs to resample from.")
        if len(items) > max_inputs:
            raise PromptError(
                f"the dataset has {len(items)} inputs, more than max_inputs={max_inputs}: pass "
                f"fewer or raise max_inputs= (memory grows with inputs × positions)."
            )
        texts = []
        for i, item in enumerate(items):
            if isinstance(item, str):
                texts.append(item)
            elif isinstance(getattr(item, "text", None), str):
                texts.append(item.text)
            else:
                raise PromptError(
                    f"dataset item #{i} is a {type(item).__name__}: pass strings, a token tensor, "
                    f"or zoo task objects with a .text."
                )
        halves = {getattr(item, "half_length", None) for item in items}
        rows = [handle.tokens(t, what=f"dataset input #{i}")[0].cpu() for i, t in enumerate(texts)]
        lengths = sorted({len(r) for r in rows})
        if len(lengths) > 1:
            first = next(i for i, r in enumerate(rows) if len(r) != len(rows[0]))
            raise PromptError(
                f"dataset inputs must all have the same number of tokens (positions are compared "
                f"across inputs); input #0 has {len(rows[0])} and input #{first} has "
                f"{len(rows[first])} (lengths seen: {lengths})."
            )
        toks = torch.stack(rows)
        if len(halves) == 1 and isinstance(next(iter(halves)), int):
            half = int(next(iter(halves)))  # type: ignore[arg-type]
            if toks.shape[1] == 1 + 2 * half:
                default_positions = list(range(half + 1, 2 * half))
    n, pos = toks.shape
    if n < 2:
        raise PromptError(f"the dataset has {n} input; causal scrubbing needs several to resample from.")
    if n > max_inputs:
        raise PromptError(
            f"the dataset has {n} inputs, more than max_inputs={max_inputs}: pass fewer or raise "
            f"max_inputs= (memory grows with inputs × positions)."
        )
    if pos < 2:
        raise PromptError("dataset inputs need at least 2 tokens (a prediction and its target).")
    if pos > handle.n_ctx:
        raise PromptError(f"dataset inputs are {pos} tokens, more than the model's n_ctx={handle.n_ctx}.")
    return toks, default_positions

