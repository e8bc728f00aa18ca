"""The dead-man's switch against real emulator processes (three servers) and real `regagent
run` processes: a host whose daemon is killed turns critical in /v1/health, a planned stop
does not (unless configured), a lost session is replaced, an older Consul gets today's
behaviour, deregistration ends the session, a dry run writes nothing, a reload keeps it."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, Iterator, List

import pytest

from consulsim import SimCluster
from helpers.catalog_sim import (
    NODE,
    DaemonProcess,
    node_checks,
    put,
    service_health,
    sessions_of,
    static,
    wait_for,
    write_config,
)
from helpers.consul import fast_cluster

CHECK = "regagent:alive"
TTL = 2.0  # seconds; the emulator accepts it with --session-ttl-min 1s


@pytest.fixture
def cluster() -> Iterator[SimCluster]:
    """Three emulated servers that accept short session TTLs."""
    sim = fast_cluster(session_ttl_min="1s")
    sim.start()
    try:
        yield sim
    finally:
        sim.stop()


def config(tmp_path: Path, cluster: SimCluster, **session: Any) -> Path:
    return write_config(
        tmp_path,
        cluster,
        [static("web", 8080)],
        consul={"session": {"ttl": f"{TTL:g}s", **session}},
    )


def alive_check(cluster: SimCluster) -> Dict[str, Any]:
    return dict(node_checks(cluster).get(CHECK) or {})


def armed(cluster: SimCluster) -> Dict[str, Any]:
    """The session check once it is passing and names a live session of this node."""
    check = alive_check(cluster)
    name = (check.get("Definition") or {}).get("SessionName")
    live = {s["Name"]: s for s in sessions_of(cluster)}
    if check.get("Status") == "passing" and name in live:
        return {"check": check, "session": live[name]}
    return {}


def passing_web(cluster: SimCluster) -> List[Any]:
    return service_health(cluster, "web", passing=True)


@pytest.fixture
def daemons(tmp_path: Path) -> Iterator[List[DaemonProcess]]:
    started: List[DaemonProcess] = []
    yield started
    for daemon in started:
        if daemon.proc.poll() is None:
            daemon.kill()


def start(daemons: List[DaemonProcess], path: Path, tmp_path: Path) -> DaemonProcess:
    daemon = DaemonProcess(path, tmp_path / f"daemon-{len(daemons)}.log")
    daemons.append(daemon)
    return daemon


def test_a_killed_daemon_turns_its_host_critical_in_the_health_api(
    cluster: SimCluster, tmp_path: Path, daemons: List[DaemonProcess]
) -> None:
    daemon = start(daemons, config(tmp_path, cluster), tmp_path)
    state = wait_for("the switch armed", lambda: armed(cluster))
    assert state["session"]["TTL"] == "2s" and state["session"]["NodeChecks"] == []
    assert state["check"]["Type"] == "session" and state["check"]["ServiceID"] == ""
    assert "renews its Consul session" in state["check"]["Output"]
    assert len(passing_web(cluster)) == 1
    daemon.kill()
    wait_for("the check critical", lambda: alive_check(cluster).get("Status") == "critical")
    assert passing_web(cluster) == []
    (entry,) = service_health(cluster, "web")
    assert {c["CheckID"]: c["Status"] for c in entry["Checks"]}[CHECK] == "critical"
    assert sessions_of(cluster) == []


def test_a_planned_stop_keeps_the_host_passing_by_default(
    cluster: SimCluster, tmp_path: Path, daemons: List[DaemonProcess]
) -> None:
    daemon = start(daemons, config(tmp_path, cluster), tmp_path)
    wait_for("the switch armed", lambda: armed(cluster))
    assert daemon.stop() == 0
    assert CHECK not in node_checks(cluster)  # disarmed: removed, then the session ended
    assert sessions_of(cluster) == []
    assert len(passing_web(cluster)) == 1
    assert "session_disarmed_on_stop" in [e.get("event") for e in daemon.events()]


def test_a_planned_stop_marks_the_host_critical_when_configured(
    cluster: SimCluster, tmp_path: Path, daemons: List[DaemonProcess]
) -> None:
    daemon = start(daemons, config(tmp_path, cluster, on_stop="critical"), tmp_path)
    wait_for("the switch armed", lambda: armed(cluster))
    assert daemon.stop() == 0
    assert alive_check(cluster)["Status"] == "critical"  # at once, not after 2 x TTL
    assert sessions_of(cluster) == [] and passing_web(cluster) == []
    # Started again, it re-arms: passing with a new session.
    start(daemons, config(tmp_path, cluster, on_stop="critical"), tmp_path)
    wait_for("the switch re-armed", lambda: armed(cluster))
    assert len(passing_web(cluster)) == 1


def test_a_lost_session_is_replaced_and_the_check_re_pointed(
    cluster: SimCluster, tmp_path: Path, daemons: List[DaemonProcess]
) -> None:
    daemon = start(daemons, config(tmp_path, cluster), tmp_path)
    first = wait_for("the switch armed", lambda: armed(cluster))["session"]
    # Someone (or Consul, after a partition longer than 2 x TTL) ends the session.
    put(cluster, f"/v1/session/destroy/{first['ID']}")
    wait_for(
        "a new session named by a passing check",
        lambda: (armed(cluster).get("session") or first)["ID"] != first["ID"],
    )
    (second,) = sessions_of(cluster)
    assert second["Name"] != first["Name"]  # the old name can never flip the new check
    assert len(passing_web(cluster)) == 1
    events = [e.get("event") for e in daemon.events()]
    assert "session_lost" in events


def test_a_leader_election_keeps_the_session_and_the_host_passing(
    cluster: SimCluster, tmp_path: Path, daemons: List[DaemonProcess]
) -> None:
    start(daemons, config(tmp_path, cluster), tmp_path)
    first = wait_for("the switch armed", lambda: armed(cluster))["session"]
    for _ in range(2):
        cluster.drop_leader()  # sessions are Raft state; the new leader restarts every timer
        cluster.wait_for_leader()
    wait_for("the new leader's timer", lambda: cluster.sessions_config()["timers"].get(first["ID"]))
    # Renewed through the new leader for longer than 2 x TTL: still the same session.
    before = renewals(cluster)
    wait_for("seven more renewals", lambda: renewals(cluster) >= before + 7, timeout=4 * TTL + 5)
    state = armed(cluster)
    assert state and state["session"]["ID"] == first["ID"]
    assert len(passing_web(cluster)) == 1


def renewals(cluster: SimCluster) -> int:
    endpoints = cluster.stats()["endpoints"]
    return sum(n for k, n in endpoints.items() if k.startswith("PUT /v1/session/renew"))


def test_an_older_consul_gets_todays_behaviour_logged_once(
    cluster: SimCluster, tmp_path: Path, daemons: List[DaemonProcess]
) -> None:
    cluster.set_session_checks(False)  # `--no-session-checks`: SessionName dropped silently
    daemon = start(daemons, config(tmp_path, cluster), tmp_path)
    wait_for("the fallback", lambda: "consul_session_checks_unavailable" in events_of(daemon))
    wait_for("the check gone", lambda: CHECK not in node_checks(cluster))
    wait_for("no session left", lambda: sessions_of(cluster) == [])
    before, reads = renewals(cluster), node_reads(cluster)
    wait_for("three more cycles", lambda: node_reads(cluster) >= reads + 3)
    assert CHECK not in node_checks(cluster) and sessions_of(cluster) == []
    assert renewals(cluster) == before
    assert len(passing_web(cluster)) == 1
    assert events_of(daemon).count("consul_session_checks_unavailable") == 1


def events_of(daemon: DaemonProcess) -> List[Any]:
    return [e.get("event") for e in daemon.events()]


def node_reads(cluster: SimCluster) -> int:
    """Reads of the node's checks: one per full cycle."""
    endpoints = cluster.stats()["endpoints"]
    return sum(n for k, n in endpoints.items() if k.startswith("GET /v1/health/node"))


def regagent_cli(path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "regagent", "-c", str(path), *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_deregister_on_shutdown_ends_the_session_with_the_node(
    cluster: SimCluster, tmp_path: Path, daemons: List[DaemonProcess]
) -> None:
    path = write_config(
        tmp_path,
        cluster,
        [static("web", 8080)],
        consul={"session": {"ttl": f"{TTL:g}s"}},
        sync={"deregister_on_shutdown": True},
    )
    daemon = start(daemons, path, tmp_path)
    wait_for("the switch armed", lambda: armed(cluster))
    assert daemon.stop() == 0
    assert cluster.catalog_node_services(NODE) is None and sessions_of(cluster) == []


def test_deregister_ends_the_session_on_a_node_that_stays(
    cluster: SimCluster, tmp_path: Path, daemons: List[DaemonProcess]
) -> None:
    path = config(tmp_path, cluster)
    daemon = start(daemons, path, tmp_path)
    wait_for("the switch armed", lambda: armed(cluster))
    daemon.kill()  # the session is still alive for up to 2 x TTL
    foreign = {"CheckID": "other-tool", "Name": "someone else's", "Status": "passing"}
    put(cluster, "/v1/catalog/register", {"Node": NODE, "SkipNodeUpdate": True, "Check": foreign})
    assert len(sessions_of(cluster)) == 1  # not expired yet: the TTL runs for 2 x 2s
    result = regagent_cli(path, "deregister", "--yes")
    assert result.returncode == 0, result.stderr
    assert "session regagent:" in result.stdout
    assert set(node_checks(cluster)) == {"other-tool"}  # the node stays, only regagent's went
    assert sessions_of(cluster) == []


def test_one_shot_commands_never_create_sessions_nor_touch_the_daemons_check(
    cluster: SimCluster, tmp_path: Path, daemons: List[DaemonProcess]
) -> None:
    path = config(tmp_path, cluster)
    cluster.reset_stats()
    dry = regagent_cli(path, "sync", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert cluster.stats()["writes_applied"] == 0 and sessions_of(cluster) == []
    assert regagent_cli(path, "sync").returncode == 0  # registers, but arms nothing
    assert CHECK not in node_checks(cluster) and sessions_of(cluster) == []

    start(daemons, path, tmp_path)
    state = wait_for("the switch armed", lambda: armed(cluster))
    cluster.reset_stats()
    for args in (("sync", "--dry-run"), ("sync",)):
        result = regagent_cli(tmp_path / "regagent.yaml", *args)
        assert result.returncode == 0, result.stderr
    assert armed(cluster)["session"]["ID"] == state["session"]["ID"]
    assert "node check" not in dry.stdout


def test_a_reload_keeps_the_session(
    cluster: SimCluster, tmp_path: Path, daemons: List[DaemonProcess]
) -> None:
    daemon = start(daemons, config(tmp_path, cluster), tmp_path)
    first = wait_for("the switch armed", lambda: armed(cluster))["session"]
    daemon.signal(signal.SIGHUP)
    wait_for("the reload", lambda: "config_reloaded" in events_of(daemon))
    before = renewals(cluster)
    wait_for("renewals after the reload", lambda: renewals(cluster) >= before + 7)
    (session,) = sessions_of(cluster)
    assert session["ID"] == first["ID"] and armed(cluster)


def test_the_shipped_acl_policy_lets_the_daemon_arm_the_switch(
    cluster: SimCluster, tmp_path: Path, daemons: List[DaemonProcess]
) -> None:
    from deploy_stack import DEPLOY, hcl_policy_rules

    secret = "33333333-3333-3333-3333-333333333333"
    rules = hcl_policy_rules(DEPLOY / "consul" / "regagent.hcl")
    assert rules.get("session_prefix") == {"": "write"}
    cluster.set_acl(
        {"default_policy": "deny", "tokens": {secret: {"AccessorID": "a" * 8, **rules}}}
    )
    token = tmp_path / "consul.token"
    token.write_text(secret + "\n")
    token.chmod(0o600)
    path = write_config(
        tmp_path,
        cluster,
        [static("web", 8080)],
        consul={"session": {"ttl": f"{TTL:g}s"}, "token_file": str(token)},
    )
    start(daemons, path, tmp_path)
    wait_for("the switch armed", lambda: armed_acl(cluster, secret))


def armed_acl(cluster: SimCluster, token: str) -> bool:
    checks = cluster.get(cluster.live_server(), f"/v1/health/node/{NODE}?stale", token=token)
    sessions = cluster.get(cluster.live_server(), f"/v1/session/node/{NODE}?stale", token=token)
    alive = [c for c in checks if c["CheckID"] == CHECK and c["Status"] == "passing"]
    return bool(alive) and len(sessions) == 1


def test_an_outage_shorter_than_the_ttl_keeps_the_session_despite_cool_downs(
    cluster: SimCluster, tmp_path: Path, daemons: List[DaemonProcess]
) -> None:
    """Every server answers 503 to a renew: that cools them all down for 8 s, longer than the
    session has left (2 x 3 s); as a cycle does, the next renew still asks the server whose
    cool-down ends first, so the session is renewed as soon as the servers answer again."""
    path = write_config(
        tmp_path,
        cluster,
        [static("web", 8080)],
        consul={"session": {"ttl": "3s"}, "cooldown_initial": "8s", "cooldown_max": "16s"},
    )
    daemon = start(daemons, path, tmp_path)
    first = wait_for("the switch armed", lambda: armed(cluster))["session"]
    before = renewals(cluster)
    for i in range(3):
        cluster.answer_status(i, 503)
    try:
        wait_for("a refused renew", lambda: renewals(cluster) > before, timeout=10)
    finally:
        for i in range(3):
            cluster.answer_status(i, 0)
    served = renewals(cluster)
    wait_for("renewals again", lambda: renewals(cluster) >= served + 3, timeout=15)
    (session,) = sessions_of(cluster)
    assert session["ID"] == first["ID"] and armed(cluster)
    assert "session_lost" not in events_of(daemon)


def test_a_maintenance_window_and_the_switch_are_independent_node_checks(
    cluster: SimCluster, tmp_path: Path, daemons: List[DaemonProcess]
) -> None:
    path = config(tmp_path, cluster)
    start(daemons, path, tmp_path)
    first = wait_for("the switch armed", lambda: armed(cluster))["session"]
    started = regagent_cli(path, "maint", "start", "--for", "30m", "--reason", "kernel")
    assert started.returncode == 0, started.stderr
    checks = node_checks(cluster)
    assert checks["_node_maintenance"]["Status"] == "critical"
    assert armed(cluster)["session"]["ID"] == first["ID"]  # the one-shot left the switch alone
    stopped = regagent_cli(path, "maint", "stop")
    assert stopped.returncode == 0, stopped.stderr
    wait_for("the window's check gone", lambda: "_node_maintenance" not in node_checks(cluster))
    assert armed(cluster)["session"]["ID"] == first["ID"]
    assert len(passing_web(cluster)) == 1
