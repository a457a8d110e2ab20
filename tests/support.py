"""Helpers shared by the tests (importable as `support`; pytest fixtures live in conftest.py).

Kept out of conftest.py because tests/ and tests/browser/ both have a conftest module, so
`from conftest import ...` would resolve to whichever pytest imported last.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from mechwidgets._model import tl_major_version

WORDS = (
    "the a cat dog sat on mat and then ran to store Mary John gave drink When went , . "
    "A B C D E F G H I J K L M N O P Q R S T U V W X Y Z"
).split()

def build_tokenizer(folder: Path) -> Any:
    """A word-level tokenizer with a BOS token and GPT-2-like leading-space words."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<|endoftext|>": 0, "<unk>": 1}
    for w in WORDS:
        for form in (w, " " + w):
            vocab.setdefault(form, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r" ?[^\s,.]+|[,.]"), behavior="isolated")
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>",
        unk_token="<unk>", pad_token="<|endoftext|>",
    )
    fast.save_pretrained(str(folder))
    return PreTrainedTokenizerFast.from_pretrained(str(folder))


#: TransformerLens 3.x (HookedTransformer) rather than 4.x (TransformerBridge only).
TL3 = tl_major_version() == 3


def tiny_config(**overrides: Any) -> dict[str, Any]:
    cfg = dict(
        n_layers=2, d_model=32, n_heads=4, d_head=8, d_mlp=64, n_ctx=32, d_vocab=80,
        act_fn="gelu", normalization_type="LN", seed=0,
    )
    cfg.update(overrides)
    return cfg


def snapshot(model: Any) -> dict[str, Any]:
    """Everything a mechwidgets call must leave unchanged."""
    from mechwidgets._model import hook_count

    return {
        "params": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "training": [m.training for m in model.modules()],
        "grad": torch.is_grad_enabled(),
        "hooks": hook_count(model),
        "param_grads": [p.grad is None for p in model.parameters()],
    }


def assert_unchanged(model: Any, before: dict[str, Any]) -> None:
    after = snapshot(model)
    assert after["hooks"] == before["hooks"], "hooks were left on the model"
    assert after["training"] == before["training"], "train/eval mode changed"
    assert after["grad"] == before["grad"], "grad mode changed"
    assert after["param_grads"] == before["param_grads"], "parameter .grad changed"
    for k, v in before["params"].items():
        assert torch.equal(after["params"][k], v), f"parameter {k} changed"


def tiny_model(tokenizer: Any, **overrides: Any) -> Any:
    """A tiny random model (:func:`tiny_config`), HookedTransformer under TransformerLens 3.x,
    TransformerBridge under 4.x, in eval mode."""
    cfg = tiny_config(**overrides)
    cfg["d_vocab"] = max(cfg["d_vocab"], len(tokenizer))
    if TL3:
        from transformer_lens import HookedTransformer, HookedTransformerConfig

        model = HookedTransformer(HookedTransformerConfig(**cfg), tokenizer=tokenizer)
    else:
        from transformer_lens import TransformerBridge, TransformerBridgeConfig

        model = TransformerBridge.boot_native(TransformerBridgeConfig.from_dict(cfg), tokenizer=tokenizer)
    return model.eval()


def request(widget: Any, rid: Any, kind: str, **args: Any) -> list[dict[str, Any]]:
    """Send ``widget`` a request as the page does; every message it sends back."""
    sent: list[dict[str, Any]] = []
    widget.send = lambda content, buffers=None: sent.append(content)
    widget._on_frontend_message(widget, {"type": "request", "id": rid, "kind": kind, "args": args}, [])
    return sent
