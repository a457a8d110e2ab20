"""The induction circuit (Olsson et al., 2022): find its heads, and write it as a hypothesis."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from ..._model import ModelHandle
from .hypothesis import HypothesisNode


def induction_heads(
    model: Any, *, n: int = 8, half: int = 30, seed: int = 0, share: float = 0.5
) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """The previous-token heads and the induction heads of a model, by their head scores.

    Runs ``n`` sequences of ``half`` random tokens repeated once and scores every head as
    :func:`mechwidgets.analysis.head_scores` does (TransformerLens's head detector). Induction
    heads: heads of layer 1 and above scoring at least ``share`` of the best induction score;
    previous-token heads: heads below the first induction head's layer scoring at least ``share``
    of the best previous-token score there.

    Returns:
        ``(previous_token_heads, induction_heads)`` as lists of ``(layer, head)``.
    """
    from ..attention import head_scores

    handle = ModelHandle.wrap(model)
    gen = torch.Generator().manual_seed(seed)
    bos = handle.bos_token_id
    body = torch.randint(1, handle.d_vocab - 1, (n, half), generator=gen)
    toks = torch.cat([torch.full((n, 1), 0 if bos is None else int(bos)), body, body], 1)
    names = [handle.hook_name("pattern", layer) for layer in range(handle.n_layers)]
    with handle.session():
        _, cache = handle.run_with_cache(toks.to(handle.device), names)
    prev = torch.zeros(handle.n_layers, handle.n_heads)
    ind = torch.zeros(handle.n_layers, handle.n_heads)
    for i in range(n):
        pats = torch.stack([cache[name][i] for name in names]).float().cpu()
        scores = head_scores(pats, toks[i])
        prev += scores["previous_token"] / n
        ind += scores["induction"] / n
    ind[0] = 0.0  # an induction head needs an earlier previous-token head
    induction = [(int(l_), int(h)) for l_, h in (ind >= share * ind.max()).nonzero().tolist()]
    first = min(layer for layer, _ in induction)
    below = prev[:first]
    previous = [(int(l_), int(h)) for l_, h in (below >= share * below.max()).nonzero().tolist()]
    return previous, induction


def induction_hypothesis(
    previous: Sequence[tuple[int, int]],
    induction: Sequence[tuple[int, int]],
    *,
    refined: bool = True,
    key_feature: Any = "previous_token",
    n_heads: int | None = None,
) -> HypothesisNode:
    """The induction circuit (Olsson et al., 2022) as a hypothesis, naive or refined.

    Naive (Redwood's first induction hypothesis): each induction head's query reads the current
    token's embedding, its key the previous-token heads with feature ``key_feature`` (the previous
    token), its value the embedding of the token at the key's position; nothing else matters.

    Refined (what scrubbing small trained models shows the circuit also needs, as Redwood's
    refinements did): the query also reads the position and, as they are, the earlier heads that
    are not previous-token heads, the rest of it depending on the position only; the key also
    reads the token and the position at the key, the rest of it depending on the position only;
    the rest of the value depends only on the token at the key's position.

    Args:
        previous, induction: ``(layer, head)`` pairs, e.g. from :func:`induction_heads`.
        refined: the refined hypothesis (default) or the naive one.
        key_feature: the previous-token heads' feature (``"identity"``: "as they are").
        n_heads: heads per layer (needed for the refined query; default: the largest head index
            seen plus one).
    """
    heads_per_layer = n_heads or 1 + max(h for _, h in [*previous, *induction])
    prev_set = set(previous)
    children = []
    for layer, head in induction:
        key_heads = [HypothesisNode(f"L{pl}H{ph}", key_feature) for pl, ph in previous if pl < layer]
        if refined:
            others = [HypothesisNode(f"L{ol}H{oh}") for ol in range(layer) for oh in range(heads_per_layer)
                      if (ol, oh) not in prev_set]
            q = [HypothesisNode("embed", "token"), HypothesisNode("pos_embed", "position"), *others, HypothesisNode("resid", "position")]
            k = [*key_heads, HypothesisNode("embed", "token"), HypothesisNode("pos_embed", "position"), HypothesisNode("resid", "position")]
            v = [HypothesisNode("embed", "token"), HypothesisNode("resid", "token")]
        else:
            q, k, v = [HypothesisNode("embed", "token")], key_heads, [HypothesisNode("embed", "token")]
        children.append(HypothesisNode(f"L{layer}H{head}", children=[
            HypothesisNode("q", children=q), HypothesisNode("k", children=k), HypothesisNode("v", children=v)]))
    return HypothesisNode("output", children=children)

