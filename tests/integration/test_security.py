"""The encrypted handshake, TLS and connection limits against the real server."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import socket
import ssl
import subprocess
import sys
import threading

import pytest

import forwarding
from forwarding import sync
from forwarding.protocol.sealing import Sealer

from .certs import CA
from .conftest import TIMEOUT, Client, handshake

SECRET = "test-secret-0123456789"


@pytest.fixture(scope="module")
def sealer() -> Sealer:
    return Sealer.from_secret(SECRET)


def sealed_handshake(server, sealer, chid, recvers, client=None):
    """A full sealed handshake; returns the client, hs4, and the raw lines it sent."""
    c = client or Client(server.address)
    hs1 = sealer.seal(json.dumps({"req": "hs1", "chid": chid}).encode(), "hs1")
    c.send_line(hs1)
    hs2 = json.loads(sealer.open(c.read_raw_line(), "hs2"))
    assert hs2["rsp"] == "hs2" and len(hs2["challenge"]) == 32
    hs3 = sealer.seal(json.dumps({"req": "hs3", "recvers": recvers, "challenge": hs2["challenge"]}).encode(), "hs3")
    c.send_line(hs3)
    hs4 = json.loads(sealer.open(c.read_raw_line(), "hs4"))
    return c, hs4, (hs1, hs3)


def plain_fail(c: Client) -> str:
    line = c.read_raw_line()
    assert line.startswith(b"{"), line
    reply = json.loads(line)
    assert reply["result"] == "FAIL"
    c.assert_closed()
    return reply["desc"]


def sealed_fail(c: Client, sealer: Sealer) -> str:
    reply = json.loads(sealer.open(c.read_raw_line(), "hs4"))
    assert reply["result"] == "FAIL"
    c.assert_closed()
    return reply["desc"]


@pytest.fixture
def sealed_server(start_server):
    return start_server("--secret", SECRET)


def test_sealed_handshake_and_data(sealed_server, sealer):
    a, hs4, _ = sealed_handshake(sealed_server, sealer, "a", ["b"])
    assert hs4["result"] == "OK"
    b, hs4, _ = sealed_handshake(sealed_server, sealer, "b", ["a"])
    assert hs4["online"] == ["a"]
    a.sock.sendall(b"payload is not sealed by the relay")
    assert b.recv_exactly(34) == b"payload is not sealed by the relay"


def test_wrong_secret_gets_a_plain_fail(sealed_server):
    c = Client(sealed_server.address)
    c.send_line(Sealer.from_secret("wrong").seal(b'{"req":"hs1"}', "hs1"))
    assert "wrong secret" in plain_fail(c)


def test_plain_json_against_a_secret_gets_a_plain_fail(sealed_server):
    c = Client(sealed_server.address)
    c.send_json({"req": "hs1", "chid": "a"})
    assert "not sealed" in plain_fail(c)
    sealed_server.wait_for_log(r"reason=\"handshake_failed\"")


def test_a_tampered_byte_fails(sealed_server, sealer):
    c = Client(sealed_server.address)
    line = bytearray(sealer.seal(b'{"req":"hs1","chid":"t"}', "hs1"))
    line[30] = ord("A") if line[30] != ord("A") else ord("B")
    c.send_line(bytes(line))
    assert "tampered" in plain_fail(c)


def test_a_recorded_hs3_replayed_on_a_new_connection_fails(sealed_server, sealer):
    first, _, (hs1, hs3) = sealed_handshake(sealed_server, sealer, "victim", ["x"])
    first.close()
    sealed_server.closed_line("victim")
    replay = Client(sealed_server.address)
    replay.send_line(hs1)
    replay.read_raw_line()  # a fresh hs2, with a fresh challenge the attacker cannot read
    replay.send_line(hs3)
    assert "challenge does not match" in sealed_fail(replay, sealer)
    # And the chid was never registered by the replay.
    again, hs4, _ = sealed_handshake(sealed_server, sealer, "victim", [])
    assert hs4["result"] == "OK"


def test_hs2_reflected_back_as_hs3_fails(sealed_server, sealer):
    c = Client(sealed_server.address)
    c.send_line(sealer.seal(b'{"req":"hs1","chid":"r"}', "hs1"))
    hs2_line = c.read_raw_line()
    c.send_line(hs2_line)  # sealed with associated data "hs2", so it cannot open as hs3
    assert "cannot open the sealed hs3 line" in sealed_fail(c, sealer)


def test_secret_from_environment_and_config_file(start_server, sealer, tmp_path):
    from_env = start_server(env={"FORWARDING_SECRET": SECRET})
    c, hs4, _ = sealed_handshake(from_env, sealer, "env", [])
    assert hs4["result"] == "OK"
    config = tmp_path / "relay.toml"
    config.write_text(f'secret = "{SECRET}"\nhandshake-timeout = 7\n')
    from_file = start_server("--config", str(config))
    c, hs4, _ = sealed_handshake(from_file, sealer, "file", [])
    assert hs4["result"] == "OK"
    assert SECRET not in " ".join(from_file.proc.args)


def test_config_file_with_an_unknown_key_is_refused(tmp_path):
    config = tmp_path / "bad.toml"
    config.write_text("no-such-flag = 1\n")
    out = subprocess.run(
        [sys.executable, "-m", "forwarding", "serve", "--config", str(config)], capture_output=True, text=True
    )
    assert out.returncode != 0 and "unknown setting 'no-such-flag'" in out.stderr


def test_keygen_prints_a_256_bit_secret():
    out = subprocess.run([sys.executable, "-m", "forwarding", "keygen"], capture_output=True, text=True, check=True)
    secret = out.stdout.strip()
    assert len(secret) == 43
    import base64

    assert len(base64.urlsafe_b64decode(secret + "=")) == 32


# -- TLS --------------------------------------------------------------------


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    d = tmp_path_factory.mktemp("pki")
    ca, other = CA(d, "ca"), CA(d, "other-ca")
    return {
        "ca": ca,
        "server": ca.issue("server", server=True),
        "client": ca.issue("client", server=False),
        "stranger": other.issue("stranger", server=False),
    }


def tls_client(server, pki, cert=None) -> Client:
    ctx = ssl.create_default_context(cafile=str(pki["ca"].pair.cert))
    if cert is not None:
        ctx.load_cert_chain(str(cert.cert), str(cert.key))
    raw = socket.create_connection(server.address, timeout=TIMEOUT)
    return Client(server.address, sock=ctx.wrap_socket(raw, server_hostname="localhost"))


def tls_handshake(server, pki, chid, recvers, cert=None):
    c = tls_client(server, pki, cert)
    c.send_json({"req": "hs1", "chid": chid})
    assert c.read_line()["rsp"] == "hs2"
    c.send_json({"req": "hs3", "recvers": recvers})
    assert c.read_line()["result"] == "OK"
    return c


def test_tls_listener(start_server, pki):
    server = start_server("--tls-cert", str(pki["server"].cert), "--tls-key", str(pki["server"].key))
    a = tls_handshake(server, pki, "ta", ["tb"])
    b = tls_handshake(server, pki, "tb", ["ta"])
    assert a.sock.version() in ("TLSv1.2", "TLSv1.3")
    a.sock.sendall(b"over tls")
    assert b.recv_exactly(8) == b"over tls"
    # A plain-TCP client gets no service.
    plain = Client(server.address)
    plain.send_json({"req": "hs1"})
    plain.assert_closed()


def test_tls_client_certificates(start_server, pki):
    server = start_server(
        "--tls-cert", str(pki["server"].cert), "--tls-key", str(pki["server"].key),
        "--tls-client-ca", str(pki["ca"].pair.cert),
    )  # fmt: skip
    ok = tls_handshake(server, pki, "certified", [], cert=pki["client"])
    assert ok.sock.version()
    for cert in (None, pki["stranger"]):
        with pytest.raises((ssl.SSLError, ConnectionError, EOFError)):
            # TLS 1.3 reports a refused client certificate on the first read.
            tls_handshake(server, pki, "anon", [], cert=cert)
    server.wait_for_count(r"session closed .*reason=\"tls_failed\"", 2)
    # A failed TLS handshake must not disturb the next one.
    again = tls_handshake(server, pki, "certified-again", [], cert=pki["client"])
    assert again.sock.version()


def test_tls_and_secret_together(start_server, pki, sealer):
    server = start_server(
        "--tls-cert", str(pki["server"].cert), "--tls-key", str(pki["server"].key), "--secret", SECRET
    )
    c, hs4, _ = sealed_handshake(server, sealer, "both", [], client=tls_client(server, pki))
    assert hs4["result"] == "OK"


# -- limits -----------------------------------------------------------------


def bound_client(server, source: str) -> Client:
    sock = socket.create_connection(server.address, timeout=TIMEOUT, source_address=(source, 0))
    return Client(server.address, sock=sock)


def test_max_connections(start_server):
    server = start_server("--max-connections", "3")
    held = [Client(server.address) for _ in range(3)]
    server.wait_for_count("", 1)
    extra = Client(server.address)
    assert "at its limit of 3 connections" in plain_fail(extra)
    server.wait_for_log(r"reason=\"refused\"")
    held[0].close()
    server.wait_for_log(r"reason=\"handshake_abandoned\"")
    c, _ = handshake(server, "after", [])


def test_max_connections_per_ip_spares_other_addresses(start_server):
    server = start_server("--max-connections-per-ip", "2")
    held = [bound_client(server, "127.0.0.1") for _ in range(2)]
    assert "too many connections from 127.0.0.1 (limit 2)" in plain_fail(bound_client(server, "127.0.0.1"))
    other = bound_client(server, "127.0.0.2")
    other.send_json({"req": "hs1"})
    assert other.read_line()["rsp"] == "hs2"
    assert len(held) == 2


def test_handshake_rate_per_source_and_others_keep_working_during_a_flood(start_server):
    server = start_server("--handshake-rate", "1", "--handshake-burst", "5")
    rx = bound_client(server, "127.0.0.2")
    rx.send_json({"req": "hs1", "chid": "calm-rx"})
    rx.read_line()
    rx.send_json({"req": "hs3"})
    assert rx.read_line()["result"] == "OK"
    refused = [0]

    def flood() -> None:
        for _ in range(200):
            c = bound_client(server, "127.0.0.1")
            try:
                c.send_json({"req": "hs1"})  # admitted: hs2; refused: FAIL
                line = c.read_raw_line()
                if b"per second" in line:
                    refused[0] += 1
            except (EOFError, ConnectionError, TimeoutError):
                pass
            c.close()

    flooder = threading.Thread(target=flood)
    flooder.start()
    tx = bound_client(server, "127.0.0.3")
    tx.send_json({"req": "hs1", "chid": "calm-tx"})
    tx.read_line()
    tx.send_json({"req": "hs3", "recvers": ["calm-rx"]})
    assert tx.read_line()["result"] == "OK"
    for i in range(50):
        tx.sock.sendall(b"%d;" % i)
    expected = b"".join(b"%d;" % i for i in range(50))
    assert rx.recv_exactly(len(expected)) == expected
    flooder.join(TIMEOUT * 3)
    # The burst of 5 (plus what refilled at 1/s) got through; the rest were refused.
    assert refused[0] >= 190
    # ... and the log holds at most 10 refusal lines a second, the rest summed up.
    assert server.stop() == 0
    lines = [line for line in server.lines if 'reason="refused"' in line]
    counts = [re.search(r"handshake closes not logged count=(\d+)", line) for line in server.lines]
    unlogged = sum(int(m.group(1)) for m in counts if m)
    assert len(lines) + unlogged >= refused[0]
    assert len(lines) <= 10 * 6, f"{len(lines)} refusal lines"  # the flood lasts a few seconds at most
    assert unlogged > 0


def test_a_reload_rotates_the_secret_without_dropping_sessions(start_server, tmp_path):
    config = tmp_path / "relay.toml"
    config.write_text('secret = "old secret"\n')
    server = start_server("--config", str(config))
    rx = sync.connect(server.address, chid="rx", secret="old secret")
    tx = sync.connect(server.address, chid="tx", recvers=["rx"], secret="old secret")
    config.write_text('secret = "new secret"\n')
    server.proc.send_signal(signal.SIGHUP)
    server.wait_for_log(r"reloaded changed=\"secret\"")
    with pytest.raises(forwarding.WrongSecret):
        sync.connect(server.address, secret="old secret")
    tx.send(b"still up")  # sessions from before the rotation go on
    assert rx.recv_exactly(8) == b"still up"
    with sync.connect(server.address, recvers=["rx"], secret="new secret") as newcomer:
        newcomer.send(b"new key")
        assert rx.recv_exactly(7) == b"new key"


def test_framed_sessions_over_tls(start_server, pki):
    """Framed writes (header and payload together) go through the TLS layer intact."""
    server = start_server("--tls-cert", str(pki["server"].cert), "--tls-key", str(pki["server"].key))
    ctx = ssl.create_default_context(cafile=str(pki["ca"].pair.cert))
    addr = f"localhost:{server.port}"

    async def main() -> None:
        async with forwarding.connect_framed(addr, chid="tls-rx", tls=ctx) as rx:
            async with forwarding.connect_framed(addr, chid="tls-tx", recvers=["tls-rx"], tls=ctx) as tx:
                payloads = [b"a", b"b" * 100_000, b""]
                for p in payloads:
                    await tx.send(p)
                assert [await rx.recv() for _ in payloads] == [("tls-tx", p) for p in payloads]

    asyncio.run(asyncio.wait_for(main(), TIMEOUT))


def test_a_reload_that_fails_changes_nothing(start_server, pki, tmp_path):
    """A missing certificate used to be reported as a failed reload after the new limits were live."""
    config = tmp_path / "relay.toml"
    tls = f'tls-cert = "{pki["server"].cert}"\ntls-key = "{pki["server"].key}"\n'
    config.write_text("idle-timeout = 100\n" + tls)
    server = start_server("--config", str(config))
    config.write_text(f'idle-timeout = 200\ntls-cert = "{tmp_path / "gone.pem"}"\ntls-key = "{pki["server"].key}"\n')
    server.proc.send_signal(signal.SIGHUP)
    server.wait_for_log(r"reload failed")
    c = tls_client(server, pki)
    c.send_json({"req": "hs1"})
    c.read_line()
    c.send_json({"req": "hs3"})
    assert c.read_line()["timeout"] == 100  # the old limits, and the old certificate
