"""Relay nodes as one relay: real nats-servers, real relay processes, real sockets (issue 13)."""

from __future__ import annotations

import hashlib
import os
import socket
import threading

from ..integration.conftest import TIMEOUT, Client, ServerProcess, handshake


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
    b, _ = handshake(nodes[1], "bob", ["alice"])
    a, _ = handshake(nodes[0], "alice", ["bob"], wait=True)
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
