"""One prompt's SAE features prepared for exploring: :class:`FeatureSession`, the object the
feature widget draws (usable headless too).

It owns the model handle, the bound SAEs, the prompt's :class:`~.trace.FeatureTrace`, the
cross-layer links, the corpus panels computed so far, the interventions in force and the clean
run's logits, with the fingerprint of the model and the SAEs they were computed on: when either
changes, :meth:`FeatureSession.recompute` computes them again. Every argument a click carries
(an SAE, a feature, a position, an intervention) is checked here.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Generator, Mapping, Sequence
from typing import Any

import torch

from ..._args import as_int
from ..._fingerprint import JOB_BUDGET, Stamp, check_unchanged
from ..._model import ModelHandle
from ...errors import SAEError
from .corpus import FeatureCorpus, iter_feature_corpus
from .effects import features_promoting, logit_effect_matrix, logit_effects_of, residual_directions
from .interventions import (
    INTERVENTION_MODES,
    FeatureIntervention,
    InterventionResult,
    intervene_features,
)
from .links import DecoderLinks, FeatureLinks, default_link_prompts, feature_links, lineage
from .saes import BoundSAE, bind_saes
from .trace import FeatureTrace, feature_activations

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
#: Feature labels (one ``d_model x d_vocab`` product per feature) are all computed when the
#: session is built only while ``features x d_model x d_vocab`` stays under this (about a
#: second); otherwise a token's labels are computed when it is selected.
LABEL_BUDGET = 2**31
LINK_MODES = ("auto", "correlation", "cosine")
COLOUR_MODES = ("auto", "count", "total")
#: Tokens shown before / after the activating token of a corpus context.
CONTEXT_BEFORE, CONTEXT_AFTER = 10, 3
#: Features listed by a search for a token.
N_SEARCH = 10


def overview_colour(trace: FeatureTrace, colour_by: str) -> str:
    """``"count"`` or ``"total"``: what colours the overview. ``"auto"``: the count of features
    firing, unless every token fires as many (TopK SAEs: the counts say nothing), then the
    total activation."""
    if colour_by not in COLOUR_MODES:
        raise SAEError(f"colour_by={colour_by!r}: use 'count' (features firing), 'total' (their "
                       f"summed activation) or 'auto'.")
    if colour_by != "auto":
        return colour_by
    counts = trace.n_active[:, 1:] if trace.n_active.shape[1] > 1 else trace.n_active
    return "total" if bool((counts == counts[:, :1]).all()) else "count"


class FeatureSession:
    """SAE features of one prompt, with lazily computed links, corpus panels and live edits.

    Args: see :func:`mechwidgets.show_features` (the same names, ``colour_by`` aside).

    Attributes:
        handle: the model's :class:`~mechwidgets._model.ModelHandle`; ``saes`` the bound SAEs.
        trace: the prompt's :class:`~.trace.FeatureTrace`.
        links: :class:`~.links.FeatureLinks`, :class:`~.links.DecoderLinks` or None (one SAE).
        links_info: what the links were measured on (``n_tokens``, ``n_prompts``, ``by``,
            ``source``).
        corpus_stats: per SAE index, its :class:`~.corpus.FeatureCorpus` once computed.
        interventions: the interventions in force, ``[{sae, hook_name, feature, mode, value,
            positions}]``; ``last_intervention`` the :class:`~.interventions.InterventionResult`
            of running them (None when there are none).
    """

    def __init__(
        self, model: Any, saes: Any, prompt: str | torch.Tensor, *, top_k: int = 8,
        links: FeatureLinks | DecoderLinks | None = None, link_prompts: Sequence[str] | None = None,
        n_links: int = 5, link_by: str = "auto", max_positions: int = 512,
        corpus: Sequence[str] | torch.Tensor | None = None,
    ) -> None:
        if link_by not in LINK_MODES:
            raise SAEError(
                f"link_by={link_by!r}: use 'correlation' (activations over a sample: every feature "
                f"against every feature, slow for large SAEs), 'cosine' (decoder directions, "
                f"computed for the feature you click) or 'auto'."
            )
        self.handle = handle = ModelHandle.wrap(model)
        self.saes: list[BoundSAE] = bind_saes(handle, saes)
        self.prompt, self.top_k, self.max_positions = prompt, top_k, max_positions
        t0 = time.perf_counter()
        self.trace = feature_activations(handle, self.saes, prompt, top_k=top_k, max_positions=max_positions)
        self.tokens = self.trace.tokens[None].to(handle.device)
        if links is not None:
            if list(links.hook_names) != self.trace.hook_names:
                raise SAEError(
                    f"links= was computed for the SAEs {links.hook_names}, not for these "
                    f"({self.trace.hook_names}): recompute it with feature_links(model, saes)."
                )
            source = "given"
            #: how the session measured its links (again when the model changes); None: given
            self._link_args: tuple[str, Any, int] | None = None
        else:
            if link_by == "auto":
                pairs = sum(a.d_sae * b.d_sae for a, b in itertools.pairwise(self.saes))
                link_by = "correlation" if pairs <= DENSE_LINK_BUDGET else "cosine"
            source = "decoder weights, computed for the feature you select"
            if link_by == "correlation":
                source = "link_prompts"
                if link_prompts is None:
                    try:
                        link_prompts, source = default_link_prompts(handle), "zoo sample text"
                    except SAEError:
                        link_prompts = [self.tokens]  # type: ignore[list-item]
                        source = "this prompt only (pass link_prompts= for a real sample)"
            self._link_args = (link_by, link_prompts, n_links)
            links = self._measure_links()
        self.links = links
        self.links_info = {"n_tokens": links.n_tokens if links else 0, "n_prompts": links.n_prompts if links else 0,
                           "by": links.by if links else "", "source": source if links else "no links: a single SAE"}
        self.seconds = time.perf_counter() - t0  # a recompute's expected cost
        #: the model and SAEs as the trace and links saw them (taken after the first runs: a
        #: TransformerBridge wires hooks of its own on its first forward)
        self.stamp = Stamp(handle.model, *(b.sae for b in self.saes))
        self.corpus_source = "corpus"
        if corpus is None:
            try:
                corpus, self.corpus_source = default_link_prompts(handle), "zoo sample text"
            except SAEError:
                self.corpus_source = ""
        self.corpus = corpus
        self.corpus_stats: dict[int, FeatureCorpus] = {}
        self.interventions: list[dict[str, Any]] = []
        self.last_intervention: InterventionResult | None = None
        self._clean_logits: torch.Tensor | None = None
        self._label_cache: list[dict[int, list[str]]] = [{} for _ in self.saes]
        self.label_top_features()

    def _measure_links(self) -> FeatureLinks | DecoderLinks | None:
        assert self._link_args is not None
        by, prompts, n_links = self._link_args
        if len(self.saes) < 2:
            return None
        if by == "cosine":
            return DecoderLinks(self.handle, self.saes, n_links=n_links).prepare()
        return feature_links(self.handle, self.saes, prompts, n_links=n_links)

    # ------------------------------------------------------------ the model changed
    def stale(self) -> str | None:
        """What changed in the model or an SAE since the trace was taken; None: nothing."""
        return self.stamp.stale()

    def recompute(self) -> None:
        """Take the trace again, re-measure the links this session measured, and drop what was
        computed on the old model (the clean logits, the labels, the corpus panels). The
        interventions in force are kept: :meth:`intervene` them again to see them."""
        t0 = time.perf_counter()
        self.trace = feature_activations(self.handle, self.saes, self.prompt, top_k=self.top_k,
                                         max_positions=self.max_positions)
        if self._link_args is not None:
            self.links = self._measure_links()
        self.corpus_stats = {}
        self._clean_logits = None
        self._label_cache = [{} for _ in self.saes]
        self.stamp.renew()
        self.seconds = time.perf_counter() - t0
        self.label_top_features()

    # ------------------------------------------------------------ checks
    def index(self, sae: Any) -> int:
        """An SAE's index in ``trace.hook_names``, from the index or the hook name."""
        return self.trace.index(sae)

    def check_feature(self, i: int, feature: Any) -> int:
        d = self.trace.d_sae[i]
        return as_int(feature, "feature", lo=0, hi=d - 1, error=SAEError,
                      hint=f" The SAE on {self.trace.hook_names[i]!r} has features 0..{d - 1}.")

    # ------------------------------------------------------------ labels
    @property
    def labels(self) -> list[dict[str, list[str]]]:
        """Per SAE, ``{feature: [top promoted tokens]}`` of every feature labelled so far."""
        return [{str(f): toks for f, toks in sorted(cache.items())} for cache in self._label_cache]

    def label(self, features: Sequence[Sequence[int]]) -> None:
        """Label features (per SAE) by their top promoted tokens, once each. The new features of
        every SAE go through the unembedding together (one pass over ``W_U``, the largest
        matrix read here)."""
        new = [(i, f) for i, feats in enumerate(features) for f in dict.fromkeys(feats)
               if f not in self._label_cache[i]]
        if not new:
            return
        with torch.no_grad():
            dirs = torch.cat([residual_directions(self.handle, self.saes[i], [f for j, f in new if j == i])
                              for i in sorted({i for i, _ in new})])
            eff = logit_effects_of(self.handle, dirs, ln_scale=self.trace.ln_scale)
        ids = eff.topk(min(LABEL_TOKENS, eff.shape[-1]), dim=-1).indices
        strs = self._strs(ids.flatten().tolist())
        order = sorted(new, key=lambda t: t[0])  # the rows of dirs: by SAE, then as asked
        for (i, f), row in zip(order, ids.tolist(), strict=True):
            self._label_cache[i][f] = [strs[t] for t in row]

    def label_top_features(self) -> None:
        """Label every feature in the trace's top lists, where that costs little (else none:
        each token's are labelled when it is selected)."""
        shown = [sorted({int(f) for f in self.trace.top_indices[i].flatten().tolist() if f >= 0})
                 for i in range(len(self.saes))]
        if sum(map(len, shown)) * self.handle.d_model * self.handle.d_vocab <= LABEL_BUDGET:
            self.label(shown)

    def _strs(self, ids: Sequence[int]) -> dict[int, str]:
        uniq = sorted(set(ids))
        return dict(zip(uniq, self.handle.token_strs(uniq), strict=True))

    # ------------------------------------------------------------ what a click shows
    def select_token(self, pos: Any) -> int:
        """Check a position and label its top features in every SAE."""
        n = len(self.trace.str_tokens)
        pos = as_int(pos, "token position", lo=0, hi=n - 1, error=SAEError,
                     hint=f" The prompt has positions 0..{n - 1}.")
        self.label([[int(f) for f in self.trace.top_indices[i, pos].tolist() if f >= 0]
                    for i in range(len(self.saes))])
        return pos

    def feature_detail(self, sae: Any, feature: Any) -> dict[str, Any]:
        """One feature: ``activations`` ``[pos]``, ``promoted`` / ``suppressed`` logit effects,
        ``lineage`` (``nodes``, ``edges``), ``frequency`` on the link sample (None for decoder
        cosines), ``max_activation`` and its ``corpus`` panel (None until computed). Labels
        every node of the lineage."""
        i = self.index(sae)
        feature = self.check_feature(i, feature)
        t = self.trace
        acts = t.feature_values(i, feature)
        with torch.no_grad():
            eff = logit_effect_matrix(self.handle, self.saes[i], [feature], ln_scale=t.ln_scale)[0]
        k = min(DETAIL_TOKENS, eff.shape[-1])
        pv, pi = eff.topk(k)
        sv, si = (-eff).topk(k)
        strs = self._strs(pi.tolist() + si.tolist())
        graph: dict[str, Any] = {"nodes": [{"sae": i, "feature": feature, "score": 1.0}], "edges": []}
        freq = None
        if self.links is not None:
            graph = lineage(self.links, i, feature)
            if self.links.frequency is not None:
                freq = float(self.links.frequency[i][feature])
        wanted: list[list[int]] = [[] for _ in self.saes]
        for node in graph["nodes"]:
            wanted[node["sae"]].append(node["feature"])
        wanted[i].append(feature)
        self.label(wanted)
        return {
            "sae": i, "feature": feature, "hook_name": t.hook_names[i], "activations": acts,
            "promoted": {"tokens": [strs[x] for x in pi.tolist()], "values": pv},
            "suppressed": {"tokens": [strs[x] for x in si.tolist()], "values": -sv},
            "lineage": graph, "frequency": freq, "max_activation": float(acts.max()),
            "ln_scale": t.ln_scale, "corpus": self.corpus_panel(i, feature),
        }

    # ------------------------------------------------------------ corpus panels
    def corpus_info(self) -> dict[str, Any]:
        """``{n_docs, source, done: [SAE indices whose corpus panel is computed]}``."""
        n_docs = 0 if self.corpus is None else len(self.corpus)
        return {"n_docs": n_docs, "source": self.corpus_source, "done": sorted(self.corpus_stats)}

    def _context(self, fc: FeatureCorpus, doc: int, pos: int) -> dict[str, Any]:
        toks = fc.tokens[doc]
        lo, hi = max(0, pos - CONTEXT_BEFORE), min(toks.shape[0], pos + CONTEXT_AFTER + 1)
        strs = self.handle.str_tokens(toks[lo:hi])
        return {"doc": doc, "pos": pos, "tokens": strs, "highlight": pos - lo}

    def corpus_panel(self, i: int, feature: int) -> dict[str, Any] | None:
        """A feature's corpus panel (top contexts, quantile samples, density, histogram), or
        None while its SAE's corpus statistics are not computed."""
        fc = self.corpus_stats.get(i)
        if fc is None:
            return None
        return {
            "n_tokens": fc.n_tokens, "n_docs": fc.n_docs, "density": fc.density(feature),
            "top": [{**self._context(fc, d, p), "value": v} for v, d, p in fc.top_contexts(feature)],
            "quantiles": [{**self._context(fc, d, p), "q": q, "low": lo, "high": hi}
                          for q, lo, hi, d, p in fc.quantile_samples(feature)],
            "hist_edges": fc.hist_edges,
            "hist_counts": fc.histogram[feature],
        }

    def corpus_job(self, sae: Any) -> Generator[dict[str, Any], None, FeatureCorpus]:
        """Compute one SAE's corpus statistics: a generator that yields progress after each
        batch and returns (and keeps) the :class:`~.corpus.FeatureCorpus`. It stops with
        :class:`~mechwidgets.errors.ModelChangedError` if the model changes while it runs."""
        i = self.index(sae)
        if self.corpus is None:
            raise SAEError(
                "no corpus to compute the feature panel over: pass corpus= to show_features (a "
                "list of texts like the SAEs' training data, or a [docs, pos] token tensor)."
            )
        return self._corpus_steps(i, self.corpus)

    def _corpus_steps(self, i: int, corpus: Any) -> Generator[dict[str, Any], None, FeatureCorpus]:
        job = self.stamp.fork()  # the model the panel is of, even if a click recomputes
        steps = iter_feature_corpus(self.handle, self.saes[i], corpus)
        while True:
            try:
                progress = next(steps)
            except StopIteration as stop:
                fc: FeatureCorpus = stop.value
                break
            yield progress
            check_unchanged(job, "the corpus panel", budget=JOB_BUDGET)
        check_unchanged(job, "the corpus panel")  # in full, before anything is kept
        self.corpus_stats[i] = fc
        return fc

    # ------------------------------------------------------------ search
    def search(self, sae: Any, query: str) -> dict[str, Any]:
        """``#123`` or ``123``: that feature (checked); a token: the features whose direct logit
        effect raises it most (the column of the effect matrix: one product per feature),
        labelled."""
        i, q = self.index(sae), str(query)
        number = q.strip().lstrip("#")
        if number.isdigit():
            return {"sae": i, "query": q, "feature": self.check_feature(i, int(number)), "features": []}
        # a token: its leading space is part of it (" Mary" is not "Mary")
        ids = self.handle.encode(q, bos=False)[0].tolist() if q.strip() else []
        if len(ids) != 1:
            raise SAEError(f"search {q!r}: give a feature number (#123) or one token (it is {len(ids)} tokens).")
        f, v = features_promoting(self.handle, self.saes[i], ids[0], k=N_SEARCH, ln_scale=self.trace.ln_scale)
        self.label([f.tolist() if j == i else [] for j in range(len(self.saes))])
        return {"sae": i, "query": q, "token": self._strs(ids)[ids[0]],
                "features": [{"feature": int(a), "effect": float(e)} for a, e in zip(f, v, strict=True)]}

    # ------------------------------------------------------------ interventions
    def with_intervention(self, sae: Any, feature: int, edit: Mapping[str, Any] | None) -> list[dict[str, Any]]:
        """The interventions in force with the one on ``(sae, feature)`` replaced by ``edit``
        (``{mode, value, positions}``) or dropped (``edit=None``)."""
        i = self.index(sae)
        kept = [dict(iv) for iv in self.interventions if not (iv["sae"] == i and iv["feature"] == feature)]
        return kept + ([{"sae": i, "feature": feature, **edit}] if edit is not None else [])

    def intervene(self, interventions: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        """Run the model with these interventions (``[{sae or hook_name, feature, mode="ablate",
        value=0, positions=None}]``) in force, instead of the earlier ones; labels the changed
        downstream features. Returns the interventions, normalised (``last_intervention``
        holds the result; an empty list clears them)."""
        edits = []
        for item in interventions:
            if not isinstance(item, Mapping):
                raise SAEError(f"each intervention is a dict {{sae, feature, mode, value, positions}}, got {item!r}.")
            i = self.index(item.get("sae", item.get("hook_name")))
            mode = item.get("mode", "ablate")
            if mode not in INTERVENTION_MODES:
                raise SAEError(f"unknown intervention mode {mode!r}: use one of {INTERVENTION_MODES}.")
            positions = item.get("positions")
            edits.append(FeatureIntervention(
                self.trace.hook_names[i], self.check_feature(i, item.get("feature")), mode,
                float(item.get("value", 0.0) or 0.0), None if positions is None else list(positions)))
        if not edits:
            self.last_intervention, self.interventions = None, []
            return []
        if self._clean_logits is None:
            with self.handle.session():
                self._clean_logits = self.handle.run(self.tokens)[0]
        result = intervene_features(
            self.handle, self.saes, self.tokens, edits, n_changes=N_CHANGES, before=self.trace,
            logits_before=self._clean_logits, trace_top_k=1, max_positions=self.max_positions,
        )
        wanted: list[list[int]] = [[] for _ in self.saes]
        for c in result.changes:
            wanted[c.sae].append(c.feature)
        self.label(wanted)
        names = self.trace.hook_names
        self.last_intervention = result
        self.interventions = [
            {"sae": names.index(str(iv.hook_name)), "hook_name": str(iv.hook_name), "feature": iv.feature,
             "mode": iv.mode, "value": iv.value, "positions": None if iv.positions is None else list(iv.positions)}
            for iv in result.interventions
        ]
        return [dict(iv) for iv in self.interventions]

    def trace_view(self) -> dict[str, Any]:
        """The trace as the overview draws it: ``overview`` (:func:`overview`), ``top``
        (``indices`` and ``values`` ``[sae, pos, k]``), ``recon`` (``explained_variance``,
        ``relative_error`` ``[sae]``, ``error_norm``, ``act_norm`` ``[sae, pos]``)."""
        t = self.trace
        return {
            "overview": overview(t), "top": {"indices": t.top_indices, "values": t.top_values},
            "recon": {"explained_variance": t.explained_variance, "relative_error": t.relative_error,
                      "error_norm": t.error_norm, "act_norm": t.act_norm},
        }

    def intervention_view(self) -> dict[str, Any]:
        """The last intervention's predictions and per-token loss before vs after, the
        downstream features that changed, the edited run's overview; {} when none is in force."""
        res = self.last_intervention
        if res is None:
            return {}
        return {
            "interventions": [dict(iv) for iv in self.interventions],
            "position": res.position,
            "before": _predictions(res.before),
            "after": _predictions(res.after),
            "loss_before": res.loss_before,
            "loss_after": res.loss_after,
            "changed": [
                {"sae": c.sae, "feature": c.feature, "max_change": c.max_change, "position": c.position,
                 "before": float(c.before[c.position]), "after": float(c.after[c.position]),
                 "before_total": float(c.before.sum()), "after_total": float(c.after.sum())}
                for c in res.changes
            ],
            "overview": overview(res.trace_after),
            "max_logit_change": res.max_abs_logit_change,
        }


def overview(trace: FeatureTrace) -> dict[str, Any]:
    """``{n_active: [sae, pos], total: [sae, pos]}``: features firing and their summed activation."""
    return {"n_active": trace.n_active, "total": trace.total_activation}


def _predictions(pred: Any) -> dict[str, Any]:
    return {"tokens": pred.str_tokens, "token_ids": pred.token_ids, "probs": pred.probs}


__all__ = ["FeatureSession", "overview", "overview_colour"]
