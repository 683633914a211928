"""The client side of the handshake, I/O-free: build request lines, judge reply lines.

Both the asyncio and the blocking client drive this; docs/protocol.md is the contract.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from ..errors import ProtocolViolation, refused
from .messages import encode
from .sealing import Sealer, SealError


@dataclass(frozen=True, slots=True)
class Established:
    """What hs4 said."""

    chid: str
    timeout: float | None
    online: list[str] | None = field(default=None)
    max_frame: int | None = None
    """Framed mode: the largest frame payload the relay accepts."""
    peer: str | None = None
    """A visit (docs/protocol.md, 13): the chid of the other end, now this session's only recver."""


class ClientHandshake:
    def __init__(
        self,
        chid: str | None = None,
        recvers: list[str] | None = None,
        timeout: float | None = None,
        wait: bool = False,
        sealer: Sealer | None = None,
        hangup: bool = False,
        framed: bool = False,
        service: bool = False,
        accept: str | None = None,
    ) -> None:
        self.service = service
        self.accept = accept
        self.hangup = hangup
        self.framed = framed
        self.chid = chid
        self.recvers = recvers
        self.timeout = timeout
        self.wait = wait
        self._sealer = sealer
        self._challenge: str | None = None

    @property
    def can_pipeline(self) -> bool:
        """hs3 may follow hs1 at once unless it must echo hs2's challenge (a secret is set)."""
        return self._sealer is None

    def hs1(self) -> bytes:
        msg: dict[str, Any] = {"req": "hs1"}
        if self.chid:
            msg["chid"] = self.chid
        return self._line(msg, "hs1")

    def receive_hs2(self, line: bytes) -> str:
        reply = self._reply(line, "hs2")
        chid = reply.get("chid")
        if not isinstance(chid, str) or not chid:
            raise ProtocolViolation(f"hs2 without a chid: {reply}")
        challenge = reply.get("challenge")
        if self._sealer is not None and not isinstance(challenge, str):
            raise ProtocolViolation("sealed hs2 without a challenge")
        self.chid = chid
        self._challenge = challenge if isinstance(challenge, str) else None
        return chid

    def hs3(self) -> bytes:
        msg: dict[str, Any] = {"req": "hs3"}
        if self.recvers is not None:
            msg["recvers"] = list(self.recvers)
        if self.timeout is not None:
            msg["timeout"] = self.timeout
        if self.wait:
            msg["wait"] = True
        if self.hangup:
            msg["hangup"] = True
        if self.framed:
            msg["mode"] = "framed"
        if self.service:
            msg["service"] = True
        if self.accept is not None:
            msg["accept"] = self.accept
        if self._challenge is not None:
            msg["challenge"] = self._challenge
        return self._line(msg, "hs3")

    def receive_hs4(self, line: bytes) -> Established:
        reply = self._reply(line, "hs4")
        if reply.get("result") != "OK":
            raise ProtocolViolation(f"hs4 result is {reply.get('result')!r}")
        online = reply.get("online")
        timeout = reply.get("timeout")
        max_frame = reply.get("max_frame")
        peer = reply.get("peer")
        if self.framed and (reply.get("mode") != "framed" or not isinstance(max_frame, int)):
            raise ProtocolViolation("the relay did not accept framed mode (is it an older server?)")
        return Established(
            chid=str(reply.get("chid", self.chid)),
            timeout=float(timeout) if isinstance(timeout, int | float) else None,
            online=[str(c) for c in online] if isinstance(online, list) else None,
            max_frame=max_frame if isinstance(max_frame, int) else None,
            peer=peer if isinstance(peer, str) else None,
        )

    def _line(self, msg: dict[str, Any], step: str) -> bytes:
        line = encode(msg)
        return self._sealer.seal(line[:-1], step) if self._sealer is not None else line

    def _reply(self, line: bytes, step: str) -> dict[str, Any]:
        line = line.rstrip(b"\r\n")
        if line.startswith(b"{"):  # plain JSON: always so without a secret, and for early FAILs
            payload = line
        elif self._sealer is not None:
            try:
                payload = self._sealer.open(line, step)
            except SealError:
                try:  # a FAIL is sealed as hs4 whatever step we were at
                    payload = self._sealer.open(line, "hs4")
                except SealError as exc:
                    raise ProtocolViolation(f"cannot open the relay's {step}: {exc.desc}") from None
        else:
            raise ProtocolViolation("the relay sealed its reply: it needs a secret (--secret)")
        try:
            reply = json.loads(payload)
        except ValueError:
            raise ProtocolViolation(f"the relay's {step} is not JSON: {payload[:80]!r}") from None
        if not isinstance(reply, dict):
            raise ProtocolViolation(f"the relay's {step} is not a JSON object")
        if reply.get("result") == "FAIL":
            raise refused(str(reply.get("desc", "")), str(reply.get("code", "bad_request")))
        if reply.get("rsp") != step:
            raise ProtocolViolation(f"expected {step}, got {reply.get('rsp')!r}")
        return reply
