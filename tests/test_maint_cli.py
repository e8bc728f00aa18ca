"""`regagent maint start|stop|status` as an operator runs them: real processes, the Consul
emulator, the daemon's metrics endpoint; exit codes, stdout, stderr, the state file."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any, Dict, Optional

import pytest
import yaml

from consulsim import SimCluster
from helpers.catalog_sim import daemon_process, node_checks, service_health
from helpers.ports import free_port
from helpers.vmagent import wait_for
from regagent.maintenance.store import MaintenanceStore
from regagent.maintenance.window import new_window

NODE = "maint-host"
METRIC = "regagent_maintenance_ends_timestamp_seconds"


def write_config(tmp_path: Path, servers: list[str], **sections: Any) -> Path:
    config = {
        "consul": {
            "servers": servers,
            "connect_timeout": "1s",
            "read_timeout": "1s",
            "cooldown_initial": "200ms",
            "cooldown_max": "1s",
        },
        "node": {"name": NODE, "address": "127.0.0.1"},
        "sync": {"interval": "1s", "jitter": "50ms", "state_dir": str(tmp_path / "state")},
        "discovery": {"enabled": False},
        "services": [{"name": "app", "port": 8080, "check": {"type": "none"}}],
        **sections,
    }
    path = tmp_path / "regagent.yaml"
    path.write_text(yaml.safe_dump(config))
    path.chmod(0o600)
    return path


def regagent(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    environment = {
        k: v for k, v in os.environ.items() if k not in ("CONSUL_HTTP_TOKEN", "CONSUL_HTTP_ADDR")
    }
    return subprocess.run(
        [sys.executable, "-m", "regagent", "-c", str(config), *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=environment,
        stdin=subprocess.DEVNULL,
    )


def scrape(listen: str) -> Optional[str]:
    try:
        with urllib.request.urlopen(f"http://{listen}/metrics", timeout=2) as resp:
            return str(resp.read().decode())
    except OSError:
        return None


def metric_value(text: str) -> Optional[float]:
    for line in text.splitlines():
        if line.startswith(METRIC + " "):
            return float(line.split()[1])
    return None


def recorded(tmp_path: Path) -> Optional[Dict[str, Any]]:
    path = tmp_path / "state" / "maintenance.json"
    return json.loads(path.read_text()) if path.exists() else None


def assert_one_error_line(result: subprocess.CompletedProcess[str], *words: str) -> None:
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("regagent: "), result.stderr
    assert "Traceback" not in result.stderr
    for word in words:
        assert word in lines[0], (word, lines[0])


@pytest.mark.parametrize(
    ("args", "complaint"),
    [
        (["--reason", "x"], "the following arguments are required: --for"),
        (["--for", "30m"], "the following arguments are required: --reason"),
        (["--for", "30", "--reason", "x"], "'30' is not a duration (use e.g. 30s, 5m, 72h)"),
        (["--for", "soon", "--reason", "x"], "'soon' is not a duration"),
        (["--for", "8d", "--reason", "x"], "a window lasts at most 7d"),
        (["--for", "0s", "--reason", "x"], "a window lasts at least 1s"),
        (["--for", "30m", "--reason", "  "], "--reason: say why"),
        (["--for", "30m", "--reason", "a\nb"], "U+000A"),
        (["--for", "30m", "--reason", "\x1b[31mred"], "U+001B"),
        (["--for", "30m", "--reason", "x" * 257], "at most 256"),
    ],
    ids=[
        "no-for",
        "no-reason",
        "no-unit",
        "not-a-duration",
        "too-long",
        "zero",
        "blank-reason",
        "two-lines",
        "escape",
        "reason-too-long",
    ],
)
def test_bad_input_exits_2_with_one_line_and_records_nothing(
    args: list[str], complaint: str, tmp_path: Path
) -> None:
    config = write_config(tmp_path, ["127.0.0.1:1"])
    result = regagent(config, "maint", "start", *args)
    assert result.returncode == 2, result
    assert complaint in result.stderr and "Traceback" not in result.stderr
    assert result.stdout == ""
    assert recorded(tmp_path) is None


def test_help_explains_each_action(tmp_path: Path) -> None:
    config = write_config(tmp_path, ["127.0.0.1:1"])
    for action, words in {
        "start": ["--for DURATION", "--reason TEXT", "at most 7d", "maintenance.json"],
        "stop": ["Ends the running window"],
        "status": ["--format", "_node_maintenance"],
    }.items():
        result = regagent(config, "maint", action, "--help")
        assert result.returncode == 0 and result.stdout.startswith(
            f"usage: regagent maint {action}"
        )
        for word in words:
            assert word in " ".join(result.stdout.split()), (action, word)
    result = regagent(config, "maint")
    assert result.returncode == 2 and "required: ACTION" in result.stderr


def test_start_status_stop_with_consul(consul_cluster: SimCluster, tmp_path: Path) -> None:
    config = write_config(tmp_path, list(consul_cluster.addresses))
    before = time.time()
    started = regagent(config, "maint", "start", "--for", "30m", "--reason", "kernel upgrade")
    assert started.returncode == 0, started.stderr
    assert f"Node {NODE} in maintenance until " in started.stdout
    assert "(30m; starts now): kernel upgrade" in started.stdout
    assert f"Consul: node {NODE} marked" in started.stdout
    assert "the daemon (regagent run) is not running on this host" in started.stdout
    assert "Note: telemetry.listen is off, so Prometheus cannot see the window" in started.stdout
    record = recorded(tmp_path)
    assert record is not None and record["reason"] == "kernel upgrade"
    assert before <= record["since"] <= time.time()
    assert record["until"] == pytest.approx(record["since"] + 1800)

    status = regagent(config, "maint", "status")
    assert status.returncode == 0, status.stderr
    for word in [
        "in maintenance",
        "reason:    kernel upgrade",
        "since:",
        "until:",
        "remaining: 29m",
    ]:
        assert word in status.stdout, status.stdout
    assert "The daemon (regagent run) is not running here" in status.stdout
    document = json.loads(regagent(config, "maint", "status", "--format", "json").stdout)
    assert document["node"] == NODE and document["window"]["state"] == "active"
    assert 1790 <= document["window"]["remaining_seconds"] <= 1800
    assert document["consul"]["error"] is None and document["daemon_running"] is False

    again = regagent(config, "maint", "start", "--for", "1h", "--reason", "firmware too")
    assert again.returncode == 0 and "(1h; replaces the previous window)" in again.stdout

    stopped = regagent(config, "maint", "stop")
    assert stopped.returncode == 0, stopped.stderr
    assert "Maintenance window stopped." in stopped.stdout
    assert f"Consul: node {NODE} cleared" in stopped.stdout
    status = regagent(config, "maint", "status")
    assert "not in maintenance (the last window stopped at" in status.stdout
    assert "reason:    firmware too" in status.stdout
    record = recorded(tmp_path)
    assert record is not None and record["stopped"] == record["until"] <= time.time()

    twice = regagent(config, "maint", "stop")
    assert twice.returncode == 0 and "No maintenance window was running." in twice.stdout


def test_stop_replaces_a_record_regagent_did_not_write(
    consul_cluster: SimCluster, tmp_path: Path
) -> None:
    config = write_config(tmp_path, list(consul_cluster.addresses))
    (tmp_path / "state").mkdir(mode=0o750)
    record = tmp_path / "state" / "maintenance.json"
    record.write_text("{broken")
    record.chmod(0o600)
    status = regagent(config, "maint", "status")
    assert status.returncode == 1
    assert_one_error_line(status, "maintenance.json is not JSON", "`regagent maint stop`")
    stopped = regagent(config, "maint", "stop")
    assert stopped.returncode == 0, stopped.stderr
    assert "is not JSON" in stopped.stderr and "removed" in stopped.stderr
    assert "No maintenance window was running." in stopped.stdout
    assert not record.exists()


def test_in_agent_mode_the_window_is_kept_and_the_agent_left_to_mark_its_node(
    tmp_path: Path,
) -> None:
    config = write_config(tmp_path, ["127.0.0.1:1"])
    settings = yaml.safe_load(config.read_text())
    settings["consul"].update(mode="agent", agent_address=f"127.0.0.1:{free_port()}")
    config.write_text(yaml.safe_dump(settings))
    result = regagent(config, "maint", "start", "--for", "30m", "--reason", "reboot")
    assert result.returncode == 0, result.stderr
    assert_one_error_line(result, "consul.mode is agent", "consul maint -enable")
    assert "Consul: node" not in result.stdout  # nothing claimed about Consul
    assert recorded(tmp_path) is not None


def test_without_consul_the_window_is_recorded_and_the_command_says_so(tmp_path: Path) -> None:
    config = write_config(tmp_path, [f"127.0.0.1:{free_port()}"])
    result = regagent(config, "maint", "start", "--for", "30m", "--reason", "reboot")
    assert result.returncode == 1
    assert_one_error_line(
        result, "the window is recorded on this host, but Consul was not updated", "next cycle"
    )
    assert recorded(tmp_path) is not None
    status = regagent(config, "maint", "status")
    assert status.returncode == 1 and "reason:    reboot" in status.stdout
    assert "Consul: not known (no Consul server reachable" in status.stdout


def test_an_unusable_state_directory_is_an_error_exit_1(tmp_path: Path) -> None:
    config = write_config(tmp_path, ["127.0.0.1:1"])
    (tmp_path / "state").mkdir(mode=0o777)
    (tmp_path / "state").chmod(0o777)
    result = regagent(config, "maint", "start", "--for", "30m", "--reason", "reboot")
    assert result.returncode == 1
    assert_one_error_line(result, "cannot record the window", "chmod go-w")


def test_the_running_daemon_shows_start_and_stop_at_its_next_scrape(
    consul_cluster: SimCluster, tmp_path: Path
) -> None:
    listen = f"127.0.0.1:{free_port()}"
    config = write_config(tmp_path, list(consul_cluster.addresses), telemetry={"listen": listen})
    with daemon_process(config, tmp_path / "daemon.log"):
        text = wait_for("the metrics endpoint", lambda: scrape(listen))
        assert metric_value(text) is None  # no window, no series
        started = regagent(config, "maint", "start", "--for", "2h", "--reason", "reboot")
        assert started.returncode == 0, started.stderr
        assert "not running on this host" not in started.stdout  # the daemon holds the lock
        assert f"next scrape of this agent ({listen}): allow one scrape interval" in started.stdout
        until = recorded(tmp_path)["until"]  # type: ignore[index]
        # rendered at most once a second (the endpoint's bound), read from the file: no signal
        wait_for("the window's end", lambda: metric_value(scrape(listen) or "") == until, 5)
        status = regagent(config, "maint", "status")
        assert "The daemon (regagent run) is not running" not in status.stdout
        assert regagent(config, "maint", "stop").returncode == 0
        ended = recorded(tmp_path)["until"]  # type: ignore[index]
        assert ended < until
        wait_for("the stop", lambda: metric_value(scrape(listen) or "") == ended, 5)


def maintenance_check(cluster: SimCluster) -> Optional[Dict[str, Any]]:
    return node_checks(cluster, NODE).get("_node_maintenance")


def test_the_check_is_consuls_own_node_maintenance_check(
    consul_cluster: SimCluster, tmp_path: Path
) -> None:
    """What `consul maint -enable -reason R` creates through an agent (agent/agent.go
    EnableNodeMaintenance): `_node_maintenance`, `Node Maintenance Mode`, critical, Notes R, no
    service; so health readers drop the node's services and consul_sd says `maintenance`."""
    config = write_config(tmp_path, list(consul_cluster.addresses))
    assert regagent(config, "sync").returncode == 0
    assert len(service_health(consul_cluster, "app", passing=True)) == 1
    started = regagent(config, "maint", "start", "--for", "30m", "--reason", "disk swap, RT#4411")
    assert started.returncode == 0, started.stderr
    check = maintenance_check(consul_cluster)
    assert check is not None
    assert check["Node"] == NODE
    assert check["Name"] == "Node Maintenance Mode"
    assert check["Status"] == "critical"
    assert check["Notes"] == "disk swap, RT#4411"
    assert check["ServiceID"] == "" and check["ServiceName"] == ""
    assert check["Output"].startswith("regagent maint: in maintenance until 20")
    assert service_health(consul_cluster, "app", passing=True) == []  # out of ?passing
    status = regagent(config, "maint", "status")
    assert "Consul: check _node_maintenance critical, notes: disk swap, RT#4411" in status.stdout

    # a second start replaces the reason (the check's Notes) in place
    assert regagent(config, "maint", "start", "--for", "1h", "--reason", "longer").returncode == 0
    assert maintenance_check(consul_cluster)["Notes"] == "longer"  # type: ignore[index]

    stopped = regagent(config, "maint", "stop")
    assert stopped.returncode == 0, stopped.stderr
    assert maintenance_check(consul_cluster) is None
    assert len(service_health(consul_cluster, "app", passing=True)) == 1
    status = regagent(config, "maint", "status")
    assert "Consul: no _node_maintenance check on the node" in status.stdout


def test_dry_run_shows_the_check_it_would_write_and_remove(
    consul_cluster: SimCluster, tmp_path: Path
) -> None:
    config = write_config(tmp_path, list(consul_cluster.addresses))
    assert regagent(config, "sync").returncode == 0
    store = MaintenanceStore(str(tmp_path / "state"))
    store.save(new_window("firmware", 600.0, time.time()))  # as `maint start` records it
    planned = regagent(config, "sync", "--dry-run")
    assert planned.returncode == 0, planned.stderr
    assert "+ node check _node_maintenance: 'Node Maintenance Mode'" in planned.stdout
    assert "Dry run: nothing written." in planned.stdout
    document = json.loads(regagent(config, "sync", "--dry-run", "--format", "json").stdout)
    [wanted] = [c for c in document["node_checks"] if c["check_id"] == "_node_maintenance"]
    assert (wanted["name"], wanted["status"], wanted["notes"]) == (
        "Node Maintenance Mode",
        "critical",
        "firmware",
    )
    assert maintenance_check(consul_cluster) is None  # a dry run writes nothing

    assert regagent(config, "sync").returncode == 0
    store.save(store.load().stop(time.time()))  # type: ignore[union-attr]
    planned = regagent(config, "sync", "--dry-run")
    assert "- remove node check _node_maintenance: Node Maintenance Mode" in planned.stdout


def test_the_running_daemon_keeps_the_check_and_ends_it_on_time(
    consul_cluster: SimCluster, tmp_path: Path
) -> None:
    config = write_config(tmp_path, list(consul_cluster.addresses))
    with daemon_process(config, tmp_path / "daemon.log"):
        wait_for("the first sync", lambda: service_health(consul_cluster, "app"))
        started = regagent(config, "maint", "start", "--for", "6s", "--reason", "reboot")
        assert started.returncode == 0, started.stderr
        first = maintenance_check(consul_cluster)
        assert first is not None  # written by the command itself, before it returned
        # The daemon's own cycles (1s) read the same file: they keep the check, unwritten.
        time.sleep(2.5)
        kept = maintenance_check(consul_cluster)
        assert kept is not None and kept["ModifyIndex"] == first["ModifyIndex"]
        until = recorded(tmp_path)["until"]  # type: ignore[index]
        wait_for("the end of the window", lambda: maintenance_check(consul_cluster) is None, 15)
        assert time.time() >= until
        assert len(service_health(consul_cluster, "app", passing=True)) == 1


def test_the_daemon_syncs_at_the_end_of_the_window_not_an_interval_later(
    consul_cluster: SimCluster, tmp_path: Path
) -> None:
    """With a 60 s interval the daemon still removes the check right after the window's end:
    the wait between cycles ends then (plus up to the 50 ms jitter)."""
    config = write_config(tmp_path, list(consul_cluster.addresses))
    settings = yaml.safe_load(config.read_text())
    settings["sync"]["interval"] = "60s"
    config.write_text(yaml.safe_dump(settings))
    with daemon_process(config, tmp_path / "daemon.log"):
        wait_for("the first sync", lambda: service_health(consul_cluster, "app"))
        started = regagent(config, "maint", "start", "--for", "4s", "--reason", "reboot")
        assert started.returncode == 0, started.stderr
        assert maintenance_check(consul_cluster) is not None
        # The daemon's next cycle was an interval (60 s) away; the window's end comes first.
        wait_for("the end of the window", lambda: maintenance_check(consul_cluster) is None, 30)


def test_a_window_that_ended_while_the_daemon_was_down_is_ended_when_it_starts(
    consul_cluster: SimCluster, tmp_path: Path
) -> None:
    config = write_config(tmp_path, list(consul_cluster.addresses))
    with daemon_process(config, tmp_path / "daemon-1.log"):
        wait_for("the first sync", lambda: service_health(consul_cluster, "app"))
        started = regagent(config, "maint", "start", "--for", "3s", "--reason", "reboot")
        assert started.returncode == 0, started.stderr
    # The daemon is down (a reboot that takes longer than planned); the window ends meanwhile.
    until = recorded(tmp_path)["until"]  # type: ignore[index]
    time.sleep(max(0.0, until - time.time()) + 0.5)
    assert maintenance_check(consul_cluster) is not None  # nobody left to remove it
    status = regagent(config, "maint", "status")
    assert "not in maintenance (the last window ended at" in status.stdout
    assert "Consul: check _node_maintenance critical" in status.stdout
    with daemon_process(config, tmp_path / "daemon-2.log"):
        wait_for("the check removed", lambda: maintenance_check(consul_cluster) is None, 15)
        assert len(service_health(consul_cluster, "app", passing=True)) == 1


def test_a_window_survives_a_restart_of_the_daemon(
    consul_cluster: SimCluster, tmp_path: Path
) -> None:
    config = write_config(tmp_path, list(consul_cluster.addresses))
    assert regagent(config, "maint", "start", "--for", "1h", "--reason", "reboot").returncode == 0
    for log in ("daemon-1.log", "daemon-2.log"):
        with daemon_process(config, tmp_path / log):
            wait_for("the daemon's cycles", lambda: service_health(consul_cluster, "app"))
            time.sleep(1.5)
            assert maintenance_check(consul_cluster) is not None
            assert service_health(consul_cluster, "app", passing=True) == []


VMAGENT = shutil.which("vmagent")


@pytest.mark.skipif(VMAGENT is None, reason="needs vmagent (Debian victoria-metrics)")
def test_a_real_consul_sd_client_sees_the_node_in_maintenance(
    consul_cluster: SimCluster, tmp_path: Path
) -> None:
    """vmagent's consul_sd_configs (its own Consul client, AggregatedStatus as Consul's API
    has it) reports `__meta_consul_health` `maintenance` for the node's services while the
    window runs, and `passing` again after `maint stop`."""
    assert VMAGENT is not None
    config = write_config(tmp_path, list(consul_cluster.addresses))
    assert regagent(config, "sync").returncode == 0
    blocks = "\n".join(f"      - server: {address}" for address in consul_cluster.addresses)
    scrape = tmp_path / "scrape.yml"
    scrape.write_text(
        "scrape_configs:\n  - job_name: maint\n    scrape_interval: 1s\n"
        f"    consul_sd_configs:\n{blocks}\n"
        "    relabel_configs:\n"
        "      - source_labels: [__meta_consul_service]\n        regex: app\n"
        "        action: keep\n"
        "      - source_labels: [__meta_consul_health]\n        target_label: consul_health\n"
    )
    api = f"127.0.0.1:{free_port()}"
    with (tmp_path / "vmagent.log").open("wb") as log:
        vmagent = subprocess.Popen(
            [
                VMAGENT,
                f"-promscrape.config={scrape}",
                f"-httpListenAddr={api}",
                "-promscrape.consulSDCheckInterval=1s",
                f"-remoteWrite.url=http://127.0.0.1:{free_port()}/api/v1/write",  # never read
                f"-remoteWrite.tmpDataPath={tmp_path / 'vmagent-data'}",
            ],
            stdout=log,
            stderr=log,
        )
    try:

        def health() -> Optional[str]:
            try:
                with urllib.request.urlopen(f"http://{api}/api/v1/targets", timeout=2) as resp:
                    targets = json.loads(resp.read())["data"]["activeTargets"]
            except OSError:
                return None
            found = {t["labels"].get("consul_health") for t in targets}
            return found.pop() if len(found) == 1 else None

        wait_for("vmagent to discover the service", lambda: health() == "passing")
        assert regagent(config, "maint", "start", "--for", "1h", "--reason", "x").returncode == 0
        wait_for("consul_health maintenance", lambda: health() == "maintenance")
        assert regagent(config, "maint", "stop").returncode == 0
        wait_for("consul_health passing", lambda: health() == "passing")
    finally:
        vmagent.terminate()
        try:
            vmagent.wait(timeout=10)
        except subprocess.TimeoutExpired:
            vmagent.kill()
            vmagent.wait()
