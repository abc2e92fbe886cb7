"""Fixtures of the dashboard tests: one real ``barge serve`` for the whole session (in
front of a loopback upstream; at most 8 requests in flight, so that a batch of slow
requests runs for a while and a cancel drains quickly), and a headless Chromium driven by
Playwright.

The browser is Debian's ``chromium`` (``scripts/chromium-up`` installs it; Playwright
never downloads one). Run directly without it, the browser tests are skipped with the
reason; under ``make test`` (``BARGE_TEST_BROWSER=required``) a missing browser fails.

Screenshots go to ``$BARGE_TEST_ARTIFACTS`` (default: a pytest temporary folder);
``BARGE_TEST_UPDATE_SCREENSHOT=1`` also rewrites the README's ``docs/dashboard.png``."""

from __future__ import annotations

import importlib.util
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import pytest
from barge_process import ADMIN_KEY, BargeProcess
from ui.support import Dashboard, Watch
from upstream import UpstreamConfig, UpstreamServer

if TYPE_CHECKING:
    from playwright.sync_api import Browser, ConsoleMessage, Page

VIEWPORT = {"width": 1280, "height": 800}


@pytest.fixture(scope="session")
def dashboard(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dashboard]:
    with UpstreamServer.in_thread(UpstreamConfig()) as upstream:
        barge = BargeProcess(tmp_path_factory.mktemp("ui") / "data", upstream.base_url,
                             "--backoff-base", "0.01", "--upstream-concurrency", "8")
        barge.start()
        client = barge.client(ADMIN_KEY)
        try:
            yield Dashboard(barge, client)
        finally:
            client.close()
            barge.kill()


@pytest.fixture(scope="session")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where screenshots go: $BARGE_TEST_ARTIFACTS, or a pytest temporary folder."""
    named = os.environ.get("BARGE_TEST_ARTIFACTS")
    folder = Path(named) if named else tmp_path_factory.mktemp("ui-artifacts")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _unavailable(reason: str) -> NoReturn:
    if os.environ.get("BARGE_TEST_BROWSER") == "required":
        pytest.fail(f"{reason} (BARGE_TEST_BROWSER=required: run scripts/chromium-up)")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """Headless Chromium (the system's; no download), one for all the browser tests: they
    are one module. Not for the session: while Playwright's sync API is open, its event
    loop counts as running in this thread, and every later asyncio test would fail."""
    executable = shutil.which("chromium")
    if executable is None:
        _unavailable("the browser tests need Debian's chromium (scripts/chromium-up)")
    if importlib.util.find_spec("playwright") is None:
        _unavailable("the browser tests need playwright (pip install -e '.[test]')")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=executable, headless=True,
                                      args=["--no-sandbox"])
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def watch() -> Watch:
    return Watch()


@pytest.fixture
def new_page(
    browser: Browser, dashboard: Dashboard, artifacts: Path, watch: Watch,
    request: pytest.FixtureRequest,
) -> Iterator[Callable[..., Page]]:
    """``new_page()``: a page in a fresh browser context (its own sessionStorage), every
    request and console error recorded in ``watch``; each is screenshotted at the end,
    and must have loaded nothing from outside the server nor logged any page error."""
    contexts: list[Any] = []
    pages: list[Page] = []

    def make() -> Page:
        context = browser.new_context(viewport=VIEWPORT, accept_downloads=True,  # type: ignore[arg-type]
                                      base_url=dashboard.root)
        context.on("request", lambda r: watch.requests.append(r.url))
        page = context.new_page()

        def on_console(message: ConsoleMessage) -> None:
            if message.type == "error":
                watch.console_errors.append(message.text)

        page.on("console", on_console)
        page.on("pageerror", lambda e: watch.console_errors.append(f"uncaught: {e}"))
        contexts.append(context)
        pages.append(page)
        return page

    yield make
    for i, page in enumerate(pages):
        if not page.is_closed():
            page.screenshot(path=str(artifacts / f"{request.node.name}-{i}.png"))
    for context in contexts:
        context.close()
    assert watch.requests, "the page made no request at all"
    assert not watch.outside(), f"requests outside the server: {watch.outside()}"
    assert not watch.unexpected_errors(), watch.unexpected_errors()
