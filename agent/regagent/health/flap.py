"""Flap protection for every check regagent reports, keyed by service ID (design decision 5).

Each flip costs a Consul write and a health flap in Prometheus service discovery, and a busy
exporter misses a 2 s deadline now and then. Until `failures_before_critical` results in a row
are critical, the last good result for the service stands. A guard that has seen no good result
for a service (a one-shot `regagent sync` is a new process) reports failures at once, unless it
was seeded with what Consul shows (`remember`), which is how a restarted daemon holds the first
failure like any other.
"""

from __future__ import annotations

from typing import Dict, Iterable

from regagent.model import CRITICAL, Result

FAILURES_BEFORE_CRITICAL = 3  # the default of sync.failures_before_critical


class FlapGuard:
    """Consecutive failures and the last good result, per service ID."""

    def __init__(self, failures_before_critical: int = FAILURES_BEFORE_CRITICAL) -> None:
        self.failures_before_critical = failures_before_critical
        self._failures: Dict[str, int] = {}
        self._last_good: Dict[str, Result] = {}

    def observe(self, service_id: str, result: Result) -> Result:
        """The result to report for the service now that `result` was measured."""
        if result[0] != CRITICAL:
            self._failures.pop(service_id, None)
            self._last_good[service_id] = result
            return result
        count = self._failures.get(service_id, 0) + 1
        self._failures[service_id] = count
        good = self._last_good.get(service_id)
        if good is None or count >= self.failures_before_critical:
            return result
        return good

    def remember(self, service_id: str, result: Result) -> None:
        """A good result known from elsewhere (what Consul shows after a daemon restart)."""
        if result[0] != CRITICAL:
            self._last_good.setdefault(service_id, result)

    def failures(self, service_id: str) -> int:
        """Consecutive critical results observed for the service."""
        return self._failures.get(service_id, 0)

    def forget(self, service_id: str) -> None:
        """No hold next time (it failed in a way that must show at once)."""
        self._failures.pop(service_id, None)
        self._last_good.pop(service_id, None)

    def retain(self, service_ids: Iterable[str]) -> None:
        """Drops what is known about any other service, so the guard stays as small as the host."""
        keep = set(service_ids)
        for table in (self._failures, self._last_good):
            for key in [k for k in table if k not in keep]:
                del table[key]
