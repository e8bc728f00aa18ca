"""regagent's own metrics (prometheus-client).

Two kinds, as prometheus-client's own collectors do it ("registries collect, exposition
renders"):
- events are counted when they happen: cycles by result, writes by kind, requests by server and
  outcome (the server pool's observer), failovers, reloads, and the duration histograms;
- state is read when Prometheus scrapes (`_StateCollector`): the servers, which one the last
  cycle used and how many are reachable come from the server pool itself, the services and
  checks from the last cycle's report, the credentials' load times and certificate expiries
  from the pool's `Credentials`. Nothing is copied, so nothing can drift from the pool.

Each `Metrics` has its own `CollectorRegistry` (not the global one): two apps in one process
share no state. Names follow Prometheus's own Consul SD metrics
(`prometheus_sd_consul_rpc_failures_total`, `..._rpc_duration_seconds`); the list, with what
each means and what to alert on, is in README ("Operating the daemon"). Whether `*_created`
series are exported is the process's choice (`regagent.cli.main`), not this module's.

`regagent.metrics_endpoint` serves `Metrics.render` on `telemetry.listen`, within bounds.
"""

from __future__ import annotations

import platform
import time
from typing import Dict, Iterator, Optional

from prometheus_client import CollectorRegistry, Counter, Histogram, Info, ProcessCollector
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import Collector

from regagent import __version__
from regagent.consul.answers import Outcome
from regagent.consul.credentials import Credentials
from regagent.consul.pool import ServerPool
from regagent.errors import ConsulRefused, ConsulUnreachable, CycleDeadline, NoClusterLeader
from regagent.model import Source
from regagent.report import CycleReport

_CYCLE_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_RPC_BUCKETS = (0.005, 0.025, 0.1, 0.5, 2.5, 10.0)
SUCCESS = "success"  # the `result` label of a cycle or a reload that did what it should


def cycle_result(report: CycleReport) -> str:
    """The `result` label of a cycle: `success` or what stopped it."""
    error = report.error
    if error is None:
        return SUCCESS
    for kind, label in (
        (NoClusterLeader, "no_leader"),  # before its base class ConsulUnreachable
        (ConsulUnreachable, "unreachable"),
        (ConsulRefused, "refused"),
        (CycleDeadline, "deadline"),
    ):
        if isinstance(error, kind):
            return label
    return "error"


SESSION_RENEWAL_RESULTS = ("success", "lost", "failure")
SESSION_STATES = ("armed", "pending", "unsupported", "off")


class Metrics:
    """The daemon's metrics; lives as long as the process (a reload keeps the counters)."""

    def __init__(self) -> None:
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
        self.writes = Counter(
            "regagent_consul_writes_total", "Consul writes applied, by kind.", ["kind"], registry=r
        )
        self.rpc = Counter(
            "regagent_consul_rpc_requests_total",
            "Requests to Consul servers by server and outcome "
            f"({', '.join(outcome.value for outcome in Outcome)}).",
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
        # The blocking query on the node (regagent.consul.node_watch), by what each answer was.
        self.watch_answers = Counter(
            "regagent_consul_watch_answers_total",
            "Answers of the blocking query on this host's node, by result (changed, "
            "unchanged, index_reset, not_blocking, failed).",
            ["result"],
            registry=r,
        )
        self.repairs = Counter(
            "regagent_catalog_repairs_total",
            "Times the node watch saw Consul hold something else than regagent wrote, and "
            "regagent wrote it back between cycles.",
            registry=r,
        )
        self.reloads = Counter(
            "regagent_config_reloads_total",
            "Configuration reloads (SIGHUP) by result (success, failure).",
            ["result"],
            registry=r,
        )
        for result in (SUCCESS, "failure"):
            self.reloads.labels(result).inc(0)
        self.cycles.labels(SUCCESS).inc(0)
        self.failovers.inc(0)
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
        for result in SESSION_RENEWAL_RESULTS:
            self.session_renewals.labels(result).inc(0)
        self.sessions_created.inc(0)
        self.session_state: Optional[str] = None  # the dead-man's switch's, once it has one
        # What the gauges read at scrape time (`_StateCollector`).
        self.pool: Optional[ServerPool] = None  # the servers of the running configuration
        self.served: Optional[CycleReport] = None  # the last cycle that was served by a server
        self.planned: Optional[CycleReport] = None  # the last cycle that built a desired state
        self.last_success: float = 0.0  # Unix time of the last cycle that ended in sync
        self.reload_ok = True  # whether the last reload was applied (or none was asked)
        r.register(_StateCollector(self))

    def observe_pool(self, pool: ServerPool) -> None:
        """Scrapes read this pool's servers from now on: the one a (re)load built."""
        self.pool = pool

    def observe_request(self, server: str, outcome: Outcome, seconds: float) -> None:
        """One request to one server, as the pool's observer reports it."""
        self.rpc.labels(server, outcome.value).inc()
        self.rpc_duration.labels(server).observe(seconds)

    def observe_cycle(self, report: CycleReport, now: Optional[float] = None) -> None:
        """Everything a finished cycle tells, from its report."""
        result = cycle_result(report)
        self.cycles.labels(result).inc()
        self.cycle_duration.observe(report.duration)
        self._count_writes(report)
        if result == SUCCESS:
            self.last_success = time.time() if now is None else now
        if report.server is not None:
            before = self.served
            if before is not None and before.server != report.server:
                self.failovers.inc()
            self.served = report
        if report.desired is not None:
            self.planned = report

    def observe_writes(self, report: CycleReport) -> None:
        """The writes of a partial cycle (the watch between full cycles): counted, nothing
        else, since such a pass sees only the services whose listeners changed."""
        self._count_writes(report)

    def observe_watch(self, result: str) -> None:
        """One answer (or failure) of the node watch's blocking query."""
        self.watch_answers.labels(result).inc()

    def observe_repair(self, report: CycleReport) -> None:
        """A repair between cycles: its writes counted like a partial cycle's."""
        self._count_writes(report)
        if report.error is None:
            self.repairs.inc()

    def observe_session_renewal(self, result: str) -> None:
        self.session_renewals.labels(result).inc()

    def observe_session_created(self) -> None:
        self.sessions_created.inc()

    def observe_session_state(self, state: str) -> None:
        self.session_state = state

    def observe_reload(self, ok: bool) -> None:
        self.reloads.labels(SUCCESS if ok else "failure").inc()
        self.reload_ok = ok

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def _count_writes(self, report: CycleReport) -> None:
        for kind, count in report.writes_by_kind.items():
            self.writes.labels(kind).inc(count)


class _StateCollector(Collector):
    """The gauges, read from the server pool and the last cycle's report when scraped."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def describe(self) -> Iterator[Metric]:
        return self._families(scrape=False)

    def collect(self) -> Iterator[Metric]:
        return self._families(scrape=True)

    def _families(self, scrape: bool) -> Iterator[Metric]:
        m = self.metrics
        servers = list(m.pool.servers) if scrape and m.pool is not None else []
        used = m.served.server if scrape and m.served is not None else None
        current = GaugeMetricFamily(
            "regagent_consul_current_server",
            "1 for the Consul server the last cycle used, 0 for the other configured ones.",
            labels=["server"],
        )
        for server in servers:
            current.add_metric([server.address], 1 if server.address == used else 0)
        yield current
        yield GaugeMetricFamily(
            "regagent_consul_servers", "Consul servers configured.", value=len(servers)
        )
        yield GaugeMetricFamily(
            "regagent_consul_servers_reachable",
            "Configured Consul servers whose last request did not fail to connect, time out "
            "or answer 5xx (a server not asked yet counts as reachable).",
            value=sum(server.last_outcome is not Outcome.FAILURE for server in servers),
        )
        services = GaugeMetricFamily(
            "regagent_services",
            "Services this host should have registered, by source (static, discovery, self).",
            labels=["source"],
        )
        checks = GaugeMetricFamily(
            "regagent_service_checks",
            "Service checks of this host by status (passing, warning, critical).",
            labels=["status"],
        )
        planned = m.planned if scrape else None
        if planned is not None and planned.desired is not None:
            by_source = dict.fromkeys(Source, 0)
            for service in planned.desired.services:
                by_source[planned.sources.get(service.id, Source.STATIC)] += 1
            for source, count in by_source.items():
                services.add_metric([source.value], count)
            by_status: Dict[str, int] = {"passing": 0, "warning": 0, "critical": 0}
            for check in planned.desired.checks:
                by_status[check.status] = by_status.get(check.status, 0) + 1
            for status, count in by_status.items():
                checks.add_metric([status], count)
        yield services
        yield checks
        session = GaugeMetricFamily(
            "regagent_session_state",
            "1 for the dead-man's switch's state (armed, pending, unsupported: an older "
            "Consul without session checks, off), 0 for the others (catalog mode only).",
            labels=["state"],
        )
        state = m.session_state if scrape else None
        if state is not None:
            for known in SESSION_STATES:
                session.add_metric([known], 1 if known == state else 0)
        yield session
        yield GaugeMetricFamily(
            "regagent_last_successful_sync_timestamp_seconds",
            "Unix time of the last cycle that ended in sync with Consul.",
            value=m.last_success,
        )
        yield GaugeMetricFamily(
            "regagent_config_last_reload_successful",
            "1 if the last reload was applied (or none was asked), 0 if it was rejected.",
            value=1 if m.reload_ok else 0,
        )
        credentials = m.pool.credentials if scrape and m.pool is not None else None
        yield from _credential_families(credentials)


def _credential_families(credentials: Optional[Credentials]) -> Iterator[Metric]:
    """Per credential (token, ca, cert): when the one in use was loaded, a certificate's
    validity (an alert warns before it ends), and whether a new file on disk is refused."""
    loaded = GaugeMetricFamily(
        "regagent_credential_loaded_timestamp_seconds",
        "Unix time the credential in use (token, ca, cert) was loaded: at start, at a reload, "
        "or when its rotated file was taken in.",
        labels=["credential"],
    )
    not_before = GaugeMetricFamily(
        "regagent_credential_not_before_timestamp_seconds",
        "Unix time the certificate in use (cert; ca: the one of the bundle that expires first) "
        "became valid.",
        labels=["credential"],
    )
    expiry = GaugeMetricFamily(
        "regagent_credential_expiry_timestamp_seconds",
        "Unix time the certificate in use (cert; ca: the one of the bundle that expires first) "
        "expires (notAfter).",
        labels=["credential"],
    )
    rejected = GaugeMetricFamily(
        "regagent_credential_rejected",
        "1 while the credential's file on disk is refused (empty, cut off, expired, a key that "
        "does not match) and the previous one stays in use.",
        labels=["credential"],
    )
    states = credentials.snapshot() if credentials is not None else {}
    for name, state in sorted(states.items()):
        loaded.add_metric([name], state.loaded_at)
        if state.not_before is not None:
            not_before.add_metric([name], state.not_before)
        if state.not_after is not None:
            expiry.add_metric([name], state.not_after)
        rejected.add_metric([name], 1 if state.rejected else 0)
    yield loaded
    yield not_before
    yield expiry
    yield rejected
