"""Scenario 4, idle sessions: relay memory per handshaked session at 10,000, 18,000 and 100,000.

18,000 is what fits under an open-file hard limit of 20,000 (a common container
default): with 10,000 it shows whether the cost per session stays flat.

Client processes open the sessions from addresses spread over 127.0.0.0/8 (a
thousand per address, so the ephemeral port range is no limit) and hold them.
Memory per session is the growth of the relay's resident set over its size
before the first connection, divided by the number of sessions.
"""

from __future__ import annotations

import multiprocessing as mp
import resource
import socket
from multiprocessing.synchronize import Event

from .common import Relay, Table, fmt, plain_handshake, raise_nofile, rss_kib

PER_ADDRESS = 1000
IP_BIND_ADDRESS_NO_PORT = 24  # Linux: pick the port at connect(), per destination


def _source(i: int) -> str:
    block = i // PER_ADDRESS
    return f"127.{1 + block // 250}.{block % 250}.{1 + block % 200}"


def _holder(address: tuple[str, int], start: int, count: int, done: mp.Queue[object], release: Event) -> None:
    raise_nofile(count + 1000)
    socks = []
    for i in range(start, start + count):
        s = socket.socket()
        s.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
        s.bind((_source(i), 0))
        s.connect(address)
        plain_handshake(s, f"idle{i}", None)
        socks.append(s)
    done.put(count)
    release.wait(600)
    for s in socks:
        s.close()


def measure(n: int, workers: int = 4, args: tuple[str, ...] = (), lean: bool = False) -> dict[str, float | None]:
    if not raise_nofile(n + 1000):
        return {"sessions": n, "kib_per_session": None, "hard_limit": resource.getrlimit(resource.RLIMIT_NOFILE)[1]}
    with Relay(*args, nofile=n + 1000, lean=lean) as relay:
        before = rss_kib(relay.pid)
        done: mp.Queue[object] = mp.Queue()
        release = mp.Event()
        share = n // workers
        procs = [
            mp.Process(target=_holder, args=(relay.address, w * share, share, done, release)) for w in range(workers)
        ]
        for p in procs:
            p.start()
        total = sum(int(done.get(timeout=600)) for _ in procs)  # type: ignore[call-overload]
        after = rss_kib(relay.pid)
        release.set()
        for p in procs:
            p.join(120)
    return {"sessions": total, "kib_per_session": (after - before) / total, "rss_mib": after / 1024}


def run(counts: tuple[int, ...] = (10_000, 18_000, 100_000)) -> Table:
    rows = []
    data: dict[str, dict[str, float | None]] = {}
    for n in counts:
        d = measure(n)
        data[str(n)] = d
        per = d["kib_per_session"]
        if per is None:
            why = f"not run: the open-file hard limit here is {d['hard_limit']:.0f} (raising it needs CAP_SYS_RESOURCE)"
            rows.append([f"{n:,}", why, ""])
        else:
            rows.append([f"{n:,}", fmt(per * 1024, 0), fmt(d["rss_mib"], 0)])
    return Table(
        "4. Idle sessions",
        ["sessions", "relay bytes per session", "relay RSS MiB"],
        rows,
        ["Each session handshaked (plain, broadcast recvers) and idle; one relay process."],
        data,
    )
