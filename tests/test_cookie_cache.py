"""The per-process record cache of cookie tracking, validated by the lease's stamp.

A process keeps each identity's record as of its lease's stamp; every write is preceded by
``Backend.mark``. These tests count what a real file backend is asked (a spy subclass) and
play a second process with a second backend instance on the same directory.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sessionlock import BackendUnavailable, cookies
from sessionlock.backends.base import Lease
from sessionlock.backends.file import FileBackend
from sessionlock.core import Admission, Core

from .test_cookies import Browser, put_record, session_cookies, tracked


class Spy(FileBackend):
    """A file backend that logs the record and stamp calls it gets, in order: ``load`` and
    ``store`` (``forget``: a store that deletes) under a lease, ``set`` for a key's first
    record, ``mark`` for a new stamp (which ``store`` gives)."""

    def __init__(self, directory: str) -> None:
        super().__init__(directory)
        assert self.swept.wait(30)  # no start sweep locking a file behind a test's back
        self.calls: list[tuple[str, str]] = []
        self.fail_sets = 0  # how many of the next stores fail (nothing written)
        self.stamps = True

    def count(self, what: str) -> int:
        return sum(1 for call, _ in self.calls if call == what)

    def get(self, key: str) -> str | None:
        self.calls.append(("get", key))
        return super().get(key)

    def set(self, key: str, value: str, ttl: float | None) -> None:
        self.calls.append(("set", key))
        super().set(key, value, ttl)

    def load(self, lease: Lease) -> str | None:
        self.calls.append(("load", lease.key))
        return super().load(lease)

    def store(self, lease: Lease, value: str | None, ttl: float | None) -> int | None:
        self.calls.append(("store" if value is not None else "forget", lease.key))
        if self.fail_sets:
            self.fail_sets -= 1
            raise BackendUnavailable("no space left on device")
        return super().store(lease, value, ttl)

    def delete(self, key: str) -> None:
        self.calls.append(("delete", key))
        super().delete(key)

    def mark(self, lease: Lease) -> int | None:
        self.calls.append(("mark", lease.key))
        return super().mark(lease) if self.stamps else None

    def adjust(self, lease: Lease | None) -> Lease | None:
        if lease is not None and not self.stamps:  # a backend that keeps no stamps: its
            lease.stamp = None  # leases carry none either
        return lease

    def try_acquire(self, key: str) -> Lease | None:
        return self.adjust(super().try_acquire(key))

    def acquire(self, key: str, timeout: float | None) -> Lease | None:
        return self.adjust(super().acquire(key, timeout))


@pytest.fixture
def directory(tmp_path: Path) -> str:
    return str(tmp_path / "locks")


@pytest.fixture
def spy(directory: str) -> Iterator[Spy]:
    backend = Spy(directory)
    yield backend
    backend.close()


@pytest.fixture
def other(directory: str, spy: Spy) -> Iterator[Spy]:
    """The same directory seen by another process: its own backend, its own cache."""
    backend = Spy(directory)
    yield backend
    backend.close()


def _needs_read(core: Core, browser: Browser) -> bool:
    """What SessionCookies.needs_read answers for the browser's next request, under its lease."""
    environ = browser.environ()
    admission = core.admit(environ)
    assert isinstance(admission, Admission)
    assert isinstance(core.cookies, cookies.SessionCookies)
    core.enter(admission)
    try:
        return core.cookies.needs_read(admission, environ)
    finally:
        core.leave(admission)


def test_a_session_written_here_is_not_read_again_while_nobody_marked_it(spy: Spy) -> None:
    browser = Browser(tracked(spy))
    browser.request()  # a first visit: nothing to read
    browser.request("session=v1; Path=/")  # read (nothing yet), written with a new stamp
    assert (spy.count("load"), spy.count("store"), spy.count("mark")) == (1, 1, 1)
    assert not _needs_read(browser.core, browser)
    browser.request()  # a read-only request: the cached record
    browser.request("session=v2; Path=/")  # a write, no read
    browser.request()
    assert (spy.count("load"), spy.count("store"), spy.count("mark")) == (1, 2, 2)
    assert [call for call, _ in spy.calls] == ["load", "store", "mark", "store", "mark"]


def test_a_stale_replay_is_fixed_from_the_cache(spy: Spy) -> None:
    browser = Browser(tracked(spy))
    browser.request("session=v1; Path=/")
    old = dict(browser.jar)
    browser.request("session=v2; Path=/")
    reads = spy.count("load")
    seen, sent = Browser(browser.core, old).request()
    assert (seen, session_cookies(sent)) == ("v2", ["session=v2; Path=/"])
    assert spy.count("load") == reads


def test_a_write_by_another_process_is_read_again(spy: Spy, other: Spy) -> None:
    here, there = tracked(spy), tracked(other)
    browser = Browser(here)
    browser.request("session=v1; Path=/")
    browser.request("session=v2; Path=/")
    old = dict(browser.jar)  # v2, and the generation that goes with it
    assert not _needs_read(here, browser)
    browser.core = there
    assert _needs_read(there, browser)  # its cache has nothing
    assert browser.request("session=v3; Path=/")[0] == "v2"  # read there, and v3 written
    browser.core = here
    assert _needs_read(here, browser)  # marked by the other process: the copy is stale
    reads = spy.count("load")
    # A stale replay served here is handed the newest cookie, not the cached v2.
    seen, sent = Browser(here, old).request()
    assert (seen, session_cookies(sent)) == ("v3", ["session=v3; Path=/"])
    assert spy.count("load") == reads + 1
    assert browser.request()[0] == "v3"  # and the read is cached again
    assert spy.count("load") == reads + 1


def test_a_read_of_another_process_s_write_is_cached_too(spy: Spy, other: Spy) -> None:
    browser = Browser(tracked(other))
    browser.request("session=v1; Path=/")
    browser.core = tracked(spy)
    assert browser.request()[0] == "v1"
    assert browser.request()[0] == "v1"
    assert spy.count("load") == 1


class Coarse(Spy):
    """A file system that keeps coarse times (here: whole 100 s): leases see them so, and a
    mark finds it out (then the backend keeps no stamps)."""

    GRAIN = 100 * 10**9

    def adjust(self, lease: Lease | None) -> Lease | None:
        if lease is not None and lease.stamp is not None:
            lease.stamp -= lease.stamp % self.GRAIN
        return lease

    def mark(self, lease: Lease) -> int | None:
        super().mark(lease)
        return None


def test_coarse_stamps_are_not_trusted_by_a_process_that_never_marked(directory: str) -> None:
    here, there = Coarse(directory), Coarse(directory)
    try:
        writer = Browser(tracked(there))
        writer.request()
        writer.request("session=v1; Path=/")
        old = dict(writer.jar)
        reader = tracked(here)
        assert Browser(reader, old).request()[0] == "v1"  # read under a stamp of whole seconds
        writer.request("session=v2; Path=/")  # marked (the same coarse stamp) and written
        seen, sent = Browser(reader, old).request()
        assert (seen, session_cookies(sent)) == ("v2", ["session=v2; Path=/"])
        assert here.count("load") == 2
    finally:
        here.close()
        there.close()


def test_a_failed_write_drops_the_cached_record(spy: Spy, other: Spy) -> None:
    browser = Browser(tracked(spy))
    browser.request("session=v1; Path=/")
    old = dict(browser.jar)
    browser.request("session=v2; Path=/")
    assert not _needs_read(browser.core, browser)
    assert isinstance(browser.core.cookies, cookies.SessionCookies)
    (known,) = browser.core.cookies._known.values()
    assert known.cached is not None
    spy.fail_sets = 1
    _, sent = browser.request("session=v3; Path=/")  # marked, then the write fails
    assert session_cookies(sent) == ["session=v3; Path=/"]  # the response goes out as made
    assert [call for call, _ in spy.calls[-1:]] == ["store"]  # refused: nothing written
    assert known.cached is None
    assert _needs_read(browser.core, browser)
    reads = spy.count("load")
    # What is stored (v2) is what every process is handed now, this one included.
    assert Browser(browser.core, old).request()[0] == "v2"
    assert Browser(tracked(other), old).request()[0] == "v2"
    assert spy.count("load") == reads + 1


def test_a_write_whose_stamp_fails_still_makes_every_copy_stale(spy: Spy, other: Spy) -> None:
    browser = Browser(tracked(spy))
    browser.request("session=v1; Path=/")
    old = dict(browser.jar)
    reader = tracked(other)
    assert Browser(reader, old).request()[0] == "v1"  # the other process keeps v1
    assert not _needs_read(reader, Browser(reader, old))

    def failing(lease: Lease) -> int | None:
        raise BackendUnavailable("read-only file system")

    spy.mark = failing  # type: ignore[method-assign]
    _, sent = browser.request("session=v2; Path=/")  # written, then the stamp fails
    assert session_cookies(sent) == ["session=v2; Path=/"]  # the response goes out as made
    assert _needs_read(browser.core, browser)
    # The write itself moved the lock file's mtime: the other process's copy is stale too.
    assert _needs_read(reader, Browser(reader, old))
    assert Browser(reader, old).request()[0] == "v2"


def test_nothing_is_written_once_the_lease_is_gone(spy: Spy) -> None:
    core = tracked(spy)
    browser = Browser(core)
    browser.request()
    browser.request("session=v1; Path=/")
    environ = browser.environ()
    admission = core.admit(environ)
    assert isinstance(admission, Admission)
    assert isinstance(core.cookies, cookies.SessionCookies)
    core.enter(admission)
    core.prepare(admission, environ)
    admission.release()  # e.g. release_session() from another thread, as finish runs
    calls = len(spy.calls)
    core.cookies.finish(admission, [("Set-Cookie", "session=v2; Path=/")])
    assert spy.calls[calls:] == []  # neither marked nor written: the next request may run
    assert browser.request()[0] == "v1"


def test_a_backend_that_keeps_no_stamps_is_always_read(spy: Spy) -> None:
    spy.stamps = False
    browser = Browser(tracked(spy))
    browser.request()
    browser.request("session=v1; Path=/")  # read, marked (no stamp), written: not cached
    assert (spy.count("load"), spy.count("mark")) == (1, 1)
    for _ in range(3):
        assert _needs_read(browser.core, browser)
        assert browser.request()[0] == "v1"
    assert spy.count("load") == 1 + 3


def test_a_fresh_identity_needs_no_read_and_its_record_is_not_cached(spy: Spy) -> None:
    core = tracked(spy)
    browser = Browser(core)
    environ = browser.environ()
    admission = core.admit(environ)
    assert isinstance(admission, Admission)
    assert isinstance(core.cookies, cookies.SessionCookies)
    assert not core.cookies.needs_read(admission, environ)
    browser.request("session=v1; Path=/")  # no lease of its own (held at no cost): no stamp
    assert spy.count("set") == 1
    assert _needs_read(core, browser)
    assert browser.request()[0] == "v1"
    assert browser.request("session=v2; Path=/")[0] == "v1"  # under its lease: marked
    assert not _needs_read(core, browser)


def test_rotation_marks_before_it_forgets_the_old_record(spy: Spy, other: Spy) -> None:
    import sessionlock

    here, there = tracked(spy), tracked(other)
    warm = Browser(there)
    warm.request()
    warm.request("session=x; Path=/")  # the other process has marked once: it caches reads
    attacker = Browser(here)
    attacker.request()
    planted = dict(attacker.jar)  # an identity, at generation 0, planted in the victim's jar
    victim = Browser(here, planted)
    victim.request("session=v1; Path=/")
    victim.core = there
    assert victim.request()[0] == "v1"  # the other process reads the record and keeps it
    assert not _needs_read(there, victim)
    # Control: before the login, replaying the planted jar is a stale replay (handed v1).
    assert Browser(there, planted).request()[0] == "v1"
    # The login rotates the identity (here).
    environ = victim.environ()
    admission = here.admit(environ)
    assert isinstance(admission, Admission)
    here.enter(admission)
    try:
        here.prepare(admission, environ)
        assert sessionlock.rotate_identity(environ)
        spy.calls.clear()
        here.finish(admission, [])  # the app sets no cookie: only the rotation writes
        old_key = admission.key
    finally:
        here.leave(admission)
    # The old record is forgotten under its lease, with a new stamp; the new identity's
    # record is its key's first.
    assert [(call, key) for call, key in spy.calls if key == old_key] == [
        ("forget", old_key),
        ("mark", old_key),
    ]
    assert [call for call, key in spy.calls if key != old_key] == ["set"]
    # The other process had the old record cached: the mark makes it read again, and find
    # nothing. The planted identity is handed nothing.
    seen, sent = Browser(there, planted).request()
    assert (seen, session_cookies(sent)) == (None, [])


def test_the_cache_is_bounded(spy: Spy, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cookies, "_KNOWN", 3)
    core = tracked(spy)
    browsers = [Browser(core) for _ in range(5)]
    for browser in browsers:
        browser.request()
        browser.request("session=v; Path=/")
    assert isinstance(core.cookies, cookies.SessionCookies)
    assert len(core.cookies._known) == 3
    reads = spy.count("load")
    browsers[0].request()  # evicted: read again
    browsers[-1].request()  # kept: not read
    assert spy.count("load") == reads + 1


def test_a_cached_record_expires_as_a_stored_one_would(spy: Spy) -> None:
    now = [1_700_000_000.0]
    core = tracked(spy)
    assert isinstance(core.cookies, cookies.SessionCookies)
    core.cookies._clock = lambda: now[0]
    browser = Browser(core)
    browser.request("session=v1; Path=/; Max-Age=100")
    old = dict(browser.jar)
    browser.request("session=v2; Path=/; Max-Age=100")
    assert Browser(core, old).request()[0] == "v2"  # control
    now[0] += 101
    assert not _needs_read(core, browser)  # still cached: but as expired
    assert Browser(core, old).request()[0] == "v1"  # no record: as sent


def test_a_cached_record_is_never_changed_by_later_requests(spy: Spy) -> None:
    core = tracked(spy)
    browser = Browser(core)
    browser.request()
    browser.request("session=v1; Path=/")
    assert isinstance(core.cookies, cookies.SessionCookies)
    (known,) = core.cookies._known.values()
    assert known.cached is not None
    record: Any = known.cached[1]
    before = (record.generation, {n: (e.header, e.lineage) for n, e in record.entries.items()})
    browser.request("session=v2; Path=/")
    browser.request("session=v3; Path=/")
    after = (record.generation, {n: (e.header, e.lineage) for n, e in record.entries.items()})
    assert before == after
    assert known.cached[1] is not record


# -- the record format ---------------------------------------------------------------------


@pytest.mark.parametrize("host", ["caf\u00e9.example", "a\\b.example", "evil\nx-injected: 1"])
def test_any_host_is_recorded_on_its_line_and_matched_exactly(spy: Spy, host: str) -> None:
    writer = Browser(tracked(spy))
    writer.host = host
    writer.request()
    writer.request("session=v1; Path=/")
    old = dict(writer.jar)
    writer.request("session=v2; Path=/")
    for reader in (writer.core, tracked(spy)):  # from the cache, and read from the file
        stale = Browser(reader, old)
        stale.host = host
        assert stale.request()[0] == "v2"
        elsewhere = Browser(reader, old)
        elsewhere.host = host.encode("unicode_escape").decode()  # its escaped spelling
        assert elsewhere.request()[0] == "v1"  # another host: a host-only cookie is not sent


def test_a_record_of_another_format_reads_as_absent(spy: Spy) -> None:
    browser = Browser(tracked(spy))
    browser.request("session=v1; Path=/")
    old = dict(browser.jar)
    browser.request("session=v2; Path=/")
    reader = tracked(spy)
    assert isinstance(reader.cookies, cookies.SessionCookies)
    assert Browser(reader, old).request()[0] == "v2"  # control
    key = next(key for call, key in spy.calls if call == "store")
    identity = old["sessionlock"].partition(".")[0]
    seal = cookies._Seal(reader.secret, identity, ("session",), key, clear=False)
    lease = spy.try_acquire(key)
    assert lease is not None
    stored = FileBackend.load(spy, lease)
    spy.release(lease)
    assert stored is not None
    assert seal.open(stored) is not None  # the record's own seal
    for plain in ('{"v":2,"g":9,"e":{}}', "3\n9", "4\n9\nsession", "5\n9\nsession"):
        put_record(spy, key, seal.seal(plain))
        assert Browser(tracked(spy), old).request()[0] == "v1"
