"""Liveness under systemd: the loop's heartbeat, and the pinger that turns it into `WATCHDOG=1`.

The loop beats at every cycle phase boundary, after every Consul request (the pool's observer)
and every discovery probe, and while it waits between cycles. `SystemdWatchdog` pings every
half `WATCHDOG_USEC` (`regagent.notify.watchdog_interval`), but only while the heartbeat is
fresh: a cycle wedged in one call stops the beats, then the pings, and systemd restarts the
service.
"""

from __future__ import annotations

import threading
import time
from typing import Callable, Optional

import structlog

from regagent.notify import Notifier
from regagent.threads import start_thread

log = structlog.get_logger(__name__)

Clock = Callable[[], float]


class Heartbeat:
    """When the loop last showed progress; beaten from any thread, read by the watchdog."""

    def __init__(self, clock: Clock = time.monotonic) -> None:
        self.clock = clock
        self.last = clock()

    def beat(self) -> None:
        self.last = self.clock()  # one float store: atomic, no lock needed

    def age(self) -> float:
        return self.clock() - self.last


class SystemdWatchdog:
    """Pings `WATCHDOG=1` every `interval` seconds while the heartbeat is younger than
    `stall_limit`; withholds them (logged once) while it is not."""

    def __init__(
        self, notifier: Notifier, interval: float, heartbeat: Heartbeat, stall_limit: float
    ) -> None:
        self.notifier = notifier
        self.interval = interval
        self.heartbeat = heartbeat
        self.stall_limit = stall_limit
        self.withheld = False
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    def tick(self) -> bool:
        """One ping if the loop made progress lately; True if sent."""
        age = self.heartbeat.age()
        if age <= self.stall_limit:
            if self.withheld:
                self.withheld = False
                log.info("watchdog_resumed")
            return self.notifier.watchdog()
        if not self.withheld:
            self.withheld = True
            log.error(
                "watchdog_withheld",
                stalled_s=round(age, 1),
                reason="the sync loop made no progress; systemd restarts the service "
                "if this lasts WatchdogSec",
            )
        return False

    def start(self) -> None:
        self._thread = start_thread(self._run, "regagent-watchdog")

    def _run(self) -> None:
        self.tick()
        while not self._stop.wait(self.interval):
            self.tick()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
