"""Framed mode (hs3 ``"mode": "framed"``): frames and control commands, I/O-free.

docs/protocol.md, section 12, is the contract. A frame is an 8-byte header,
then the sender's chid (server to client data frames only), then the payload::

    type u8 | reserved u8 (0) | chid length u16 | payload length u32   (big-endian)

Type 1 is data (the payload is opaque bytes), type 2 is control (the payload
is one JSON object: a command, a reply or an event). Data frames never touch
JSON, and a frame that arrives whole in one read is handed on as a memoryview
of that read, without a copy.
"""

from __future__ import annotations

import functools
import json
import struct
from dataclasses import dataclass
from typing import Any

from .messages import DuplicateKey, HandshakeError, loads_strict, parse_recvers, quote

HEADER = struct.Struct("!BBHI")
HEADER_SIZE = HEADER.size  # 8
DATA = 1
CONTROL = 2
DEFAULT_MAX_FRAME = 1 << 20
"""Largest payload, in bytes, the server accepts in one frame unless configured otherwise."""
MIN_MAX_FRAME = 64 * 1024
"""Every server accepts frames at least this large; clients may rely on it."""
MAX_CHID_BYTES = 512  # 128 characters of at most 4 UTF-8 bytes
MAX_REASON = 256
MAX_ONLINE = 1000
"""Most chids an ``online`` reply or ``subscribe`` snapshot lists for a broadcast session."""


class FrameError(Exception):
    """The peer broke the framing rules; the session ends with this ``code`` and ``desc``."""

    def __init__(self, desc: str, code: str = "bad_frame") -> None:
        super().__init__(desc)
        self.desc = desc
        self.code = code


@dataclass(frozen=True, slots=True)
class Frame:
    kind: int
    payload: bytes | memoryview
    chid: str | None = None
    """The sender, on data frames from the server; ``None`` otherwise."""


class FrameParser:
    """Frames from a byte stream cut at arbitrary points.

    ``max_payload`` is enforced as soon as a header is read, before any payload
    is buffered, so a peer cannot make the parser hold more than one frame.

    A bad header stops the parser for good: :meth:`feed` returns the frames
    before it, whatever the segmentation, and :attr:`error` says what was wrong.
    """

    __slots__ = ("_buf", "_max", "_allow_chid", "error")

    def __init__(self, max_payload: int, allow_chid: bool = False) -> None:
        self._buf = bytearray()
        self._max = max_payload
        self._allow_chid = allow_chid
        self.error: FrameError | None = None
        """Set once the stream broke the framing rules; nothing after it is parsed."""

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def discard(self) -> int:
        """Drop the incomplete frame held (the stream ended inside it); return its size so far."""
        n = len(self._buf)
        self._buf = bytearray()
        return n

    def feed(self, data: bytes) -> list[Frame]:
        if self.error is not None:
            return []
        buf = self._buf
        whole = not buf  # frames that lie entirely inside ``data`` need no copy
        if buf:
            buf += data
            src: bytes | bytearray = buf
        else:
            src = data
        view = memoryview(src) if whole else None
        frames: list[Frame] = []
        pos, end_of_data = 0, len(src)
        while end_of_data - pos >= HEADER_SIZE:
            kind, reserved, chid_len, length = HEADER.unpack_from(src, pos)
            start = pos + HEADER_SIZE
            end = start + chid_len + length
            try:
                self._check(kind, reserved, chid_len, length)
                if end > end_of_data:
                    break
                chid = None
                if chid_len:
                    try:
                        chid = bytes(src[start : start + chid_len]).decode("utf-8")
                    except UnicodeDecodeError:
                        raise FrameError("sender chid is not valid UTF-8") from None
            except FrameError as exc:
                self.error = exc
                self._buf = bytearray()
                return frames
            body = start + chid_len
            payload: bytes | memoryview = view[body:end] if view is not None else bytes(src[body:end])
            frames.append(Frame(kind, payload, chid))
            pos = end
        if whole:
            if pos < end_of_data:
                buf += data[pos:]
        else:
            del buf[:pos]
        return frames

    def _check(self, kind: int, reserved: int, chid_len: int, length: int) -> None:
        if kind not in (DATA, CONTROL):
            raise FrameError(f"unknown frame type {kind}, expected 1 (data) or 2 (control)")
        if reserved:
            raise FrameError("the reserved header byte must be 0")
        if chid_len and (not self._allow_chid or kind != DATA):
            raise FrameError("only the server's data frames carry a chid")
        if chid_len > MAX_CHID_BYTES:
            raise FrameError(f"sender chid of {chid_len} bytes, the limit is {MAX_CHID_BYTES}")
        if length > self._max:
            raise FrameError(f"frame of {length} bytes, the limit is {self._max}", "frame_too_large")


def data_header(length: int, chid: bytes = b"") -> bytes:
    """Header (and sender chid) of a data frame; the payload follows it unchanged."""
    return HEADER.pack(DATA, 0, len(chid), length) + chid


def data_frame(payload: bytes, chid: bytes = b"") -> bytes:
    return data_header(len(payload), chid) + payload


def control_frame(message: dict[str, Any]) -> bytes:
    body = json.dumps(message, separators=(",", ":"), ensure_ascii=False).encode()
    return HEADER.pack(CONTROL, 0, 0, len(body)) + body


def parse_control(payload: bytes | memoryview) -> dict[str, Any]:
    """The JSON object inside a control frame."""
    try:
        obj = loads_strict(bytes(payload).decode("utf-8"))
    except DuplicateKey:
        raise FrameError("control frame names a field twice") from None
    except ValueError:  # UnicodeDecodeError, bad JSON, a number of over 4,300 digits
        raise FrameError("control frame is not a UTF-8 JSON object") from None
    if not isinstance(obj, dict):
        raise FrameError("control frame is not a JSON object")
    return obj


# -- commands (client -> server) ----------------------------------------------


@dataclass(frozen=True, slots=True)
class SetRecvers:
    recvers: tuple[str, ...] | None  # None: broadcast


@dataclass(frozen=True, slots=True)
class Online:
    """Which of the chids this session may see are online: its recvers, or anyone for broadcast."""


@dataclass(frozen=True, slots=True)
class Ping:
    pass


@dataclass(frozen=True, slots=True)
class Subscribe:
    on: bool


@dataclass(frozen=True, slots=True)
class EndOfStream:
    """``eof``: the client has finished sending; it goes on receiving (the framed half-close)."""


@dataclass(frozen=True, slots=True)
class Close:
    reason: str | None


@dataclass(frozen=True, slots=True)
class Refuse:
    """``refuse``: a service turns a visit away; the visitor gets FAIL with ``desc`` (section 13)."""

    ticket: str
    desc: str | None


Command = SetRecvers | Online | Ping | Subscribe | EndOfStream | Close | Refuse
COMMANDS = ("recvers", "online", "ping", "subscribe", "eof", "close", "refuse")


class CommandError(Exception):
    """A known command with bad arguments: answered with ``ok: false``, the session goes on."""

    def __init__(self, desc: str, ident: int = 0) -> None:
        super().__init__(desc)
        self.desc = desc
        self.ident = ident


def parse_command(msg: dict[str, Any]) -> tuple[int, Command]:
    """``(id, command)`` from a control message; raises FrameError or CommandError (with the id)."""
    ident = msg.get("id")
    if isinstance(ident, bool) or not isinstance(ident, int) or not 0 <= ident < 2**53:
        raise FrameError('a command needs an "id": an integer from 0 to 2^53 - 1')
    cmd = msg.get("cmd")
    if not isinstance(cmd, str):
        raise FrameError('a command needs a "cmd" string')
    try:
        return ident, _command(cmd, msg)
    except CommandError as exc:
        raise CommandError(exc.desc, ident) from None


def _command(cmd: str, msg: dict[str, Any]) -> Command:
    if cmd == "recvers":
        try:
            return SetRecvers(parse_recvers(msg.get("recvers")))
        except HandshakeError as exc:
            raise CommandError(exc.desc) from None
    if cmd == "online":
        return Online()
    if cmd == "ping":
        return Ping()
    if cmd == "subscribe":
        on = msg.get("presence")
        on = True if on is None else on  # null means absent
        if not isinstance(on, bool):
            raise CommandError('"presence" must be true or false')
        return Subscribe(on)
    if cmd == "eof":
        return EndOfStream()
    if cmd == "close":
        reason = msg.get("reason")
        if reason is not None and (not isinstance(reason, str) or len(reason) > MAX_REASON):
            raise CommandError(f'"reason" must be a string of at most {MAX_REASON} characters')
        return Close(reason)
    if cmd == "refuse":
        ticket = msg.get("ticket")
        if not isinstance(ticket, str) or not ticket:
            raise CommandError('"ticket" must be the ticket of a visit event')
        desc = msg.get("desc")
        if desc is not None and (not isinstance(desc, str) or len(desc) > MAX_REASON):
            raise CommandError(f'"desc" must be a string of at most {MAX_REASON} characters')
        return Refuse(ticket, desc)
    raise FrameError(f"unknown command {quote(cmd)}; known: {', '.join(COMMANDS)}", "unknown_command")


# -- replies and events (server -> client) ---------------------------------------


def reply_ok(ident: int, **fields: Any) -> dict[str, Any]:
    return {"id": ident, "ok": True, **fields}


def reply_error(ident: int, desc: str) -> dict[str, Any]:
    return {"id": ident, "ok": False, "code": "bad_request", "desc": desc}


def presence_event(chid: str, online: bool) -> dict[str, Any]:
    return {"event": "online" if online else "offline", "chid": chid}


@functools.lru_cache(maxsize=64)
def presence_frame(chid: str, online: bool) -> bytes:
    """The event's frame, encoded once for all its subscribers (a join seen by 1,000 costs one encoding)."""
    return control_frame(presence_event(chid, online))


def eof_event(chid: str) -> dict[str, Any]:
    return {"event": "eof", "chid": chid}


def visit_event(chid: str, ticket: str) -> dict[str, Any]:
    return {"event": "visit", "chid": chid, "ticket": ticket}


def close_event(code: str, desc: str) -> dict[str, Any]:
    return {"event": "close", "code": code, "desc": desc}
