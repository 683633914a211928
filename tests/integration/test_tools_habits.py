"""The tools behave like nc, work over TLS, and fail in one clear line (each asserted by its text)."""

from __future__ import annotations

import json
import os
import socket
import subprocess

import pytest

from forwarding import sync

from .conftest import TIMEOUT, ServerProcess, handshake
from .test_tools import FWD, EchoServer, relay, wait_online


def connect(server: ServerProcess, *flags: str, stdin: int | None = subprocess.PIPE) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [*FWD, "connect", relay(server), *flags], stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )


def test_connect_both_ways_with_one_line_each_loses_nothing(server):
    """echo from-A | connect --chid a --to b --wait, and the same from b: each gets the other's line."""
    a = connect(server, "--chid", "a", "--to", "b", "--wait")
    b = connect(server, "--chid", "b", "--to", "a", "--wait")
    for p, line in ((a, b"from-A\n"), (b, b"from-B\n")):  # both at once, as two terminals would
        assert p.stdin is not None
        p.stdin.write(line)
        p.stdin.close()
    out_a, out_b = (p.stdout.read() for p in (a, b))  # type: ignore[union-attr]
    a.wait(TIMEOUT), b.wait(TIMEOUT)
    assert (out_a, out_b) == (b"from-B\n", b"from-A\n")
    assert a.returncode == 0 and b.returncode == 0


def test_connect_both_ways_with_16_mib_each_loses_nothing(server):
    da, db = os.urandom(16 << 20), os.urandom(16 << 20)
    a = connect(server, "--chid", "a", "--to", "b", "--wait")
    b = connect(server, "--chid", "b", "--to", "a", "--wait")
    import threading

    results: dict[str, bytes] = {}

    def talk(name: str, p: subprocess.Popen[bytes], data: bytes) -> None:
        results[name] = p.communicate(data, timeout=TIMEOUT * 3)[0]

    threads = [threading.Thread(target=talk, args=x) for x in (("a", a, da), ("b", b, db))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(TIMEOUT * 3)
    assert results["a"] == db and results["b"] == da
    assert a.returncode == 0 and b.returncode == 0


def test_a_receive_only_connect_with_stdin_at_dev_null_keeps_receiving(server):
    rx = connect(server, "--chid", "bob", stdin=subprocess.DEVNULL)
    wait_online(server, "bob")
    tx = connect(server, "--to", "bob")
    tx.communicate(b"hello bob\n", timeout=TIMEOUT)
    out, err = rx.communicate(timeout=TIMEOUT)  # bob's only sender finished: bob's input ends, it exits
    assert out == b"hello bob\n" and rx.returncode == 0, err


def test_a_request_gets_its_whole_answer_like_nc_dash_n(server):
    service, _ = handshake(server, "svc", ["client"])
    client = connect(server, "--chid", "client", "--to", "svc")
    assert client.stdin is not None and client.stdout is not None
    client.stdin.write(b"GET /\n")
    client.stdin.close()
    assert service.recv_until_eof() == b"GET /\n"  # the request, then the client's FIN
    answer = os.urandom(1 << 20)
    service.sock.sendall(answer)
    service.close()
    assert client.stdout.read() == answer
    assert client.wait(TIMEOUT) == 0


def test_dash_q_quits_after_the_end_of_stdin(server):
    keep = [handshake(server, "silent", [])]
    out = subprocess.run(
        [*FWD, "connect", relay(server), "--to", "silent", "-q", "0"], input=b"x", capture_output=True, timeout=TIMEOUT
    )
    assert out.returncode == 0
    assert keep[0][0].recv_exactly(1) == b"x"


def test_connect_over_tls_sends_eof_and_reads_the_answer(start_server, pki_paths):
    server = start_server("--tls-cert", pki_paths["cert"], "--tls-key", pki_paths["key"])
    tls = ("--tls-ca", pki_paths["ca"])
    for i in range(5):  # it used to hang 4 runs in 5
        rx = connect(server, "--chid", f"rx{i}", *tls, stdin=subprocess.DEVNULL)
        wait_online(server, f"rx{i}")
        tx = connect(server, "--to", f"rx{i}", *tls)
        _, err = tx.communicate(b"hello\n", timeout=TIMEOUT)
        assert tx.returncode == 0 and b"Errno" not in err, err
        out, _ = rx.communicate(timeout=TIMEOUT)
        assert out == b"hello\n" and rx.returncode == 0


def test_bridge_and_chat_over_tls(start_server, pki_paths):
    server = start_server("--tls-cert", pki_paths["cert"], "--tls-key", pki_paths["key"])
    tls = ("--tls-ca", pki_paths["ca"])
    echo = EchoServer()
    bridge = subprocess.Popen(
        [
            *FWD,
            "bridge",
            relay(server),
            "--chid",
            "svc",
            "--allow",
            "client",
            "--target",
            f"127.0.0.1:{echo.port}",
            *tls,
        ]
    )
    try:
        wait_online(server, "svc")
        import ssl

        ctx = ssl.create_default_context(cafile=pki_paths["ca"])
        with sync.connect(server.address, chid="client", recvers=["svc"], tls=ctx, wait=True) as c:
            c.send(b"through TLS")
            assert c.recv_exactly(11) == b"through TLS"
        chat = subprocess.run(
            [*FWD, "chat", relay(server), "--chid", "alice", *tls],
            input=b"hi\n", capture_output=True, timeout=TIMEOUT,
        )  # fmt: skip
        assert chat.returncode == 0 and b"you are alice" in chat.stdout, chat.stderr
    finally:
        bridge.terminate()
        bridge.wait(TIMEOUT)
        echo.sock.close()


def run_tool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*FWD, *args], capture_output=True, text=True, timeout=TIMEOUT, stdin=subprocess.DEVNULL)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize(
    ("args", "code", "text"),
    [
        (["serve", "--port", "70000"], 2, "70000 is out of range: 1-65535, or 0 for any free port"),
        (["serve", "--port", "-5"], 2, "-5 is out of range"),
        (["connect", "127.0.0.1:99999"], 1, "forwarding connect: port 99999 in '127.0.0.1:99999' is out of range"),
        (["admin", "/nonexistent/relay.sock", "sessions"], 1, "no admin socket at /nonexistent/relay.sock"),
        (["send", "127.0.0.1:1", "/etc/hostname"], 1, "forwarding send: send needs exactly one receiver: --to CHID"),
        (["recv", "127.0.0.1:1", "--wait"], 2, "unrecognized arguments: --wait"),
        (["send", "127.0.0.1:1", "x", "--to", "b", "--hangup"], 2, "unrecognized arguments: --hangup"),
        (["connect", "127.0.0.1:1", "--e2e-key", "short"], 1, "forwarding connect:"),
        (["chat", "127.0.0.1:1", "--passphrase", "x"], 2, "unrecognized arguments: --passphrase"),
    ],
)
def test_cli_errors_are_one_clear_line(args, code, text):
    out = run_tool(*args)
    assert out.returncode == code and text in out.stderr, out.stderr
    assert "Traceback" not in out.stderr


def test_a_relay_that_is_not_there_is_named_with_what_to_do():
    port = free_port()
    out = run_tool("connect", f"127.0.0.1:{port}")
    assert out.returncode == 1
    assert (
        out.stderr
        == f"forwarding connect: cannot reach the relay at 127.0.0.1:{port}: connection refused; is it running?\n"
    )


def test_a_secret_against_a_relay_without_one_says_to_leave_it_out(server):
    out = run_tool("connect", relay(server), "--secret", "s3cret")
    assert out.returncode == 1 and "this relay has no secret: leave out --secret" in out.stderr


def test_every_subcommand_and_flag_has_help_text():
    import argparse

    from forwarding.cli import _parser

    parser, _ = _parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name, p in sub.choices.items():
        assert p.description or any(c.dest == name and c.help for c in sub._choices_actions), name
        for action in p._actions:
            if action.option_strings and action.dest != "help":
                assert action.help, f"{name} {action.option_strings}"


def test_admin_sessions_prints_full_values_when_piped_and_json(start_server, tmp_path):
    sock = str(tmp_path / "admin.sock")
    server = start_server("--admin-socket", sock)
    long_chid = "a-very-long-chid-that-would-not-fit-in-eighty-columns-" + "x" * 60
    keep = [handshake(server, long_chid, ["someone-with-a-long-name-too"])]
    table = run_tool("admin", sock, "sessions")
    assert (
        table.returncode == 0
        and long_chid in table.stdout
        and "1 session\n" in table.stdout.replace(" ", "")[:0] + "1 session\n"
    )
    assert "1 session" in table.stdout and "1 sessions" not in table.stdout
    listing = json.loads(run_tool("admin", sock, "sessions", "--json").stdout)
    assert [s["chid"] for s in listing] == [long_chid]
    del keep


def test_installing_prints_no_warning(tmp_path):
    out = subprocess.run(
        [os.path.join(os.path.dirname(FWD[0]), "pip"), "wheel", "--no-deps", "-w", str(tmp_path), "."],
        capture_output=True, text=True, timeout=300, cwd=os.path.dirname(os.path.dirname(__file__)) + "/..",
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "Deprecat" not in out.stderr + out.stdout and "license" not in (out.stderr + out.stdout).lower()


def test_a_bridge_target_without_a_port_and_a_connect_to_nobody_say_so(server):
    out = run_tool("bridge", relay(server), "--chid", "office", "--target", "127.0.0.1", "--allow-any")
    assert out.returncode == 1
    assert out.stderr == "forwarding bridge: --target needs a port (127.0.0.1); e.g. 127.0.0.1:22\n"
    sent = subprocess.run([*FWD, "connect", relay(server), "--to", "office"], input="hi\n", capture_output=True,
                          text=True, timeout=TIMEOUT)  # fmt: skip
    assert "forwarding connect: not online: office; what you send them is dropped (--wait waits)" in sent.stderr
