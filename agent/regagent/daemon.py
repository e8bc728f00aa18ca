"""`regagent run`: sync cycles on an interval with jitter until SIGTERM or SIGINT.

SIGHUP is logged and ignored for now (its default action would kill the daemon, and
`systemctl reload` sends it); reloading the configuration on it is the next step.
"""

from __future__ import annotations

import random
import signal
import threading
from types import FrameType
from typing import Callable, Optional, Sequence

import structlog

from regagent.config.model import SyncConfig
from regagent.consul.retry import Rng, jittered
from regagent.engine import SyncEngine
from regagent.errors import RegagentError
from regagent.report import CycleReport
from regagent.watch import Watch

log = structlog.get_logger(__name__)


class ErrorReporter:
    """Logs a failure once at error level and its repeats at debug, so a denied ACL token does
    not flood the journal every 30 seconds; logs again when the error changes or clears."""

    def __init__(self) -> None:
        self.last: Optional[str] = None

    def report(self, error: Optional[RegagentError]) -> None:
        text = None if error is None else str(error)
        if text == self.last:
            if text is not None:
                log.debug("sync_failed_again", error=text)
            return
        if text is None:
            log.info("sync_recovered")
        else:
            log.error("sync_failed", error=text, kind=type(error).__name__)
        self.last = text


def next_delay(interval: float, jitter: float, rng: Rng = random.random) -> float:
    """Seconds until the next cycle: the interval, jittered so hosts do not sync in step."""
    return max(0.1, jittered(interval, jitter, rng))


class Daemon:
    """The loop around one engine; built by the composition root (`regagent.app`)."""

    def __init__(
        self,
        engine: SyncEngine,
        sync: SyncConfig,
        servers: Sequence[str] = (),
        rng: Callable[[], float] = random.random,
        watch: Optional[Watch] = None,
    ) -> None:
        self.watch = watch  # looks at the listeners between cycles (discovery.watch_interval)
        self.engine = engine
        self.sync = sync
        self.servers = list(servers)
        self.stop = threading.Event()
        self.reporter = ErrorReporter()
        self.rng = rng

    def _on_signal(self, signum: int, frame: Optional[FrameType]) -> None:
        log.info("stopping", signal=signal.Signals(signum).name)
        self.stop.set()

    def _on_hangup(self, signum: int, frame: Optional[FrameType]) -> None:
        log.warning("sighup_ignored", reason="configuration reload is not supported yet")

    def install_signal_handlers(self) -> None:
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        signal.signal(signal.SIGHUP, self._on_hangup)

    def run(self, max_cycles: Optional[int] = None) -> int:
        """Cycles until stopped; every error is logged and retried, never fatal."""
        log.info("started", servers=self.servers, interval_s=self.sync.interval)
        cycles = 0
        while not self.stop.is_set():
            report = self.cycle()
            cycles += 1
            self.reporter.report(report.error)
            if report.writes:
                log.info("sync_applied", writes=report.writes, server=report.server)
            if max_cycles is not None and cycles >= max_cycles:
                break
            self.wait(next_delay(self.sync.interval, self.sync.jitter, self.rng))
        if self.sync.deregister_on_shutdown:
            self._deregister()
        log.info("stopped", cycles=cycles)
        return 0

    def wait(self, seconds: float) -> None:
        """Until the next cycle or a stop; the watch, if any, runs meanwhile."""
        if self.watch is None:
            self.stop.wait(seconds)
        else:
            self.watch.run_for(seconds, self.stop)

    def cycle(self) -> CycleReport:
        try:
            return self.engine.cycle()
        except Exception:  # a bug must cost one cycle, not every target on the host
            log.exception("sync_cycle_crashed")
            return CycleReport(error=RegagentError("internal error; see the log"))

    def _deregister(self) -> None:
        """Opt-in (sync.deregister_on_shutdown): a reboot would otherwise hide targets."""
        try:
            removed = self.engine.deregister_owned()
        except RegagentError as exc:
            log.error("deregister_on_shutdown_failed", error=str(exc))
        else:
            log.info("deregistered_on_shutdown", removed=removed)
