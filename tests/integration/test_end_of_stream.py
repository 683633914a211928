"""The ends of a stream (docs/protocol.md, 5.1): half-close, a peer that leaves, framed eof."""

from __future__ import annotations

import hashlib
import os
import signal
import socket
import struct
import subprocess
import sys
import threading

import pytest

from forwarding.protocol.frames import control_frame, data_frame

from .conftest import TIMEOUT, Client, ServerProcess, handshake
from .test_framed import Framed


@pytest.fixture
def server(start_server, forwarding_path):
    """Every test here runs over both forwarding paths: spliced pairs and the ordinary one."""
    return start_server("--log-level", "debug", *forwarding_path)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def reset(c: Client) -> None:
    """Close with RST instead of FIN, as a crashed host's kernel or a killed process with unread data does."""
    c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    c.close()


def read_to_eof(c: Client, out: list[bytes]) -> threading.Thread:
    def run() -> None:
        out.append(c.recv_until_eof())

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def test_a_sender_that_half_closes_keeps_receiving_and_both_sides_see_eof(server):
    a, _ = handshake(server, "a", ["b"])
    b, _ = handshake(server, "b", ["a"])
    da, db = os.urandom(16 << 20), os.urandom(16 << 20)
    got_a: list[bytes] = []
    got_b: list[bytes] = []
    readers = [read_to_eof(a, got_a), read_to_eof(b, got_b)]

    def send_then_fin(c: Client, data: bytes) -> None:
        c.sock.sendall(data)
        c.sock.shutdown(socket.SHUT_WR)

    # a finishes first (its FIN goes out while b is still streaming 16 MiB to it).
    ta = threading.Thread(target=send_then_fin, args=(a, da), daemon=True)
    ta.start()
    ta.join(TIMEOUT)
    tb = threading.Thread(target=send_then_fin, args=(b, db), daemon=True)
    tb.start()
    for t in (tb, *readers):
        t.join(TIMEOUT * 3)
    assert sha(got_b[0]) == sha(da)  # b saw all of a, then EOF
    assert sha(got_a[0]) == sha(db)  # a, half-closed, still got all of b, then EOF
    for chid in ("a", "b"):
        line = server.closed_line(chid)
        assert 'reason="client_closed"' in line and "dropped=0" in line


def test_request_then_fin_gets_the_whole_answer_like_nc_dash_n(server):
    """``printf 'req\\n' | nc -N relay``: send, shut down the write side, read the answer to EOF."""
    client, _ = handshake(server, "client", ["service"])
    service, _ = handshake(server, "service", ["client"])
    client.sock.sendall(b"req\n")
    client.sock.shutdown(socket.SHUT_WR)
    assert service.recv_until_eof() == b"req\n"  # the request, then the client's FIN
    answer = os.urandom(3 << 20)
    service.sock.sendall(answer)
    service.close()
    assert sha(client.recv_until_eof()) == sha(answer)


def test_a_receiver_gets_eof_only_when_its_last_named_sender_finishes(server):
    rx, _ = handshake(server, "rx", [])
    s1, _ = handshake(server, "s1", ["rx"])
    s2, _ = handshake(server, "s2", ["rx"])
    s1.sock.sendall(b"one")
    assert rx.recv_exactly(3) == b"one"
    s1.sock.shutdown(socket.SHUT_WR)
    server.closed_line("s1")  # nothing names s1: closed at its FIN
    s2.sock.sendall(b"two")  # rx's input is still open: s2 is sending
    assert rx.recv_exactly(3) == b"two"
    reset(s2)  # a sender that vanishes ends its stream too
    assert rx.recv_until_eof() == b""
    # rx may go on sending after its input ended.
    back, _ = handshake(server, "back", [])
    tx, _ = handshake(server, "tx", [])  # a broadcaster: counts for no one's end of stream
    rx.sock.sendall(b"still talking")
    assert back.recv_exactly(13) == b"still talking"
    assert tx.recv_exactly(13) == b"still talking"


@pytest.mark.parametrize("how", ["fin", "reset", "kill"])
def test_the_receiver_of_a_sender_that_leaves_gets_its_last_byte_then_eof(server, how):
    rx, _ = handshake(server, "rx", ["tx"])
    data = os.urandom(1 << 20)
    if how == "kill":
        cmd = [sys.executable, "-m", "forwarding", "connect", f"127.0.0.1:{server.port}", "--chid", "tx", "--to", "rx"]
        proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL)
        assert proc.stdin is not None
        proc.stdin.write(data)
        proc.stdin.flush()
        assert rx.recv_exactly(len(data)) == data
        proc.send_signal(signal.SIGKILL)
        proc.wait(TIMEOUT)
    else:
        tx, _ = handshake(server, "tx", ["rx"])
        tx.sock.sendall(data)
        assert rx.recv_exactly(len(data)) == data
        if how == "fin":
            tx.sock.shutdown(socket.SHUT_WR)
        else:
            reset(tx)
    assert rx.recv_until_eof() == b""


def test_a_framed_receiver_gets_last_data_then_eof_then_offline_from_a_killed_sender(start_server, forwarding_path):
    # A killed client's kernel sends FIN, which looks like a half-close: the relay
    # keeps the raw session (the watcher names it) until the half-close timeout.
    server = start_server("--half-close-timeout", "1", *forwarding_path)
    watcher = Framed(server, "watcher", ["tx"])
    assert watcher.command("subscribe")["ok"] is True
    cmd = [sys.executable, "-m", "forwarding", "connect", f"127.0.0.1:{server.port}", "--chid", "tx", "--to", "watcher"]
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL)
    assert watcher.event() == {"event": "online", "chid": "tx"}
    assert proc.stdin is not None
    proc.stdin.write(b"last words")
    proc.stdin.flush()
    got = b""
    while len(got) < 10:
        sender, payload = watcher.message()
        assert sender == "tx"
        got += payload
    assert got == b"last words"
    proc.send_signal(signal.SIGKILL)
    proc.wait(TIMEOUT)
    # In this order on the wire: nothing after the data but eof, then offline.
    assert watcher.control() == {"event": "eof", "chid": "tx"}
    assert watcher.control() == {"event": "offline", "chid": "tx"}


def test_a_framed_client_half_closes_with_the_eof_command(server):
    a = Framed(server, "a", ["b"])
    b, _ = handshake(server, "b", ["a"])
    a.send(b"question")
    assert a.command("eof") == {"id": 1, "ok": True}
    assert b.recv_until_eof() == b"question"  # a was b's only sender
    b.sock.sendall(b"answer")
    assert a.message() == ("b", b"answer")
    b.sock.shutdown(socket.SHUT_WR)
    assert a.control() == {"event": "eof", "chid": "b"}
    assert a.command("ping")["pong"] is True  # still open: a framed session ends when its client says
    a.send(b"too late")
    assert a.control() == {"event": "close", "code": "bad_frame", "desc": "a data frame after the eof command"}


def test_a_framed_client_that_sends_fin_gets_the_close_event(server):
    me = Framed(server, "me", ["peer"])
    peer, _ = handshake(server, "peer", ["me"])
    me.sock.sendall(data_frame(b"bye") + control_frame({"id": 1, "cmd": "ping"})[:5])  # FIN inside a frame
    me.sock.shutdown(socket.SHUT_WR)
    assert peer.recv_exactly(3) == b"bye"
    assert me.control() == {"event": "close", "code": "client_closed", "desc": "the client sent FIN"}
    me.c.assert_closed()
    line = server.closed_line("me")
    assert 'reason="client_closed"' in line and "discarded=5" in line  # the cut frame, counted
    assert peer.recv_until_eof() == b""  # and me's FIN reached its raw receiver


def test_a_half_closed_session_with_a_silent_peer_is_closed_after_the_half_close_timeout(start_server):
    server = start_server("--half-close-timeout", "0.5")
    a, _ = handshake(server, "a", ["b"])
    b, _ = handshake(server, "b", ["a"])
    a.sock.shutdown(socket.SHUT_WR)
    assert b.recv_until_eof() == b""
    a.assert_closed()
    assert 'reason="idle_timeout"' in server.closed_line("a")
    assert "0.5 s" in server.closed_line("a")


def test_a_session_must_not_name_itself(server):
    c = Client(server.address)
    c.send_json({"req": "hs1", "chid": "narcissus"})
    c.read_line()
    c.send_json({"req": "hs3", "recvers": ["echo", "narcissus"]})
    reply = c.read_line()
    assert reply["result"] == "FAIL" and reply["code"] == "bad_request"
    assert "own chid" in str(reply["desc"])
    f = Framed(server, "narcissus", ["echo"])
    bad = f.command("recvers", recvers=["narcissus"])
    assert bad["ok"] is False and "own chid" in str(bad["desc"])
    assert f.command("online") == {"id": 2, "ok": True, "online": []}  # still sending to echo


def test_tls_close_notify_is_fin_and_the_relay_answers_with_its_own(start_server, pki_paths):
    import ssl

    server = start_server("--tls-cert", pki_paths["cert"], "--tls-key", pki_paths["key"])
    ctx = ssl.create_default_context(cafile=pki_paths["ca"])
    a, b = TlsClient(server, ctx), TlsClient(server, ctx)
    a.handshake("a", ["b"])
    b.handshake("b", ["a"])
    a.send(b"ping")
    a.close_notify()  # TLS 1.3: a goes on reading
    assert b.read_to_eof() == b"ping"  # then the relay's close_notify
    b.send(b"pong")
    b.close_notify()
    assert a.read_to_eof() == b"pong"
    assert 'reason="client_closed"' in server.closed_line("a")


class TlsClient:
    """TLS over a blocking socket with a MemoryBIO, so that it can half-close (ssl.SSLSocket cannot)."""

    def __init__(self, server: ServerProcess, ctx: object) -> None:
        import ssl

        assert isinstance(ctx, ssl.SSLContext)
        self.sock = socket.create_connection(server.address, timeout=TIMEOUT)
        self.inc, self.out = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.obj = ctx.wrap_bio(self.inc, self.out, server_hostname="localhost")
        self.buf = b""
        self.eof = False
        while True:
            try:
                self.obj.do_handshake()
                break
            except ssl.SSLWantReadError:
                self._flush()
                self._fill()
        self._flush()

    def _flush(self) -> None:
        if data := self.out.read():
            self.sock.sendall(data)

    def _fill(self) -> bool:
        chunk = self.sock.recv(1 << 16)
        if not chunk:
            self.inc.write_eof()
            return False
        self.inc.write(chunk)
        return True

    def send(self, data: bytes) -> None:
        self.obj.write(data)
        self._flush()

    def read_some(self) -> bytes:
        import ssl

        while True:
            try:
                return self.obj.read(1 << 16)
            except ssl.SSLWantReadError:
                if not self._fill():
                    return b""
            except ssl.SSLZeroReturnError:
                return b""

    def line(self) -> bytes:
        while b"\n" not in self.buf:
            chunk = self.read_some()
            assert chunk, "closed during the handshake"
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return line

    def handshake(self, chid: str, recvers: list[str]) -> None:
        import json

        self.send(json.dumps({"req": "hs1", "chid": chid}).encode() + b"\n")
        assert json.loads(self.line())["rsp"] == "hs2"
        self.send(json.dumps({"req": "hs3", "recvers": recvers}).encode() + b"\n")
        assert json.loads(self.line())["result"] == "OK"

    def close_notify(self) -> None:
        import ssl

        try:
            self.obj.unwrap()
        except ssl.SSLWantReadError:  # the relay's own close_notify has not come yet
            pass
        self._flush()

    def read_to_eof(self) -> bytes:
        out, self.buf = self.buf, b""
        while chunk := self.read_some():
            out += chunk
        return out


def test_bad_header_after_valid_frames_runs_them_all_at_every_split(start_server):
    server = start_server()
    rx, _ = handshake(server, "rx", [])
    keeper, _ = handshake(server, "keeper", ["rx"])  # so that no tx's end ends rx's input
    good = [data_frame(b"m%d" % i) for i in range(3)] + [control_frame({"id": 7, "cmd": "ping"})]
    wire = b"".join(good) + bytes([9, 0, 0, 0, 0, 0, 0, 0])
    for split in range(1, len(wire)):
        tx = Framed(server, f"tx{split}", ["rx"])
        tx.sock.sendall(wire[:split])
        tx.sock.sendall(wire[split:])
        assert rx.recv_exactly(6) == b"m0m1m2"
        assert tx.control() == {"id": 7, "ok": True, "pong": True}
        closing = tx.control()
        assert closing["code"] == "bad_frame" and "unknown frame type 9" in str(closing["desc"])
        tx.c.assert_closed()


def test_a_client_that_closes_and_comes_straight_back_gets_its_chid(server):
    peer, _ = handshake(server, "peer", ["me"])
    me, _ = handshake(server, "me", ["peer"])
    me.close()  # FIN: "me" is half-closed while peer still names it (5.1)
    assert peer.recv_until_eof() == b""
    again = Client(server.address)
    again.send_json({"req": "hs1", "chid": "me"})
    again.send_json({"req": "hs3", "recvers": ["peer"]})  # pipelined: held with hs1
    peer.sock.shutdown(socket.SHUT_WR)  # the old "me" has nothing left to wait for: it goes
    assert again.read_line() == {"rsp": "hs2", "chid": "me"}
    assert again.read_line()["result"] == "OK"
    assert 'reason="client_closed"' in server.closed_line("me")


def test_an_online_chid_whose_owner_is_still_sending_is_refused_at_once(server):
    owner, _ = handshake(server, "owner", [])
    thief = Client(server.address)
    thief.send_json({"req": "hs1", "chid": "owner"})
    reply = thief.read_line()
    assert reply["result"] == "FAIL" and reply["code"] == "chid_in_use"


def test_waiting_for_a_half_closed_chid_ends_within_the_handshake_timeout(start_server):
    server = start_server("--handshake-timeout", "0.5")
    peer, _ = handshake(server, "peer", ["me"])
    me, _ = handshake(server, "me", ["peer"])
    me.sock.shutdown(socket.SHUT_WR)  # still receiving: peer may answer for 30 s
    assert peer.recv_until_eof() == b""
    again = Client(server.address)
    again.send_json({"req": "hs1", "chid": "me"})
    reply = again.read_line()
    assert reply["code"] == "chid_in_use" and 'chid "me" is online' in str(reply["desc"])
    peer.sock.sendall(b"late answer")
    assert me.recv_exactly(11) == b"late answer"


@pytest.mark.parametrize("end", ["fin", "reset"])
def test_data_held_with_a_waiting_hs3_that_ends_short_of_hs4_is_counted_as_discarded(
    server: ServerProcess, end: str
) -> None:
    c = Client(server.address)
    hs3 = b'{"req": "hs3", "recvers": ["nobody"], "wait": true}\n'
    c.send_json({"req": "hs1", "chid": f"gave-up-{end}"}, hs3 + b"12345")
    assert c.read_line()["rsp"] == "hs2"
    if end == "fin":
        c.sock.shutdown(socket.SHUT_WR)  # it gives up waiting
    else:
        c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    c.close()
    line = server.closed_line(f"gave-up-{end}")
    assert "discarded=5" in line and "in=0" in line, line


def test_data_pipelined_with_a_refused_hs3_is_counted_as_discarded(server: ServerProcess) -> None:
    from .test_framed import Framed

    office = Framed(server, "office", service=True)
    c = Client(server.address)
    hs3 = b'{"req": "hs3", "recvers": ["office", "someone"]}\n'  # a visit names the service alone
    c.send_json({"req": "hs1", "chid": "mixed"}, hs3 + b"abc")
    assert c.read_line()["rsp"] == "hs2"
    assert c.read_line()["result"] == "FAIL"
    c.close()  # the server waits for our FIN before it logs the close (5)
    line = server.closed_line("mixed")
    assert 'reason="handshake_failed"' in line and "discarded=3" in line, line
    office.c.close()
