"""A handshake suspended at hs3 in one process and resumed in another (serve --workers, server/handoff.py)."""

import asyncio
import json
import os
import resource
import socket
from types import SimpleNamespace

import pytest

from forwarding.protocol.client import ClientHandshake
from forwarding.protocol.handshake import PAUSED, HandshakeLimits, Hs3Received, ServerHandshake, State, Suspended
from forwarding.protocol.sealing import Sealer
from forwarding.server import handoff
from forwarding.server.handoff import MAX_MESSAGE, MAX_REST, HandOff, decode, encode, secret_tag, socket_path

LIMITS = HandshakeLimits(handshake_timeout=10.0, max_line=1024, default_idle_timeout=60.0, max_idle_timeout=600.0)
KEY = b"k" * 32


def line(obj: object) -> bytes:
    return json.dumps(obj).encode() + b"\n"


def at_hs3(wire: bytes, sealer: Sealer | None = None) -> tuple[ServerHandshake, Hs3Received]:
    hs = ServerHandshake(LIMITS, now=100.0, sealer=sealer)
    hs.receive_data(wire)
    first = hs.next_event()
    hs.accept_chid(getattr(first, "chid", None) or "gen")
    event = hs.next_event()
    assert isinstance(event, Hs3Received)
    return hs, event


def test_a_resumed_handshake_answers_the_hs3_it_was_suspended_at_with_the_data_that_followed() -> None:
    wire = line({"req": "hs1", "chid": "a"}) + line({"req": "hs3", "recvers": ["b"], "timeout": 5}) + b"DATA"
    hs, event = at_hs3(wire)
    hs.data_to_send()  # hs2 went out from the first process
    s = hs.suspend(event, now=103.0, opened_at=100.0)
    assert hs.state is State.ROUTING  # nothing changes where it was suspended
    there = ServerHandshake.resume(LIMITS, 500.0, None, s)
    assert there.resumed and there.chid == "a" and there.state is State.ROUTING
    assert there.deadline == 507.0  # the 10 s run from the connect, 3 s ago
    assert there.next_event() == event
    assert there.next_event() is PAUSED
    assert there.establish(["b"]) == b"DATA"
    hs4 = json.loads(there.data_to_send())
    assert hs4 == {"rsp": "hs4", "result": "OK", "chid": "a", "timeout": 5, "online": ["b"]}


def test_a_sealed_handshake_resumed_elsewhere_seals_its_hs4_for_the_client() -> None:
    sealer = Sealer(KEY)
    client = ClientHandshake("a", ["b"], sealer=Sealer(KEY))
    hs = ServerHandshake(LIMITS, now=0.0, sealer=sealer)
    hs.receive_data(client.hs1())
    assert hs.next_event().chid == "a"  # type: ignore[union-attr]
    hs.accept_chid("a")
    client.receive_hs2(hs.data_to_send())
    hs.receive_data(client.hs3())
    event = hs.next_event()
    assert isinstance(event, Hs3Received)
    s = hs.suspend(event, now=1.0, opened_at=0.0)
    there = ServerHandshake.resume(LIMITS, 1.0, Sealer(KEY), s)
    assert there.next_event() == event
    there.establish(["b"])
    assert client.receive_hs4(there.data_to_send()).chid == "a"  # opened with the client's key


def test_a_handshake_suspended_under_a_secret_is_not_resumed_without_one() -> None:
    sealer = Sealer(KEY)
    client = ClientHandshake("a", ["b"], sealer=Sealer(KEY))
    hs = ServerHandshake(LIMITS, now=0.0, sealer=sealer)
    hs.receive_data(client.hs1())
    hs.next_event()
    hs.accept_chid("a")
    client.receive_hs2(hs.data_to_send())
    hs.receive_data(client.hs3())
    event = hs.next_event()
    assert isinstance(event, Hs3Received)
    with pytest.raises(ValueError):
        ServerHandshake.resume(LIMITS, 1.0, None, hs.suspend(event, 1.0, 0.0))
    plain, plain_event = at_hs3(line({"req": "hs1", "chid": "a"}) + line({"req": "hs3"}))
    with pytest.raises(ValueError):
        ServerHandshake.resume(LIMITS, 1.0, sealer, plain.suspend(plain_event, 1.0, 0.0))


def test_suspending_is_only_for_an_hs3_not_yet_answered() -> None:
    hs, event = at_hs3(line({"req": "hs1", "chid": "a"}) + line({"req": "hs3"}))
    hs.establish(None)
    with pytest.raises(RuntimeError):
        hs.suspend(event, 1.0, 0.0)


def test_the_message_carries_every_field_of_the_hs3_and_the_bytes_after_it() -> None:
    event = Hs3Received(("b",), 30.0, wait=True, hangup=True, framed=True)
    s = Suspended("a", "c" * 32, True, event, b"\x00first data\n", 0.25)
    header, rest = encode(s, "tag")
    assert rest == b"\x00first data\n"
    assert decode(header + rest) == (s, "tag")
    broadcast = Suspended("a", None, False, Hs3Received(None, 60.0, False), b"", 0.0)
    assert decode(b"".join(encode(broadcast, "")))[0] == broadcast
    answer = Suspended("a", None, False, Hs3Received(None, 60.0, False, accept="T" * 22), b"", 0.0)
    assert decode(b"".join(encode(answer, "")))[0] == answer


@pytest.mark.parametrize(
    "message",
    [
        b"no newline",
        b"[1]\n",
        b'{"v": 2}\n',
        b'{"v": 1, "chid": "a"}\n',
        b'{"v":1,"chid":"","challenge":null,"opened":false,"age":0,"secret":"","recvers":null,"timeout":1,'
        b'"wait":false,"hangup":false,"framed":false}\n',
        b'{"v":1,"chid":"a","challenge":null,"opened":false,"age":-1,"secret":"","recvers":null,"timeout":1,'
        b'"wait":false,"hangup":false,"framed":false}\n',
        b'{"v":1,"chid":"a","challenge":null,"opened":false,"age":0,"secret":"","recvers":[1],"timeout":1,'
        b'"wait":false,"hangup":false,"framed":false}\n',
        b'{"v":1,"chid":"a","challenge":null,"opened":"yes","age":0,"secret":"","recvers":null,"timeout":1,'
        b'"wait":false,"hangup":false,"framed":false}\n',
    ],
)
def test_anything_else_is_not_a_hand_off(message: bytes) -> None:
    with pytest.raises((ValueError, KeyError)):
        decode(message)


def test_socket_names_are_short_and_safe_whatever_the_node_id() -> None:
    path = socket_path("/tmp/forwarding-handoff-x", "../../etc/passwd " * 20)
    assert path.startswith("/tmp/forwarding-handoff-x/") and "/" not in path.rsplit("/", 1)[1]
    assert len(path.encode()) < 108
    assert secret_tag(None) == secret_tag("") == "" and secret_tag("a") != secret_tag("b")


def test_each_worker_makes_visit_tickets_that_every_worker_maps_to_it() -> None:
    nodes = ["w-0", "w-1", "w-2"]
    workers = [HandOff(None, "/nowhere", node, nodes) for node in nodes]  # type: ignore[arg-type]
    for worker in workers:
        tickets = {worker.new_ticket() for _ in range(50)}
        assert len(tickets) == 50 and all(len(t) == 22 for t in tickets)
        assert {other.ticket_node(t) for other in workers for t in tickets} == {worker.node}
    # Tickets from anywhere else spread over all of them.
    alone = HandOff(None, "/nowhere", "w-0", ())  # type: ignore[arg-type]
    assert {workers[0].ticket_node(alone.new_ticket()) for _ in range(200)} == set(nodes)


def test_a_handshake_with_more_buffered_than_a_hand_off_carries_stays_where_it_is() -> None:
    big = Suspended("a", None, False, Hs3Received(("b",), 60.0, False), b"x" * (MAX_REST + 1), 0.0)
    worker = HandOff(None, "/nowhere", "w-0", ["w-0", "w-1"])  # type: ignore[arg-type]
    assert worker.send("w-1", -1, big) is False  # refused before any socket is touched
    assert worker.sent == 0


def relay_of(loop: asyncio.AbstractEventLoop | None = None) -> SimpleNamespace:
    """What HandOff reads of its relay: the secret, the loop, and the log limiter."""
    return SimpleNamespace(config=SimpleNamespace(secret=None), loop=loop, may_log_refusal=lambda: True)


def tcp_pair() -> tuple[socket.socket, socket.socket]:
    with socket.create_server(("127.0.0.1", 0)) as server:
        client = socket.create_connection(server.getsockname(), timeout=5)
        conn, _ = server.accept()
    conn.settimeout(5)
    return client, conn


def test_a_sibling_whose_hand_off_queue_is_full_leaves_the_connection_here_whole(tmp_path: object) -> None:
    directory = str(tmp_path)
    sibling = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    sibling.bind(socket_path(directory, "w-1"))
    sibling.listen(1)  # and takes nothing yet: a sibling too busy to read its socket
    worker = HandOff(relay_of(), directory, "w-0", ["w-0", "w-1"])  # type: ignore[arg-type]
    client, conn = tcp_pair()
    s = Suspended("a", None, False, Hs3Received(("b",), 60.0, False), b"x" * 4096, 0.0)
    sent = 0
    while worker.send("w-1", conn.fileno(), s):
        sent += 1
        assert sent < 100_000, "the queue never filled"
    assert sent > 0 and worker.sent == sent
    assert worker.failures == {"busy": 1}  # counted, and the session stays (a leg joins its pair)
    conn.sendall(b"still here")  # the connection is still this worker's, and whole
    assert client.recv(64) == b"still here"
    # What was queued before it filled arrives whole, each with its one descriptor.
    taken, _ = sibling.accept()
    taken.settimeout(5)
    for _ in range(sent):
        message, fds, flags, _ = socket.recv_fds(taken, MAX_MESSAGE, 1)
        assert len(fds) == 1 and not flags
        os.close(fds[0])
        resumed, tag = decode(message)
        assert (resumed.chid, resumed.rest, tag) == ("a", s.rest, "")
    for sock in (taken, sibling, client, conn):
        sock.close()


def test_out_of_descriptors_the_hand_off_listener_rests_then_takes_connections_again(
    tmp_path: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(handoff, "ACCEPT_PAUSE", 0.05)

    async def main() -> None:
        worker = HandOff(relay_of(asyncio.get_running_loop()), str(tmp_path), "w-0", ["w-0"])  # type: ignore[arg-type]
        worker.start()
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        fillers: list[int] = []
        sibling = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            sibling.connect(worker.path)  # waits in the listener's backlog for an accept
            resource.setrlimit(resource.RLIMIT_NOFILE, (min(soft, 4096), hard))
            with pytest.raises(OSError):  # every descriptor this process may have is taken
                while True:
                    fillers.append(os.open(os.devnull, os.O_RDONLY))
            async with asyncio.timeout(5):
                while not worker.failures.get("accept"):  # the loop calls the listener, whose accept fails
                    await asyncio.sleep(0.01)
            assert not worker._inbound
        finally:
            for fd in fillers:
                os.close(fd)
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        # It did not spin on a listener that stays readable: one failure, then a rest.
        assert worker.failures == {"accept": 1}
        async with asyncio.timeout(5):
            while not worker._inbound:  # after the rest, the same connection is taken
                await asyncio.sleep(0.01)
        assert worker.failures == {"accept": 1}
        sibling.close()
        await worker.stop()

    asyncio.run(main())
