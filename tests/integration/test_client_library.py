"""The client library (asyncio and blocking) against the real server."""

from __future__ import annotations

import asyncio
import os

import pytest

import forwarding
from forwarding import sync

SECRET = "library-secret"


def test_async_pair_with_async_iteration(server):
    async def main() -> None:
        async with forwarding.connect(server.address, chid="a", recvers=["b"]) as a:
            async with forwarding.connect(server.address, chid="b", recvers=["a"], wait=True) as b:
                assert a.chid == "a" and b.online == ["a"]
                await a.send(b"x" * 100_000)
                got = b""
                async for chunk in b:
                    got += chunk
                    if len(got) == 100_000:
                        break
                assert got == b"x" * 100_000
                await b.send(b"reply")
                assert await a.recv_exactly(5) == b"reply"

    asyncio.run(main())


def test_generated_chid_and_await_form(server):
    async def main() -> None:
        ch = await forwarding.connect(server.address)
        assert len(ch.chid) == 22 and ch.online is None
        await ch.close()

    asyncio.run(main())


def test_sealed_handshake(start_server):
    server = start_server("--secret", SECRET)

    async def main() -> None:
        async with forwarding.connect(server.address, chid="s1", recvers=["s2"], secret=SECRET) as a:
            with sync.connect(server.address, chid="s2", recvers=["s1"], secret=SECRET, wait=True) as b:
                await a.send(b"sealed handshake, plain data")
                assert b.recv_exactly(28) == b"sealed handshake, plain data"

    asyncio.run(main())


def test_errors_are_typed(start_server):
    server = start_server("--secret", SECRET, "--handshake-timeout", "0.5")
    with sync.connect(server.address, chid="taken", secret=SECRET):
        with pytest.raises(forwarding.ChidInUse):
            sync.connect(server.address, chid="taken", secret=SECRET)
    with pytest.raises(forwarding.WrongSecret):
        sync.connect(server.address, secret="wrong")
    with pytest.raises(forwarding.HandshakeRefused, match="not sealed"):
        sync.connect(server.address)
    with pytest.raises(forwarding.RecversOffline):
        sync.connect(server.address, recvers=["ghost"], wait=True, secret=SECRET)

    async def wrong_secret() -> None:
        await forwarding.connect(server.address, secret="wrong")

    with pytest.raises(forwarding.WrongSecret):
        asyncio.run(wrong_secret())
    assert issubclass(forwarding.HandshakeTimeout, TimeoutError)


def test_open_timeout_raises_handshake_timeout():
    import socket

    silent = socket.create_server(("127.0.0.1", 0))  # accepts, never answers
    try:
        with pytest.raises(forwarding.HandshakeTimeout):
            sync.connect(silent.getsockname(), open_timeout=0.3)

        async def main() -> None:
            await forwarding.connect(silent.getsockname(), open_timeout=0.3)

        with pytest.raises(forwarding.HandshakeTimeout):
            asyncio.run(main())
    finally:
        silent.close()


def test_sync_large_transfer_and_iteration(server):
    with sync.connect(server.address, chid="p", recvers=["q"]) as p, sync.connect(server.address, chid="q") as q:
        data = os.urandom(4 << 20)
        p.send(data)
        assert q.recv_exactly(len(data)) == data
        p.close()
        q.send(b"to nobody")  # p is gone; dropped and counted, no error for q


def test_tls_library(start_server, pki_paths):
    import ssl

    server = start_server("--tls-cert", pki_paths["cert"], "--tls-key", pki_paths["key"])
    ctx = ssl.create_default_context(cafile=pki_paths["ca"])

    async def main() -> None:
        async with forwarding.connect(("localhost", server.port), chid="t1", tls=ctx) as a:
            with sync.connect(("localhost", server.port), chid="t2", recvers=["t1"], tls=ctx) as b:
                b.send(b"tls")
                assert await a.recv_exactly(3) == b"tls"

    asyncio.run(main())
