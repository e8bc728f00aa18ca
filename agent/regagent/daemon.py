"""`regagent run`: sync cycles on an interval with jitter, under systemd or not.

- systemd: `READY=1` once the first cycle has been attempted, `STATUS=` after every cycle,
  `RELOADING=1`/`READY=1` around a reload, `STOPPING=1` (`regagent.notify`); `WATCHDOG=1` only
  while the loop's heartbeat is fresh (`regagent.liveness`).
- SIGHUP: the configuration is re-read between cycles by the `reload` callable the composition
  root hands in. A configuration that fails validation is rejected whole and the old one keeps
  running.
- SIGTERM/SIGINT: a wait ends at once; a running cycle may go on for `STOP_GRACE` seconds and is
  then interrupted (`StopNow`, `regagent.signals`); deregistration, only with
  `sync.deregister_on_shutdown`, gets `DEREGISTER_BOUND` more. The process ends within
  `STOP_BOUND` (20) seconds of the signal, below the unit's `TimeoutStopSec=30s`.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, List, Optional, Tuple

import structlog

from regagent.config.model import SyncConfig
from regagent.consul.retry import Rng, first_sync_delay, jittered
from regagent.engine import SyncEngine
from regagent.errors import (
    ConfigError,
    ConsulRefused,
    ConsulUnreachable,
    NoClusterLeader,
    RegagentError,
)
from regagent.failures import REMIND_EVERY, ErrorReporter
from regagent.liveness import Heartbeat, SystemdWatchdog
from regagent.notify import Notifier
from regagent.repair import Repair
from regagent.report import CycleReport
from regagent.signals import Signals, StopNow
from regagent.threads import signals_blocked
from regagent.throttle import LogThrottle
from regagent.watch import Watch

if TYPE_CHECKING:  # imported when a configuration serves metrics (`_serve_metrics`)
    from regagent.metrics import Metrics
    from regagent.metrics_endpoint import MetricsServer

log = structlog.get_logger(__name__)

# The stop bound is the unit's contract (systemd/README.md): exit within 20s of SIGTERM,
# deregistration included, under TimeoutStopSec=30s.
STOP_GRACE = 5.0  # seconds a running cycle may go on after SIGTERM before it is interrupted
DEREGISTER_BOUND = 12.0  # seconds deregistration on shutdown (opt-in) may take
STOP_BOUND = 20.0  # STOP_GRACE + DEREGISTER_BOUND + time to close the threads and exit
Clock = Callable[[], float]


def next_delay(interval: float, jitter: float, rng: Rng = random.random) -> float:
    """Seconds until the next cycle: the interval, jittered so hosts do not sync in step."""
    return max(0.1, jittered(interval, jitter, rng))


# Seconds until something wants a full cycle sooner than the interval (the end of a
# maintenance window), or None; asked every DUE_EVERY seconds while the loop waits.
Due = Callable[[], Optional[float]]
DUE_EVERY = 1.0


def nothing_due() -> Optional[float]:
    return None


def sooner(delay: float, due: Optional[float], jitter: float, rng: Rng = random.random) -> float:
    """`delay`, or less when something is due before it: then the due time plus a random part
    of the jitter, so hosts whose maintenance windows end together do not sync in step."""
    if due is None or due >= delay:
        return delay
    return max(0.1, min(delay, max(0.0, due) + rng() * jitter))


def status_text(report: CycleReport, servers: int) -> str:
    """The one-line `STATUS=` systemctl shows for a cycle."""
    error = report.error
    if error is None and report.desired is not None:
        services = len(report.desired.services)
        done = f" ({report.writes} written)" if report.writes else ""
        return f"in sync: {services} services via {report.server}{done}"
    if isinstance(error, ConsulUnreachable) and not isinstance(error, NoClusterLeader):
        return f"no Consul server reachable ({servers} tried)"
    if isinstance(error, ConsulRefused):
        return f"Consul refused a request: {error}"
    return f"sync failed: {error}"


@dataclass(frozen=True)
class LoopParts:
    """What the daemon runs for one configuration, built by the composition root."""

    engine: SyncEngine
    sync: SyncConfig
    servers: Tuple[str, ...]
    telemetry_listen: str = ""
    watch: Optional[Watch] = None  # looks at the listeners between cycles
    metrics: Optional[Metrics] = None  # None until a configuration serves them
    due: Due = nothing_due  # a full cycle wanted before the interval ends (`regagent maint`)
    # Told once the loop ends, before an opt-in deregistration (True: one follows): the
    # dead-man's switch disarms (bounded by its own STOP_BOUND) or hands over to it.
    on_stop: Optional[Callable[[bool], None]] = None
    repair: Optional[Repair] = None  # the node watch's news, repaired between cycles


# Re-reads the configuration (raises ConfigError if it is invalid), or renews the connections.
Reload = Callable[[], LoopParts]


class _Waiting:
    """One wait between cycles, as the watch waits on it (a `Wakeable`): woken by the daemon's
    signals, and over once a full cycle is due (`sooner`), which it asks every DUE_EVERY
    seconds of the wait; otherwise each `wait(timeout)` lasts its whole timeout, so the watch
    looks at its own pace."""

    def __init__(self, daemon: Daemon, deadline: float) -> None:
        self.daemon = daemon
        self.deadline = deadline
        self.due_at: Optional[float] = None

    def over(self) -> bool:
        """A stop or reload is requested, or the due time has come."""
        daemon = self.daemon
        now = daemon.clock()
        if self.due_at is None:
            due = daemon.parts.due()
            if due is not None:
                jitter = daemon.parts.sync.jitter
                self.due_at = now + sooner(self.deadline - now, due, jitter, daemon.rng)
        return daemon.signals.pending or (self.due_at is not None and now >= self.due_at)

    def wait(self, timeout: Optional[float] = None) -> bool:
        clock = self.daemon.clock
        end = clock() + (DUE_EVERY if timeout is None else timeout)
        for _ in range(int((end - clock()) / DUE_EVERY) + 2):
            left = end - clock()
            if self.due_at is not None:
                left = min(left, self.due_at - clock())
            if left <= 0:
                break
            if self.daemon.signals.wait(min(left, DUE_EVERY)) or self.over() or self.news():
                return True
        return self.over() or self.news()

    def news(self) -> bool:
        """The node watch has an answer to repair (`regagent.repair`): the wait ends, not the
        interval; the loop repairs and waits on."""
        repair = self.daemon.parts.repair
        return repair is not None and repair.due


class Daemon:
    """The loop around the engine of the current configuration."""

    def __init__(
        self,
        parts: LoopParts,
        *,
        reload: Optional[Reload] = None,
        renew: Optional[Reload] = None,
        notifier: Optional[Notifier] = None,
        heartbeat: Optional[Heartbeat] = None,
        watchdog_interval: Optional[float] = None,
        rng: Callable[[], float] = random.random,
        clock: Clock = time.monotonic,
    ) -> None:
        self.parts = parts
        self.reload = reload
        self.renew = renew  # same configuration, fresh connections (after an interrupted cycle)
        self.notifier = notifier or Notifier()
        self.heartbeat = heartbeat or Heartbeat(clock)
        self.watchdog = (
            None
            if watchdog_interval is None
            else SystemdWatchdog(
                self.notifier, watchdog_interval, self.heartbeat, watchdog_interval
            )
        )
        # The wait beats often enough that the watchdog never finds a waiting loop stale.
        self.beat_every = None if watchdog_interval is None else watchdog_interval / 4
        self.rng = rng
        self.clock = clock
        self.signals = Signals(STOP_GRACE, on_stop=self._stopping)
        self.reporter = ErrorReporter(clock)
        self.crashes = LogThrottle(REMIND_EVERY, clock)
        self.reload_problem: Optional[str] = None
        self.metrics_server: Optional[MetricsServer] = None

    def request_stop(self, reason: str = "requested") -> None:
        """Ends the wait at once; a running cycle gets `STOP_GRACE` seconds more."""
        self.signals.request_stop(reason)

    def request_reload(self) -> None:
        """Re-read the configuration before the next cycle (the wait ends now)."""
        self.signals.request_reload()

    def install_signal_handlers(self) -> None:
        self.signals.install()

    def _stopping(self, reason: str) -> None:
        log.info("stopping", reason=reason)
        self.notifier.stopping()

    # -- the loop ----------------------------------------------------------------------------

    def run(self, max_cycles: Optional[int] = None) -> int:
        """Cycles until stopped; every error is logged and retried, never fatal."""
        log.info(
            "started",
            servers=list(self.parts.servers),
            interval_s=self.parts.sync.interval,
            watchdog_s=None if self.watchdog is None else self.watchdog.interval,
        )
        if self.watchdog is not None:
            self.watchdog.start()
        self._serve_metrics(self.parts.telemetry_listen)
        self._start_node_watch()
        cycles = 0
        try:
            # A fleet restarted at once spreads its first reads (capped: register fast).
            self._wait_for_next_cycle(first_sync_delay(self.parts.sync.jitter, self.rng))
            while not self.signals.stop.is_set():
                report = self.cycle()
                cycles += 1
                self._after_cycle(report, first=cycles == 1)
                if max_cycles is not None and cycles >= max_cycles:
                    break
                sync = self.parts.sync
                self._wait_for_next_cycle(next_delay(sync.interval, sync.jitter, self.rng))
                if self.signals.take_reload():
                    self._reload()
        except StopNow:
            log.warning("cycle_interrupted", grace_s=STOP_GRACE)
            if self.parts.sync.deregister_on_shutdown and self.renew is not None:
                try:  # fresh clients: the interrupted request may have left a connection
                    self.parts = self.renew()
                except Exception as exc:  # deregister with what there is
                    log.warning("renew_failed", error=str(exc))
        if not self.signals.stop.is_set():  # ended by max_cycles; a signal has said it already
            self.notifier.stopping()
        if self.parts.on_stop is not None:
            try:
                self.parts.on_stop(self.parts.sync.deregister_on_shutdown)
            except Exception:  # the stop goes on: deregistration and exit come first
                log.exception("stop_hook_failed")
        if self.parts.sync.deregister_on_shutdown:
            self._deregister()
        self._shut_down()
        log.info("stopped", cycles=cycles)
        return 0

    def cycle(self) -> CycleReport:
        """One engine cycle; a bug costs one cycle, not every target on the host."""
        self.heartbeat.beat()
        try:
            with self.signals.interruptible():
                return self.parts.engine.cycle()
        except Exception as exc:
            suppressed = self.crashes.admit(type(exc).__name__)  # a bug may repeat each cycle
            if suppressed is not None:
                log.exception("sync_cycle_crashed", suppressed=suppressed)
            return CycleReport(error=RegagentError("internal error; see the log"))
        finally:
            self.heartbeat.beat()

    def _after_cycle(self, report: CycleReport, first: bool) -> None:
        """The log line, the metrics and STATUS=, all from the one report."""
        self.reporter.report(report.error)
        if report.writes:
            log.info("sync_applied", writes=report.writes, server=report.server)
        if self.parts.metrics is not None:
            self.parts.metrics.observe_cycle(report)
        status = status_text(report, len(self.parts.servers))
        if self.reload_problem is not None:
            status = f"{status}; {self.reload_problem}"
        if first:
            self.notifier.ready(status)
        else:
            self.notifier.status(status)

    def _wait_for_next_cycle(self, delay: float) -> None:
        """The one place the loop waits between cycles: until `delay` has passed, a stop or
        reload is requested, or a full cycle is due sooner (`LoopParts.due`: the end of a
        maintenance window, asked every DUE_EVERY seconds, since one may start during the
        wait); beats the heartbeat while it waits, and lets the listener watch
        (`regagent.watch`, when discovery.watch_interval is on) look and run partial cycles."""
        deadline = self.clock() + delay
        waiting = _Waiting(self, deadline)
        while not waiting.over():
            left = deadline - self.clock()
            if left <= 0:
                return
            self.heartbeat.beat()
            self._repair()
            step = left if self.beat_every is None else min(left, self.beat_every)
            watch = self.parts.watch
            if watch is None:
                waiting.wait(step)
                continue
            # The watch's partial cycles write to Consul: a stop may interrupt them as it does
            # a full cycle (the pool's observer and the probes beat the heartbeat meanwhile).
            with self.signals.interruptible():
                watch.run_for(step, waiting)

    def _start_node_watch(self) -> None:
        """The blocking query on the node (catalog mode); its news ends the wait."""
        repair = self.parts.repair
        if repair is not None:
            repair.watch.on_news = self.signals.wake
            repair.watch.start()

    def _repair(self) -> None:
        """What the node watch saw changed, put back now (`regagent.repair`); a stop may
        interrupt its writes as it does a cycle's."""
        repair = self.parts.repair
        if repair is not None and repair.due:
            with self.signals.interruptible():
                repair.run()

    # -- reload ------------------------------------------------------------------------------

    def _reload(self) -> None:
        if self.reload is None:
            log.warning("sighup_ignored", reason="no configuration to reload from")
            return
        self.notifier.reloading()
        log.info("config_reloading")
        self.heartbeat.beat()
        try:
            parts = self.reload()
        except ConfigError as exc:
            self._reload_rejected(exc.problems)
        except RegagentError as exc:  # e.g. an unreadable token file
            self._reload_rejected([str(exc)])
        else:
            self._reload_applied(parts)
        self.heartbeat.beat()
        self.notifier.ready()

    def _reload_rejected(self, problems: List[str]) -> None:
        for problem in problems:
            log.error("config_reload_problem", problem=problem)
        count = len(problems)
        self.reload_problem = (
            f"configuration reload rejected: {count} error{'s' if count != 1 else ''} "
            "(old configuration kept)"
        )
        log.error("config_reload_rejected", errors=count, kept="the running configuration")
        if self.parts.metrics is not None:
            self.parts.metrics.observe_reload(False)
        self.notifier.status(self.reload_problem)

    def _reload_applied(self, parts: LoopParts) -> None:
        old, self.parts = self.parts, parts
        self._start_node_watch()  # a no-op for a watch the reload kept (`regagent.app`)
        self.reload_problem = None
        if parts.metrics is not None:
            parts.metrics.observe_reload(True)
        if parts.telemetry_listen != old.telemetry_listen:
            if self.metrics_server is not None:
                self.metrics_server.stop()
                self.metrics_server = None
            self._serve_metrics(parts.telemetry_listen)
        log.info("config_reloaded", servers=list(parts.servers), interval_s=parts.sync.interval)

    # -- start and stop ----------------------------------------------------------------------

    def _serve_metrics(self, listen: str) -> None:
        metrics = self.parts.metrics
        if metrics is None or not listen:
            return
        from regagent.metrics_endpoint import MetricsServer

        server = MetricsServer(metrics.render, listen)
        with signals_blocked():  # its thread leaves our signals to the main thread
            started = server.start()
        if started:
            self.metrics_server = server

    def _deregister(self) -> None:
        """Opt-in (sync.deregister_on_shutdown): a reboot would otherwise hide targets."""
        try:
            with self.signals.interruptible(DEREGISTER_BOUND):
                removed = self.parts.engine.deregister_owned()
        except RegagentError as exc:
            log.error("deregister_on_shutdown_failed", error=str(exc))
        except StopNow:
            log.error("deregister_on_shutdown_failed", error=f"took over {DEREGISTER_BOUND:g}s")
        else:
            log.info("deregistered_on_shutdown", removed=removed)

    def _shut_down(self) -> None:
        if self.parts.repair is not None:
            self.parts.repair.watch.stop()
        if self.watchdog is not None:
            self.watchdog.stop()
        if self.metrics_server is not None:
            self.metrics_server.stop()
            self.metrics_server = None
        self.notifier.close()
        self.signals.close()
