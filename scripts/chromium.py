"""Headless Chromium through Playwright: one launch routine for the screenshot scripts and the
browser tests.

The browser is a system Chromium (Debian's /usr/bin/chromium, installed by `make browser`), not
Playwright's download (no downloads at run time); REID_CHROMIUM points at another binary.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from pathlib import Path

CHROMIUM = Path(os.environ.get("REID_CHROMIUM", "/usr/bin/chromium"))
ARGS = [
    "--headless=new",
    "--no-sandbox",  # containers and CI runners have no user namespaces for the sandbox
    "--disable-gpu",
    "--disable-background-networking",
    "--no-first-run",
    "--disable-component-update",
    "--disable-sync",
]
MISSING = f"{CHROMIUM} not found: install Chromium (`make browser`) or set REID_CHROMIUM"


def available() -> bool:
    return CHROMIUM.exists()


@contextlib.contextmanager
def browser() -> Iterator:
    """A launched headless Chromium (Playwright ``Browser``), closed on exit."""
    from playwright.sync_api import sync_playwright

    if not available():
        raise SystemExit(f"error: {MISSING}")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        try:
            yield b
        finally:
            b.close()


def wait_until(page, expression: str, timeout_s: float = 120.0) -> None:
    """Poll a JS expression until it is true. (Playwright's wait_for_function evaluates strings,
    which the review page's Content-Security-Policy forbids; page.evaluate is not subject to it.)"""
    deadline = time.monotonic() + timeout_s
    while not page.evaluate(expression):
        if time.monotonic() > deadline:
            raise TimeoutError(f"still false after {timeout_s:.0f} s: {expression}")
        page.wait_for_timeout(100)
