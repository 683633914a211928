"""The chid registry (routing/registry.py) against a real three-server NATS cluster."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest

from forwarding.routing.registry import NatsRegistry, Owner, RegistryConfig, Unavailable, chid_key, key_chid

from .conftest import TIMEOUT, NatsServer

LEASE = 14.0
"""Short, so that lapses happen within a test, yet longer than JetStream takes to elect a new stream
leader when a server dies (up to about 9 s): shorter leases fence every node at such an election."""


def run(main: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(main(), 10 * TIMEOUT))


def config(server: NatsServer | list[NatsServer], node: str, **overrides: object) -> RegistryConfig:
    servers = server if isinstance(server, list) else [server]
    fields: dict[str, object] = {"lease_ttl": LEASE, "renew_every": 0.5, "fence_margin": 3.0, "replicas": 3}
    fields.update(overrides)
    return RegistryConfig(tuple(s.url for s in servers), node, leg=f"127.0.0.1:{node}", **fields)  # type: ignore[arg-type]


async def until(condition: Callable[[], bool], timeout: float = TIMEOUT) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)


def test_chid_keys_round_trip_any_printable_chid() -> None:
    for chid in ("a", "office", "ünïcødé ✓", "x" * 128, "a.b>*"):
        key = chid_key(chid)
        assert key.startswith("c.") and all(c.isalnum() or c in "-_=./" for c in key)
        assert key_chid(key) == chid


def test_twenty_concurrent_claims_of_one_chid_over_three_nodes_give_exactly_one_owner(nats_cluster) -> None:
    async def main() -> None:
        nodes = [NatsRegistry(config(s, f"node{i}")) for i, s in enumerate(nats_cluster)]
        await asyncio.gather(*(n.start() for n in nodes))
        try:
            claims = [nodes[i % 3].claim("contested", f"session{i}") for i in range(20)]
            results = await asyncio.gather(*claims)
            winners = [r for r in results if r is not None]
            assert len(winners) == 1, results
            winner = winners[0]
            # Every node's replica comes to agree on the one owner.
            for n in nodes:
                await until(lambda n=n: n.owner("contested") == winner)  # type: ignore[misc]
        finally:
            await asyncio.gather(*(n.close() for n in nodes))

    run(main)


def test_a_release_frees_the_chid_everywhere_and_a_stale_release_deletes_nothing(nats_cluster) -> None:
    async def main() -> None:
        changes: list[tuple[str, Owner | None]] = []
        a = NatsRegistry(config(nats_cluster[0], "a"))
        b = NatsRegistry(config(nats_cluster[1], "b"), on_change=lambda c, o: changes.append((c, o)))
        await asyncio.gather(a.start(), b.start())
        try:
            first = await a.claim("x", "s1")
            assert first is not None
            await until(lambda: b.owner("x") == first)
            assert await b.claim("x", "s2") is None  # chid_in_use
            assert await a.release("x", first)
            await until(lambda: b.owner("x") is None)
            assert [o for c, o in changes if c == "x"] == [first, None]  # online, then offline, in order
            second = await b.claim("x", "s2")
            assert second is not None and second.revision > first.revision
            assert not await a.release("x", first)  # the old claim's revision: the new owner keeps it
            await until(lambda: a.owner("x") == second)
        finally:
            await asyncio.gather(a.close(), b.close())

    run(main)


def test_a_crashed_nodes_chids_are_free_after_its_lease_lapses_and_not_before(nats_cluster) -> None:
    async def main() -> None:
        a = NatsRegistry(config(nats_cluster[0], "a"))
        b = NatsRegistry(config(nats_cluster[1], "b"))
        await asyncio.gather(a.start(), b.start())
        try:
            assert await a.claim("held", "s1") is not None
            await until(lambda: b.owner("held") is not None and b.node("a") is not None)
            # Alive, a node renews its lease: past its TTL its chid is still held.
            lapsed: list[str] = []
            await asyncio.sleep(LEASE + 2.0)
            if b.node("a") is None:
                lapsed.append("a")
            assert not lapsed and await b.claim("held", "s2") is None and not a.fenced
            loop = asyncio.get_running_loop()
            crashed_at = loop.time()
            await a.close(release=False)  # as a crash: the lease and the claim stay behind
            assert await b.claim("held", "s2") is None  # still leased: might be alive
            await until(lambda: b.node("a") is None, timeout=LEASE + TIMEOUT)
            assert loop.time() - crashed_at >= LEASE - 1.0  # never before the lease could have lapsed
            await until(lambda: b.owner("held") is None)  # swept
            assert await b.claim("held", "s2") is not None
        finally:
            await b.close()

    run(main)


def test_a_node_cut_off_from_nats_fences_itself_and_refuses_claims(nats_cluster) -> None:
    async def main() -> None:
        fenced = asyncio.Event()
        # Only one server to reach: kill it and this node is alone.
        a = NatsRegistry(config(nats_cluster[0], "a"), on_fenced=fenced.set)
        b = NatsRegistry(config(nats_cluster[1], "b"))
        await asyncio.gather(a.start(), b.start())
        try:
            assert await a.claim("mine", "s1") is not None
            await until(lambda: b.owner("mine") is not None and b.node("a") is not None)
            loop = asyncio.get_running_loop()
            cut_at = loop.time()
            nats_cluster[0].kill()
            await asyncio.wait_for(fenced.wait(), LEASE + TIMEOUT)
            # Before its lease can lapse for the others (it was renewed at most 0.5 s before the cut).
            assert loop.time() - cut_at < LEASE
            assert a.fenced and not a.available
            with pytest.raises(Unavailable):
                await a.claim("other", "s2")
            # b's watch may have lived on the dead server: it notices after two missed
            # heartbeats (nats-py's ordered consumer), then resyncs and sweeps.
            await until(lambda: b.node("a") is None, timeout=LEASE + 3 * TIMEOUT)
            await until(lambda: b.owner("mine") is None, timeout=3 * TIMEOUT)
            assert await b.claim("mine", "s3") is not None
        finally:
            await asyncio.gather(a.close(), b.close())

    run(main)


def test_claims_go_on_when_one_of_three_nats_servers_dies(nats_cluster) -> None:
    async def main() -> None:
        a = NatsRegistry(config(nats_cluster, "a"))
        b = NatsRegistry(config(nats_cluster[1:], "b"))
        await asyncio.gather(a.start(), b.start())
        try:
            nats_cluster[0].kill()  # quorum holds with two of three
            owner = None
            for _ in range(50):  # a's connection moves to another server first
                try:
                    owner = await a.claim("survivor", "s1")
                    break
                except Unavailable:
                    await asyncio.sleep(0.2)
            assert owner is not None
            assert await b.claim("survivor", "s2") is None  # the claim holds cluster-wide at once
            # b's replica catches up once its watch has noticed the dead server: nats-py's
            # ordered consumer resets after two missed 5-s heartbeats, so this may take 10-20 s
            # (docs/operations.md says so; a faster watch is for the cluster router's work).
            await until(lambda: b.owner("survivor") == owner, timeout=3 * TIMEOUT)
            assert not a.fenced and not b.fenced
        finally:
            await asyncio.gather(a.close(), b.close())

    run(main)
