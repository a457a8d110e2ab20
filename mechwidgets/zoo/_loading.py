"""Reading and writing zoo models: config, tokenizer, weights, and the TransformerLens adapters.

A zoo model lives in ``mechwidgets/zoo/<name>/``:

- ``config.json``: ``hooked_transformer_config`` (the ``HookedTransformerConfig`` fields), the
  tokenizer folder, the weight file and a sha256 per shipped file;
- ``model.safetensors``: the parameters in ``HookedTransformer`` naming and layout;
- ``tokenizer/``: a ``tokenizers`` tokenizer saved with ``save_pretrained``;
- ``README.md``: the model card written by :mod:`mechwidgets.zoo.train`.

Under TransformerLens 3.x the model is a ``HookedTransformer``. Under 4.x (no
``HookedTransformer``) it is a ``TransformerBridge.boot_native`` model whose weights are converted
from the ``HookedTransformer`` layout by :func:`hooked_to_bridge_state_dict`.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch

from .._versions import tl_major_version
from ..errors import ZooError

ZOO_DIR = Path(__file__).resolve().parent
CONFIG_FILENAME = "config.json"
WEIGHTS_FILENAME = "model.safetensors"
TOKENIZER_DIRNAME = "tokenizer"
FORMAT_VERSION = 1


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ZooError(f"Zoo file is missing: {path}. Reinstall mechwidgets or re-train the model.")
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        raise ZooError(f"Zoo file is corrupted: {path} ({e}). Reinstall mechwidgets.") from e


def check_file(path: Path, expected_sha256: str | None) -> None:
    """Raise :class:`ZooError` naming ``path`` if it is missing or its hash is not the shipped one."""
    if not path.is_file():
        raise ZooError(
            f"Zoo file is missing: {path}. Reinstall mechwidgets or re-train with "
            "`python -m mechwidgets.zoo.train <name>`."
        )
    if expected_sha256 is not None and sha256_file(path) != expected_sha256:
        raise ZooError(
            f"Zoo file is corrupted: {path} (sha256 does not match the one in its config.json). "
            "Reinstall mechwidgets or re-train with `python -m mechwidgets.zoo.train <name>`."
        )


def load_safetensors(path: Path, expected_sha256: str | None = None) -> dict[str, torch.Tensor]:
    """Load a safetensors file; any problem becomes a :class:`ZooError` that names the file."""
    from safetensors.torch import load_file

    check_file(path, expected_sha256)
    try:
        return load_file(str(path), device="cpu")
    except Exception as e:  # safetensors raises its own error types
        raise ZooError(f"Zoo file is corrupted: {path} ({type(e).__name__}: {e}).") from e


def load_tokenizer(folder: Path) -> Any:
    """The model's tokenizer as a ``PreTrainedTokenizerFast`` (no network)."""
    from transformers import PreTrainedTokenizerFast

    if not (folder / "tokenizer.json").is_file():
        raise ZooError(f"Zoo file is missing: {folder / 'tokenizer.json'}. Reinstall mechwidgets.")
    try:
        return PreTrainedTokenizerFast.from_pretrained(str(folder), local_files_only=True)
    except Exception as e:
        raise ZooError(f"Zoo tokenizer in {folder} could not be loaded ({e}).") from e


def hooked_to_bridge_state_dict(
    sd: dict[str, torch.Tensor], cfg: dict[str, Any]
) -> dict[str, torch.Tensor]:
    """Convert a ``HookedTransformer`` state dict to ``TransformerBridge.boot_native`` naming/layout.

    ``W_Q/W_K/W_V`` ``[n_heads, d_model, d_head]`` become ``nn.Linear`` weights
    ``[n_heads * d_head, d_model]``; ``W_O`` ``[n_heads, d_head, d_model]`` becomes
    ``[d_model, n_heads * d_head]``; ``W_in``, ``W_out`` and ``W_U`` are transposed.
    """
    out: dict[str, torch.Tensor] = {}
    out["embed.weight"] = sd["embed.W_E"]
    if "pos_embed.W_pos" in sd:
        out["pos_embed.weight"] = sd["pos_embed.W_pos"]
    for layer in range(cfg["n_layers"]):
        p = f"blocks.{layer}."
        for ln in ("ln1", "ln2"):
            if p + ln + ".w" in sd:
                out[p + ln + ".weight"] = sd[p + ln + ".w"]
                out[p + ln + ".bias"] = sd[p + ln + ".b"]
        for name in ("Q", "K", "V"):
            w = sd[p + f"attn.W_{name}"]  # [n_heads, d_model, d_head]
            n_heads, d_model, d_head = w.shape
            out[p + f"attn.{name.lower()}.weight"] = (
                w.permute(0, 2, 1).reshape(n_heads * d_head, d_model).contiguous()
            )
            out[p + f"attn.{name.lower()}.bias"] = sd[p + f"attn.b_{name}"].reshape(-1).contiguous()
        w_o = sd[p + "attn.W_O"]  # [n_heads, d_head, d_model]
        out[p + "attn.o.weight"] = w_o.reshape(-1, w_o.shape[-1]).T.contiguous()
        out[p + "attn.o.bias"] = sd[p + "attn.b_O"]
        if p + "mlp.W_in" in sd:
            out[p + "mlp.in.weight"] = sd[p + "mlp.W_in"].T.contiguous()
            out[p + "mlp.in.bias"] = sd[p + "mlp.b_in"]
            out[p + "mlp.out.weight"] = sd[p + "mlp.W_out"].T.contiguous()
            out[p + "mlp.out.bias"] = sd[p + "mlp.b_out"]
    if "ln_final.w" in sd:
        out["ln_final.weight"] = sd["ln_final.w"]
        out["ln_final.bias"] = sd["ln_final.b"]
    out["unembed.weight"] = sd["unembed.W_U"].T.contiguous()
    if "unembed.b_U" in sd:
        out["unembed.bias"] = sd["unembed.b_U"]
    return out


def _build_hooked(cfg_dict: dict[str, Any], tokenizer: Any, sd: dict[str, torch.Tensor],
                  device: str, weights_path: Path) -> Any:
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    cfg = HookedTransformerConfig(**{**cfg_dict, "device": device})
    model = HookedTransformer(cfg, tokenizer=tokenizer, move_to_device=False)
    own = model.state_dict()
    # Non-parameter buffers (causal mask, IGNORE) are not shipped: take them from the model.
    buffers = {k for k in own if k not in dict(model.named_parameters())}
    missing = sorted(set(own) - set(sd) - buffers)
    unexpected = sorted(set(sd) - set(own))
    if missing or unexpected:
        raise ZooError(
            f"Zoo file {weights_path} does not match its config: missing {missing[:5]}, "
            f"unexpected {unexpected[:5]}. Reinstall mechwidgets or re-train the model."
        )
    full = {k: own[k] for k in buffers}
    for k, v in sd.items():
        if v.shape != own[k].shape:
            raise ZooError(
                f"Zoo file {weights_path}: {k} has shape {tuple(v.shape)}, the config expects "
                f"{tuple(own[k].shape)}."
            )
        full[k] = v.to(own[k].dtype)
    model.load_state_dict(full, strict=True)
    return model if torch.device(device).type == "cpu" else model.to(device)


def bridge_config_dict(cfg_dict: dict[str, Any]) -> dict[str, Any]:
    keys = (
        "n_layers", "d_model", "n_ctx", "d_head", "n_heads", "d_mlp", "d_vocab", "act_fn",
        "normalization_type", "attn_only", "positional_embedding_type", "eps",
        "default_prepend_bos",
    )
    out = {k: cfg_dict[k] for k in keys if k in cfg_dict and cfg_dict[k] is not None}
    out["init_weights"] = False
    return out


def _build_bridge(cfg_dict: dict[str, Any], tokenizer: Any, sd: dict[str, torch.Tensor],
                  device: str, weights_path: Path) -> Any:
    from transformer_lens.config import TransformerBridgeConfig
    from transformer_lens.model_bridge import TransformerBridge

    bcfg = TransformerBridgeConfig.from_dict(bridge_config_dict(cfg_dict))
    model = TransformerBridge.boot_native(bcfg, tokenizer=tokenizer, model_name=cfg_dict.get(
        "model_name", "native"))
    try:
        converted = hooked_to_bridge_state_dict(sd, cfg_dict)
    except KeyError as e:
        raise ZooError(f"Zoo file {weights_path} lacks the tensor {e}.") from e
    own = model.state_dict()
    missing = sorted(set(own) - set(converted))
    unexpected = sorted(set(converted) - set(own))
    if unexpected or any(not k.endswith("unembed.bias") for k in missing):
        raise ZooError(
            f"Zoo file {weights_path} does not fit the TransformerBridge layout: missing "
            f"{missing[:5]}, unexpected {unexpected[:5]}."
        )
    for k in missing:  # a model trained without an unembedding bias
        converted[k] = torch.zeros_like(own[k])
    converted = {k: v.to(own[k].dtype) for k, v in converted.items()}
    model.load_state_dict(converted, strict=True)
    return model if torch.device(device).type == "cpu" else model.to(device)


def load_weights(folder: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any], Any]:
    """The checked state dict (``HookedTransformer`` layout), the ``HookedTransformerConfig``
    fields and the tokenizer stored in ``folder``."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    meta = read_json(folder / CONFIG_FILENAME)
    hashes = meta.get("sha256", {})
    for rel, digest in hashes.items():
        check_file(folder / rel, digest)
    sd = load_safetensors(folder / meta.get("weights", WEIGHTS_FILENAME))
    tokenizer = load_tokenizer(folder / meta.get("tokenizer", TOKENIZER_DIRNAME))
    return sd, dict(meta["hooked_transformer_config"]), tokenizer


def load_model_dir(folder: Path, *, device: str = "cpu") -> Any:
    """Build the TransformerLens model stored in ``folder`` (see the module docstring)."""
    sd, cfg_dict, tokenizer = load_weights(folder)
    weights_path = folder / read_json(folder / CONFIG_FILENAME).get("weights", WEIGHTS_FILENAME)
    if tl_major_version() >= 4:
        model = _build_bridge(cfg_dict, tokenizer, sd, device, weights_path)
    else:
        model = _build_hooked(cfg_dict, tokenizer, sd, device, weights_path)
    model.eval()
    return model
