"""Handing a connection to the worker that holds its receiver (``serve --workers``, SCM_RIGHTS).

With ``SO_REUSEPORT`` the kernel picks a worker for each connection, so the
two ends of a pair land on different workers half the time (two workers),
and a leg over loopback joins them at twice the CPU of a local pair
(docs/performance.md, scenario 14). Instead, a worker that reads an hs3 naming
exactly one receiver, online on a sibling worker, sends the connection itself
there: the socket's descriptor and the handshake so far (protocol/handshake.py,
:class:`~forwarding.protocol.handshake.Suspended`), over a Unix socket. The
sibling answers hs3 as if it had read it; the pair then runs, spliced, in one
process (../shared/design/cluster.md, 2.7 and 6 (b)).

This happens before the claim, so the session is online on one node only, from
the start: nothing moves in the registry, nobody can have sent to it yet, and it
moves at most once (a resumed handshake is never handed on). What does not
move: TLS sessions (their state is Python's), WebSocket ones (their framing is
too), and broadcast and fan-out senders (no one worker holds their receivers).
If the hand-off cannot be sent (the sibling is gone, draining, or its socket is
full), the connection stays and a leg carries the pair as before.

Visits ride on the same step: a visitor names its service, so it goes to the
service's worker; an ``accept`` goes to the worker whose visit its ticket is,
found without asking anyone because each worker makes only tickets that hash
to itself (:meth:`HandOff.new_ticket`).

The sockets live in a directory the supervisor makes for its workers (mode
0700: only the relay's own user can send it connections). Each worker listens
on ``<dir>/<sha256(node)[:16]>.sock`` (``SOCK_SEQPACKET``: one message per
hand-off, no 10-datagram queue limit) and keeps one connection to each sibling
it has handed to. A message is a JSON header line, then the bytes that followed
hs3; the descriptor travels as ancillary data.
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import errno
import hashlib
import json
import logging
import os
import socket
import struct
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ..protocol.chid import generate_chid
from ..protocol.handshake import Hs3Received, ServerHandshake, Suspended
from .session import Session

if TYPE_CHECKING:
    from .relay import Relay

log = logging.getLogger("forwarding.handoff")

MAX_MESSAGE = 128 * 1024
"""The largest hand-off: a header and what followed hs3. A handshake with more buffered stays."""
MAX_REST = MAX_MESSAGE - 8 * 1024
READS_PER_CALLBACK = 64
"""Hand-offs taken from one sibling per turn of the event loop: no sibling holds the loop."""
ACCEPT_PAUSE = 1.0
"""Seconds the hand-off listener is left alone after an accept failed (out of descriptors)."""
VERSION = 1
_LINGER_RESET = struct.pack("ii", 1, 0)


def socket_path(directory: str, node: str) -> str:
    # Node ids are the operator's (--node-id): hashed, they make a safe and short file name
    # (a Unix socket's path has 108 bytes).
    return os.path.join(directory, hashlib.sha256(node.encode()).hexdigest()[:16] + ".sock")


def secret_tag(secret: str | None) -> str:
    """Which secret the handshake was sealed under, without saying it (a reload may race a hand-off)."""
    return "" if not secret else hashlib.sha256(b"forwarding-handoff\0" + secret.encode()).hexdigest()[:16]


def encode(s: Suspended, tag: str) -> list[bytes]:
    e = s.event
    header = {
        "v": VERSION,
        "chid": s.chid,
        "challenge": s.challenge,
        "opened": s.opened,
        "age": s.age,
        "secret": tag,
        "recvers": None if e.recvers is None else list(e.recvers),
        "timeout": e.timeout,
        "wait": e.wait,
        "hangup": e.hangup,
        "framed": e.framed,
        "accept": e.accept,
    }
    return [json.dumps(header, separators=(",", ":")).encode() + b"\n", s.rest]


def decode(message: bytes) -> tuple[Suspended, str]:
    """The handshake and the secret tag in a hand-off; ``ValueError`` if it is not one."""
    line, sep, rest = message.partition(b"\n")
    if not sep:
        raise ValueError("no header line")
    h: Any = json.loads(line)
    if not isinstance(h, dict) or h.get("v") != VERSION:
        raise ValueError("not a hand-off of this version")
    recvers = h["recvers"]
    if recvers is not None and not (isinstance(recvers, list) and all(isinstance(c, str) for c in recvers)):
        raise ValueError("bad recvers")
    challenge, accept = h["challenge"], h["accept"]
    checks = (
        accept is None or isinstance(accept, str) and accept,
        isinstance(h["chid"], str) and h["chid"],
        challenge is None or isinstance(challenge, str),
        isinstance(h["opened"], bool),
        isinstance(h["age"], int | float) and h["age"] >= 0,
        isinstance(h["secret"], str),
        isinstance(h["timeout"], int | float) and h["timeout"] > 0,
        all(isinstance(h[k], bool) for k in ("wait", "hangup", "framed")),
    )
    if not all(checks):
        raise ValueError("bad field")
    event = Hs3Received(
        None if recvers is None else tuple(recvers),
        float(h["timeout"]),
        h["wait"],
        h["hangup"],
        h["framed"],
        accept=accept,
    )
    return Suspended(h["chid"], challenge, h["opened"], event, rest, float(h["age"])), h["secret"]


class HandOff:
    """This worker's end: it takes connections from its siblings and hands them connections."""

    def __init__(self, relay: Relay, directory: str, node: str, nodes: Sequence[str] = ()) -> None:
        """``nodes``: every worker's node id, in the supervisor's order (visit tickets map onto it)."""
        self.relay = relay
        self.directory = directory
        self.node = node
        self.nodes = tuple(nodes) if node in nodes else (node,)
        self.path = socket_path(directory, node)
        self._listener: socket.socket | None = None
        self._inbound: set[socket.socket] = set()
        self._outbound: dict[str, socket.socket] = {}  # sibling node -> our connection to it
        self._adopting: set[asyncio.Task[None]] = set()  # connections taken, their transports being made
        self.sent = 0
        self.adopted = 0
        self.failures: dict[str, int] = {}
        """Hand-offs that could not be made (sending) or taken (receiving), by reason: for metrics."""

    # -- taking connections ------------------------------------------------------

    def start(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)  # left by a run of this node id that died
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        sock.setblocking(False)
        sock.bind(self.path)
        sock.listen(64)
        self._listener = sock
        self.relay.loop.add_reader(sock.fileno(), self._accept)
        log.debug("hand-off socket", extra={"fields": {"path": self.path}})

    async def stop(self) -> None:
        """Take no more: siblings' sends fail from now on (they keep those pairs); what is queued is taken."""
        loop = self.relay.loop
        if self._listener is not None:
            loop.remove_reader(self._listener.fileno())
            self._listener.close()
            self._listener = None
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)
        for conn in list(self._inbound):
            # Shut first, then read what is queued: a hand-off sent between the last
            # read and the close would close its client's connection with our socket.
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RD)
            self._read(conn, limit=None)
            self._drop_inbound(conn)
        for conn in self._outbound.values():
            conn.close()
        self._outbound.clear()
        if self._adopting:  # sessions by the time this returns, for a stop to close with the others
            await asyncio.wait(list(self._adopting), timeout=2.0)

    def _accept(self) -> None:
        assert self._listener is not None
        for _ in range(READS_PER_CALLBACK):
            try:
                conn, _ = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                # Out of descriptors: the listener stays readable, so stop watching it for
                # a while rather than spin; meanwhile the siblings' pairs use legs.
                self._failed("accept", str(exc))
                self.relay.loop.remove_reader(self._listener.fileno())
                self.relay.loop.call_later(ACCEPT_PAUSE, self._resume_accepting)
                return
            conn.setblocking(False)
            self._inbound.add(conn)
            self.relay.loop.add_reader(conn.fileno(), self._read, conn)

    def _resume_accepting(self) -> None:
        if self._listener is not None:
            self.relay.loop.add_reader(self._listener.fileno(), self._accept)

    def _drop_inbound(self, conn: socket.socket) -> None:
        if conn in self._inbound:
            self._inbound.discard(conn)
            self.relay.loop.remove_reader(conn.fileno())
            conn.close()

    def _read(self, conn: socket.socket, limit: int | None = READS_PER_CALLBACK) -> None:
        n = 0
        while limit is None or n < limit:
            n += 1
            try:
                message, fds, flags, _ = socket.recv_fds(conn, MAX_MESSAGE, 1, socket.MSG_CMSG_CLOEXEC)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                self._failed("receive", str(exc))
                self._drop_inbound(conn)
                return
            if not message and not fds:  # the sibling closed its end
                self._drop_inbound(conn)
                return
            self._take(message, fds, flags)

    def _take(self, message: bytes, fds: list[int], flags: int) -> None:
        if flags & (socket.MSG_CTRUNC | socket.MSG_TRUNC) or len(fds) != 1:
            for fd in fds:
                _reset(fd)
            # MSG_CTRUNC: no room for the descriptor here; the kernel closed it, and
            # the client's handshake ends with its connection (the sibling's copy is gone).
            self._failed("truncated", "a hand-off came without its one descriptor, or cut short")
            return
        try:
            sock = socket.socket(fileno=fds[0])
        except OSError as exc:
            os.close(fds[0])
            self._failed("descriptor", str(exc))
            return
        relay = self.relay
        try:
            if sock.type != socket.SOCK_STREAM or sock.family not in (socket.AF_INET, socket.AF_INET6):
                raise ValueError("not a TCP connection")
            suspended, tag = decode(message)
            if tag != secret_tag(relay.config.secret):
                raise ValueError("sealed under another secret (a reload is under way)")
            hs = ServerHandshake.resume(relay.config.limits, relay.loop.time(), relay.sealer, suspended)
        except (ValueError, KeyError, TypeError) as exc:
            _reset(sock.detach())  # the client is told by a reset: its handshake cannot go on anywhere
            self._failed("invalid", str(exc))
            return
        session = Session(relay)
        session.adopt(hs, suspended.age)
        self.adopted += 1
        task = relay.loop.create_task(self._connect(session, sock))
        self._adopting.add(task)
        task.add_done_callback(self._adopted)

    async def _connect(self, session: Session, sock: socket.socket) -> None:
        try:
            await self.relay.loop.connect_accepted_socket(lambda: session, sock)
        except OSError as exc:
            sock.close()
            self._failed("adopt", str(exc))

    def _adopted(self, task: asyncio.Task[None]) -> None:
        self._adopting.discard(task)
        if not task.cancelled() and task.exception() is not None:  # said once, not "never retrieved"
            log.error("hand-off failed", exc_info=task.exception())

    def _failed(self, reason: str, desc: str) -> None:
        self.failures[reason] = self.failures.get(reason, 0) + 1
        if self.relay.may_log_refusal():
            log.warning("hand-off failed", extra={"fields": {"reason": reason, "desc": desc}})

    # -- handing connections on ----------------------------------------------------

    def send(self, node: str, fd: int, suspended: Suspended) -> bool:
        """Send connection ``fd``, suspended at hs3, to sibling ``node``; ``False`` if it must stay here."""
        if len(suspended.rest) > MAX_REST:
            return False
        message = encode(suspended, secret_tag(self.relay.config.secret))
        fds = array.array("i", [fd])
        for attempt in range(2):
            conn = self._outbound.get(node) or self._connect_to(node)
            if conn is None:
                return False
            try:
                conn.sendmsg(message, [(socket.SOL_SOCKET, socket.SCM_RIGHTS, fds)], socket.MSG_NOSIGNAL)
                break
            except (BlockingIOError, InterruptedError):
                self._failed_quietly("busy")  # its queue is full: this pair uses a leg
                return False
            except OSError as exc:
                self._outbound.pop(node, None)
                conn.close()
                if attempt or exc.errno not in (errno.EPIPE, errno.ECONNRESET):
                    self._failed_quietly("send")
                    return False
                # The sibling restarted since we last handed to it: once more, anew.
                log.debug("hand-off connection broken: connecting anew", extra={"fields": {"to": node}})
        self.sent += 1
        return True

    def _connect_to(self, node: str) -> socket.socket | None:
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        conn.setblocking(False)
        try:
            conn.connect(socket_path(self.directory, node))
        except OSError:  # not there (draining, stopped, not a sibling) or its backlog is full
            conn.close()
            self._failed_quietly("connect")
            return None
        self._outbound[node] = conn
        return conn

    def _failed_quietly(self, reason: str) -> None:
        # Nothing is lost: the session stays here and a leg carries its pair.
        self.failures[reason] = self.failures.get(reason, 0) + 1

    # -- visits: an acceptor goes where its visit waits ------------------------------

    def ticket_node(self, ticket: str) -> str:
        """The worker whose visit a ticket is: each worker makes only tickets that map to itself."""
        digest = hashlib.sha256(ticket.encode()).digest()
        return self.nodes[int.from_bytes(digest[:8], "big") % len(self.nodes)]

    def new_ticket(self) -> str:
        """A visit ticket (128 random bits, as on one relay) that maps to this worker: about N draws."""
        while True:
            ticket = generate_chid()
            if self.ticket_node(ticket) == self.node:
                return ticket

    def has(self, node: str) -> bool:
        """Whether ``node`` is a sibling worker (one that is draining or stopped refuses the connection)."""
        return node != self.node and node in self.nodes


def _reset(fd: int) -> None:
    """Close a descriptor we were handed; a connection is reset, not ended as if its stream were whole."""
    try:
        sock = socket.socket(fileno=fd)
    except OSError:  # not a socket
        os.close(fd)
        return
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
    sock.close()
