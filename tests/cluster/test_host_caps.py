"""``serve --workers``: a source address's connection cap holds for the host, not for each worker.

The kernel spreads one address's connections over all the workers
(SO_REUSEPORT), so a cap counted by each worker alone would let it hold N
times ``--max-connections-per-ip``. Real workers, real sockets.
"""

from __future__ import annotations

from ..integration.conftest import Client
from .test_handoff import workers

CAP = 3


def admitted(c: Client, chid: str) -> bool:
    c.send_json({"req": "hs1", "chid": chid})
    reply = c.read_line()
    if reply["rsp"] == "hs2":
        return True
    assert reply["code"] == "refused" and f"(limit {CAP})" in str(reply["desc"]), reply
    return False


def test_an_address_holds_at_most_its_cap_across_all_the_workers() -> None:
    server = workers("--max-connections-per-ip", str(CAP))
    held: list[Client] = []
    try:
        for i in range(CAP):
            c = Client(server.address)
            held.append(c)
            assert admitted(c, f"c{i}")
        # However the kernel placed those, each new one is refused, on whichever worker it lands.
        for i in range(12):
            c = Client(server.address)
            assert not admitted(c, f"over{i}")
            c.close()
        server.wait_for_count(r'session closed .*reason="refused"', 12)
        # One closes: its place is free again, on any worker.
        held.pop().close()
        server.wait_for_log(r'session closed chid="c2"')
        c = Client(server.address)
        held.append(c)
        assert admitted(c, "again")
    finally:
        for c in held:
            c.close()
        server.stop_cleanly()
