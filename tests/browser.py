"""A real browser for the dashboard's tests: Playwright (the Python package)
driving the system's Chromium by its executable path.

Playwright's own browser download cannot work on machines without internet, so
the tests launch whatever `chromium` the system has (Debian's package:
`apt-get install chromium`; `.ci/run` installs it when missing) and skip, with a
reason, where there is none. `CHROMIUM` names another executable.

Screenshots go to ARTIFACTS (tests/artifacts/, or $TEST_ARTIFACTS): a record of
what each test saw, kept after the run.
"""
from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ARTIFACTS = Path(os.environ.get("TEST_ARTIFACTS") or Path(__file__).parent / "artifacts")
CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def chromium_path() -> str | None:
    """The Chromium to drive: $CHROMIUM, else the first of CANDIDATES on PATH."""
    named = os.environ.get("CHROMIUM")
    if named:
        return named if Path(named).exists() else shutil.which(named)
    for name in CANDIDATES:
        found = shutil.which(name)
        if found:
            return found
    return None


@pytest.fixture(scope="session")
def chromium() -> Iterator[Any]:
    """A headless Chromium for the session (skipped where there is none)."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("the playwright package is not installed (tox installs it)")
    path = chromium_path()
    if path is None:
        pytest.skip("no Chromium on this machine (apt-get install chromium; .ci/run does)")
    with sync_playwright() as p:
        # --no-sandbox: Chromium's sandbox refuses to start as root (CI runs as root).
        browser = p.chromium.launch(executable_path=path, headless=True,
                                    args=["--no-sandbox", "--disable-gpu"])
        try:
            yield browser
        finally:
            browser.close()


def screenshot(page: Any, name: str) -> Path:
    """Save what `page` shows as ARTIFACTS/<name>.png (the whole page)."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path
