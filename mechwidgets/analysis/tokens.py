"""Token replacements for building corrupted prompts.

Activation patching needs a corrupted prompt that differs from the clean one in a controlled
way. Heimersheim & Nanda (2024) recommend *symmetric token replacement* (swap a name for another
name, a year for another year) over Gaussian noise on the embeddings, which pushes the model off
distribution. :func:`similar_tokens` proposes replacements for one position: the tokens whose
embedding (a row of ``W_E``) is most cosine-similar to the original's, keeping only those that
are a single token when tokenised on their own, so the corrupted prompt has the same length.
"""

from __future__ import annotations

from typing import Any

import torch

from .._args import as_int
from .._model import ModelHandle
from ..errors import ComponentError


def similar_tokens(model: Any, token: int, *, k: int = 8, pool: int = 64) -> list[int]:
    """The ``k`` tokens nearest to ``token`` by embedding cosine similarity (itself excluded).

    Args:
        model: a TransformerLens model or handle.
        token: the token id to replace.
        k: how many to return.
        pool: how many nearest neighbours to consider before dropping those that do not round-trip
            to exactly one token.
    """
    handle = ModelHandle.wrap(model)
    if not 0 <= int(token) < handle.d_vocab:
        raise ComponentError(f"token id {token} is outside the vocabulary [0, {handle.d_vocab}).")
    with handle.session():
        w_e = handle.embedding()
        unit = torch.nn.functional.normalize(w_e, dim=-1)
        sims = unit @ unit[int(token)]
    sims[int(token)] = -float("inf")
    special = {getattr(handle.tokenizer, a, None) for a in ("bos_token_id", "eos_token_id", "pad_token_id", "unk_token_id")}
    out: list[int] = []
    for cand in sims.topk(min(pool, handle.d_vocab - 1)).indices.tolist():
        if cand in special:
            continue
        text = handle.token_str(cand)
        try:
            if handle.single_token(text) != cand:
                continue
        except Exception:
            continue
        out.append(cand)
        if len(out) == k:
            break
    return out


def replace_token(model: Any, tokens: torch.Tensor, pos: int, replacement: str | int) -> torch.Tensor:
    """``tokens`` (``[1, pos]``) with position ``pos`` replaced by a single token."""
    handle = ModelHandle.wrap(model)
    n = tokens.shape[-1]
    pos = as_int(pos, "the position to replace", lo=1, hi=n - 1, hint=" Position 0 is the BOS token.")
    new = tokens.clone()
    new[..., pos] = handle.single_token(replacement, what="replacement")
    return new


__all__ = ["replace_token", "similar_tokens"]
