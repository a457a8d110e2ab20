"""The zoo's GPT-2-shaped models as Hugging Face and nnsight models (issue 18: every backend runs
the same trained weights).

``toy-lm`` is a GPT-2 in all but one detail: learned absolute positions, pre-LayerNorm, exact
GELU MLPs, ``d_head = d_model / n_heads``, and an unembedding tied to the embedding
(``W_U = W_E^T``, stored both ways). The detail: its unembedding has a bias ``b_U``, which
GPT-2's ``lm_head`` lacks. :func:`gpt2_from_hooked` therefore gives the
``GPT2LMHeadModel`` an ``lm_head`` with a bias (its weight still tied to ``wte``), so the logits
are the TransformerLens model's, not an approximation. ``induction-2l`` (attention only, no
LayerNorm) has no Hugging Face GPT-2 form: asking for one is a :class:`ZooError`.

Weight layouts (TransformerLens → GPT-2's ``Conv1D``, which computes ``x @ W + b``):
``W_Q/W_K/W_V [n_heads, d_model, d_head]`` → columns of ``c_attn.weight [d_model, 3 * d_model]``
(q, then k, then v, heads in order); ``W_O [n_heads, d_head, d_model]`` → ``c_proj.weight
[n_heads * d_head, d_model]``; ``W_in``/``W_out`` as they are.
"""

from __future__ import annotations

from typing import Any

import torch

from ..errors import ZooError

#: What ``zoo.load(..., backend=...)`` accepts.
BACKENDS = ("transformer_lens", "hf", "nnsight")


def _gpt2_config(cfg: dict[str, Any], tokenizer: Any) -> Any:
    from transformers import GPT2Config

    why = []
    if cfg.get("normalization_type") != "LN":
        why.append(f"its normalization is {cfg.get('normalization_type')!r}, not LayerNorm")
    if cfg.get("positional_embedding_type", "standard") != "standard":
        why.append("its positions are not learned absolute embeddings")
    if cfg.get("attn_only"):
        why.append("it is attention-only (GPT-2 blocks have MLPs)")
    elif cfg.get("act_fn") not in ("gelu", "gelu_new"):
        why.append(f"its activation {cfg.get('act_fn')!r} is not a GELU")
    if cfg["d_head"] * cfg["n_heads"] != cfg["d_model"]:
        why.append("d_head * n_heads != d_model")
    if why:
        raise ZooError(
            f"the zoo model {cfg.get('model_name')!r} has no Hugging Face GPT-2 form: "
            + "; ".join(why) + ". Load it with backend='transformer_lens', or use 'toy-lm'."
        )
    return GPT2Config(
        vocab_size=cfg["d_vocab"], n_positions=cfg["n_ctx"], n_embd=cfg["d_model"],
        n_layer=cfg["n_layers"], n_head=cfg["n_heads"], n_inner=cfg["d_mlp"],
        activation_function=cfg["act_fn"], layer_norm_epsilon=cfg.get("eps", 1e-5),
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, scale_attn_weights=True,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=True,
    )


def gpt2_state_dict(sd: dict[str, torch.Tensor], cfg: dict[str, Any]) -> dict[str, torch.Tensor]:
    """A ``HookedTransformer`` state dict in ``GPT2LMHeadModel`` naming and layout (the
    ``lm_head`` weight is tied to ``wte``; ``lm_head.bias`` is the unembedding's bias)."""
    out = {"transformer.wte.weight": sd["embed.W_E"], "transformer.wpe.weight": sd["pos_embed.W_pos"]}
    d_model = cfg["d_model"]
    for layer in range(cfg["n_layers"]):
        src, dst = f"blocks.{layer}.", f"transformer.h.{layer}."
        for a, b in (("ln1", "ln_1"), ("ln2", "ln_2")):
            out[dst + b + ".weight"], out[dst + b + ".bias"] = sd[src + a + ".w"], sd[src + a + ".b"]
        qkv = [sd[src + f"attn.W_{n}"].permute(1, 0, 2).reshape(d_model, -1) for n in "QKV"]
        out[dst + "attn.c_attn.weight"] = torch.cat(qkv, 1).contiguous()
        out[dst + "attn.c_attn.bias"] = torch.cat([sd[src + f"attn.b_{n}"].reshape(-1) for n in "QKV"])
        out[dst + "attn.c_proj.weight"] = sd[src + "attn.W_O"].reshape(-1, d_model).contiguous()
        out[dst + "attn.c_proj.bias"] = sd[src + "attn.b_O"]
        out[dst + "mlp.c_fc.weight"], out[dst + "mlp.c_fc.bias"] = sd[src + "mlp.W_in"], sd[src + "mlp.b_in"]
        out[dst + "mlp.c_proj.weight"], out[dst + "mlp.c_proj.bias"] = sd[src + "mlp.W_out"], sd[src + "mlp.b_out"]
    out["transformer.ln_f.weight"], out["transformer.ln_f.bias"] = sd["ln_final.w"], sd["ln_final.b"]
    out["lm_head.bias"] = sd["unembed.b_U"] if "unembed.b_U" in sd else torch.zeros(cfg["d_vocab"])
    return out


def gpt2_from_hooked(sd: dict[str, torch.Tensor], cfg: dict[str, Any], tokenizer: Any,
                     device: str = "cpu") -> Any:
    """A ``GPT2LMHeadModel`` (eval mode) whose logits are those of the ``HookedTransformer``
    with state dict ``sd`` and config ``cfg`` (module docstring)."""
    from transformers import GPT2LMHeadModel

    config = _gpt2_config(cfg, tokenizer)
    if not torch.equal(sd["unembed.W_U"], sd["embed.W_E"].T):
        raise ZooError(f"the zoo model {cfg.get('model_name')!r} does not tie its unembedding to "
                       f"its embedding, as GPT-2 does: load it with backend='transformer_lens'.")
    model: Any = GPT2LMHeadModel(config)
    # GPT-2's lm_head has no bias; the zoo model's unembedding has one (module docstring)
    head = torch.nn.Linear(cfg["d_model"], cfg["d_vocab"], bias=True)
    head.weight = model.transformer.wte.weight
    model.lm_head = head
    missing, unexpected = model.load_state_dict(gpt2_state_dict(sd, cfg), strict=False)
    # the causal-mask buffers are the model's own; lm_head.weight is wte's (tied)
    left = [k for k in missing if not k.endswith((".attn.bias", ".attn.masked_bias")) and k != "lm_head.weight"]
    if left or unexpected:
        raise ZooError(f"converting {cfg.get('model_name')!r} to GPT-2 left {left[:5]} unset and "
                       f"{unexpected[:5]} unused: this is a bug in mechwidgets.")
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.to(torch.device(device))
    return model.eval()


def nnsight_model(hf_model: Any, tokenizer: Any) -> Any:
    """``hf_model`` wrapped by nnsight (its transformers wrapper class, with the zoo tokenizer)."""
    try:
        import warnings

        from nnsight import LanguageModel
    except ImportError as e:
        raise ZooError("backend='nnsight' needs the nnsight package: `pip install "
                       "mechwidgets[nnsight]` (or `pip install nnsight`).") from e
    with warnings.catch_warnings():
        # LanguageModel(model, tokenizer=...) is the form that wraps a model object; its
        # deprecation names TransformersModel(repo_id), which loads by name (a download)
        warnings.simplefilter("ignore")
        return LanguageModel(hf_model, tokenizer=tokenizer)


__all__ = ["BACKENDS", "gpt2_from_hooked", "gpt2_state_dict", "nnsight_model"]
