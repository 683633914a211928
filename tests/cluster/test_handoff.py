"""``serve --workers``: a connection handed at hs3 to the worker that holds its one receiver (server/handoff.py).

Real workers, a real nats-server, real sockets. The kernel places each
connection (SO_REUSEPORT), so a test opens enough pairs that some cross
workers (12 pairs on two workers: all on one side with probability 2^-11),
and waits until both workers' replicas know every receiver before the
senders come, so that each sender can be handed over.
"""

from __future__ import annotations

import array
import hashlib
import json
import os
import re
import signal
import socket
import threading
import time

import pytest

import forwarding
from forwarding import sync
from forwarding.sync import SyncChannel

from ..integration.conftest import TIMEOUT, Client, ServerProcess, scrape_metrics
from ..integration.test_framed import Framed
from ..integration.test_visits import accept, next_visit, visitor_hello
from .faults import worker_pids

PAIRS = 12
BLOB = 1 << 20  # past --splice-after: each pair is spliced, in one worker or onto a leg


def workers(*args: str) -> ServerProcess:
    server = ServerProcess("--workers", "2", "--log-level", "debug", "--metrics", "127.0.0.1:0", *args,
                           timeout=TIMEOUT * 2)  # fmt: skip
    server.wait_for_log(r"workers ready workers=2", TIMEOUT * 2)
    return server


def metrics_ports(server: ServerProcess) -> list[int]:
    """Each worker's, the latest run's (a restarted worker has a new one)."""
    server.wait_for_count(r"INFO metrics address=", 2)
    found = re.findall(r'INFO metrics address="127\.0\.0\.1:(\d+)" node="([^"]+)"', "\n".join(server.lines))
    return list({node: int(port) for port, node in found}.values())


def replicas_know(server: ServerProcess, sessions: int) -> None:
    """Wait until each of the two workers knows every session of the other: a hand-off needs it."""
    ports = metrics_ports(server)
    deadline = time.monotonic() + TIMEOUT
    while True:
        remote = sum(scrape_metrics(p)["forwarding_cluster_remote_sessions"] for p in ports)
        if remote == sessions:
            return
        assert time.monotonic() < deadline, f"the replicas know {remote} of {sessions} sessions"
        time.sleep(0.02)  # polled: a replica's watch says nothing outward


def handoff_sockets(server: ServerProcess) -> dict[str, str]:
    server.wait_for_count(r"hand-off socket path=", 2)
    found = re.findall(r'hand-off socket path="([^"]+)" node="([^"]+)"', "\n".join(server.lines))
    return {node: path for path, node in found}


def node_of(server: ServerProcess, chid: str) -> str:
    return server.wait_for_log(rf'session open chid="{chid}".* node="([^"]+)"').group(1)


def open_pairs(server: ServerProcess, secret: str | None, tag: str = "") -> list[tuple[SyncChannel, SyncChannel]]:
    """``rx`` first (then known to both workers), then ``tx``, each naming the other; known everywhere on return."""
    rxs = [sync.connect(server.address, chid=f"rx{tag}{i}", recvers=[f"tx{tag}{i}"], secret=secret)
           for i in range(PAIRS)]  # fmt: skip
    replicas_know(server, len(rxs))
    txs = [sync.connect(server.address, chid=f"tx{tag}{i}", recvers=[f"rx{tag}{i}"], secret=secret)
           for i in range(PAIRS)]  # fmt: skip
    # A receiver's worker must know its sender before the receiver sends back: a pair split
    # over two workers would lose its first bytes to the replica's lag (docs/protocol.md, 15).
    replicas_know(server, 2 * PAIRS)
    return list(zip(txs, rxs, strict=True))


def move(pairs: list[tuple[SyncChannel, SyncChannel]]) -> None:
    """1 MiB each way through every pair, then FIN both ways: each end gets the other's bytes, whole."""
    blobs = {id(ch): os.urandom(BLOB) for pair in pairs for ch in pair}
    got: dict[int, bytes] = {}

    def send(ch: SyncChannel) -> None:
        ch.send(blobs[id(ch)])
        ch.send_eof()

    def receive(ch: SyncChannel) -> None:
        ch.sock.settimeout(TIMEOUT)
        got[id(ch)] = b"".join(ch)  # to the end of its stream

    threads = [threading.Thread(target=f, args=(ch,)) for pair in pairs for ch in pair for f in (send, receive)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(TIMEOUT * 3)
    for tx, rx in pairs:
        assert hashlib.sha256(got[id(rx)]).digest() == hashlib.sha256(blobs[id(tx)]).digest()
        assert hashlib.sha256(got[id(tx)]).digest() == hashlib.sha256(blobs[id(rx)]).digest()
        tx.close()
        rx.close()


@pytest.mark.parametrize("secret", [None, "a secret for the sealed handshake"], ids=["plain", "sealed"])
def test_a_sender_whose_receiver_is_on_the_other_worker_is_handed_there_and_spliced_locally(
    secret: str | None,
) -> None:
    server = workers(*(["--secret", secret] if secret else []))
    try:
        pairs = open_pairs(server, secret)
        for i in range(PAIRS):
            assert node_of(server, f"tx{i}") == node_of(server, f"rx{i}"), f"pair {i} split over two workers"
        handed = [line for line in server.lines if "DEBUG handed off" in line]
        assert handed, "12 pairs, and no sender accepted by the other worker?"
        move(pairs)
        for i in range(PAIRS):  # both directions of each pair spliced in its one worker: no leg
            server.wait_for_log(rf'splicing chid="tx{i}" recver="rx{i}"')
            server.wait_for_log(rf'splicing chid="rx{i}" recver="tx{i}"')
        assert not [line for line in server.lines if 'recver="leg:' in line]
        totals = [scrape_metrics(p) for p in metrics_ports(server)]
        sent = sum(m['forwarding_handoffs_total{direction="out"}'] for m in totals)
        taken = sum(m['forwarding_handoffs_total{direction="in"}'] for m in totals)
        assert sent == taken == len(handed)
        assert sum(m['forwarding_sessions_closed_total{reason="handed_off"}'] for m in totals) == len(handed)
    finally:
        server.stop_cleanly()


def test_data_sent_with_hs3_travels_with_the_connection() -> None:
    server = workers()
    try:
        rxs = []
        for i in range(PAIRS):
            rx = Client(server.address)
            rx.send_json({"req": "hs1", "chid": f"rx{i}"}, json.dumps({"req": "hs3"}).encode() + b"\n")
            assert rx.read_line()["rsp"] == "hs2" and rx.read_line()["result"] == "OK"
            rxs.append(rx)
        replicas_know(server, PAIRS)
        for i, rx in enumerate(rxs):
            tx = Client(server.address)
            hs3 = json.dumps({"req": "hs3", "recvers": [f"rx{i}"]}).encode() + b"\n"
            tx.send_json({"req": "hs1", "chid": f"tx{i}"}, hs3 + b"early bytes %d|" % i)  # one write
            at_once = i % 2 == 0  # then FIN too, before any reply (printf ... | nc -N)
            if at_once:
                tx.sock.shutdown(socket.SHUT_WR)
            assert tx.read_line()["rsp"] == "hs2"
            assert tx.read_line()["result"] == "OK"
            if not at_once:
                tx.sock.sendall(b"and the rest")
                tx.sock.shutdown(socket.SHUT_WR)
            assert rx.recv_until_eof() == b"early bytes %d|" % i + (b"" if at_once else b"and the rest")
            tx.close()
            rx.close()
        assert any("DEBUG handed off" in line for line in server.lines)
    finally:
        server.stop_cleanly()


def test_without_its_siblings_sockets_a_worker_keeps_the_sender_and_a_leg_joins_the_pair() -> None:
    server = workers()
    try:
        for path in handoff_sockets(server).values():
            os.unlink(path)  # as if the other worker were draining: nothing can be handed to it
        pairs = open_pairs(server, None)
        split = [i for i in range(PAIRS) if node_of(server, f"tx{i}") != node_of(server, f"rx{i}")]
        assert split, "12 pairs, all within one worker"
        move(pairs)
        for i in split:
            server.wait_for_log(rf'splicing chid="tx{i}" recver="leg:tx{i}>')
        assert not [line for line in server.lines if "DEBUG handed off" in line]
    finally:
        server.stop_cleanly()


def test_no_handoff_keeps_every_connection_where_the_kernel_put_it() -> None:
    server = workers("--no-handoff")
    try:
        assert re.search(r'workers ready .*handoff="off"', "\n".join(server.lines))
        pairs = open_pairs(server, None)
        assert any(node_of(server, f"tx{i}") != node_of(server, f"rx{i}") for i in range(PAIRS))
        move(pairs)
        assert not [line for line in server.lines if "hand-off socket" in line or "handed off" in line]
    finally:
        server.stop_cleanly()


def test_a_hand_off_socket_fed_garbage_says_so_resets_what_it_was_given_and_serves_on() -> None:
    server = workers()
    try:
        path = next(iter(handoff_sockets(server).values()))
        listener = socket.create_server(("127.0.0.1", 0))
        victims = [socket.create_connection(listener.getsockname()) for _ in range(3)]
        given = [listener.accept()[0] for _ in victims]
        r, w = os.pipe()

        def fd(n: int) -> list[tuple[int, int, array.array[int]]]:
            return [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [n]))]

        with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as s:
            s.connect(path)
            s.sendmsg([b"no descriptor at all\n"])
            s.sendmsg([b"a pipe\n"], fd(r))
            s.sendmsg([json.dumps({"v": 1, "chid": "x"}).encode() + b"\n"], fd(given[0].fileno()))  # fields missing
            s.sendmsg([b"not json\n"], fd(given[1].fileno()))
            two = array.array("i", [given[2].fileno(), w])  # one descriptor too many: cut short
            s.sendmsg([b"two\n"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, two)])
        for sock in given:
            sock.close()
        os.close(r)
        # The TCP connections it was handed are reset, not ended as if whole, nor left open.
        for victim in victims:
            victim.settimeout(TIMEOUT)
            with pytest.raises(ConnectionResetError):
                victim.recv(1)
            victim.close()
        server.wait_for_count(r'hand-off failed reason="truncated"', 2)
        server.wait_for_log(r'hand-off failed reason="descriptor"')
        server.wait_for_count(r'hand-off failed reason="invalid"', 2)
        with pytest.raises(BrokenPipeError):  # the pipe's end it was sent was closed, not kept
            os.write(w, b"x")
        os.close(w)
        listener.close()
        move(open_pairs(server, None))
    finally:
        server.stop_cleanly()


def test_after_a_worker_restarts_its_sibling_hands_to_the_new_run() -> None:
    server = workers("--lease-ttl", "4")
    try:
        # Pairs until each worker has handed to the other: both hold a connection to their sibling.
        for round_ in range(8):
            move(open_pairs(server, None, tag=f"a{round_}-"))
            senders = set(re.findall(r'DEBUG handed off .* node="([^"]+)"', "\n".join(server.lines)))
            if len(senders) == 2:
                break
        else:
            raise AssertionError("in 8 rounds of 12 pairs, one worker never handed off")
        victim_node, victim = next((n, pid) for n, pid in worker_pids(server).items() if n.endswith("-1"))
        os.kill(victim, signal.SIGKILL)
        server.wait_for_count(rf'joined the cluster node="{victim_node}"', 2, timeout=TIMEOUT + 4)
        server.wait_for_count(rf'hand-off socket path=.* node="{victim_node}"', 2)
        mark = len(server.lines)
        for round_ in range(8):  # its sibling's connection to the dead run is broken: it connects anew
            move(open_pairs(server, None, tag=f"b{round_}-"))
            if any(f'to="to node {victim_node}"' in line for line in server.lines[mark:]):
                break
        else:
            raise AssertionError("in 8 rounds of 12 pairs, nothing was handed to the restarted worker")
        server.wait_for_log(rf'hand-off connection broken: connecting anew to="{victim_node}"')
    finally:
        server.stop_cleanly()


def test_visitors_reach_a_service_on_another_worker_and_its_answers_are_handed_to_them() -> None:
    server = workers()
    try:
        office = Framed(server, "office", service=True)
        replicas_know(server, 1)
        for i in range(PAIRS):
            visitor = visitor_hello(server, f"v{i}", ["office"])  # handed to the office's worker, if need be
            ticket = next_visit(office)["ticket"]
            answer, hs4 = accept(server, str(ticket), chid=f"answer{i}")  # handed to the visit's worker
            assert hs4["result"] == "OK" and hs4["peer"] == f"v{i}", hs4
            assert visitor.read_line()["peer"] == f"answer{i}"
            answer.sock.sendall(b"welcome %d" % i)
            assert visitor.recv_exactly(len(b"welcome %d" % i)) == b"welcome %d" % i
            visitor.sock.sendall(b"thanks")
            assert answer.recv_exactly(6) == b"thanks"
            visitor.close()
            answer.close()
        handed = "\n".join(line for line in server.lines if "DEBUG handed off" in line)
        assert 'chid="v' in handed and 'chid="answer' in handed, "12 visits: some visitor and some answer moved"
    finally:
        server.stop_cleanly()


def test_a_worker_at_its_connection_limit_refuses_a_handed_over_sender_with_fail_refused() -> None:
    server = workers("--max-connections", "2")
    try:
        # Two receivers on one worker (the kernel places them; a third there is refused).
        placed: dict[str, list[str]] = {}
        held: list[SyncChannel] = []
        for i in range(40):
            try:
                rx = sync.connect(server.address, chid=f"rx{i}")
            except forwarding.Error:
                continue  # its worker was full
            held.append(rx)
            placed.setdefault(node_of(server, f"rx{i}"), []).append(f"rx{i}")
            full = [n for n, chids in placed.items() if len(chids) == 2]
            if full:
                break
        else:
            raise AssertionError("40 connections, no worker with two")
        target = placed[full[0]][0]
        replicas_know(server, sum(len(c) for c in placed.values()))
        for attempt in range(40):  # until the kernel puts a sender on the other worker, which hands it over
            c = Client(server.address)
            c.send_json(
                {"req": "hs1", "chid": f"tx{attempt}"}, json.dumps({"req": "hs3", "recvers": [target]}).encode() + b"\n"
            )
            first = c.read_line()
            if first["rsp"] != "hs2":  # it landed on the full worker, which refused it at once
                assert first["code"] == "refused", first
                c.close()
                continue
            # Admitted by the other worker (hs2), handed over, refused by the full one.
            hs4 = c.read_line()
            c.close()
            assert hs4["result"] == "FAIL" and hs4["code"] == "refused", hs4
            assert "limit of 2 connections" in str(hs4["desc"]), hs4
            server.wait_for_log(f'handed off chid="tx{attempt}"')
            break
        else:
            raise AssertionError("40 senders, none accepted by the other worker")
        for rx in held:
            rx.close()
    finally:
        server.stop_cleanly()
