"""WebSocket sessions (docs/protocol.md, section 14) against a real server, with websockets' own client."""

from __future__ import annotations

import hashlib
import json
import os
import select
import socket
import ssl
import struct
import threading
import time
import urllib.error
import urllib.request

import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import ClientConnection
from websockets.sync.client import connect as _connect

from forwarding.protocol.frames import DATA, FrameParser, control_frame, data_frame
from forwarding.protocol.sealing import Sealer

from .conftest import TIMEOUT, ServerProcess, handshake, ws_port
from .test_framed import Framed


@pytest.fixture
def relay(start_server) -> ServerProcess:
    return start_server("--ws-port", "0")


def connect(uri: str, **options: object) -> ClientConnection:
    """An open client connection, whatever the websockets version (17 wants a context manager)."""
    return _connect(uri, **options).__enter__()  # type: ignore[arg-type]


def url(server: ServerProcess) -> str:
    return f"ws://127.0.0.1:{ws_port(server)}/ws"


def ws_join(
    server: ServerProcess, chid: str, recvers: list[str] | None = None, **hs3: object
) -> tuple[ClientConnection, dict]:
    ws = connect(url(server), open_timeout=TIMEOUT, max_size=None)
    ws.send(json.dumps({"req": "hs1", "chid": chid}))
    msg: dict[str, object] = {"req": "hs3", **hs3}
    if recvers is not None:
        msg["recvers"] = recvers
    ws.send(json.dumps(msg))
    hs2 = json.loads(ws.recv(TIMEOUT))
    assert hs2["rsp"] == "hs2", hs2
    hs4 = json.loads(ws.recv(TIMEOUT))
    assert hs4["result"] == "OK", hs4
    return ws, hs4


def test_the_handshake_is_text_messages_and_raw_data_flows_both_ways_with_tcp(relay):
    tcp, _ = handshake(relay, "tcp", ["web"])
    ws, hs4 = ws_join(relay, "web", ["tcp"])
    assert hs4 == {"rsp": "hs4", "result": "OK", "chid": "web", "timeout": 3600, "online": ["tcp"]}
    ws.send(b"from the browser")
    assert tcp.recv_exactly(16) == b"from the browser"
    tcp.sock.sendall(b"from tcp")
    assert ws.recv(TIMEOUT) == b"from tcp"  # one binary message per chunk the relay read
    # The relay's end of stream for a raw WebSocket session is a close frame.
    tcp.sock.shutdown(socket.SHUT_WR)
    with pytest.raises(ConnectionClosed) as closed:
        ws.recv(TIMEOUT)
    assert closed.value.rcvd is not None and (closed.value.rcvd.code, closed.value.rcvd.reason) == (
        1000,
        "end of stream",
    )
    assert 'transport="websocket"' in relay.wait_for_log('session open chid="web".*').group(0)


def test_the_sealed_handshake_works_over_websocket(start_server):
    server = start_server("--ws-port", "0", "--secret", "s3cret")
    sealer = Sealer.from_secret("s3cret")
    ws = connect(url(server), open_timeout=TIMEOUT)
    ws.send(sealer.seal(b'{"req":"hs1","chid":"sealed"}', "hs1"))
    hs2 = json.loads(sealer.open(ws.recv(TIMEOUT).encode(), "hs2"))
    hs3 = json.dumps({"req": "hs3", "challenge": hs2["challenge"]}).encode()
    ws.send(sealer.seal(hs3, "hs3"))
    hs4 = json.loads(sealer.open(ws.recv(TIMEOUT).encode(), "hs4"))
    assert hs4["result"] == "OK" and hs4["chid"] == "sealed"
    ws.close()


def test_framed_websocket_sessions_get_whole_frames_and_talk_to_framed_tcp(relay):
    tcp = Framed(relay, "tcp", ["web"])
    ws, hs4 = ws_join(relay, "web", None, mode="framed")
    assert hs4["mode"] == "framed"
    parser = FrameParser(16 << 20, allow_chid=True)
    ws.send(control_frame({"id": 1, "cmd": "ping"}))
    (reply,) = parser.feed(ws.recv(TIMEOUT))
    assert json.loads(bytes(reply.payload)) == {"id": 1, "ok": True, "pong": True}
    tcp.send(b"one")
    tcp.send(b"two")
    for want in (b"one", b"two"):
        (frame,) = parser.feed(ws.recv(TIMEOUT))  # each message holds whole frames
        assert (frame.kind, frame.chid, bytes(frame.payload)) == (DATA, "tcp", want)
    ws.send(data_frame(b"back"))
    assert tcp.message() == ("web", b"back")
    ws.close()


def test_a_raw_websocket_senders_messages_reach_a_framed_receiver_one_frame_each(relay):
    tcp = Framed(relay, "tcp")
    ws, _ = ws_join(relay, "web", ["tcp"])
    for message in (b"first", b"", b"third"):
        ws.send(message)
    assert [tcp.message() for _ in range(3)] == [("web", b"first"), ("web", b""), ("web", b"third")]
    ws.close()


def test_64_mib_intact_both_ways(relay):
    tcp, _ = handshake(relay, "tcp", ["web"])
    ws, _ = ws_join(relay, "web", ["tcp"])
    up, down = os.urandom(64 << 20), os.urandom(64 << 20)
    got_down = bytearray()

    def receive() -> None:
        while len(got_down) < len(down):
            got_down.extend(ws.recv(TIMEOUT))

    reader = threading.Thread(target=receive)
    reader.start()
    writer = threading.Thread(target=tcp.sock.sendall, args=(down,))
    writer.start()

    def send_up() -> None:  # messages of any size, whatever the chunks the relay reads
        for i in range(0, len(up), 1 << 20):
            ws.send(up[i : i + (1 << 20) - 8])
            ws.send(up[i + (1 << 20) - 8 : i + (1 << 20)])

    uploader = threading.Thread(target=send_up)
    uploader.start()
    assert hashlib.sha256(tcp.recv_exactly(len(up))).digest() == hashlib.sha256(up).digest()
    uploader.join(6 * TIMEOUT)
    writer.join(6 * TIMEOUT)
    reader.join(6 * TIMEOUT)
    assert hashlib.sha256(got_down).digest() == hashlib.sha256(down).digest()
    ws.close()


def test_a_websocket_receiver_that_stops_reading_holds_its_sender_back_then_is_cut(start_server):
    server = start_server("--ws-port", "0", "--slow-receiver-timeout", "2")
    ws = connect(url(server), open_timeout=TIMEOUT, max_queue=1)
    ws.send(json.dumps({"req": "hs1", "chid": "web"}))
    ws.send(json.dumps({"req": "hs3"}))
    ws.recv(TIMEOUT)
    ws.recv(TIMEOUT)
    # The client library stops reading its socket once its queue is full: the relay's
    # queue for it passes the mark and the TCP sender is no longer read.
    tx, _ = handshake(server, "tx", ["web"])
    tx.sock.setblocking(False)
    sent = 0
    block = b"x" * 65536
    deadline = time.monotonic() + 2 * TIMEOUT
    while "slow_receiver" not in "".join(server.lines) and time.monotonic() < deadline:
        try:
            sent += tx.sock.send(block)
        except BlockingIOError:
            time.sleep(0.01)  # nothing to wait on: the relay is holding us back, as it should
    assert 'chid="web"' in server.wait_for_log('session closed.*reason="slow_receiver"').group(0)
    assert sent < 64 << 20, sent  # held back: a few MiB of buffers, not everything we could push
    ws.close()


def test_oversize_messages_bad_origins_and_silent_upgrades_are_refused(start_server):
    server = start_server("--ws-port", "0", "--handshake-timeout", "1", "--max-frame", "65536")
    ws, _ = ws_join(server, "big")
    ws.send(b"x" * (2 << 20))  # over max_frame + 8 (and the line limit); the relay reads it all, discarding
    with pytest.raises(ConnectionClosed) as closed:
        ws.recv(TIMEOUT)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009
    with pytest.raises(InvalidStatus) as refused:
        connect(url(server), origin="https://evil.example", open_timeout=TIMEOUT)
    assert refused.value.response.status_code == 403
    assert b"not allowed" in refused.value.response.body
    # A connection that never upgrades is cut at the handshake timeout...
    port = ws_port(server)
    silent = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
    assert silent.recv(100) == b""
    # ...and a session that never sends hs1 gets FAIL as a text message.
    quiet = connect(url(server), open_timeout=TIMEOUT)
    fail = json.loads(quiet.recv(TIMEOUT))
    assert fail["code"] == "handshake_timeout", fail


def test_an_allowed_origin_and_the_relays_own_page(start_server):
    server = start_server("--ws-port", "0", "--ws-allow-origin", "https://app.example")
    connect(url(server), origin="https://app.example", open_timeout=TIMEOUT).close()
    port = ws_port(server)
    connect(url(server), origin=f"http://127.0.0.1:{port}", open_timeout=TIMEOUT).close()  # same origin
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=TIMEOUT) as page:
        assert page.headers["Content-Type"].startswith("text/html")
        assert "default-src 'self'" in page.headers["Content-Security-Policy"]
        assert b'<script type="module" src="/app.js">' in page.read()
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/forwarding.js", timeout=TIMEOUT) as js:
        assert js.headers["Content-Type"].startswith("text/javascript")
        assert b"export function connect" in js.read()
    with pytest.raises(urllib.error.HTTPError) as missing:
        urllib.request.urlopen(f"http://127.0.0.1:{port}/etc/passwd", timeout=TIMEOUT)
    assert missing.value.code == 404


def test_wss_with_the_relays_certificate_talks_to_tls_tcp_sessions(start_server, pki_paths):
    server = start_server("--ws-port", "0", "--tls-cert", pki_paths["cert"], "--tls-key", pki_paths["key"])
    assert "wss://" in server.wait_for_log("listening for WebSockets.*").group(0)
    context = ssl.create_default_context(cafile=pki_paths["ca"])
    tls = context.wrap_socket(socket.create_connection(server.address, timeout=TIMEOUT), server_hostname="localhost")
    tls.sendall(b'{"req":"hs1","chid":"tcp"}\n{"req":"hs3","recvers":["web"]}\n')
    got = b""
    while got.count(b"\n") < 2:
        got += tls.recv(4096)
    ws = connect(f"wss://localhost:{ws_port(server)}/ws", ssl=context, open_timeout=TIMEOUT)
    ws.send(json.dumps({"req": "hs1", "chid": "web"}))
    ws.send(json.dumps({"req": "hs3", "recvers": ["tcp"]}))
    assert json.loads(ws.recv(TIMEOUT))["rsp"] == "hs2"
    assert json.loads(ws.recv(TIMEOUT))["result"] == "OK"
    ws.send(b"sealed by TLS both ways")
    assert tls.recv(100) == b"sealed by TLS both ways"
    tls.sendall(b"and back")
    assert ws.recv(TIMEOUT) == b"and back"
    ws.close()
    tls.close()


def upgraded_socket(server: ServerProcess) -> socket.socket:
    """A plain socket past the WebSocket upgrade: for clients that break the rules websockets keeps."""
    port = ws_port(server)
    sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
    sock.sendall(
        f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
    )
    head = b""
    while b"\r\n\r\n" not in head:
        head += sock.recv(4096)
    assert head.startswith(b"HTTP/1.1 101") and head.endswith(b"\r\n\r\n"), head
    return sock


def masked_binary_header(n: int) -> bytes:
    """A client's final binary frame header announcing n bytes, masked with a zero key (RFC 6455, 5.2)."""
    return b"\x82\xff" + n.to_bytes(8, "big") + b"\0\0\0\0"


def test_an_oversize_message_gets_1009_and_the_relay_reads_on_until_the_client_closes(start_server):
    """Closing with the client's bytes unread would reset the connection, and a reset can destroy
    the 1009 close frame before the client reads it (CI saw websockets' client lose it)."""
    server = start_server("--ws-port", "0", "--max-frame", "65536")
    sock = upgraded_socket(server)
    sock.sendall(masked_binary_header(64 << 20))
    chunk = b"x" * (1 << 20)
    for _ in range(16):  # more than loopback's buffers hold: the relay must read it to take it all
        sock.sendall(chunk)
    sock.shutdown(socket.SHUT_WR)
    got = b""
    while True:
        part = sock.recv(65536)
        if not part:
            break
        got += part
    assert got[:1] == b"\x88" and struct.unpack("!H", got[2:4])[0] == 1009, got[:40]
    assert 'reason="frame_error"' in server.wait_for_log(r"session closed.*").group(0)
    sock.close()


def test_a_client_that_sends_on_after_1009_is_cut_at_the_close_timeout(start_server):
    server = start_server("--ws-port", "0", "--max-frame", "65536", "--close-timeout", "1")
    sock = upgraded_socket(server)
    sock.sendall(masked_binary_header(1 << 40))
    sock.settimeout(0.2)
    deadline = time.monotonic() + TIMEOUT
    cut = None
    while time.monotonic() < deadline:
        try:
            sock.sendall(b"x" * 65536)
        except TimeoutError:
            pass  # the relay is slower than us; it still reads
        except OSError as exc:
            cut = exc
            break
    assert isinstance(cut, (ConnectionResetError, BrokenPipeError)), cut
    sock.close()


@pytest.mark.parametrize("mode", ["raw", "framed"])
def test_a_client_that_closes_gets_the_relays_answering_close_frame(relay, mode):
    """RFC 6455, 5.5.1: the close handshake completes; a browser would otherwise see 1006, not clean."""
    ws, _ = ws_join(relay, "leaving", None, mode=mode)
    ws.close(1001, "page hidden")
    assert ws.protocol.close_rcvd is not None, "no close frame in answer"
    assert ws.protocol.close_rcvd.code == 1001
    assert 'reason="client_closed"' in relay.closed_line("leaving")


def test_a_client_that_pings_and_never_reads_the_pongs_is_cut_off(relay):
    """Pongs answer pings: a client that pings and never reads fills its own queue, and past the mark it goes."""
    sock = upgraded_socket(relay)
    payload = os.urandom(125)
    ping = bytes([0x89, 0x80 | 125]) + b"\0\0\0\0" + payload  # masked with a zero key
    burst = ping * 512
    sock.setblocking(False)
    sent = 0
    base = relay.rss_kib()
    while sent < 512 << 20:
        _, writable, _ = select.select([], [sock], [], 2.0)
        if not writable:
            break  # the relay stopped reading us: our socket stays full
        try:
            sent += sock.send(burst)
        except BlockingIOError:
            continue
        except OSError:  # reset: cut off
            break
    assert sent < 128 << 20, f"the relay read {sent >> 20} MiB of pings without our reading a pong"
    assert relay.rss_kib() - base < 64 << 10
    closed = relay.wait_for_log("session closed.*").group(0)
    assert "pings while not reading the answers" in closed
    # What was queued for it when it was cut, counted once (each ping after the cut once added it again).
    dropped = int(closed.split(" dropped=")[1].split()[0])
    assert dropped <= sent, (dropped, sent)
    sock.close()


def test_a_websocket_client_that_is_killed_leaves_and_its_tcp_peer_hears_the_end(relay):
    tcp, _ = handshake(relay, "tcp", ["web"])
    ws, _ = ws_join(relay, "web", ["tcp"])
    ws.send(b"last words")
    assert tcp.recv_exactly(10) == b"last words"
    ws.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    ws.socket.close()  # RST, no close frame: as a killed browser
    assert tcp.recv_until_eof() == b""  # its only sender left: FIN (docs/protocol.md, 5.1)
    assert relay.closed_line("web").split('reason="')[1].split('"')[0] in ("reset", "client_closed")


def test_sigterm_ends_websocket_sessions_with_a_close_frame(relay):
    ws, _ = ws_join(relay, "web", None, mode="framed")
    relay.proc.terminate()
    parser = FrameParser(1 << 20, allow_chid=True)
    (event,) = parser.feed(ws.recv(TIMEOUT))
    assert json.loads(bytes(event.payload))["code"] == "shutdown"
    with pytest.raises(ConnectionClosed) as closed:
        ws.recv(TIMEOUT)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1000
    assert relay.proc.wait(TIMEOUT) == 0
