"""The file backend's own promises: safe directory, bounded files, inode re-check, fork, URLs,
one backend (one directory descriptor) per URL, nothing blocking on the event loop."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import gc
import os
import select
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NoReturn

import pytest
from blockbuster import BlockingError

from sessionlock.asgi import SessionLockMiddleware as ASGILock
from sessionlock.backends import DEFAULT_URL, Backend, _shared, _ticketlock, from_url
from sessionlock.backends.file import FileBackend, default_directory
from sessionlock.backends.memory import MemoryBackend
from sessionlock.core import Core
from sessionlock.errors import BackendUnavailable, ConfigurationError
from sessionlock.wsgi import SessionLockMiddleware as WSGILock

KEY = "0123456789abcdef0123456789abcdef"


@pytest.fixture
def directory(tmp_path: Path) -> Path:
    return tmp_path / "locks"


def _files(directory: Path) -> list[str]:
    """The names of the files under ``directory`` (values in their buckets too), but .secret."""
    return sorted(
        path.name for path in directory.rglob("*") if path.is_file() and path.name != ".secret"
    )


def _started(directory: Path, **options: Any) -> FileBackend:
    """A backend whose start sweep (in its keeper thread) is over: files touched by the test
    from now on are the test's alone."""
    backend = FileBackend(directory, **options)
    assert backend.swept.wait(60)
    return backend


# -- the directory -----------------------------------------------------------------------


def test_directory_is_created_private(directory: Path) -> None:
    FileBackend(directory).close()
    assert (directory.stat().st_mode & 0o777) == 0o700


def test_refuses_a_symlinked_directory(tmp_path: Path, directory: Path) -> None:
    real = tmp_path / "real"
    real.mkdir(mode=0o700)
    directory.symlink_to(real)
    with pytest.raises(ConfigurationError, match="symlink"):
        FileBackend(directory)


@pytest.mark.parametrize("mode", [0o770, 0o707, 0o777], ids=["group", "others", "both"])
def test_refuses_a_directory_writable_by_others(directory: Path, mode: int) -> None:
    directory.mkdir()
    directory.chmod(mode)
    with pytest.raises(ConfigurationError, match="writable by group or others"):
        FileBackend(directory)


@pytest.mark.skipif(os.geteuid() != 0, reason="only root can give a directory away")
def test_refuses_a_directory_of_another_user(directory: Path) -> None:
    directory.mkdir(mode=0o700)
    os.chown(directory, 4242, 4242)
    with pytest.raises(ConfigurationError, match="owned by uid 4242"):
        FileBackend(directory)


def test_refuses_a_file_in_place_of_the_directory(directory: Path) -> None:
    directory.write_text("")
    with pytest.raises(ConfigurationError, match="not a directory"):
        FileBackend(directory)


@pytest.mark.parametrize(
    "url",
    [
        pytest.param("file://relative/dir", id="host"),
        pytest.param("file:///tmp/x?mode=1", id="query"),
    ],
)
def test_bad_urls_are_refused(url: str) -> None:
    with pytest.raises(ConfigurationError):
        from_url(url)


def test_url_names_the_directory(directory: Path) -> None:
    backend = from_url(f"file://{directory}")
    assert isinstance(backend, FileBackend)
    assert backend.directory == str(directory)
    backend.close()


def test_default_backend_is_a_private_directory_under_the_temp_dir() -> None:
    backend = from_url(DEFAULT_URL)
    assert isinstance(backend, FileBackend)
    assert backend.directory == default_directory()
    assert (os.stat(backend.directory).st_mode & 0o777) == 0o700
    backend.close()


# -- names and the secret ----------------------------------------------------------------


def test_file_names_are_the_hashed_keys_never_the_raw_session_id(directory: Path) -> None:
    core = Core(backend=_started(directory), key="cookie:sid")
    admission = core.admit({"REQUEST_METHOD": "GET", "HTTP_COOKIE": "sid=raw-secret-sid-value"})
    assert admission is not None
    core.enter(admission)
    names = _files(directory)
    core.leave(admission)
    assert names == [admission.key + ".lock"]
    assert "raw-secret-sid-value" not in admission.key


def test_unsafe_value_names_are_hashed(directory: Path) -> None:
    backend = _started(directory)
    backend.set("../escape/attempt", "v", None)
    assert backend.get("../escape/attempt") == "v"
    assert all(name.startswith("h") for name in _files(directory))
    assert not (directory.parent / "escape").exists()


def test_secret_is_created_once_private_and_shared(directory: Path) -> None:
    first, second = _started(directory), _started(directory)
    assert first.secret() == second.secret()
    assert len(first.secret()) == 32
    assert ((directory / ".secret").stat().st_mode & 0o777) == 0o600


def test_secret_agreed_by_processes_started_separately(directory: Path) -> None:
    code = "import sys; from sessionlock.backends.file import FileBackend as F; "
    code += "sys.stdout.write(F(sys.argv[1]).secret().hex())"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    children = [
        subprocess.Popen(
            [sys.executable, "-c", code, str(directory)], stdout=subprocess.PIPE, env=env
        )
        for _ in range(4)
    ]
    secrets = {child.communicate(timeout=60)[0] for child in children}
    assert len(secrets) == 1
    assert FileBackend(directory).secret().hex().encode() in secrets


# -- bounded files -----------------------------------------------------------------------


def _janitors_done() -> None:
    for thread in threading.enumerate():
        if thread.name == "sessionlock-file-janitor":
            thread.join(timeout=60)


def test_files_stay_bounded_after_many_distinct_keys(directory: Path) -> None:
    backend = _started(directory)
    for number in range(3000):
        lease = backend.try_acquire(f"{number:032x}")
        assert lease is not None
        backend.release(lease)
        if number % 250 == 0:
            assert len(_files(directory)) <= 4 * 256 + 1  # held + idle here, at most
    _janitors_done()
    assert len(_files(directory)) <= 4 * 256
    backend.sweep()
    assert _files(directory) == []


def test_a_session_reuses_its_file(directory: Path) -> None:
    backend = _started(directory)
    inodes = set()
    for _ in range(5):
        lease = backend.try_acquire(KEY)
        assert lease is not None
        inodes.add(os.fstat(lease.token).st_ino)
        backend.release(lease)
    assert len(inodes) == 1


def test_control_files_pile_up_without_the_unlink(directory: Path) -> None:
    # The same loop with the raw primitive (lock, unlock, close) leaves one file per key.
    directory.mkdir(mode=0o700)
    for number in range(300):
        fd = os.open(directory / f"{number:032x}.lock", os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX)
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
    assert len(_files(directory)) == 300


def test_sweep_removes_a_crashed_holders_file_and_expired_values(directory: Path) -> None:
    backend = _started(directory)
    (directory / f"{KEY}.lock").write_bytes(b"")  # left by a holder killed before unlinking
    backend.set("note-expired", "x", -1.0)
    backend.set("note-kept", "y", 3600.0)
    held = backend.try_acquire("f" * 32)
    assert held is not None
    assert backend.sweep() == 2
    assert _files(directory) == ["f" * 32 + ".lock", "note-kept.value"]
    backend.release(held)


# -- the unlink race ---------------------------------------------------------------------


def _open_count(path: Path) -> int:
    """How many descriptors of this process name ``path`` (Linux /proc)."""
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            count += os.readlink(f"/proc/self/fd/{fd}") == str(path)
        except OSError:
            continue
    return count


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs Linux /proc")
def test_waiter_on_an_unlinked_inode_retries_on_the_current_file(directory: Path) -> None:
    """X holds inode 1; B waits on it; X unlinks, C takes a new inode 2, X unlocks.

    B wakes holding inode 1, which no path names any more: it must not count as holding
    the key while C holds inode 2.
    """
    backend_b, backend_c = _started(directory), _started(directory)
    path = directory / f"{KEY}.lock"
    x = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    assert _ticketlock.try_take(x)  # another process's holder, by the backend's protocol
    got: list[object] = []
    b_waits = threading.Thread(target=lambda: got.append(backend_b.acquire(KEY, 1.0)))
    b_waits.start()
    while _open_count(path) < 2:  # until B's contender has opened inode 1
        threading.Event().wait(0.001)
    os.unlink(path)
    c_lease = backend_c.try_acquire(KEY)
    assert c_lease is not None
    _ticketlock.give(x)
    os.close(x)
    b_waits.join(timeout=30)
    assert got == [None]  # B timed out: C holds the key
    backend_c.release(c_lease)
    b_lease = backend_b.acquire(KEY, 30.0)
    assert b_lease is not None
    assert os.fstat(b_lease.token).st_ino == os.stat(path).st_ino
    backend_b.release(b_lease)


# -- processes ---------------------------------------------------------------------------


def test_a_killed_holder_releases_at_once(directory: Path) -> None:
    code = (
        "import sys, time; from sessionlock.backends.file import FileBackend as F; "
        "l = F(sys.argv[1]).try_acquire(sys.argv[2]); print('held', flush=True); time.sleep(600)"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    child = subprocess.Popen(
        [sys.executable, "-c", code, str(directory), KEY], stdout=subprocess.PIPE, env=env
    )
    assert child.stdout is not None
    assert child.stdout.readline() == b"held\n"
    backend = _started(directory)
    assert backend.try_acquire(KEY) is None
    waiting: list[object] = []
    thread = threading.Thread(target=lambda: waiting.append(backend.acquire(KEY, 60.0)))
    thread.start()
    child.send_signal(signal.SIGKILL)
    child.wait(timeout=30)
    child.stdout.close()
    thread.join(timeout=60)
    lease = waiting[0]
    assert lease is not None
    backend.release(lease)  # type: ignore[arg-type]


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_does_not_keep_the_parents_lock(directory: Path) -> None:
    backend = _started(directory)
    lease = backend.try_acquire(KEY)
    assert lease is not None
    ready_r, ready_w = os.pipe()
    done_r, done_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child lives on, holding whatever it inherited, until told
        os.write(ready_w, b"%d" % backend.held())
        os.read(done_r, 1)
        os._exit(0)
    try:
        assert os.read(ready_r, 16) == b"0"
        os.close(lease.token)  # the parent "dies": no unlink, no unlock
        other = FileBackend(directory).try_acquire(KEY)
    finally:
        os.write(done_w, b"x")
        os.waitpid(pid, 0)
        for fd in (ready_r, ready_w, done_r, done_w):
            os.close(fd)
    assert other is not None  # the child's copy did not keep the session locked


# -- descriptors: one backend per directory, closable ------------------------------------


def _fds_in(directory: Path) -> int:
    """Descriptors of this process open on ``directory`` or a file in it. Not all of the
    process's: other tests' threads (a lingering helper, a watchdog) open and close their own
    meanwhile, which made a whole-process count fail now and then."""
    gc.collect()  # earlier tests' garbage must not close mid-count
    root = str(directory.resolve())
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):  # closed since the listing
            target = os.readlink(f"/proc/self/fd/{fd}")
            if target == root or target.startswith(root + "/"):
                count += 1
    return count


async def _asgi_app(scope: Any, receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


def _wsgi_app(environ: Any, start_response: Any) -> list[bytes]:
    start_response("200 OK", [])
    return [b"ok"]


@pytest.mark.usefixtures("registry")
@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs Linux /proc")
def test_many_middlewares_on_one_directory_open_it_once(directory: Path) -> None:
    """One middleware per test (Flask's, Django's suites): 2000 of them, one directory fd."""
    url = f"file://{directory}"
    made = [WSGILock(_wsgi_app, backend=url)]
    backend = made[0].core.backend
    assert isinstance(backend, FileBackend)
    assert backend.swept.wait(60)
    after_first = _fds_in(directory)
    for _ in range(1000):
        made.append(WSGILock(_wsgi_app, backend=url))
        made.append(ASGILock(_asgi_app, backend=url))  # type: ignore[arg-type]
    assert _fds_in(directory) == after_first
    assert len({id(m.core.backend) for m in made}) == 1


@pytest.mark.usefixtures("registry")
def test_the_default_url_and_its_directory_name_one_backend() -> None:
    assert from_url(DEFAULT_URL) is from_url(f"file://{default_directory()}/")


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs Linux /proc")
def test_a_closed_backend_refuses_and_still_releases_what_it_held(directory: Path) -> None:
    directory.mkdir(mode=0o700)
    baseline = _fds_in(directory)
    backend = _started(directory)
    lease = backend.try_acquire(KEY)
    assert lease is not None
    kept = backend.try_acquire("f" * 32)
    assert kept is not None
    backend.release(kept)  # its descriptor is kept open for the key's next request
    backend.close()
    backend.close()  # twice is fine
    with pytest.raises(BackendUnavailable, match="closed"):
        backend.try_acquire("e" * 32)
    other = _started(directory)
    assert other.try_acquire(KEY) is None  # the lease held at close still holds
    backend.release(lease)
    taken = other.try_acquire(KEY)
    assert taken is not None  # ... and its release released it
    other.release(taken)
    other.close()
    assert _fds_in(directory) == baseline  # nothing left open by either


# -- the link-count re-check -------------------------------------------------------------


def test_a_kept_descriptor_of_an_unlinked_file_is_no_lock(directory: Path) -> None:
    """The descriptor kept from a key's last request names an inode that another process
    unlinked since, and a holder took the new file: the kept one must not count as a lock."""
    backend = _started(directory)
    lease = backend.try_acquire(KEY)
    assert lease is not None
    backend.release(lease)  # its descriptor is kept open
    path = directory / f"{KEY}.lock"
    os.unlink(path)  # another process's janitor, between two requests
    holder = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    assert _ticketlock.try_take(holder)
    try:
        assert backend.try_acquire(KEY) is None
    finally:
        _ticketlock.give(holder)
        os.close(holder)
    lease = backend.try_acquire(KEY)
    assert lease is not None
    assert os.fstat(lease.token).st_ino == os.stat(path).st_ino  # the current file
    backend.release(lease)
    backend.close()


# -- fork --------------------------------------------------------------------------------


def _child_report(pid: int, read_end: int) -> bytes:
    """What the child wrote before exiting; empty if it did not within a minute (killed)."""
    ready, _, _ = select.select([read_end], [], [], 60)
    report = os.read(read_end, 256) if ready else b""
    if not report:
        os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    os.close(read_end)
    return report


def _in_child(write_end: int, work: Callable[[], str]) -> NoReturn:
    try:
        report = work()
    except BaseException as error:  # reported to the parent, which asserts on it
        report = repr(error)
    finally:
        os.write(write_end, report.encode() or b"-")
        os._exit(0)


@pytest.mark.usefixtures("registry")
@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
def test_a_forked_child_goes_on_with_the_registered_backend(directory: Path) -> None:
    """gunicorn --preload: the master builds the app (and its backend), workers fork."""
    url = f"file://{directory}"
    backend = from_url(url)
    lease = backend.try_acquire(KEY)
    assert lease is not None
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:

        def work() -> str:
            shared = from_url(url) is backend
            inherited = backend.held()
            parents = backend.try_acquire(KEY)  # the parent holds it
            own = backend.try_acquire("f" * 32)
            if own is not None:
                backend.release(own)
            return f"{shared} {inherited} {parents} {own is not None}"

        _in_child(write_end, work)
    os.close(write_end)
    report = _child_report(pid, read_end)
    backend.release(lease)
    assert report == b"True 0 None True"


@pytest.mark.usefixtures("registry")
@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
def test_a_child_forked_while_a_backend_is_being_made_can_make_its_own(directory: Path) -> None:
    """Another thread is inside the registry when the process forks: the child is not stuck."""
    building, finish = threading.Event(), threading.Event()

    def slow() -> Backend:
        building.set()
        finish.wait(60)
        return MemoryBackend()

    maker = threading.Thread(target=_shared.shared, args=("slow://", slow))
    maker.start()
    assert building.wait(60)
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        _in_child(write_end, lambda: repr(from_url(f"file://{directory}")))
    os.close(write_end)
    finish.set()
    maker.join(timeout=60)
    assert _child_report(pid, read_end) == repr(FileBackend(directory)).encode()


# -- the event loop ----------------------------------------------------------------------


def test_the_no_blocking_fixture_flags_a_blocking_call_on_the_loop(
    no_blocking: object, directory: Path
) -> None:
    """The control of the tests below: blockbuster is active, and flags ``os.stat``."""

    async def stat() -> None:
        os.stat(directory.parent)

    with pytest.raises(BlockingError, match=r"os\.stat"):
        asyncio.run(stat())
    os.stat(directory.parent)  # off the loop it is fine


async def _get(middleware: Any, sid: str) -> int:
    scope = {
        "type": "http",
        "method": "GET",
        "path": "/",
        "raw_path": b"/",
        "query_string": b"",
        "root_path": "",
        "scheme": "http",
        "http_version": "1.1",
        "headers": [(b"cookie", f"sid={sid}".encode())],
    }
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await middleware(scope, receive, send)
    return int(sent[0]["status"])


@pytest.mark.usefixtures("registry", "no_blocking")
def test_an_uncontended_asgi_request_on_file_does_not_block_the_loop(directory: Path) -> None:
    """A key's first request (open), then warm ones (kept descriptor): no flagged call."""
    middleware = ASGILock(_asgi_app, backend=f"file://{directory}", key="cookie:sid")  # type: ignore[arg-type]

    async def requests() -> list[int]:
        return [await _get(middleware, sid) for sid in ("alice", "alice", "bob", "alice")]

    assert asyncio.run(requests()) == [200] * 4


@pytest.mark.usefixtures("no_blocking")
def test_on_an_event_loop_releases_leave_file_removal_to_the_janitor(directory: Path) -> None:
    backend = _started(directory)
    backend._janitor.running = True  # as if one were running: none starts, idle files pile up
    keys = 4 * 256 + 50  # beyond the back-pressure threshold

    async def churn() -> None:
        for number in range(keys):
            lease = backend.try_acquire(f"{number:032x}")
            assert lease is not None
            backend.release(lease)  # an unlink here would raise BlockingError

    asyncio.run(churn())
    assert len(_files(directory)) == keys  # nothing removed on the loop
    backend._janitor.running = False
    lease = backend.try_acquire(KEY)
    assert lease is not None
    backend.release(lease)  # off the loop: back-pressure, and a janitor starts
    _janitors_done()
    assert len(_files(directory)) <= 4 * 256
    backend.close()


# -- bounded values ----------------------------------------------------------------------


def _same_bucket(backend: FileBackend, count: int) -> list[str]:
    """``count`` keys whose values share one bucket."""
    first = f"{0:032x}"
    bucket = backend._values.path(backend._name(first, "")).rpartition("/")[0]
    found = [first]
    number = 1
    while len(found) < count:
        key = f"{number:032x}"
        if backend._values.path(backend._name(key, "")).rpartition("/")[0] == bucket:
            found.append(key)
        number += 1
    return found


def test_a_full_bucket_evicts_the_value_closest_to_expiry(directory: Path) -> None:
    backend = _started(directory, max_values=512)  # two values per bucket
    soon, late, new = _same_bucket(backend, 3)
    backend.set(late, "late", 1000.0)
    backend.set(soon, "soon", 10.0)
    backend.set(new, "new", 500.0)
    assert [backend.get(key) for key in (soon, late, new)] == [None, "late", "new"]


def test_a_set_never_lists_the_whole_directory(
    directory: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each set lists its own bucket (and, every 16th, one more): never the directory."""
    backend = _started(directory)
    listed: list[int] = []
    real = os.listdir

    def listdir(path: Any = ".") -> list[str]:
        names = real(path)
        listed.append(len(names))
        return names

    monkeypatch.setattr(os, "listdir", listdir)
    for number in range(600):
        backend.set(f"{number:032x}", "v", 86400.0)
    assert len(listed) <= 600 + 600 // 16
    assert max(listed) < 20  # a bucket's few names, not the 600 values


def test_max_values_in_the_url(directory: Path) -> None:
    backend = from_url(f"file://{directory}?max_values=300")
    assert isinstance(backend, FileBackend)
    assert backend.max_values == 300
    assert from_url(f"file://{directory}/?max_values=300") is backend
    assert from_url(f"file://{directory}") is not backend
    backend.close()


@pytest.mark.parametrize("query", ["max_values=x", "max_values=0", "max_values=1&max_values=2"])
def test_bad_max_values_in_the_url(directory: Path, query: str) -> None:
    with pytest.raises(ConfigurationError, match="max_values"):
        from_url(f"file://{directory}?{query}")


def test_the_start_sweep_removes_expired_values_and_old_layout_values(directory: Path) -> None:
    backend = _started(directory)
    backend.set("note-expired", "x", -1.0)
    backend.set("note-kept", "y", 3600.0)
    (directory / "legacy.value").write_text("-\nflat layout")
    backend.close()
    _started(directory).close()
    assert _files(directory) == ["note-kept.value"]


# -- the directory: parents, hijack, modes, /tmp cleaning --------------------------------


def test_missing_parents_of_an_explicit_directory_are_created(tmp_path: Path) -> None:
    directory = tmp_path / "var" / "lib" / "app" / "locks"
    _started(directory).close()
    assert (directory.stat().st_mode & 0o777) == 0o700
    assert directory.parent.is_dir()


def test_a_directory_only_readable_by_others_is_made_private(directory: Path) -> None:
    directory.mkdir(mode=0o755)
    directory.chmod(0o755)
    _started(directory).close()
    assert (directory.stat().st_mode & 0o777) == 0o700


@pytest.fixture
def temp_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The system temp dir, for the default directory, is the test's own."""
    monkeypatch.setattr("tempfile.gettempdir", lambda: str(tmp_path))
    return tmp_path


def _plant_symlink(path: Path) -> None:
    path.symlink_to(path.parent)


@pytest.mark.parametrize(
    "plant",
    [
        pytest.param(_plant_symlink, id="symlink"),
        pytest.param(lambda path: path.write_text(""), id="file"),
        pytest.param(
            lambda path: (path.mkdir(mode=0o700), os.chown(path, 4242, 4242)),
            id="other-user",
            marks=pytest.mark.skipif(os.geteuid() != 0, reason="only root can chown"),
        ),
    ],
)
def test_a_hijacked_default_directory_says_what_to_configure(
    temp_dir: Path, plant: Callable[[Path], object]
) -> None:
    plant(temp_dir / f"sessionlock-{os.geteuid()}")
    with pytest.raises(ConfigurationError, match='backend="file:///var/lib/<app>/sessionlock"'):
        from_url(DEFAULT_URL)


def _locked_by_others(directory: Path) -> bool:
    """Whether someone holds a flock on ``directory`` (as systemd-tmpfiles tests it)."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def test_a_live_backend_holds_its_directory_against_tmp_cleaning(directory: Path) -> None:
    backend = _started(directory)
    assert _locked_by_others(directory)
    backend.close()
    assert not _locked_by_others(directory)


# -- the secret --------------------------------------------------------------------------


def test_a_live_backend_puts_a_removed_secret_back(directory: Path) -> None:
    backend = _started(directory)
    secret = backend.secret()
    (directory / ".secret").unlink()
    backend.keep()  # the keeper's step
    assert (directory / ".secret").read_bytes() == secret


def test_a_backend_started_while_the_secret_is_gone_gets_the_live_ones(directory: Path) -> None:
    live = _started(directory)
    (directory / ".secret").unlink()
    assert FileBackend(directory).secret() == live.secret()  # waits for live's keeper


def test_control_with_no_live_backend_a_new_secret_is_made(directory: Path) -> None:
    old = _started(directory)
    old.close()
    (directory / ".secret").unlink()
    assert FileBackend(directory).secret() != old.secret()


def test_a_backend_never_hashes_with_a_secret_of_its_own_while_others_live(
    directory: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    live = _started(directory)
    live._stop.set()  # its keeper is gone: nobody puts the secret back
    (directory / ".secret").unlink()
    monkeypatch.setattr("sessionlock.backends._filedir._SECRET_WAIT", 0.1)
    with pytest.raises(BackendUnavailable, match="missing while other processes"):
        FileBackend(directory)
    assert not (directory / ".secret").exists()


# -- degrade, never 500 ------------------------------------------------------------------


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A 256 KiB tmpfs with 64 inodes, mounted for the test; skipped if mounting is refused."""
    mount = tmp_path / "fs"
    mount.mkdir()
    options = "size=256k,nr_inodes=64,mode=0700"
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(mount)],
        capture_output=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def _fill(directory: Path, *, inodes: bool) -> list[Path]:
    """Fill the file system: empty files until no inode is left, or one file until no block."""
    made: list[Path] = []
    with pytest.raises(OSError, match="No space left") as full:
        _grow(directory, made, inodes=inodes)
    assert full.value.errno == errno.ENOSPC
    return made


def _grow(directory: Path, made: list[Path], *, inodes: bool) -> None:
    while inodes:
        (directory / f"filler-{len(made)}").touch()
        made.append(directory / f"filler-{len(made)}")
    with (directory / "filler").open("wb") as file:
        made.append(directory / "filler")
        while True:
            file.write(b"x" * 4096)
            file.flush()


@pytest.mark.parametrize("inodes", [False, True], ids=["no-blocks", "no-inodes"])
def test_a_full_disk_gives_backend_unavailable_and_recovery_needs_nothing(
    small_fs: Path, inodes: bool
) -> None:
    backend = _started(small_fs / "locks")
    backend.set("note-kept", "before", None)
    fillers = _fill(small_fs, inodes=inodes)
    with pytest.raises(BackendUnavailable):
        backend.set("note-new", "y" * 8192, None)
    if inodes:
        with pytest.raises(BackendUnavailable):
            backend.try_acquire(KEY)  # a new lock file needs an inode
    assert backend.get("note-kept") == "before"
    for filler in fillers:
        filler.unlink()
    backend.set("note-new", "y" * 8192, None)  # space is back: it simply works
    assert backend.get("note-new") == "y" * 8192
    lease = backend.try_acquire(KEY)
    assert lease is not None
    backend.release(lease)
    backend.close()


def test_a_read_only_disk_gives_backend_unavailable_and_recovery_needs_nothing(
    small_fs: Path,
) -> None:
    backend = _started(small_fs / "locks")
    backend.set("note-kept", "before", None)
    subprocess.run(["mount", "-o", "remount,ro", str(small_fs)], check=True)
    try:
        with pytest.raises(BackendUnavailable):
            backend.set("note-new", "y", None)
        with pytest.raises(BackendUnavailable):
            backend.delete("note-kept")
        with pytest.raises(BackendUnavailable):
            backend.try_acquire(KEY)
        assert backend.get("note-kept") == "before"
    finally:
        subprocess.run(["mount", "-o", "remount,rw", str(small_fs)], check=True)
    backend.set("note-new", "y", None)
    assert backend.get("note-new") == "y"
    lease = backend.try_acquire(KEY)
    assert lease is not None
    backend.release(lease)
    backend.close()


def test_no_descriptor_left_gives_backend_unavailable(
    directory: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """EMFILE by fault injection (a real one would starve pytest too): then it recovers."""
    backend = _started(directory)
    backend.set("note-kept", "before", None)
    real = os.open

    def no_descriptor(*args: Any, **kwargs: Any) -> int:
        raise OSError(errno.EMFILE, os.strerror(errno.EMFILE))

    monkeypatch.setattr(os, "open", no_descriptor)
    for call in (
        lambda: backend.set("note-new", "y", None),
        lambda: backend.get("note-kept"),
        lambda: backend.try_acquire(KEY),
    ):
        with pytest.raises(BackendUnavailable):
            call()
    monkeypatch.setattr(os, "open", real)
    backend.set("note-new", "y", None)
    assert backend.get("note-new") == "y"
    lease = backend.try_acquire(KEY)
    assert lease is not None
    backend.release(lease)
