"""The watch between full cycles, against the three-server emulator with real exporters.

Every daemon here runs with `sync.interval: 1h`, so whatever happens after its first cycle was
done by the watch. Discovery is restricted to the ports the test started (the known exporter
ports and binaries are excluded), so exporters the host runs itself change nothing. Waits are
bounded; timings belong in bench/latency.py.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Dict, Optional

from consulsim import SimCluster
from helpers.cli import events
from helpers.consul import NODE, OTHER_SERVER, running_daemon, write_config
from helpers.discovery import exporter, hermetic_discovery, kill
from helpers.ports import free_port
from helpers.waits import wait_for
from regagent.app import build
from regagent.config import load_config


def hour_sync(tmp_path: Path) -> Dict[str, Any]:
    return {"interval": "1h", "jitter": "1s", "state_dir": str(tmp_path / "state")}


def status_of(cluster: SimCluster, sid: str) -> Optional[str]:
    """The check status of `sid` as another server sees it (None: not registered)."""
    checks = cluster.get(OTHER_SERVER, f"/v1/health/node/{NODE}?stale") or []
    found = [c["Status"] for c in checks if c["CheckID"] == f"service:{sid}"]
    return found[0] if found else None


def node_known(cluster: SimCluster) -> bool:
    """The daemon's first full cycle is done, its dead-man's switch armed included (a session
    on the node): the requests that follow are the watch's alone."""
    if cluster.catalog_node_services(NODE) is None:
        return False
    return bool(cluster.get(cluster.live_server(), f"/v1/session/node/{NODE}?stale"))


def put_requests(cluster: SimCluster) -> int:
    return sum(n for key, n in cluster.stats()["endpoints"].items() if key.startswith("PUT "))


def test_an_exporter_started_while_the_daemon_runs_is_registered_and_turns_critical_when_stopped(
    consul_cluster: SimCluster, tmp_path: Path
) -> None:
    port = free_port()
    sid = f"node-exporter-{port}"
    config = write_config(
        tmp_path,
        consul_cluster,
        [],
        sync=hour_sync(tmp_path),
        discovery=hermetic_discovery([port]),  # watch_interval: its default, 1s
    )
    with running_daemon(config) as daemon:
        wait_for("the first full cycle", lambda: node_known(consul_cluster))
        with exporter("serve", str(port)) as proc:
            wait_for(f"{sid} passing", lambda: status_of(consul_cluster, sid) == "passing")
            time.sleep(5.5)  # past the watch's 5 s hold-off, so the death is written at once
            kill(proc)
            wait_for(f"{sid} critical", lambda: status_of(consul_cluster, sid) == "critical")
    assert daemon.returncode == 0, daemon.stderr_text
    assert [e["cycles"] for e in events(daemon.stderr_text, "stopped")] == [1]  # 1h interval
    (fast,) = events(daemon.stderr_text, "exporter_registered_fast")
    assert fast["service_id"] == sid and fast["status"] == "passing"
    assert isinstance(fast["delay_s"], float) and fast["delay_s"] >= 0
    (down,) = [
        e for e in events(daemon.stderr_text, "exporter_status_fast") if e["service_id"] == sid
    ]
    assert down["status"] == "critical"
    services = consul_cluster.catalog_node_services(NODE, server=OTHER_SERVER)
    assert services is not None and sid in services["Services"], "critical, still registered"


def test_a_slow_starting_exporter_is_registered_without_waiting_for_a_full_cycle(
    consul_cluster: SimCluster, tmp_path: Path
) -> None:
    port = free_port()
    sid = f"node-exporter-{port}"
    config = write_config(
        tmp_path,
        consul_cluster,
        [],
        sync=hour_sync(tmp_path),
        discovery=hermetic_discovery([port], probe_timeout="500ms", watch_interval="200ms"),
    )
    with running_daemon(config) as daemon:
        wait_for("the first full cycle", lambda: node_known(consul_cluster))
        # Listens at once, answers its first request 2 s later: the first probes fail.
        with exporter("serve", str(port), "--load", "2"):
            wait_for(f"{sid} passing", lambda: status_of(consul_cluster, sid) == "passing")
    assert [e["cycles"] for e in events(daemon.stderr_text, "stopped")] == [1]
    (fast,) = events(daemon.stderr_text, "exporter_registered_fast")
    assert fast["service_id"] == sid
    assert fast["delay_s"] >= 1.0, "registered only once it served, after failed probes"


def test_a_flapping_listener_makes_a_bounded_number_of_writes(
    consul_cluster: SimCluster, tmp_path: Path
) -> None:
    port = free_port()
    sid = f"node-exporter-{port}"
    config = write_config(
        tmp_path,
        consul_cluster,
        [],
        sync=hour_sync(tmp_path),
        discovery=hermetic_discovery([port], watch_interval="100ms", probe_timeout="300ms"),
        log={"level": "debug", "format": "json"},
    )
    with running_daemon(config) as daemon:
        wait_for("the first full cycle", lambda: node_known(consul_cluster))
        consul_cluster.reset_stats()
        started = time.monotonic()
        # Four binds a second, each serving metrics for 150 ms: dozens of changes in 8 s.
        with exporter("flap", str(port), "--up", "0.15", "--down", "0.1", "--lifetime", "8"):
            wait_for(f"{sid} registered", lambda: status_of(consul_cluster, sid) is not None)
            time.sleep(max(0.0, 8 - (time.monotonic() - started)))
        wait_for(f"{sid} critical", lambda: status_of(consul_cluster, sid) == "critical")
        elapsed = time.monotonic() - started
        writes = put_requests(consul_cluster)
    # At most one write of the service per 5 s hold-off, plus the first one.
    assert 1 <= writes <= 1 + int(elapsed / 5.0), (writes, elapsed, daemon.stderr_text)
    assert events(daemon.stderr_text, "fast_write_held"), "the flapping was seen and held back"
    assert [e["cycles"] for e in events(daemon.stderr_text, "stopped")] == [1]


def test_an_unchanged_host_costs_consul_nothing_between_full_cycles(
    consul_cluster: SimCluster, tmp_path: Path
) -> None:
    port = free_port()
    sid = f"node-exporter-{port}"
    config = write_config(
        tmp_path, consul_cluster, [], sync=hour_sync(tmp_path), discovery=hermetic_discovery([port])
    )
    with exporter("serve", str(port)):
        app = build(load_config(str(config)))
        assert app.watch is not None
        first = app.engine.cycle()
        assert first.error is None and first.writes >= 1
        assert status_of(consul_cluster, sid) == "passing"

        consul_cluster.reset_stats()
        for _ in range(30):
            assert app.watch.look() is None  # nothing changed: not even a partial cycle
        assert app.watch.looks == 30 and app.watch.passes == 0
        assert consul_cluster.stats()["requests"] == 0

        steady = app.engine.cycle()  # and a full cycle: 2 reads, 0 writes
        assert steady.error is None and steady.writes == 0
        assert consul_cluster.stats()["endpoints"] == {
            "GET /v1/catalog/node/:arg": 1,
            "GET /v1/health/node/:arg": 1,
        }
    # The exporter is gone: one look writes its critical check, and nothing else, no read.
    consul_cluster.reset_stats()
    result = app.watch.look()
    assert result is not None and result.report.error is None
    assert result.report.writes == 1
    assert consul_cluster.stats()["requests"] == 1
    assert status_of(consul_cluster, sid) == "critical"
