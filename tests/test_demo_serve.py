"""``python -m sessionlock demo --serve``: the seed's exam page, bare and locked, in a browser.

The server tests start the command as a subprocess on a free port, read its URL from stdout,
and send bursts of requests with one cookie jar, as a browser's tabs do: the bare side (the
control) loses answers and clicks, the locked side keeps all of them. One test clicks the
page's burst button in headless Chromium and reads both sides' results from the DOM.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from sessionlock.__main__ import main

ROOT = Path(__file__).resolve().parent.parent
BURST = 5  # requests at once: below a browser's 6 connections per host
JSON = {"Accept": "application/json"}


class DemoServer:
    """The command running in a subprocess; its stdout lines arrive on a queue."""

    def __init__(self, log: Path, *extra: str) -> None:
        self.log = open(log, "wb")  # noqa: SIM115 (closed in stop())
        self.process = subprocess.Popen(
            [sys.executable, "-m", "sessionlock", "demo", "--serve", *extra],
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            stdout=subprocess.PIPE,
            stderr=self.log,
            text=True,
            # A shell's background job ignores SIGINT, and a Python started so keeps ignoring
            # it: give the server the default that a terminal's Ctrl-C reaches.
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.put(line)
        self.lines.put(None)  # end of output

    def next_line(self, timeout: float = 60) -> str | None:
        return self.lines.get(timeout=timeout)

    def url(self) -> str:
        while (line := self.next_line()) is not None:
            if match := re.search(r"http://\S+/", line):
                return match.group(0)
        raise AssertionError(f"no URL printed; stderr: {self.stderr()}")

    def stderr(self) -> str:
        if not self.log.closed:
            self.log.flush()
        return Path(self.log.name).read_text(errors="replace")

    def stop(self) -> int:
        """Ctrl-C; the exit status."""
        with contextlib.suppress(ProcessLookupError):
            self.process.send_signal(signal.SIGINT)
        try:
            return self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise
        finally:
            self.reader.join(timeout=10)
            assert self.process.stdout is not None
            self.process.stdout.close()
            self.log.close()


@pytest.fixture(scope="module")
def demo_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    server = DemoServer(tmp_path_factory.mktemp("demo") / "stderr.log", "--port", "0")
    try:
        yield server.url()
    finally:
        server.stop()


def at_once(jobs: list[Callable[[], Any]]) -> list[Any]:
    """The jobs in daemon threads released together; their results, in order."""
    barrier = threading.Barrier(len(jobs))
    results: list[Any] = [None] * len(jobs)
    errors: list[BaseException] = []

    def run(index: int) -> None:
        try:
            barrier.wait(timeout=30)
            results[index] = jobs[index]()
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(len(jobs))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not any(thread.is_alive() for thread in threads), "a request hung"
    if errors:
        raise errors[0]
    return results


@contextlib.contextmanager
def student(demo_url: str, side: str) -> Iterator[httpx.Client]:
    """One browser's cookie jar on one side; the exam started (cookies set) before a burst."""
    with httpx.Client(base_url=f"{demo_url}{side}/", headers=JSON, timeout=60) as client:
        assert client.get("state").status_code == 200
        yield client


def answer_at_once(client: httpx.Client, count: int) -> tuple[list[int], dict[str, Any]]:
    """``count`` open questions answered at once (one per tab); the qids and the state after."""
    qids = client.get("state").json()["unanswered"][:count]
    jobs = [lambda qid=qid: client.post("answer", data={"qid": qid, "choice": 1}) for qid in qids]
    assert [response.status_code for response in at_once(jobs)] == [200] * count
    return qids, client.get("state").json()


@pytest.mark.e2e
def test_answers_sent_at_once_are_lost_bare_and_all_kept_locked(demo_url: str) -> None:
    with student(demo_url, "bare") as client:
        qids, bare = answer_at_once(client, BURST)
    with student(demo_url, "locked") as client:
        qids_locked, locked = answer_at_once(client, BURST)
    kept_bare = [qid for qid in qids if str(qid) in bare["answers"]]
    print(f"\nRESULT demo --serve: {BURST} answers at once: bare kept {len(kept_bare)}")
    assert 1 <= len(kept_bare) < BURST  # the control: one response's cookie wins
    assert sorted(locked["answers"]) == [str(qid) for qid in qids_locked]
    assert locked["current"] == BURST  # on to the first open question
    assert bare["current"] < BURST  # the bare exam goes back to a question it "lost"


@pytest.mark.e2e
def test_next_clicked_at_once_moves_once_bare_and_every_time_locked(demo_url: str) -> None:
    moved = {}
    for side in ("bare", "locked"):
        with student(demo_url, side) as client:
            responses = at_once([lambda client=client: client.post("next")] * BURST)
            assert [response.status_code for response in responses] == [200] * BURST
            moved[side] = client.get("state").json()["current"]
    assert moved["bare"] < BURST
    assert moved["locked"] == BURST


@pytest.mark.e2e
def test_next_past_the_last_question_shows_11_of_10_bare_and_is_repaired_locked(
    demo_url: str,
) -> None:
    labels, repaired = {}, {}
    for side in ("bare", "locked"):
        with student(demo_url, side) as client:
            total = client.get("state").json()["total"]
            for _ in range(total):  # one click too many, one after the other
                response = client.post("next", headers={"Accept": "text/html"})
            repaired[side] = response.headers.get("x-session-repaired")
            page = client.get("", headers={"Accept": "text/html"}).text
        label = re.search(r'id="label">([^<]*)<', page)
        assert label is not None
        labels[side] = label.group(1)
    assert labels == {"bare": "Question 11 of 10", "locked": "Question 10 of 10"}
    assert repaired == {"bare": None, "locked": "index_within:exam_current, progress_tracking"}


@pytest.mark.e2e
def test_the_page_frames_both_sides(demo_url: str) -> None:
    page = httpx.get(demo_url, timeout=30).text
    assert 'src="bare/"' in page
    assert 'src="locked/"' in page
    assert 'id="race-answers"' in page


@pytest.mark.e2e
def test_ctrl_c_stops_the_server_cleanly(tmp_path: Path) -> None:
    server = DemoServer(tmp_path / "stderr.log", "--port", "0")
    try:
        url = server.url()
        assert httpx.get(url + "locked/state", timeout=30).status_code == 200
    finally:
        status = server.stop()
    remaining = []
    while (line := server.next_line(timeout=10)) is not None:
        remaining.append(line.strip())
    assert status == 0, server.stderr()
    assert "stopped" in remaining
    assert "Traceback" not in server.stderr()


# -- a real browser ------------------------------------------------------------------------


async def _burst_in_browser(url: str) -> dict[str, tuple[int, int, int]]:
    """Click the page's burst button; per side: (sent, kept, answered shown in its frame)."""
    # test_browser's launch settings and its skip when Chromium or Playwright is missing.
    from tests.e2e.test_browser import CHROMIUM, CHROMIUM_ARGS, TIMEOUT_MS, playwright_api

    seen = {}
    async with playwright_api.async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            context = await browser.new_context()
            context.set_default_timeout(TIMEOUT_MS)
            page = await context.new_page()
            await page.goto(url)
            for side in ("bare", "locked"):  # each frame has started its exam: cookies set
                await page.frame_locator(f"#{side}-frame").locator("#label").wait_for()
            await page.select_option("#n", str(BURST))
            await page.click("#race-answers")
            await page.wait_for_selector("body[data-state=done]")
            for side in ("bare", "locked"):
                result = page.locator(f"#{side}-result")
                frame = page.frame_locator(f"#{side}-frame")
                seen[side] = (
                    int(await result.get_attribute("data-sent") or -1),
                    int(await result.get_attribute("data-kept") or -1),
                    int(await frame.locator("#answered").get_attribute("data-count") or -1),
                )
        finally:
            await browser.close()
    return seen


@pytest.mark.e2e
def test_the_burst_button_in_chromium(demo_url: str) -> None:
    seen = asyncio.run(_burst_in_browser(demo_url))
    print(f"\nRESULT demo --serve in Chromium (sent, kept, shown): {seen}")
    sent, kept, shown = seen["bare"]
    assert sent == BURST
    assert 1 <= kept < BURST  # the control
    assert shown == kept
    assert seen["locked"] == (BURST, BURST, BURST)


# -- arguments -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--serve", "--port", "70000"], "must be 0-65535 (0: a free port), got 70000"),
        (["--serve", "--port", "x"], "argument --port: not a port number: 'x'"),
        (["--port", "8000"], "--host and --port go with --serve"),
        (["--host", "0.0.0.0"], "--host and --port go with --serve"),
    ],
)
def test_bad_arguments_are_refused_with_a_clear_message(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["demo", *argv])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_a_port_in_use_is_an_error_not_a_traceback() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "sessionlock", "demo", "--serve", "--port", str(port)],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert result.returncode == 1
    assert result.stderr.startswith(f"error: cannot listen on 127.0.0.1:{port}: ")
    assert "Traceback" not in result.stderr


def test_without_flask_the_error_names_the_extra(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delitem(sys.modules, "sessionlock.demo_exam", raising=False)
    monkeypatch.setitem(sys.modules, "flask", None)  # makes its import fail
    assert main(["demo", "--serve", "--port", "0"]) == 1
    assert "pip install 'sessionlock[demo]'" in capsys.readouterr().err
