"""Prometheus metrics: ``forwarding serve --metrics HOST:PORT`` serves ``GET /metrics``.

Nothing is counted on the forwarding path for this: a collector reads the
relay's own totals and live sessions when Prometheus scrapes, on the event
loop, so no lock and no thread are needed. The HTTP side is deliberately tiny
(one GET, one response, close), served by the loop too.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import urllib.parse
from collections.abc import Iterator
from typing import TYPE_CHECKING, cast

from prometheus_client import CollectorRegistry, ProcessCollector, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric, SummaryMetricFamily
from prometheus_client.registry import Collector

from . import status
from .legs import LegOut
from .outcome import Outcome

if TYPE_CHECKING:
    from ..routing.cluster import ClusterRouter
    from .relay import Relay

log = logging.getLogger("forwarding.metrics")
MAX_REQUEST = 8192
MAX_CONNECTIONS = 32
"""Metrics connections open at once; more get 503 and are closed (they share the relay's descriptors)."""
REQUEST_TIMEOUT = 10.0
"""Seconds a metrics connection has to send its request; then it is closed."""
CONTENT_TYPE = b"text/plain; version=0.0.4; charset=utf-8"
# The status page is one file: its own script and style, and requests to this listener only.
PAGE_HEADERS = (
    b"Content-Security-Policy: default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
    b"connect-src 'self'\r\nX-Content-Type-Options: nosniff\r\nCache-Control: no-cache\r\n"
)


class RelayCollector(Collector):
    def __init__(self, relay: Relay) -> None:
        self._relay = relay

    def collect(self) -> Iterator[Metric]:
        relay = self._relay
        stats = relay.stats
        # One pass, no list of sessions: a scrape costs the same few bytes at
        # 100 sessions or 100,000. Nothing else runs meanwhile (this is the loop).
        connections = raw = framed = spliced = 0
        bytes_in, bytes_out, dropped = stats.bytes_in, stats.bytes_out, stats.bytes_dropped
        discarded = stats.bytes_discarded
        for s in relay.sessions:
            connections += 1
            bytes_in += s.bytes_in
            bytes_out += s.bytes_out
            dropped += s.dropped
            discarded += s.discarded
            if s.established:
                if s.framed:
                    framed += 1
                else:
                    raw += 1
                if s.pump is not None:
                    spliced += 1
        yield GaugeMetricFamily("forwarding_connections", "Open client connections, handshaking or not.", connections)
        yield GaugeMetricFamily(
            "forwarding_draining", "1 while the relay drains (accepts nothing new), else 0.", int(relay.draining)
        )
        sessions = GaugeMetricFamily("forwarding_sessions", "Established sessions, by mode.", labels=["mode"])
        sessions.add_metric(["raw"], raw)
        sessions.add_metric(["framed"], framed)
        yield sessions
        yield GaugeMetricFamily(
            "forwarding_spliced_sessions", "Sessions whose bytes the kernel moves (splice(2) pumps).", spliced
        )
        yield CounterMetricFamily("forwarding_connections_accepted", "Connections accepted.", stats.connections)
        closed = CounterMetricFamily("forwarding_sessions_closed", "Connections closed, by reason.", labels=["reason"])
        for outcome in Outcome:
            closed.add_metric([outcome.value], stats.outcomes.get(outcome, 0))
        yield closed
        # Totals of closed sessions plus what live ones have moved so far.
        yield CounterMetricFamily("forwarding_received_bytes", "Bytes read from clients after the handshake.", bytes_in)
        yield CounterMetricFamily("forwarding_sent_bytes", "Bytes queued for clients after the handshake.", bytes_out)
        yield CounterMetricFamily(
            "forwarding_dropped_bytes", "Bytes not delivered (receiver offline, its input ended, or cut off).", dropped
        )
        quotas = relay.quotas
        yield CounterMetricFamily(
            "forwarding_rate_limit_holds", "Times a rate cap paused reading a client.", quotas.holds
        )
        yield CounterMetricFamily(
            "forwarding_rate_limit_held_seconds",
            "Seconds of pauses rate caps imposed, all clients.",
            quotas.held_seconds,
        )
        refused = CounterMetricFamily(
            "forwarding_quota_refusals", "Handshakes refused: chid or address quota spent.", labels=["scope"]
        )
        cut = CounterMetricFamily("forwarding_quota_cuts", "Sessions ended mid-stream by a quota.", labels=["scope"])
        for scope in ("chid", "ip"):
            refused.add_metric([scope], quotas.refused[scope])
            cut.add_metric([scope], quotas.cut[scope])
        yield refused
        yield cut
        yield GaugeMetricFamily(
            "forwarding_quota_tracked", "Chids, addresses and address buckets the quota ledger holds.", quotas.tracked()
        )
        yield CounterMetricFamily(
            "forwarding_quota_forgotten",
            "Idle ledger entries forgotten to stay within --quota-max-tracked (their use forgiven).",
            quotas.chids.forgotten + quotas.ips.forgotten,
        )
        yield CounterMetricFamily(
            "forwarding_discarded_bytes",
            "Bytes clients sent that were read and discarded: after the close began, or past a quota.",
            discarded,
        )
        if self._relay.cluster is not None:
            yield from self._cluster(self._relay.cluster)

    def _cluster(self, cluster: ClusterRouter) -> Iterator[Metric]:
        info = GaugeMetricFamily("forwarding_cluster_node", "This relay's node id in its cluster.", labels=["node"])
        info.add_metric([cluster.node], 1)
        yield info
        yield GaugeMetricFamily(
            "forwarding_cluster_available",
            "1 while the registry is reachable and this node holds its lease; 0: new handshakes get unavailable.",
            1 if cluster.registry.available else 0,
        )
        yield GaugeMetricFamily(
            "forwarding_cluster_remote_sessions", "Sessions of other nodes, as this node's replica knows them.",
            len(cluster.remote_sessions),
        )  # fmt: skip
        legs = GaugeMetricFamily("forwarding_legs_open", "Node-to-node legs, by direction.", labels=["direction"])
        outgoing = sum(1 for leg in self._relay.legs if isinstance(leg, LegOut))
        legs.add_metric(["out"], outgoing)
        legs.add_metric(["in"], len(self._relay.legs) - outgoing)
        yield legs
        failures = CounterMetricFamily(
            "forwarding_leg_failures", "Legs that broke (their sessions closed with link_lost), by reason.",
            labels=["reason"],
        )  # fmt: skip
        for reason, n in sorted(cluster.leg_failures.items()):
            failures.add_metric([reason], n)
        yield failures
        yield SummaryMetricFamily(
            "forwarding_registry_claim_seconds", "Time the registry took to answer hs3's claims.",
            count_value=cluster.claims, sum_value=cluster.claim_seconds,
        )  # fmt: skip
        handoff = self._relay.handoff
        if handoff is not None:
            moved = CounterMetricFamily(
                "forwarding_handoffs", "Connections handed at hs3 to the worker of their receiver, by direction.",
                labels=["direction"],
            )  # fmt: skip
            moved.add_metric(["out"], handoff.sent)
            moved.add_metric(["in"], handoff.adopted)
            yield moved
            failed = CounterMetricFamily(
                "forwarding_handoff_failures",
                "Hand-offs not made (the connection stayed: a leg carries its pair) or not taken, by reason.",
                labels=["reason"],
            )
            for reason, n in sorted(handoff.failures.items()):
                failed.add_metric([reason], n)
            yield failed


async def start(relay: Relay, host: str, port: int) -> asyncio.AbstractServer:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(RelayCollector(relay))
    # process_open_fds / process_max_fds (the descriptor limit docs/operations.md warns of),
    # process_resident_memory_bytes, process_cpu_seconds_total: read from /proc at each scrape.
    ProcessCollector(registry=registry)
    open_now: set[MetricsProtocol] = set()
    server = await relay.loop.create_server(lambda: MetricsProtocol(registry, open_now, relay), host, port)
    bound = server.sockets[0].getsockname()
    address = f"[{bound[0]}]:{bound[1]}" if ":" in bound[0] else f"{bound[0]}:{bound[1]}"
    log.info("metrics", extra={"fields": {"address": address}})
    return server


class MetricsProtocol(asyncio.Protocol):
    """``GET /metrics`` (the exposition text), ``/status`` and ``/api/sessions`` (server/status.py); then close."""

    def __init__(self, registry: CollectorRegistry, open_now: set[MetricsProtocol], relay: Relay) -> None:
        self._relay = relay
        self._registry = registry
        self._open = open_now
        self._buf = b""
        self._transport: asyncio.Transport | None = None
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)
        if len(self._open) >= MAX_CONNECTIONS:
            self._respond(b"503 Service Unavailable", b"text/plain", b"too many metrics connections\n")
            return
        self._open.add(self)
        self._timer = asyncio.get_running_loop().call_later(REQUEST_TIMEOUT, self._transport.abort)

    def connection_lost(self, exc: Exception | None) -> None:
        self._open.discard(self)
        if self._timer is not None:
            self._timer.cancel()

    def data_received(self, data: bytes) -> None:
        assert self._transport is not None
        if self._transport.is_closing():
            return
        self._buf += data
        if b"\r\n\r\n" not in self._buf and b"\n\n" not in self._buf:
            if len(self._buf) > MAX_REQUEST:
                self._respond(b"431 Request Header Fields Too Large", b"text/plain", b"request too large\n")
            return
        head = self._buf.split(b"\r\n\r\n", 1)[0].split(b"\n\n", 1)[0]
        request_line = head.split(b"\n", 1)[0].split()
        if len(request_line) < 2 or request_line[0] != b"GET":
            self._respond(b"405 Method Not Allowed", b"text/plain", b"GET only\n")
            return
        path, _, query = request_line[1].partition(b"?")
        if path == b"/metrics":
            self._respond(b"200 OK", CONTENT_TYPE, generate_latest(self._registry))
        elif path in (b"/status", b"/api/sessions"):
            if not self._authorised(head, query):
                self._respond(b"401 Unauthorized", b"text/plain", b"this relay wants its --status-token: ?token=...\n")
            elif path == b"/status":
                self._respond(b"200 OK", b"text/html; charset=utf-8", status.page(), PAGE_HEADERS)
            else:
                self._respond(b"200 OK", b"application/json", status.api_body(self._relay))
        else:
            self._respond(b"404 Not Found", b"text/plain", b"try GET /metrics, /status or /api/sessions\n")

    def _authorised(self, head: bytes, query: bytes) -> bool:
        token = self._relay.config.status_token
        if not token:
            return True
        given = [v for k, _, v in (p.partition(b"=") for p in query.split(b"&")) if k == b"token"]
        given += [line.split(b":", 1)[1].strip()[7:] for line in head.split(b"\n")[1:]
                  if line.lower().startswith(b"authorization:") and b"bearer " in line.lower()]  # fmt: skip
        want = token.encode()
        return any(hmac.compare_digest(urllib.parse.unquote_to_bytes(g.strip()), want) for g in given)

    def _respond(self, code: bytes, content_type: bytes, body: bytes, extra: bytes = b"") -> None:
        assert self._transport is not None
        head = b"HTTP/1.1 %s\r\nContent-Type: %s\r\nContent-Length: %d\r\n%sConnection: close\r\n\r\n" % (
            code,
            content_type,
            len(body),
            extra,
        )
        self._transport.write(head + body)
        self._transport.close()
