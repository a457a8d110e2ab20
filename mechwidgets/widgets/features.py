"""The SAE feature widget: which features fire on each token, how they carry across layers, and
what switching one off or turning it up does downstream.

Python owns the model and the SAEs; the frontend (``js/features.ts``) draws. Everything on screen
lives in traits (a saved notebook redraws it with no kernel); clicks that need the model go
through the request protocol of :class:`~mechwidgets.widgets._base.MechWidget`:

- ``select_token {pos}`` → ``selected_token`` (the token's top features per SAE are already in
  the ``top`` trait, so the bars draw at once);
- ``select_feature {sae, feature}`` → ``selected_feature`` and ``feature`` (activation over the
  prompt, logit effects, lineage across the SAEs);
- ``intervene {interventions}`` → ``interventions`` and ``intervention`` (predictions and loss
  before vs after, downstream features that changed, counts of the edited run).

The maths is in :mod:`mechwidgets.analysis.features`.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import traitlets

from .._args import Float, Int, ListOf, OneOf, Record, Str, as_int
from .._fingerprint import JOB_BUDGET, Stamp, check_unchanged
from .._model import ModelHandle
from .._tensor import encode_array
from ..analysis.features import (
    INTERVENTION_MODES,
    BoundSAE,
    DecoderLinks,
    FeatureCorpus,
    FeatureIntervention,
    FeatureLinks,
    FeatureTrace,
    InterventionResult,
    bind_saes,
    default_link_prompts,
    feature_activations,
    feature_links,
    features_promoting,
    intervene_features,
    iter_feature_corpus,
    lineage,
    logit_effect_matrix,
    logit_effects_of,
    residual_directions,
)
from ..errors import SAEError
from ._base import MechWidget
from ._requests import page_request
from ._svg import heatmap_svg

#: Promoted tokens shown as a feature's label.
LABEL_TOKENS = 3
#: Promoted / suppressed tokens listed in a feature's detail.
DETAIL_TOKENS = 8
#: Downstream features listed after an intervention.
N_CHANGES = 12
#: ``link_by="auto"`` measures activation correlations over a sample (dense, every feature
#: against every feature of the next SAE) only while the adjacent SAEs' ``d_a x d_b`` products
#: sum to at most this (well under a second); larger SAEs get lazy decoder-cosine links.
DENSE_LINK_BUDGET = 2**22
#: Feature labels (one ``d_model x d_vocab`` product per feature) are all computed when the widget
#: is built only while ``features x d_model x d_vocab`` stays under this (about a second);
#: otherwise a token's labels are computed when it is selected.
LABEL_BUDGET = 2**31
LINK_MODES = ("auto", "correlation", "cosine")
#: Tokens shown before / after the activating token of a corpus context.
CONTEXT_BEFORE, CONTEXT_AFTER = 10, 3
#: Features listed by a search for a token.
N_SEARCH = 10


def _n_pos(w: FeaturesWidget) -> int:
    """Positions of the prompt (Python-side state, never the page's traits)."""
    return len(w.trace.str_tokens)


#: The request arguments the page may send (checked before any handler runs); a feature's range
#: depends on its SAE and is checked by the handler against the trace.
_SAE = OneOf(Int(0, lambda w: len(w.trace.hook_names) - 1), Str(choices=lambda w: w.trace.hook_names))
_FEATURE = Int(0, lambda w: max(w.trace.d_sae) - 1)
_INTERVENTION = Record({
    "sae": OneOf(Int(0, lambda w: len(w.trace.hook_names) - 1), Str(choices=lambda w: w.trace.hook_names),
                 optional=True),
    "hook_name": Str(choices=lambda w: w.trace.hook_names, optional=True),
    "feature": _FEATURE,
    "mode": Str(choices=INTERVENTION_MODES, optional=True),
    "value": Float(optional=True, nullable=True),
    "positions": ListOf(Int(lambda w: -_n_pos(w), lambda w: _n_pos(w) - 1), max_len=_n_pos,
                        optional=True, nullable=True),
})


def _predictions_state(pred: Any) -> dict[str, Any]:
    return {"tokens": pred.str_tokens, "token_ids": pred.token_ids, "probs": encode_array(pred.probs)}


def _overview_state(trace: FeatureTrace) -> dict[str, Any]:
    return {
        "n_active": encode_array(trace.n_active, "int32"),
        "total": encode_array(trace.total_activation),
    }


def _top_state(trace: FeatureTrace) -> dict[str, Any]:
    return {
        "indices": encode_array(trace.top_indices, "int32"),
        "values": encode_array(trace.top_values),
    }


class FeaturesWidget(MechWidget):
    """SAE features per token and layer, their cross-layer lineage, and live interventions.

    Build it with :func:`mechwidgets.show_features`. Traits (all synced):

    - ``prompt``, ``tokens`` (str tokens), ``hook_names``, ``sae_labels`` (``"L1 pre"``),
      ``d_sae`` (features per SAE)
    - ``overview``: ``{n_active: [sae, pos] int32, total: [sae, pos] float32}``;
      ``colour_by``: ``"count"`` or ``"total"``, which of the two colours the overview
    - ``top``: ``{indices: [sae, pos, k] int32 (-1: none), values: [sae, pos, k] float32}``
    - ``recon``: ``{explained_variance: [sae], relative_error: [sae], error_norm: [sae, pos],
      act_norm: [sae, pos]}`` (float32): how well each SAE reconstructs its hook on this prompt
    - ``feature_labels``: per SAE, ``{feature: [top promoted tokens]}`` for every feature in ``top``
    - ``selected_token`` (-1: none), ``selected_feature`` (``{sae, feature}`` or ``{}``)
    - ``feature``: the selected feature's detail: ``activations`` ``[pos]``, ``promoted`` /
      ``suppressed`` logit effects, ``lineage`` (``nodes``, ``edges`` across the SAEs),
      ``frequency`` on the link sample (None for decoder-cosine links)
    - ``interventions``: ``[{sae, hook_name, feature, mode, value, positions}]`` in force
    - ``intervention``: the last run's predictions, per-token loss before vs after, the
      downstream features that changed, and the edited run's ``overview``
    - ``links_info``: what the cross-layer links were measured on (``by``: ``"correlation"`` or
      ``"cosine"``)
    - ``corpus_info``: ``{n_docs, source, done: [SAE indices whose corpus panel is computed]}``;
      the ``corpus`` request (a job with progress and cancel) computes one SAE's panel, which
      ``feature["corpus"]`` then carries: top-activating contexts, quantile samples, density and
      histogram
    - ``search``: the last ``search`` request's answer (features promoting a token)
    """

    _bundle = "features.js"

    prompt = traitlets.Unicode("").tag(sync=True)
    tokens = traitlets.List(traitlets.Unicode()).tag(sync=True)
    hook_names = traitlets.List(traitlets.Unicode()).tag(sync=True)
    sae_labels = traitlets.List(traitlets.Unicode()).tag(sync=True)
    d_sae = traitlets.List(traitlets.Int()).tag(sync=True)
    overview = traitlets.Dict({}).tag(sync=True)
    colour_by = traitlets.Unicode("count").tag(sync=True)
    top = traitlets.Dict({}).tag(sync=True)
    recon = traitlets.Dict({}).tag(sync=True)
    feature_labels: traitlets.List[dict[str, list[str]]] = traitlets.List([]).tag(sync=True)
    selected_token = traitlets.Int(-1).tag(sync=True)
    selected_feature = traitlets.Dict({}).tag(sync=True)
    feature = traitlets.Dict({}).tag(sync=True)
    interventions: traitlets.List[dict[str, Any]] = traitlets.List([]).tag(sync=True)
    intervention = traitlets.Dict({}).tag(sync=True)
    links_info = traitlets.Dict({}).tag(sync=True)
    corpus_info = traitlets.Dict({}).tag(sync=True)
    search = traitlets.Dict({}).tag(sync=True)

    def __init__(
        self,
        model: Any,
        saes: Any,
        prompt: str | torch.Tensor,
        *,
        top_k: int = 8,
        links: FeatureLinks | DecoderLinks | None = None,
        link_prompts: Sequence[str] | None = None,
        n_links: int = 5,
        link_by: str = "auto",
        colour_by: str = "auto",
        max_positions: int = 512,
        corpus: Sequence[str] | torch.Tensor | None = None,
        **kwargs: Any,
    ) -> None:
        if link_by not in LINK_MODES:
            raise SAEError(
                f"link_by={link_by!r}: use 'correlation' (activations over a sample: every feature "
                f"against every feature, slow for large SAEs), 'cosine' (decoder directions, "
                f"computed for the feature you click) or 'auto'."
            )
        if colour_by not in ("auto", "count", "total"):
            raise SAEError(
                f"colour_by={colour_by!r}: use 'count' (features firing), 'total' (their summed "
                f"activation) or 'auto'."
            )
        handle = ModelHandle.wrap(model)
        bound = bind_saes(handle, saes)
        self._handle = handle
        self._bound = bound
        self._prompt_input = prompt
        self._max_positions = max_positions
        self._top_k = top_k
        t0 = time.perf_counter()
        self.trace: FeatureTrace = feature_activations(
            handle, bound, prompt, top_k=top_k, max_positions=max_positions
        )
        self._tokens = self.trace.tokens[None].to(handle.device)
        source = "given"
        if links is None and link_by == "auto":
            pairs = sum(a.d_sae * b.d_sae for a, b in itertools.pairwise(bound))
            link_by = "correlation" if pairs <= DENSE_LINK_BUDGET else "cosine"
        #: how the widget measured its links (recomputed when the model changes), None: given
        self._link_args: tuple[str, Any, int] | None
        if links is None and link_by == "cosine":
            links = DecoderLinks(handle, bound, n_links=n_links).prepare() if len(bound) > 1 else None
            source = "decoder weights, computed for the feature you select"
            self._link_args = ("cosine", None, n_links)
        elif links is None:
            if link_prompts is None:
                try:
                    link_prompts = default_link_prompts(handle)
                    source = "zoo sample text"
                except SAEError:
                    link_prompts = [self._tokens]  # type: ignore[list-item]
                    source = "this prompt only (pass link_prompts= for a real sample)"
            else:
                source = "link_prompts"
            links = feature_links(handle, bound, link_prompts, n_links=n_links) if len(bound) > 1 else None
            self._link_args = ("correlation", link_prompts, n_links)
        elif list(links.hook_names) != [b.hook_name for b in bound]:
            raise SAEError(
                f"links= was computed for the SAEs {links.hook_names}, not for these "
                f"({[b.hook_name for b in bound]}): recompute it with feature_links(model, saes)."
            )
        else:
            self._link_args = None  # given links are the caller's: kept as they are
        self._seconds = time.perf_counter() - t0  # a recompute's expected cost
        #: the model and SAEs as the trace and links saw them (taken after the first runs: a
        #: TransformerBridge wires hooks of its own on its first forward)
        self._stamp = Stamp(handle.model, *(b.sae for b in bound))
        self.links: FeatureLinks | DecoderLinks | None = links
        corpus_source = "corpus"
        if corpus is None:
            try:
                corpus = default_link_prompts(handle)
                corpus_source = "zoo sample text"
            except SAEError:
                corpus_source = ""
        self._corpus = corpus
        #: per SAE index, its corpus panel once the ``corpus`` job has computed it
        self.corpus_stats: dict[int, FeatureCorpus] = {}
        self.last_intervention: InterventionResult | None = None
        #: what is on screen, as Python recorded it (the traits are the page's to write)
        self._selected: tuple[int, int] | None = None
        self._interventions: list[dict[str, Any]] = []
        self._clean_logits: torch.Tensor | None = None
        self._label_cache: list[dict[int, list[str]]] = [{} for _ in bound]
        labels = self._top_labels()
        t = self.trace
        if colour_by == "auto":
            # TopK SAEs fire exactly k features everywhere: their counts say nothing
            counts = t.n_active[:, 1:] if t.n_active.shape[1] > 1 else t.n_active
            constant = bool((counts == counts[:, :1]).all())
            colour_by = "total" if constant else "count"
        MechWidget.__init__(
            self,
            prompt=prompt if isinstance(prompt, str) else "".join(t.str_tokens),
            tokens=t.str_tokens,
            hook_names=t.hook_names,
            sae_labels=t.labels,
            d_sae=t.d_sae,
            colour_by=colour_by,
            **self._trace_state(labels),
            links_info={
                "n_tokens": links.n_tokens if links else 0,
                "n_prompts": links.n_prompts if links else 0,
                "by": links.by if links else "",
                "source": source if links else "no links: a single SAE",
            },
            corpus_info={"n_docs": 0 if corpus is None else len(corpus), "source": corpus_source, "done": []},
            **kwargs,
        )

    def _trace_state(self, labels: list[dict[str, list[str]]]) -> dict[str, Any]:
        """The traits drawn from the trace."""
        t = self.trace
        return {
            "overview": _overview_state(t),
            "top": _top_state(t),
            "recon": {
                "explained_variance": encode_array(t.explained_variance),
                "relative_error": encode_array(t.relative_error),
                "error_norm": encode_array(t.error_norm),
                "act_norm": encode_array(t.act_norm),
            },
            "feature_labels": labels,
        }

    def _top_labels(self) -> list[dict[str, list[str]]]:
        """Labels of every feature in the trace's top lists, where that costs little (else none:
        each token's are computed when it is selected)."""
        shown = [sorted({int(f) for f in self.trace.top_indices[i].flatten().tolist() if f >= 0})
                 for i in range(len(self._bound))]
        cost = sum(map(len, shown)) * self._handle.d_model * self._handle.d_vocab
        return self._labels_for(shown if cost <= LABEL_BUDGET else [[] for _ in self._bound])

    def _before_request(self, kind: str) -> None:
        """The model or an SAE changed since the trace was taken: recompute the trace, the
        clean logits, the labels, the links this widget measured, and what is on screen (the
        selected feature, the interventions in force) before the click runs."""
        change = self._stamp.stale()
        if change is None:
            return
        with self._recomputing(change, self._seconds):
            t0 = time.perf_counter()
            handle, bound = self._handle, self._bound
            self.trace = feature_activations(handle, bound, self._prompt_input, top_k=self._top_k,
                                             max_positions=self._max_positions)
            if self._link_args is not None and self.links is not None:
                by, prompts, n_links = self._link_args
                self.links = (DecoderLinks(handle, bound, n_links=n_links).prepare() if by == "cosine"
                              else feature_links(handle, bound, prompts, n_links=n_links))
            self.corpus_stats = {}  # the corpus panels are of the old model: asked for again
            self.corpus_info = {**self.corpus_info, "done": []}
            self._clean_logits = None
            self._label_cache = [{} for _ in bound]
            self._stamp.renew()
            self._seconds = time.perf_counter() - t0
            with self.hold_sync():
                for name, value in self._trace_state(self._top_labels()).items():
                    setattr(self, name, value)
            if self._selected is not None and kind != "select_feature":
                self._req_select_feature(*self._selected)
            if self._interventions and kind != "intervene":
                self._req_intervene([dict(iv) for iv in self._interventions])

    # ------------------------------------------------------------ helpers
    def _labels_for(self, features: Sequence[Sequence[int]]) -> list[dict[str, list[str]]]:
        """Top promoted tokens of features (cached), as the ``feature_labels`` trait's shape.
        The new features of every SAE go through the unembedding together (one pass over
        ``W_U``, the largest matrix read here)."""
        new = [(i, f) for i, feats in enumerate(features) for f in dict.fromkeys(feats)
               if f not in self._label_cache[i]]
        if new:
            with torch.no_grad():
                dirs = torch.cat([residual_directions(self._handle, self._bound[i], [f for j, f in new if j == i])
                                  for i in sorted({i for i, _ in new})])
                eff = logit_effects_of(self._handle, dirs, ln_scale=self.trace.ln_scale)
            ids = eff.topk(min(LABEL_TOKENS, eff.shape[-1]), dim=-1).indices
            uniq = sorted(set(ids.flatten().tolist()))
            strs = dict(zip(uniq, self._handle.model.to_str_tokens(torch.tensor(uniq)), strict=True))
            order = sorted(new, key=lambda t: t[0])  # the rows of dirs: by SAE, then as asked
            for (i, f), row in zip(order, ids.tolist(), strict=True):
                self._label_cache[i][f] = [str(strs[t]) for t in row]
        return [{str(f): toks for f, toks in sorted(cache.items())} for cache in self._label_cache]

    def _sae(self, sae: Any) -> int:
        return self.trace.index(sae)

    def _check_feature(self, i: int, feature: Any) -> int:
        d = self.trace.d_sae[i]
        return as_int(feature, "feature", lo=0, hi=d - 1, error=SAEError,
                      hint=f" The SAE on {self.trace.hook_names[i]!r} has features 0..{d - 1}.")

    # ------------------------------------------------------------ requests
    @page_request(pos=Int(0, lambda w: _n_pos(w) - 1))
    def _req_select_token(self, pos: int) -> dict[str, Any]:
        n = len(self.trace.str_tokens)
        pos = as_int(pos, "token position", lo=0, hi=n - 1, error=SAEError,
                     hint=f" The prompt has positions 0..{n - 1}.")
        labels = self._labels_for([[int(f) for f in self.trace.top_indices[i, pos].tolist() if f >= 0]
                                   for i in range(len(self._bound))])
        with self.hold_sync():
            if labels != self.feature_labels:
                self.feature_labels = labels
            self.selected_token = pos
        return {"pos": pos}

    @page_request(sae=_SAE, feature=_FEATURE)
    def _req_select_feature(self, sae: Any, feature: int) -> dict[str, Any]:
        i = self._sae(sae)
        feature = self._check_feature(i, feature)
        t = self.trace
        acts = t.feature_values(i, feature)
        with torch.no_grad():
            eff = logit_effect_matrix(self._handle, self._bound[i], [feature], ln_scale=t.ln_scale)[0]
        k = min(DETAIL_TOKENS, eff.shape[-1])
        pv, pi = eff.topk(k)
        sv, si = (-eff).topk(k)
        ids = sorted(set(pi.tolist()) | set(si.tolist()))
        strs = dict(zip(ids, (str(s) for s in self._handle.model.to_str_tokens(torch.tensor(ids))), strict=True))
        graph: dict[str, Any] = {"nodes": [{"sae": i, "feature": feature, "score": 1.0}], "edges": []}
        freq = None
        if self.links is not None:
            graph = lineage(self.links, i, feature)
            if self.links.frequency is not None:
                freq = float(self.links.frequency[i][feature])
        # labels for every node of the lineage, so the flow is readable
        wanted: list[list[int]] = [[] for _ in self._bound]
        for node in graph["nodes"]:
            wanted[node["sae"]].append(node["feature"])
        wanted[i].append(feature)
        labels = self._labels_for(wanted)
        detail = {
            "sae": i,
            "feature": feature,
            "hook_name": t.hook_names[i],
            "activations": encode_array(acts),
            "promoted": {"tokens": [strs[x] for x in pi.tolist()], "values": encode_array(pv)},
            "suppressed": {"tokens": [strs[x] for x in si.tolist()], "values": encode_array(-sv)},
            "lineage": graph,
            "frequency": freq,
            "max_activation": float(acts.max()),
            "ln_scale": t.ln_scale,
            "corpus": self._corpus_state(i, feature),
        }
        with self.hold_sync():
            if labels != self.feature_labels:
                self.feature_labels = labels
            self.feature = detail
            self.selected_feature = {"sae": i, "feature": feature}
        self._selected = (i, feature)
        return {"sae": i, "feature": feature}

    def _context(self, fc: FeatureCorpus, doc: int, pos: int) -> dict[str, Any]:
        toks = fc.tokens[doc]
        lo, hi = max(0, pos - CONTEXT_BEFORE), min(toks.shape[0], pos + CONTEXT_AFTER + 1)
        strs = [str(x) for x in self._handle.model.to_str_tokens(toks[lo:hi])]
        return {"doc": doc, "pos": pos, "tokens": strs, "highlight": pos - lo}

    def _corpus_state(self, i: int, feature: int) -> dict[str, Any] | None:
        fc = self.corpus_stats.get(i)
        if fc is None:
            return None
        return {
            "n_tokens": fc.n_tokens, "n_docs": fc.n_docs, "density": fc.density(feature),
            "top": [{**self._context(fc, d, p), "value": v} for v, d, p in fc.top_contexts(feature)],
            "quantiles": [{**self._context(fc, d, p), "q": q, "low": lo, "high": hi}
                          for q, lo, hi, d, p in fc.quantile_samples(feature)],
            "hist_edges": encode_array(fc.hist_edges),
            "hist_counts": encode_array(fc.histogram[feature], "int32"),
        }

    @page_request(sae=_SAE)
    def _req_corpus(self, sae: Any) -> Any:
        """Compute one SAE's corpus panel (a job: progress after each batch, cancellable)."""
        i = self._sae(sae)
        if self._corpus is None:
            raise SAEError(
                "no corpus to compute the feature panel over: pass corpus= to show_features (a "
                "list of texts like the SAEs' training data, or a [docs, pos] token tensor)."
            )
        return self._corpus_job(i)

    def _corpus_job(self, i: int) -> Any:
        job = self._stamp.fork()  # the model the panel is of, even if a click recomputes
        steps = iter_feature_corpus(self._handle, self._bound[i], self._corpus)  # type: ignore[arg-type]
        while True:
            try:
                progress = next(steps)
            except StopIteration as stop:
                fc = stop.value
                break
            yield progress
            check_unchanged(job, "the corpus panel", budget=JOB_BUDGET)
        check_unchanged(job, "the corpus panel")  # in full, before anything is kept
        self.corpus_stats[i] = fc
        with self.hold_sync():
            self.corpus_info = {**self.corpus_info, "done": sorted(self.corpus_stats)}
            sel = self.selected_feature
            if sel and sel.get("sae") == i and self.feature:
                self.feature = {**self.feature, "corpus": self._corpus_state(i, int(sel["feature"]))}
        return {"sae": i, "n_tokens": fc.n_tokens}

    @page_request(sae=_SAE, query=Str(max_len=200))
    def _req_search(self, sae: Any, query: str) -> dict[str, Any]:
        """``#123`` or ``123`` selects that feature; a token lists the features whose direct
        logit effect raises it most (the column of the effect matrix: one product per feature)."""
        i = self._sae(sae)
        q = str(query)
        number = q.strip().lstrip("#")
        if number.isdigit():
            self._req_select_feature(i, self._check_feature(i, int(number)))
            out: dict[str, Any] = {"sae": i, "query": q, "feature": int(number), "features": []}
        else:  # a token: its leading space is part of it (" Mary" is not "Mary")
            ids = self._handle.model.to_tokens(q, prepend_bos=False)[0].tolist() if q.strip() else []
            if len(ids) != 1:
                raise SAEError(f"search {q!r}: give a feature number (#123) or one token (it is {len(ids)} tokens).")
            f, v = features_promoting(self._handle, self._bound[i], ids[0], k=N_SEARCH,
                                      ln_scale=self.trace.ln_scale)
            labels = self._labels_for([f.tolist() if j == i else [] for j in range(len(self._bound))])
            if labels != self.feature_labels:
                self.feature_labels = labels
            out = {"sae": i, "query": q, "token": str(self._handle.model.to_str_tokens(torch.tensor(ids))[0]),
                   "features": [{"feature": int(a), "effect": float(e)} for a, e in zip(f, v, strict=True)]}
        self.search = out
        return out

    @page_request(interventions=ListOf(_INTERVENTION, max_len=lambda w: sum(w.trace.d_sae)))
    def _req_intervene(self, interventions: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        edits = []
        for item in interventions:
            if not isinstance(item, Mapping):
                raise SAEError(f"each intervention is a dict {{sae, feature, mode, value, positions}}, got {item!r}.")
            sae = item.get("sae", item.get("hook_name"))
            i = self._sae(sae)
            mode = item.get("mode", "ablate")
            if mode not in INTERVENTION_MODES:
                raise SAEError(f"unknown intervention mode {mode!r}: use one of {INTERVENTION_MODES}.")
            positions = item.get("positions")
            edits.append(FeatureIntervention(
                self.trace.hook_names[i], self._check_feature(i, item.get("feature")), mode,
                float(item.get("value", 0.0) or 0.0), None if positions is None else list(positions)))
        if not edits:
            self.last_intervention = None
            self._interventions = []
            with self.hold_sync():
                self.interventions = []
                self.intervention = {}
            return {"interventions": []}
        if self._clean_logits is None:
            with self._handle.session():
                self._clean_logits = self._handle.run(self._tokens)[0]
        result = intervene_features(
            self._handle, self._bound, self._tokens, edits, n_changes=N_CHANGES, before=self.trace,
            logits_before=self._clean_logits, trace_top_k=1, max_positions=self._max_positions,
        )
        self.last_intervention = result
        names = self.trace.hook_names
        state = [
            {"sae": names.index(str(iv.hook_name)), "hook_name": str(iv.hook_name), "feature": iv.feature,
             "mode": iv.mode, "value": iv.value,
             "positions": None if iv.positions is None else list(iv.positions)}
            for iv in result.interventions
        ]
        wanted: list[list[int]] = [[] for _ in self._bound]
        for c in result.changes:
            wanted[c.sae].append(c.feature)
        labels = self._labels_for(wanted)
        changed = [
            {"sae": c.sae, "feature": c.feature, "max_change": c.max_change, "position": c.position,
             "before": float(c.before[c.position]), "after": float(c.after[c.position]),
             "before_total": float(c.before.sum()), "after_total": float(c.after.sum())}
            for c in result.changes
        ]
        with self.hold_sync():
            self._write_intervention(state, labels, result, changed)
        return {"interventions": state}

    def _write_intervention(self, state: list[dict[str, Any]], labels: list[dict[str, list[str]]],
                            result: InterventionResult, changed: list[dict[str, Any]]) -> None:
        if labels != self.feature_labels:
            self.feature_labels = labels
        self.interventions = state
        self._interventions = [dict(iv) for iv in state]
        self.intervention = {
            "interventions": state,
            "position": result.position,
            "before": _predictions_state(result.before),
            "after": _predictions_state(result.after),
            "loss_before": encode_array(result.loss_before),
            "loss_after": encode_array(result.loss_after),
            "changed": changed,
            "overview": _overview_state(result.trace_after),
            "max_logit_change": result.max_abs_logit_change,
        }

    # ------------------------------------------------------------ Python API
    def select_token(self, pos: int) -> None:
        """Show one token's top features per SAE (as a click on the token does)."""
        self._call("select_token", pos=pos)

    def select_feature(self, sae: int | str, feature: int) -> None:
        """Show one feature: its activation over the prompt, logit effects and lineage.

        Args:
            sae: the SAE's index (in :attr:`hook_names`) or its hook name.
            feature: the feature's index in that SAE.
        """
        self._call("select_feature", sae=sae, feature=feature)

    def compute_corpus(self, sae: int | str) -> FeatureCorpus:
        """Compute one SAE's corpus panel (top contexts, quantile samples, density, histogram)
        over the widget's corpus, as the panel's button does; kept per SAE."""
        self._call("corpus", sae=sae)
        return self.corpus_stats[self._sae(sae)]

    def search_features(self, sae: int | str, query: str) -> dict[str, Any]:
        """Jump to a feature (``"#123"``) or list the features promoting a token (``" Mary"``)."""
        return self._call("search", sae=sae, query=query)  # type: ignore[no-any-return]

    def _set_intervention(self, sae: int | str, feature: int, mode: str, value: float,
                          positions: Sequence[int] | None) -> InterventionResult | None:
        i = self._sae(sae)
        kept = [dict(iv) for iv in self.interventions
                if not (iv["sae"] == i and iv["feature"] == feature)]
        kept.append({"sae": i, "feature": feature, "mode": mode, "value": value,
                     "positions": None if positions is None else list(positions)})
        self._call("intervene", interventions=kept)
        return self.last_intervention

    def ablate(self, sae: int | str, feature: int, *,
               positions: Sequence[int] | None = None) -> InterventionResult:
        """Switch a feature off (at ``positions``, default all), re-run, and show the effect.

        Other interventions in force stay; this one replaces any earlier one on the same feature.
        """
        out = self._set_intervention(sae, feature, "ablate", 0.0, positions)
        assert out is not None
        return out

    def steer(self, sae: int | str, feature: int, value: float, *,
              positions: Sequence[int] | None = None) -> InterventionResult:
        """Clamp a feature to ``value`` (at ``positions``, default all), re-run, show the effect."""
        out = self._set_intervention(sae, feature, "clamp", value, positions)
        assert out is not None
        return out

    def remove_intervention(self, sae: int | str, feature: int) -> None:
        """Drop the intervention on one feature and re-run with the others."""
        i = self._sae(sae)
        kept = [dict(iv) for iv in self.interventions if not (iv["sae"] == i and iv["feature"] == feature)]
        self._call("intervene", interventions=kept)

    def clear_interventions(self) -> None:
        """Drop every intervention: the clean run only."""
        self._call("intervene", interventions=[])

    @property
    def saes(self) -> list[BoundSAE]:
        """The SAEs, checked and in forward order."""
        return list(self._bound)

    # ------------------------------------------------------------ static picture
    def _static_svg(self) -> str | None:
        t = self.trace
        by_count = self.colour_by != "total"
        values = t.n_active.float() if by_count else t.total_activation
        if not by_count:  # activations grow with depth: each SAE on its own scale, as on screen
            values = values / values.max(dim=1, keepdim=True).values.clamp(min=1e-12)
        ev = [float(v) for v in t.explained_variance]
        rows = [f"{lab} (EV {v:.2f})" if v == v else lab for lab, v in zip(t.labels, ev, strict=True)]
        what = "features firing" if by_count else "total feature activation (each SAE scaled to its largest)"
        return heatmap_svg(
            values,
            row_labels=rows,
            col_labels=t.str_tokens,
            title=f"SAE features: {what} per token (columns) and SAE (rows)",
            vmin=0.0,
        )


def show_features(
    model: Any,
    saes: Any,
    prompt: str | torch.Tensor,
    *,
    top_k: int = 8,
    links: FeatureLinks | DecoderLinks | None = None,
    link_prompts: Sequence[str] | None = None,
    n_links: int = 5,
    link_by: str = "auto",
    colour_by: str = "auto",
    max_positions: int = 512,
    corpus: Sequence[str] | torch.Tensor | None = None,
) -> FeaturesWidget:
    """Show which SAE features fire on each token, their lineage across layers, and live edits.

    Args:
        model: a TransformerLens ``HookedTransformer`` (3.x) or ``TransformerBridge`` (4.x).
        saes: sae-lens ``SAE`` objects or objects with ``encode``, ``decode``, ``W_dec``,
            ``hook_name`` and ``d_sae`` (e.g. ``mechwidgets.zoo.load_saes("toy-lm")``), as a
            list or a dict keyed by hook name; any subset of layers.
        prompt: the text to analyse (BOS is prepended), or a token tensor.
        top_k: features kept per token and SAE for the bars (default 8).
        links: precomputed :func:`~mechwidgets.analysis.features.feature_links` for these SAEs
            (or a :class:`~mechwidgets.analysis.features.DecoderLinks`).
        link_prompts: sample texts to measure the cross-layer links on (default: the zoo's
            generated text for zoo models, else this prompt alone).
        n_links: links kept per feature and direction (default 5).
        link_by: how features of adjacent SAEs are linked: ``"correlation"`` of their
            activations over ``link_prompts`` (computed for every feature when the widget is
            built; its cost grows with ``d_sae^2``), ``"cosine"`` of their decoder directions
            (computed lazily, for the feature you select: one chunked pass over the next SAE's
            decoder, any dictionary size), or ``"auto"`` (default): correlation for small SAEs
            (adjacent ``d_sae`` products summing to at most 4M), cosine otherwise.
        colour_by: the overview's colour: ``"count"`` of features firing, ``"total"``
            activation, or ``"auto"`` (default): the count, unless every token fires as many
            features (TopK SAEs), then the total.
        max_positions: refuse longer prompts (default 512).
        corpus: texts (or a ``[docs, pos]`` token tensor) for the feature panel's top-activating
            contexts, quantile samples and density, computed per SAE on request (a job with
            progress); default: the zoo's generated text for zoo models, else none.

    Returns:
        The :class:`FeaturesWidget`; display it, or drive it from Python:
        ``w.select_token(5)``, ``w.select_feature("blocks.1.hook_resid_pre", 42)``,
        ``w.ablate(1, 42)``, ``w.steer(1, 42, 8.0, positions=[5])``, ``w.last_intervention``.

    Raises:
        SAEError: no SAE, an object that is not an SAE, an SAE for a hook the model lacks or
            whose ``d_in`` does not match it, an SAE on another device or dtype than the model.
    """
    return FeaturesWidget(
        model, saes, prompt, top_k=top_k, links=links, link_prompts=link_prompts,
        n_links=n_links, link_by=link_by, colour_by=colour_by, max_positions=max_positions,
        corpus=corpus,
    )


__all__ = ["FeaturesWidget", "show_features"]
