import pytest

from forwarding.protocol.chid import MAX_CHID_LENGTH, chid_problem, generate_chid


def test_generated_chids_are_valid_unique_and_carry_128_bits():
    chids = {generate_chid() for _ in range(1000)}
    assert len(chids) == 1000
    for chid in chids:
        assert chid_problem(chid) is None
        assert len(chid) == 22  # 16 bytes of urlsafe base64, unpadded


@pytest.mark.parametrize("chid", ["ch0", "a", "用户-1", "x" * MAX_CHID_LENGTH, "a:b@c.d/e"])
def test_valid_chids(chid):
    assert chid_problem(chid) is None


@pytest.mark.parametrize(
    ("chid", "words"),
    [
        ("", "empty"),
        ("x" * (MAX_CHID_LENGTH + 1), "129 characters long, the limit is 128"),
        ("a b", "spaces"),
        ("a\nb", "control"),
        ("a\x00", "control"),
        ("\u200b", "non-printable"),  # zero-width space: a format character
        ("\ud800", "non-printable"),  # lone surrogate, which json.loads lets through
    ],
)
def test_invalid_chids_say_why(chid, words):
    problem = chid_problem(chid)
    assert problem is not None and words in problem
