"""Discovery feeding real syncs: a real node_exporter comes, goes and survives a lost state file."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import Iterator

import pytest

from consulsim import SimCluster
from helpers.consul import node_checks, node_services, regagent, write_config
from helpers.discovery import hermetic_discovery
from helpers.ports import free_port

NODE_EXPORTER = shutil.which("prometheus-node-exporter")
pytestmark = pytest.mark.skipif(NODE_EXPORTER is None, reason="prometheus-node-exporter missing")


class Exporter:
    """Debian's node_exporter on a wildcard address, started and stopped by pid."""

    def __init__(self, port: int, host: str = "") -> None:
        self.port = port
        self.host = host
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        assert NODE_EXPORTER is not None
        self.proc = subprocess.Popen(
            [
                NODE_EXPORTER,
                f"--web.listen-address={self.host}:{self.port}",
                "--collector.disable-defaults",
                "--collector.loadavg",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("node_exporter did not start listening")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, 15)
            self.proc.wait(timeout=10)
        self.proc = None


@pytest.fixture
def exporter() -> Iterator[Exporter]:
    running = Exporter(free_port())
    running.start()
    try:
        yield running
    finally:
        running.stop()


def test_vanished_exporter_stays_critical_even_when_the_state_file_is_lost(
    consul_cluster: SimCluster, tmp_path: Path, exporter: Exporter
) -> None:
    port = exporter.port
    sid = f"node-exporter-{port}"
    config = write_config(
        tmp_path,
        consul_cluster,
        [],
        discovery=hermetic_discovery([port], real_exporters=True),
    )
    state_file = tmp_path / "state" / "discovered.json"

    planned = regagent(config, "sync", "--dry-run")
    assert f"+ register {sid}" in planned.stdout, planned.stdout + planned.stderr
    assert not state_file.exists(), "a dry run writes nothing, not even discovery state"

    assert regagent(config, "sync").returncode == 0
    service = node_services(consul_cluster)[sid]
    assert service["Meta"]["exporter"] == "node_exporter"
    assert service["Meta"]["exporter_version"] not in ("", "unknown")
    assert service["Address"] == "127.0.0.1"
    assert node_checks(consul_cluster)[f"service:{sid}"]["Status"] == "passing"
    assert state_file.exists()

    exporter.stop()
    gone = regagent(config, "sync")
    assert gone.returncode == 0, gone.stderr
    check = node_checks(consul_cluster)[f"service:{sid}"]
    assert check["Status"] == "critical"
    assert check["Output"].startswith(f"not listening on :{port} since ")

    state_file.unlink()
    consul_cluster.reset_stats()
    after_loss = regagent(config, "sync")
    assert after_loss.returncode == 0, after_loss.stderr
    assert sid in node_services(consul_cluster), "lost state must not drop the target"
    after = node_checks(consul_cluster)[f"service:{sid}"]
    assert (after["Status"], after["Output"]) == ("critical", check["Output"])  # same "since"
    assert consul_cluster.stats()["writes_applied"] == 0

    # An unwritable state directory (here: below a regular file) changes nothing either.
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    write_config(
        tmp_path,
        consul_cluster,
        [],
        discovery=hermetic_discovery([port], real_exporters=True),
        sync={"interval": "1s", "jitter": "50ms", "state_dir": str(blocker / "state")},
    )
    for _ in range(2):
        assert regagent(config, "sync").returncode == 0
    assert consul_cluster.stats()["writes_applied"] == 0
    write_config(
        tmp_path,
        consul_cluster,
        [],
        discovery=hermetic_discovery([port], real_exporters=True),
    )

    exporter.start()
    back = regagent(config, "sync")
    assert back.returncode == 0, back.stderr
    assert node_checks(consul_cluster)[f"service:{sid}"]["Status"] == "passing"
    assert f"! status {sid}: critical -> passing" in back.stdout


def test_excluding_a_vanished_exporters_port_deregisters_it_at_once(
    consul_cluster: SimCluster, tmp_path: Path, exporter: Exporter
) -> None:
    port = exporter.port
    sid = f"node-exporter-{port}"
    discovery = hermetic_discovery([port], real_exporters=True)
    config = write_config(tmp_path, consul_cluster, [], discovery=discovery)
    assert regagent(config, "sync").returncode == 0
    exporter.stop()
    assert regagent(config, "sync").returncode == 0
    assert node_checks(consul_cluster)[f"service:{sid}"]["Status"] == "critical"

    excluded = [*discovery["exclude_ports"], port]
    write_config(tmp_path, consul_cluster, [], discovery={**discovery, "exclude_ports": excluded})
    dropped = regagent(config, "sync")
    assert dropped.returncode == 0, dropped.stderr
    assert f"- deregister {sid}" in dropped.stdout
    assert sid not in node_services(consul_cluster)


def test_dry_run_tells_the_operator_about_a_loopback_only_exporter(
    consul_cluster: SimCluster, tmp_path: Path
) -> None:
    hidden = Exporter(free_port(), host="127.0.0.1")
    hidden.start()
    try:
        port = hidden.port
        config = write_config(
            tmp_path,
            consul_cluster,
            [],
            discovery=hermetic_discovery([port], real_exporters=True),
        )
        planned = regagent(config, "sync", "--dry-run")
        assert planned.returncode == 0, planned.stderr
        warnings = [
            json.loads(line) for line in planned.stderr.splitlines() if line.startswith("{")
        ]
        assert [(w["event"], w["listener"]) for w in warnings] == [
            ("exporter_not_registered", f"127.0.0.1:{port}")
        ]
        assert "loopback only" in warnings[0]["reason"]
    finally:
        hidden.stop()


def test_deregister_stays_done_for_a_vanished_exporter(
    consul_cluster: SimCluster, tmp_path: Path, exporter: Exporter
) -> None:
    """`deregister --yes` also forgets the removed IDs in the state file: the next sync must
    not bring a vanished exporter back, critical, for deregister_after (72 h)."""
    port = exporter.port
    sid = f"node-exporter-{port}"
    discovery = hermetic_discovery([port], real_exporters=True)
    config = write_config(tmp_path, consul_cluster, [], discovery=discovery)
    assert regagent(config, "sync").returncode == 0
    exporter.stop()
    assert regagent(config, "sync").returncode == 0
    assert node_checks(consul_cluster)[f"service:{sid}"]["Status"] == "critical"

    gone = regagent(config, "deregister", "--yes")
    assert gone.returncode == 0, gone.stderr
    assert f"- deregistered {sid}" in gone.stdout
    state = json.loads((tmp_path / "state" / "discovered.json").read_text())
    assert sid not in state["services"]
    again = regagent(config, "sync")
    assert again.returncode == 0, again.stderr
    assert sid not in node_services(consul_cluster)
