"""`regagent run`: sync cycles on an interval with jitter until SIGTERM or SIGINT."""

from __future__ import annotations

import random
import signal
import threading
from types import FrameType
from typing import Optional

import structlog

from regagent.config.model import Config
from regagent.engine import CycleResult, SyncEngine, deregister_owned
from regagent.errors import RegagentError

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


def next_delay(config: Config, rng: random.Random) -> float:
    return config.sync.interval + rng.uniform(-config.sync.jitter, config.sync.jitter)


class Daemon:
    def __init__(self, config: Config, engine: SyncEngine) -> None:
        self.config = config
        self.engine = engine
        self.stop = threading.Event()
        self.reporter = ErrorReporter()
        self.rng = random.Random()

    def _on_signal(self, signum: int, frame: Optional[FrameType]) -> None:
        log.info("stopping", signal=signal.Signals(signum).name)
        self.stop.set()

    def install_signal_handlers(self) -> None:
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)

    def run(self, max_cycles: Optional[int] = None) -> int:
        """Cycles until stopped; every error is logged and retried, never fatal."""
        log.info(
            "started",
            servers=list(self.config.consul.servers),
            interval_s=self.config.sync.interval,
        )
        cycles = 0
        while not self.stop.is_set():
            try:
                result = self.engine.cycle()
            except Exception:  # a bug must cost one cycle, not every target on the host
                log.exception("sync_cycle_crashed")
                result = CycleResult(error=RegagentError("internal error; see the log"))
            cycles += 1
            self.reporter.report(result.error)
            if result.writes:
                log.info("sync_applied", writes=result.writes, server=result.server)
            if max_cycles is not None and cycles >= max_cycles:
                break
            self.stop.wait(max(0.1, next_delay(self.config, self.rng)))
        if self.config.sync.deregister_on_shutdown:
            self._deregister()
        log.info("stopped", cycles=cycles)
        return 0

    def _deregister(self) -> None:
        """Opt-in (sync.deregister_on_shutdown): a reboot would otherwise hide targets."""
        try:
            removed = deregister_owned(self.config, self.engine.pool)
        except RegagentError as exc:
            log.error("deregister_on_shutdown_failed", error=str(exc))
        else:
            log.info("deregistered_on_shutdown", removed=removed)
