"""A dry run never says "in sync" while a service is being skipped (issue 14)."""

from __future__ import annotations

import json
from pathlib import Path

import consul

from consulsim import SimCluster
from helpers.consul import NODE, regagent, static, write_config


def test_a_skipped_service_is_not_in_sync_and_fails_detailed_exitcode(
    consul_cluster: SimCluster, tmp_path: Path
) -> None:
    config = write_config(tmp_path, consul_cluster, [static("web", 80), static("queue", 9000)])
    assert regagent(config, "sync").returncode == 0
    host, port = consul_cluster.host_port(0)
    # Another tool takes over the ID regagent wants: regagent leaves it alone (a conflict).
    consul.Consul(host=host, port=port).catalog.register(
        NODE,
        "127.0.0.1",
        service={"ID": "web-80", "Service": "web", "Port": 80},
        node_meta=consul_cluster.catalog_node_services(NODE)["Node"]["Meta"],  # keep it ours
    )
    text = regagent(config, "sync", "--dry-run", "--detailed-exitcode")
    assert text.returncode == 2, text.stderr
    assert "In sync" not in text.stdout
    assert "? skip web-80" in text.stdout and "1 service(s) skipped" in text.stdout
    report = json.loads(regagent(config, "sync", "--dry-run", "--format", "json").stdout)
    assert report["in_sync"] is False and report["changes"] == []
    assert [c["service_id"] for c in report["conflicts"]] == ["web-80"]
