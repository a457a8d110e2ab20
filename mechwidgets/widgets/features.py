"""The SAE feature widget: which features fire on each token, how they carry across layers, and
what switching one off or turning it up does downstream.

A view over a :class:`~mechwidgets.analysis.features.FeatureSession`, which holds the model, the
SAEs, the trace, links, corpus panels and interventions, does the maths and checks every
argument. ``js/features.ts`` draws the traits (a saved notebook redraws with no kernel); clicks
arrive as the requests ``select_token``, ``select_feature``, ``intervene``, ``corpus`` (a job
with progress and cancel) and ``search`` (:class:`~mechwidgets.widgets._base.MechWidget`).
"""

from __future__ import annotations

from collections.abc import Generator, Mapping, Sequence
from typing import Any

import torch
import traitlets

from .._args import Float, Int, ListOf, OneOf, Record, Str
from ..analysis.features import (
    INTERVENTION_MODES,
    DecoderLinks,
    FeatureCorpus,
    FeatureLinks,
    FeatureSession,
    InterventionResult,
    overview_colour,
)
from ._base import MechWidget
from ._requests import page_request
from ._svg import heatmap_svg
from ._traits import Arrays

#: The request arguments the page may send (checked before any handler runs), bounded by the
#: session's trace; a feature's range depends on its SAE and is checked by the session.
_SAES = (Int(0, lambda w: len(w.trace.hook_names) - 1), Str(choices=lambda w: w.trace.hook_names))
_SAE = OneOf(*_SAES)
_FEATURE = Int(0, lambda w: max(w.trace.d_sae) - 1)
_POS = Int(lambda w: -len(w.trace.str_tokens), lambda w: len(w.trace.str_tokens) - 1)
_INTERVENTION = Record({
    "sae": OneOf(*_SAES, optional=True),
    "hook_name": Str(choices=lambda w: w.trace.hook_names, optional=True),
    "feature": _FEATURE,
    "mode": Str(choices=INTERVENTION_MODES, optional=True),
    "value": Float(optional=True, nullable=True),
    "positions": ListOf(_POS, max_len=lambda w: len(w.trace.str_tokens), optional=True, nullable=True),
})


class FeaturesWidget(MechWidget):
    """SAE features per token and layer, their cross-layer lineage, and live interventions.

    Build it with :func:`mechwidgets.show_features`, or ``FeaturesWidget(FeatureSession(model,
    saes, prompt, ...), colour_by=...)``. Every trait is synced; see each one's comment.
    """

    _bundle = "features.js"

    prompt = traitlets.Unicode("").tag(sync=True)
    tokens = traitlets.List(traitlets.Unicode()).tag(sync=True)  # the prompt's str tokens
    hook_names = traitlets.List(traitlets.Unicode()).tag(sync=True)  # the SAEs' hooks, in forward order
    sae_labels = traitlets.List(traitlets.Unicode()).tag(sync=True)  # their short names ("L1 pre")
    d_sae = traitlets.List(traitlets.Int()).tag(sync=True)  # features per SAE
    overview = Arrays().tag(sync=True)  # {n_active: [sae, pos] int32, total: [sae, pos] float32}
    colour_by = traitlets.Unicode("count").tag(sync=True)  # "count" or "total": the overview's colour
    top = Arrays().tag(sync=True)  # {indices: [sae, pos, k] int32 (-1: none), values: [sae, pos, k] float32}
    #: how well each SAE reconstructs its hook here: {explained_variance, relative_error: [sae],
    #: error_norm, act_norm: [sae, pos]} float32
    recon = Arrays().tag(sync=True)
    #: per SAE, {feature: [top promoted tokens]} for every feature labelled so far
    feature_labels: traitlets.List[dict[str, list[str]]] = traitlets.List([]).tag(sync=True)
    selected_token = traitlets.Int(-1).tag(sync=True)  # -1: none
    selected_feature = traitlets.Dict({}).tag(sync=True)  # {sae, feature} or {}
    #: the selected feature (FeatureSession.feature_detail): activations [pos], promoted / suppressed
    #: {tokens, values [k]}, lineage {nodes, edges}, corpus (hist_edges, hist_counts int32), float32
    feature = Arrays().tag(sync=True)
    interventions: traitlets.List[dict[str, Any]] = traitlets.List([]).tag(sync=True)  # in force
    intervention = Arrays().tag(sync=True)  # FeatureSession.intervention_view(): arrays float32
    links_info = traitlets.Dict({}).tag(sync=True)  # what the links were measured on (by, source, ...)
    corpus_info = traitlets.Dict({}).tag(sync=True)  # {n_docs, source, done: [SAE indices]}
    search = traitlets.Dict({}).tag(sync=True)  # the last search's answer (features promoting a token)

    trace = property(lambda self: self.session.trace, doc="The prompt's FeatureTrace.")
    links = property(lambda self: self.session.links, doc="The cross-layer links (None: one SAE).")
    saes = property(lambda self: list(self.session.saes), doc="The SAEs, checked and in forward order.")
    corpus_stats = property(lambda self: self.session.corpus_stats, doc="Per SAE index, its FeatureCorpus.")
    last_intervention = property(lambda self: self.session.last_intervention,
                                 doc="The InterventionResult of the interventions in force (None: none).")

    def __init__(self, session: FeatureSession, *, colour_by: str = "auto", **kwargs: Any) -> None:
        self.session = session
        #: what is on screen, as Python recorded it (the traits are the page's to write)
        self._selected: tuple[int, int] | None = None
        t = session.trace
        MechWidget.__init__(
            self, prompt=session.prompt if isinstance(session.prompt, str) else "".join(t.str_tokens),
            tokens=t.str_tokens, hook_names=t.hook_names, sae_labels=t.labels, d_sae=t.d_sae,
            colour_by=overview_colour(t, colour_by), **self._trace_state(), links_info=session.links_info,
            corpus_info=session.corpus_info(), **kwargs,
        )

    def _trace_state(self) -> dict[str, Any]:
        """The traits drawn from the trace."""
        return {**self.session.trace_view(), "feature_labels": self.session.labels}

    def _show_labels(self) -> None:
        labels = self.session.labels
        if labels != self.feature_labels:
            self.feature_labels = labels

    def _before_request(self, kind: str) -> None:
        """The model or an SAE changed since the trace was taken: recompute the session, then
        what is on screen (the selected feature, the interventions in force) before the click."""

        def redraw() -> None:
            with self.hold_sync():
                for name, value in self._trace_state().items():
                    setattr(self, name, value)
                self.corpus_info = self.session.corpus_info()
            if self._selected is not None and kind != "select_feature":
                self._req_select_feature(*self._selected)
            if self.session.interventions and kind != "intervene":
                self._req_intervene(self.session.interventions)

        self._refresh(self.session, redraw)

    # ------------------------------------------------------------ requests
    @page_request(pos=Int(0, lambda w: len(w.trace.str_tokens) - 1))
    def _req_select_token(self, pos: int) -> dict[str, Any]:
        pos = self.session.select_token(pos)
        with self.hold_sync():
            self._show_labels()
            self.selected_token = pos
        return {"pos": pos}

    @page_request(sae=_SAE, feature=_FEATURE)
    def _req_select_feature(self, sae: Any, feature: int) -> dict[str, Any]:
        detail = self.session.feature_detail(sae, feature)
        i, feature = detail["sae"], detail["feature"]
        with self.hold_sync():
            self._show_labels()
            self.feature = detail
            self.selected_feature = {"sae": i, "feature": feature}
        self._selected = (i, feature)
        return {"sae": i, "feature": feature}

    @page_request(sae=_SAE)
    def _req_corpus(self, sae: Any) -> Any:
        """Compute one SAE's corpus panel (a job: progress after each batch, cancellable)."""
        return self._corpus_steps(self.session.index(sae), self.session.corpus_job(sae))

    def _corpus_steps(self, i: int, steps: Generator[Any, None, FeatureCorpus]) -> Any:
        fc = yield from steps
        with self.hold_sync():
            self.corpus_info = self.session.corpus_info()
            sel = self.selected_feature
            if sel and sel.get("sae") == i and self.feature:
                self.feature = {**self.feature, "corpus": self.session.corpus_panel(i, int(sel["feature"]))}
        return {"sae": i, "n_tokens": fc.n_tokens}

    @page_request(sae=_SAE, query=Str(max_len=200))
    def _req_search(self, sae: Any, query: str) -> dict[str, Any]:
        """``#123`` selects that feature; a token lists the features promoting it most."""
        out = self.session.search(sae, query)
        if "feature" in out:
            self._req_select_feature(out["sae"], out["feature"])
        self._show_labels()
        self.search = out
        return out

    @page_request(interventions=ListOf(_INTERVENTION, max_len=lambda w: sum(w.trace.d_sae)))
    def _req_intervene(self, interventions: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        state = self.session.intervene(interventions)
        with self.hold_sync():
            self._show_labels()
            self.interventions = state
            self.intervention = self.session.intervention_view()
        return {"interventions": state}

    # ------------------------------------------------------------ Python API
    def select_token(self, pos: int) -> None:
        """Show one token's top features per SAE (as a click on the token does)."""
        self._call("select_token", pos=pos)

    def select_feature(self, sae: int | str, feature: int) -> None:
        """Show one feature (``sae``: index or hook name): its activation over the prompt, logit
        effects, lineage, and corpus panel once computed."""
        self._call("select_feature", sae=sae, feature=feature)

    def compute_corpus(self, sae: int | str) -> FeatureCorpus:
        """Compute one SAE's corpus panel (top contexts, quantile samples, density, histogram)
        over the session's corpus, as the panel's button does; kept per SAE."""
        self._call("corpus", sae=sae)
        return self.session.corpus_stats[self.session.index(sae)]

    def search_features(self, sae: int | str, query: str) -> dict[str, Any]:
        """Jump to a feature (``"#123"``) or list the features promoting a token (``" Mary"``)."""
        return self._call("search", sae=sae, query=query)  # type: ignore[no-any-return]

    def _edit(self, sae: int | str, feature: int, edit: dict[str, Any] | None) -> InterventionResult | None:
        self._call("intervene", interventions=self.session.with_intervention(sae, feature, edit))
        return self.session.last_intervention

    def ablate(self, sae: int | str, feature: int, *, positions: Sequence[int] | None = None) -> InterventionResult:
        """Switch a feature off (at ``positions``, default all), re-run, and show the effect; other
        interventions in force stay, this one replaces any earlier one on the same feature."""
        out = self._edit(sae, feature, {"mode": "ablate", "value": 0.0, "positions": positions})
        assert out is not None
        return out

    def steer(self, sae: int | str, feature: int, value: float, *,
              positions: Sequence[int] | None = None) -> InterventionResult:
        """Clamp a feature to ``value`` (at ``positions``, default all), re-run, show the effect."""
        out = self._edit(sae, feature, {"mode": "clamp", "value": value, "positions": positions})
        assert out is not None
        return out

    def remove_intervention(self, sae: int | str, feature: int) -> None:
        """Drop the intervention on one feature and re-run with the others."""
        self._edit(sae, feature, None)

    def clear_interventions(self) -> None:
        """Drop every intervention: the clean run only."""
        self._call("intervene", interventions=[])

    # ------------------------------------------------------------ static picture
    def _static_svg(self) -> str | None:
        t = self.session.trace
        by_count = self.colour_by != "total"
        values = t.n_active.float() if by_count else t.total_activation
        if not by_count:  # activations grow with depth: each SAE on its own scale, as on screen
            values = values / values.max(dim=1, keepdim=True).values.clamp(min=1e-12)
        ev = [float(v) for v in t.explained_variance]
        rows = [f"{lab} (EV {v:.2f})" if v == v else lab for lab, v in zip(t.labels, ev, strict=True)]
        what = "features firing" if by_count else "total feature activation (each SAE scaled to its largest)"
        return heatmap_svg(values, row_labels=rows, col_labels=t.str_tokens, vmin=0.0,
                           title=f"SAE features: {what} per token (columns) and SAE (rows)")


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
        The :class:`FeaturesWidget` over a :class:`~mechwidgets.analysis.features.FeatureSession`
        (``w.session``); display it, or drive it from Python: ``w.select_token(5)``,
        ``w.select_feature("blocks.1.hook_resid_pre", 42)``, ``w.ablate(1, 42)``,
        ``w.steer(1, 42, 8.0, positions=[5])``, ``w.last_intervention``.

    Raises:
        SAEError: no SAE, or an SAE that is not one, is for a hook the model lacks, does not
            match its width, or is on another device or dtype than the model.
    """
    session = FeatureSession(model, saes, prompt, top_k=top_k, links=links, link_prompts=link_prompts,
                             n_links=n_links, link_by=link_by, max_positions=max_positions, corpus=corpus)
    return FeaturesWidget(session, colour_by=colour_by)


__all__ = ["FeaturesWidget", "show_features"]
