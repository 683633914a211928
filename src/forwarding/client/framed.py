"""Framed sessions for asyncio: who sent what, presence, and commands.

    async with forwarding.connect_framed("relay:8601", chid="alice") as ch:
        await ch.send(b"hello")                 # to the recvers, or everyone
        async for sender, data in ch:           # each message with its sender
            ...
        await ch.set_recvers(["bob"])           # no reconnect
        print(await ch.online())
        async for event in ch.presence():       # Presence(chid, online)
            ...

One task reads the connection: data frames go to a queue of at most
``DATA_QUEUE`` messages (then the task waits, and TCP pushes back on the
relay), replies resolve the command that asked, presence events go to their
own queue. Read the data while you wait for a command's reply, or the reply
may wait behind unread data.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from ..errors import CommandRejected, ConnectionClosed, Error, ProtocolViolation, SessionClosed
from ..protocol.client import Established
from ..protocol.frames import (
    DATA,
    MIN_MAX_FRAME,
    FrameError,
    FrameParser,
    control_frame,
    data_frame,
    parse_control,
)
from .connection import _Connector

DATA_QUEUE = 256
READ_SIZE = 256 * 1024


@dataclass(frozen=True, slots=True)
class Presence:
    chid: str
    online: bool


@dataclass(frozen=True, slots=True)
class Visit:
    """A visitor asks for our service (docs/protocol.md, 13): answer with ``connect(..., accept=ticket)``
    or :meth:`FramedChannel.refuse`."""

    chid: str
    ticket: str


@dataclass(frozen=True, slots=True)
class Ended:
    """Sender ``chid`` has ended its stream (its eof event), in its place after its last message."""

    chid: str


class FramedChannel:
    """An established framed session."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, hs4: Established) -> None:
        self._reader = reader
        self._writer = writer
        self.chid = hs4.chid
        """This session's chid."""
        self.max_frame = hs4.max_frame or MIN_MAX_FRAME
        """Largest payload per frame; :meth:`send` splits longer messages."""
        self.timeout = hs4.timeout
        self.peer = hs4.peer
        """For the ends of a visit (docs/protocol.md, 13): the other end's chid."""
        self.closed_because: SessionClosed | None = None
        """Why the relay ended the session, once it has."""
        self._parser = FrameParser(max(self.max_frame, 16 << 20), allow_chid=True)
        self.ended: set[str] = set()
        """Senders whose end of stream (eof event) :meth:`recv` has passed: they sent
        nothing after the last message it returned from them."""
        self._data: asyncio.Queue[tuple[str, bytes] | Ended | None] = asyncio.Queue(DATA_QUEUE)
        self._events: asyncio.Queue[Presence | None] = asyncio.Queue()
        # Unbounded, but the relay bounds a service's unanswered visits (--max-waiting-visits).
        self._visits: asyncio.Queue[Visit | None] = asyncio.Queue()
        self._replies: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._next_id = 1
        self._subscribed = False
        self._done = False
        self._closer: asyncio.Task[None] | None = None
        self._task = asyncio.get_running_loop().create_task(self._read_loop())

    # -- data ----------------------------------------------------------------

    async def send(self, data: bytes) -> None:
        """Send ``data`` as one message (several frames if it is over ``max_frame``)."""
        step = self.max_frame
        view = memoryview(data)
        for i in range(0, max(len(data), 1), step):
            self._writer.write(data_frame(bytes(view[i : i + step])))
        await self._writer.drain()

    async def recv(self) -> tuple[str, bytes] | None:
        """The next ``(sender chid, payload)``; ``None`` once the session has ended."""
        while isinstance(item := await self.receive(), Ended):
            pass
        return item

    async def receive(self) -> tuple[str, bytes] | Ended | None:
        """Like :meth:`recv`, and an :class:`Ended` where a sender's stream ended."""
        item = await self._data.get()
        if item is None:
            self._data.put_nowait(None)  # for the next caller too
        elif isinstance(item, Ended):
            self.ended.add(item.chid)
        else:
            self.ended.discard(item[0])  # a sender with that chid again
        return item

    async def send_eof(self) -> None:
        """Say we have finished sending; we go on receiving (docs/protocol.md, 12.2)."""
        await self._request("eof")

    async def __aiter__(self) -> AsyncIterator[tuple[str, bytes]]:
        while (item := await self.recv()) is not None:
            yield item

    # -- commands ------------------------------------------------------------

    async def set_recvers(self, recvers: list[str] | None) -> list[str]:
        """Send to these chids from now on (``None`` or ``[]``: everyone); returns those online."""
        reply = await self._request("recvers", recvers=recvers or [])
        return [str(c) for c in reply.get("online", [])]

    async def online(self) -> list[str]:
        """Which of our recvers (everyone's, for broadcast) are online now."""
        reply = await self._request("online")
        return [str(c) for c in reply.get("online", [])]

    async def ping(self) -> float:
        """Round trip to the relay, in seconds."""
        start = time.perf_counter()
        await self._request("ping")
        return time.perf_counter() - start

    async def presence(self) -> AsyncIterator[Presence]:
        """Presence events for our recvers (anyone, for broadcast), starting with who is online now."""
        if not self._subscribed:
            self._subscribed = True
            reply = await self._request("subscribe", presence=True)
            for chid in reply.get("online", []):
                yield Presence(str(chid), True)
        while (event := await self._events.get()) is not None:
            yield event
        self._events.put_nowait(None)

    async def visits(self) -> AsyncIterator[Visit]:
        """A service session's visits, as they come (until the session ends)."""
        while (visit := await self._visits.get()) is not None:
            yield visit
        self._visits.put_nowait(None)

    async def refuse(self, ticket: str, desc: str | None = None) -> None:
        """Turn a visit away; the visitor's handshake fails with ``desc`` (at most 256 characters)."""
        await self._request("refuse", ticket=ticket, **({} if desc is None else {"desc": desc[:256]}))

    async def close(self, reason: str | None = None) -> None:
        """End the session (with ``reason`` in the relay's log) and the connection."""
        if not self._done and not self._writer.is_closing():
            try:
                msg: dict[str, Any] = {} if reason is None else {"reason": reason}
                await asyncio.wait_for(self._request("close", **msg), 5)
            except (ConnectionClosed, CommandRejected, TimeoutError, OSError):
                pass
        self._writer.close()
        try:
            await self._writer.wait_closed()
        except (OSError, ssl.SSLError):
            pass
        self._task.cancel()

    async def __aenter__(self) -> FramedChannel:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _request(self, cmd: str, **fields: Any) -> dict[str, Any]:
        if self._done:
            raise self.closed_because or ConnectionClosed("the session has ended")
        ident = self._next_id
        self._next_id += 1
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._replies[ident] = future
        self._writer.write(control_frame({"id": ident, "cmd": cmd, **fields}))
        await self._writer.drain()
        reply = await future
        if not reply.get("ok"):
            raise CommandRejected(str(reply.get("desc", "rejected")))
        return reply

    # -- the reading task --------------------------------------------------------

    async def _read_loop(self) -> None:
        failure: Error | None = None
        try:
            while chunk := await self._reader.read(READ_SIZE):
                for frame in self._parser.feed(chunk):
                    if frame.kind == DATA:
                        await self._data.put((frame.chid or "", bytes(frame.payload)))
                    else:
                        msg = parse_control(frame.payload)
                        if msg.get("event") == "eof" and isinstance(msg.get("chid"), str):
                            await self._data.put(Ended(msg["chid"]))
                        else:
                            self._control(msg)
                if self._parser.error is not None:
                    raise self._parser.error
        except FrameError as exc:
            failure = ProtocolViolation(f"bad frame from the relay: {exc.desc}")
        except (OSError, ssl.SSLError) as exc:
            failure = ConnectionClosed(str(exc))
        finally:
            self._done = True
            reason: Error = failure or self.closed_because or ConnectionClosed("the relay closed the session")
            for future in self._replies.values():
                if not future.done():
                    future.set_exception(reason)
            self._replies.clear()
            self._events.put_nowait(None)
            self._visits.put_nowait(None)
            # The data queue may be full; the sentinel waits its turn without blocking us.
            if self._data.full():
                # Held on self: the loop keeps only a weak reference to tasks.
                self._closer = asyncio.get_running_loop().create_task(self._data.put(None))
            else:
                self._data.put_nowait(None)

    def _control(self, msg: dict[str, Any]) -> None:
        ident = msg.get("id")
        if isinstance(ident, int) and ident in self._replies:
            future = self._replies.pop(ident)
            if not future.done():
                future.set_result(msg)
            return
        event = msg.get("event")
        if event in ("online", "offline") and isinstance(msg.get("chid"), str):
            self._events.put_nowait(Presence(msg["chid"], event == "online"))
        elif event == "visit" and isinstance(msg.get("chid"), str) and isinstance(msg.get("ticket"), str):
            self._visits.put_nowait(Visit(msg["chid"], msg["ticket"]))
        elif event == "close":
            self.closed_because = SessionClosed(str(msg.get("code", "")), str(msg.get("desc", "")))


class connect_framed(_Connector[FramedChannel]):
    """Like :class:`~forwarding.connect`, for a framed session (:class:`FramedChannel`)."""

    _framed = True

    def _wrap(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, hs4: Established) -> FramedChannel:
        return FramedChannel(reader, writer, hs4)
