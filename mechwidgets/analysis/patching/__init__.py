"""Activation patching: which activations carry the behaviour from one prompt to another.

Take two prompts of the same token length that differ in a detail the model's answer depends on:
a *clean* one ("When Mary and John went to the store, John gave a drink to" → " Mary") and a
*corrupted* one (" Mary" and " John" swapped in one place). Run the model on one of them and swap
in a single activation (a layer's residual stream at one position, one attention head's output...)
from the run on the other, then measure how far the answer moves (Vig et al. 2020; Meng et al.
2022, "causal tracing"; Wang et al. 2022). Repeating this for every layer, position or head gives
a map of where the information the answer depends on lives.

Two directions, which answer different questions (Heimersheim & Nanda 2024, "How to use and
interpret activation patching"):

- **denoising** (the default; TransformerLens's ``get_act_patch_*`` functions do this): run the
  *corrupted* prompt and patch in *clean* activations. A high value means the activation is
  *sufficient*: on its own it restores the clean behaviour.
- **noising**: run the *clean* prompt and patch in *corrupted* activations. A high value means
  the activation is *necessary*: replacing it alone breaks the behaviour.

The value of each patched run is a metric of its last-position logits (see
:mod:`mechwidgets.analysis.metrics`; the logit difference between the right and the wrong answer
by default), normalised so that 0 is the run being patched and 1 the other run: 1 always means
"this component alone does the whole job" (restores for denoising, breaks for noising).
Values outside [0, 1] are real: a component can overshoot, or push the other way.

Components (``component=``): the residual stream before a block (``resid_pre``), between attention
and MLP (``resid_mid``), and the attention and MLP outputs (``attn_out``, ``mlp_out``), each per
``[layer, pos]``; per head ``[layer, head]`` over all positions the head's output ``z``
(``head_out``), queries (``head_q``), keys (``head_k``), values (``head_v``) or attention pattern
(``head_pattern``); and the same heads per position, ``[layer, head, pos]`` (``head_out_by_pos``,
...; for the pattern, the destination position). Under grouped-query attention keys and values
are per key/value head, so their grids have ``n_key_value_heads`` heads, as in TransformerLens.

How it is computed, exactly (every value equals TransformerLens's one-forward-per-cell
``transformer_lens.patching`` result to float precision) but with much less work:

- a cell whose clean and corrupted activations are identical is a no-op: its value is the
  baseline, with no forward (this covers every position before the first token that differs,
  and at layer 0 every position whose token is the same in both prompts);
- a patch at layer ``L`` and position ``p`` changes nothing before layer ``L`` nor, since
  attention is causal, at any position before ``p``: the patched runs start at layer ``L`` from
  the cached residual and compute only positions ``p..``, reading the keys and values of earlier
  positions from the cached run; they are batched, many patches per forward;
- a head's output enters the residual stream as ``z_h W_O[h]``, so a patched head needs no
  attention recomputed: the run starts at that layer's MLP;
- in the last layer only the last position's query, attention and MLP are computed, and the
  metric reads only the columns of ``W_U`` it needs (two for a logit difference); a patch there
  that changes only other positions (e.g. ``attn_out`` at an earlier position) is a no-op;
- a residual-stream patch that leaves the patched run's residual equal to the other run's at
  every position is the other run: its value is the other baseline.

Where the model is not a TransformerLens 3.x ``HookedTransformer`` of a supported kind (e.g. a 4.x
``TransformerBridge``), the same results come from batched hooked forward passes.

The package: :mod:`.setup` (the components, the checked inputs, the metric and its baselines,
the labelled :class:`PatchingResult`), :mod:`.engines` (which cells to run and the two engines
behind :func:`activation_patch`), :mod:`.attribution` (:func:`attribution_patch`, the gradient
estimate of the same grids) and :mod:`.session` (:class:`PatchingSession`, a prompt pair
prepared for interactive patching, the analysis behind :func:`mechwidgets.show_patching`).
"""

from .attribution import attribution_patch
from .engines import activation_patch
from .session import DEFAULT_COMPONENTS, METRICS, PatchingSession, PatchingView
from .setup import COMPONENTS, DIRECTIONS, Component, Direction, PatchingResult, Prompt
from .setup import choose_metric as choose_metric  # for analysis/circuits.py

__all__ = [
    "COMPONENTS",
    "DEFAULT_COMPONENTS",
    "DIRECTIONS",
    "METRICS",
    "Component",
    "Direction",
    "PatchingResult",
    "PatchingSession",
    "PatchingView",
    "Prompt",
    "activation_patch",
    "attribution_patch",
]
