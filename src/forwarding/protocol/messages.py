"""Handshake messages: parsing requests, building replies.

docs/protocol.md, "Handshake", is the contract. Every check raises
:class:`HandshakeError` with a ``desc`` that says what was wrong and what was
expected; that text goes to the client in the ``FAIL`` reply as it is.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from json.encoder import c_make_encoder, encode_basestring  # type: ignore[attr-defined]
from typing import Any

from .chid import chid_problem


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        # Parsers disagree on which duplicate wins; a message that means two
        # things to two programs is refused (docs/protocol.md, section 2).
        raise DuplicateKey
    return obj


class DuplicateKey(ValueError):
    """A JSON object names one key twice."""


def loads_strict(text: str) -> Any:
    """``json.loads`` that refuses duplicate keys; raises ``ValueError`` (and only that) on bad input.

    Numbers too long for Python's int conversion (over 4,300 digits) are a
    ValueError too; ``RecursionError`` from deep nesting is turned into one.
    """
    try:
        return json.loads(text, object_pairs_hook=_object)
    except RecursionError:
        raise ValueError("nested too deeply") from None


_DECODER = json.JSONDecoder(object_pairs_hook=_object)
_JSON_WHITESPACE = " \t\n\r"

MAX_TICKET = 128
"""Longest ``accept`` ticket a client may send; the server's are 22 characters."""

MAX_RECVERS = 1024
"""Most chids one hs3 may name. Bounds the work and memory of one session's routing."""


class HandshakeError(Exception):
    """The peer broke a handshake rule; ``desc`` and ``code`` go into the FAIL reply."""

    def __init__(self, desc: str, code: str = "bad_request") -> None:
        super().__init__(desc)
        self.desc = desc
        self.code = code


FAIL_CODES = (
    "bad_request",  # malformed, invalid or out-of-order message, or a line over the limit
    "bad_seal",  # not sealed, wrong secret, tampered, or sealed for another step
    "challenge_mismatch",  # hs3 did not echo hs2's challenge
    "chid_in_use",  # the chid is online
    "handshake_timeout",  # the handshake took too long
    "wait_timeout",  # "wait" ran out before every recver was online
    "refused",  # over a connection limit or the handshake rate
)
"""Machine-readable reasons in a FAIL reply's ``code`` field (docs/protocol.md, section 8)."""


@dataclass(frozen=True, slots=True)
class Hs1:
    """``{"req":"hs1","chid"?}``: the client asks for a chid, its own or a generated one."""

    chid: str | None
    """The chid asked for; ``None`` when absent or ``""`` (generate one)."""


@dataclass(frozen=True, slots=True)
class Hs3:
    """``{"req":"hs3","recvers"?,"timeout"?,"wait"?}``: the client says where its bytes go."""

    recvers: tuple[str, ...] | None
    """Receivers, duplicates removed, in order; ``None`` means broadcast to all others."""
    timeout: float | None
    """Idle timeout asked for, in seconds; ``None`` means the server's default."""
    wait: bool
    """Hold hs4 until every named receiver is online."""
    challenge: str | None = None
    """The challenge from hs2, echoed back (encrypted handshake only)."""
    hangup: bool = False
    """Close this session as soon as one of its named receivers goes offline."""
    framed: bool = False
    """``"mode": "framed"``: after hs4 both directions are frames (docs/protocol.md, section 12)."""
    service: bool = False
    """This session offers a service under its chid: sessions that name it become visits (section 13)."""
    accept: str | None = None
    """A ticket from a ``visit`` event: this session answers that visit (section 13)."""


Request = Hs1 | Hs3


def parse_request(line: bytes) -> Request:
    """Parse one handshake line (without its ``\\n``) into a request.

    Unknown fields are ignored, so that later versions may add optional ones.
    """
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError:
        raise HandshakeError("handshake line is not valid UTF-8") from None
    text = text.strip(_JSON_WHITESPACE)
    try:
        # raw_decode skips json.loads' wrappers (one line, one small object, per step);
        # it stops after the value, so whatever follows it makes the line invalid.
        obj, end = _DECODER.raw_decode(text)
    except DuplicateKey:
        raise HandshakeError("handshake line names a field twice") from None
    except (ValueError, RecursionError):  # ValueError: also a number of over 4,300 digits
        raise HandshakeError("handshake line is not valid JSON") from None
    if end != len(text):
        raise HandshakeError("handshake line is not valid JSON")
    if not isinstance(obj, dict):
        raise HandshakeError("handshake line must be a JSON object")
    req = obj.get("req")
    if req == "hs1":
        return _parse_hs1(obj)
    if req == "hs3":
        return _parse_hs3(obj)
    if req is None:
        raise HandshakeError('handshake message has no "req" field')
    if isinstance(req, str):
        raise HandshakeError(f'unknown req {quote(req)}, expected "hs1" or "hs3"')
    raise HandshakeError('"req" must be a string')


def _parse_hs1(obj: dict[str, Any]) -> Hs1:
    chid = obj.get("chid")
    if chid is None or chid == "":
        return Hs1(chid=None)
    if not isinstance(chid, str):
        raise HandshakeError('"chid" must be a string')
    problem = chid_problem(chid)
    if problem is not None:
        raise HandshakeError(problem)
    return Hs1(chid=chid)


def parse_recvers(recvers: object) -> tuple[str, ...] | None:
    """A ``recvers`` value: chids, duplicates removed, in order; ``None`` for broadcast."""
    if recvers is None:
        return None
    if not isinstance(recvers, list):
        raise HandshakeError('"recvers" must be a list of chids')
    if len(recvers) > MAX_RECVERS:
        raise HandshakeError(f'"recvers" names {len(recvers)} chids, the limit is {MAX_RECVERS}')
    for r in recvers:
        if not isinstance(r, str):
            raise HandshakeError('"recvers" must be a list of strings')
        problem = chid_problem(r)
        if problem is not None:
            raise HandshakeError(f"in recvers: {problem}")
    # An empty list means broadcast, as an absent one does (the seed's rule).
    return tuple(dict.fromkeys(recvers)) or None


def _parse_hs3(obj: dict[str, Any]) -> Hs3:
    names = parse_recvers(obj.get("recvers"))
    timeout = obj.get("timeout")
    if timeout is not None:
        if isinstance(timeout, bool) or not isinstance(timeout, int | float):
            raise HandshakeError('"timeout" must be a number of seconds')
        if timeout <= 0:
            raise HandshakeError('"timeout" must be a positive number of seconds')
        try:
            timeout = float(timeout)  # an integer too large for a float: OverflowError
        except OverflowError:
            timeout = math.inf
        if not math.isfinite(timeout):
            raise HandshakeError('"timeout" must be a positive, finite number of seconds')
    # null means absent, for every optional field (docs/protocol.md, section 3).
    wait = _default(obj.get("wait"), False)
    if not isinstance(wait, bool):
        raise HandshakeError('"wait" must be true or false')
    hangup = _default(obj.get("hangup"), False)
    if not isinstance(hangup, bool):
        raise HandshakeError('"hangup" must be true or false')
    challenge = obj.get("challenge")
    if challenge is not None and not isinstance(challenge, str):
        raise HandshakeError('"challenge" must be a string')
    mode = _default(obj.get("mode"), "raw")
    if mode not in ("raw", "framed"):
        raise HandshakeError('"mode" must be "raw" or "framed"')
    service = _default(obj.get("service"), False)
    if not isinstance(service, bool):
        raise HandshakeError('"service" must be true or false')
    if service and (mode != "framed" or names is not None):
        raise HandshakeError('a service session needs "mode": "framed" and no "recvers": it sends no data')
    accept = obj.get("accept")
    if accept is not None:
        if not isinstance(accept, str) or not accept or len(accept) > MAX_TICKET:
            raise HandshakeError(
                f'"accept" must be a ticket from a visit event (a string of 1 to {MAX_TICKET} characters)'
            )
        if names is not None or wait or service:
            raise HandshakeError('"accept" answers a visit: it goes without "recvers", "wait" and "service"')
    return Hs3(
        recvers=names,
        timeout=timeout,
        wait=wait,
        challenge=challenge,
        hangup=hangup,
        framed=mode == "framed",
        service=service,
        accept=accept,
    )


def _default(value: object, default: object) -> object:
    return default if value is None else value


def own_chid_desc(chid: str) -> str:
    return f'"recvers" names this session\'s own chid {quote(chid)}: a client never receives its own data'


def quote(text: str, limit: int = 32) -> str:
    """Quote peer-supplied text for a desc or log line, cut short and escaped."""
    short = text if len(text) <= limit else text[:limit] + "..."
    return json.dumps(short)


def encode(obj: dict[str, Any]) -> bytes:
    """One reply line: compact JSON, UTF-8, terminated by ``\\n``."""
    return "".join(_iterencode(obj, 0)).encode() + b"\n"


# Every handshake encodes two replies, and json.dumps builds a new encoder for
# each: about half the cost of a small reply. So build the encoder json.dumps
# would build (CPython's C one, with the same arguments) once; where the C
# encoder is missing, keep one Python encoder.
_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, check_circular=False)


def _python_iterencode(obj: dict[str, Any], _level: int) -> Iterable[str]:
    return _ENCODER.iterencode(obj)


_iterencode: Callable[[dict[str, Any], int], Iterable[str]] = _python_iterencode
if c_make_encoder is not None:
    _iterencode = c_make_encoder(None, _ENCODER.default, encode_basestring, None, ":", ",", False, False, True)


def hs2(chid: str, challenge: str | None = None) -> dict[str, Any]:
    reply: dict[str, Any] = {"rsp": "hs2", "chid": chid}
    if challenge is not None:
        reply["challenge"] = challenge
    return reply


def hs4_ok(
    chid: str, timeout: float, online: list[str] | None, max_frame: int | None = None, peer: str | None = None
) -> dict[str, Any]:
    reply: dict[str, Any] = {"rsp": "hs4", "result": "OK", "chid": chid, "timeout": _number(timeout)}
    if online is not None:
        reply["online"] = online
    if peer is not None:  # a visit (section 13): the other end of it
        reply["peer"] = peer
    if max_frame is not None:  # framed mode
        reply["mode"] = "framed"
        reply["max_frame"] = max_frame
    return reply


def hs4_fail(desc: str, code: str = "bad_request") -> dict[str, Any]:
    return {"rsp": "hs4", "result": "FAIL", "code": code, "desc": desc}


def _number(value: float) -> float | int:
    """Write whole seconds as integers, so old clients that expect ints are not surprised."""
    return int(value) if float(value).is_integer() else value
