"""deploy/forwarding.toml, the example configuration, against the real option parser: it cannot drift."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from forwarding import cli

EXAMPLE = Path(__file__).resolve().parents[2] / "deploy" / "forwarding.toml"


def test_the_example_names_every_setting_and_holds_the_defaults():
    text = EXAMPLE.read_text()
    named = set(tomllib.loads(text)) | set(re.findall(r"^# ([a-z-]+) = ", text, re.M))  # set, or shown commented
    _, serve = cli._parser()
    flags = {a.option_strings[-1][2:] for a in serve._actions if a.option_strings and a.dest not in ("help", "config")}
    flags = {f.removeprefix("no-") for f in flags}  # a flag that says "no-X": the key is X (splice = false)
    assert flags - named == set(), "settings missing from deploy/forwarding.toml"
    assert named - flags == set(), "keys in deploy/forwarding.toml that serve does not know"
    # Read through the same path as `serve --config`, it gives the defaults exactly.
    assert cli._reread(["serve", "--config", str(EXAMPLE)]) == cli._reread(["serve"])
