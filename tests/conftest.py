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
from typing import Any

import pytest
import torch
from support import TL3, assert_unchanged, build_tokenizer, snapshot, tiny_config

if TL3:
    from transformer_lens import HookedTransformer, HookedTransformerConfig

torch.set_num_threads(2)

@pytest.fixture(scope="session")
def tokenizer(tmp_path_factory: pytest.TempPathFactory) -> Any:
    return build_tokenizer(tmp_path_factory.mktemp("tokenizer"))


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


@pytest.fixture
def unchanged(model: Any):
    """Yields a checker that the session model is left exactly as it was."""
    before = snapshot(model)
    yield lambda m=model: assert_unchanged(m, before)
    assert_unchanged(model, before)
