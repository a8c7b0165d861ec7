"""The file backend's own promises: safe directory, bounded files, inode re-check, fork, URLs."""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from sessionlock.backends import DEFAULT_URL, from_url
from sessionlock.backends.file import FileBackend, default_directory
from sessionlock.core import Core
from sessionlock.errors import ConfigurationError

KEY = "0123456789abcdef0123456789abcdef"


@pytest.fixture
def directory(tmp_path: Path) -> Path:
    return tmp_path / "locks"


def _files(directory: Path) -> list[str]:
    return sorted(name for name in os.listdir(directory) if name != ".secret")


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
    core = Core(backend=FileBackend(directory), key="cookie:sid")
    admission = core.admit({"REQUEST_METHOD": "GET", "HTTP_COOKIE": "sid=raw-secret-sid-value"})
    assert admission is not None
    core.enter(admission)
    names = _files(directory)
    core.leave(admission)
    assert names == [admission.key + ".lock"]
    assert "raw-secret-sid-value" not in admission.key


def test_unsafe_value_names_are_hashed(directory: Path) -> None:
    backend = FileBackend(directory)
    backend.set("../escape/attempt", "v", None)
    assert backend.get("../escape/attempt") == "v"
    assert all(name.startswith("h") for name in _files(directory))
    assert not (directory.parent / "escape").exists()


def test_secret_is_created_once_private_and_shared(directory: Path) -> None:
    first, second = FileBackend(directory), FileBackend(directory)
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
    backend = FileBackend(directory)
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
    backend = FileBackend(directory)
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
    backend = FileBackend(directory)
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
    backend_b, backend_c = FileBackend(directory), FileBackend(directory)
    path = directory / f"{KEY}.lock"
    x = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(x, fcntl.LOCK_EX)
    got: list[object] = []
    b_waits = threading.Thread(target=lambda: got.append(backend_b.acquire(KEY, 1.0)))
    b_waits.start()
    while _open_count(path) < 2:  # until B's contender has opened inode 1
        threading.Event().wait(0.001)
    os.unlink(path)
    c_lease = backend_c.try_acquire(KEY)
    assert c_lease is not None
    fcntl.flock(x, fcntl.LOCK_UN)
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
    backend = FileBackend(directory)
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
    backend = FileBackend(directory)
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
