"""forwarding: a TCP relay. Clients join with a chid, name their receivers, and talk through it.

The client library::

    import forwarding

    async with forwarding.connect("relay.example:8601", chid="a", recvers=["b"], wait=True) as ch:
        await ch.send(b"hello")
        async for chunk in ch:
            ...

``forwarding.sync.connect`` is the blocking twin. Errors derive from :class:`forwarding.Error`.
"""

from . import sync
from .client.connection import Channel, connect
from .client.framed import FramedChannel, Presence, Visit, connect_framed
from .errors import (
    ChidInUse,
    CommandRejected,
    ConnectionClosed,
    ConnectionRefused,
    Error,
    HandshakeRefused,
    HandshakeTimeout,
    IntegrityError,
    ProtocolViolation,
    RecversOffline,
    SessionClosed,
    Unavailable,
    WrongSecret,
)

__version__ = "0.1.0"

__all__ = [
    "Channel",
    "ChidInUse",
    "CommandRejected",
    "ConnectionClosed",
    "ConnectionRefused",
    "Error",
    "FramedChannel",
    "HandshakeRefused",
    "HandshakeTimeout",
    "IntegrityError",
    "Presence",
    "ProtocolViolation",
    "RecversOffline",
    "SessionClosed",
    "Unavailable",
    "Visit",
    "WrongSecret",
    "connect",
    "connect_framed",
    "sync",
]
