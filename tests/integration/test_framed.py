"""Framed mode against a real server: attribution, interop, commands, presence, errors, admin."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

import forwarding
from forwarding.protocol.frames import CONTROL, DATA, FrameParser, control_frame, data_frame

from .conftest import TIMEOUT, Client, ServerProcess, handshake
from .test_forwarding import pump


class Framed:
    """A blocking framed client: frames out, frames in, replies by id."""

    def __init__(self, server: ServerProcess, chid: str, recvers: list[str] | None = None, **hs3: object) -> None:
        self.c, self.hs4 = handshake(server, chid, recvers, mode="framed", **hs3)
        assert self.hs4["mode"] == "framed" and self.hs4["max_frame"] == 1 << 20
        self.sock = self.c.sock
        self.parser = FrameParser(16 << 20, allow_chid=True)
        self.pending = [(f.kind, f.chid, bytes(f.payload)) for f in self.parser.feed(self.c.rest)]
        self.events: list[dict[str, object]] = []  # control frames met while waiting for data
        self.data: list[tuple[str | None, bytes]] = []  # data frames met while waiting for a reply
        self.next_id = 1

    def send(self, payload: bytes) -> None:
        self.sock.sendall(data_frame(payload))

    def frame(self) -> tuple[int, str | None, bytes]:
        while not self.pending:
            chunk = self.sock.recv(1 << 20)
            if not chunk:
                raise EOFError("closed")
            self.pending += [(f.kind, f.chid, bytes(f.payload)) for f in self.parser.feed(chunk)]
        return self.pending.pop(0)

    def message(self) -> tuple[str | None, bytes]:
        """The next data message; control frames met on the way are kept as events."""
        if self.data:
            return self.data.pop(0)
        while True:
            kind, chid, payload = self.frame()
            if kind == DATA:
                return chid, payload
            self.events.append(json.loads(payload))

    def control(self) -> dict[str, object]:
        """The next control frame; data frames met on the way are kept for message()."""
        while True:
            kind, chid, payload = self.frame()
            if kind == CONTROL:
                return json.loads(payload)
            self.data.append((chid, payload))

    def command(self, cmd: str, **fields: object) -> dict[str, object]:
        ident, self.next_id = self.next_id, self.next_id + 1
        self.sock.sendall(control_frame({"id": ident, "cmd": cmd, **fields}))
        while True:
            msg = self.control()
            if msg.get("id") == ident:
                return msg
            self.events.append(msg)

    def event(self) -> dict[str, object]:
        return self.events.pop(0) if self.events else self.control()


def test_two_senders_to_one_framed_receiver_arrive_whole_and_attributed(server):
    rx = Framed(server, "rx")
    a = Framed(server, "a", ["rx"])
    b, _ = handshake(server, "b", ["rx"])  # a raw sender
    messages = [os.urandom(n) for n in (1, 1000, 70_000, 300_000)]
    for m in messages:
        a.send(m)
    raw = os.urandom(2 << 20)
    t = pump(b.sock, raw)
    from_a, from_b = [], bytearray()
    while len(from_a) < len(messages) or len(from_b) < len(raw):
        sender, payload = rx.message()
        if sender == "a":
            from_a.append(payload)
        else:
            assert sender == "b"
            from_b += payload
    t.join(TIMEOUT)
    assert from_a == messages  # framed: message boundaries kept
    assert bytes(from_b) == raw  # raw: the stream, in order, in chunks


def test_a_framed_sender_reaches_a_raw_receiver_as_plain_bytes(server):
    raw_rx, _ = handshake(server, "raw-rx", [])
    tx = Framed(server, "tx", ["raw-rx"])
    tx.send(b"one,")
    tx.send(b"")
    tx.send(b"two")
    assert raw_rx.recv_exactly(7) == b"one,two"


def test_commands_and_their_replies(server):
    me = Framed(server, "me", ["x", "y"])
    assert me.command("online") == {"id": 1, "ok": True, "online": []}
    x = Framed(server, "x")
    assert me.command("online")["online"] == ["x"]
    assert me.command("ping") == {"id": 3, "ok": True, "pong": True}
    reply = me.command("recvers", recvers=["x", "x", "z"])
    assert reply == {"id": 4, "ok": True, "recvers": ["x", "z"], "online": ["x"]}
    bad = me.command("recvers", recvers="x")
    assert bad["ok"] is False and bad["code"] == "bad_request" and "must be a list" in bad["desc"]
    assert me.command("subscribe", presence="yes")["ok"] is False
    # The session goes on after a refused command.
    me.send(b"still here")
    assert x.message() == ("me", b"still here")
    assert me.command("recvers", recvers=[]) == {"id": 7, "ok": True, "recvers": [], "online": ["x"]}
    assert me.command("close", reason="done for today") == {"id": 8, "ok": True}
    assert me.control() == {"event": "close", "code": "client_closed", "desc": "closed by the client: done for today"}
    me.c.assert_closed()
    assert 'desc="closed by the client: done for today"' in server.closed_line("me")


def test_presence_events_for_joins_leaves_and_a_killed_peer(start_server):
    # The killed peer is raw, and the watcher names it: its FIN leaves it half-closed
    # (docs/protocol.md, 5.1) until the half-close timeout, which this test shortens.
    server = start_server("--half-close-timeout", "1")
    watcher = Framed(server, "watcher", ["p1", "p2"])
    p1 = Framed(server, "p1")
    assert watcher.command("subscribe") == {"id": 1, "ok": True, "presence": True, "online": ["p1"]}
    p2, _ = handshake(server, "p2", [])
    assert watcher.event() == {"event": "online", "chid": "p2"}
    p1.sock.close()
    assert watcher.event() == {"event": "offline", "chid": "p1"}
    killed = subprocess.Popen(
        [sys.executable, "-m", "forwarding", "connect", f"127.0.0.1:{server.port}", "--chid", "p1"],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
    )
    assert watcher.event() == {"event": "online", "chid": "p1"}
    killed.send_signal(signal.SIGKILL)
    killed.wait(TIMEOUT)
    assert watcher.event() == {"event": "offline", "chid": "p1"}
    # Someone outside the recvers is not announced; unsubscribing stops events.
    handshake(server, "stranger", [])
    assert watcher.command("subscribe", presence=False) == {"id": 2, "ok": True, "presence": False}
    p2.close()
    assert watcher.command("ping")["pong"] is True  # no offline event came before the reply
    assert watcher.events == []


def test_changing_recvers_mid_stream_loses_and_misdelivers_nothing(server):
    old, new = Framed(server, "old"), Framed(server, "new")
    tx = Framed(server, "tx", ["old"])
    # The switch travels in the same write as the data around it.
    wire = b"".join(data_frame(f"m{i}".encode()) for i in range(50))
    wire += control_frame({"id": 1, "cmd": "recvers", "recvers": ["new"]})
    wire += b"".join(data_frame(f"m{i}".encode()) for i in range(50, 100))
    tx.sock.sendall(wire)
    assert [old.message() for _ in range(50)] == [("tx", f"m{i}".encode()) for i in range(50)]
    assert [new.message() for _ in range(50)] == [("tx", f"m{i}".encode()) for i in range(50, 100)]
    assert tx.control()["recvers"] == ["new"]
    old.send(b"fence")  # old got nothing more: the next thing tx sees from it is this
    tx.command("recvers", recvers=[])
    assert tx.message() == ("old", b"fence")


@pytest.mark.parametrize(
    ("wire", "code"),
    [
        (bytes([9, 0, 0, 0, 0, 0, 0, 0]), "bad_frame"),
        (bytes([1, 0, 0, 3, 0, 0, 0, 1]) + b"bobx", "bad_frame"),
        (bytes([1, 0, 0, 0]) + (2 << 20).to_bytes(4, "big"), "frame_too_large"),
        (control_frame({"id": 1, "cmd": "reboot"}), "unknown_command"),
        (bytes([2, 0, 0, 0, 0, 0, 0, 3]) + b"{{{", "bad_frame"),
    ],
)
def test_bad_frames_close_that_session_with_a_reason_and_no_other(server, wire, code):
    bystander_rx, bystander_tx = Framed(server, "b-rx"), Framed(server, "b-tx", ["b-rx"])
    bad = Framed(server, "bad")
    bad.sock.sendall(wire)
    event = bad.control()
    assert event["event"] == "close" and event["code"] == code, event
    bad.c.assert_closed()
    assert 'reason="frame_error"' in server.closed_line("bad")
    bystander_tx.send(b"unaffected")
    assert bystander_rx.message() == ("b-tx", b"unaffected")


def test_a_frame_split_across_writes_at_every_offset(server):
    rx = Framed(server, "rx")
    tx = Framed(server, "tx", ["rx"])
    tx.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    frame = data_frame(b"split me")
    for cut in range(1, len(frame)):
        tx.sock.sendall(frame[:cut])
        tx.sock.sendall(frame[cut:])
        assert rx.message() == ("tx", b"split me"), cut


def test_the_library_speaks_framed_mode(server):
    async def main() -> None:
        addr = f"127.0.0.1:{server.port}"
        async with forwarding.connect_framed(addr, chid="lib-rx") as rx:
            async with forwarding.connect_framed(addr, chid="lib-tx", recvers=["lib-rx"]) as tx:
                events = rx.presence()  # subscribes: who is here now comes first
                assert await anext(events) == forwarding.Presence("lib-tx", True)
                await tx.send(b"x" * (3 << 20))  # over max_frame: sent as several messages
                got = bytearray()
                while len(got) < 3 << 20:
                    sender, data = await rx.recv() or ("", b"")
                    assert sender == "lib-tx"
                    got += data
                assert await tx.online() == ["lib-rx"]
                assert await tx.set_recvers(["nobody"]) == []
                with pytest.raises(forwarding.CommandRejected):
                    await tx.set_recvers(["bad chid"])
                assert await tx.ping() > 0
            assert await anext(events) == forwarding.Presence("lib-tx", False)

    asyncio.run(asyncio.wait_for(main(), TIMEOUT * 2))


def test_admin_lists_and_closes_sessions_and_reloads(start_server, tmp_path):
    config = tmp_path / "relay.toml"
    config.write_text("idle-timeout = 100\n")
    sock = str(tmp_path / "admin.sock")
    server = start_server("--config", str(config), "--admin-socket", sock)
    a, hs4 = handshake(server, "a", [])
    assert hs4["timeout"] == 100
    f = Framed(server, "f", ["a"])

    def admin(*args: str) -> subprocess.CompletedProcess[str]:
        cmd = [sys.executable, "-m", "forwarding", "admin", sock, *args]
        return subprocess.run(
            cmd, capture_output=True, text=True, timeout=TIMEOUT, env={**os.environ, "COLUMNS": "200"}
        )

    listing = admin("sessions")
    assert listing.returncode == 0 and " a " in listing.stdout and "framed" in listing.stdout, listing
    assert admin("close", "f").returncode == 0
    assert f.control() == {"event": "close", "code": "admin_closed", "desc": "closed by an operator"}
    f.c.assert_closed()
    assert 'reason="admin_closed"' in server.closed_line("f")
    missing = admin("close", "nobody")
    assert missing.returncode == 1 and "no session" in missing.stderr
    config.write_text('idle-timeout = 200\nmode = "broadcast"\n')
    reload = admin("reload")
    assert reload.returncode == 0 and "changed: limits" in reload.stdout, reload
    assert "until a restart: mode" in reload.stdout, reload
    _, hs4 = handshake(server, "b", [])
    assert hs4["timeout"] == 200  # new sessions get the new default
    a.sock.sendall(b"")  # the old session is still there
    assert admin("sessions").stdout.count(" a ") == 1
    config.write_text("this is not toml")
    server.proc.send_signal(signal.SIGHUP)
    server.wait_for_log("reload failed")
    _, hs4 = handshake(server, "c", [])
    assert hs4["timeout"] == 200


def test_chat_tool_shows_who_said_what_and_who_comes_and_goes(server):
    addr = f"127.0.0.1:{server.port}"
    cmd = [sys.executable, "-m", "forwarding", "chat", addr, "--chid"]
    alice = subprocess.Popen([*cmd, "alice"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert alice.stdout is not None and alice.stdin is not None
    assert "you are alice" in alice.stdout.readline()
    bob = subprocess.Popen([*cmd, "bob"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert bob.stdout is not None and bob.stdin is not None
    assert "you are bob" in bob.stdout.readline()
    assert alice.stdout.readline().strip() == "* bob is here"
    assert bob.stdout.readline().strip() == "* alice is here"
    bob.stdin.write("hello alice\n")
    bob.stdin.flush()
    assert alice.stdout.readline().strip() == "bob: hello alice"
    bob.stdin.close()
    assert bob.wait(TIMEOUT) == 0
    assert alice.stdout.readline().strip() == "* bob left"
    alice.stdin.close()
    assert alice.wait(TIMEOUT) == 0


def test_idle_framed_session_gets_a_close_event(server):
    f = Framed(server, "sleepy", timeout=0.3)
    start = time.monotonic()
    assert f.control()["code"] == "idle_timeout"
    assert time.monotonic() - start >= 0.3
    f.c.assert_closed()


def test_raw_clients_still_work_next_to_framed_ones(server):
    raw, _ = handshake(server, "raw", [])
    fr = Framed(server, "fr", ["raw"])
    fr.send(b"ok")
    assert raw.recv_exactly(2) == b"ok"
    raw.sock.sendall(b"back")
    assert fr.message() == ("raw", b"back")
    assert isinstance(raw, Client)
