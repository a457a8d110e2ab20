"""Links between the features of adjacent SAEs: the Pearson correlation of their activations
over a sample (:func:`feature_links`), decoder cosines computed lazily, for the feature looked at
(:class:`DecoderLinks`), and a feature's :func:`lineage` across the SAEs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from jaxtyping import Float, Int

from ..._model import ModelHandle
from ...errors import PromptError, SAEError
from .effects import _to_residual
from .saes import BoundSAE, _as_bound
from .trace import _check_feature, _padded_batches, _sae_index

LinkMetric = Literal["correlation", "cosine"]


@dataclass
class LinkTable:
    """The top links from each feature of one SAE to the features of an adjacent one.

    Attributes:
        indices: ``[d_sae_from, n_links]`` linked features of the other SAE, best first.
        correlation: ``[d_sae_from, n_links]`` Pearson correlation of the activations.
        cosine: ``[d_sae_from, n_links]`` cosine similarity of the decoder directions (NaN when
            the two SAEs' ``d_in`` differ).
    """

    indices: Int[torch.Tensor, "feature n"]
    correlation: Float[torch.Tensor, "feature n"]
    cosine: Float[torch.Tensor, "feature n"]


@dataclass
class FeatureLinks:
    """Links between features of adjacent SAEs (Balcells et al. 2024).

    Attributes:
        hook_names: the SAEs' hooks in forward order; pair ``p`` links ``hook_names[p]`` to
            ``hook_names[p + 1]``.
        by: the statistic the links are ranked by (``"correlation"`` or ``"cosine"``).
        successors: per pair, a :class:`LinkTable` over the earlier SAE's features (its top
            links in the later SAE).
        predecessors: per pair, a :class:`LinkTable` over the later SAE's features.
        frequency: per SAE, ``[d_sae]`` the fraction of sample tokens each feature fires on.
        n_tokens: how many tokens (BOS excluded) the correlations were measured on.
        n_prompts: how many prompts those tokens came from.
    """

    hook_names: list[str]
    by: str
    successors: list[LinkTable]
    predecessors: list[LinkTable]
    frequency: list[torch.Tensor]
    n_tokens: int
    n_prompts: int

    def links(
        self, sae: int | str, feature: int, direction: Literal["successors", "predecessors"]
    ) -> list[dict[str, Any]]:
        """Links of one feature: ``[{"sae", "hook_name", "feature", "correlation", "cosine"}]``."""
        i = _sae_index(self.hook_names, sae)
        if direction == "successors":
            if i + 1 >= len(self.hook_names):
                return []
            table, other = self.successors[i], i + 1
        else:
            if i == 0:
                return []
            table, other = self.predecessors[i - 1], i - 1
        if not 0 <= feature < table.indices.shape[0]:
            raise SAEError(f"feature {feature} is out of range for {self.hook_names[i]!r}.")
        out = []
        for j in range(table.indices.shape[1]):
            out.append({
                "sae": other,
                "hook_name": self.hook_names[other],
                "feature": int(table.indices[feature, j]),
                "correlation": float(table.correlation[feature, j]),
                "cosine": float(table.cosine[feature, j]),
            })
        return out

    def links_many(
        self, sae: int | str, features: Sequence[int], direction: Literal["successors", "predecessors"]
    ) -> list[list[dict[str, Any]]]:
        """:meth:`links` of several features of one SAE."""
        return [self.links(sae, f, direction) for f in features]


def default_link_prompts(model: Any, n: int = 48, seed: int = 12345) -> list[str]:
    """Sample prompts for :func:`feature_links`: the zoo's generated text for zoo models.

    Raises:
        SAEError: the model is not a zoo model, so there is no default sample.
    """
    handle = ModelHandle.wrap(model)
    name = str(getattr(handle.cfg, "model_name", "") or "")
    if name == "toy-lm":
        from ...zoo import tasks

        # a few documents run past the context window: keep the first n that fit
        fits = [t for t in tasks.sample_text(2 * n, seed=seed, n_segments=6)
                if handle.encode(t, bos=None).shape[1] <= handle.n_ctx]
        return fits[:n]
    raise SAEError(
        f"cross-layer links need sample prompts for {name or 'this model'}: pass "
        f"link_prompts= (a few dozen texts like the ones the SAEs were trained on)."
    )


def _batched_tokens(handle: ModelHandle, prompts: Sequence[str | torch.Tensor],
                    max_positions: int) -> list[torch.Tensor]:
    out = []
    for p in prompts:
        t = handle.tokens(p, what="link prompt")
        out.append(t[0, :max_positions])
    return out


def _collect_acts(
    handle: ModelHandle, bound: Sequence[BoundSAE], prompts: Sequence[str | torch.Tensor], *,
    max_tokens: int, batch_size: int, max_positions: int,
) -> tuple[list[torch.Tensor], int]:
    """Dense feature activations ``[n_tokens, d_sae]`` per SAE over the prompts (BOS dropped)."""
    if not prompts:
        raise PromptError("link_prompts is empty: pass some sample texts, or None for the default.")
    toks = _batched_tokens(handle, prompts, max_positions)
    names = [b.hook_name for b in bound]
    per_sae: list[list[torch.Tensor]] = [[] for _ in bound]
    taken = 0
    for _, batch, keep in _padded_batches(handle, toks, batch_size):
        _, cache = handle.run_with_cache(batch, names, return_type=None)
        keep_dev = keep.to(handle.device)
        for i, b in enumerate(bound):
            act = cache[b.hook_name]
            b.check_width(act)
            x = b.flat(act)[keep_dev]
            per_sae[i].append(b.encode(x).float().cpu())
        taken += int(keep.sum())
        if taken >= max_tokens:
            break
    acts = [torch.cat(chunks)[:max_tokens] for chunks in per_sae]
    return acts, min(taken, max_tokens)


def _standardise(x: torch.Tensor) -> torch.Tensor:
    """Columns centred and scaled so that ``a.T @ b`` is the Pearson correlation (0 if constant)."""
    x = x.double()
    xc = x - x.mean(0, keepdim=True)
    norm = xc.norm(dim=0, keepdim=True)
    return torch.where(norm > 0, xc / norm.clamp(min=1e-300), torch.zeros_like(xc))


def _pair_links(
    za: torch.Tensor, zb: torch.Tensor, wa: torch.Tensor | None, wb: torch.Tensor | None,
    n_links: int, by: str, chunk: int = 2048,
) -> tuple[LinkTable, LinkTable]:
    """Top links both ways between two SAEs, computed in row chunks (never all d_a x d_b at once
    for large SAEs)."""
    d_a, d_b = za.shape[1], zb.shape[1]
    n_s, n_p = min(n_links, d_b), min(n_links, d_a)
    s_idx = torch.zeros(d_a, n_s, dtype=torch.long)
    s_cor = torch.zeros(d_a, n_s)
    s_cos = torch.zeros(d_a, n_s)
    p_score = torch.full((n_p, d_b), -math.inf, dtype=torch.float64)
    p_idx = torch.zeros(n_p, d_b, dtype=torch.long)
    p_cor = torch.zeros(n_p, d_b, dtype=torch.float64)
    p_cos = torch.zeros(n_p, d_b, dtype=torch.float64)
    for lo in range(0, d_a, chunk):
        hi = min(d_a, lo + chunk)
        cor = za[:, lo:hi].T @ zb  # [c, d_b]
        cos = (wa[lo:hi] @ wb.T) if wa is not None and wb is not None else torch.full_like(cor, math.nan)
        score = cor if by == "correlation" else cos
        if by == "cosine" and wa is None:
            score = cor
        i = score.topk(n_s, dim=1).indices
        s_idx[lo:hi] = i
        s_cor[lo:hi] = cor.gather(1, i).float()
        s_cos[lo:hi] = cos.gather(1, i).float()
        v0, i0 = score.topk(min(n_p, hi - lo), dim=0)  # [n, d_b], rows of this chunk
        cand_score = torch.cat([p_score, v0])
        cand_idx = torch.cat([p_idx, i0 + lo])
        cand_cor = torch.cat([p_cor, cor.gather(0, i0)])
        cand_cos = torch.cat([p_cos, cos.gather(0, i0)])
        best = cand_score.topk(n_p, dim=0).indices
        p_score = cand_score.gather(0, best)
        p_idx = cand_idx.gather(0, best)
        p_cor = cand_cor.gather(0, best)
        p_cos = cand_cos.gather(0, best)
    succ = LinkTable(s_idx, s_cor, s_cos)
    pred = LinkTable(p_idx.T.contiguous(), p_cor.T.float().contiguous(), p_cos.T.float().contiguous())
    return succ, pred


def feature_links(
    model: Any,
    saes: Any,
    prompts: Sequence[str | torch.Tensor] | None = None,
    *,
    n_links: int = 5,
    by: LinkMetric = "correlation",
    max_tokens: int = 8192,
    batch_size: int = 16,
    max_positions: int = 128,
) -> FeatureLinks:
    """Link the features of adjacent SAEs by decoder cosine and activation correlation.

    For each pair of SAEs next to each other in the forward pass (``L0 pre`` → ``L1 pre`` →
    ...), following Balcells et al. 2024:

    - decoder cosine similarity ``cos(W_dec_a[i], W_dec_b[j])``: needs only weights, defined
      when both SAEs have the same ``d_in`` (NaN otherwise);
    - Pearson correlation of ``f_a[:, i]`` and ``f_b[:, j]`` over the tokens of ``prompts``
      (BOS excluded); a feature that never fires on the sample correlates 0 with everything.

    Args:
        model: a TransformerLens model or handle.
        saes: SAEs as :func:`bind_saes` takes them (at least two for any link).
        prompts: sample texts; None uses :func:`default_link_prompts` (the zoo's generated text
            for ``toy-lm``; other models must pass prompts).
        n_links: links kept per feature and direction (default 5).
        by: rank links by ``"correlation"`` (default) or ``"cosine"``.
        max_tokens: stop after this many sample tokens (default 8192).
        batch_size: prompts per forward pass (default 16).
        max_positions: truncate each prompt to this many tokens (default 128).
    """
    if by not in ("correlation", "cosine"):
        raise SAEError(f"by={by!r}: rank links by 'correlation' or 'cosine'.")
    handle = ModelHandle.wrap(model)
    bound = _as_bound(handle, saes)
    if prompts is None:
        prompts = default_link_prompts(handle)
    with handle.session():
        acts, n_tok = _collect_acts(handle, bound, list(prompts), max_tokens=max_tokens,
                                    batch_size=batch_size, max_positions=max_positions)
        z = [_standardise(a) for a in acts]
        dirs = [torch.nn.functional.normalize(b.W_dec.detach().double().cpu(), dim=-1) for b in bound]
        succ, pred = [], []
        for p in range(len(bound) - 1):
            same = bound[p].d_in == bound[p + 1].d_in
            s, q = _pair_links(z[p], z[p + 1], dirs[p] if same else None,
                               dirs[p + 1] if same else None, n_links, by)
            succ.append(s)
            pred.append(q)
    return FeatureLinks(
        hook_names=[b.hook_name for b in bound],
        by=by,
        successors=succ,
        predecessors=pred,
        frequency=[(a > 0).float().mean(0) for a in acts],
        n_tokens=n_tok,
        n_prompts=len(prompts),
    )


#: Decoder rows scanned at once by the lazy links (:class:`DecoderLinks`): at most a
#: ``chunk x d_model`` copy (for SAEs whose rows are mapped into the residual stream) and a
#: ``queries x chunk`` block of cosines are held at a time.
LINK_CHUNK = 16384


def decoder_cosine_top_k(
    queries: Float[torch.Tensor, "n d"], rows: Any, n_rows: int, k: int, *, chunk: int = LINK_CHUNK,
    norms: torch.Tensor | None = None,
) -> tuple[Int[torch.Tensor, "n k"], Float[torch.Tensor, "n k"]]:
    """The ``k`` rows most cosine-similar to each query, scanning the rows one chunk at a time.

    Args:
        queries: ``[n, d]`` query directions.
        rows: ``rows(lo, hi)`` returns rows ``lo..hi-1`` as a ``[hi - lo, d]`` float tensor
            (e.g. a slice of ``W_dec``); nothing larger than one chunk is ever built.
        n_rows: how many rows there are.
        k: how many to keep per query (at most ``n_rows``).
        chunk: rows per step (default :data:`LINK_CHUNK`).
        norms: ``[n_rows]`` the rows' norms, if known (saves a pass over each chunk).

    Returns:
        ``(indices, cosines)``, each ``[n, k]``, most similar first: exactly the top-k of the dense
        ``normalize(queries) @ normalize(all rows).T`` (a zero row has cosine 0).
    """
    q = torch.nn.functional.normalize(queries.detach().float(), dim=-1)
    k = min(int(k), n_rows)
    best_v = torch.empty(q.shape[0], 0, device=q.device)
    best_i = torch.empty(q.shape[0], 0, dtype=torch.long, device=q.device)
    for lo in range(0, n_rows, chunk):
        hi = min(n_rows, lo + chunk)
        w = rows(lo, hi)
        norm = w.norm(dim=-1) if norms is None else norms[lo:hi]
        cos = (w @ q.T).T / norm.clamp(min=1e-12)  # [n, hi - lo]
        v, i = cos.topk(min(k, hi - lo), dim=1)
        v, order = torch.cat([best_v, v], 1).topk(min(k, best_v.shape[1] + v.shape[1]), dim=1)
        best_i = torch.cat([best_i, i + lo], 1).gather(1, order)
        best_v = v
    return best_i, best_v


class DecoderLinks:
    """Links between features of adjacent SAEs by decoder cosine, computed lazily, on demand.

    The cost of :func:`feature_links` grows with ``d_sae^2`` (every feature against every
    feature of the next SAE, over a sample); at real dictionary sizes (24k–1M features) that is
    minutes and gigabytes. This object computes nothing up front: asking for a feature's links
    scans the adjacent SAE's decoder once, one chunk of :data:`LINK_CHUNK` rows at a time, and
    keeps a running top-k (:func:`decoder_cosine_top_k`), so a click costs one pass over one
    decoder per hop and memory of one chunk. Results are cached per (SAE, feature, direction).

    Directions are compared in the residual stream (:func:`residual_directions`: ``W_dec`` for
    residual-width hooks, through ``W_O`` for ``attn.hook_z`` and ``W_out`` for
    ``mlp.hook_post``), so SAEs on different hooks compare. An SAE whose features do not write the
    residual stream has no links (an empty list).

    It answers the same questions as :class:`FeatureLinks` (``links``, ``links_many``, what
    :func:`lineage` uses), ranked by cosine; ``correlation`` is None (no activation sample).

    Args:
        model: a TransformerLens model or handle.
        saes: SAEs as :func:`bind_saes` takes them.
        n_links: links kept per feature and direction (default 5).
        chunk: decoder rows per step (default :data:`LINK_CHUNK`).
    """

    by = "cosine"
    n_tokens = 0
    n_prompts = 0
    frequency = None

    def __init__(self, model: Any, saes: Any, *, n_links: int = 5, chunk: int = LINK_CHUNK) -> None:
        self._handle = ModelHandle.wrap(model)
        self.saes = _as_bound(self._handle, saes)
        self.hook_names = [b.hook_name for b in self.saes]
        self.n_links = int(n_links)
        self.chunk = int(chunk)
        self._cache: dict[tuple[int, int, str], list[dict[str, Any]]] = {}
        self._norms: dict[int, torch.Tensor] = {}

    def _row_norms(self, i: int) -> torch.Tensor:
        """``[d_sae]`` the norms of SAE ``i``'s rows in the residual stream (one chunked pass,
        the first time they are needed)."""
        if i not in self._norms:
            rows, d = self._rows(i), self.saes[i].d_sae
            with torch.no_grad():
                self._norms[i] = torch.cat([rows(lo, min(d, lo + self.chunk)).norm(dim=-1)
                                            for lo in range(0, d, self.chunk)])
        return self._norms[i]

    def _writes_residual(self, i: int) -> bool:
        try:
            _to_residual(self._handle, self.saes[i], self.saes[i].W_dec[:1].detach().float())
        except SAEError:
            return False
        return True

    def prepare(self) -> DecoderLinks:
        """Compute every SAE's row norms now (one pass over each decoder), so that the first
        click costs no more than later ones; returns ``self``."""
        for i in range(len(self.saes)):
            if self._writes_residual(i):
                self._row_norms(i)
        return self

    def _rows(self, i: int) -> Any:
        b = self.saes[i]
        return lambda lo, hi: _to_residual(self._handle, b, b.W_dec[lo:hi].detach().float())

    def links(
        self, sae: int | str, feature: int, direction: Literal["successors", "predecessors"]
    ) -> list[dict[str, Any]]:
        """Links of one feature: ``[{"sae", "hook_name", "feature", "correlation", "cosine"}]``."""
        return self.links_many(sae, [feature], direction)[0]

    def links_many(
        self, sae: int | str, features: Sequence[int], direction: Literal["successors", "predecessors"]
    ) -> list[list[dict[str, Any]]]:
        """:meth:`links` of several features of one SAE, with one pass over the other decoder."""
        i = _sae_index(self.hook_names, sae)
        for f in features:
            _check_feature(self.hook_names[i], self.saes[i].d_sae, f)
        other = i + 1 if direction == "successors" else i - 1
        if direction not in ("successors", "predecessors"):
            raise SAEError(f"direction={direction!r}: use 'successors' or 'predecessors'.")
        if not 0 <= other < len(self.saes) or not (self._writes_residual(i) and self._writes_residual(other)):
            return [[] for _ in features]
        todo = sorted({int(f) for f in features if (i, int(f), direction) not in self._cache})
        if todo:
            with torch.no_grad():
                q = self._rows(i)
                queries = torch.cat([q(f, f + 1) for f in todo])
                idx, cos = decoder_cosine_top_k(queries, self._rows(other), self.saes[other].d_sae,
                                                self.n_links, chunk=self.chunk, norms=self._row_norms(other))
            for row, f in enumerate(todo):
                self._cache[(i, f, direction)] = [
                    {"sae": other, "hook_name": self.hook_names[other], "feature": int(g),
                     "correlation": None, "cosine": float(c)}
                    for g, c in zip(idx[row].tolist(), cos[row].tolist(), strict=True)
                ]
        return [list(self._cache[(i, int(f), direction)]) for f in features]


def lineage(
    links: FeatureLinks | DecoderLinks, sae: int | str, feature: int, *, per_node: int = 3, per_layer: int = 6,
    min_correlation: float = 0.0,
) -> dict[str, Any]:
    """The feature's links followed through every earlier and later SAE (a small flow graph).

    From the feature, the top ``per_node`` links of each node are followed one SAE at a time in
    both directions, keeping at most ``per_layer`` nodes per SAE (the strongest).

    Returns:
        ``{"nodes": [{"sae", "feature", "score"}], "edges": [{"from": [sae, feature],
        "to": [sae, feature], "correlation", "cosine"}]}``; edges point forward in the model.
    """
    start = _sae_index(links.hook_names, sae)
    nodes: dict[tuple[int, int], float] = {(start, int(feature)): 1.0}
    edges: dict[tuple[tuple[int, int], tuple[int, int]], dict[str, Any]] = {}
    key = "correlation" if links.by == "correlation" else "cosine"
    for direction, step in (("successors", 1), ("predecessors", -1)):
        frontier = [(start, int(feature))]
        layer = start
        while frontier:
            nxt: dict[int, float] = {}
            found = links.links_many(layer, [f for _, f in frontier], direction)  # type: ignore[arg-type]
            for (s, f), out in zip(frontier, found, strict=True):
                for link in out[:per_node]:
                    value = link[key]
                    if not math.isfinite(value) or value <= min_correlation:
                        continue
                    g = link["feature"]
                    src, dst = ((s, f), (s + step, g)) if step > 0 else ((s + step, g), (s, f))
                    edges[(src, dst)] = {"from": list(src), "to": list(dst),
                                         "correlation": link["correlation"], "cosine": link["cosine"]}
                    nxt[g] = max(nxt.get(g, -math.inf), value)
            layer += step
            best = sorted(nxt.items(), key=lambda t: -t[1])[:per_layer]
            for g, v in best:
                nodes.setdefault((layer, g), v)
            keep = {g for g, _ in best}
            edges = {k: e for k, e in edges.items()
                     if not ((k[1] if step > 0 else k[0])[0] == layer
                             and (k[1] if step > 0 else k[0])[1] not in keep)}
            frontier = [(layer, g) for g, _ in best]
    return {
        "nodes": [{"sae": s, "feature": f, "score": v} for (s, f), v in sorted(nodes.items())],
        "edges": list(edges.values()),
    }


