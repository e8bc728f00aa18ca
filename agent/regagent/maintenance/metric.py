"""`regagent_maintenance_ends_timestamp_seconds`: the window's end, read from the state file at
each scrape, so `maint start`/`maint stop` show at the next scrape with no signal to the daemon.

The series exists while a window runs and for an hour after it ended (stopped early: the
value is the stop time), so that `last_over_time(...[7d]) > time()` in the deploy rules holds
exactly while the window runs, even for a host that went down in it and never came back
(its last scraped value is the window's end). No window recorded: no series.
"""

from __future__ import annotations

import time
from typing import Callable, Iterator, Optional

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from regagent.maintenance.store import MaintenanceStore

NAME = "regagent_maintenance_ends_timestamp_seconds"
HELP = (
    "Unix time the host's maintenance window ends (regagent maint); in the past once it "
    "ended or was stopped. Absent when no window was recorded in the last hour."
)


class MaintenanceCollector(Collector):
    """Reads the window of `store` (replaced on a reload) at every collection."""

    def __init__(
        self, store: Optional[MaintenanceStore], clock: Callable[[], float] = time.time
    ) -> None:
        self.store = store
        self.clock = clock

    def describe(self) -> Iterator[GaugeMetricFamily]:
        yield GaugeMetricFamily(NAME, HELP)  # no file read when registered

    def collect(self) -> Iterator[GaugeMetricFamily]:
        window = None if self.store is None else self.store.read()
        if window is None or not window.shown(self.clock()):
            return
        family = GaugeMetricFamily(NAME, HELP)
        family.add_metric([], window.until)
        yield family
