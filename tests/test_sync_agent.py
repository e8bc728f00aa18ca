"""Agent mode: register through a local Consul agent's API and let it run the checks."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict

import consul

from consulsim import SimCluster
from helpers.consul import regagent, static, write_config

AGENT_REGISTER = "PUT /v1/agent/service/register"


def agent_config(tmp_path: Path, cluster: SimCluster, services: Any) -> Path:
    return write_config(
        tmp_path, cluster, services, consul={"mode": "agent", "agent_address": cluster.addresses[1]}
    )


def agent_services(cluster: SimCluster) -> Dict[str, Any]:
    return dict(cluster.get(1, "/v1/agent/services"))


def agent_registers(cluster: SimCluster) -> int:
    return int(cluster.stats()["servers"][1]["endpoints"].get(AGENT_REGISTER, 0))


def test_agent_mode_registers_through_the_agent_and_writes_only_on_change(
    consul_cluster: SimCluster, tmp_path: Path
) -> None:
    web = {**static("web", 8080), "check": {"type": "http"}}
    config = agent_config(tmp_path, consul_cluster, [web, static("queue", 9000, ["a"])])
    first = regagent(config, "sync")
    assert first.returncode == 0, first.stderr
    services = agent_services(consul_cluster)
    assert set(services) == {"web-8080", "queue-9000"}
    assert services["queue-9000"]["Meta"]["managed-by"] == "regagent"
    checks = consul_cluster.get(1, "/v1/agent/checks")
    assert checks["service:web-8080"]["ServiceID"] == "web-8080"  # the agent runs this one
    server_node = consul_cluster.stats()["servers"][1]["node"]
    catalog = consul_cluster.catalog_node_services(server_node)
    assert "web-8080" in catalog["Services"]

    consul_cluster.reset_stats()
    again = regagent(config, "sync")
    assert again.returncode == 0, again.stderr
    assert "In sync" in again.stdout
    assert agent_registers(consul_cluster) == 0

    agent_config(tmp_path, consul_cluster, [web, static("queue", 9000, ["b"])])
    changed = regagent(config, "sync")
    assert changed.returncode == 0, changed.stderr
    assert agent_registers(consul_cluster) == 1
    assert agent_services(consul_cluster)["queue-9000"]["Tags"] == ["b"]


def test_agent_mode_removes_only_its_own_services(
    consul_cluster: SimCluster, tmp_path: Path
) -> None:
    host, port = consul_cluster.host_port(1)
    consul.Consul(host=host, port=port).agent.service.register("app", service_id="app-1", port=1)
    config = agent_config(tmp_path, consul_cluster, [static("queue", 9000)])
    assert regagent(config, "sync").returncode == 0
    agent_config(tmp_path, consul_cluster, [])
    removed = regagent(config, "sync")
    assert removed.returncode == 0, removed.stderr
    assert "- deregister queue-9000" in removed.stdout
    assert set(agent_services(consul_cluster)) == {"app-1"}

    agent_config(tmp_path, consul_cluster, [static("queue", 9000)])
    assert regagent(config, "sync").returncode == 0
    status = regagent(config, "status")
    assert "queue-9000" in status.stdout and "app-1" in status.stdout
    gone = regagent(config, "deregister", "--yes")
    assert gone.returncode == 0, gone.stderr
    assert set(agent_services(consul_cluster)) == {"app-1"}


def test_agent_mode_follows_check_definition_changes_and_type_none(
    consul_cluster: SimCluster, tmp_path: Path
) -> None:
    tcp = {**static("db", 5432), "check": {"type": "tcp"}}
    config = agent_config(tmp_path, consul_cluster, [tcp, static("plain", 7000)])
    assert regagent(config, "sync").returncode == 0
    checks = consul_cluster.get(1, "/v1/agent/checks")
    assert "service:db-5432" in checks
    assert "service:plain-7000" not in checks  # check type none: no check, not a guessed GET
    meta = agent_services(consul_cluster)["db-5432"]["Meta"]
    assert meta["regagent-check"] == "tcp 127.0.0.1:5432 every 1s"

    agent_config(
        tmp_path, consul_cluster, [{**tcp, "check": {"type": "http"}}, static("plain", 7000)]
    )
    consul_cluster.reset_stats()
    changed = regagent(config, "sync")
    assert changed.returncode == 0, changed.stderr
    assert agent_registers(consul_cluster) == 1
    assert agent_services(consul_cluster)["db-5432"]["Meta"]["regagent-check"] == (
        "http http://127.0.0.1:5432/metrics every 1s"
    )


def test_agent_mode_writes_a_whole_day_interval_as_go_reads_it(
    consul_cluster: SimCluster, tmp_path: Path
) -> None:
    """Consul parses a check's Interval with Go's time.ParseDuration, which has no `d` unit:
    `sync.interval: 24h` must reach the agent as `24h`, not as the configuration's `1d`."""
    tcp = {**static("db", 5432), "check": {"type": "tcp"}}
    config = write_config(
        tmp_path,
        consul_cluster,
        [tcp],
        consul={"mode": "agent", "agent_address": consul_cluster.addresses[1]},
        sync={"interval": "24h", "jitter": "0s", "state_dir": str(tmp_path / "state")},
    )
    synced = regagent(config, "sync")
    assert synced.returncode == 0, synced.stderr
    assert "service:db-5432" in consul_cluster.get(1, "/v1/agent/checks")
    meta = agent_services(consul_cluster)["db-5432"]["Meta"]
    assert meta["regagent-check"] == "tcp 127.0.0.1:5432 every 24h"


def test_agent_mode_deregisters_ids_with_a_slash_or_a_space(
    consul_cluster: SimCluster, tmp_path: Path
) -> None:
    """Each ID is percent-encoded once in the request path, as Consul decodes it once
    (`strings.TrimPrefix(req.URL.Path, ...)`): `web/1` and `a b` are removed, not answered
    "Unknown service ID" and taken for already gone."""
    services = [{**static("web", 8080), "id": "web/1"}, {**static("app", 9000), "id": "a b"}]
    config = agent_config(tmp_path, consul_cluster, services)
    first = regagent(config, "sync")
    assert first.returncode == 0, first.stderr
    assert set(agent_services(consul_cluster)) == {"web/1", "a b"}

    agent_config(tmp_path, consul_cluster, [])
    removed = regagent(config, "sync")
    assert removed.returncode == 0, removed.stderr
    assert "- deregister web/1" in removed.stdout and "- deregister a b" in removed.stdout
    assert agent_services(consul_cluster) == {}
    again = regagent(config, "sync")
    assert again.returncode == 0, again.stderr
    assert "In sync" in again.stdout
