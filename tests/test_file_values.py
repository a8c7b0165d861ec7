"""The file backend's value store: values written in place, under flock, torn writes detected.

Each set rewrites its file on one descriptor (no temporary file, no rename); only a set that
creates a file lists its bucket. A reader never sees half a value, whichever process writes.
"""

from __future__ import annotations

import errno
import fcntl
import os
import subprocess
import sys
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sessionlock.backends import _filevalues
from sessionlock.backends.file import FileBackend
from sessionlock.errors import BackendUnavailable

ROOT = Path(__file__).resolve().parent.parent
KEY = "0123456789abcdef0123456789abcdef"


@pytest.fixture
def directory(tmp_path: Path) -> Path:
    return tmp_path / "locks"


def _started(directory: Path, **options: Any) -> FileBackend:
    """A backend whose start sweep is over: the files are the test's alone from now on."""
    backend = FileBackend(directory, **options)
    assert backend.swept.wait(60)
    return backend


@pytest.fixture
def backend(directory: Path) -> Iterator[FileBackend]:
    made = _started(directory)
    yield made
    made.close()


def _file(backend: FileBackend, key: str) -> Path:
    return Path(backend.directory) / backend._values.path(backend._name(key, ""))


def _record(value: bytes, expires: bytes = b"-") -> bytes:
    """A file's bytes in the current format."""
    check = zlib.crc32(value, zlib.crc32(expires))
    return b"%s %d %08x\n%s" % (expires, len(value), check, value)


# -- in place ------------------------------------------------------------------------------


def test_a_rewrite_keeps_the_file_and_another_instance_reads_it(directory: Path) -> None:
    """Two backends on one directory, as two worker processes: the second reads each write,
    and a rewrite goes into the same file (same inode), not a new one renamed over it."""
    first, second = _started(directory), _started(directory)
    try:
        first.set(KEY, "from the first " * 20, 3600.0)
        inode = _file(first, KEY).stat().st_ino
        assert second.get(KEY) == "from the first " * 20
        second.set(KEY, "from the second", 3600.0)
        assert first.get(KEY) == "from the second"
        assert _file(first, KEY).stat().st_ino == inode
        first.delete(KEY)
        assert second.get(KEY) is None
    finally:
        first.close()
        second.close()


@pytest.mark.parametrize(
    "values",
    [
        pytest.param(["a much longer value than the next", "short"], id="shorter"),
        pytest.param(["short", "a much longer value than the last"], id="longer"),
        pytest.param(["same size 1", "same size 2"], id="same-size"),
        pytest.param(["x" * 70_000, "y" * 200_000, "z"], id="beyond-one-read"),
        pytest.param(["value", ""], id="empty"),
        pytest.param(["ascii", "été \udcff 🍪\n2nd line"], id="unicode-and-surrogate"),
    ],
)
def test_a_rewrite_reads_back_exactly(backend: FileBackend, values: list[str]) -> None:
    for value in values:
        backend.set(KEY, value, 3600.0)
        assert backend.get(KEY) == value
    last = values[-1].encode("utf-8", "surrogatepass")
    assert _file(backend, KEY).read_bytes().endswith(b"\n" + last)  # no older tail left


def test_the_expiry_is_the_files_mtime_after_a_rewrite(backend: FileBackend) -> None:
    backend.set(KEY, "first", 3600.0)
    before = time.time()
    backend.set(KEY, "second", 60.0)
    assert before + 60 <= _file(backend, KEY).stat().st_mtime <= time.time() + 60
    backend.set(KEY, "third", None)
    assert _file(backend, KEY).stat().st_mtime == _filevalues._NEVER


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    st.lists(
        st.tuples(
            st.integers(0, 2),
            st.one_of(st.none(), st.text(st.characters(codec="utf-8"), max_size=300)),
        ),
        max_size=30,
    )
)
def test_sets_deletes_and_gets_agree_with_a_dict(
    backend: FileBackend, operations: list[tuple[int, str | None]]
) -> None:
    """Any sequence of rewrites of any lengths (None: a delete) reads back as a dict would."""
    keys = [f"{number:032x}" for number in range(3)]
    model: dict[str, str] = {}
    for key in keys:
        backend.delete(key)
    for index, value in operations:
        key = keys[index]
        if value is None:
            backend.delete(key)
            model.pop(key, None)
        else:
            backend.set(key, value, 3600.0)
            model[key] = value
        assert [backend.get(k) for k in keys] == [model.get(k) for k in keys]


# -- torn and damaged files ----------------------------------------------------------------


def test_a_tail_left_by_a_writer_that_died_before_its_truncate_is_ignored(
    backend: FileBackend,
) -> None:
    """The new value, whole, then the rest of an older longer one: the new value reads."""
    backend.set(KEY, "old and longer value", None)
    path = _file(backend, KEY)
    path.write_bytes(_record(b"new") + b"and longer value")
    assert backend.get(KEY) == "new"


@pytest.mark.parametrize(
    "content",
    [
        pytest.param(_record(b"whole value")[:-3], id="payload-cut-short"),
        pytest.param(_record(b"new value")[:-4] + b"OLD!", id="same-length-mix"),
        pytest.param(_record(b"value").replace(b" 5 ", b" 4 "), id="length-field-damaged"),
        pytest.param(_record(b"value", b"99999999999.5").replace(b"999.5", b"998.5"), id="expiry"),
        pytest.param(b"-\nthe older format", id="older-format"),
        pytest.param(b"", id="empty"),
        pytest.param(b"- 5 zz\nvalue", id="garbage-checksum"),
        pytest.param(_record(b"\xff\xfe"), id="not-utf-8"),
    ],
)
def test_a_torn_or_damaged_file_reads_as_absent(backend: FileBackend, content: bytes) -> None:
    backend.set(KEY, "intact", None)
    _file(backend, KEY).write_bytes(content)
    assert backend.get(KEY) is None
    backend.set(KEY, "written again", None)  # and the next set simply works
    assert backend.get(KEY) == "written again"


_CRASH = """
import os, sys
from sessionlock.backends import _filevalues
from sessionlock.backends.file import FileBackend

backend = FileBackend(sys.argv[1])
backend.set(sys.argv[2], "x" * 5000, None)
where = sys.argv[3]
if where == "before-truncate":
    _filevalues.os.ftruncate = lambda fd, length: os._exit(9)
else:  # a pwrite cut short: half the bytes, then the process dies
    real = os.pwrite
    def pwrite(fd, data, offset):
        real(fd, bytes(data)[: len(data) // 2], offset)
        os._exit(9)
    _filevalues.os.pwrite = pwrite
backend.set(sys.argv[2], sys.argv[4], None)
"""


@pytest.mark.parametrize(
    ("where", "value", "read"),
    [
        pytest.param("before-truncate", "new", "new", id="died-before-truncate"),
        pytest.param("mid-write", "y" * 5000, None, id="died-mid-write-same-length"),
        pytest.param("mid-write", "y" * 3000, None, id="died-mid-write-shorter"),
        pytest.param("mid-write", "y" * 9000, None, id="died-mid-write-longer"),
    ],
)
def test_a_writer_killed_mid_set_leaves_nothing_torn_and_nothing_locked(
    directory: Path, where: str, value: str, read: str | None
) -> None:
    backend = _started(directory)
    try:
        done = subprocess.run(
            [sys.executable, "-c", _CRASH, str(directory), KEY, where, value],
            cwd=ROOT,
            timeout=60,
            check=False,
        )
        assert done.returncode == 9
        assert backend.get(KEY) == read  # the lock died with the writer: no wait
        backend.set(KEY, "after", None)
        assert backend.get(KEY) == "after"
    finally:
        backend.close()


# -- concurrency ---------------------------------------------------------------------------

_WRITER = """
import sys
from sessionlock.backends.file import FileBackend

backend = FileBackend(sys.argv[1])
key, tag, rounds = sys.argv[2], sys.argv[3], int(sys.argv[4])
for number in range(rounds):
    size = (number * 7919) % 3000  # lengths up and down: truncates and extensions
    backend.set(key, f"{tag}{size:05d}" + tag * size, 3600.0)
backend.close()
"""


def _well_formed(value: str) -> bool:
    tag, size, body = value[0], value[1:6], value[6:]
    return tag in "ab" and size.isdigit() and body == tag * int(size)


def test_concurrent_sets_and_gets_from_processes_never_show_a_torn_value(
    directory: Path,
) -> None:
    """Two processes rewrite one value with lengths going up and down; a third reads all
    along: every read is one whole value, never a mix, never absent."""
    backend = _started(directory)
    try:
        backend.set(KEY, "a00000", 3600.0)
        writers = [
            subprocess.Popen(
                [sys.executable, "-c", _WRITER, str(directory), KEY, tag, "3000"], cwd=ROOT
            )
            for tag in "ab"
        ]
        reads = bad = 0
        while any(writer.poll() is None for writer in writers) or reads < 1000:
            value = backend.get(KEY)
            reads += 1
            if value is None or not _well_formed(value):
                bad += 1
        assert [writer.wait(60) for writer in writers] == [0, 0]
        assert bad == 0
        assert reads >= 1000
    finally:
        backend.close()


def test_a_set_whose_file_is_trimmed_before_its_lock_writes_a_new_file(
    backend: FileBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The trimmer unlinking the file between the writer's open and its flock: the value
    goes into a file of the name, not into the unlinked one."""
    backend.set(KEY, "before", 3600.0)
    path = _file(backend, KEY)
    real = fcntl.flock
    trimmed: list[int] = []

    def flock(fd: int, operation: int) -> None:
        if operation == fcntl.LOCK_EX and not trimmed:
            trimmed.append(fd)
            path.unlink()
        real(fd, operation)

    monkeypatch.setattr(fcntl, "flock", flock)
    backend.set(KEY, "after", 3600.0)
    assert trimmed
    assert backend.get(KEY) == "after"


def test_the_trimmer_spares_a_file_being_written_or_rewritten_since_it_listed(
    directory: Path,
) -> None:
    backend = _started(directory)
    try:
        backend.set(KEY, "expired", -5.0)
        path = _file(backend, KEY)
        bucket = str(path.parent.relative_to(directory))
        with path.open("rb") as held:
            fcntl.flock(held, fcntl.LOCK_EX)  # a writer in the middle of its set
            assert backend._values.tend(bucket, None) == 0
            fcntl.flock(held, fcntl.LOCK_UN)
        assert path.exists()
        listed = path.stat().st_mtime_ns
        backend.set(KEY, "rewritten", 3600.0)  # between the trimmer's stat and its unlink
        bucket_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            assert not _filevalues._remove(bucket_fd, path.name, listed)
        finally:
            os.close(bucket_fd)
        assert backend.get(KEY) == "rewritten"
        backend.set(KEY, "expired", -5.0)
        assert backend._values.tend(bucket, None) == 1  # control: unheld, as listed: gone
        assert not path.exists()
    finally:
        backend.close()


# -- the bucket listing --------------------------------------------------------------------


def _count_listings(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    listed: list[int] = []
    real = os.listdir

    def listdir(path: Any = ".") -> list[str]:
        names = real(path)
        listed.append(len(names))
        return names

    monkeypatch.setattr(os, "listdir", listdir)
    return listed


def test_a_rewrite_does_not_list_its_bucket(
    backend: FileBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    keys = [f"{number:032x}" for number in range(20)]
    for key in keys:
        backend.set(key, "first", 3600.0)
    listed = _count_listings(monkeypatch)
    writes = backend._values._writes
    for _ in range(10):
        for key in keys:
            backend.set(key, "rewritten", 3600.0)
    tends = (writes + 200) // 16 - writes // 16  # every 16th set tends one more bucket
    assert len(listed) <= tends  # (a bucket not made yet is not even listed)
    # Control: sets that create files list their bucket, each.
    listed.clear()
    for number in range(20):
        backend.set(f"{number + 100:032x}", "new", 3600.0)
    assert len(listed) >= 20


def test_a_failed_write_of_a_new_value_leaves_no_file_and_an_old_value_intact(
    backend: FileBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    backend.set(KEY, "kept", 3600.0)

    def full(fd: int, data: Any, offset: int) -> int:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "pwrite", full)
    new = f"{1:032x}"
    with pytest.raises(BackendUnavailable):
        backend.set(new, "never written", 3600.0)
    with pytest.raises(BackendUnavailable):
        backend.set(KEY, "never written", 3600.0)
    monkeypatch.undo()
    assert not _file(backend, new).exists()
    assert backend.get(KEY) == "kept"
    backend.set(new, "now written", 3600.0)
    assert backend.get(new) == "now written"
