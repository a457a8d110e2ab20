"""A feature's corpus panel: top-activating contexts, quantile samples, density and histogram
of its activations over a corpus.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float, Int

from ..._model import ModelHandle
from ...errors import PromptError
from .saes import BoundSAE, bind_saes
from .trace import _check_feature, _padded_batches

#: Edges of the activation histograms: log-spaced, 6 bins a decade from 1e-3 to 1e3 (values
#: outside fall in the first or last bin).
HIST_EDGES = torch.logspace(-3, 3, 37)
QUANTILES = (0.1, 0.25, 0.5, 0.75, 0.9)


@dataclass
class FeatureCorpus:
    """Every feature of one SAE over a corpus: what SAEDashboard and Neuronpedia show per feature.

    Attributes:
        hook_name: the SAE's hook; ``d_sae`` its features.
        tokens: per document, its ``[pos]`` token ids (BOS first when the tokenizer adds one).
        n_tokens: tokens measured (BOS excluded); ``n_docs`` documents.
        top_values: ``[k, d_sae]`` each feature's largest activations over the corpus, largest
            first (0 where it fired fewer than ``k`` times); ``top_doc`` / ``top_pos``
            ``[k, d_sae]`` where they are (-1: none).
        count: ``[d_sae]`` how many tokens each feature fires on (density = count / n_tokens).
        hist_edges: ``[n_bins + 1]`` bin edges of :attr:`histogram`.
        histogram: ``[d_sae, n_bins]`` counts of each feature's non-zero activations per bin.
        example_doc / example_pos: ``[d_sae, n_bins]`` one token whose activation falls in that
            bin (-1: none): the samples from lower quantiles are drawn from these.
    """

    hook_name: str
    d_sae: int
    n_tokens: int
    n_docs: int
    tokens: list[torch.Tensor]
    top_values: Float[torch.Tensor, "k d_sae"]
    top_doc: Int[torch.Tensor, "k d_sae"]
    top_pos: Int[torch.Tensor, "k d_sae"]
    count: Int[torch.Tensor, " d_sae"]
    hist_edges: Float[torch.Tensor, " bins_plus_1"]
    histogram: Int[torch.Tensor, "d_sae bins"]
    example_doc: Int[torch.Tensor, "d_sae bins"]
    example_pos: Int[torch.Tensor, "d_sae bins"]

    def density(self, feature: int) -> float:
        """The fraction of corpus tokens the feature fires on."""
        _check_feature(self.hook_name, self.d_sae, feature)
        return float(self.count[feature]) / max(1, self.n_tokens)

    def top_contexts(self, feature: int) -> list[tuple[float, int, int]]:
        """``[(activation, doc, pos)]`` the feature's top activations, largest first."""
        _check_feature(self.hook_name, self.d_sae, feature)
        return [(float(v), int(d), int(p)) for v, d, p in zip(
            self.top_values[:, feature], self.top_doc[:, feature], self.top_pos[:, feature], strict=True)
            if int(d) >= 0]

    def quantile_samples(self, feature: int, quantiles: Sequence[float] = QUANTILES
                         ) -> list[tuple[float, float, float, int, int]]:
        """``[(quantile, bin_low, bin_high, doc, pos)]``: for each quantile of the feature's
        non-zero activations, a token whose activation lies in the histogram bin holding it."""
        _check_feature(self.hook_name, self.d_sae, feature)
        hist = self.histogram[feature].double()
        total = float(hist.sum())
        out: list[tuple[float, float, float, int, int]] = []
        if total == 0:
            return out
        cum = hist.cumsum(0) / total
        for q in quantiles:
            b = int(torch.searchsorted(cum, torch.tensor(float(q), dtype=torch.float64)).clamp(max=hist.shape[0] - 1))
            if int(self.example_doc[feature, b]) >= 0:
                out.append((float(q), float(self.hist_edges[b]), float(self.hist_edges[b + 1]),
                            int(self.example_doc[feature, b]), int(self.example_pos[feature, b])))
        return out


def _corpus_tokens(handle: ModelHandle, corpus: Any, max_positions: int) -> list[torch.Tensor]:
    if isinstance(corpus, torch.Tensor):
        docs = [corpus] if corpus.ndim == 1 else list(corpus)
    elif isinstance(corpus, (list, tuple)):
        docs = list(corpus)
    else:
        raise PromptError(f"corpus is a list of texts or a [docs, pos] token tensor, got {type(corpus).__name__}.")
    if not docs:
        raise PromptError("the corpus is empty: pass some texts or a token tensor.")
    return [handle.tokens(d, what="corpus document")[0, :max_positions].cpu() for d in docs]


def iter_feature_corpus(
    model: Any, sae: Any, corpus: Sequence[str] | torch.Tensor, *, k: int = 20, batch_size: int = 8,
    max_positions: int = 128,
) -> Any:
    """:func:`feature_corpus` as a generator (for a widget job): yields
    ``{"done", "total", "message"}`` after each batch, returns the :class:`FeatureCorpus`."""
    handle = ModelHandle.wrap(model)
    b = sae if isinstance(sae, BoundSAE) else bind_saes(handle, [sae])[0]
    docs = _corpus_tokens(handle, corpus, max_positions)
    d = b.d_sae
    n_bins = HIST_EDGES.shape[0] - 1
    top_v = torch.zeros(0, d)
    top_doc = torch.zeros(0, d, dtype=torch.int32)
    top_pos = torch.zeros(0, d, dtype=torch.int32)
    count = torch.zeros(d, dtype=torch.int64)
    hist = torch.zeros(d * n_bins, dtype=torch.int32)
    # one token per (feature, bin), as doc * width + pos: one write per cell, so that the doc
    # and the position of a sample always come from the same token
    width = max(t.shape[0] for t in docs)
    example = torch.full((d * n_bins,), -1, dtype=torch.int64)
    inner = HIST_EDGES[1:-1]
    n_tok = 0
    total = len(docs)
    for start, batch, keep in _padded_batches(handle, docs, batch_size):
        with handle.session():
            _, cache = handle.run_with_cache(batch, [b.hook_name], return_type=None)
            act = cache[b.hook_name]
            b.check_width(act)
            with torch.no_grad():
                f = b.encode(b.flat(act)[keep.to(handle.device)]).float().cpu()  # [n, d_sae]
        del cache, act
        rows, cols = keep.nonzero(as_tuple=True)
        doc_of = (rows + start).to(torch.int32)
        pos_of = cols.to(torch.int32)
        n_tok += f.shape[0]
        kk = min(k, f.shape[0])
        v, i = f.topk(kk, dim=0)
        v = torch.cat([top_v, v])
        order = v.topk(min(k, v.shape[0]), dim=0).indices
        top_v = v.gather(0, order)
        top_doc = torch.cat([top_doc, doc_of[i]]).gather(0, order)
        top_pos = torch.cat([top_pos, pos_of[i]]).gather(0, order)
        fired = f > 0
        count += fired.sum(0)
        nz_row, nz_feat = fired.nonzero(as_tuple=True)
        cell = nz_feat * n_bins + torch.bucketize(f[nz_row, nz_feat], inner)
        hist.index_add_(0, cell, torch.ones_like(cell, dtype=torch.int32))
        empty = example[cell] < 0
        example[cell[empty]] = doc_of[nz_row[empty]].long() * width + pos_of[nz_row[empty]].long()
        yield {"done": min(total, start + batch_size), "total": total,
               "message": f"{b.label}: {n_tok} tokens of {total} documents"}
    none = top_v <= 0
    return FeatureCorpus(
        hook_name=b.hook_name, d_sae=d, tokens=docs, n_tokens=n_tok, n_docs=total,
        top_values=top_v.masked_fill(none, 0.0), top_doc=top_doc.masked_fill(none, -1),
        top_pos=top_pos.masked_fill(none, -1), count=count, hist_edges=HIST_EDGES.clone(),
        histogram=hist.view(d, n_bins),
        example_doc=torch.where(example >= 0, example // width, -1).to(torch.int32).view(d, n_bins),
        example_pos=torch.where(example >= 0, example % width, -1).to(torch.int32).view(d, n_bins),
    )


def feature_corpus(
    model: Any, sae: Any, corpus: Sequence[str] | torch.Tensor, *, k: int = 20, batch_size: int = 8,
    max_positions: int = 128,
) -> FeatureCorpus:
    """Every feature of one SAE over a corpus, in one pass: top-activating contexts, density,
    activation histogram and samples from lower quantiles (SAEDashboard's and Neuronpedia's
    feature panel).

    Memory is that of one batch's codes (``batch tokens x d_sae``) plus ``d_sae x (3k + 3 x
    36)`` numbers; time is one forward pass and one encode per batch.

    Args:
        model: a TransformerLens model or handle.
        sae: one SAE (or a :class:`BoundSAE`).
        corpus: texts (BOS prepended) or a ``[docs, pos]`` token tensor.
        k: top activations kept per feature (default 20).
        batch_size: documents per forward pass (default 8).
        max_positions: each document is cut to this many tokens (default 128).
    """
    gen = iter_feature_corpus(model, sae, corpus, k=k, batch_size=batch_size, max_positions=max_positions)
    while True:
        try:
            next(gen)
        except StopIteration as stop:
            return stop.value  # type: ignore[no-any-return]


