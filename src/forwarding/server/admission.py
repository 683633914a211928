"""Who may connect: connection caps and a per-address handshake rate.

Pure bookkeeping with time passed in, so the rules are unit-tested without
sockets. The session asks :meth:`Admission.admit` on connect and calls
:meth:`Admission.release` on close.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .hostcounts import HostCounts


@dataclass(frozen=True, slots=True)
class AdmissionLimits:
    max_connections: int = 100_000
    """Open connections in all, handshaking or established."""
    max_connections_per_ip: int = 1_000
    """Open connections from one source address."""
    handshake_rate: float = 100.0
    """New connections per second allowed from one source address, on average."""
    handshake_burst: int = 1_000
    """New connections one source address may open at once before the rate applies."""


class _Bucket:
    __slots__ = ("open", "stamp", "tokens", "cells")

    def __init__(self, tokens: float, stamp: float) -> None:
        self.tokens = tokens
        self.stamp = stamp
        self.open = 0
        self.cells: tuple[int, int] | None = None  # in the host's table, once known


PRUNE_AT = 10_000
"""Tracked addresses above which idle, refilled entries are forgotten: bounds memory under a flood.

A prune walks the whole table, so the next one waits until the table has
doubled: its cost is spread over as many new addresses as it walked (amortised
O(1) per connection), and the table stays within twice the addresses that hold
connections or tokens, or twice ``PRUNE_AT``."""


class Admission:
    def __init__(self, limits: AdmissionLimits, host: HostCounts | None = None) -> None:
        """``host``: ``serve --workers``, where the per-address cap counts every worker's connections."""
        self.limits = limits
        self.host = host
        self.open = 0
        self._by_ip: dict[str, _Bucket] = {}
        self._prune_at = PRUNE_AT
        self.prunes = 0

    def admit(self, ip: str, now: float) -> str | None:
        """Count a new connection from ``ip``; return why it is refused, or ``None`` to admit it.

        IPv6 addresses count per /64, the block one host or site usually holds.
        """
        lim = self.limits
        ip = source_key(ip)
        if self.open >= lim.max_connections:
            return f"server is at its limit of {lim.max_connections} connections"
        bucket = self._by_ip.get(ip)
        if bucket is None:
            if len(self._by_ip) >= self._prune_at:
                self._prune(now)
                self._prune_at = max(PRUNE_AT, 2 * len(self._by_ip))
            bucket = self._by_ip[ip] = _Bucket(float(lim.handshake_burst), now)
        else:
            bucket.tokens = min(float(lim.handshake_burst), bucket.tokens + (now - bucket.stamp) * lim.handshake_rate)
            bucket.stamp = now
        host = self.host
        if bucket.open >= lim.max_connections_per_ip or (
            host is not None and host.count(self._cells(bucket, ip, host)) >= lim.max_connections_per_ip
        ):
            return f"too many connections from {ip} (limit {lim.max_connections_per_ip})"
        if bucket.tokens < 1.0:
            return f"too many new connections from {ip} (limit {lim.handshake_rate:g} per second)"
        bucket.tokens -= 1.0
        self._count(bucket, 1)
        return None

    def _cells(self, bucket: _Bucket, ip: str, host: HostCounts) -> tuple[int, int]:
        if bucket.cells is None:
            bucket.cells = host.cells(ip)
        return bucket.cells

    def _count(self, bucket: _Bucket, step: int) -> None:
        bucket.open += step
        self.open += step
        if self.host is not None and bucket.cells is not None:
            self.host.add(bucket.cells, step)

    def adopt(self, ip: str) -> str | None:
        """Count a connection another worker admitted and handed over (server/handoff.py).

        Its rate and its address's cap were checked there; only this process's
        cap applies here, the one that keeps it within its descriptors. In the
        host's table it counts on this worker's row from now on.
        """
        lim = self.limits
        if self.open >= lim.max_connections:
            return f"server is at its limit of {lim.max_connections} connections"
        ip = source_key(ip)
        bucket = self._by_ip.get(ip)
        if bucket is None:
            bucket = self._by_ip[ip] = _Bucket(float(lim.handshake_burst), 0.0)
        if self.host is not None:
            self._cells(bucket, ip, self.host)  # counted for the host here now: its first worker lets go of it
        self._count(bucket, 1)
        return None

    def release(self, ip: str) -> None:
        """An admitted connection from ``ip`` closed."""
        bucket = self._by_ip.get(source_key(ip))
        if bucket is not None:
            self._count(bucket, -1)
        else:
            self.open -= 1

    def tracked(self) -> int:
        return len(self._by_ip)

    def _prune(self, now: float) -> None:
        self.prunes += 1
        lim = self.limits
        full = float(lim.handshake_burst)
        for ip, b in list(self._by_ip.items()):
            if b.open == 0 and b.tokens + (now - b.stamp) * lim.handshake_rate >= full:
                del self._by_ip[ip]


def source_key(ip: str) -> str:
    """The unit limits count by: the address for IPv4, its /64 for IPv6."""
    if ":" not in ip:
        return ip
    try:
        return str(ipaddress.IPv6Network(f"{ip.split('%')[0]}/64", strict=False))
    except ValueError:
        return ip
