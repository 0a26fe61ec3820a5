"""A tool's own virtual environment for the tests that drive a real client (scrapyd-client,
ScrapydWeb): their dependencies (Scrapy, old Flask) stay out of the test environment.

Made once per machine with pip at a fixed path and reused; where it cannot be made the test
is skipped, or fails under ``SPIDERFLOW_REQUIRE_SERVICES=1`` (CI).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from unavailable import unavailable


def tool_venv(venv: Path, requirement: str, command: str, timeout: float = 300) -> Path:
    """The ``bin`` directory of *venv* with *requirement* installed (made now unless *command* is there)."""
    bin_dir = venv / "bin"
    if not (bin_dir / command).exists():
        base_python = getattr(sys, "_base_executable", sys.executable)
        try:
            subprocess.run([base_python, "-m", "venv", "--clear", str(venv)], check=True, capture_output=True,
                           timeout=120)
            subprocess.run([str(bin_dir / "pip"), "install", "-q", "--disable-pip-version-check", requirement],
                           check=True, capture_output=True, text=True, timeout=timeout)
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError) as exc:
            output = getattr(exc, "stderr", "") or ""
            unavailable(f"cannot install {requirement} into {venv}: {exc} {str(output)[-800:]}")
    return bin_dir
