"""The `regagent` command as a user runs it, and what it prints: a real subprocess, its exit
code, stdout and stderr (problem lines, JSON log lines)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

INVALID_HEADER = "regagent: invalid configuration:"
# Variables that would change what the command reads; each test sets what it needs.
_ISOLATED_ENV = ("REGAGENT_CONFIG", "CONSUL_HTTP_TOKEN", "CONSUL_HTTP_ADDR")


def run_regagent(
    args: Sequence[str], cwd: Path, env: Optional[Dict[str, str]] = None
) -> subprocess.CompletedProcess[str]:
    """Runs `python -m regagent ARGS` with stderr a pipe (so logs are JSON) and no stdin."""
    environment = {k: v for k, v in os.environ.items() if k not in _ISOLATED_ENV}
    environment.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "regagent", *args],
        cwd=cwd,
        env=environment,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def assert_no_traceback(result: subprocess.CompletedProcess[str]) -> None:
    assert "Traceback" not in result.stdout + result.stderr, result.stderr


def problem_lines(stderr: str) -> List[str]:
    """The problems check-config listed under its header (log lines are not indented)."""
    lines = stderr.splitlines()
    assert INVALID_HEADER in lines, stderr
    return [line[2:] for line in lines if line.startswith("  ")]


def log_records(stderr: str) -> List[Dict[str, Any]]:
    """Every stderr line that is a JSON object: the structured log."""
    records = []
    for line in stderr.splitlines():
        if line.startswith("{"):
            records.append(json.loads(line))
    return records


def write(path: Path, text: str, mode: int = 0o644) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    path.chmod(mode)
    return path


def events(stderr: str, name: str) -> List[Dict[str, Any]]:
    """The log records of event `name`."""
    return [record for record in log_records(stderr) if record.get("event") == name]
