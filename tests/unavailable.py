"""What a test does when what it needs (a service, a browser, a tool) is missing: it is
skipped with the reason, or fails under ``SPIDERFLOW_REQUIRE_SERVICES=1`` (CI), so a missing
install step cannot hide behind a skip."""

from __future__ import annotations

import os

import pytest


def unavailable(reason: str) -> None:
    """Skip the test for *reason*; fail it instead where services are required."""
    if os.environ.get("SPIDERFLOW_REQUIRE_SERVICES") == "1":
        pytest.fail(reason + " (SPIDERFLOW_REQUIRE_SERVICES=1)", pytrace=False)
    pytest.skip(reason)
