"""Shared fixtures: tiny TransformerLens models built from a config, with an offline tokenizer.

Nothing is downloaded: the tokenizer is built with the `tokenizers` library, saved to a temporary
folder and loaded back with `PreTrainedTokenizerFast` (TransformerLens re-loads tokenizers by
their `name_or_path`, so an in-memory one is not enough).
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import threading
from collections.abc import Callable
from typing import Any

import pytest
import torch
from support import assert_unchanged, build_tokenizer, snapshot, tiny_model

torch.set_num_threads(2)


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> bool | None:
    """Run every test that is not a browser test in a fresh thread, where no event loop runs.

    Playwright's sync API (the browser tests, in the same session) leaves an event loop marked
    running in the main thread; a widget there would then schedule its jobs on that loop instead
    of running them, as it does in plain Python. A kernel's loop is tested by the browser tests."""
    if pyfuncitem.get_closest_marker("browser") is not None:
        return None
    args = {name: pyfuncitem.funcargs[name] for name in pyfuncitem._fixtureinfo.argnames}
    errors: list[BaseException] = []

    def target() -> None:
        try:
            pyfuncitem.obj(**args)
        except BaseException as exc:  # re-raised in the main thread, where pytest reports it
            errors.append(exc)

    thread = threading.Thread(target=target, name=f"test:{pyfuncitem.name}")
    thread.start()
    thread.join()
    if errors:
        raise errors[0]
    return True

@pytest.fixture(scope="session")
def tokenizer(tmp_path_factory: pytest.TempPathFactory) -> Any:
    return build_tokenizer(tmp_path_factory.mktemp("tokenizer"))


@pytest.fixture(scope="session")
def make_model(tokenizer: Any) -> Callable[..., Any]:
    """Build a tiny random model (HookedTransformer under 3.x, TransformerBridge under 4.x)."""

    def make(**overrides: Any) -> Any:
        return tiny_model(tokenizer, **overrides)

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
