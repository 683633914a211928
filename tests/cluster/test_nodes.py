"""Relay nodes as one relay: real nats-servers, real relay processes, real sockets (issue 13)."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

import forwarding
import forwarding.sync
from forwarding.protocol.frames import data_header
from forwarding.protocol.sealing import Sealer
from forwarding.server.legs import MAX_LEG_FRAME, seal_header
from forwarding.server.workers import LocalNats

from ..integration.conftest import TIMEOUT, Client, ServerProcess, handshake, metrics_port, scrape_metrics
from ..integration.test_framed import Framed
from .conftest import CLUSTER_SECRET, NatsServer
from .faults import closed_fields, worker_pids


def pair(x: ServerProcess, a: str, y: ServerProcess, b: str, **hs3: object) -> tuple[Client, Client]:
    """``a`` on node ``x`` and ``b`` on node ``y``, each the other's recver, each knowing the other online.

    A node learns of another node's sessions a few milliseconds late (docs/protocol.md,
    "A cluster"): ``wait`` on both ends is how a client makes sure.
    """
    cb = Client(y.address)
    cb.send_json({"req": "hs1", "chid": b})
    assert cb.read_line()["rsp"] == "hs2"
    cb.send_json({"req": "hs3", "recvers": [a], "wait": True, **hs3})
    ca, _ = handshake(x, a, [b], wait=True, **hs3)
    hs4 = cb.read_line()
    assert hs4["result"] == "OK", hs4
    return ca, cb


def test_a_chid_claimed_on_one_node_is_refused_on_another(nodes: list[ServerProcess]) -> None:
    a, _ = handshake(nodes[0], "alice")
    c = Client(nodes[1].address)
    c.send_json({"req": "hs1", "chid": "alice"})
    reply = c.read_line()
    if reply["rsp"] == "hs2":  # the other node's replica had not seen the claim yet: hs3 is refused
        c.send_json({"req": "hs3"})
        reply = c.read_line()
    assert reply["result"] == "FAIL" and reply["code"] == "chid_in_use", reply
    a.close()


def test_a_pair_across_nodes_moves_bytes_both_ways(nodes: list[ServerProcess]) -> None:
    b, _ = handshake(nodes[1], "bob")
    a, hs4 = handshake(nodes[0], "alice", ["bob"], wait=True)
    assert hs4["online"] == ["bob"], hs4
    b2, _ = handshake(nodes[2], "carol", ["alice"], wait=True)
    a.sock.sendall(b"hello bob")
    assert b.recv_exactly(9) == b"hello bob"
    b2.sock.sendall(b"hi alice")
    assert a.recv_exactly(8) == b"hi alice"
    for c in (a, b, b2):
        c.close()


def test_64_mib_cross_node_intact_both_ways_and_spliced_at_both_ends(nodes: list[ServerProcess]) -> None:
    size = 64 << 20
    blob_ab, blob_ba = os.urandom(1 << 20) * 64, os.urandom(1 << 20)[::-1] * 64
    a, b = pair(nodes[0], "alice", nodes[1], "bob")
    got: dict[str, str] = {}

    def pump(src: Client, blob: bytes) -> None:
        src.sock.sendall(blob)
        src.sock.shutdown(socket.SHUT_WR)

    def drain(dst: Client, name: str) -> None:
        got[name] = hashlib.sha256(dst.recv_until_eof()).hexdigest()

    threads = [
        threading.Thread(target=pump, args=(a, blob_ab)),
        threading.Thread(target=pump, args=(b, blob_ba)),
        threading.Thread(target=drain, args=(b, "ab")),
        threading.Thread(target=drain, args=(a, "ba")),
    ]
    for a_thread in threads:
        a_thread.start()
    for a_thread in threads:
        a_thread.join(TIMEOUT * 6)
    assert got == {"ab": hashlib.sha256(blob_ab).hexdigest(), "ba": hashlib.sha256(blob_ba).hexdigest()}
    assert len(blob_ab) == size
    # Each direction is spliced at its sending node (client -> leg) and its receiving one (leg -> client).
    for node in nodes[:2]:
        node.wait_for_count(r"splicing", 2)
    a.close()
    b.close()


def test_20_concurrent_claims_of_one_chid_over_three_nodes_give_exactly_one_ok(nodes: list[ServerProcess]) -> None:
    clients = [Client(nodes[i % 3].address) for i in range(20)]
    barrier = threading.Barrier(len(clients))
    results: list[str] = []
    lock = threading.Lock()

    def claim(c: Client) -> None:
        barrier.wait(TIMEOUT)
        c.send_json({"req": "hs1", "chid": "contested"})
        reply = c.read_line()
        if reply["rsp"] == "hs2":
            c.send_json({"req": "hs3"})
            reply = c.read_line()
        with lock:
            results.append(str(reply["result"]) + ":" + str(reply.get("code", "")))

    threads = [threading.Thread(target=claim, args=(c,)) for c in clients]
    for t in threads:
        t.start()
    for t in threads:
        t.join(TIMEOUT)
    assert sorted(results) == ["FAIL:chid_in_use"] * 19 + ["OK:"], results
    for c in clients:
        c.close()


def test_fan_out_from_one_node_reaches_receivers_on_every_node(nodes: list[ServerProcess]) -> None:
    receivers = [handshake(nodes[i], f"r{i}")[0] for i in range(3)]
    receivers.append(handshake(nodes[1], "r1b")[0])  # two on one node: one leg carries both
    tx, _ = handshake(nodes[0], "tx", ["r0", "r1", "r2", "r1b"], wait=True)
    message = os.urandom(200_000)
    tx.sock.sendall(message)
    for r in receivers:
        assert r.recv_exactly(len(message)) == message
    for c in (tx, *receivers):
        c.close()


def online_everywhere(node: ServerProcess, chids: list[str], chid: str = "watcher") -> Framed:
    """A framed broadcast session on ``node`` once that node sees every one of ``chids`` online."""
    watcher = Framed(node, chid)
    deadline = time.monotonic() + TIMEOUT
    while not set(chids) <= set(watcher.command("online")["online"]):  # type: ignore[arg-type]
        assert time.monotonic() < deadline, f"{chids} not all online on this node in {TIMEOUT} s"
        time.sleep(0.02)
    return watcher


def test_broadcast_reaches_every_other_session_on_every_node(nodes: list[ServerProcess]) -> None:
    others = [handshake(nodes[i], f"o{i}")[0] for i in range(3)]
    bc = online_everywhere(nodes[0], ["o0", "o1", "o2"])  # broadcasts too: it names nobody
    bc.send(b"to all")
    for o in others:
        assert o.recv_exactly(6) == b"to all"
    for c in (bc.c, *others):
        c.close()


def test_wait_is_satisfied_by_a_chid_that_comes_online_on_another_node(nodes: list[ServerProcess]) -> None:
    a = Client(nodes[0].address)
    a.send_json({"req": "hs1", "chid": "early"})
    assert a.read_line()["rsp"] == "hs2"
    a.send_json({"req": "hs3", "recvers": ["late"], "wait": True})
    # b waits too: its node may see early's claim a few milliseconds after b's own
    # handshake is done, and bytes for a receiver it thinks offline are dropped.
    b, _ = handshake(nodes[2], "late", ["early"], wait=True)
    hs4 = a.read_line()
    assert hs4["result"] == "OK" and hs4["online"] == ["late"], hs4
    b.sock.sendall(b"ping")
    assert a.recv_exactly(4) == b"ping"
    a.close()
    b.close()


def test_hangup_across_nodes_closes_the_partner(nodes: list[ServerProcess]) -> None:
    b, _ = handshake(nodes[1], "hb")
    a, _ = handshake(nodes[0], "ha", ["hb"], wait=True, hangup=True)
    b.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    b.close()  # a reset: gone at once (a FIN only ends its sending, 5.1)
    a.assert_closed()
    assert 'reason="peer_left"' in nodes[0].closed_line("ha")


def test_a_raw_receiver_that_sent_fin_still_gets_a_remote_senders_reply_then_eof(nodes: list[ServerProcess]) -> None:
    # Request / response with half-close, the two ends on two nodes: the asker's
    # FIN must not end the stream while the answerer, elsewhere, still names it.
    answerer, asker = pair(nodes[0], "answerer", nodes[1], "asker")
    asker.sock.sendall(b"question")
    asker.sock.shutdown(socket.SHUT_WR)
    assert answerer.recv_exactly(8) == b"question"
    answerer.sock.sendall(b"answer")
    answerer.sock.shutdown(socket.SHUT_WR)
    assert asker.recv_until_eof() == b"answer"
    assert answerer.recv_until_eof() == b""
    asker.close()
    answerer.close()


def test_framed_presence_events_and_attribution_across_nodes(nodes: list[ServerProcess]) -> None:
    watcher = Framed(nodes[0], "fw", ["fx"])
    assert watcher.command("subscribe", presence=True)["online"] == []
    x, _ = handshake(nodes[1], "fx", ["fw"], wait=True)
    assert watcher.event() == {"event": "online", "chid": "fx"}
    x.sock.sendall(b"from far away")
    got = b""
    while len(got) < 13:
        chid, payload = watcher.message()
        assert chid == "fx"
        got += payload
    assert got == b"from far away"
    x.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    x.close()
    # Its end of stream first, then its going offline: the order one node gives (5.1, 12).
    assert watcher.event() == {"event": "eof", "chid": "fx"}
    assert watcher.event() == {"event": "offline", "chid": "fx"}
    watcher.c.close()


def test_a_framed_recvers_switch_between_a_local_and_a_remote_receiver_keeps_each_ones_order(
    nodes: list[ServerProcess],
) -> None:
    near = Framed(nodes[0], "near")
    far = Framed(nodes[1], "far")
    tx = online_everywhere(nodes[0], ["near", "far"], "switcher")
    expected: dict[str, list[bytes]] = {"near": [], "far": []}
    for i in range(60):
        to = "near" if i % 3 else "far"
        tx.command("recvers", recvers=[to])
        payload = f"{i:03d}".encode() * 100
        tx.send(payload)
        expected[to].append(payload)
    for name, rx in (("near", near), ("far", far)):
        for payload in expected[name]:
            assert rx.message() == ("switcher", payload)
    tx.c.close()


def test_metrics_and_admin_say_which_node_and_count_legs(
    start_node: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    sock = str(tmp_path / "admin.sock")
    n0 = start_node(0, "--metrics", "127.0.0.1:0", "--admin-socket", sock)
    n1 = start_node(1, "--metrics", "127.0.0.1:0")
    a, b = pair(n0, "alice", n1, "bob")
    a.sock.sendall(b"x" * 1000)
    assert b.recv_exactly(1000) == b"x" * 1000
    b.sock.sendall(b"y")
    assert a.recv_exactly(1) == b"y"
    m0, m1 = scrape_metrics(metrics_port(n0)), scrape_metrics(metrics_port(n1))
    assert m0['forwarding_cluster_node{node="node0"}'] == 1 and m0["forwarding_cluster_available"] == 1
    # One leg each way: alice's to node1, bob's to node0.
    for m in (m0, m1):
        assert m['forwarding_legs_open{direction="out"}'] == 1 and m['forwarding_legs_open{direction="in"}'] == 1
        assert m["forwarding_cluster_remote_sessions"] >= 1
    assert m0["forwarding_registry_claim_seconds_count"] >= 1
    out = subprocess.run(
        [sys.executable, "-m", "forwarding", "admin", sock, "sessions", "--json"],
        capture_output=True, text=True, timeout=TIMEOUT, check=True,
    )  # fmt: skip
    rows = json.loads(out.stdout)
    assert [(r["chid"], r["node"]) for r in rows] == [("alice", "node0")]
    a.close()
    b.close()


def test_workers_on_one_port_join_a_pair_across_workers_with_a_spliced_leg() -> None:
    # Without hand-offs, which would move the sender to its receiver's worker (tests/cluster/test_handoff.py).
    server = ServerProcess("--workers", "3", "--no-handoff", "--log-level", "debug", timeout=TIMEOUT * 2)
    try:
        server.wait_for_log(r"workers ready workers=3", TIMEOUT * 2)

        def worker_of(chid: str) -> str:
            return server.wait_for_log(rf'session open chid="{chid}".* node="([^"]+)"').group(1)

        # The kernel places each connection (SO_REUSEPORT): pairs until one spans two workers.
        for i in range(40):
            b, _ = handshake(server, f"b{i}", [])
            a, _ = handshake(server, f"a{i}", [f"b{i}"], wait=True)
            if worker_of(f"a{i}") != worker_of(f"b{i}"):
                break
            a.close()
            b.close()
        else:
            raise AssertionError("40 pairs, all within one worker")
        blob = os.urandom(1 << 20) * 16
        sender = threading.Thread(target=lambda: (a.sock.sendall(blob), a.sock.shutdown(socket.SHUT_WR)))
        sender.start()
        got = b.recv_until_eof()
        sender.join(TIMEOUT)
        assert hashlib.sha256(got).digest() == hashlib.sha256(blob).digest()
        # Spliced client -> leg in the sender's worker, and leg -> client in the receiver's.
        there = worker_of(f"b{i}")
        server.wait_for_log(rf'splicing chid="a{i}" recver="leg:a{i}>{there}"')
        server.wait_for_log(rf'splicing chid="a{i}" recver="b{i}".* node="{there}"')
        a.close()
        b.close()
    finally:
        assert server.stop() == 0


def test_the_leg_port_refuses_strangers_and_replayed_headers(start_node: Callable[..., ServerProcess]) -> None:
    node = start_node(0)
    host, port = node.wait_for_log(r'joined the cluster .*legs="([^"]+):(\d+)"').groups()
    # Not sealed with the cluster secret: cut at once, nothing reaches anyone.
    stranger = socket.create_connection((host, int(port)), timeout=TIMEOUT)
    stranger.sendall(b'{"v":1,"from":"evil","mode":"frames","recvers":null}\n' + b"x" * 100)
    assert _closed(stranger)
    node.wait_for_log(r"leg refused")
    # A real header, recorded and sent again: the second time it is refused.
    header = seal_header(
        Sealer.from_secret(CLUSTER_SECRET),
        {"v": 1, "node": "elsewhere", "from": "x", "sid": "s", "recvers": ["nobody"], "framed": False,
         "mode": "raw", "to": ["nobody", "t"], "ts": time.time()},
    )  # fmt: skip
    first = socket.create_connection((host, int(port)), timeout=TIMEOUT)
    first.sendall(header)
    assert first.recv(1) == b"G"  # accepted: its receiver is not here, so the node ends it on purpose
    first.close()
    again = socket.create_connection((host, int(port)), timeout=TIMEOUT)
    again.sendall(header)
    assert _closed(again)
    node.wait_for_log(r"leg refused.*replayed")


def _closed(sock: socket.socket) -> bool:
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True
    finally:
        sock.close()


def test_the_client_library_raises_unavailable_when_the_registry_is_gone(
    start_node: Callable[..., ServerProcess], nats_cluster: list[NatsServer]
) -> None:
    node = start_node(0)
    nats_cluster[0].kill()  # the node's only NATS server
    deadline = time.monotonic() + TIMEOUT
    while True:
        try:
            with forwarding.sync.connect(node.address, chid="late"):
                pass
        except forwarding.Unavailable as exc:
            assert exc.code == "unavailable" and "retry" in exc.desc
            break
        assert time.monotonic() < deadline, "no unavailable from a node without its registry"


def test_a_framed_senders_new_recvers_keep_a_half_closed_receiver_on_another_node_open(
    start_node: Callable[..., ServerProcess],
) -> None:
    n0, n1 = start_node(0), start_node(1)
    rx, _ = handshake(n1, "halfway", [])
    tx = online_everywhere(n0, ["halfway"], "switcher")
    tx.command("recvers", recvers=["halfway"])  # no byte sent yet: no leg, only the registry says so
    n1.wait_for_log(r'remote recvers changed chid="switcher" recvers="halfway"')
    rx.sock.shutdown(socket.SHUT_WR)  # done sending; someone still names it, so it stays (5.1)
    tx.send(b"late answer")
    assert rx.recv_exactly(11) == b"late answer"
    tx.c.close()
    rx.close()


def test_the_workers_supervisor_restarts_a_worker_that_dies() -> None:
    server = ServerProcess("--workers", "2", "--lease-ttl", "4", timeout=TIMEOUT * 2)
    try:
        server.wait_for_log(r"workers ready workers=2", TIMEOUT * 2)
        victim = next(pid for node, pid in worker_pids(server).items() if node.endswith("-0"))
        os.kill(victim, 9)
        node = server.wait_for_log(r'a worker died node="([^"]+)"').group(1)
        assert node.endswith("-0")
        # Back under its own id once its dead run's lease has lapsed.
        server.wait_for_count(rf'joined the cluster node="{node}"', 2, timeout=TIMEOUT + 4)
        for i in range(6):  # the kernel places them: some on the new worker
            c, _ = handshake(server, f"after{i}")
            c.close()
    finally:
        assert server.stop() == 0


def test_a_node_that_cannot_join_says_why_and_exits_1() -> None:
    nats = LocalNats()  # one server: three replicas cannot be
    try:
        cmd = [sys.executable, "-m", "forwarding", "serve", "--port", "0", "--host", "127.0.0.1",
               "--cluster", nats.url, "--cluster-secret", "s", "--cluster-replicas", "3"]  # fmt: skip
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT * 2)
    finally:
        nats.stop()
    assert done.returncode == 1
    assert "cannot join the cluster" in done.stderr and "replicas" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr


def test_the_workers_supervisor_passes_on_reload_and_drain(tmp_path: Path) -> None:
    config = tmp_path / "relay.toml"
    config.write_text('secret = "old secret"\n')
    server = ServerProcess("--workers", "2", "--config", str(config), timeout=TIMEOUT * 2)
    server.wait_for_log(r"workers ready workers=2", TIMEOUT * 2)
    config.write_text('secret = "new secret"\n')
    server.proc.send_signal(signal.SIGHUP)
    server.wait_for_count(r'reloaded changed="secret"', 2)  # each worker, not only the one a client hit
    for _ in range(8):  # the kernel spreads them over both workers
        with pytest.raises(forwarding.WrongSecret):
            forwarding.sync.connect(server.address, secret="old secret", timeout=TIMEOUT)
        forwarding.sync.connect(server.address, secret="new secret", timeout=TIMEOUT).close()
    server.proc.send_signal(signal.SIGUSR2)
    server.wait_for_count(r"\bdraining\b", 2)
    assert server.proc.wait(TIMEOUT * 2) == 0  # drained workers exit, and then so does the supervisor
    server.stop_cleanly()


def test_the_workers_supervisor_stops_when_its_nats_server_dies() -> None:
    server = ServerProcess("--workers", "2", "--log-level", "debug", timeout=TIMEOUT * 2)
    server.wait_for_log(r"workers ready workers=2", TIMEOUT * 2)
    server.wait_for_log(r'nats-server line="Server is ready"')  # its log is read (a full pipe would stop it)
    children = worker_pids(server)
    assert len(children) == 3, children
    os.kill(children.pop("nats"), signal.SIGKILL)
    server.wait_for_log(r"the nats-server died: stopping")
    assert server.proc.wait(TIMEOUT * 2) == 1  # a service manager starts it all again
    server.stop_cleanly(codes=(1,))
    for pid in children.values():  # and no worker is left behind
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_an_oversized_frame_on_a_leg_cuts_the_leg_and_its_receivers_with_link_lost(
    start_node: Callable[..., ServerProcess],
) -> None:
    """A node that breaks the leg format (a frame beyond MAX_LEG_FRAME): a gap, said as one."""
    node = start_node(0)
    host, port = node.wait_for_log(r'joined the cluster .*legs="([^"]+):(\d+)"').groups()
    rx, _ = handshake(node, "bob", [])
    header = seal_header(
        Sealer.from_secret(CLUSTER_SECRET),
        {"v": 1, "node": "elsewhere", "from": "x", "sid": "s", "recvers": ["bob"], "framed": False,
         "mode": "frames", "ts": time.time()},
    )  # fmt: skip
    leg = socket.create_connection((host, int(port)), timeout=TIMEOUT)
    leg.sendall(header + data_header(5) + b"hello")
    assert rx.recv_exactly(5) == b"hello"
    leg.sendall(data_header(MAX_LEG_FRAME + 1))
    assert _closed(leg)
    assert closed_fields(node, "bob")["reason"] == "link_lost"
    rx.sock.settimeout(TIMEOUT)
    with pytest.raises(ConnectionResetError):  # a gap: reset, never a FIN
        while rx.sock.recv(1 << 16):
            pass
    node.wait_for_log(r"leg lost")
    c, _ = handshake(node, "after")  # and the node goes on
    c.close()


def test_ctrl_c_stops_the_workers_before_their_nats_server() -> None:
    """A terminal's Ctrl-C signals the whole foreground group: the workers must still leave through NATS."""
    server = ServerProcess("--workers", "2", "--log-level", "debug", timeout=TIMEOUT * 2)
    server.wait_for_log(r"workers ready workers=2", TIMEOUT * 2)
    os.killpg(server.proc.pid, signal.SIGINT)  # the test started it as a group of its own
    assert server.proc.wait(TIMEOUT * 2) == 0
    server.stop_cleanly()
    lines = server.lines
    stopped = [i for i, line in enumerate(lines) if "INFO stopped connections=" in line]
    trapped = [i for i, line in enumerate(lines) if 'nats-server line="Trapped' in line]
    assert len(stopped) == 2 and len(trapped) == 1, "\n".join(lines)
    assert max(stopped) < trapped[0], "\n".join(lines)  # nats-server went last
    assert not [line for line in lines if "nats error=" in line], "\n".join(lines)


def test_a_sender_that_writes_hs1_hs3_its_data_and_fin_at_once_is_delivered_then_ended(
    start_node: Callable[..., ServerProcess],
) -> None:
    """As on one relay (5.1): the FIN that arrives while hs3's claim is at the registry ends the stream,
    after the data; it does not abandon the handshake and lose what came with it."""
    n0, n1 = start_node(0), start_node(1)
    rx, _ = handshake(n1, "rx", [])
    online_everywhere(n0, ["rx"]).c.close()
    tx = Client(n0.address)
    tx.send_json(
        {"req": "hs1", "chid": "tx"}, json.dumps({"req": "hs3", "recvers": ["rx"]}).encode() + b"\n" + b"all of it"
    )
    tx.sock.shutdown(socket.SHUT_WR)  # like printf ... | nc -N
    assert tx.read_line()["rsp"] == "hs2"
    assert tx.read_line()["result"] == "OK"
    assert rx.recv_until_eof() == b"all of it"
    assert 'reason="client_closed"' in n0.closed_line("tx")
    tx.close()
    rx.close()
