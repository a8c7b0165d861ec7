"""A real browser's back button on the seed's exam pages (issue 14, stale pages).

The seed's third failure: the user reaches question 3, goes back, the page shows question 2
while the session says 3, and the answer given on that page is recorded against question 3
(the app trusts the session, not the page). Headless Chromium (Debian's /usr/bin/chromium,
driven by Playwright, as in test_browser.py) walks the Flask exam app of exam_app.py on
gunicorn: start (question 1), "next", "next" (question 3), back, then answers the question
the page shows, naming it in the answer ("answer to 102"), so the recorded answers say which
question the user meant and which one got it.

Playwright turns Chromium's back-forward cache off by default; it is on here, as it is for
users. Each scenario has its expectation on the page after "back" and on what is recorded:

- ``StalePages()`` (no-store): going back renders the page again (question 3), and the
  answer is recorded against the question the page showed;
- ``no_store=False`` (the browser restores the old page), and a tab left open on question 1:
  the submit is refused (409), redirected to the current question, or flagged to the app,
  and nothing is recorded;
- the control, the app without the middleware: the old page is shown, and the answer is
  recorded against the wrong question.

Chromium (156) does keep ``no-store`` pages in its back-forward cache, but drops them when an
HttpOnly cookie changed since (``CacheControlNoStoreHTTPOnlyCookieModified``): Flask's
session cookie changes with every "next", so going back renders the page again here. A
server-side session, whose id cookie does not change, would get the old page back from the
cache, no-store or not: so a response that changed the revision sets the middleware's
HttpOnly ``sessionlock_rev`` cookie. The server-side scenarios check both sides on the same
app (exam_app.py's ``flask_app_stale_pages_server_side``): with the cookie, going back renders
the current question; with it stripped (the control), Chromium restores the old page, and
only the revision check catches its submit.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from . import test_browser  # its Chromium, launch arguments and skip logic
from .exam_app import EXAM_QUESTIONS as QUESTIONS
from .servers import gunicorn, running_server

pytestmark = pytest.mark.e2e

TIMEOUT_MS = 20_000
#: Playwright's default switch that turns the back-forward cache off: users have it on.
NO_BFCACHE = "--disable-back-forward-cache"

Scenario = Callable[[Any, Any, str], Awaitable[Any]]


def run(factory: str, scenario: Scenario) -> Any:
    """Serve ``tests.e2e.exam_app:<factory>`` on gunicorn and run ``scenario(context, page,
    base)`` in a fresh Chromium profile."""
    app = gunicorn(f"tests.e2e.exam_app:{factory}", "-k", "gthread", "--threads", "4")
    with running_server(app) as (base, _process):
        return asyncio.run(_in_browser(base, scenario))


async def _in_browser(base: str, scenario: Scenario) -> Any:
    async with test_browser.playwright_api.async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=test_browser.CHROMIUM,
            args=test_browser.CHROMIUM_ARGS,
            ignore_default_args=[NO_BFCACHE],
        )
        try:
            context = await browser.new_context()
            context.set_default_timeout(TIMEOUT_MS)
            page = await context.new_page()
            return await scenario(context, page, base)
        finally:
            await browser.close()


async def shown(page: Any) -> dict[str, Any]:
    """What the page shows: its label, question id, render number, revision, and whether it
    came from the network or the back-forward cache."""
    return {
        "label": (await page.inner_text("#label")).strip(),
        "qid": int(await page.inner_text("#qid")),
        "render": int(await page.inner_text("#render")),
        "revision": (await page.inner_text("#revision")).strip(),
        "from": (await page.inner_text("#shown-from")).strip(),
    }


async def click(page: Any, selector: str) -> Any:
    """Click a submit button; the response of the navigation it causes (after redirects)."""
    async with page.expect_navigation() as navigation:
        await page.click(selector)
    return await navigation.value


async def start_and_walk(page: Any, base: str) -> list[dict[str, Any]]:
    """Start, "next", "next": what each page showed (questions 1, 2, 3)."""
    await page.goto(base + "/exam")
    pages = []
    await click(page, "#start")
    pages.append(await shown(page))
    for _ in range(2):
        await click(page, "#next")
        pages.append(await shown(page))
    assert [p["label"] for p in pages] == [f"Question {k} of {QUESTIONS}" for k in (1, 2, 3)]
    return pages


async def back(page: Any) -> dict[str, Any]:
    # A page restored from the back-forward cache fires no load event: wait for the commit,
    # then for the page's content.
    await page.go_back(wait_until="commit")
    await page.wait_for_selector("#qid", state="attached")
    return await shown(page)


async def answer(page: Any) -> tuple[Any, int]:
    """Answer the question the page shows, naming it; (navigation response, that question)."""
    qid = int(await page.inner_text("#qid"))
    await page.fill("#answer", f"answer to {qid}")
    return await click(page, "#submit"), qid


async def recorded(context: Any, base: str) -> dict[str, Any]:
    """The answers the session holds, read with the browser's cookies."""
    response = await context.request.get(base + "/answers")
    assert response.status == 200, await response.text()
    return dict(json.loads(await response.text()))


# -- the scenarios ---------------------------------------------------------------------------


def test_no_store_back_renders_current_question_and_answer_lands_on_it() -> None:
    async def scenario(context: Any, page: Any, base: str) -> None:
        walked = await start_and_walk(page, base)
        after_back = await back(page)
        print(f"\nRESULT no-store: walked {walked}; after back {after_back}")
        assert after_back["label"] == f"Question 3 of {QUESTIONS}"  # rendered again
        assert after_back["render"] > walked[-1]["render"]
        response, qid = await answer(page)
        assert response.status == 200
        assert response.request.redirected_from is not None  # the app's PRG redirect
        assert "no-store" in response.headers.get("cache-control", "")
        assert response.headers.get("session-revision", "").isdigit()
        assert qid == 103
        assert await recorded(context, base) == {
            "answers": {"103": "answer to 103"},
            "current_qid": 103,
        }

    run("flask_app_stale_pages()", scenario)


def test_restored_page_submit_is_refused() -> None:
    async def scenario(context: Any, page: Any, base: str) -> None:
        walked = await start_and_walk(page, base)
        after_back = await back(page)
        print(f"\nRESULT refuse: walked {walked}; after back {after_back}")
        assert after_back["qid"] == 102  # the premise: the browser kept the old page
        response, _ = await answer(page)
        assert response.status == 409
        assert "out of date" in await page.content()
        assert await recorded(context, base) == {"answers": {}, "current_qid": 103}

    run('flask_app_stale_pages(policy="refuse", no_store=False)', scenario)


def test_restored_page_submit_is_redirected_to_current_question() -> None:
    async def scenario(context: Any, page: Any, base: str) -> None:
        walked = await start_and_walk(page, base)
        after_back = await back(page)
        print(f"\nRESULT redirect: walked {walked}; after back {after_back}")
        assert after_back["qid"] == 102
        response, _ = await answer(page)
        redirect = response.request.redirected_from
        assert redirect is not None
        assert redirect.url == base + "/answer"
        assert (await redirect.response()).status == 303
        assert response.url == base + "/exam"
        assert (await shown(page))["label"] == f"Question 3 of {QUESTIONS}"
        assert await recorded(context, base) == {"answers": {}, "current_qid": 103}

    run('flask_app_stale_pages(policy="redirect", redirect_to="/exam", no_store=False)', scenario)


def test_restored_page_submit_is_flagged_to_the_app() -> None:
    async def scenario(context: Any, page: Any, base: str) -> None:
        await start_and_walk(page, base)
        assert (await back(page))["qid"] == 102
        response, _ = await answer(page)
        assert response.status == 200
        assert response.url == base + "/exam?stale=1"  # the app saw is_stale()
        assert await page.is_visible("#stale")
        assert await recorded(context, base) == {"answers": {}, "current_qid": 103}

    run('flask_app_stale_pages(policy="flag", no_store=False)', scenario)


def test_tab_left_open_on_question_1_is_refused() -> None:
    async def scenario(context: Any, page: Any, base: str) -> None:
        await page.goto(base + "/exam")
        await click(page, "#start")
        old_tab = await context.new_page()
        await old_tab.goto(base + "/exam")  # question 1, in a second tab of the profile
        assert (await shown(old_tab))["qid"] == 101
        for _ in range(2):
            await click(page, "#next")
        assert (await shown(page))["qid"] == 103
        response, _ = await answer(old_tab)
        assert response.status == 409
        assert await recorded(context, base) == {"answers": {}, "current_qid": 103}
        response, qid = await answer(page)  # the current page's answer still counts
        assert response.status == 200
        assert await recorded(context, base) == {
            "answers": {"103": f"answer to {qid}"},
            "current_qid": 103,
        }

    run("flask_app_stale_pages()", scenario)


def test_control_without_middleware_records_answer_against_wrong_question() -> None:
    async def scenario(context: Any, page: Any, base: str) -> None:
        walked = await start_and_walk(page, base)
        after_back = await back(page)
        print(f"\nRESULT bare: walked {walked}; after back {after_back}")
        assert after_back["qid"] == 102  # the old page, while the session is on 103
        response, qid = await answer(page)
        assert response.status == 200
        assert qid == 102
        # The bug: the answer to question 2 is recorded against question 3.
        assert await recorded(context, base) == {
            "answers": {"103": "answer to 102"},
            "current_qid": 103,
        }

    run("flask_app_stale_pages(bare=True)", scenario)


# -- a server-side session: its id cookie never changes ------------------------------------


async def cookie_names(context: Any) -> set[str]:
    return {cookie["name"] for cookie in await context.cookies()}


def test_server_side_session_back_renders_current_question_and_answer_lands_on_it() -> None:
    async def scenario(context: Any, page: Any, base: str) -> None:
        walked = await start_and_walk(page, base)
        assert await cookie_names(context) == {"sid", "sessionlock_rev"}
        after_back = await back(page)
        print(f"\nRESULT server-side: walked {walked}; after back {after_back}")
        # Dropped from the back-forward cache (the sessionlock_rev cookie changed since
        # the page was shown): rendered again, from the session as it is now.
        assert after_back["from"] == "network"
        assert after_back["render"] > walked[-1]["render"]
        assert after_back["label"] == f"Question 3 of {QUESTIONS}"
        response, qid = await answer(page)
        assert response.status == 200
        assert qid == 103
        assert await recorded(context, base) == {
            "answers": {"103": "answer to 103"},
            "current_qid": 103,
        }

    run("flask_app_stale_pages_server_side()", scenario)


def test_server_side_session_without_eviction_cookie_restores_old_page_submit_refused() -> None:
    async def scenario(context: Any, page: Any, base: str) -> None:
        walked = await start_and_walk(page, base)
        assert await cookie_names(context) == {"sid"}  # the id cookie only, set once
        after_back = await back(page)
        print(f"\nRESULT server-side control: walked {walked}; after back {after_back}")
        # The premise: Chromium restored the question 2 page, no-store as it is.
        assert after_back["from"] == "bfcache"
        assert after_back["render"] == walked[1]["render"]
        assert after_back["qid"] == 102
        response, _ = await answer(page)
        assert response.status == 409
        assert "out of date" in await page.content()
        assert await recorded(context, base) == {"answers": {}, "current_qid": 103}

    run("flask_app_stale_pages_server_side(strip_eviction_cookie=True)", scenario)
