"""Command-line values the relay must refuse before it starts."""

from __future__ import annotations

import pytest

from forwarding import cli


@pytest.mark.parametrize("flag", ["--idle-timeout", "--handshake-timeout", "--max-idle-timeout"])
@pytest.mark.parametrize("value", ["inf", "nan", "0", "-1", "soon"])
def test_timeouts_must_be_finite_positive_numbers(flag, value, capsys):
    # An infinite default idle timeout would reach hs4 as "Infinity", which is not JSON.
    parser, _ = cli._parser()
    with pytest.raises(SystemExit) as exc:
        parser.parse_args(["serve", flag, value])
    assert exc.value.code == 2
    assert flag in capsys.readouterr().err


def test_a_finite_timeout_is_taken():
    parser, _ = cli._parser()
    assert parser.parse_args(["serve", "--idle-timeout", "1.5"]).idle_timeout == 1.5
