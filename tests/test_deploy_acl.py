"""The shipped Consul ACL policies, enforced by the emulator: enough for each job, no more.

deploy/consul/regagent.hcl must let `regagent sync` register a host and its exporter, and
deploy/consul/prometheus.hcl must let vmagent, with the shipped scrape job and its
`credentials_file`, discover that exporter; the Prometheus token must not be able to write,
and with no token discovery sees nothing.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import pytest
import yaml

from consulsim import SimCluster
from deploy_stack import (
    DEPLOY,
    PROMETHEUS_CONFIGS,
    dump_yaml,
    hcl_policy_rules,
    ready,
    replace_hosts,
    rewrite_credentials,
    scrape_part_for_vmagent,
)
from helpers.ports import free_port
from helpers.vmagent import LOOPBACK, NODE_EXPORTER, VMAGENT, active_targets, wait_for

pytestmark = pytest.mark.skipif(
    VMAGENT is None or NODE_EXPORTER is None, reason="vmagent or node_exporter missing"
)

NODE = "deploy-acl-host"
REGAGENT_SECRET = "11111111-1111-1111-1111-111111111111"
PROMETHEUS_SECRET = "22222222-2222-2222-2222-222222222222"


def acl_config() -> Dict[str, Any]:
    """Default deny; one token per shipped policy; the anonymous token may do nothing."""
    return {
        "default_policy": "deny",
        "tokens": {
            REGAGENT_SECRET: {
                "AccessorID": "aaaaaaaa-0000-0000-0000-00000000000a",
                **hcl_policy_rules(DEPLOY / "consul" / "regagent.hcl"),
            },
            PROMETHEUS_SECRET: {
                "AccessorID": "bbbbbbbb-0000-0000-0000-00000000000b",
                **hcl_policy_rules(DEPLOY / "consul" / "prometheus.hcl"),
            },
        },
        "anonymous": {},
    }


def token_file(tmp: Path, name: str, secret: str) -> Path:
    path = tmp / name
    path.write_text(secret + "\n")
    path.chmod(0o600)
    return path


def regagent_sync(
    tmp: Path, cluster: SimCluster, port: int, token: Path
) -> subprocess.CompletedProcess[str]:
    """One `regagent sync` of this host with the given token file."""
    config = {
        "consul": {"servers": list(cluster.addresses), "token_file": str(token)},
        "node": {"name": NODE, "address": "127.0.0.1"},
        "sync": {"state_dir": str(tmp / "state")},
        "discovery": {
            "enabled": True,
            "port_ranges": [f"{port}-{port}"],
            "exclude_ports": [9100],
            "exclude_processes": ["node_exporter", "prometheus-node-exporter"],
        },
    }
    path = tmp / f"regagent-{token.name}.yaml"
    path.write_text(yaml.safe_dump(config))
    path.chmod(0o600)
    return subprocess.run(
        [sys.executable, "-m", "regagent", "-c", str(path), "sync"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        stdin=subprocess.DEVNULL,
    )


def health_service(cluster: SimCluster, service: str, token: Optional[str]) -> List[Any]:
    """/v1/health/service/<service> as a client with `token` (Bearer, as Prometheus sends)."""
    request = urllib.request.Request(f"{cluster.url(0)}/v1/health/service/{service}?stale")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(request, timeout=5) as resp:
        entries: List[Any] = json.loads(resp.read())
        return entries


def test_shipped_policies_are_enough_for_each_job_and_no_more(
    consul_cluster: SimCluster,
    processes: Callable[..., subprocess.Popen[bytes]],
    remote_write_sink: str,
    tmp_path: Path,
) -> None:
    assert NODE_EXPORTER is not None and VMAGENT is not None
    consul_cluster.set_acl(acl_config())
    port = free_port()
    binary = tmp_path / "e2e-node-exporter"  # a name of its own: see test_deploy_stack
    shutil.copy2(NODE_EXPORTER, binary)
    processes(
        [
            str(binary),
            f"--web.listen-address=:{port}",
            "--collector.disable-defaults",
            "--collector.loadavg",
        ],
        tmp_path / "node_exporter.log",
    )
    wait_for("node_exporter", lambda: ready(f"http://{LOOPBACK}:{port}/metrics"))

    # the Prometheus token may read, not write: regagent with it is refused
    refused = regagent_sync(
        tmp_path, consul_cluster, port, token_file(tmp_path, "prom.token", PROMETHEUS_SECRET)
    )
    assert refused.returncode == 1, refused.stderr
    assert "lacks permission 'node:write'" in refused.stderr
    # the regagent policy registers the host and its exporter
    synced = regagent_sync(
        tmp_path, consul_cluster, port, token_file(tmp_path, "regagent.token", REGAGENT_SECRET)
    )
    assert synced.returncode == 0, synced.stderr
    assert health_service(consul_cluster, "node-exporter", PROMETHEUS_SECRET)
    assert health_service(consul_cluster, "node-exporter", None) == []  # anonymous sees nothing

    # vmagent with the shipped scrape job and the Prometheus token discovers and scrapes it
    shipped_text = PROMETHEUS_CONFIGS[0].read_text()
    shipped = yaml.safe_load(shipped_text)
    hosts = {
        f"consul-{i + 1}.example.org:8500": address
        for i, address in enumerate(consul_cluster.addresses)
    }
    text = rewrite_credentials(replace_hosts(shipped_text, hosts), shipped, tmp_path / "prom.token")
    scrape = scrape_part_for_vmagent(yaml.safe_load(text))
    scrape["scrape_configs"] = [
        j for j in scrape["scrape_configs"] if j["job_name"] == "consul-services"
    ]
    scrape["global"] = {"scrape_interval": "1s", "scrape_timeout": "1s"}
    config = dump_yaml(scrape, tmp_path / "scrape.yml")
    api = f"http://{LOOPBACK}:{free_port()}"
    processes(
        [
            VMAGENT,
            f"-promscrape.config={config}",
            f"-remoteWrite.url={remote_write_sink}",
            f"-remoteWrite.tmpDataPath={tmp_path / 'vmagent-data'}",
            f"-httpListenAddr={api.removeprefix('http://')}",
            "-promscrape.consulSDCheckInterval=1s",
            "-promscrape.suppressDuplicateScrapeTargetErrors",
        ],
        tmp_path / "vmagent.log",
    )
    instance = f"{NODE}:{port}"

    def scraped() -> bool:
        return any(
            t["labels"].get("instance") == instance and t["health"] == "up"
            for t in active_targets(api)
        )

    wait_for(f"vmagent with the Prometheus token to scrape {instance}", scraped)
