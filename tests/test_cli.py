"""The spiderflow command as a user runs it: a real subprocess."""

from __future__ import annotations

import json
import subprocess
import sys

from spiderflow import __version__


def run_cli(*args, env=None, cwd=None):
    return subprocess.run([sys.executable, "-m", "spiderflow.cli", *args], capture_output=True, text=True,
                          env=env, cwd=cwd, timeout=60)


def test_version_and_help():
    out = run_cli("--version")
    assert out.returncode == 0 and __version__ in out.stdout
    out = run_cli("--help")
    assert out.returncode == 0 and "Usage:" in out.stdout and "config" in out.stdout


def test_config_shows_precedence_and_hides_secrets(tmp_path, monkeypatch):
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({"poolsize": 10, "timeout": 3, "password": "hunter2",
                               "taskdb": "postgresql://u:s3cr3tpw@127.0.0.1/db", "cookie_secret": "c00kie"}))
    env = {"PATH": "/usr/bin:/bin", "SPIDERFLOW_POOLSIZE": "20"}
    out = run_cli("-c", str(cfg), "--data-dir", str(tmp_path), "config", env=env)
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert data["poolsize"] == 20 and data["timeout"] == 3.0 and data["data_dir"] == str(tmp_path)
    assert data["password"] == "***" and data["cookie_secret"] == "***"
    assert "hunter2" not in out.stdout and "s3cr3tpw" not in out.stdout and "c00kie" not in out.stdout


def test_bad_config_file_is_a_clear_error(tmp_path):
    cfg = tmp_path / "bad.json"
    cfg.write_text('{"poolsize": 1, "no_such_key": 2}')
    out = run_cli("-c", str(cfg), "config")
    assert out.returncode == 2
    assert "no_such_key" in out.stderr and str(cfg) in out.stderr and "Traceback" not in out.stderr
