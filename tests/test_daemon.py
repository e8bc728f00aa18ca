"""`regagent run` as systemd runs it: a notify socket this test owns, signals, the metrics
endpoint, against the three-server emulator. Real processes on loopback, stopped by pid."""

from __future__ import annotations

import signal
import time
import urllib.request
from pathlib import Path
from typing import Any, Callable, Dict, List, Tuple

import yaml
from prometheus_client.parser import text_string_to_metric_families

from consulsim import SimCluster
from helpers.consul import (
    NODE,
    REGISTER,
    endpoint_count,
    node_services,
    static,
    write_config,
)
from helpers.daemon import has, notified_daemon
from helpers.ports import free_port
from regagent.daemon import STOP_BOUND

TXN = "PUT /v1/txn"
Samples = Dict[Tuple[str, Tuple[Tuple[str, str], ...]], float]


def status_of(message: str) -> str:
    for line in message.split("\n"):
        if line.startswith("STATUS="):
            return line[len("STATUS=") :]
    return ""


def scrape(port: int) -> Samples:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
        text = answer.read().decode()
    found: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def metric(found: Samples, name: str, **labels: str) -> float:
    return found.get((name, tuple(sorted(labels.items()))), 0.0)


def by_label(found: Samples, name: str) -> Dict[Tuple[Tuple[str, str], ...], float]:
    return {labels: value for (n, labels), value in found.items() if n == name}


def eventually(condition: Callable[[], bool], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.1)
    assert condition(), f"not within {timeout}s"


def log_events(path: Path) -> List[Dict[str, Any]]:
    import json

    return [json.loads(line) for line in path.read_text().splitlines() if line.startswith("{")]


def with_telemetry(tmp_path: Path, cluster: SimCluster, services: List[Any], port: int) -> Path:
    return write_config(tmp_path, cluster, services, telemetry={"listen": f"127.0.0.1:{port}"})


def test_ready_status_watchdog_reload_and_stopping(
    consul_cluster: SimCluster, tmp_path: Path
) -> None:
    config = write_config(tmp_path, consul_cluster, [static("queue", 9000)])
    with notified_daemon(config, watchdog_usec=400_000) as (daemon, notify, log):
        _, ready = notify.wait_for(has("READY=1"))
        assert status_of(ready).startswith("in sync: 1 services via 127.0.0.1:")
        status_index, _ = notify.wait_for(lambda m: m.startswith("STATUS="))  # a later cycle
        # Pings every 0.2s (half of WATCHDOG_USEC): count them over a generous window.
        before = len(notify.pings())
        time.sleep(3)
        sent = len(notify.pings()) - before
        assert 5 <= sent <= 60, sent  # about 15; neither silent nor a flood

        daemon.send_signal(signal.SIGHUP)
        reloading, message = notify.wait_for(has("RELOADING=1"), after=status_index)
        assert any(line.startswith("MONOTONIC_USEC=") for line in message.split("\n"))
        notify.wait_for(lambda m: m == "READY=1", after=reloading)
        assert daemon.poll() is None, "SIGHUP must not kill the daemon"

        daemon.send_signal(signal.SIGTERM)
        notify.wait_for(has("STOPPING=1"), after=reloading)
        assert daemon.wait(timeout=STOP_BOUND) == 0
    events = [e["event"] for e in log_events(log)]
    assert "config_reloaded" in events and "stopped" in events


def test_a_wedged_cycle_stops_the_pings_and_sigterm_still_ends_it(
    consul_cluster: SimCluster, tmp_path: Path
) -> None:
    """Every server black-holed with a 30s read timeout (the most check-config allows): the
    cycle hangs in one request, far longer than the watchdog interval (0.5s). The pings must
    stop (systemd would restart the service), and SIGTERM must end the process within the stop
    bound, not after the call."""
    # Without the node watch: its fresh answer would spare the cycles every request, and
    # this is about a cycle that hangs in one.
    config = write_config(
        tmp_path,
        consul_cluster,
        [static("queue", 9000)],
        consul={"read_timeout": "30s", "watch_wait": "0s"},
    )
    with notified_daemon(config, watchdog_usec=1_000_000) as (daemon, notify, log):
        notify.wait_for(has("READY=1"))
        eventually(lambda: len(notify.pings()) >= 3)
        for i in range(3):
            consul_cluster.blackhole(i)

        def silent_for_a_while() -> bool:
            pings = notify.pings()
            return bool(pings) and time.monotonic() - pings[-1] > 2.5  # five intervals

        eventually(silent_for_a_while, timeout=20)
        assert daemon.poll() is None
        index = len(notify.snapshot())
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(timeout=STOP_BOUND) == 0  # not 30s: the call was interrupted
        notify.wait_for(has("STOPPING=1"), after=index, timeout=5)
    events = [e["event"] for e in log_events(log)]
    assert "watchdog_withheld" in events
    assert "cycle_interrupted" in events


def test_a_broken_reload_keeps_the_old_configuration_and_is_counted(
    consul_cluster: SimCluster, tmp_path: Path
) -> None:
    port = free_port()
    config = with_telemetry(tmp_path, consul_cluster, [static("queue", 9000)], port)
    with notified_daemon(config) as (daemon, notify, log):
        notify.wait_for(has("READY=1"))
        broken = yaml.safe_load(config.read_text())
        broken["services"] = [{"name": "cache", "port": "six"}]  # not a port
        broken["sync"]["intervall"] = "1s"  # no such key
        config.write_text(yaml.safe_dump(broken))
        before = len(notify.snapshot())
        daemon.send_signal(signal.SIGHUP)
        _, rejected = notify.wait_for(lambda m: "configuration reload rejected" in m, after=before)
        assert status_of(rejected) == (
            "configuration reload rejected: 2 errors (old configuration kept)"
        )
        found = scrape(port)
        assert metric(found, "regagent_config_reloads_total", result="failure") == 1
        assert metric(found, "regagent_config_reloads_total", result="success") == 0
        assert metric(found, "regagent_config_last_reload_successful") == 0
        cycles = metric(found, "regagent_sync_cycles_total", result="success")
        # The old configuration keeps running: more cycles, the service still registered,
        # and STATUS keeps saying the reload was rejected.
        eventually(
            lambda: metric(scrape(port), "regagent_sync_cycles_total", result="success") > cycles
        )
        _, later = notify.wait_for(lambda m: "in sync" in status_of(m), after=before)
        assert "reload rejected" in status_of(later)
        assert set(node_services(consul_cluster)) == {"queue-9000", f"regagent-{port}"}
        assert daemon.poll() is None
    problems = [e for e in log_events(log) if e["event"] == "config_reload_problem"]
    assert len(problems) == 2  # each error once
    assert any("intervall" in p["problem"] for p in problems)


def test_a_reload_that_adds_a_service_writes_exactly_that_service(
    consul_cluster: SimCluster, tmp_path: Path
) -> None:
    port = free_port()
    services = [static("queue", 9000), static("billing", 8080, ["b"])]
    config = with_telemetry(tmp_path, consul_cluster, services, port)
    with notified_daemon(config) as (daemon, notify, _):
        notify.wait_for(has("READY=1"))
        registered = consul_cluster.catalog_node_services(NODE)["Services"]
        assert set(registered) == {"queue-9000", "billing-8080", f"regagent-{port}"}
        indexes = {sid: s["ModifyIndex"] for sid, s in registered.items()}
        node_index = consul_cluster.catalog_node_services(NODE)["Node"]["ModifyIndex"]
        consul_cluster.reset_stats()
        with_telemetry(tmp_path, consul_cluster, [*services, static("cache", 6379)], port)
        before = len(notify.snapshot())
        daemon.send_signal(signal.SIGHUP)
        reloaded, _ = notify.wait_for(has("RELOADING=1"), after=before)
        notify.wait_for(lambda m: "in sync: 4 services" in m, after=reloaded)
        # Two more cycles after it, to show that steady state stays write-free.
        last, _ = notify.wait_for(lambda m: m.startswith("STATUS=in sync"), after=reloaded + 2)
        notify.wait_for(lambda m: m.startswith("STATUS=in sync"), after=last + 1)
        after = consul_cluster.catalog_node_services(NODE)["Services"]
        assert set(after) == {*indexes, "cache-6379"}
        assert {sid: after[sid]["ModifyIndex"] for sid in indexes} == indexes  # untouched
        # One write request, a /v1/txn or a catalog register, whichever the cluster serves.
        assert endpoint_count(consul_cluster, REGISTER) + endpoint_count(consul_cluster, TXN) == 1
        node_after = consul_cluster.catalog_node_services(NODE)["Node"]
        assert node_after["ModifyIndex"] == node_index
        assert metric(scrape(port), "regagent_config_reloads_total", result="success") == 1


def test_metrics_endpoint_counts_writes_and_a_failover(
    consul_cluster: SimCluster, tmp_path: Path
) -> None:
    port = free_port()
    config = with_telemetry(tmp_path, consul_cluster, [static("queue", 9000)], port)
    consul_cluster.reset_stats()
    with notified_daemon(config) as (_, notify, _):
        notify.wait_for(has("READY=1"))
        found = scrape(port)
        assert metric(found, "regagent_sync_cycles_total", result="success") >= 1
        # The first sync registered two services: queue-9000 and regagent's own endpoint.
        assert metric(found, "regagent_consul_writes_total", kind="register") == 2
        assert set(node_services(consul_cluster)) == {"queue-9000", f"regagent-{port}"}
        assert metric(found, "regagent_last_successful_sync_timestamp_seconds") > 0
        assert metric(found, "regagent_consul_servers") == 3
        assert metric(found, "regagent_consul_servers_reachable") == 3
        assert metric(found, "regagent_services", source="static") == 1
        assert metric(found, "regagent_services", source="self") == 1
        assert metric(found, "regagent_service_checks", status="passing") == 2
        assert metric(found, "regagent_consul_failovers_total") == 0
        current = [
            dict(labels)["server"]
            for labels, value in by_label(found, "regagent_consul_current_server").items()
            if value == 1
        ]
        assert len(current) == 1
        used = consul_cluster.addresses.index(current[0])
        assert metric(found, "regagent_consul_rpc_requests_total", server=current[0],
                      outcome="success") >= 1  # fmt: skip
        assert by_label(found, "regagent_build_info")
        assert not [name for name, _ in found if name.endswith("_created")]  # process policy

        own = node_services(consul_cluster)[f"regagent-{port}"]
        assert own["Service"] == "regagent" and own["Port"] == port
        assert own["Meta"]["managed-by"] == "regagent"
        assert own["Meta"]["metrics_path"] == "/metrics"

        consul_cluster.stop_server(used)
        eventually(lambda: metric(scrape(port), "regagent_consul_failovers_total") == 1)
        found = scrape(port)
        assert metric(found, "regagent_consul_servers_reachable") == 2
        assert metric(found, "regagent_consul_rpc_requests_total", server=current[0],
                      outcome="failure") >= 1  # fmt: skip
        assert metric(found, "regagent_consul_current_server", server=current[0]) == 0
