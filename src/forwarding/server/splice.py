"""Zero-copy forwarding for one-to-one raw sessions, with Linux ``splice(2)``.

When a session sends to exactly one receiver and both are plain TCP in this
process, its bytes need never enter Python: a :class:`Pump` moves them from the
sender's socket into a kernel pipe and from the pipe into the receiver's socket.
That saves two copies and the per-chunk Python work of the ordinary path.

A session is handed to a pump after one read of at least ``splice_after`` bytes
(16 KiB by default): a sender that fills reads that large is streaming. Small
messages stay on the ordinary path, where one read and one write through
Python wake the receiver sooner than two splices through a pipe.

The ordinary path's rules still hold:

* order: a pump starts only when the receiver's transport has nothing queued, so
  nothing the sender routed before can be overtaken; other senders to the same
  receiver keep writing through its transport, interleaved at arbitrary
  boundaries as raw mode allows;
* bounded memory: the pipe holds at most ``pipe_size`` bytes; when the receiver
  does not read, the pump stops reading the sender (TCP pushes back on the
  client) and the receiver's slow-receiver timer runs;
* accounting: bytes are counted in and out as they enter the pipe; what is still
  in the pipe when the receiver goes away is counted as dropped.

Each pump works on ``dup()``-ed descriptors, because the event loop refuses to
watch a descriptor that a transport owns. The sender's transport is paused for
reading while the pump runs, and resumed if the pump stops before the sender
does (its receiver left).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import socket
from typing import TYPE_CHECKING, Protocol

from .outcome import Outcome

if TYPE_CHECKING:
    from .session import Session

AVAILABLE = hasattr(os, "splice") and hasattr(fcntl, "F_SETPIPE_SZ")
_ROUNDS = 4
_FLAGS = getattr(os, "SPLICE_F_MOVE", 0) | getattr(os, "SPLICE_F_NONBLOCK", 0)
SNDBUF_PIPES = 4
"""A spliced receiver's send buffer is raised to this many pipes: a whole pipe
then nearly always fits, and a 2 GiB stream cost the relay a quarter less CPU
than with the kernel's autotuned buffer (docs/performance.md, "What was tried")."""


def _sysctl(path: str) -> int | None:
    try:
        with open(path) as f:
            return int(f.read().split()[-1])  # tcp_wmem holds "min default max"
    except (OSError, ValueError, IndexError):
        return None


def send_buffer_request(pipe_size: int, wmem_max: int | None, autotune_max: int | None) -> int | None:
    """What to ask ``SO_SNDBUF`` for, or ``None`` to leave the kernel's autotuning alone.

    The kernel doubles the request and caps it at ``net.core.wmem_max`` first,
    and a set buffer is no longer autotuned: where the cap (212,992 bytes on
    many distributions) leaves less than autotuning may grow to
    (``net.ipv4.tcp_wmem``'s maximum), setting it would only shrink the buffer.
    """
    if wmem_max is None or autotune_max is None:
        return None
    request = SNDBUF_PIPES * pipe_size
    return request if 2 * min(request, wmem_max) > autotune_max else None


_WMEM_MAX = _sysctl("/proc/sys/net/core/wmem_max")
_AUTOTUNE_MAX = _sysctl("/proc/sys/net/ipv4/tcp_wmem")


class TransportSocket(Protocol):
    """What a transport's ``get_extra_info("socket")`` offers, in asyncio and uvloop alike."""

    def fileno(self) -> int: ...

    def setsockopt(self, level: int, optname: int, value: int, /) -> None: ...

    def getsockopt(self, level: int, optname: int, /) -> int: ...


class Pump:
    """Moves one sender's bytes to one receiver through a kernel pipe."""

    __slots__ = (
        "sender",
        "receiver",
        "_loop",
        "_src",
        "_dst",
        "_pipe_r",
        "_pipe_w",
        "sndbuf",
        "pipe_size",
        "_queued",
        "_stalled",
        "_source_done",
        "_source_error",
        "source_ended",
        "_slow",
        "_slow_timer",
        "_closed",
        "_paced",
    )

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        sender: Session,
        receiver: Session,
        src: TransportSocket,
        dst: TransportSocket,
        pipe_size: int,
        slow_receiver_timeout: float,
    ) -> None:
        self.sender = sender
        self.receiver = receiver
        self._loop = loop
        # Four descriptors per pump; out of descriptors (EMFILE), the caller
        # keeps the ordinary path.
        self._pipe_r, self._pipe_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            self._src = os.dup(src.fileno())
            try:
                self._dst = os.dup(dst.fileno())
            except OSError:
                os.close(self._src)
                raise
        except OSError:
            os.close(self._pipe_r)
            os.close(self._pipe_w)
            raise
        try:
            # Larger than the default 64 KiB means fewer wake-ups per GiB; may be
            # refused (pipe-user-pages-soft), and then the default still works.
            self.pipe_size = fcntl.fcntl(self._pipe_w, fcntl.F_SETPIPE_SZ, pipe_size)
        except OSError:
            self.pipe_size = fcntl.fcntl(self._pipe_w, fcntl.F_GETPIPE_SZ)
        self.sndbuf: int | None = None
        """The send buffer the kernel gave the receiver, if we set one (for the log)."""
        request = send_buffer_request(self.pipe_size, _WMEM_MAX, _AUTOTUNE_MAX)
        if request is not None:
            try:
                dst.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, request)
                self.sndbuf = dst.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)
            except OSError:  # the kernel's own buffer then: it only costs CPU
                pass
        self._queued = 0
        self._stalled = False
        self._source_done = False
        self._source_error: str | None = None
        self.source_ended = False
        """The sender sent FIN and the pipe was drained: its session goes on as a receiver."""
        self._slow = slow_receiver_timeout
        self._slow_timer: asyncio.TimerHandle | None = None
        self._closed = False
        self._paced = False  # a rate cap pauses the sender (server/quotas.py)
        loop.add_reader(self._src, self._readable)

    def _readable(self) -> None:
        # Several rounds per wake-up while the sender keeps the socket full: each
        # round is two system calls, a wake-up costs a trip through the loop.
        # Reading goes on until EAGAIN, the end, a stall or the round limit: not
        # "until a short read", because uvloop turns an error event (a reset)
        # into one call of this reader and then stops its poll handle, so the
        # read that would have seen the reset must happen now.
        if self._closed or self._stalled or self._source_done or self._paced:
            return
        meter = self.sender._meter
        for _ in range(_ROUNDS):
            want = self.pipe_size - self._queued
            if meter is not None:
                # Never past the quota, and in bursts a cap allows; a spent quota
                # hands the sender back to the ordinary path, which ends it at its next byte.
                want = meter.allowance(min(want, meter.burst))
                if not want:
                    self.stop()
                    return
            try:
                n = os.splice(self._src, self._pipe_w, want, flags=_FLAGS)
            except BlockingIOError:
                return
            except OSError as exc:
                self._end_of_source(str(exc) or type(exc).__name__)
                return
            if n == 0:
                self._end_of_source(None)
                return
            self._queued += n
            sender, receiver = self.sender, self.receiver
            sender.bytes_in += n
            receiver.bytes_out += n
            now = sender.last_active = receiver.last_active = self._loop.time()
            if meter is not None:
                delay = meter.charge(n, now)
                if delay:
                    self._paced = True
                    self._loop.remove_reader(self._src)
                    meter.hold(self._loop, delay, self._unpace)
            self._flush()
            if self._paced:
                return
            if self._queued or self._closed:  # stalled (the writer side goes on), or stopped
                return
        # Rounds used up and the sender still streaming: go on after the other
        # callbacks, without relying on the poll to fire again (see above).
        self._loop.call_soon(self._readable)

    def _writable(self) -> None:
        self._flush()

    def _unpace(self) -> None:
        self._paced = False
        if not (self._closed or self._stalled or self._source_done):
            self._loop.add_reader(self._src, self._readable)

    def _drain(self) -> None:
        """Move what the pipe holds into the receiver's socket; raises when the socket stops taking it."""
        while self._queued:
            m = os.splice(self._pipe_r, self._dst, self._queued, flags=_FLAGS)
            if m == 0:  # pragma: no cover - a socket never takes 0 of a non-empty pipe
                raise BlockingIOError
            self._queued -= m

    def _flush(self) -> None:
        try:
            self._drain()
        except BlockingIOError:
            self._stall()
            return
        except OSError as exc:
            # The receiver's socket failed; its session ends, and that stops us.
            self.receiver.close(Outcome.RESET, str(exc) or type(exc).__name__, abort=True)
            return
        if self._stalled:
            self._unstall()
        if self._source_done:
            self._finish_source()

    def _stall(self) -> None:
        if self._stalled:
            return
        self._stalled = True
        if not self._source_done and not self._paced:
            self._loop.remove_reader(self._src)
        self._loop.add_writer(self._dst, self._writable)
        self._slow_timer = self._loop.call_later(self._slow, self.receiver.too_slow)

    def _unstall(self) -> None:
        self._stalled = False
        self._loop.remove_writer(self._dst)
        if self._slow_timer is not None:
            self._slow_timer.cancel()
            self._slow_timer = None
        if not self._source_done and not self._paced:
            self._loop.add_reader(self._src, self._readable)

    def _end_of_source(self, error: str | None) -> None:
        """The sender closed or failed: deliver what the pipe holds, then end its session."""
        self._source_done = True
        self._source_error = error
        if not self._paced:
            self._loop.remove_reader(self._src)
        if not self._queued:
            self._finish_source()

    def _finish_source(self) -> None:
        if self._source_error is None:
            # Every byte is in the receiver's socket; stopping tells the sender
            # (Session.pump_stopped), which passes the end of stream on (5.1).
            self.source_ended = True
            self.stop()
        else:
            # Closing the sender's session stops this pump (Session._leave_router).
            self.sender.close(Outcome.RESET, self._source_error, abort=True)

    def stop(self) -> None:
        """Close the pump; one last try to deliver what the pipe holds, the rest counts as dropped.

        Idempotent. The sender goes back to the ordinary path.
        """
        if self._closed:
            return
        self._closed = True
        if self._queued:
            with contextlib.suppress(OSError):  # BlockingIOError included
                self._drain()
            self.receiver.dropped += self._queued
        loop = self._loop
        if self._stalled:
            loop.remove_writer(self._dst)
        elif not self._source_done and not self._paced:
            loop.remove_reader(self._src)
        if self._paced and self.sender._meter is not None:
            self.sender._meter.cancel_hold()  # the sender's own reads are paced from here
        if self._slow_timer is not None:
            self._slow_timer.cancel()
            self._slow_timer = None
        for fd in (self._src, self._dst, self._pipe_r, self._pipe_w):
            os.close(fd)
        self.sender.pump_stopped(self)
        self.receiver.inbound_pump_stopped(self)
