"""The README's first command keeps working: it syncs this host into the emulator and stops it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_demo_registers_this_host_and_second_sync_is_a_no_op() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "tests.demo"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Applied:" in result.stdout
    assert "In sync" in result.stdout
    assert '"managed-by": "regagent"' in result.stdout
    assert "Emulator stopped." in result.stdout
