"""The whole path: an exporter on this host -> regagent -> three Consul servers -> vmagent's own
consul_sd_configs -> a scrape. Then the exporter dies: the target must stay, turn critical in
Consul and be scraped down (so `up == 0` fires), never silently disappear (design decision 4).
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import pytest

from consulsim import SimCluster
from helpers.consul import regagent, write_config
from helpers.discovery import hermetic_discovery
from helpers.ports import free_port
from helpers.vmagent import (
    LOOPBACK,
    NODE_EXPORTER,
    VMAGENT,
    active_targets,
    by_service,
    get_json_text,
    wait_for,
)

pytestmark = pytest.mark.skipif(
    VMAGENT is None or NODE_EXPORTER is None, reason="vmagent or node_exporter missing"
)

SCRAPE_CONFIG = """\
scrape_configs:
  - job_name: regagent
    scrape_interval: 1s
    scrape_timeout: 1s
    consul_sd_configs:
{blocks}
    relabel_configs:
      - source_labels: [__meta_consul_service_metadata_managed_by]
        regex: regagent
        action: keep
      - source_labels: [__meta_consul_service_metadata_metrics_path]
        target_label: __metrics_path__
      - source_labels: [__meta_consul_service_metadata_scheme]
        target_label: __scheme__
      - source_labels: [__meta_consul_service]
        target_label: service
      - source_labels: [__meta_consul_service_metadata_exporter_version]
        target_label: exporter_version
      - source_labels: [__meta_consul_health]
        target_label: consul_health
"""


def test_a_discovered_exporter_is_scraped_and_never_silently_dropped(
    consul_cluster: SimCluster,
    remote_write_sink: str,
    processes: Callable[..., subprocess.Popen[bytes]],
    tmp_path: Path,
) -> None:
    assert NODE_EXPORTER is not None and VMAGENT is not None
    port = free_port()
    exporter = processes(
        [
            NODE_EXPORTER,
            f"--web.listen-address=:{port}",
            "--collector.disable-defaults",
            "--collector.loadavg",
        ],
        tmp_path / "node_exporter.log",
    )
    wait_for("node_exporter", lambda: get_json_text(f"http://{LOOPBACK}:{port}/metrics"))
    config = write_config(
        tmp_path,
        consul_cluster,
        [],
        discovery=hermetic_discovery([port], real_exporters=True),
    )
    synced = regagent(config, "sync")
    assert synced.returncode == 0, synced.stderr

    scrape = tmp_path / "scrape.yml"
    blocks = "\n".join(f"      - server: '{address}'" for address in consul_cluster.addresses)
    scrape.write_text(SCRAPE_CONFIG.format(blocks=blocks))
    api_port = free_port()
    api = f"http://{LOOPBACK}:{api_port}"
    processes(
        [
            VMAGENT,
            f"-promscrape.config={scrape}",
            f"-remoteWrite.url={remote_write_sink}",
            f"-remoteWrite.tmpDataPath={tmp_path / 'vmagent-data'}",
            f"-httpListenAddr={LOOPBACK}:{api_port}",
            "-promscrape.consulSDCheckInterval=1s",
            "-promscrape.suppressDuplicateScrapeTargetErrors",
        ],
        tmp_path / "vmagent.log",
    )
    service = "node-exporter"

    def target(health: str, consul_health: str) -> Optional[Dict[str, Any]]:
        # Hermetic: only the target of the exporter this test started (the host may run its own).
        found: List[Dict[str, Any]] = [
            t
            for t in by_service(active_targets(api)).get(service, [])
            if t["discoveredLabels"]["__address__"] == f"{LOOPBACK}:{port}"
        ]
        if len(found) != 1:
            return None
        labels = found[0]["labels"]
        matches = found[0]["health"] == health and labels.get("consul_health") == consul_health
        return found[0] if matches else None

    up = wait_for("the exporter scraped up", lambda: target("up", "passing"))
    assert up["labels"]["exporter_version"] not in ("", "unknown")
    assert up["discoveredLabels"]["__address__"] == f"{LOOPBACK}:{port}"
    assert up["discoveredLabels"]["__metrics_path__"] == "/metrics"

    exporter.terminate()
    exporter.wait(timeout=10)
    gone = regagent(config, "sync")
    assert gone.returncode == 0, gone.stderr
    down = wait_for(
        "the dead exporter kept, critical, scraped down", lambda: target("down", "critical")
    )
    assert down["discoveredLabels"]["__address__"] == f"{LOOPBACK}:{port}"
