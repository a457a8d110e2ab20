"""Causal scrubbing: test a hypothesis about which paths of a model matter, and through what.

Following "Causal Scrubbing: a method for rigorously testing interpretability hypotheses"
(Chan, Garriga-Alonso, Goldowsky-Dill, Greenblatt, Nitishinskaya, Radhakrishnan, Shlegeris,
Thomas; Redwood Research, 2022) and its worked example "Causal Scrubbing: results on induction
heads" (Alignment Forum / LessWrong, Dec. 2022).

**A hypothesis** is a tree of :class:`HypothesisNode`. The root is the ``"output"`` being explained (the
next-token loss, or a metric). Below a node stand the model components it reads:

- under ``"output"``, an MLP ``"mlp{l}"`` or a head's ``"q"`` / ``"k"`` / ``"v"`` input: the
  components that write into the residual stream there: ``"embed"`` (token embedding),
  ``"pos_embed"``, a head's output ``"L{l}H{h}"`` (earlier layers only), ``"mlp{l}"``, and
  ``"resid"``, the rest of the residual stream at that point (every component its siblings do
  not name, taken together);
- under a head ``"L{l}H{h}"``: its ``"q"``, ``"k"`` and ``"v"`` inputs.

Each node has a **feature**: a Python function of a dataset input saying which inputs the node
cannot tell apart ("the token at this position", "the previous token", "whether this token
appeared earlier"; see :data:`FEATURES`). The hypothesis claims: the output depends on the input
only through the named paths, and each named node's activation depends on the input only through
its feature.

**Scrubbing** tests that claim by resampling. Each node's activation is computed on another
dataset input that agrees with its parent's input on the node's feature; its own inputs are then
resampled relative to *that* input, recursively. Every path the hypothesis does not name, and
every node switched to "resampled", gets its activation from a random dataset input instead. If
the hypothesis is right, the loss does not change. The result reports the loss on the clean data,
with everything resampled at random, and under the hypothesis, and the **fraction of the loss
recovered**, ``(random - scrubbed) / (random - clean)``, with its spread over several seeds.

Exactly what this implementation does
-------------------------------------

- **Inputs are prefixes.** The dataset is ``N`` token sequences of one length ``P``. A model
  activation at position ``p`` of sequence ``s`` depends only on the prefix ``s[:p + 1]``
  (attention is causal), so a dataset input is a *prefix*, and a feature is a function of the
  prefix, a ``tuple`` of token ids whose last element is the token at the position in question
  (``features.token = prefix[-1]``, ``features.position = len(prefix) - 1``). The pool sampled
  from is all ``N * P`` prefixes. A resampled activation may come from another position:
  include the position in the feature (``features.token_and_position``) to keep it aligned.
- **The loss** is the mean over the ``positions=`` of every sequence of the next-token
  cross-entropy (or ``metric=``) of the output at that prefix.
- **Sampling** draws, for every activation row separately, uniformly with replacement from the
  prefixes whose feature value equals the reference prefix's (the reference itself included, as
  in the paper: the conditional distribution of the dataset given the feature). ``identity``
  keeps the reference itself. A node whose inputs would have fewer than ``min_agreeing``
  agreeing prefixes to draw from is an error: the dataset is too small for that feature.
- **Treeification is exact.** The model graph is unrolled into a tree in which every path from
  the output to the embeddings is separate, and every path gets its own sample: a head's query
  input and its key and value input at *each* key position are separate subtrees, so the key at
  position ``j`` and the key at ``j + 1`` (and the query) are built from independently sampled
  upstream inputs. A node with children is recomputed from its children: a head input is the
  residual stream rebuilt as the sum of its components, each evaluated on its own sample (the
  named ones recursively, the others each on a fresh random prefix), plus the constant output
  biases; the head then applies its own LayerNorm, ``W_Q``, ``W_K``, ``W_V``, causal softmax and
  ``W_O`` to these rebuilt inputs, over the keys of *its* (sampled) prefix. An MLP node with
  children is recomputed by the model's own LayerNorm and MLP modules. The output node rebuilds
  the final residual stream the same way and applies ``ln_final`` and the unembedding.
- **Draws common to several predictions.** Each prediction's tree is treeified as above, but
  trees of *different* predictions may share draws: the key and value rows of a head that occurs
  once in each tree (no key or value edge above it) are drawn once per (sequence, key position)
  and read by every query of that sequence (``share_rows=True``, the default). This leaves each
  prediction's expected loss unchanged (its own paths still have separate draws; common random
  numbers across predictions only correlate their noise, which the spread over seeds shows) and
  divides the rows by the number of scored positions. A head nested under another head's key or
  value occurs many times in one tree, so its rows are never shared. Likewise a leaf whose
  activation is the same on a whole class (the token embedding under ``token``, the positional
  embedding under ``position``) is not drawn at all: every draw would give the same vector.
- **Leaves** (a node with no children, or a resampled one) need no recomputation: a component's
  activation at a prefix is read from one clean forward pass over the dataset, which is exact
  because that activation is a function of the prefix alone. A kept leaf stands for the
  component *and everything upstream of it* evaluated on one agreeing input (the hypothesis
  claims nothing finer inside it). A node whose children are all switched to resampled is not a
  leaf: all its inputs then come from random inputs. A head input (``q``, ``k``, ``v``) that a
  recomputed head does not name is the whole residual stream at a random prefix, per row.
- **Random baseline**: the output with every component of the final residual stream taken from
  its own random prefix (what the hypothesis "nothing matters" gives; a hypothesis with every
  node resampled evaluates to the same thing).
- **No approximation** is made beyond Monte-Carlo sampling: the estimate is unbiased, and the
  spread over ``n_seeds`` seeds shows its noise. Before the first evaluation the recomputation is
  checked against the model's own forward pass (heads, MLPs, final residual stream, logits);
  an architecture it cannot reproduce (rotary or ALiBi positions, parallel attention and MLP,
  attention soft-capping) raises :class:`~mechwidgets.errors.HypothesisError` instead of giving
  a wrong number.

Cost: one clean forward pass over the dataset, then per seed fused gathers from its cache plus
the recomputed nodes; a recomputed head costs one key and one value row per (sequence, key
position), or per (prediction, key position) when nested under another head's key or value
(rows then multiply by the sequence length). Rows are processed in chunks of bounded size.

Example::

    from mechwidgets.analysis.scrubbing import HypothesisNode, scrub
    from mechwidgets import zoo

    model = zoo.load("induction-2l")
    data = zoo.tasks.induction_sequences(256, length=20, model="induction-2l")
    hypothesis = HypothesisNode("output", children=[
        HypothesisNode("L1H2", children=[
            HypothesisNode("q", children=[HypothesisNode("embed", "token")]),
            HypothesisNode("k", children=[HypothesisNode("L0H2", "previous_token")]),
            HypothesisNode("v", children=[HypothesisNode("embed", "token")]),
        ]),
    ])
    result = scrub(model, hypothesis, data)   # ScrubResult: result.fraction, result.fraction_std
"""

from __future__ import annotations

from typing import Any

from .dataset import dataset_tokens
from .hypothesis import FEATURES, Feature, HypothesisNode, ScrubResult, resolve_feature
from .induction import induction_heads, induction_hypothesis
from .scrubber import Scrubber


def scrub(model: Any, hypothesis: HypothesisNode, dataset: Any, **options: Any) -> ScrubResult:
    """Causal-scrub ``hypothesis`` on ``model`` over ``dataset`` (see the module docstring):
    ``Scrubber(model, dataset, **options).evaluate(hypothesis)``.

    Args:
        model: a TransformerLens ``HookedTransformer`` (3.x) or ``TransformerBridge`` (4.x).
        hypothesis: a :class:`HypothesisNode` tree rooted at ``HypothesisNode("output", ...)``.
        dataset: ``[n, pos]`` tokens, strings of one token length, or zoo task objects.
        **options: the keyword options of :class:`Scrubber` (``positions``, ``metric``,
            ``features``, ``n_seeds``, ``seed``, ``min_agreeing``, ``max_inputs``, ...), declared
            and documented there.

    Returns:
        A :class:`ScrubResult`.

    Raises:
        HypothesisError: a component the model lacks, a feature that raises or returns an
            unhashable value, a dataset too small to find agreeing inputs (the message names the
            node), or a model architecture the recomputation cannot mirror.
        PromptError: a malformed dataset. MetricError: a metric returning non-finite values.
    """
    return Scrubber(model, dataset, **options).evaluate(hypothesis)


__all__ = [
    "FEATURES",
    "Feature",
    "HypothesisNode",
    "ScrubResult",
    "Scrubber",
    "dataset_tokens",
    "induction_heads",
    "induction_hypothesis",
    "resolve_feature",
    "scrub",
]
