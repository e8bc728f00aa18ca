"""`Health`: the checks of this host across cycles, behind one flap guard.

The engine asks it for the results of the intents whose health is not known yet (static
services with a probe) when regagent runs the checks, and has it forget every other service
once per full cycle; discovery asks it to hold a failed probe of a known exporter, or to forget
one that must show at once. Both use the same guard, keyed by service ID, seeded once per cycle
from what Consul shows. Only this class touches the guard.
"""

from __future__ import annotations

from typing import Callable, Dict, Iterable, List, Sequence

from regagent.health.checks import run_probes
from regagent.health.flap import FAILURES_BEFORE_CRITICAL, FlapGuard
from regagent.model import CheckState, HealthProbe, Result, ServiceIntent

ProbeRunner = Callable[[List[HealthProbe]], Dict[HealthProbe, Result]]


class Health:
    """Lives as long as the daemon (and across reloads): its flap history is the point."""

    def __init__(
        self,
        failures_before_critical: int = FAILURES_BEFORE_CRITICAL,
        probe_runner: ProbeRunner = run_probes,
    ) -> None:
        self.guard = FlapGuard(failures_before_critical)
        self.probe_runner = probe_runner

    def configure(self, failures_before_critical: int) -> None:
        """A reload may change the threshold; the history stays."""
        self.guard.failures_before_critical = failures_before_critical

    @property
    def failures_before_critical(self) -> int:
        return self.guard.failures_before_critical

    def seed(self, checks: Iterable[CheckState]) -> None:
        """After a restart, Consul still shows the last good results: start from them."""
        for check in checks:
            self.guard.remember(check.service_id, (check.status, check.output))

    def hold(self, service_id: str, result: Result) -> Result:
        """`result` as it should be reported, a recent failure of a passing service held back."""
        return self.guard.observe(service_id, result)

    def failures(self, service_id: str) -> int:
        """Failed results in a row seen for the service (the log says how close it is)."""
        return self.guard.failures(service_id)

    def forget(self, service_id: str) -> None:
        """No hold for the service next time: it failed in a way that must show at once."""
        self.guard.forget(service_id)

    def evaluate(self, intents: Sequence[ServiceIntent]) -> Dict[str, Result]:
        """Runs the probes of the intents whose status is not known yet, concurrently, each
        result through the guard; returns them by service ID."""
        probes = {i.service.id: i.probe for i in intents if i.status is None and i.probe}
        results = self.probe_runner(list(probes.values()))
        return {sid: self.hold(sid, results[probe]) for sid, probe in probes.items()}

    def retain(self, service_ids: Iterable[str]) -> None:
        """Forgets every other service, so the history stays as small as the host: once per
        full cycle, with every intent (a partial cycle sees only some)."""
        self.guard.retain(service_ids)
