"""Sparse autoencoder features: what fires on each token, how features carry through the layers,
and what happens downstream when one is switched off or turned up.

A sparse autoencoder (SAE) on a hook rewrites the activation ``x`` (``[pos, d_in]``) as a sparse,
non-negative code ``f = encode(x)`` (``[pos, d_sae]``) and a reconstruction
``x_hat = decode(f) = f @ W_dec + b_dec`` (Bricken et al. 2023, "Towards Monosemanticity";
Cunningham et al. 2023; TopK SAEs: Gao et al. 2024). Feature ``i`` *fires* at a position when
``f[pos, i] > 0``; its *decoder direction* is ``W_dec[i]``.

What this module computes, headless (the feature widget draws it):

- :func:`feature_activations`: for every SAE and every token, the active features and their
  values, plus each SAE's reconstruction error on this prompt (error norm per token, relative
  error and explained variance), so that nobody over-reads a poor SAE: features of an SAE that
  explains little of its activation say little about the model.
- :func:`feature_logit_effects`: a feature's direct effect on the next-token logits, its decoder
  direction read through the unembedding (top promoted and suppressed tokens).
- :func:`feature_links`: links between the features of adjacent SAEs, following Balcells et al.
  2024, "Evolution of SAE Features Across Layers in LLMs": the cosine similarity of their decoder
  directions (cheap, weights only) and the Pearson correlation of their activations over the
  tokens of a sample of prompts (the statistical relation the paper builds its feature graph
  from), with the top links of every feature in both directions.
- :func:`intervene_features`: ablate a feature (set it to 0) or clamp it to a value at chosen
  positions. The SAE is spliced in *with its error term*: the hook returns
  ``decode(f_modified) + (x - decode(f))``, computed as ``x + (decode(f_modified) - decode(f))``
  (the same value), so that splicing with no intervention returns ``x`` exactly and the model's
  logits are unchanged: only the edit, not the SAE's reconstruction error, reaches the model.

SAEs accepted (see :func:`bind_saes`): sae-lens ``SAE`` objects (sae-lens 6: ``cfg.metadata
.hook_name``; older: ``cfg.hook_name``) and any object with ``encode``, ``decode``, ``W_dec``
(``[d_sae, d_in]``), ``hook_name`` and ``d_sae``, such as :class:`mechwidgets.zoo.SimpleSAE`
(for TransformerLens 4.x users, where sae-lens does not install). Every architecture is
encoded by its own ``encode`` (ReLU, gated, TopK, JumpReLU with its thresholds); sae-lens SAEs
that take ``hook_z`` as ``[head, d_head]`` get it in that shape; sae-lens transcoders (read
``hook_name``, write ``hook_name_out``) are read at one hook and edited at the other. Pass them
as a list or as a dict keyed by hook name; one SAE per hook, any subset of layers.

At real dictionary sizes (24k–1M features) nothing here is quadratic in ``d_sae`` unless asked:
:func:`feature_activations` is one forward and one encode per SAE, and :class:`DecoderLinks`
finds a feature's cross-layer links when it is looked at, by a chunked top-k over the adjacent
decoder. :func:`feature_links` (activation correlations over a sample) compares every feature
with every feature of the next SAE: use it for small SAEs.

The package, along the sections of the technique: :mod:`.saes` (binding SAEs to a model),
:mod:`.trace` (what fires on a prompt), :mod:`.effects` (logit effects), :mod:`.links`
(cross-layer links and lineage), :mod:`.corpus` (a feature's corpus panel),
:mod:`.interventions` (ablating and clamping features), and :mod:`.session` (all of these
prepared for one prompt: the object the feature widget draws).
"""

from __future__ import annotations

from .corpus import FeatureCorpus, feature_corpus, iter_feature_corpus
from .effects import (
    LogitEffects,
    feature_logit_effects,
    features_promoting,
    logit_effect_matrix,
    logit_effects_of,
    residual_directions,
)
from .interventions import (
    INTERVENTION_MODES,
    FeatureChange,
    FeatureIntervention,
    InterventionResult,
    intervene_features,
    normalise_interventions,
    splice_hooks,
)
from .links import (
    DecoderLinks,
    FeatureLinks,
    LinkTable,
    decoder_cosine_top_k,
    default_link_prompts,
    feature_links,
    lineage,
)
from .saes import BoundSAE, bind_saes, sae_hook_name, short_hook_label
from .session import FeatureSession, overview, overview_colour
from .trace import FeatureTrace, feature_activations

__all__ = [
    "INTERVENTION_MODES",
    "BoundSAE",
    "DecoderLinks",
    "FeatureChange",
    "FeatureCorpus",
    "FeatureIntervention",
    "FeatureLinks",
    "FeatureSession",
    "FeatureTrace",
    "InterventionResult",
    "LinkTable",
    "LogitEffects",
    "bind_saes",
    "decoder_cosine_top_k",
    "default_link_prompts",
    "feature_activations",
    "feature_corpus",
    "feature_links",
    "feature_logit_effects",
    "features_promoting",
    "intervene_features",
    "iter_feature_corpus",
    "lineage",
    "logit_effect_matrix",
    "logit_effects_of",
    "normalise_interventions",
    "overview",
    "overview_colour",
    "residual_directions",
    "sae_hook_name",
    "short_hook_label",
    "splice_hooks",
]
