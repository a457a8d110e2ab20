"""Fixtures for the browser tests: one system Chromium, a JupyterLab server, the light harness.

Fixture names avoid ``browser`` and ``page`` (pytest-playwright's names):

- ``chromium`` (session): one headless ``/usr/bin/chromium`` for the whole session (a second sync
  Playwright in one process fails).
- ``net_context``: a fresh browser context whose every request is routed: 127.0.0.1/localhost
  continues, anything else is aborted and recorded in ``net_context.guard.blocked``.
- ``jupyter_lab`` (session): JupyterLab on 127.0.0.1, free port, no token/password,
  ``--allow-root``, temporary settings/runtime/workspaces and notebook dirs.
- ``lab_page``: a :class:`~harness.LabPage` (open a notebook, wait for its kernel, run cells,
  read outputs, evaluate Python in the kernel).
- ``widget_harness``: a :class:`~harness.WidgetHarness` (no Jupyter): ``widget_harness.mount(w)``
  renders any MechWidget/anywidget ``w`` wired to the real Python object.

Screenshots go to ``test-artifacts/`` at the repo root (git-ignored).
"""

from __future__ import annotations

import shutil
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import (
    CHROMIUM,
    JupyterLab,
    LabPage,
    NetworkGuard,
    StaticServer,
    WidgetHarness,
    artifact_path,
    launch_chromium,
    new_guarded_context,
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).resolve().parent
    for item in items:
        if here in Path(str(item.fspath)).resolve().parents:
            item.add_marker(pytest.mark.browser)


@pytest.fixture(scope="session")
def chromium() -> Iterator[Any]:
    if not Path(CHROMIUM).exists() and shutil.which(CHROMIUM) is None:
        pytest.skip(f"no Chromium at {CHROMIUM} (set MECHWIDGETS_CHROMIUM, or `make chromium`)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        chromium = launch_chromium(pw)
        try:
            yield chromium
        finally:
            chromium.close()


@dataclass
class GuardedContext:
    context: Any
    guard: NetworkGuard

    def new_page(self) -> Any:
        return self.context.new_page()


@pytest.fixture
def net_context(chromium: Any) -> Iterator[GuardedContext]:
    context, guard = new_guarded_context(chromium)
    context.set_default_timeout(30_000)
    try:
        yield GuardedContext(context, guard)
    finally:
        context.close()


@pytest.fixture(scope="session")
def static_server() -> Iterator[StaticServer]:
    server = StaticServer()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def widget_harness(net_context: GuardedContext, static_server: StaticServer) -> Iterator[WidgetHarness]:
    harness = WidgetHarness(net_context.context, static_server)
    harness.guard = net_context.guard  # type: ignore[attr-defined]
    try:
        yield harness
    finally:
        harness.close()


@pytest.fixture(scope="session")
def jupyter_lab() -> Iterator[JupyterLab]:
    lab = JupyterLab()
    try:
        yield lab
    finally:
        lab.close()


@pytest.fixture
def lab_page(jupyter_lab: JupyterLab, net_context: GuardedContext) -> Iterator[LabPage]:
    page = net_context.new_page()
    lab = LabPage(jupyter_lab, page)
    lab.guard = net_context.guard  # type: ignore[attr-defined]
    try:
        yield lab
    finally:
        page.close()


@pytest.fixture
def screenshot(request: pytest.FixtureRequest) -> Any:
    """``screenshot(page_or_locator, "name")`` saves test-artifacts/<test>-<name>.png."""

    def take(target: Any, name: str) -> Path:
        path = artifact_path(f"{request.node.name}-{name}.png")
        target.screenshot(path=str(path))
        return path

    return take
