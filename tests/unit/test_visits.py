"""The relay's registry of services and unanswered visits (server/visits.py), without sockets."""

from __future__ import annotations

import pytest

from forwarding.protocol.messages import HandshakeError, Hs3, parse_request
from forwarding.server.visits import Visits


class Fake:
    def __init__(self, chid: str) -> None:
        self.chid = chid


def test_a_ticket_is_spent_by_its_first_answer_and_visits_are_bounded_per_service():
    visits = Visits(limit=2)
    office, lab = Fake("office"), Fake("lab")
    visits.service_online(office)  # type: ignore[arg-type]
    visits.service_online(lab)  # type: ignore[arg-type]
    a = visits.open(Fake("a"), office)  # type: ignore[arg-type]
    b = visits.open(Fake("b"), office)  # type: ignore[arg-type]
    assert a and b and a.ticket != b.ticket and len(a.ticket) == 22
    assert visits.open(Fake("c"), office) is None  # type: ignore[arg-type]  # office is full...
    assert visits.open(Fake("c"), lab) is not None  # type: ignore[arg-type]  # ...lab is not
    assert visits.take(a.ticket) is a
    assert visits.take(a.ticket) is None
    assert visits.open(Fake("d"), office) is not None  # type: ignore[arg-type]  # room again
    visits.drop(b)
    assert visits.get(b.ticket) is None
    gone = visits.service_gone(office)  # type: ignore[arg-type]
    assert [v.visitor.chid for v in gone] == ["d"]
    assert visits.names_service(("x", "office")) is None and visits.names_service(("lab",)) == "lab"
    assert len(visits) == 1


def hs3(fields: str) -> Hs3:
    request = parse_request(b'{"req":"hs3",' + fields.encode() + b"}")
    assert isinstance(request, Hs3)
    return request


def test_service_and_accept_fields():
    assert hs3('"mode":"framed","service":true').service
    assert hs3('"service":null').service is False  # null means absent
    assert hs3('"accept":"T"').accept == "T"
    bad = ['"service":true', '"service":1,"mode":"framed"', '"accept":""', '"accept":7',
           '"accept":"T","wait":true', '"accept":"' + "t" * 129 + '"']  # fmt: skip
    for fields in bad:
        with pytest.raises(HandshakeError):
            hs3(fields)
