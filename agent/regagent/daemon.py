"""`regagent run`: sync cycles on an interval with jitter, under systemd or not.

- systemd: `READY=1` once the first cycle has been attempted, `STATUS=` after every cycle,
  `RELOADING=1`/`READY=1` around a reload, `STOPPING=1` (`regagent.notify`).
- Watchdog: a thread pings `WATCHDOG=1` every half `WATCHDOG_USEC`, but only while the loop's
  heartbeat is fresh. The loop beats at every cycle phase boundary, after every Consul request
  (the pool's observer) and every discovery probe, and while it waits between cycles; a cycle
  wedged in one call stops the beats, then the pings, and systemd restarts the service.
- SIGHUP: the handler only sets a flag and wakes the wait; the configuration is re-read between
  cycles by the `reload` callable the composition root hands in. A configuration that fails
  validation is rejected whole and the old one keeps running.
- SIGTERM/SIGINT: a wait ends at once; a running cycle may go on for `STOP_GRACE` seconds and is
  then interrupted (`StopNow`, raised in the main thread by SIGALRM); deregistration, only with
  `sync.deregister_on_shutdown`, gets `DEREGISTER_BOUND` more. The process ends within
  `STOP_BOUND` (20) seconds of the signal, below the unit's `TimeoutStopSec=30s`.
"""

from __future__ import annotations

import contextlib
import os
import random
import select
import signal
import threading
import time
from dataclasses import dataclass
from types import FrameType
from typing import Callable, List, Optional, Tuple

import structlog

from regagent.config.model import SyncConfig
from regagent.consul.retry import Rng, first_sync_delay, jittered
from regagent.engine import SyncEngine
from regagent.errors import (
    ConfigError,
    ConsulRefused,
    ConsulUnreachable,
    CycleDeadline,
    NoClusterLeader,
    RegagentError,
)
from regagent.metrics import Metrics
from regagent.metrics_endpoint import MetricsServer
from regagent.notify import Notifier
from regagent.report import CycleReport
from regagent.threads import signals_blocked
from regagent.throttle import LogThrottle
from regagent.watch import Watch

log = structlog.get_logger(__name__)

# The stop bound is the unit's contract (systemd/README.md): exit within 20s of SIGTERM,
# deregistration included, under TimeoutStopSec=30s.
STOP_GRACE = 5.0  # seconds a running cycle may go on after SIGTERM before it is interrupted
DEREGISTER_BOUND = 12.0  # seconds deregistration on shutdown (opt-in) may take
STOP_BOUND = 20.0  # STOP_GRACE + DEREGISTER_BOUND + time to close the threads and exit
Clock = Callable[[], float]


class StopNow(BaseException):
    """Raised in the main thread to end a cycle that outlived `STOP_GRACE` after a stop
    request. A BaseException, so that no `except Exception` on the way swallows it."""


# During a long failure, a reminder at error level this often (the cycles in between log at
# debug): an outage of an hour is one `sync_failed` and five `sync_still_failing`, not 120 errors.
REMIND_EVERY = 600.0
_KINDS_KEPT = 16  # distinct failures remembered in one spell; more are treated as repeats


def error_kind(error: RegagentError) -> str:
    """What stays the same from cycle to cycle of one failure. An unreachable or leaderless
    cluster, or a cycle past its deadline, names servers, seconds and counts that change every
    cycle: its class is the kind. Anything else (a refusal, a bug) is its text."""
    if isinstance(error, (ConsulUnreachable, CycleDeadline)):
        return type(error).__name__
    return str(error)


class ErrorReporter:
    """Logs each kind of failure once at error level (`sync_failed`), then, while cycles keep
    failing, a reminder every `remind_every` seconds (`sync_still_failing`) and the cycles in
    between at debug, so neither an outage nor a denied ACL token floods the journal every 30
    seconds; `sync_recovered` when a cycle succeeds again."""

    def __init__(self, clock: Clock = time.monotonic, remind_every: float = REMIND_EVERY):
        self.clock = clock
        self.remind_every = remind_every
        self.kinds: List[str] = []  # logged at error level in this spell of failures
        self.since: Optional[float] = None  # when the spell began
        self.reminded = 0.0
        self.failed = 0  # cycles failed in this spell

    def report(self, error: Optional[RegagentError]) -> None:
        now = self.clock()
        if error is None:
            if self.since is not None:
                log.info(
                    "sync_recovered", failed_s=round(now - self.since), failed_cycles=self.failed
                )
            self.kinds, self.since, self.failed = [], None, 0
            return
        text, kind = str(error), error_kind(error)
        if self.since is None:
            self.since = now
        self.failed += 1
        if kind not in self.kinds and len(self.kinds) < _KINDS_KEPT:
            self.kinds.append(kind)
            self.reminded = now
            log.error("sync_failed", error=text, kind=type(error).__name__)
        elif now - self.reminded >= self.remind_every:
            self.reminded = now
            log.error(
                "sync_still_failing",
                error=text,
                kind=type(error).__name__,
                failing_s=round(now - self.since),
                failed_cycles=self.failed,
            )
        else:
            log.debug("sync_failed_again", error=text)


def next_delay(interval: float, jitter: float, rng: Rng = random.random) -> float:
    """Seconds until the next cycle: the interval, jittered so hosts do not sync in step."""
    return max(0.1, jittered(interval, jitter, rng))


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


class Heartbeat:
    """When the loop last showed progress; beaten from any thread, read by the watchdog."""

    def __init__(self, clock: Clock = time.monotonic) -> None:
        self.clock = clock
        self.last = clock()

    def beat(self) -> None:
        self.last = self.clock()  # one float store: atomic, no lock needed

    def age(self) -> float:
        return self.clock() - self.last


class Watchdog:
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
        self._thread = threading.Thread(target=self._run, name="regagent-watchdog", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        self.tick()
        while not self._stop.wait(self.interval):
            self.tick()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)


@dataclass(frozen=True)
class Loop:
    """What the daemon runs for one configuration, built by the composition root."""

    engine: SyncEngine
    sync: SyncConfig
    servers: Tuple[str, ...]
    telemetry_listen: str = ""
    watch: Optional[Watch] = None  # looks at the listeners between cycles
    # Told once the loop ends, before an opt-in deregistration (True: one follows): the
    # dead-man's switch disarms (bounded by its own STOP_BOUND) or hands over to it.
    on_stop: Optional[Callable[[bool], None]] = None


Reload = Callable[[], Loop]  # re-reads the configuration; raises ConfigError if it is invalid


class _WakeUp(threading.Event):
    """What the watch waits on between its looks: set once a stop or reload is requested, and
    woken by the daemon's self-pipe, which the signal paths write. No lock is involved that a
    signal handler, running in the middle of the main thread, could deadlock on."""

    def __init__(self, daemon: Daemon) -> None:
        super().__init__()
        self._daemon = daemon

    def is_set(self) -> bool:
        return self._daemon.stop.is_set() or self._daemon.reload_requested

    def wait(self, timeout: Optional[float] = None) -> bool:
        if not self.is_set():
            self._daemon._sleep(timeout)
        return self.is_set()


class Daemon:
    """The loop around the engine of the current configuration."""

    def __init__(
        self,
        loop: Loop,
        *,
        reload: Optional[Reload] = None,
        renew: Optional[Callable[[], Loop]] = None,
        metrics: Optional[Metrics] = None,
        notifier: Optional[Notifier] = None,
        heartbeat: Optional[Heartbeat] = None,
        watchdog_interval: Optional[float] = None,
        rng: Callable[[], float] = random.random,
        clock: Clock = time.monotonic,
    ) -> None:
        self.loop = loop
        self.reload = reload
        self.renew = renew  # same configuration, fresh connections (after an interrupted cycle)
        self.metrics = metrics
        self.notifier = notifier or Notifier()
        self.heartbeat = heartbeat or Heartbeat(clock)
        self.watchdog = (
            None
            if watchdog_interval is None
            else Watchdog(self.notifier, watchdog_interval, self.heartbeat, watchdog_interval)
        )
        # The wait beats often enough that the watchdog never finds a waiting loop stale.
        self.beat_every = None if watchdog_interval is None else watchdog_interval / 4
        self.rng = rng
        self.clock = clock
        self.stop = threading.Event()
        self.reporter = ErrorReporter(clock)
        self.crashes = LogThrottle(REMIND_EVERY, clock)
        self.reload_requested = False
        self.reload_problem: Optional[str] = None
        self.metrics_server: Optional[MetricsServer] = None
        self._interruptible = False
        self._alarm_installed = False  # SIGALRM's default action would kill the process
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._wake_up = _WakeUp(self)

    # -- signals -----------------------------------------------------------------------------

    def request_stop(self, reason: str = "requested") -> None:
        """Ends the wait at once; a running cycle gets `STOP_GRACE` seconds more."""
        if self.stop.is_set():
            if self._interruptible:  # a second signal: do not wait out the grace
                raise StopNow()
            return
        log.info("stopping", reason=reason)
        self.notifier.stopping()
        self.stop.set()
        if self._interruptible:
            self._arm(STOP_GRACE)
        self._wake()

    def request_reload(self) -> None:
        """Re-read the configuration before the next cycle (the wait ends now)."""
        self.reload_requested = True
        self._wake()

    def _wake(self) -> None:
        with contextlib.suppress(OSError):  # full pipe: a wake-up is pending anyway
            os.write(self._wake_w, b"x")

    def _on_stop_signal(self, signum: int, frame: Optional[FrameType]) -> None:
        self.request_stop(signal.Signals(signum).name)

    def _on_hangup(self, signum: int, frame: Optional[FrameType]) -> None:
        self.request_reload()

    def _on_alarm(self, signum: int, frame: Optional[FrameType]) -> None:
        if self._interruptible:
            raise StopNow()

    def install_signal_handlers(self) -> None:
        signal.signal(signal.SIGTERM, self._on_stop_signal)
        signal.signal(signal.SIGINT, self._on_stop_signal)
        signal.signal(signal.SIGHUP, self._on_hangup)
        signal.signal(signal.SIGALRM, self._on_alarm)
        self._alarm_installed = True

    def _arm(self, seconds: float) -> None:
        """SIGALRM in `seconds` (0 cancels), if our handler is there to turn it into StopNow."""
        if self._alarm_installed:
            signal.setitimer(signal.ITIMER_REAL, seconds)

    # -- the loop ----------------------------------------------------------------------------

    def run(self, max_cycles: Optional[int] = None) -> int:
        """Cycles until stopped; every error is logged and retried, never fatal."""
        log.info(
            "started",
            servers=list(self.loop.servers),
            interval_s=self.loop.sync.interval,
            watchdog_s=None if self.watchdog is None else self.watchdog.interval,
        )
        with signals_blocked():
            if self.watchdog is not None:
                self.watchdog.start()
            self._serve_metrics(self.loop.telemetry_listen)
        cycles = 0
        try:
            # A fleet restarted at once spreads its first reads (capped: register fast).
            self._wait_for_next_cycle(first_sync_delay(self.loop.sync.jitter, self.rng))
            while not self.stop.is_set():
                report = self.cycle()
                cycles += 1
                self._after_cycle(report, first=cycles == 1)
                if max_cycles is not None and cycles >= max_cycles:
                    break
                self._wait_for_next_cycle(
                    next_delay(self.loop.sync.interval, self.loop.sync.jitter, self.rng)
                )
                if self.reload_requested and not self.stop.is_set():
                    self._reload()
        except StopNow:
            log.warning("cycle_interrupted", grace_s=STOP_GRACE)
            if self.loop.sync.deregister_on_shutdown and self.renew is not None:
                try:  # fresh clients: the interrupted request may have left a connection
                    self.loop = self.renew()
                except Exception as exc:  # deregister with what there is
                    log.warning("renew_failed", error=str(exc))
        if not self.stop.is_set():  # ended by max_cycles; a signal has said it already
            self.notifier.stopping()
        if self.loop.on_stop is not None:
            try:
                self.loop.on_stop(self.loop.sync.deregister_on_shutdown)
            except Exception:  # the stop goes on: deregistration and exit come first
                log.exception("stop_hook_failed")
        if self.loop.sync.deregister_on_shutdown:
            self._deregister()
        self._shut_down()
        log.info("stopped", cycles=cycles)
        return 0

    def cycle(self) -> CycleReport:
        """One engine cycle; a bug costs one cycle, not every target on the host."""
        self.heartbeat.beat()
        self._interruptible = True
        try:
            return self.loop.engine.cycle()
        except Exception as exc:
            suppressed = self.crashes.admit(type(exc).__name__)  # a bug may repeat each cycle
            if suppressed is not None:
                log.exception("sync_cycle_crashed", suppressed=suppressed)
            return CycleReport(error=RegagentError("internal error; see the log"))
        finally:
            self._interruptible = False
            self._arm(0)
            self.heartbeat.beat()

    def _after_cycle(self, report: CycleReport, first: bool) -> None:
        """The log line, the metrics and STATUS=, all from the one report."""
        self.reporter.report(report.error)
        if report.writes:
            log.info("sync_applied", writes=report.writes, server=report.server)
        if self.metrics is not None:
            self.metrics.observe_cycle(report)
        status = status_text(report, len(self.loop.servers))
        if self.reload_problem is not None:
            status = f"{status}; {self.reload_problem}"
        if first:
            self.notifier.ready(status)
        else:
            self.notifier.status(status)

    def _wait_for_next_cycle(self, delay: float) -> None:
        """The one place the loop waits between cycles: until `delay` has passed or a stop or
        reload is requested; beats the heartbeat while it waits, and lets the listener watch
        (`regagent.watch`, when discovery.watch_interval is on) look and run partial cycles."""
        deadline = self.clock() + delay
        while not self.stop.is_set() and not self.reload_requested:
            left = deadline - self.clock()
            if left <= 0:
                return
            self.heartbeat.beat()
            step = left if self.beat_every is None else min(left, self.beat_every)
            watch = self.loop.watch
            if watch is None:
                self._sleep(step)
                continue
            # The watch's partial cycles write to Consul: a stop may interrupt them as it does
            # a full cycle (the pool's observer and the probes beat the heartbeat meanwhile).
            self._interruptible = True
            try:
                watch.run_for(step, self._wake_up)
            finally:
                self._interruptible = False
                self._arm(0)

    def _sleep(self, seconds: Optional[float]) -> None:
        """Up to `seconds`, less if a stop or reload is requested (the self-pipe)."""
        readable, _, _ = select.select([self._wake_r], [], [], seconds)
        if readable:
            with contextlib.suppress(OSError):
                os.read(self._wake_r, 512)

    # -- reload ------------------------------------------------------------------------------

    def _reload(self) -> None:
        self.reload_requested = False
        if self.reload is None:
            log.warning("sighup_ignored", reason="no configuration to reload from")
            return
        self.notifier.reloading()
        log.info("config_reloading")
        self.heartbeat.beat()
        try:
            loop = self.reload()
        except ConfigError as exc:
            self._reload_rejected(exc.problems)
        except RegagentError as exc:  # e.g. an unreadable token file
            self._reload_rejected([str(exc)])
        else:
            self._reload_applied(loop)
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
        if self.metrics is not None:
            self.metrics.observe_reload(False)
        self.notifier.status(self.reload_problem)

    def _reload_applied(self, loop: Loop) -> None:
        old, self.loop = self.loop, loop
        self.reload_problem = None
        if self.metrics is not None:
            self.metrics.observe_reload(True)
        if loop.telemetry_listen != old.telemetry_listen:
            if self.metrics_server is not None:
                self.metrics_server.stop()
                self.metrics_server = None
            with signals_blocked():
                self._serve_metrics(loop.telemetry_listen)
        log.info("config_reloaded", servers=list(loop.servers), interval_s=loop.sync.interval)

    # -- start and stop ----------------------------------------------------------------------

    def _serve_metrics(self, listen: str) -> None:
        if self.metrics is None or not listen:
            return
        server = MetricsServer(self.metrics.render, listen)
        if server.start():
            self.metrics_server = server

    def _deregister(self) -> None:
        """Opt-in (sync.deregister_on_shutdown): a reboot would otherwise hide targets."""
        self._interruptible = True
        self._arm(DEREGISTER_BOUND)
        try:
            removed = self.loop.engine.deregister_owned()
        except RegagentError as exc:
            log.error("deregister_on_shutdown_failed", error=str(exc))
        except StopNow:
            log.error("deregister_on_shutdown_failed", error=f"took over {DEREGISTER_BOUND:g}s")
        else:
            log.info("deregistered_on_shutdown", removed=removed)
        finally:
            self._interruptible = False
            self._arm(0)

    def _shut_down(self) -> None:
        if self.watchdog is not None:
            self.watchdog.stop()
        if self.metrics_server is not None:
            self.metrics_server.stop()
            self.metrics_server = None
        self.notifier.close()
        for fd in (self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)
