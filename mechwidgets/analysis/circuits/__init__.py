"""Circuit discovery on the edges of a transformer's computational graph: EAP and ACDC.

**The graph** (as in ACDC, Conmy et al. 2023, "Towards Automated Circuit Discovery for
Mechanistic Interpretability", and EAP, Syed, Rager & Conmy 2023, "Attribution Patching
Outperforms Automated Circuit Discovery"). Every component that writes to the residual stream is
a *source*; every component that reads it is a *destination*:

- sources, in topological order: ``embed`` (the residual stream before layer 0: token plus
  positional embeddings), each attention head ``a{layer}.h{head}`` (its output ``z_h @ W_O[h]``,
  computed from ``hook_z``; the layer's ``b_O`` is a constant, the same in every run), each MLP
  ``m{layer}`` (``hook_mlp_out``);
- destinations: each head's three inputs ``a{layer}.h{head}.q`` / ``.k`` / ``.v`` (separately),
  each MLP's input ``m{layer}``, and ``logits`` (the final residual stream, before ``ln_final``).

An **edge** ``u->v`` is source ``u``'s direct contribution, through the residual stream, to
destination ``v``'s input; there is one between every source and every later destination (the
heads of layer ``l`` feed the MLP of layer ``l`` and everything after it). On ``toy-lm`` (4
layers, 4 heads, MLPs) that is 479 edges.

**Patching an edge** (removing it from the circuit) replaces its contribution by the value it
has on the corrupted run: ``input_v <- input_v - a_u + a_u^corrupted`` where ``a_u`` is ``u``'s
output in the run being computed. A circuit is a set of kept edges; evaluating it is one real
forward pass in which every other edge is patched this way, so effects propagate: a head whose
inputs were patched produces a different output, which is what its kept edges then carry. With
every edge removed each destination reads exactly its corrupted-run input, so the empty circuit
gives the corrupted metric and the full circuit the clean one.

**Edge attribution patching (EAP)** scores every edge from one clean forward with gradients, one
corrupted forward and one backward pass::

    score(u->v) = sum over batch, positions of (a_u^corrupted - a_u^clean) . d metric / d input_v

with the gradient taken on the clean run. *Sign convention*: the score is the first-order
(linear) estimate of ``metric(clean with only u->v patched) - metric(clean)``: the change of the
metric when the edge is corrupted. For a metric the clean run makes large (a logit difference),
edges that carry the behaviour have **negative** scores; an edge with a positive score works
against it. Circuits keep edges by ``|score|``.

**EAP-IG** (Hanna, Pezzelle & Belinkov 2024, "Have Faith in Faithfulness") replaces the clean
run's gradient by its mean over ``steps`` runs whose input embeddings go from the corrupted to
the clean prompts' (``corrupted + k/steps * (clean - corrupted)``, ``k = 1..steps``): the same
linear estimate, integrated along a path, which sees effects that a saturated softmax hides from
the gradient at the clean run. ``steps`` forward and backward passes more than EAP.

**ACDC** prunes with exact patched forwards. It visits destinations in reverse topological order
(``logits`` first, then the last layer's MLP, then its heads' v, k, q inputs, down to layer 0)
and, for each of its incoming edges, latest source first, tries removing it on top of the edges
already removed: if the metric moves by less than ``threshold`` (``|metric(new circuit) -
metric(current circuit)| < threshold``) the edge stays removed. *Signed* ACDC (``signed=True``,
the rule of ACDC's own code, which minimises a loss) removes it when the metric moves *away from
the clean run's value* by less than ``threshold``, so edges that work against the behaviour
(negative heads) always go: smaller circuits, whose faithfulness can exceed 1. The change measured for each
edge is its score. Since every node upstream of the destination being pruned still has all of
its inputs, each step runs the model only from that destination's layer onwards.

**Faithfulness** of a circuit is its metric normalised between the runs:
``(metric_circuit - metric_corrupted) / (metric_clean - metric_corrupted)``: 1 for the full
graph, 0 for the empty one.

Implementation. Head outputs are computed from ``hook_z`` and ``W_O`` (``use_attn_result`` is
never touched), and per-head q/k/v inputs without ``use_split_qkv_input``: a patched head's
``hook_q``/``hook_k``/``hook_v`` is recomputed as ``ln1(input_h) @ W[h] + b[h]``, and EAP maps the
gradients at those hooks back through ``W`` and ``ln1`` (a vector-Jacobian product at
``resid_pre``), which is exactly the gradient a separate per-head input would receive. MLP inputs
use TransformerLens's ``hook_mlp_in``: ``cfg.use_hook_mlp_in`` is switched on for the duration of
one forward pass and the user's value restored in a ``finally``. Hooks never outlive one forward
pass, so a long ACDC run leaves the model usable between its steps. EAP's and EAP-IG's recording
runs skip the hook points where :mod:`mechwidgets._fast` computes a model's forward pass exactly (a plain
pre-norm ``HookedTransformer`` with learned positions and no hooks of its own attached): on a
small model TransformerLens's per-hook bookkeeping is a large share of a forward pass.

On a TransformerLens 4.x ``TransformerBridge`` everything goes through TransformerLens 4's own
hook points, which carry 3.x's names and (after their ``hook_conversion``) shapes; its
``hook_mlp_in`` is switched on the same way. Each patched forward runs from the tokens (a
bridge's ``start_at_layer`` runs the earlier blocks anyway), and the final residual is read at
the last block's ``hook_resid_post``. The scores, ACDC's circuits and faithfulness equal those of
a ``HookedTransformer`` with the same weights (tests/test_circuits_tl4.py).

The package, by section: :mod:`.graph` (the nodes and edges), :mod:`.results` (what an analysis
returns), :mod:`.inputs` (the arguments and their checks), :mod:`.base`, :mod:`.scoring` and
:mod:`.patcher` (:class:`EdgePatcher`: its ground, its set-up runs with EAP and EAP-IG, its exact
patched forwards with faithfulness and ACDC), :mod:`.functions` (the headless entry points) and
:mod:`.layout` (where the graph is drawn, for the widget and its static picture).
"""

from ..metrics import METRICS
from .functions import PatcherOptions, acdc, circuit_faithfulness, edge_attribution_patching
from .graph import PORTS, CircuitGraph, Node, build_graph
from .inputs import IG_STEPS, METHODS, Answers, CircuitError, MetricArg, MetricName, Prompts
from .patcher import EdgePatcher
from .results import CircuitResult, Faithfulness, NodeEffect

__all__ = [
    "IG_STEPS",
    "METHODS",
    "METRICS",
    "PORTS",
    "Answers",
    "CircuitError",
    "CircuitGraph",
    "CircuitResult",
    "EdgePatcher",
    "Faithfulness",
    "MetricArg",
    "MetricName",
    "Node",
    "NodeEffect",
    "PatcherOptions",
    "Prompts",
    "acdc",
    "build_graph",
    "circuit_faithfulness",
    "edge_attribution_patching",
]
