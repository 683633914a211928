"""How a session ended: one named outcome per session, the close reason in logs and metrics."""

from __future__ import annotations

import enum


class Outcome(enum.Enum):
    CLIENT_CLOSED = "client_closed"
    """The client closed its side (EOF or FIN) after a successful handshake."""
    RESET = "reset"
    """The connection failed: reset by the peer, or a socket error."""
    HANDSHAKE_FAILED = "handshake_failed"
    """The client broke a handshake rule; it got a FAIL reply."""
    HANDSHAKE_TIMEOUT = "handshake_timeout"
    """The handshake did not finish within --handshake-timeout."""
    HANDSHAKE_ABANDONED = "handshake_abandoned"
    """The client closed before the handshake finished."""
    CHID_IN_USE = "chid_in_use"
    """The chid asked for was online; the client got a FAIL reply."""
    WAIT_TIMEOUT = "wait_timeout"
    """hs3 asked to wait for receivers that did not come online in time."""
    IDLE_TIMEOUT = "idle_timeout"
    """No bytes in either direction for the session's idle timeout."""
    SLOW_RECEIVER = "slow_receiver"
    """The client did not read for --slow-receiver-timeout while data was queued for it."""
    REFUSED = "refused"
    """Over a connection limit or the handshake rate; the client got a FAIL (handshake mode)."""
    TLS_FAILED = "tls_failed"
    """The TLS handshake failed (no or bad client certificate, wrong protocol)."""
    PEER_LEFT = "peer_left"
    """hs3 asked to hang up with its receivers, and one of them went offline."""
    FRAME_ERROR = "frame_error"
    """A framed session sent a malformed frame, a frame over the limit or an unknown command."""
    ADMIN_CLOSED = "admin_closed"
    """An operator closed the session (``forwarding admin close``)."""
    SHUTDOWN = "shutdown"
    """The server was stopping."""
