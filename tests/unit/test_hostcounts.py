"""The host's table of connections per address, shared by the workers of ``serve --workers`` (server/hostcounts.py)."""

import os

from forwarding.server import hostcounts
from forwarding.server.admission import Admission, AdmissionLimits
from forwarding.server.hostcounts import CELLS, HostCounts

KEY = os.urandom(16)


def table(tmp_path: object, workers: int = 2) -> list[HostCounts]:
    path = os.path.join(str(tmp_path), "connections")
    hostcounts.create(path, workers)
    return [HostCounts(path, i, workers, KEY) for i in range(workers)]


def test_each_worker_counts_on_its_own_row_and_everyone_reads_the_sum(tmp_path: object) -> None:
    a, b = table(tmp_path)
    cells = a.cells("192.0.2.1")
    assert cells == b.cells("192.0.2.1") and cells[0] != cells[1] and all(0 <= c < CELLS for c in cells)
    a.add(cells, 1)
    b.add(cells, 2)
    assert a.count(cells) == b.count(cells) == 3
    b.add(cells, -2)
    assert a.count(cells) == 1


def test_a_worker_that_starts_again_forgets_what_its_previous_run_counted(tmp_path: object) -> None:
    a, b = table(tmp_path)
    cells = a.cells("192.0.2.1")
    a.add(cells, 1)
    b.add(cells, 5)
    again = HostCounts(os.path.join(str(tmp_path), "connections"), 1, 2, KEY)  # worker 1's next run
    assert a.count(cells) == again.count(cells) == 1


def test_an_address_at_its_cap_on_one_worker_is_refused_by_the_others(tmp_path: object) -> None:
    a, b = table(tmp_path)
    limits = AdmissionLimits(max_connections_per_ip=2)
    first, second = Admission(limits, a), Admission(limits, b)
    assert first.admit("192.0.2.1", 0.0) is None
    assert second.admit("192.0.2.1", 0.0) is None
    assert "limit 2" in str(first.admit("192.0.2.1", 0.0)) and "limit 2" in str(second.admit("192.0.2.1", 0.0))
    assert second.admit("192.0.2.2", 0.0) is None  # another address is not held back
    first.release("192.0.2.1")
    assert second.admit("192.0.2.1", 0.0) is None  # the place it left is free on any worker
    assert first.open == 0 and second.open == 3


def test_a_connection_handed_to_another_worker_counts_there(tmp_path: object) -> None:
    a, b = table(tmp_path)
    limits = AdmissionLimits(max_connections_per_ip=1)
    first, second = Admission(limits, a), Admission(limits, b)
    assert first.admit("192.0.2.1", 0.0) is None
    assert second.adopt("192.0.2.1") is None  # handed over at hs3 ...
    first.release("192.0.2.1")  # ... and closed where it was admitted
    assert first.admit("192.0.2.1", 0.0) is not None  # still held, on the second worker's row
    second.release("192.0.2.1")
    assert first.admit("192.0.2.1", 0.0) is None


def test_an_address_sharing_one_of_its_cells_with_a_busy_one_is_not_held_back(tmp_path: object) -> None:
    a, _ = table(tmp_path)
    mine = a.cells("192.0.2.1")
    other = next(c for c in range(CELLS) if c not in mine)
    a.add((mine[0], other), 5)  # a busy address that hashed onto one of its cells
    assert a.count(mine) == 0  # the smaller of its two sums
    a.add(mine, 1)
    assert a.count(mine) == 1
