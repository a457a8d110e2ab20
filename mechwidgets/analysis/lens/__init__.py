"""The residual stream layer by layer: the logit lens, direct logit attribution, stream norms.

A transformer's residual stream is a sum: the embeddings, then every attention layer's and MLP's
output added in turn. Three standard readings of that sum need no training and one forward pass:

- **The logit lens** (nostalgebraist, 2020, "interpreting GPT: the logit lens"): stop after any
  layer, put the stream through the final norm and the unembedding, and read the distribution
  the model "would" predict there. :func:`logit_lens` does it for every layer's ``resid_pre``
  and the final ``resid_post`` at every position: the top-k tokens, the answer's rank and
  probability, and the KL divergence from the model's final distribution (how far from done the
  prediction is at that layer).
- **Direct logit attribution** (Elhage et al., 2021, "A Mathematical Framework for Transformer
  Circuits"; Wang et al., 2022, "Interpretability in the Wild" use it to find IOI's name movers):
  the final stream is ``embed + pos_embed + sum_l (attn_l + mlp_l)`` and each head's share of
  ``attn_l`` is ``z_h W_O[h]``, so the logit difference ``logit(answer) - logit(wrong)`` splits
  exactly into one term per part once the final norm is frozen (its scale taken from the final
  stream). :func:`direct_logit_attribution` returns those terms; they add up to the model's own
  logit difference, apart from the norm's bias and the unembedding's bias (reported as
  ``norm_bias``). By source position, a head's term splits further through its attention
  pattern: ``z_h[dest] = sum_src pattern[dest, src] v_h[src]``.
- **Residual stream norms** (Heimersheim & Turner, 2023, "Residual stream norms grow
  exponentially over the forward pass"): :func:`residual_norms` measures the stream's L2 norm per
  layer and position and fits the growth factor per layer.

**The norm's scale.** The final LayerNorm (or RMSNorm) divides by the stream's own scale, which
makes the map from stream to logits nonlinear. The lens's ``ln_scale`` names the choice:
``"own"`` (the default) puts each layer's stream through the final norm with its own statistics,
each layer's prediction as if it were the last (nostalgebraist's lens, and what TransformerLens
3.9's ``accumulated_resid(apply_ln=True)`` computes); ``"final"`` divides every layer's stream
by the *final* stream's scale at that position, as ``apply_ln_to_stack`` does with its default
``recompute_ln=False`` (a linear map: early layers, whose streams are small, then read as nearly
uniform). The last layer is the model's own logits either way. Direct logit attribution always
uses the final scale: only then is the map linear and do the parts add up. The norm's weight
and bias are applied in all cases (TransformerLens's ``logit_attrs`` leaves them out because it
expects them folded into the unembedding: ``fold_ln=True``).

Everything is read from one run of the model, through
:meth:`~mechwidgets._model.ModelHandle.run_with_cache`, optionally with the hooks of
:func:`~mechwidgets.analysis.attention.ablation_hooks` (heads on ``hook_z``, MLPs on
``hook_mlp_out``; zero, mean or resample), so an ablated view is the same computation on the
ablated run.
"""

from __future__ import annotations

from ..._fast import FinalNorm
from ..attention import ablation_hooks
from .core import DLA_BY, LN_SCALES, LensResult, lens_logits, logit_lens
from .dla import DLAResult, direct_logit_attribution
from .norms import NormResult, norm_summary, residual_norms
from .view import LensAnalysis, LensView, lens_view

__all__ = [
    "DLA_BY",
    "LN_SCALES",
    "DLAResult",
    "FinalNorm",
    "LensAnalysis",
    "LensResult",
    "LensView",
    "NormResult",
    "ablation_hooks",
    "direct_logit_attribution",
    "lens_logits",
    "lens_view",
    "logit_lens",
    "norm_summary",
    "residual_norms",
]
