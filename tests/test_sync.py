"""The sync engine against the three-server emulator: real `regagent` processes on loopback."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator, Optional, Tuple

import consul
import pytest
import yaml

from consulsim import SimCluster
from helpers.consul import (
    NODE,
    REGISTER,
    TXN,
    app_with,
    endpoint_count,
    node_checks,
    node_services,
    regagent,
    running_daemon,
    static,
    write_config,
    writes,
)
from helpers.ports import free_port, wait_for_port
from regagent.app import build
from regagent.config import load_config
from regagent.consul.catalog import read_actual
from regagent.consul.http import ReadAnswer, checked_response
from regagent.consul.pool import ServerPool, make_client
from regagent.engine import SyncEngine
from regagent.errors import ConsulRefused
from regagent.identity import HOST_ID_KEY, host_id
from regagent.model import ServiceIntent, ServiceRegistration


def client(cluster: SimCluster, i: int = 0, token: Optional[str] = None) -> Any:
    host, port = cluster.host_port(i)
    return consul.Consul(host=host, port=port, token=token)


def test_first_sync_registers_second_writes_nothing_and_a_tag_change_is_one_write(
    consul_cluster: SimCluster, tmp_path: Path
) -> None:
    config = write_config(
        tmp_path, consul_cluster, [static("billing", 8080, ["b", "a", "a"]), static("queue", 9000)]
    )
    first = regagent(config, "sync")
    assert first.returncode == 0, first.stderr
    services = node_services(consul_cluster)
    assert set(services) == {"billing-8080", "queue-9000"}
    assert services["billing-8080"]["Tags"] == ["a", "b"]
    assert services["billing-8080"]["Meta"]["managed-by"] == "regagent"
    assert services["billing-8080"]["Address"] == "127.0.0.1"
    node = consul_cluster.catalog_node_services(NODE)["Node"]
    assert node["Meta"] == {
        "external-node": "true",
        "managed-by": "regagent",
        "rack": "r1",
        HOST_ID_KEY: host_id(),  # this host's identity, from /etc/machine-id (decision 10)
    }
    checks = node_checks(consul_cluster)
    assert checks["service:billing-8080"]["Status"] == "passing"

    consul_cluster.reset_stats()
    second = regagent(config, "sync")
    assert second.returncode == 0, second.stderr
    assert "In sync" in second.stdout
    stats = consul_cluster.stats()
    assert stats["writes_applied"] == 0
    assert stats["requests"] <= 2

    write_config(
        tmp_path, consul_cluster, [static("billing", 8080, ["a", "b", "c"]), static("queue", 9000)]
    )
    consul_cluster.reset_stats()
    third = regagent(config, "sync")
    assert third.returncode == 0, third.stderr
    assert writes(consul_cluster) == 1
    assert node_services(consul_cluster)["billing-8080"]["Tags"] == ["a", "b", "c"]


def test_foreign_and_other_node_services_are_never_touched(
    consul_cluster: SimCluster, tmp_path: Path
) -> None:
    config = write_config(tmp_path, consul_cluster, [static("queue", 9000)])
    assert regagent(config, "sync").returncode == 0
    api = client(consul_cluster)
    # Another tool adds a service to our node (its register carries no NodeMeta).
    api.catalog.register(NODE, "127.0.0.1", service={"ID": "web-80", "Service": "web", "Port": 80})
    owned_elsewhere = {
        "ID": "app-1",
        "Service": "app",
        "Port": 1,
        "Meta": {"managed-by": "regagent"},
    }
    api.catalog.register("other-host", "127.0.0.2", service=owned_elsewhere)
    assert regagent(config, "sync").returncode == 0  # restores our NodeMeta, keeps web-80
    write_config(tmp_path, consul_cluster, [])
    result = regagent(config, "sync")
    assert result.returncode == 0, result.stderr
    assert set(node_services(consul_cluster)) == {"web-80"}
    assert not node_services(consul_cluster)["web-80"]["Meta"]
    assert set(node_services(consul_cluster, "other-host")) == {"app-1"}


def test_foreign_service_with_the_same_id_is_reported_not_overwritten(
    consul_cluster: SimCluster, tmp_path: Path
) -> None:
    config = write_config(tmp_path, consul_cluster, [static("cache", 6379)])
    assert regagent(config, "sync").returncode == 0
    client(consul_cluster).catalog.register(
        NODE,
        "127.0.0.1",
        service={"ID": "queue-9000", "Service": "queue", "Port": 9000},
        skipnodeupdate=True,
    )
    write_config(tmp_path, consul_cluster, [static("cache", 6379), static("queue", 9000)])
    result = regagent(config, "sync", "--dry-run")
    assert "? skip queue-9000" in result.stdout
    regagent(config, "sync")
    assert not node_services(consul_cluster)["queue-9000"]["Meta"]


def test_dry_run_writes_nothing_and_describes_the_plan(
    consul_cluster: SimCluster, tmp_path: Path
) -> None:
    config = write_config(tmp_path, consul_cluster, [static("queue", 9000, ["x"])])
    consul_cluster.reset_stats()
    text = regagent(config, "sync", "--dry-run", "--detailed-exitcode")
    assert text.returncode == 2, text.stderr
    assert "+ register queue-9000: queue at 127.0.0.1:9000 tags=[x]" in text.stdout
    assert "Dry run: nothing written" in text.stdout
    as_json = regagent(config, "sync", "--dry-run", "--format", "json")
    assert as_json.returncode == 0
    report = json.loads(as_json.stdout)
    assert report["dry_run"] is True and report["in_sync"] is False
    assert [c["action"] for c in report["changes"]] == ["node", "register"]
    assert report["changes"][1]["service"]["meta"] == {
        "managed-by": "regagent",
        "metrics_path": "/metrics",
        "scheme": "http",
    }
    assert writes(consul_cluster) == 0
    assert node_services(consul_cluster) == {}

    regagent(config, "sync")
    write_config(tmp_path, consul_cluster, [static("queue", 9000, ["y"])])
    update = regagent(config, "sync", "--dry-run", "--format", "json")
    change = json.loads(update.stdout)["changes"][-1]
    assert change["action"] == "update"
    assert change["diff"] == {"tags": {"old": ["x"], "new": ["y"]}}


def test_first_server_stopped_sync_goes_through_the_second(
    consul_cluster: SimCluster, tmp_path: Path
) -> None:
    consul_cluster.stop_server(0)
    consul_cluster.wait_for_leader()
    config = write_config(tmp_path, consul_cluster, [static("queue", 9000)])
    result = regagent(config, "sync")
    assert result.returncode == 0, result.stderr
    assert consul_cluster.addresses[1] in result.stdout
    assert "queue-9000" in node_services(consul_cluster)


def test_black_holed_first_server_costs_one_timeout_then_is_skipped(
    consul_cluster: SimCluster, tmp_path: Path
) -> None:
    config = write_config(
        tmp_path, consul_cluster, [], consul={"cooldown_initial": "30s", "cooldown_max": "60s"}
    )
    app = app_with(config, [ServiceRegistration("queue-9000", "queue", 9000, "127.0.0.1")])
    consul_cluster.blackhole(0)
    first = app.engine.cycle()
    assert first.error is None
    assert first.server == consul_cluster.addresses[1]
    assert app.pool.servers[0].requests == 1
    assert app.pool.wait_idle(10)  # the read was hedged: its timeout is judged when it ends
    assert app.pool.servers[0].last_error == "no answer (read timed out)"
    for _ in range(3):
        later = app.engine.cycle()
        assert later.error is None and later.plan is not None and later.plan.empty
    assert app.pool.servers[0].requests == 1  # cooling down: never asked again


def test_quorum_lost_writes_fail_cleanly_reads_work_and_state_converges(
    consul_cluster: SimCluster, tmp_path: Path
) -> None:
    config = write_config(tmp_path, consul_cluster, [static("queue", 9000)])
    assert regagent(config, "sync").returncode == 0
    leader = consul_cluster.wait_for_leader()
    followers = [i for i in range(3) if i != leader]
    consul_cluster.stop_server(leader)
    consul_cluster.stop_server(followers[0])
    write_config(tmp_path, consul_cluster, [static("queue", 9000), static("cache", 6379)])

    failed = regagent(config, "sync")
    assert failed.returncode == 1
    assert "no leader" in failed.stderr
    assert "Traceback" not in failed.stderr
    planned = regagent(config, "sync", "--dry-run")  # stale reads still answer
    assert planned.returncode == 0, planned.stderr
    assert "+ register cache-6379" in planned.stdout
    status = regagent(config, "status")
    assert "queue-9000" in status.stdout
    assert "NO LEADER" in status.stdout

    consul_cluster.start_server(leader)
    consul_cluster.wait_for_leader()
    converged = regagent(config, "sync")
    assert converged.returncode == 0, converged.stderr
    assert set(node_services(consul_cluster)) == {"queue-9000", "cache-6379"}


def test_acl_denial_names_the_missing_permission_and_is_not_sprayed(
    consul_cluster: SimCluster, tmp_path: Path
) -> None:
    consul_cluster.set_acl(
        {
            "default_policy": "deny",
            "tokens": {
                "svc-only": {
                    "AccessorID": "5d0c6b3e-0000-4000-8000-000000000001",
                    "node_prefix": {"": "read"},
                    "service_prefix": {"": "write"},
                }
            },
        }
    )
    token = tmp_path / "token"
    token.write_text("svc-only\n")
    token.chmod(0o600)
    config = write_config(
        tmp_path, consul_cluster, [static("queue", 9000)], consul={"token_file": str(token)}
    )
    consul_cluster.reset_stats()
    result = regagent(config, "sync")
    assert result.returncode == 1
    assert "lacks permission 'node:write'" in result.stderr
    assert "svc-only" not in result.stderr + result.stdout  # the secret is never printed
    assert endpoint_count(consul_cluster, TXN) == 1  # refused once, not tried on others


def test_half_finished_apply_is_completed_by_the_next_cycle(
    consul_cluster: SimCluster, tmp_path: Path
) -> None:
    accessor = "5d0c6b3e-0000-4000-8000-000000000002"
    only_a = {
        "AccessorID": accessor,
        "node_prefix": {"": "write"},
        "service_prefix": {"a": "write"},
    }
    consul_cluster.set_acl({"default_policy": "deny", "tokens": {"tok": only_a}})
    config = write_config(
        tmp_path, consul_cluster, [static("a-svc", 1), static("b-svc", 2)], consul={"token": "tok"}
    )
    half = regagent(config, "sync")
    assert half.returncode == 1
    assert set(node_services(consul_cluster, token="tok")) == {"a-svc-1"}
    consul_cluster.set_acl(
        {"default_policy": "deny", "tokens": {"tok": {**only_a, "service_prefix": {"": "write"}}}}
    )
    consul_cluster.reset_stats()
    rest = regagent(config, "sync")
    assert rest.returncode == 0, rest.stderr
    assert set(node_services(consul_cluster, token="tok")) == {"a-svc-1", "b-svc-2"}
    assert writes(consul_cluster) == 1


def test_run_keeps_running_with_every_server_down_and_registers_when_one_returns(
    consul_cluster: SimCluster, tmp_path: Path
) -> None:
    for i in range(3):
        consul_cluster.stop_server(i)
    config = write_config(tmp_path, consul_cluster, [static("queue", 9000)])
    with running_daemon(config) as daemon:
        time.sleep(2)
        assert daemon.poll() is None, "run must survive every server being down"
        for i in range(3):
            consul_cluster.start_server(i)
        consul_cluster.wait_for_leader()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and "queue-9000" not in node_services(consul_cluster):
            time.sleep(0.2)
        assert "queue-9000" in node_services(consul_cluster)
    assert daemon.returncode == 0
    err = daemon.stderr_text
    events = [json.loads(line)["event"] for line in err.splitlines() if line.startswith("{")]
    assert "sync_failed" in events and "sync_recovered" in events and "stopped" in events


def test_node_owned_by_a_consul_agent_is_refused(
    consul_cluster: SimCluster, tmp_path: Path
) -> None:
    server_node = consul_cluster.stats()["servers"][0]["node"]
    config = write_config(
        tmp_path, consul_cluster, [static("queue", 9000)], node={"name": server_node}
    )
    result = regagent(config, "sync")
    assert result.returncode == 1
    assert "serfHealth" in result.stderr and "mode: agent" in result.stderr
    assert "queue-9000" not in node_services(consul_cluster, server_node)


def test_consul_client_environment_does_not_redirect_the_pool(
    consul_cluster: SimCluster, tmp_path: Path
) -> None:
    config = write_config(tmp_path, consul_cluster, [static("queue", 9000)])
    env = {"CONSUL_HTTP_ADDR": "127.0.0.1:1", "CONSUL_HTTP_SSL": "true"}
    result = regagent(config, "sync", env=env)
    assert result.returncode == 0, result.stderr
    assert "queue-9000" in node_services(consul_cluster)


def test_deregister_removes_only_owned_services_and_an_empty_node(
    consul_cluster: SimCluster, tmp_path: Path
) -> None:
    config = write_config(tmp_path, consul_cluster, [static("queue", 9000)])
    assert regagent(config, "sync").returncode == 0
    refused = regagent(config, "deregister")
    assert refused.returncode == 2 and "--yes" in refused.stderr
    assert "queue-9000" in node_services(consul_cluster)
    done = regagent(config, "deregister", "--yes")
    assert done.returncode == 0, done.stderr
    assert "- deregistered queue-9000" in done.stdout
    assert consul_cluster.catalog_node_services(NODE) is None

    assert regagent(config, "sync").returncode == 0
    client(consul_cluster).catalog.register(
        NODE,
        "127.0.0.1",
        service={"ID": "web-80", "Service": "web", "Port": 80},
        skipnodeupdate=True,
    )
    assert regagent(config, "deregister", "--yes").returncode == 0
    assert set(node_services(consul_cluster)) == {"web-80"}


def test_no_server_reachable_says_so_and_still_shows_the_desired_state(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "consul": {"servers": ["127.0.0.1:1", "127.0.0.1:2"], "connect_timeout": "500ms"},
                "node": {"name": NODE},
                "discovery": {"enabled": False},
                "sync": {"state_dir": str(tmp_path)},
                "services": [static("queue", 9000)],
            }
        )
    )
    result = regagent(config, "sync", "--dry-run")
    assert result.returncode == 1
    assert "queue-9000" in result.stdout
    assert len(result.stderr.strip().splitlines()) == 1
    assert "connection refused" in result.stderr


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_status_shows_registrations_and_each_server(
    consul_cluster: SimCluster, tmp_path: Path, fmt: str
) -> None:
    config = write_config(tmp_path, consul_cluster, [static("queue", 9000)])
    assert regagent(config, "sync").returncode == 0
    consul_cluster.stop_server(2)
    result = regagent(config, "status", "--format", fmt)
    assert result.returncode == 0, result.stderr
    if fmt == "json":
        report = json.loads(result.stdout)
        assert [s["reachable"] for s in report["servers"]] == [True, True, False]
        assert report["services"][0]["check"]["status"] == "passing"
    else:
        assert f"{consul_cluster.addresses[2]}: unreachable (connection refused)" in result.stdout
        assert "queue-9000 127.0.0.1:9000 [passing" in result.stdout


@pytest.mark.parametrize("deregister_on_shutdown", [False, True])
def test_stopping_the_daemon_keeps_registrations_unless_configured(
    consul_cluster: SimCluster, tmp_path: Path, deregister_on_shutdown: bool
) -> None:
    config = write_config(
        tmp_path,
        consul_cluster,
        [static("queue", 9000)],
        sync={
            "interval": "1s",
            "jitter": "50ms",
            "state_dir": str(tmp_path / "state"),
            "deregister_on_shutdown": deregister_on_shutdown,
        },
    )
    with running_daemon(config) as daemon:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and "queue-9000" not in node_services(consul_cluster):
            time.sleep(0.1)
        assert "queue-9000" in node_services(consul_cluster)
    assert daemon.returncode == 0
    registered = consul_cluster.catalog_node_services(NODE)
    if deregister_on_shutdown:
        assert registered is None
    else:
        assert "queue-9000" in registered["Services"]


def test_another_tools_node_is_never_taken_over_or_deleted(
    consul_cluster: SimCluster, tmp_path: Path
) -> None:
    client(consul_cluster).catalog.register(
        NODE,
        "10.0.0.10",
        node_meta={"external-probe": "true", "owner": "dba"},
        service={"ID": "db-5432", "Service": "db", "Port": 5432},
    )
    config = write_config(tmp_path, consul_cluster, [static("queue", 9000)])
    synced = regagent(config, "sync")
    assert synced.returncode == 1
    assert "without NodeMeta managed-by=regagent" in synced.stderr
    removed = regagent(config, "deregister", "--yes")
    assert removed.returncode == 1
    node = consul_cluster.catalog_node_services(NODE)
    assert node["Node"]["Address"] == "10.0.0.10"
    assert node["Node"]["Meta"] == {"external-probe": "true", "owner": "dba"}
    assert set(node["Services"]) == {"db-5432"}


def test_deregister_refuses_a_consul_agents_node(
    consul_cluster: SimCluster, tmp_path: Path
) -> None:
    server_node = consul_cluster.stats()["servers"][0]["node"]
    config = write_config(tmp_path, consul_cluster, [], node={"name": server_node})
    result = regagent(config, "deregister", "--yes")
    assert result.returncode == 1
    assert "serfHealth" in result.stderr
    assert consul_cluster.catalog_node_services(server_node) is not None


def test_a_server_address_that_is_not_consul_fails_over_without_a_traceback(
    consul_cluster: SimCluster, tmp_path: Path, web_server: Tuple[int, Path]
) -> None:
    port, _ = web_server
    servers = [f"127.0.0.1:{port}", *consul_cluster.addresses]
    config = write_config(
        tmp_path, consul_cluster, [static("queue", 9000)], consul={"servers": servers}
    )
    result = regagent(config, "sync")
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert "queue-9000" in node_services(consul_cluster)
    status = regagent(config, "status")
    assert "Traceback" not in status.stderr + status.stdout
    write_config(tmp_path, consul_cluster, [static("queue", 9000)], consul={"servers": servers[:1]})
    alone = regagent(config, "sync")
    assert alone.returncode == 1
    assert alone.stderr.strip() == (
        "regagent: no Consul server reachable for read node services "
        f"(127.0.0.1:{port}: 404 Not Found (is this a Consul server?))"
    )


def test_proxy_and_token_environment_do_not_redirect_the_pool(
    consul_cluster: SimCluster, tmp_path: Path
) -> None:
    accessor = "5d0c6b3e-0000-4000-8000-000000000003"
    rules = {"AccessorID": accessor, "node_prefix": {"": "write"}, "service_prefix": {"": "write"}}
    consul_cluster.set_acl({"default_policy": "deny", "tokens": {"right": rules}})
    token = tmp_path / "token"
    token.write_text("right\n")
    token.chmod(0o600)
    config = write_config(
        tmp_path, consul_cluster, [static("queue", 9000)], consul={"token_file": str(token)}
    )
    env = {
        "HTTP_PROXY": "http://127.0.0.1:1",
        "http_proxy": "http://127.0.0.1:1",
        "CONSUL_HTTP_TOKEN": "wrong",
        "CONSUL_HTTP_ADDR": "127.0.0.1:1",
    }
    result = regagent(config, "sync", env=env)
    assert result.returncode == 0, result.stderr
    assert "queue-9000" in node_services(consul_cluster, token="right")


def test_consul_validation_error_is_a_refusal_not_a_dead_server(
    consul_cluster: SimCluster, tmp_path: Path
) -> None:
    config = load_config(str(write_config(tmp_path, consul_cluster, [])))
    pool = ServerPool(config.consul)
    body = {
        "Node": NODE,
        "Address": "127.0.0.1",
        "Service": {"ID": "x", "Service": "x", "Meta": {"consul-bad": "1"}},
    }
    consul_cluster.reset_stats()
    with pytest.raises(ConsulRefused) as refused:
        pool.call(
            "register x",
            lambda c: c.http.put(
                checked_response, path="/v1/catalog/register", data=json.dumps(body)
            ),
        )
    assert "Invalid Service Meta" in refused.value.message
    assert consul_cluster.stats()["endpoints"][REGISTER] == 1
    assert all(not s.cooling(time.monotonic()) for s in pool.servers)


def test_status_survey_cools_a_black_holed_server_so_reads_skip_it(
    consul_cluster: SimCluster, tmp_path: Path
) -> None:
    config = load_config(str(write_config(tmp_path, consul_cluster, [])))
    pool = ServerPool(config.consul)
    consul_cluster.blackhole(0)
    reports = pool.survey()
    assert [r.reachable for r in reports] == [False, True, True]
    assert reports[0].error == "no answer (read timed out)"
    assert reports[1].leader is not None
    read_actual(pool, NODE)
    assert pool.servers[0].requests == 0  # the timeout was paid once, by the survey


def test_a_server_cut_off_from_the_leader_does_not_block_writes(
    consul_cluster: SimCluster, tmp_path: Path
) -> None:
    """The emulator cannot partition one server, so server 1's answers are marked leaderless
    (X-Consul-KnownLeader: false) on their way into regagent; the data stays real."""
    config = load_config(str(write_config(tmp_path, consul_cluster, [])))

    def clients(address: str, consul_config: Any, token: Optional[str], policy: Any) -> Any:
        client = make_client(address, consul_config, token, policy)
        if address == consul_cluster.addresses[0]:
            real_get = client.http.get

            def leaderless_get(callback: Any, path: str, **kwargs: Any) -> Any:
                answer = real_get(callback, path=path, **kwargs)
                return ReadAnswer(answer.data, False) if isinstance(answer, ReadAnswer) else answer

            client.http.get = leaderless_get
        return client

    intents = [
        ServiceIntent(ServiceRegistration("queue-9000", "queue", 9000, "127.0.0.1"), "static")
    ]
    pool = ServerPool(config.consul, client_factory=clients)
    result = build(config, pool=pool, intent_source=lambda *_: intents).engine.cycle()
    assert result.error is None, result.error
    assert result.writes == 1
    assert result.server == consul_cluster.addresses[1]
    assert "queue-9000" in node_services(consul_cluster)


@pytest.fixture
def web_server(tmp_path: Path) -> Iterator[Tuple[int, Path]]:
    """`python -m http.server` on a free loopback port serving a fresh directory; stopped by pid."""
    root = tmp_path / "www"
    root.mkdir()
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        cwd=root,
    )
    try:
        wait_for_port(port)
        yield port, root
    finally:
        server.terminate()
        server.wait(timeout=10)


def daemon_likeapp_with(config_path: Path) -> SyncEngine:
    """What `regagent run` builds: one engine, real discovery and static services."""
    return build(load_config(str(config_path))).engine


def flaky_app_config(tmp_path: Path, cluster: SimCluster, port: int) -> Path:
    service = {"name": "app", "port": port, "check": {"type": "http"}}
    sync = {
        "interval": "1s",
        "jitter": "0s",
        "state_dir": str(tmp_path / "state"),
        "failures_before_critical": 2,
    }
    return write_config(tmp_path, cluster, [service], sync=sync)


def test_static_check_turns_critical_only_after_consecutive_failures(
    consul_cluster: SimCluster, tmp_path: Path, web_server: Tuple[int, Path]
) -> None:
    port, root = web_server
    (root / "metrics").write_text("up 1\n")
    engine = daemon_likeapp_with(flaky_app_config(tmp_path, consul_cluster, port))
    check_id = f"service:app-{port}"
    assert engine.cycle().error is None
    assert node_checks(consul_cluster)[check_id]["Status"] == "passing"
    (root / "metrics").unlink()  # now a 404: a failed check
    assert engine.cycle().writes == 0  # one failure is held back
    assert node_checks(consul_cluster)[check_id]["Status"] == "passing"
    assert engine.cycle().writes == 1  # the second in a row turns it critical
    assert node_checks(consul_cluster)[check_id]["Status"] == "critical"


def test_a_restarted_daemon_holds_the_first_failure_of_a_service_consul_shows_passing(
    consul_cluster: SimCluster, tmp_path: Path, web_server: Tuple[int, Path]
) -> None:
    port, root = web_server
    (root / "metrics").write_text("up 1\n")
    config = flaky_app_config(tmp_path, consul_cluster, port)
    assert regagent(config, "sync").returncode == 0  # Consul now shows it passing
    (root / "metrics").unlink()
    restarted = daemon_likeapp_with(config)  # a fresh process: no memory but what Consul shows
    assert restarted.cycle().writes == 0
    assert node_checks(consul_cluster)[f"service:app-{port}"]["Status"] == "passing"
    assert restarted.cycle().writes == 1
    assert node_checks(consul_cluster)[f"service:app-{port}"]["Status"] == "critical"
