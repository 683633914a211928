"""When a splice pump raises its receiver's send buffer, and when it leaves autotuning alone."""

from __future__ import annotations

from forwarding.server.splice import SNDBUF_PIPES, send_buffer_request

MiB = 1 << 20


def test_asks_for_several_pipes_where_that_beats_autotuning():
    # wmem_max raised to 4 MiB, autotuning up to 4 MiB: the kernel gives 8 MiB.
    assert send_buffer_request(MiB, 4 * MiB, 4 * MiB) == SNDBUF_PIPES * MiB


def test_leaves_autotuning_alone_where_the_cap_would_shrink_the_buffer():
    # The common default: wmem_max 212,992 bytes, autotuning up to 4 MiB.
    assert send_buffer_request(MiB, 212_992, 4 * MiB) is None
    # A small pipe: four of them doubled are still no more than autotuning gives.
    assert send_buffer_request(256 << 10, 4 * MiB, 4 * MiB) is None


def test_leaves_autotuning_alone_where_the_limits_cannot_be_read():
    assert send_buffer_request(MiB, None, 4 * MiB) is None
    assert send_buffer_request(MiB, 4 * MiB, None) is None
