"""Every dependency is bounded below and above the next major version (upgrades are deliberate)."""

from __future__ import annotations

import configparser
import re
from pathlib import Path

SETUP_CFG = Path(__file__).resolve().parent.parent / "setup.cfg"


def requirements() -> list[str]:
    config = configparser.ConfigParser()
    config.read(SETUP_CFG)
    lines = config["options"]["install_requires"].splitlines()
    for _extra, text in config["options.extras_require"].items():
        lines += text.splitlines()
    return [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]


def test_every_requirement_has_a_lower_and_an_upper_bound():
    found = requirements()
    assert len(found) >= 9
    unbounded = [r for r in found if not (re.search(r">=\s*[\d.]+", r) and re.search(r"<\s*[\d.]+", r))]
    assert not unbounded, f"give these a >= and a < bound in setup.cfg: {unbounded}"
