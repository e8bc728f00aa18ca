"""The shipped alertmanager.yml and nginx relay config, run for real: two clustered
Alertmanagers, nginx, two relays written here. Alerts are posted the way both Prometheus
replicas post them (each alert to each member, twice), so what the relays receive shows the
routing by severity, the escalation sub-route, inhibition and the cluster's de-duplication.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional

import pytest

from deploy_stack import (
    ALERTMANAGER_BIN,
    NGINX_BIN,
    Relay,
    alertmanager_command,
    alertmanager_config,
    cluster_peers,
    http_json,
    nginx_command,
    nginx_test_config,
    notifications,
    ready,
    ready_tcp,
)
from helpers.ports import free_port
from helpers.vmagent import LOOPBACK, wait_for

pytestmark = pytest.mark.skipif(
    ALERTMANAGER_BIN is None or NGINX_BIN is None,
    reason="needs prometheus-alertmanager and nginx (.ci/run installs both)",
)

# Shorter than the shipped 30s/5m so the test takes seconds; the routing tree is unchanged.
TIMING = {"group_wait": "1s", "group_interval": "2s"}
PEER_TIMEOUT = "2s"
ONCALL, ESCALATION, OPS = (
    "/dingtalk/oncall/send",
    "/dingtalk/escalation/send",
    "/dingtalk/ops/send",
)


@pytest.fixture
def relays() -> Iterator[List[Relay]]:
    """Two webhook relays; closed at teardown."""
    started = [Relay("relay-1"), Relay("relay-2")]
    try:
        yield started
    finally:
        for relay in started:
            relay.stop()


def start_alerting(
    tmp_path: Path, relays: List[Relay], start: Callable[..., subprocess.Popen[bytes]]
) -> List[str]:
    """nginx in front of the relays and a two-member Alertmanager cluster; their API URLs."""
    assert ALERTMANAGER_BIN is not None
    nginx = f"{LOOPBACK}:{free_port()}"
    main = nginx_test_config(tmp_path / "nginx", (relays[0].address, relays[1].address), nginx)
    start(nginx_command(main), tmp_path / "nginx.log")
    webs = [f"{LOOPBACK}:{free_port()}" for _ in range(2)]
    gossip = [f"{LOOPBACK}:{free_port()}" for _ in range(2)]
    for i in range(2):
        directory = tmp_path / f"am-{i + 1}"
        config = alertmanager_config(directory, nginx, TIMING)
        command = alertmanager_command(
            ALERTMANAGER_BIN,
            config,
            directory,
            web=webs[i],
            cluster=gossip[i],
            peer=gossip[1 - i],
            peer_timeout=PEER_TIMEOUT,
        )
        start(command, tmp_path / f"am-{i + 1}.log")
    apis = [f"http://{web}" for web in webs]
    for api in apis:
        wait_for(f"{api} ready", lambda api=api: ready(f"{api}/-/ready"))
        wait_for(f"{api} sees both members", lambda api=api: len(cluster_peers(api)) == 2)
    wait_for("nginx listening", lambda: ready_tcp(nginx))
    return apis


def alert(name: str, severity: str, node: str, job: str, port: int, **extra: str) -> Dict[str, Any]:
    """An alert as Prometheus sends it after alert_relabel_configs (no `replica` label)."""
    labels = {
        "alertname": name,
        "severity": severity,
        "node": node,
        "job": job,
        "instance": f"{node}:{port}",
        "site": "europe",
        **extra,
    }
    return {"labels": labels, "annotations": {"summary": f"{name} on {node}"}}


def test_routes_escalation_inhibition_and_one_notification_per_alert(
    tmp_path: Path,
    relays: List[Relay],
    processes: Callable[..., subprocess.Popen[bytes]],
) -> None:
    apis = start_alerting(tmp_path, relays, processes)
    batch = [
        alert("HostDown", "critical", "web-1", "node-exporter", 9100),
        alert("HostDown", "critical", "web-1", "node-exporter", 9100, escalate="true"),
        # web-1 is down: its mysqld_exporter alert must be inhibited
        alert("TargetDown", "warning", "web-1", "mysqld-exporter", 9104),
        # web-2 is up: its exporter alert goes to the ops chat
        alert("TargetDown", "warning", "web-2", "mysqld-exporter", 9104),
    ]
    body = json.dumps(batch).encode()
    # two replicas, each to every member
    for _replica in range(2):
        for api in apis:
            http_json(f"{api}/api/v2/alerts", body)

    def delivered() -> Optional[bool]:
        return (
            bool(
                notifications(relays, ONCALL, "firing", alertname="HostDown")
                and notifications(relays, ESCALATION, "firing", escalate="true")
                and notifications(relays, OPS, "firing", node="web-2")
            )
            or None
        )

    wait_for("a notification on each route", delivered)
    # Past the second member's wait (peer timeout) and a group interval: no copy arrives late.
    time.sleep(2 + 2 + 2)

    oncall = notifications(relays, ONCALL, "firing", alertname="HostDown")
    assert len(oncall) == 1, oncall
    assert [a["labels"].get("escalate") for a in oncall[0].body["alerts"]] == [None]
    escalated = notifications(relays, ESCALATION, "firing", alertname="HostDown")
    assert len(escalated) == 1, escalated
    assert [a["labels"]["escalate"] for a in escalated[0].body["alerts"]] == ["true"]
    ops = notifications(relays, OPS, "firing", alertname="TargetDown")
    assert len(ops) == 1, ops
    assert [a["labels"]["node"] for a in ops[0].body["alerts"]] == ["web-2"]
    # every path received exactly the three notifications above, nothing else
    assert sum(len(relay.received()) for relay in relays) == 3
    # ... and both members agree the web-1 exporter alert is inhibited by HostDown
    for api in apis:
        inhibited = [
            a
            for a in http_json(f"{api}/api/v2/alerts")
            if a["labels"]["alertname"] == "TargetDown" and a["labels"]["node"] == "web-1"
        ]
        assert len(inhibited) == 1
        assert inhibited[0]["status"]["state"] == "suppressed"
        assert inhibited[0]["status"]["inhibitedBy"], inhibited
