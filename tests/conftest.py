"""Shared fixtures: tiny TransformerLens models built from a config, with an offline tokenizer.

Nothing is downloaded: the tokenizer is built with the `tokenizers` library, saved to a temporary
folder and loaded back with `PreTrainedTokenizerFast` (TransformerLens re-loads tokenizers by
their `name_or_path`, so an in-memory one is not enough).
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

torch.set_num_threads(2)

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


@pytest.fixture(scope="session")
def tokenizer(tmp_path_factory: pytest.TempPathFactory) -> Any:
    return build_tokenizer(tmp_path_factory.mktemp("tokenizer"))


TL3 = True
try:
    from transformer_lens import HookedTransformer, HookedTransformerConfig
except ImportError:  # TransformerLens 4.x
    TL3 = False


def tiny_config(**overrides: Any) -> dict[str, Any]:
    cfg = dict(
        n_layers=2, d_model=32, n_heads=4, d_head=8, d_mlp=64, n_ctx=32, d_vocab=80,
        act_fn="gelu", normalization_type="LN", seed=0,
    )
    cfg.update(overrides)
    return cfg


@pytest.fixture(scope="session")
def make_model(tokenizer: Any) -> Callable[..., Any]:
    """Build a tiny random model (HookedTransformer under 3.x, TransformerBridge under 4.x)."""

    def make(**overrides: Any) -> Any:
        cfg = tiny_config(**overrides)
        cfg["d_vocab"] = max(cfg["d_vocab"], len(tokenizer))
        if TL3:
            model = HookedTransformer(HookedTransformerConfig(**cfg), tokenizer=tokenizer)
        else:
            from transformer_lens import TransformerBridge, TransformerBridgeConfig

            model = TransformerBridge.boot_native(TransformerBridgeConfig.from_dict(cfg), tokenizer=tokenizer)
        model.eval()
        return model

    return make


@pytest.fixture(scope="session")
def model(make_model: Callable[..., Any]) -> Any:
    return make_model()


def snapshot(model: Any) -> dict[str, Any]:
    """Everything a mechwidgets call must leave unchanged."""
    from mechwidgets._model import hook_count

    return {
        "params": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "training": model.training,
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


@pytest.fixture
def unchanged(model: Any):
    """Yields a checker that the session model is left exactly as it was."""
    before = snapshot(model)
    yield lambda m=model: assert_unchanged(m, before)
    assert_unchanged(model, before)
