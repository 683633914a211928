"""send and recv tell the truth: 0 only when the receiver confirmed, one clear line otherwise."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import pytest

from .conftest import TIMEOUT, ServerProcess
from .test_tools import E2E_KEY, FWD, relay, wait_online


def make_file(path, mib: int) -> bytes:
    data = os.urandom(mib << 20)
    path.write_bytes(data)
    return data


def recv(server: ServerProcess, cwd, *extra: str, chid: str = "bob") -> subprocess.Popen[str]:
    p = subprocess.Popen(
        [*FWD, "recv", relay(server), "--chid", chid, "--no-progress", *extra],
        cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    wait_online(server, chid)
    return p


def send(server: ServerProcess, path, *extra: str, to: str = "bob") -> subprocess.Popen[str]:
    return subprocess.Popen(
        [*FWD, "send", relay(server), str(path), "--to", to, "--no-progress", *extra],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def finish(p: subprocess.Popen[str]) -> tuple[int, str]:
    _, err = p.communicate(timeout=TIMEOUT * 3)
    return p.returncode, err


def test_a_confirmed_transfer_exits_0_on_both_sides(server, tmp_path):
    data = make_file(tmp_path / "photo.jpg", 8)
    out = tmp_path / "in"
    out.mkdir()
    r = recv(server, out)
    code, err = finish(send(server, tmp_path / "photo.jpg"))
    assert code == 0, err
    assert "bob has" in err and "photo.jpg" in err
    assert finish(r)[0] == 0
    assert (out / "photo.jpg").read_bytes() == data


def test_an_interrupted_receiver_makes_send_fail_and_say_so(server, tmp_path):
    make_file(tmp_path / "big.bin", 256)
    r = recv(server, tmp_path, "-o", str(tmp_path / "got.bin"))
    r.send_signal(signal.SIGSTOP)  # it stops reading: the transfer backs up
    s = send(server, tmp_path / "big.bin")
    server.wait_for_log(r'session open chid="[^"]+" .*recvers="bob"')
    time.sleep(0.5)  # let bytes pile up (any amount will do: the check is on the exit)
    r.kill()
    r.wait(TIMEOUT)
    code, err = finish(s)
    assert code == 1
    assert "forwarding send: bob left after" in err and "of 268 MB" in err and "without confirming" in err


def test_an_interrupted_sender_makes_recv_fail_and_remove_the_part_file(server, tmp_path):
    make_file(tmp_path / "big.bin", 256)
    r = recv(server, tmp_path, "-o", str(tmp_path / "got.bin"))
    s = send(server, tmp_path / "big.bin")
    deadline = time.monotonic() + TIMEOUT
    while not (tmp_path / "got.bin.part").exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    s.send_signal(signal.SIGINT)  # Ctrl-C
    assert finish(s)[0] == 130
    code, err = finish(r)
    assert code == 1 and "left after" in err and "of 268 MB" in err, err
    assert not (tmp_path / "got.bin.part").exists() and not (tmp_path / "got.bin").exists()


def test_a_wrong_passphrase_fails_on_both_sides(server, tmp_path):
    make_file(tmp_path / "x.bin", 1)
    out = tmp_path / "in"
    out.mkdir()
    r = recv(server, out, "--passphrase", "right")
    code, err = finish(send(server, tmp_path / "x.bin", "--passphrase", "wrong"))
    assert code == 1
    assert "does not open with our key" in err, err
    rcode, rerr = finish(r)
    assert rcode == 1 and "end-to-end check" in rerr and os.listdir(out) == []


def test_an_unwritable_output_is_reported_to_the_sender(server, tmp_path):
    make_file(tmp_path / "x.bin", 1)
    r = recv(server, tmp_path, "-o", "nodir/x.bin")
    code, err = finish(send(server, tmp_path / "x.bin"))
    assert code == 1
    assert "bob refused the transfer: could not write nodir/x.bin: No such file or directory" in err, err
    rcode, rerr = finish(r)
    assert rcode == 1 and "forwarding recv: cannot write nodir/x.bin: No such file or directory" in rerr


def test_an_existing_file_is_never_overwritten_without_force(server, tmp_path):
    make_file(tmp_path / "x.bin", 1)
    out = tmp_path / "in"
    out.mkdir()
    (out / "x.bin").write_bytes(b"precious")
    r = recv(server, out)
    code, err = finish(send(server, tmp_path / "x.bin"))
    assert code == 1 and "x.bin exists there" in err
    assert finish(r)[0] == 1 and (out / "x.bin").read_bytes() == b"precious"
    r = recv(server, out, "--force")
    assert finish(send(server, tmp_path / "x.bin"))[0] == 0
    assert finish(r)[0] == 0 and (out / "x.bin").read_bytes() == (tmp_path / "x.bin").read_bytes()


def test_the_senders_name_is_only_a_suggestion(server, tmp_path):
    src = tmp_path / ".bashrc"
    src.write_bytes(b"alias ls=rm")
    out = tmp_path / "in"
    out.mkdir()
    r = recv(server, out)
    assert finish(send(server, src))[0] == 0
    assert finish(r)[0] == 0
    assert os.listdir(out) == ["received.bin"]  # no dot files, no paths


def test_send_waits_longer_than_the_relays_handshake_timeout(start_server, tmp_path):
    server = start_server("--handshake-timeout", "0.5")
    make_file(tmp_path / "x.bin", 1)
    s = send(server, tmp_path / "x.bin")
    server.wait_for_count(r'reason="wait_timeout"', 3)  # three of the relay's waits ran out
    r = recv(server, tmp_path, "-o", str(tmp_path / "got.bin"))
    code, err = finish(s)
    assert code == 0 and "waiting for bob to come online" in err, err
    assert finish(r)[0] == 0


def test_send_gives_up_after_wait_timeout_with_the_relays_reason(start_server, tmp_path):
    server = start_server("--handshake-timeout", "0.3")
    make_file(tmp_path / "x.bin", 1)
    code, err = finish(send(server, tmp_path / "x.bin", "--wait-timeout", "1"))
    assert code == 1
    assert "forwarding send: recvers not online after 0.3 s: bob (gave up after --wait-timeout 1 s)" in err


@pytest.mark.parametrize("e2e", [[], ["--e2e-key", E2E_KEY]])
def test_send_and_recv_over_tls(start_server, pki_paths, tmp_path, e2e):
    server = start_server("--tls-cert", pki_paths["cert"], "--tls-key", pki_paths["key"])
    data = make_file(tmp_path / "x.bin", 16)
    tls = ["--tls-ca", pki_paths["ca"]]
    r = recv(server, tmp_path, "-o", str(tmp_path / "got.bin"), *tls, *e2e)
    code, err = finish(send(server, tmp_path / "x.bin", *tls, *e2e))
    assert code == 0, err
    assert "Errno" not in err
    assert finish(r)[0] == 0 and (tmp_path / "got.bin").read_bytes() == data


def test_sending_a_directory_or_a_missing_file_says_what_to_do(server, tmp_path):
    code, err = finish(send(server, tmp_path))
    assert code == 1 and "is a directory; send one file" in err
    code, err = finish(send(server, tmp_path / "missing.bin"))
    assert code == 1 and f"forwarding send: No such file or directory ({tmp_path / 'missing.bin'})" in err


def test_the_documented_transfer_vector(server, tmp_path):
    """docs/protocol.md 10.2: a raw client that speaks the vector gets the documented answer."""
    import json
    import re
    from pathlib import Path

    from forwarding import sync

    doc = (Path(__file__).parents[2] / "docs" / "protocol.md").read_text()
    v = json.loads(re.search(r"<!-- vectors:transfer-v2 -->\s*```json\n(.*?)```", doc, re.S).group(1))
    r = recv(server, tmp_path)
    with sync.connect(server.address, recvers=["bob"], wait=True, hangup=True) as sender:
        sender.send(bytes.fromhex(v["stream_hex"]))
        answer = b""
        while not answer.endswith(b"\n"):
            answer += sender.recv()
    assert answer == v["answer"].encode() + b"\n"
    assert finish(r)[0] == 0
    assert (tmp_path / v["name"]).read_text() == v["content"]
