"""Bounded waits for what a test started (a daemon, an exporter, the emulator) to get somewhere."""

from __future__ import annotations

import time
from typing import Callable


def wait_for(what: str, condition: Callable[[], object], timeout: float = 20.0) -> None:
    """Polls until `condition` holds; fails after `timeout` (a bound, not a measurement)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")
