"""Self-metrics: counters from cycle reports and the pool's request observer, gauges read from
the pool and the last report at scrape time (the endpoint: test_metrics_endpoint.py)."""

from __future__ import annotations

import contextlib
import re
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import pytest
from prometheus_client.parser import text_string_to_metric_families

import regagent
from regagent.config.model import ConsulConfig
from regagent.consul.answers import ErrorAnswer, Outcome, ServerFailed
from regagent.consul.pool import ServerPool
from regagent.errors import ConsulUnreachable, NoClusterLeader
from regagent.metrics import Metrics, cycle_result
from regagent.model import CheckState, DesiredState, NodeRegistration, ServiceRegistration
from regagent.report import CycleReport

README = Path(__file__).resolve().parent.parent / "README.md"
Samples = Dict[Tuple[str, Tuple[Tuple[str, str], ...]], float]


def samples(text: str) -> Samples:
    """Every sample as {(name, sorted labels): value}."""
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def value(found: Samples, name: str, **labels: str) -> float:
    return found[(name, tuple(sorted(labels.items())))]


def pool_of(metrics: Metrics, *servers: str, previous: Optional[ServerPool] = None) -> ServerPool:
    """A pool of `servers` whose requests `metrics` counts and whose servers it reads; a
    request's client is its server's address. With `previous`, a reload's pool."""
    pool = ServerPool(
        ConsulConfig(servers=servers), client_factory=lambda address, *_: address, rng=lambda: 0.5
    )
    if previous is not None:
        pool.adopt(previous)
    pool.observer = metrics.observe_request
    metrics.observe_pool(pool)
    return pool


def ask(pool: ServerPool, answers: Dict[str, str]) -> None:
    """One call: each server asked answers as `answers` says (ok, down or leaderless); the
    pool moves on from a server until one answers ok or none is left."""

    def operation(server: Any) -> None:
        answer = answers[server]
        if answer == "down":
            raise ServerFailed("connection refused")
        if answer == "leaderless":
            raise ErrorAnswer(500, "No cluster leader")

    with contextlib.suppress(ConsulUnreachable):
        pool.call("read", operation)


def report(
    server: Optional[str] = "s1:8500", error: object = None, writes: Optional[Dict[str, int]] = None
) -> CycleReport:
    services = (
        ServiceRegistration("a-1", "a", 1),
        ServiceRegistration("b-2", "b", 2),
        ServiceRegistration("regagent-9555", "regagent", 9555),
    )
    checks = (
        CheckState("service:a-1", "a-1", "a", "passing"),
        CheckState("service:b-2", "b-2", "b", "critical"),
    )
    return CycleReport(
        desired=DesiredState(NodeRegistration("n", "127.0.0.1"), services, checks),
        server=server,
        error=error,  # type: ignore[arg-type]
        writes_by_kind=dict(writes or {}),
        timings={"read": 0.01, "desired": 0.02},
        sources={"a-1": "static", "b-2": "discovery", "regagent-9555": "self"},
    )


def test_a_cycle_report_becomes_metrics() -> None:
    metrics = Metrics()
    pool_of(metrics, "s1:8500", "s2:8500", "s3:8500")
    metrics.observe_cycle(report(writes={"register": 2, "node": 1}), now=1000.0)
    metrics.observe_cycle(report(server="s2:8500"), now=1030.0)  # another server: a failover
    metrics.observe_cycle(report(server=None, error=ConsulUnreachable("none")), now=1060.0)
    found = samples(metrics.render().decode())
    assert value(found, "regagent_sync_cycles_total", result="success") == 2
    assert value(found, "regagent_sync_cycles_total", result="unreachable") == 1
    assert value(found, "regagent_consul_writes_total", kind="register") == 2
    assert value(found, "regagent_consul_writes_total", kind="node") == 1
    assert value(found, "regagent_consul_failovers_total") == 1
    assert value(found, "regagent_last_successful_sync_timestamp_seconds") == 1030.0
    assert value(found, "regagent_consul_current_server", server="s2:8500") == 1
    assert value(found, "regagent_consul_current_server", server="s1:8500") == 0
    assert value(found, "regagent_services", source="self") == 1
    assert value(found, "regagent_services", source="discovery") == 1
    assert value(found, "regagent_service_checks", status="critical") == 1
    assert value(found, "regagent_sync_cycle_duration_seconds_count") == 3
    assert value(found, "regagent_sync_cycle_duration_seconds_sum") == pytest.approx(0.09)
    build = [labels for name, labels in found if name == "regagent_build_info"]
    assert len(build) == 1 and dict(build[0])["version"] == regagent.__version__


def test_requests_count_by_server_and_outcome_and_reachability_follows() -> None:
    metrics = Metrics()
    pool = pool_of(metrics, "s1:8500", "s2:8500")
    ask(pool, {"s1:8500": "down", "s2:8500": "ok"})
    found = samples(metrics.render().decode())
    assert value(found, "regagent_consul_rpc_requests_total", server="s1:8500", outcome="failure")
    assert value(found, "regagent_consul_servers_reachable") == 1
    assert value(found, "regagent_consul_servers") == 2
    assert value(found, "regagent_consul_rpc_duration_seconds_count", server="s1:8500") == 1
    ask(pool, {"s2:8500": "down"})  # s1 cools down: only s2 is asked
    assert value(samples(metrics.render().decode()), "regagent_consul_servers_reachable") == 0
    for server in pool.servers:
        server.cooldown_until = 0.0  # both cooled down
    ask(pool, {"s1:8500": "leaderless", "s2:8500": "down"})  # s1 answered: reachable
    pool_of(metrics, "s1:8500", previous=pool)  # a reload dropped s2
    found = samples(metrics.render().decode())
    assert value(found, "regagent_consul_servers_reachable") == 1
    assert ("regagent_consul_current_server", (("server", "s2:8500"),)) not in found


def test_reloads_and_cycle_results() -> None:
    metrics = Metrics()
    found = samples(metrics.render().decode())
    assert value(found, "regagent_config_reloads_total", result="failure") == 0  # present at 0
    assert value(found, "regagent_config_last_reload_successful") == 1
    metrics.observe_reload(False)
    found = samples(metrics.render().decode())
    assert value(found, "regagent_config_reloads_total", result="failure") == 1
    assert value(found, "regagent_config_last_reload_successful") == 0
    assert cycle_result(CycleReport(error=NoClusterLeader("x"))) == "no_leader"


def test_two_metrics_share_no_state() -> None:
    first, second = Metrics(), Metrics()
    first.observe_cycle(report())
    found = samples(second.render().decode())
    assert value(found, "regagent_sync_cycles_total", result="success") == 0


def test_every_served_family_is_documented_in_readme() -> None:
    metrics = Metrics()
    pool_of(metrics, "s1:8500")
    metrics.observe_cycle(report(writes={"register": 1}))
    metrics.observe_request("s1:8500", Outcome.SUCCESS, 0.01)
    served = {family.name for family in text_string_to_metric_families(metrics.render().decode())}
    documented = set(re.findall(r"`((?:regagent|process)_[a-z_]+)", README.read_text()))
    for name in served:
        assert any(doc == name or doc.startswith(name + "_") for doc in documented), name
