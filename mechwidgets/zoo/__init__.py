"""Small trained models shipped with mechwidgets, so demos and tests run offline.

Every model was trained from a fixed seed by :mod:`mechwidgets.zoo.train` on data from
:mod:`mechwidgets.zoo.tasks`, and has a model card (``mechwidgets/zoo/<name>/README.md``) with its
architecture, data, training and measured metrics.

- ``induction-2l``: two attention-only layers trained on random tokens with repeated segments; a
  previous-token head in layer 0 and an induction head in layer 1 (Olsson et al. 2022, "In-context
  Learning and Induction Heads").
- ``toy-lm``: four layers with MLPs, a word-level GPT-2-like tokenizer, trained on a generated
  English-like corpus mixing ordinary sentences with indirect object identification (Wang et al.
  2022), greater-than (Hanna et al. 2023), facts and agreement (it formed no induction head: use
  ``induction-2l`` for that); with TopK SAEs on its residual stream.

Example::

    from mechwidgets import zoo
    model = zoo.load("toy-lm")                 # HookedTransformer (TL 3.x) / TransformerBridge (4.x)
    saes = zoo.load_saes("toy-lm")             # {"blocks.0.hook_resid_pre": SAE, ...}
    pairs = zoo.tasks.ioi_pairs(8, seed=0)     # clean / corrupted prompts with answers
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import ZooError
from . import _hf, tasks
from ._loading import ZOO_DIR, check_file, load_model_dir, load_weights, read_json
from ._sae import SimpleSAE, SimpleSAEConfig, load_sae_folder

#: The shipped models, with one line each on what they are.
MODELS: dict[str, str] = {
    "induction-2l": "2-layer attention-only model with a previous-token head (L0) and an "
    "induction head (L1).",
    "toy-lm": "4-layer GPT-2-like word-level LM on a generated corpus: IOI, greater-than, "
    "facts, agreement (no induction head); TopK SAEs on the residual stream.",
}


def names() -> list[str]:
    """The names of the shipped models, e.g. ``["induction-2l", "toy-lm"]``."""
    return list(MODELS)


def _check_name(name: str) -> str:
    if not isinstance(name, str) or name not in MODELS:
        raise ZooError(
            f"Unknown zoo model {name!r}. Known models: {', '.join(names())}. "
            "See `mechwidgets.zoo.names()`."
        )
    return name


def model_dir(name: str) -> Path:
    """The folder holding ``name``'s config, weights, tokenizer, SAEs and model card."""
    return ZOO_DIR / _check_name(name)


def load(name: str, *, device: str = "cpu", backend: str = "transformer_lens") -> Any:
    """Load a zoo model, offline, in eval mode, with its tokenizer attached.

    Args:
        name: one of :func:`names`.
        device: torch device to put the model on. Default ``"cpu"``.
        backend: ``"transformer_lens"`` (default): a ``HookedTransformer`` under TransformerLens
            3.x, a ``TransformerBridge`` under 4.x. ``"hf"``: the same weights as a Hugging Face
            ``GPT2LMHeadModel`` (``toy-lm`` only; its ``lm_head`` keeps the unembedding's bias,
            see :mod:`mechwidgets.zoo._hf`), with ``.tokenizer`` set. ``"nnsight"``: that model
            wrapped by nnsight (needs the ``nnsight`` extra).

    Returns:
        The model, in eval mode. Its logits on the same tokens are the same for every backend.

    Raises:
        ZooError: unknown name or backend (the message lists the known ones), a model without a
            GPT-2 form asked for as ``"hf"``/``"nnsight"``, or a missing / corrupted file (the
            message names the file).
    """
    if backend not in _hf.BACKENDS:
        raise ZooError(f"unknown backend {backend!r}: use one of {', '.join(_hf.BACKENDS)}.")
    if backend == "transformer_lens":
        return load_model_dir(model_dir(name), device=device)
    sd, cfg, tokenizer = load_weights(model_dir(name))
    hf = _hf.gpt2_from_hooked(sd, cfg, tokenizer, device=device)
    hf.tokenizer = tokenizer
    return hf if backend == "hf" else _hf.nnsight_model(hf, tokenizer)


def load_saes(name: str, *, device: str = "cpu", use_sae_lens: bool | None = None) -> dict[str, Any]:
    """The SAEs trained on a zoo model, keyed by hook name (``{}`` if it has none).

    Args:
        name: one of :func:`names`.
        device: torch device. Default ``"cpu"``.
        use_sae_lens: ``None`` (default) uses sae-lens's ``SAE.load_from_disk`` when sae-lens is
            importable and :class:`SimpleSAE` otherwise; ``True`` / ``False`` force one of them.

    Returns:
        ``{hook_name: SAE}``, e.g. ``{"blocks.0.hook_resid_pre": ..., "blocks.3.hook_resid_post":
        ...}``, in layer order. Each has ``encode``, ``decode``, ``W_enc``, ``b_enc``, ``W_dec``,
        ``b_dec`` and ``cfg.metadata.hook_name``.
    """
    folder = model_dir(name)
    meta = read_json(folder / "config.json")
    out: dict[str, Any] = {}
    for entry in meta.get("saes", []):
        path = folder / entry["path"]
        sae = load_sae_folder(path, device=device, use_sae_lens=use_sae_lens,
                              expected_sha256=entry.get("sha256"))
        out[entry["hook_name"]] = sae
    return out


def model_card(name: str) -> str:
    """The text of ``name``'s model card (``README.md``)."""
    path = model_dir(name) / "README.md"
    check_file(path, None)
    return path.read_text()


__all__ = [
    "MODELS",
    "SimpleSAE",
    "SimpleSAEConfig",
    "ZooError",
    "load",
    "load_saes",
    "model_card",
    "model_dir",
    "names",
    "tasks",
]
