"""regagent's own metrics (prometheus-client).

Everything is read from the cycle report (`observe_cycle`), from the server pool's request
observer (`observe_request`) and from the daemon's reload outcome, never sprinkled next to
log calls. Each `Metrics` has its own `CollectorRegistry` (not the global one): two apps in one
process share no state. Names follow Prometheus's own Consul SD metrics
(`prometheus_sd_consul_rpc_failures_total`, `..._rpc_duration_seconds`); the list, with what
each means and what to alert on, is in README ("Operating the daemon").

`regagent.metrics_endpoint` serves `Metrics.render` on `telemetry.listen`, within bounds.
"""

from __future__ import annotations

import platform
import threading
import time
from typing import Dict, Optional, Sequence, Set, Tuple

import prometheus_client
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    ProcessCollector,
)
from prometheus_client.exposition import generate_latest

from regagent import __version__
from regagent.errors import ConsulRefused, ConsulUnreachable, CycleDeadline, NoClusterLeader
from regagent.model import Source
from regagent.report import CycleReport

# Request outcomes, as the pool reports them.
SUCCESS = "success"
FAILURE = "failure"  # connection error, timeout, 5xx: the server counts as unreachable
NO_LEADER = "no_leader"
REFUSED = "refused"

_CYCLE_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_RPC_BUCKETS = (0.005, 0.025, 0.1, 0.5, 2.5, 10.0)


def cycle_result(report: CycleReport) -> str:
    """The `result` label of a cycle: `success` or what stopped it."""
    error = report.error
    if error is None:
        return "success"
    for kind, label in (
        (NoClusterLeader, "no_leader"),  # before its base class ConsulUnreachable
        (ConsulUnreachable, "unreachable"),
        (ConsulRefused, "refused"),
        (CycleDeadline, "deadline"),
    ):
        if isinstance(error, kind):
            return label
    return "error"


def _without_created_series() -> None:
    """No `*_created` series beside every counter and histogram: they double what Prometheus
    stores for ten thousand agents and say nothing `process_start_time_seconds` would not."""
    disable = getattr(prometheus_client, "disable_created_metrics", None)
    if disable is not None:  # prometheus-client >= 0.17
        disable()
    else:  # 0.16 (Debian 12) reads PROMETHEUS_DISABLE_CREATED_SERIES once, at import
        prometheus_client.metrics._use_created = False


SESSION_RENEWAL_RESULTS = ("success", "lost", "failure")
SESSION_STATES = ("armed", "pending", "unsupported", "off")


class Metrics:
    """The daemon's metrics; lives as long as the process (a reload keeps the counters)."""

    def __init__(self) -> None:
        _without_created_series()
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        ProcessCollector(registry=r)  # process_cpu_seconds_total, RSS, fds, start time
        self.build = Info("regagent_build", "regagent version and Python runtime.", registry=r)
        self.build.info({"version": __version__, "python_version": platform.python_version()})
        self.cycles = Counter(
            "regagent_sync_cycles_total", "Sync cycles by result.", ["result"], registry=r
        )
        self.cycle_duration = Histogram(
            "regagent_sync_cycle_duration_seconds",
            "Duration of a sync cycle (read, discovery and checks, plan, apply).",
            buckets=_CYCLE_BUCKETS,
            registry=r,
        )
        self.last_success = Gauge(
            "regagent_last_successful_sync_timestamp_seconds",
            "Unix time of the last cycle that ended in sync with Consul.",
            registry=r,
        )
        self.writes = Counter(
            "regagent_consul_writes_total", "Consul writes applied, by kind.", ["kind"], registry=r
        )
        self.rpc = Counter(
            "regagent_consul_rpc_requests_total",
            "Requests to Consul servers by server and outcome "
            "(success, failure, no_leader, refused).",
            ["server", "outcome"],
            registry=r,
        )
        self.rpc_duration = Histogram(
            "regagent_consul_rpc_duration_seconds",
            "Duration of requests to Consul servers, whatever their outcome.",
            ["server"],
            buckets=_RPC_BUCKETS,
            registry=r,
        )
        self.failovers = Counter(
            "regagent_consul_failovers_total",
            "Times a cycle was served by another Consul server than the cycle before.",
            registry=r,
        )
        self.current = Gauge(
            "regagent_consul_current_server",
            "1 for the Consul server the last cycle used, 0 for the other configured ones.",
            ["server"],
            registry=r,
        )
        self.configured = Gauge("regagent_consul_servers", "Consul servers configured.", registry=r)
        self.reachable = Gauge(
            "regagent_consul_servers_reachable",
            "Configured Consul servers whose last request did not fail to connect, time out "
            "or answer 5xx (a server not asked yet counts as reachable).",
            registry=r,
        )
        self.services = Gauge(
            "regagent_services",
            "Services this host should have registered, by source (static, discovery, self).",
            ["source"],
            registry=r,
        )
        self.checks = Gauge(
            "regagent_service_checks",
            "Service checks of this host by status (passing, warning, critical).",
            ["status"],
            registry=r,
        )
        self.reloads = Counter(
            "regagent_config_reloads_total",
            "Configuration reloads (SIGHUP) by result (success, failure).",
            ["result"],
            registry=r,
        )
        self.reload_ok = Gauge(
            "regagent_config_last_reload_successful",
            "1 if the last reload was applied (or none was asked), 0 if it was rejected.",
            registry=r,
        )
        self.reload_ok.set(1)
        self.session_renewals = Counter(
            "regagent_session_renewals_total",
            "Renewals of the dead-man's switch session by result (success; lost: Consul had "
            "invalidated it, a new one is made; failure: no server answered usefully).",
            ["result"],
            registry=r,
        )
        self.sessions_created = Counter(
            "regagent_sessions_created_total",
            "Sessions the dead-man's switch created (one at start, one after each loss).",
            registry=r,
        )
        self.session_state = Gauge(
            "regagent_session_state",
            "1 for the dead-man's switch's state (armed, pending, unsupported: an older "
            "Consul without session checks, off), 0 for the others.",
            ["state"],
            registry=r,
        )
        for result in SESSION_RENEWAL_RESULTS:
            self.session_renewals.labels(result).inc(0)
        self.sessions_created.inc(0)
        for result in ("success", "failure"):
            self.reloads.labels(result).inc(0)
        self.cycles.labels("success").inc(0)
        self.failovers.inc(0)
        self._servers: Tuple[str, ...] = ()
        self._unreachable: Set[str] = set()
        self._last_server: Optional[str] = None
        self._lock = threading.Lock()

    def configure(self, servers: Sequence[str]) -> None:
        """The configured servers (at start and after a reload); series of removed ones go."""
        with self._lock:
            for gone in set(self._servers) - set(servers):
                self.current.remove(gone)
                self._unreachable.discard(gone)
            self._servers = tuple(servers)
            self.configured.set(len(servers))
            for server in servers:
                self.current.labels(server).set(1 if server == self._last_server else 0)
            self.reachable.set(len(set(servers) - self._unreachable))

    def observe_request(self, server: str, outcome: str, seconds: float) -> None:
        """One request to one server, as the pool's observer reports it."""
        self.rpc.labels(server, outcome).inc()
        self.rpc_duration.labels(server).observe(seconds)
        with self._lock:
            if outcome == FAILURE:
                self._unreachable.add(server)
            else:
                self._unreachable.discard(server)
            self.reachable.set(len(set(self._servers) - self._unreachable))

    def observe_cycle(self, report: CycleReport, now: Optional[float] = None) -> None:
        """Everything a finished cycle tells, from its report."""
        result = cycle_result(report)
        self.cycles.labels(result).inc()
        self.cycle_duration.observe(report.duration)
        for kind, count in report.writes_by_kind.items():
            self.writes.labels(kind).inc(count)
        if result == "success":
            self.last_success.set(time.time() if now is None else now)
        if report.server is not None:
            with self._lock:
                if self._last_server is not None and report.server != self._last_server:
                    self.failovers.inc()
                self._last_server = report.server
                for server in self._servers:
                    self.current.labels(server).set(1 if server == report.server else 0)
        if report.desired is not None:
            by_source = dict.fromkeys(Source, 0)
            for service in report.desired.services:
                by_source[report.sources.get(service.id, Source.STATIC)] += 1
            for source, count in by_source.items():
                self.services.labels(source).set(count)
            by_status: Dict[str, int] = {"passing": 0, "warning": 0, "critical": 0}
            for check in report.desired.checks:
                by_status[check.status] = by_status.get(check.status, 0) + 1
            for status, count in by_status.items():
                self.checks.labels(status).set(count)

    def observe_writes(self, report: CycleReport) -> None:
        """The writes of a partial cycle (the watch between full cycles): counted, nothing
        else, since such a pass sees only the services whose listeners changed."""
        for kind, count in report.writes_by_kind.items():
            self.writes.labels(kind).inc(count)

    def observe_session_renewal(self, result: str) -> None:
        self.session_renewals.labels(result).inc()

    def observe_session_created(self) -> None:
        self.sessions_created.inc()

    def observe_session_state(self, state: str) -> None:
        for known in SESSION_STATES:
            self.session_state.labels(known).set(1 if known == state else 0)

    def observe_reload(self, ok: bool) -> None:
        self.reloads.labels("success" if ok else "failure").inc()
        self.reload_ok.set(1 if ok else 0)

    def render(self) -> bytes:
        return generate_latest(self.registry)
