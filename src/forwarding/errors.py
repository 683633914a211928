"""Every exception the library raises, under one root.

::

    Error
    ├── HandshakeRefused             the relay answered FAIL (``code``, ``desc``)
    │   ├── ChidInUse                code "chid_in_use"
    │   ├── WrongSecret              code "bad_seal" or "challenge_mismatch"
    │   ├── RecversOffline           code "wait_timeout"
    │   ├── ConnectionRefused        code "refused" (a server limit)
    │   └── Unavailable              code "unavailable" (a cluster node without its registry: retry)
    ├── HandshakeTimeout             also a TimeoutError: no hs4 in time
    ├── ProtocolViolation            the relay said something the protocol does not allow
    ├── ConnectionClosed             the connection ended before the handshake did
    └── IntegrityError               end-to-end or file check failed (tampering, truncation)
"""

from __future__ import annotations


class Error(Exception):
    """Root of everything forwarding raises."""


class HandshakeRefused(Error):
    """The relay refused the handshake with a FAIL reply."""

    def __init__(self, desc: str, code: str = "bad_request") -> None:
        super().__init__(f"relay refused the handshake: {desc} ({code})")
        self.desc = desc
        self.code = code


class ChidInUse(HandshakeRefused):
    """The chid asked for is online."""


class WrongSecret(HandshakeRefused):
    """The relay could not open our sealed handshake: wrong or missing secret."""


class RecversOffline(HandshakeRefused):
    """``wait=True`` ran out before every receiver was online."""


class ConnectionRefused(HandshakeRefused):
    """Over one of the relay's connection limits."""


class Unavailable(HandshakeRefused):
    """A cluster node could not reach its registry: retry, a little later or on another node."""


class HandshakeTimeout(Error, TimeoutError):
    """The handshake did not complete in time."""


class ProtocolViolation(Error):
    """The relay sent something the protocol does not allow."""


class ConnectionClosed(Error):
    """The connection closed before the handshake completed."""


class CommandRejected(Error):
    """The relay answered a framed-mode command with ``ok: false``; the session goes on."""


class SessionClosed(ConnectionClosed):
    """The relay ended a framed session and said why (``code``, ``desc``)."""

    def __init__(self, code: str, desc: str) -> None:
        super().__init__(f"{desc} ({code})")
        self.code = code
        self.desc = desc


class IntegrityError(Error):
    """Data failed an end-to-end check: wrong key, tampering or truncation."""


_BY_CODE: dict[str, type[HandshakeRefused]] = {
    "chid_in_use": ChidInUse,
    "bad_seal": WrongSecret,
    "challenge_mismatch": WrongSecret,
    "wait_timeout": RecversOffline,
    "refused": ConnectionRefused,
    "unavailable": Unavailable,
}


def refused(desc: str, code: str) -> HandshakeRefused:
    """The exception for a FAIL reply with this ``code``."""
    return _BY_CODE.get(code, HandshakeRefused)(desc, code)
