"""Every server setting in one typed place, with its default and what it bounds.

The CLI flags of ``forwarding serve`` map one to one onto :class:`ServerConfig`
(docs/operations.md lists them). Worst-case memory, for the record:

* handshaking connection: ``max_line`` (64 KiB) of line buffer plus one read
  (at most 256 KiB) while it is being split;
* established session: its write buffer reaches ``write_buffer_high`` and then
  holds at most one more read (<= 256 KiB) from each sender that was still
  delivering when it crossed the mark, because those senders stop being read;
* so the server as a whole stays below ``max_connections`` x (write_buffer_high +
  256 KiB x fan-in) plus Python's per-connection overhead (a few KiB).
"""

from __future__ import annotations

import enum
import os
import re
import socket
from dataclasses import dataclass, field

from .protocol.handshake import HandshakeLimits
from .server.admission import AdmissionLimits
from .server.quotas import QuotaLimits


class Mode(enum.Enum):
    HANDSHAKE = "handshake"
    """Each client does the JSON handshake (the default)."""
    BROADCAST = "broadcast"
    """No handshake: every connection gets a generated chid and talks to all others."""


NODE_ID = re.compile(r"[-_a-zA-Z0-9]{1,64}")
"""Node ids go into registry keys, which allow few characters."""


def default_node_id() -> str:
    """The host's name and 24 random bits: unique, and readable in logs."""
    host = re.sub(r"[^-_a-zA-Z0-9]", "-", socket.gethostname())[:40] or "node"
    return f"{host}-{os.urandom(3).hex()}"


@dataclass(frozen=True, slots=True)
class ClusterSettings:
    """One node of a cluster (docs/operations.md, "A cluster"): where the registry is, where legs arrive."""

    servers: tuple[str, ...]
    """NATS URLs of the registry (JetStream)."""
    secret: str
    """Shared by every node: it seals each leg's header, so only nodes can open legs."""
    listen: tuple[str, int] = ("127.0.0.1", 0)
    """Where this node accepts legs from the other nodes."""
    advertise: str | None = None
    """``host:port`` the other nodes dial for legs; default: the bound ``listen`` address."""
    node: str = ""
    """This node's id, unique in the cluster; empty: generated at start."""
    replicas: int = 1
    """Copies of each registry bucket in NATS (3 for a 3-server NATS cluster)."""
    memory: bool = False
    """Registry buckets in memory (one host) rather than on file."""
    lease_ttl: float = 20.0
    """Seconds a node's lease lives unrenewed; a crashed node's chids are free after about this long."""
    creds: str | None = None
    """NATS credentials file (``.creds``), if the NATS servers require one."""
    tls_ca: str | None = None
    """CA bundle for ``tls://`` NATS URLs."""


@dataclass(frozen=True, slots=True)
class ServerConfig:
    hosts: tuple[str, ...] = ("0.0.0.0",)
    """Addresses to listen on; IPv4, IPv6 or names. ``::`` listens on IPv6."""
    port: int = 8601
    """TCP port; 0 picks a free one (the ready log line names it)."""
    mode: Mode = Mode.HANDSHAKE
    limits: HandshakeLimits = field(default_factory=HandshakeLimits)
    """Handshake timeout, line limit, default and maximum idle timeout."""
    write_buffer_high: int = 1024 * 1024
    """Bytes queued for one client above which its senders stop being read."""
    write_buffer_low: int = 256 * 1024
    """Bytes queued for one client below which its senders are read again."""
    slow_receiver_timeout: float = 30.0
    """Seconds a client may stay above ``write_buffer_high`` before it is disconnected."""
    frame_timeout: float = 30.0
    """Seconds a framed session may take to complete a frame it has begun; then it is closed.

    An incomplete frame holds up to ``max_frame`` bytes: it must not do so for
    the whole idle timeout."""
    close_timeout: float = 10.0
    """Seconds a closing session may take to flush what is queued for it and answer the relay's FIN.

    Then the connection is cut (RST) and what was left is counted as dropped:
    a client that stops reading cannot keep a closing session, its descriptor
    and its queue for ever."""
    half_close_timeout: float = 30.0
    """Idle timeout, in seconds, of a session whose client has sent FIN (lowered to it, never raised).

    A client that closed its socket looks like one that only shut down its
    sending side until the relay writes to it, so a half-closed session that
    goes quiet is not kept for the whole idle timeout (haproxy's
    ``timeout client-fin``)."""
    ws_port: int | None = None
    """Port of the WebSocket listener (docs/protocol.md, 14), on the same hosts; ``None``: none."""
    ws_allow_origins: tuple[str, ...] = ()
    """Browser origins besides the relay's own that may open WebSocket sessions (``*``: any)."""
    ws_ping_interval: float = 20.0
    """Seconds between the relay's pings to a WebSocket client; one unanswered by the next ends it (0: none)."""
    max_waiting_visits: int = 128
    """Most visits one service may leave unanswered at a time (docs/protocol.md, 13); more are refused.

    Each is a handshaking connection, bounded by the handshake timeout too: this
    keeps one service's queue of visit events short."""
    splice: bool = True
    """Forward one-to-one plain-TCP sessions with splice(2) where the OS has it."""
    splice_after: int = 16 * 1024
    """A one-to-one session is spliced after one read of at least this many bytes.

    A read that large means the sender is streaming, where splice saves copies
    and CPU. Small messages go faster the ordinary way: a splice round costs two
    system calls through Python and a pipe, more than one copy of a few bytes.
    """
    status_token: str | None = None
    """If set, ``/status`` and ``/api/sessions`` on the metrics listener need ``?token=`` or a Bearer header."""
    malloc_tuning: bool = True
    """Keep freed memory in glibc's heap (server/malloc.py): about 40% less CPU per GiB of TLS."""
    blur_addresses: bool = False
    """Peers appear in logs and admin output as their /24 or /48 only (the wormhole relay's ``--blur-usage``)."""
    drain_grace: float = 300.0
    """Seconds a drain (SIGUSR2, ``forwarding admin PATH drain``) lets open sessions run before it stops."""
    shutdown_grace: float = 5.0
    """Seconds SIGTERM waits for queued bytes to drain before cutting connections."""
    admission: AdmissionLimits = field(default_factory=AdmissionLimits)
    """Connection caps and the per-address handshake rate."""
    quotas: QuotaLimits = field(default_factory=QuotaLimits)
    """Bandwidth caps and byte quotas on what clients send (server/quotas.py); none by default."""
    secret: str | None = None
    """Server secret: every handshake line is sealed with a key derived from it."""
    tls_cert: str | None = None
    """PEM certificate chain; with ``tls_key``, the listener speaks TLS 1.2 or newer."""
    tls_key: str | None = None
    tls_client_ca: str | None = None
    """PEM CA bundle; clients must present a certificate it signed."""
    admin_socket: str | None = None
    """Unix socket for ``forwarding admin``: list sessions, close one, reload."""
    metrics: tuple[str, int] | None = None
    """Where to serve Prometheus metrics (``GET /metrics``)."""
    cluster: ClusterSettings | None = None
    """Be one node of a cluster; ``None``: a relay on its own."""
    reuse_port: bool = False
    """Bind the client listeners with ``SO_REUSEPORT``: several processes share one port (``--workers``)."""
    workers: int = 1
    """Processes on one port, acting as a cluster of that many nodes (``serve --workers``)."""
    handoff: bool = True
    """``--workers``: hand a connection to the worker that holds its one receiver (server/handoff.py)."""
