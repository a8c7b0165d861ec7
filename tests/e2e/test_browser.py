"""A real browser: two tabs of one profile click "next" on the exam page at the same time.

Headless Chromium (Debian's /usr/bin/chromium, driven by Playwright; no browser download)
opens the exam app of cookie_apps.py (Flask's default cookie session) in two tabs of one
context, which share one cookie jar as a user's tabs do. Both tabs click "next" together,
CLICKS_PER_TAB times each, waiting for each page to load before the next click. With the
middleware (``cookie_session="session"``) the final question index equals the number of
clicks and no page ever shows a question past the list's end; without it, clicks vanish.
"""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import Iterator
from typing import Any

import pytest

from .cookie_apps import QUESTIONS
from .servers import gunicorn, running_server

pytestmark = pytest.mark.e2e

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
TABS = 2
CLICKS_PER_TAB = 4  # 8 clicks in all, fewer than the 10 questions: the index should be 8
TIMEOUT_MS = 60_000

if os.environ.get("CI") == "true":  # CI installs both: a skip there would hide a lost test
    import playwright.async_api as playwright_api

    assert os.path.exists(CHROMIUM), f"CI must install Chromium at {CHROMIUM}"
else:
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"no Chromium at {CHROMIUM} (Debian 'chromium')", allow_module_level=True)
    playwright_api = pytest.importorskip("playwright.async_api")


@pytest.fixture(params=["tracked", "bare"])
def exam(request: pytest.FixtureRequest) -> Iterator[tuple[str, str]]:
    app = gunicorn("tests.e2e.cookie_apps:exam_app()", "-k", "gthread", "--threads", "8")
    env = {"SL_COOKIE_MODE": request.param, "SL_COOKIE_WORK": "0.1"}
    with running_server(app, env=env) as (base, _process):
        yield base, request.param


async def _click_through(base: str) -> tuple[int, list[int]]:
    """Both tabs click together; returns the final index and every index a page showed."""
    shown: list[int] = []
    async with playwright_api.async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            context = await browser.new_context()  # one profile: one cookie jar for both tabs
            context.set_default_timeout(TIMEOUT_MS)
            pages = [await context.new_page() for _ in range(TABS)]
            for page in pages:
                await page.goto(base + "/")
            start = asyncio.Event()

            async def tab(page: Any) -> None:
                await start.wait()
                for _ in range(CLICKS_PER_TAB):
                    async with page.expect_navigation():
                        await page.click("#next")
                    shown.append(await _current(page))

            tabs = asyncio.gather(*(tab(page) for page in pages))
            start.set()
            await tabs
            await pages[0].goto(base + "/")
            final = await _current(pages[0])
            label = await pages[0].inner_text("#label")
            shown.append(final)
            match = re.fullmatch(r"Question (\d+) of (\d+)", label.strip())
            assert match is not None, label
            assert int(match.group(2)) == QUESTIONS
        finally:
            await browser.close()
    return final, shown


async def _current(page: Any) -> int:
    return int(await page.inner_text("#current"))


def test_two_tabs_clicking_next(exam: tuple[str, str]) -> None:
    base, mode = exam
    final, shown = asyncio.run(_click_through(base))
    clicks = TABS * CLICKS_PER_TAB
    print(f"\nRESULT browser {mode}: final index {final} after {clicks} clicks; shown {shown}")
    assert max(shown) <= QUESTIONS - 1  # never past the list's end
    if mode == "tracked":
        assert final == clicks
    else:
        assert final < clicks
