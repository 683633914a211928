"""One fault at a time, mid-stream, in a real three-node cluster (../shared/design/cluster.md, 8).

What each asserts: the receiver got a prefix of what was sent, never reordered
or duplicated; every session whose stream has a gap is closed with
``link_lost`` within a bound; sent = received + counted dropped + at most what
the kernel buffers on the path can hold; the sessions between unaffected
nodes lose nothing.
"""

from __future__ import annotations

import contextlib
import re
import signal
import socket
import struct
import time
from collections.abc import Callable

import pytest

from forwarding.server.legs import CONNECT_TIMEOUT

from ..integration.conftest import TIMEOUT, Client, ServerProcess, handshake
from ..integration.test_framed import Framed
from .conftest import free_port
from .faults import EndWatcher, LegProxy, Receiver, Streamer, closed_fields, kernel_buffer_bound
from .test_nodes import online_everywhere, pair

FAST = ("--slow-receiver-timeout", "2", "--lease-ttl", "4")
DETECT = 8 + 2 + 1 + 3
"""Keepalive (5 s idle + 3 x 1 s), the slow-receiver timeout, a second, and slack for a busy 2-core CI machine."""


def claim_result(node: ServerProcess, chid: str) -> str:
    c = Client(node.address)
    c.send_json({"req": "hs1", "chid": chid})
    reply = c.read_line()
    if reply["rsp"] == "hs2":
        c.send_json({"req": "hs3"})
        reply = c.read_line()
    c.close()
    return str(reply.get("code") or reply["result"])


def streaming_pair(x: ServerProcess, a: str, y: ServerProcess, b: str) -> tuple[Streamer, Receiver]:
    ca, cb = pair(x, a, y, b)
    tx, rx = Streamer(ca), Receiver(cb)
    tx.start()
    rx.start()
    rx.wait_for(1 << 20)
    return tx, rx


def cut_off(tx: Streamer, since: float, bound: float) -> None:
    """The relay ends the sender's session within ``bound`` seconds of ``since``; the client then closes."""
    ended = EndWatcher(tx.client).wait(bound)
    assert ended - since < bound
    tx.stop.set()
    tx.join(TIMEOUT)
    tx.client.close()


def behind_a_proxy(start_node: Callable[..., ServerProcess], i: int) -> tuple[ServerProcess, LegProxy]:
    """Node ``i``, whose legs the other nodes reach through a proxy that the test can make fail."""
    leg_port = free_port()
    proxy = LegProxy(("127.0.0.1", leg_port))
    proxy.start()
    listen = ("--cluster-listen", f"127.0.0.1:{leg_port}", "--cluster-advertise", f"127.0.0.1:{proxy.port}")
    return start_node(i, *FAST, *listen), proxy


def test_kill_9_of_the_receivers_node(start_node: Callable[..., ServerProcess]) -> None:
    n0, n1, n2 = (start_node(i, *FAST) for i in range(3))
    tx, rx = streaming_pair(n0, "alice", n1, "bob")
    other_tx, other_rx = streaming_pair(n0, "carol", n2, "dave")
    n1.proc.kill()
    killed = time.monotonic()
    # The chid of a dead node is not free while its lease may live; then it is.
    assert claim_result(n2, "bob") == "chid_in_use"
    cut_off(tx, killed, DETECT)
    fields = closed_fields(n0, "alice")
    assert fields["reason"] == "link_lost", fields
    rx.join(TIMEOUT)
    assert rx.intact, "bob got something other than a prefix of alice's stream"
    sent, received, dropped = int(fields["in"]), rx.received, int(fields["dropped"])
    assert received + dropped <= sent <= tx.sent
    assert sent - received - dropped <= kernel_buffer_bound(4), (sent, received, dropped)
    deadline = time.monotonic() + 4 + 1 + TIMEOUT
    while claim_result(n2, "bob") != "OK":
        assert time.monotonic() < deadline, "bob's chid was not freed after its node's lease lapsed"
        time.sleep(0.1)
    # The pair between the surviving nodes lost nothing and kept going.
    other_rx.wait_for_growth()
    other_tx.finish()
    other_rx.join(TIMEOUT)
    assert other_rx.ended == "eof" and other_rx.intact and other_rx.received == other_tx.sent


def test_a_reset_leg_closes_both_ends_with_link_lost(start_node: Callable[..., ServerProcess]) -> None:
    n0 = start_node(0, *FAST)
    n1, proxy = behind_a_proxy(start_node, 1)
    n2 = start_node(2, *FAST)
    tx, rx = streaming_pair(n0, "alice", n1, "bob")
    other_tx, other_rx = streaming_pair(n0, "carol", n2, "dave")
    assert proxy.connections >= 1
    proxy.reset()
    reset = time.monotonic()
    cut_off(tx, reset, DETECT)
    sender = closed_fields(n0, "alice")
    receiver = closed_fields(n1, "bob", DETECT)
    assert sender["reason"] == "link_lost" and receiver["reason"] == "link_lost", (sender, receiver)
    rx.join(TIMEOUT)
    assert rx.intact
    assert rx.ended != "eof", "a stream with a gap ended as if complete"  # a reset, not a FIN
    sent, received, dropped = int(sender["in"]), rx.received, int(sender["dropped"])
    assert received + dropped <= sent
    assert sent - received - dropped <= kernel_buffer_bound(4), (sent, received, dropped)
    other_rx.wait_for_growth()
    other_tx.finish()
    other_rx.join(TIMEOUT)
    assert other_rx.ended == "eof" and other_rx.intact and other_rx.received == other_tx.sent
    proxy.close()


def test_a_black_holed_leg_is_found_and_its_sender_closed(start_node: Callable[..., ServerProcess]) -> None:
    n0 = start_node(0, *FAST)
    n1, proxy = behind_a_proxy(start_node, 1)
    tx, rx = streaming_pair(n0, "alice", n1, "bob")
    proxy.forwarding = False
    stalled = time.monotonic()
    cut_off(tx, stalled, DETECT + 10)  # the leg stalls once the buffers on the way are full
    sender = closed_fields(n0, "alice")
    assert sender["reason"] == "link_lost", sender
    # The partition heals as a real one would: the far end learns its peer is gone.
    proxy.reset()
    receiver = closed_fields(n1, "bob", DETECT)
    assert receiver["reason"] == "link_lost", receiver
    rx.join(TIMEOUT)
    assert rx.intact
    proxy.close()


def test_a_stalled_remote_receiver_throttles_its_sender_then_is_cut_and_the_sender_goes_on(
    start_node: Callable[..., ServerProcess],
) -> None:
    n0, n1 = (start_node(i, *FAST) for i in range(2))
    ca, cb = pair(n0, "alice", n1, "bob")
    base = n0.rss_kib(), n1.rss_kib()
    tx = Streamer(ca)
    tx.start()  # bob never reads
    receiver = closed_fields(n1, "bob", TIMEOUT)
    assert receiver["reason"] == "slow_receiver", receiver
    held = tx.sent
    assert held <= kernel_buffer_bound(4) + 4 * (1 << 20), f"{held} bytes taken for a receiver that reads nothing"
    assert n0.rss_kib() - base[0] < 64 * 1024 and n1.rss_kib() - base[1] < 64 * 1024
    # Bob is gone; alice is not cut off but goes on (what she sends now is dropped, and counted).
    deadline = time.monotonic() + TIMEOUT
    while tx.sent < held + (8 << 20):
        assert tx.is_alive() and time.monotonic() < deadline, f"alice stuck at {tx.sent} bytes"
        time.sleep(0.01)
    tx.finish()
    sender = closed_fields(n0, "alice")
    assert sender["reason"] == "client_closed", sender
    assert int(sender["dropped"]) > 0
    cb.close()


def test_new_handshakes_are_refused_as_unavailable_while_the_registry_is_out_of_reach(
    start_node: Callable[..., ServerProcess], nats_cluster: list[object]
) -> None:
    n0, n1 = (start_node(i) for i in range(2))
    tx, rx = streaming_pair(n0, "alice", n1, "bob")
    nats_cluster[0].kill()  # type: ignore[attr-defined]  # n0's only NATS server
    deadline = time.monotonic() + TIMEOUT
    while (result := claim_result(n0, "newcomer")) != "unavailable":
        assert result == "OK" or result == "chid_in_use", result
        assert time.monotonic() < deadline, "claims went on without a registry"
        time.sleep(0.2)
    rx.wait_for_growth()  # the data path does not touch NATS
    # The other node, whose server lives, claims again once JetStream has moved
    # the buckets' leaders off the dead server (some seconds).
    deadline = time.monotonic() + 2 * TIMEOUT
    while claim_result(n1, "elsewhere") != "OK":
        assert time.monotonic() < deadline, "claims on the other node did not come back"
        time.sleep(0.2)
    tx.finish()
    rx.join(TIMEOUT)
    assert rx.ended == "eof" and rx.intact and rx.received == tx.sent


def test_losing_the_nats_quorum_refuses_handshakes_then_fences_the_nodes(
    start_node: Callable[..., ServerProcess], nats_cluster: list[object]
) -> None:
    n0, n1 = (start_node(i, "--lease-ttl", "4") for i in range(2))
    tx, rx = streaming_pair(n0, "alice", n1, "bob")
    watcher = Framed(n0, "framed-one")
    for server in nats_cluster[1:]:
        server.kill()  # type: ignore[attr-defined]  # n0 keeps its server, without a JetStream quorum
    cut = time.monotonic()
    assert claim_result(n0, "newcomer") == "unavailable"
    # The streams went on meanwhile; then each node, unable to renew its lease, closes
    # its sessions before another node could take their chids: framed ones are told why.
    event = watcher.event()
    assert event["event"] == "close" and event["code"] == "cluster_unavailable", event
    assert time.monotonic() - cut < 4 + TIMEOUT
    cut_off(tx, cut, 4 + TIMEOUT)
    assert closed_fields(n0, "alice")["reason"] == "cluster_unavailable"
    rx.join(TIMEOUT)
    assert rx.intact
    assert claim_result(n0, "newcomer") == "unavailable"
    # The quorum comes back: each node takes a new lease, as a new run, and serves again.
    for server in nats_cluster[1:]:
        server.start()  # type: ignore[attr-defined]
    for node in (n0, n1):
        node.wait_for_log(r"rejoined the cluster", 4 + 2 * TIMEOUT)
    deadline = time.monotonic() + TIMEOUT
    while claim_result(n0, "alice") != "OK":  # the old run's chids are free again too
        assert time.monotonic() < deadline, "alice's chid was not free after the rejoin"
        time.sleep(0.1)
    tx, rx = streaming_pair(n0, "carol", n1, "dave")
    tx.finish()
    rx.join(TIMEOUT)
    assert rx.ended == "eof" and rx.intact and rx.received == tx.sent


def test_a_node_restarted_with_the_same_id_does_not_bring_back_its_old_chids(
    start_node: Callable[..., ServerProcess],
) -> None:
    n0 = start_node(0, *FAST)
    n1 = start_node(1, *FAST)
    watcher = Framed(n0, "watcher", ["bob"])
    assert watcher.command("subscribe", presence=True)["online"] == []
    tx, rx = streaming_pair(n0, "alice", n1, "bob")
    assert watcher.event() == {"event": "online", "chid": "bob"}
    n1.proc.kill()
    again = start_node(1, *FAST)  # waits for the dead run's lease to lapse, then joins
    # The survivors hear bob go offline, and his chid is free again, on the new run too.
    event = watcher.event()
    while event.get("event") == "eof":
        event = watcher.event()
    assert event == {"event": "offline", "chid": "bob"}
    deadline = time.monotonic() + TIMEOUT
    while claim_result(again, "bob") != "OK":
        assert time.monotonic() < deadline, "the new run of node1 still sees its old chid"
        time.sleep(0.1)
    cut_off(tx, time.monotonic(), DETECT)


def test_a_hung_node_is_found_by_its_stalled_legs_and_its_lapsed_lease(
    start_node: Callable[..., ServerProcess],
) -> None:
    n0, n1 = (start_node(i, *FAST) for i in range(2))
    to_hung, at_hung = streaming_pair(n0, "alice", n1, "bob")  # n1 stops reading its leg
    from_hung, from_rx = streaming_pair(n1, "carol", n0, "dave")  # n1's leg to n0 falls silent
    n1.proc.send_signal(signal.SIGSTOP)
    stopped = time.monotonic()
    try:
        cut_off(to_hung, stopped, DETECT + 10)  # once the buffers on the way are full, then the slow-receiver timer
        assert closed_fields(n0, "alice")["reason"] == "link_lost"
        # Dave's stream from the hung node has a gap nobody can fill: when the node's
        # lease lapses, its legs are cut and dave is closed too.
        from_rx.join(4 + DETECT)
        assert closed_fields(n0, "dave")["reason"] == "link_lost"
        assert from_rx.intact
        assert time.monotonic() - stopped < 4 + DETECT
    finally:
        n1.proc.send_signal(signal.SIGKILL)
    from_hung.stop.set()
    at_hung.join(TIMEOUT)
    assert at_hung.intact


@pytest.mark.parametrize("port", ["closed", "silent"])
def test_a_leg_that_cannot_connect_closes_its_sender_with_link_lost(
    start_node: Callable[..., ServerProcess], port: str
) -> None:
    """A node whose leg port refuses, or drops every SYN: the sender is told within the connect timeout."""
    with contextlib.ExitStack() as stack:
        if port == "closed":
            address = ("127.0.0.1", free_port())
        else:  # a listener that never accepts, its queue full: the kernel drops further SYNs
            hole = stack.enter_context(socket.socket())
            hole.bind(("127.0.0.1", 0))
            hole.listen(0)
            address = hole.getsockname()
            for _ in range(3):
                filler = stack.enter_context(socket.socket())
                filler.setblocking(False)
                filler.connect_ex(address)
        n0 = start_node(0, *FAST)
        n1 = start_node(1, *FAST, "--cluster-advertise", f"{address[0]}:{address[1]}")
        rx = Client(n1.address)
        rx.send_json({"req": "hs1", "chid": "bob"})
        assert rx.read_line()["rsp"] == "hs2"
        rx.send_json({"req": "hs3"})
        assert rx.read_line()["result"] == "OK"
        tx, _ = handshake(n0, "alice", ["bob"], wait=True)
        tx.sock.sendall(b"x" * 1000)
        sent = time.monotonic()
        ended = EndWatcher(tx).wait(CONNECT_TIMEOUT + 3)
        assert ended - sent < CONNECT_TIMEOUT + 3
        fields = closed_fields(n0, "alice")
        assert fields["reason"] == "link_lost", fields
        why = "no answer from" if port == "silent" else "refused"
        assert "cannot reach node node1" in n0.closed_line("alice") and why in n0.closed_line("alice"), n0.lines
        assert int(fields["in"]) == int(fields["dropped"]) == 1000, fields  # all of it, counted
        # Bob's node never had a leg from alice: the registry tells it that her stream
        # to it has a gap, so bob is reset, not given a FIN as if her stream were whole.
        receiver = closed_fields(n1, "bob")
        assert receiver["reason"] == "link_lost", receiver
        assert "has a gap" in n1.closed_line("bob")
        rx.sock.settimeout(TIMEOUT)
        with pytest.raises(ConnectionResetError):
            while rx.sock.recv(1 << 16):
                pass
        tx.close()
        rx.close()


def test_bytes_in_flight_for_a_receiver_that_left_never_reach_the_new_owner_of_its_chid(
    start_node: Callable[..., ServerProcess],
) -> None:
    """Bob reconnects under his chid while alice's bytes for the old bob are still on their way."""
    n0 = start_node(0, *FAST)
    n1, proxy = behind_a_proxy(start_node, 1)
    old_bob, _ = handshake(n1, "bob", [])
    carol, _ = handshake(n1, "carol", [])
    alice, _ = handshake(n0, "alice", ["bob", "carol"], wait=True)  # two receivers: a frames leg
    alice.sock.sendall(b"first")
    assert old_bob.recv_exactly(5) == b"first" and carol.recv_exactly(5) == b"first"
    proxy.holding = True  # what alice sends now waits on the way to n1
    held = proxy.held
    alice.sock.sendall(b"for the old bob")
    deadline = time.monotonic() + TIMEOUT
    while proxy.held < held + 15 + 8:  # its frame (an 8-byte header) is in the leg
        assert time.monotonic() < deadline, "alice's bytes did not reach the leg"
        time.sleep(0.01)
    # Gone for good (a reset): a FIN would leave him half-closed and online while alice names him (5.1).
    old_bob.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    old_bob.close()
    closed_fields(n1, "bob")
    deadline = time.monotonic() + TIMEOUT
    while True:  # the old bob's release is written a moment after his close
        new_bob = Client(n1.address)
        new_bob.send_json({"req": "hs1", "chid": "bob"})
        if new_bob.read_line()["rsp"] == "hs2":
            new_bob.send_json({"req": "hs3"})
            if new_bob.read_line()["result"] == "OK":
                break
        new_bob.close()
        assert time.monotonic() < deadline, "the chid bob was not free again"
        time.sleep(0.05)
    # n0 learns of the new bob and says so in the leg, behind the bytes for the old one.
    named = re.compile(r'leg names leg="leg:alice>node1" chid="bob" sid="([^"]+)"')
    n0.wait_for_count(named.pattern, 3)  # the old bob, nobody, the new bob
    assert named.findall("\n".join(n0.lines))[-1] != "-"
    alice.sock.sendall(b"for the new bob")
    proxy.holding = False
    assert carol.recv_exactly(30) == b"for the old bobfor the new bob"
    assert new_bob.recv_exactly(15) == b"for the new bob"  # and nothing before it
    alice.close()
    carol.close()
    new_bob.close()
    proxy.close()


def test_a_node_whose_nats_server_dies_moves_to_another_and_goes_on(
    start_node: Callable[..., ServerProcess], nats_cluster: list[object]
) -> None:
    """Given every NATS URL, as operations.md says: streams, claims and presence survive one server."""
    urls = [server.url for server in nats_cluster]  # type: ignore[attr-defined]
    n0 = start_node(0, "--cluster", ",".join(urls))  # its own server first
    n1 = start_node(1, "--cluster", ",".join(urls[1:] + urls[:1]))
    tx, rx = streaming_pair(n0, "alice", n1, "bob")
    watcher = online_everywhere(n0, ["bob"], "watcher")
    nats_cluster[0].kill()  # type: ignore[attr-defined]
    rx.wait_for_growth()  # the data path does not touch NATS
    deadline = time.monotonic() + 2 * TIMEOUT  # JetStream moves the buckets' leaders (some seconds)
    while (result := claim_result(n1, "late")) != "OK":
        assert result in ("unavailable", "chid_in_use"), result
        assert time.monotonic() < deadline, "claims did not come back after one NATS server died"
        time.sleep(0.2)
    # The replicas' consumers may have been on the dead server, whether or not the
    # nodes were connected to it: n0 still sees sessions of n1 come online.
    late, _ = handshake(n1, "late2")
    deadline = time.monotonic() + 2 * TIMEOUT  # about 3 s at most here; JetStream's elections vary
    while "late2" not in watcher.command("online")["online"]:  # type: ignore[operator]
        assert time.monotonic() < deadline, "n0 did not see a new session on n1"
        time.sleep(0.05)
    assert claim_result(n0, "on-n0") == "OK"
    tx.finish()
    rx.join(TIMEOUT)
    assert rx.ended == "eof" and rx.intact and rx.received == tx.sent
    late.close()
    watcher.c.close()


def test_a_node_whose_only_nats_server_comes_back_reloads_its_replicas(
    start_node: Callable[..., ServerProcess], nats_cluster: list[object]
) -> None:
    n0 = start_node(0, "--lease-ttl", "60")  # no fencing in this outage
    n1 = start_node(1, "--lease-ttl", "60")
    nats_cluster[0].kill()  # type: ignore[attr-defined]
    nats_cluster[0].start()  # type: ignore[attr-defined]
    n0.wait_for_log(r"registry reconnected: reloading the replicas", 2 * TIMEOUT)
    deadline = time.monotonic() + 2 * TIMEOUT
    while claim_result(n1, "late") != "OK":  # JetStream's leaders settle again
        assert time.monotonic() < deadline, "claims did not come back"
        time.sleep(0.2)
    late, _ = handshake(n1, "late2")
    watcher = Framed(n0, "watcher")
    deadline = time.monotonic() + 2 * TIMEOUT  # a few seconds here; the restarted server's catch-up varies
    while "late2" not in watcher.command("online")["online"]:  # type: ignore[operator]
        assert time.monotonic() < deadline, "n0 did not see a new session on n1"
        time.sleep(0.05)
    assert claim_result(n0, "on-n0") == "OK"
    late.close()
    watcher.c.close()
