"""The Consul emulator checked by a real ``consul_sd_configs`` consumer: vmagent.

vmagent (Debian's victoria-metrics package) has its own Consul client with blocking queries,
independent of python-consul2. It gets one ``consul_sd_configs`` block per emulated server,
as a Prometheus configured for a three-server cluster would, and must discover every target
exactly once, label it from the catalog, scrape a real node_exporter, and keep discovering
after one server dies.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import consul
import pytest

from consulsim import SimCluster
from helpers.ports import free_port
from helpers.vmagent import (
    LOOPBACK,
    NODE_EXPORTER,
    VMAGENT,
    active_targets,
    by_service,
    get_json,
    get_json_text,
    health,
    scrape_config,
    wait_for,
)

pytestmark = pytest.mark.skipif(
    VMAGENT is None or NODE_EXPORTER is None,
    reason="needs vmagent (Debian victoria-metrics) and prometheus-node-exporter; "
    ".ci/run installs both",
)


def test_vmagent_discovers_and_scrapes_through_every_server(
    consul_cluster: SimCluster,
    remote_write_sink: str,
    processes: Callable[..., subprocess.Popen[bytes]],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in ("CONSUL_HTTP_ADDR", "CONSUL_HTTP_TOKEN", "CONSUL_HTTP_TOKEN_FILE"):
        monkeypatch.delenv(name, raising=False)
    assert VMAGENT is not None and NODE_EXPORTER is not None

    exporter_port = free_port()
    processes(
        [
            NODE_EXPORTER,
            f"--web.listen-address={LOOPBACK}:{exporter_port}",
            "--collector.disable-defaults",
            "--collector.loadavg",
            "--collector.time",
        ],
        tmp_path / "node_exporter.log",
    )
    wait_for("node_exporter", lambda: get_json_text(f"http://{LOOPBACK}:{exporter_port}/metrics"))

    host, port = consul_cluster.host_port(0)
    c = consul.Consul(host=host, port=port, timeout=10)
    assert c.catalog.register(
        "host-a",
        LOOPBACK,
        node_meta={"external-node": "true"},
        service={
            "ID": "node-exporter",
            "Service": "node-exporter",
            "Address": LOOPBACK,
            "Port": exporter_port,
            "Tags": ["node", "prod"],
            "Meta": {"managed-by": "regagent", "exporter": "node"},
        },
        check={
            "CheckID": "node-exporter:http",
            "Name": "metrics",
            "ServiceID": "node-exporter",
            "Status": "passing",
            "Output": "HTTP GET /metrics: 200",
        },
    )
    dead_port = free_port()  # nothing listens there: a registered but failing exporter
    assert c.catalog.register(
        "host-b",
        LOOPBACK,
        service={
            "ID": "mysqld-exporter",
            "Service": "mysqld-exporter",
            "Port": dead_port,
            "Tags": ["db"],
            "Meta": {"managed-by": "regagent"},
        },
        check={
            "CheckID": "mysqld-exporter:tcp",
            "Name": "tcp",
            "ServiceID": "mysqld-exporter",
            "Status": "critical",
            "Output": "connection refused",
        },
    )

    config = tmp_path / "scrape.yml"
    config.write_text(scrape_config(consul_cluster.addresses))
    api_port = free_port()
    api = f"http://{LOOPBACK}:{api_port}"
    vmagent = processes(
        [
            VMAGENT,
            f"-promscrape.config={config}",
            f"-remoteWrite.url={remote_write_sink}",
            f"-remoteWrite.tmpDataPath={tmp_path / 'vmagent-data'}",
            f"-httpListenAddr={LOOPBACK}:{api_port}",
            "-promscrape.consulSDCheckInterval=1s",
            "-promscrape.suppressDuplicateScrapeTargetErrors",
        ],
        tmp_path / "vmagent.log",
    )

    def discovered() -> Optional[Dict[str, List[Dict[str, Any]]]]:
        assert vmagent.poll() is None, (tmp_path / "vmagent.log").read_text()[-3000:]
        services = by_service(active_targets(api))
        wanted = {"node-exporter", "mysqld-exporter"}
        return services if wanted <= set(services) else None

    services = wait_for("vmagent to discover both services", discovered)
    # three SD blocks see the same catalog: each target must be active exactly once
    assert sorted(services) == ["mysqld-exporter", "node-exporter"]
    assert all(len(targets) == 1 for targets in services.values()), services
    # ... although every block discovered them: each server answered vmagent's blocking
    # health queries, and vmagent lists the copies it skipped as dropped duplicates.
    for server in consul_cluster.stats()["servers"]:
        assert server["endpoints"].get("GET /v1/health/service/:arg", 0) >= 2, server
        assert server["endpoints"].get("GET /v1/agent/self", 0) >= 1, server
    dropped = get_json(f"{api}/api/v1/targets")["data"]["droppedTargets"]
    duplicates = {t["discoveredLabels"]["__meta_consul_service"] for t in dropped}
    assert {"node-exporter", "mysqld-exporter"} <= duplicates

    node = services["node-exporter"][0]["discoveredLabels"]
    assert node["__address__"] == f"{LOOPBACK}:{exporter_port}"
    assert node["__meta_consul_service"] == "node-exporter"
    assert node["__meta_consul_service_id"] == "node-exporter"
    assert node["__meta_consul_node"] == "host-a"
    assert node["__meta_consul_dc"] == "dc1"
    assert node["__meta_consul_tags"] == ",node,prod,"
    assert node["__meta_consul_health"] == "passing"
    assert node["__meta_consul_service_metadata_managed_by"] == "regagent"
    assert node["__meta_consul_service_metadata_exporter"] == "node"
    assert node["__meta_consul_metadata_external_node"] == "true"
    mysql = services["mysqld-exporter"][0]["discoveredLabels"]
    assert mysql["__meta_consul_health"] == "critical"
    assert mysql["__address__"] == f"{LOOPBACK}:{dead_port}"  # node address, no service address

    wait_for("node_exporter to be scraped up", lambda: health(api, "node-exporter") == "up")
    wait_for(
        "the dead exporter to be scraped down", lambda: health(api, "mysqld-exporter") == "down"
    )

    # One server dies (the leader, which forces an election as well); a service registered
    # afterwards must still be discovered through the two blocks that point at live servers.
    consul_cluster.stop_server(0)
    consul_cluster.wait_for_leader(timeout=10)
    host, port = consul_cluster.host_port(1)
    assert consul.Consul(host=host, port=port, timeout=10).catalog.register(
        "host-c",
        LOOPBACK,
        service={"ID": "late-exporter", "Service": "late-exporter", "Port": exporter_port},
        check={
            "CheckID": "late:http",
            "Name": "metrics",
            "ServiceID": "late-exporter",
            "Status": "passing",
        },
    )

    def late_discovered() -> Optional[List[Dict[str, Any]]]:
        return by_service(active_targets(api)).get("late-exporter")

    late = wait_for("the service registered after the stop", late_discovered)
    assert len(late) == 1
    assert late[0]["discoveredLabels"]["__meta_consul_node"] == "host-c"
    wait_for("the late target to be scraped up", lambda: health(api, "late-exporter") == "up")
    assert len(by_service(active_targets(api))["node-exporter"]) == 1
