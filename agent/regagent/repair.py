"""The daemon's side of the node watch: when the blocking query on this host's node
(`regagent.consul.node_watch`, a thread of its own) brings an answer that differs from the one
before, the daemon's loop wakes and runs `Repair.run` in the main thread, between cycles as the
listener watch's partial cycles run: the engine plans what regagent last wrote against that
answer (`SyncEngine.repair`) and writes the difference through the one write path.

Why in the main thread: the engine and its kept state are the loop's alone, and a stop
interrupts a repair's writes as it interrupts a cycle's (`STOP_GRACE`).
"""

from __future__ import annotations

import time
from typing import Callable, Optional

import structlog

from regagent.consul.node_watch import NodeWatch
from regagent.engine import SyncEngine
from regagent.report import CycleReport

log = structlog.get_logger(__name__)

Clock = Callable[[], float]


class Repair:
    """Hands the watch's news to the engine and says what was put back."""

    def __init__(
        self,
        engine: SyncEngine,
        watch: NodeWatch,
        *,
        on_report: Optional[Callable[[CycleReport], None]] = None,
        clock: Clock = time.monotonic,
    ) -> None:
        self.engine = engine
        self.watch = watch
        self.on_report = on_report  # the writes, for the metrics
        self.clock = clock

    @property
    def due(self) -> bool:
        """The watch has an answer the loop has not looked at."""
        return self.watch.has_news

    def run(self) -> Optional[CycleReport]:
        """Looks at the watch's news, if any, and repairs; never raises."""
        answer = self.watch.take_news()
        if answer is None:
            return None
        try:
            report = self.engine.repair(answer.node, answer.services)
        except Exception:  # a bug must cost the repair, not the daemon
            log.exception("catalog_repair_crashed")
            self.engine.forget_known()
            return None
        if report is None:
            return None
        done = report.plan
        if report.error is not None:
            log.warning("catalog_repair_failed", error=str(report.error), retry="next full cycle")
        elif done is not None and report.writes:
            log.warning(
                "catalog_repaired",
                node="recreated" if done.node_write == () else None,
                services=sorted(w.service.id for w in done.services),
                writes=report.writes,
                delay_s=round(self.clock() - answer.received, 3),
                server=report.server,
                reason="Consul held something else than regagent wrote (another client, "
                "or a snapshot restore)",
            )
        if self.on_report is not None and report.writes:
            self.on_report(report)
        return report
