"""The next waiter's doorbell: a release in one process wakes the request waiting in another
in one step, instead of two.

A lock wait in the kernel cannot time out, so a waiting request cannot be the thread blocked
there: a helper thread is, and hands the lock on to the request's thread or event loop. That
second wake-up doubled the hand-off (a raw ``flock`` hand-off about 60 µs on the 2-core VM,
ours 130 µs for a thread, 280 µs for a task). Instead the waiter next in line (the one waiter
that waits for the holder itself, see :mod:`._ticketlock`) binds an abstract Unix datagram
socket named after the lock file, and the request waits on it: a thread in ``recv`` with its
timeout, a task in its loop's selector. A release that finds someone queued sends it an empty
datagram; the waiter then takes the lock without waiting (``try_hold``). It keeps its bell
bound until it releases (closing a bound socket costs 13 µs on the 2-core VM: not on the way
of the hand-off), so each lock file has two names: the next waiter binds the one not taken,
and a release rings the one that is not its own.

A ring is a hint, never the lock: a spurious one costs a failed try. A missing one (a holder
SIGKILLed: the kernel frees its lock and rings nobody) costs at most :data:`POLL`, how often
a waiter tries anyway. The name is a hash of the lock file's name keyed by the directory's
secret: abstract names have no permissions, so another local user can neither find one nor
learn anything from it, and one who squats a name first only sends the waiter back to the
kernel's wait (the bind fails). Linux only (abstract names).
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import select
import socket
import sys
import threading

from . import _ticketlock

__all__ = ["AVAILABLE", "POLL", "Bell", "addresses", "bind", "ring"]

#: Whether bells ring here: Linux's abstract socket names, over the fair ticket lock.
AVAILABLE = sys.platform.startswith("linux") and _ticketlock.FAIR
#: Seconds a waiter waits for a ring before it tries anyway (a holder killed rings nobody).
POLL = 0.05
_PREFIX = b"\0sessionlock-bell-"


def addresses(secret: bytes, name: str) -> tuple[bytes, bytes]:
    """The two bell names of the lock file ``name`` of the directory whose secret it is.

    Two, so that a waiter who got the lock may keep its bell bound until it releases (the
    close is then off the hand-off's path) while the next waiter binds the other one.
    """
    digest = hashlib.blake2b(name.encode(), key=secret[:64], digest_size=16).hexdigest()
    first = _PREFIX + digest.encode()
    return first, first + b"-2"


def _socket() -> socket.socket:
    return socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)


_ringer: socket.socket | None = None
_ringer_mutex = threading.Lock()


def ring(to: bytes) -> None:
    """Wake the waiter bound to ``to``, if any (nobody there, or rung already: nothing)."""
    global _ringer
    sender = _ringer
    if sender is None:
        with _ringer_mutex:
            if _ringer is None:
                _ringer = _socket()
                _ringer.setblocking(False)
                atexit.register(_ringer.close)  # one per process, closed with it
            sender = _ringer
    # ECONNREFUSED: nobody waits there; EAGAIN: its rings are not read yet
    with contextlib.suppress(OSError):
        sender.sendto(b"", to)


def bind(names: tuple[bytes, bytes]) -> Bell | None:
    """A bell bound to the first of ``names`` that is free (None: both are taken, by the
    holder and a squatter, or by two readers holding: the caller waits in the kernel)."""
    for name in names:
        try:
            return Bell(name)
        except OSError:
            continue
    return None


class Bell:
    """The bound end: the next in line waits here for the holder's release."""

    __slots__ = ("_socket", "address")  # nonblocking: a task reads it in its loop

    def __init__(self, to: bytes) -> None:
        """Bind ``to`` (OSError if the name is taken)."""
        bound = _socket()
        try:
            bound.bind(to)
            bound.setblocking(False)
        except BaseException:
            bound.close()
            raise
        self._socket = bound
        self.address = to

    def fileno(self) -> int:
        return self._socket.fileno()

    def wait(self, timeout: float) -> None:
        """Block the thread until a ring (or rings not drained yet), or ``timeout`` seconds."""
        poller = select.poll()  # not select(): descriptors past 1023 are common in servers
        poller.register(self._socket, select.POLLIN)
        if poller.poll(max(timeout, 0.0) * 1000):
            return  # rung: the caller tries at once, and drains only if it must wait again

    def drain(self) -> None:
        """Forget the rings received (several releases of readers may each ring)."""
        try:
            while True:
                self._socket.recv(1)
        except BlockingIOError:
            return

    def close(self) -> None:
        """Unbind: another waiter may bind the name."""
        self._socket.close()
