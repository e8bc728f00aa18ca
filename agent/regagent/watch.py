"""The watch: between full cycles, a look at the LISTEN sockets every `discovery.watch_interval`.

A look (`Sensor.look`) is one netlink dump (about 0.1 ms, design decision 13) and no Consul
request. When the set of (port, socket inode) differs from the previous reading on a port that
can matter, a slow-starting exporter is due for another probe, or a background identification
found an exporter (`Sensor.next_look`), the watch hands the look's `Change` to the engine's
`partial_cycle`: a quick discovery pass over that look (only new listeners are probed,
unconfirmed ones in the background), the one planner, the one write path, restricted to the
discovered services on the ports that changed and planned against the actual state the last
full cycle read (see `regagent.engine` for why that is safe and what repairs a stale one). So
a new exporter is registered, and a vanished one marked critical, about a second after its
`listen()` or its death, while a host where nothing changes costs Consul nothing between full
cycles. Everything else (static services, checks of exporters that still listen,
deregistrations) waits for the full cycle, and so does a change seen while no partial cycle can
run (no full cycle has read Consul yet, or a write failed): that cycle sees everything.

The watch only schedules: when to look, which writes to hold back and when they are due, and
since when each change was seen (for the delay in the log).

Flap bound: a service written by the watch is not written by it again for `FAST_WRITE_HOLDOFF`
seconds (N = 5 s, Prometheus's own minimum between service-discovery updates, so a faster
write would not be seen sooner). A change held back that way is written when the hold-off ends;
full cycles are not held. A listener that binds and closes many times a second therefore costs
at most one write per service per 5 s between full cycles, plus what each full cycle writes.
"""

from __future__ import annotations

import time
from typing import Callable, Dict, List, Optional, Set

import structlog

from regagent.discovery.sensor import Change, Sensor
from regagent.engine import PartialReport, SyncEngine
from regagent.report import CycleReport
from regagent.threads import Wakeable

log = structlog.get_logger(__name__)

FAST_WRITE_HOLDOFF = 5.0  # N: seconds between two writes of one service by the watch
MIN_WAIT = 0.05  # the shortest wait between two looks (a retry due sooner waits this long)
SIGHTING_MEMORY = 60.0  # seconds a change of a port is remembered for the delay in the log

Clock = Callable[[], float]


class Watch:
    """Looks at the listeners between cycles and hands changes to the engine's partial cycle."""

    def __init__(
        self,
        engine: SyncEngine,
        sensor: Sensor,
        interval: float,
        *,
        holdoff: float = FAST_WRITE_HOLDOFF,
        clock: Clock = time.monotonic,
        on_report: Optional[Callable[[CycleReport], None]] = None,
    ) -> None:
        self.engine = engine
        self.sensor = sensor
        self.on_report = on_report  # what a partial cycle wrote, for the metrics
        self.interval = interval
        self.holdoff = holdoff
        self.clock = clock
        self.looks = 0  # listener dumps made
        self.passes = 0  # partial cycles that ran
        self._unhandled = False  # a change seen while no partial cycle could run
        self._sighted: Dict[int, float] = {}  # port -> when its listeners changed
        self._written: Dict[str, float] = {}  # service ID -> last write by the watch
        self._pending: Dict[int, float] = {}  # port -> when a held-back write is due
        self._crashed = False

    def run_for(self, seconds: float, stop: Wakeable) -> None:
        """Returns after `seconds` or as soon as `stop` is set, looking every interval."""
        deadline = self.clock() + seconds
        for _ in range(int(seconds / MIN_WAIT) + 2):  # each turn waits at least MIN_WAIT
            now = self.clock()
            if now >= deadline:
                return
            wake = min(deadline, now + self.interval, *self._due_times())
            if stop.wait(max(MIN_WAIT, wake - now)):
                return
            if self.clock() < deadline:
                self.look()

    def _due_times(self) -> List[float]:
        """When a held write or a probe retry wants a look before the next interval. While no
        partial cycle can run (no kept state), a past-due time would make every turn wake at
        once: then only the interval counts, until a full cycle has read Consul."""
        if self._unhandled:
            return []
        due = list(self._pending.values())
        retry = self.sensor.next_look()
        if retry is not None:
            due.append(retry)
        return due

    def look(self) -> Optional[PartialReport]:
        """One look; a partial cycle when something changed or is due. Never raises."""
        now = self.clock()
        try:
            change = self.sensor.look()
        except OSError:
            return None  # the full cycle reports a host where listeners cannot be read
        self.looks += 1
        self._sight(change, now)
        retry = self.sensor.next_look()
        due = {port for port, at in self._pending.items() if at <= now}
        if not (change.ports or self._unhandled or (retry is not None and retry <= now) or due):
            return None
        hold = {sid for sid, at in self._written.items() if now - at < self.holdoff}
        try:
            result = self.engine.partial_cycle(change, hold, also=due)
        except Exception:  # a bug must cost the fast path, not the daemon
            if not self._crashed:
                log.exception("watch_pass_crashed")
            self._crashed = True
            self.engine.forget_known()  # no partial cycle until a full cycle has read Consul
            return None
        self._crashed = False
        # Without a kept state nothing ran: try again at each look (costs no request) until
        # a full cycle has read Consul; that cycle's discovery has seen the change anyway.
        self._unhandled = not result.ran
        if result.ran:
            self.passes += 1
            log.debug("watch_pass", ports=sorted(result.ports), writes=result.report.writes)
            self._record(result, due)
            if self.on_report is not None and result.report.writes:
                self.on_report(result.report)
        return result

    def _sight(self, change: Change, now: float) -> None:
        """Remembers when the change on each of its ports was seen, for the delay in the log."""
        if not change.ports:
            return  # the usual look: nothing to remember, nothing to forget
        for port in change.ports:
            self._sighted[port] = now
        listening = {port for port, _inode in change.keys}
        self._sighted = {
            port: at
            for port, at in self._sighted.items()
            if port in listening or port in self._pending or now - at < SIGHTING_MEMORY
        }

    def _record(self, result: PartialReport, due: Set[int]) -> None:
        report = result.report
        now = self.clock()
        for port in due:
            self._pending.pop(port, None)
        self._written = {s: at for s, at in self._written.items() if now - at < self.holdoff}
        if report.error is not None:
            log.warning("fast_sync_failed", error=str(report.error), retry="next full cycle")
            self._pending.clear()
            return
        for sid, port in result.held.items():
            self._pending[port] = self._written.get(sid, now) + self.holdoff
            log.debug("fast_write_held", service_id=sid, holdoff_s=self.holdoff)
        done = report.plan
        if done is None or not report.writes:
            return
        for write in done.services:
            self._written[write.service.id] = now
            log.info(
                "exporter_registered_fast" if write.is_new else "exporter_updated_fast",
                service_id=write.service.id,
                status=write.check.status if write.check is not None else None,
                delay_s=self._delay(write.service.port, now),
                server=report.server,
            )
        ports = {s.id: s.port for s in report.desired.services} if report.desired else {}
        for check_write in done.checks:
            sid = check_write.check.service_id
            self._written[sid] = now
            log.info(
                "exporter_status_fast",
                service_id=sid,
                status=check_write.check.status,
                delay_s=self._delay(ports.get(sid, 0), now),
                server=report.server,
            )

    def _delay(self, port: int, now: float) -> Optional[float]:
        """Seconds from the watch's first sight of the change on `port` to its write."""
        seen = self._sighted.get(port)
        return None if seen is None else round(now - seen, 3)
