"""Conformance of the emulator on what the dead-man's switch relies on beyond
tests/test_consulsim_sessions.py, from Consul's sources and PR #22227's text:

- a `session` check follows the session of **its name** ("If this check's session name
  matches"), so another session of the same node ending leaves it alone: regagent names each
  session afresh, and a session left by a killed process cannot flip its successor's check;
- a `/v1/txn` check operation keeps only the Definition fields of Consul's `convertOps`
  (`SessionName` is not one), which is why regagent writes a session check with a single
  catalog register;
- a session check registered anew keeps the status it is written with (registration does not
  look for a session), and a catalog deregister of its CheckID removes it without touching the
  node's other checks or services."""

from __future__ import annotations

from typing import Any, Dict, Iterator

import pytest

from consulsim import SimCluster
from helpers.catalog_sim import node_checks, put, service_health

NODE = "named-host"
CHECK = "regagent:alive"


@pytest.fixture
def cluster() -> Iterator[SimCluster]:
    sim = SimCluster(servers=3, election_delay="0.3s", rpc_hold="0.2s")
    sim.start()
    try:
        yield sim
    finally:
        sim.stop()


def session_check(name: str, status: str = "critical") -> Dict[str, Any]:
    return {
        "CheckID": CHECK,
        "Name": "alive",
        "Status": status,
        "Type": "session",
        "Definition": {"SessionName": name},
    }


def register(cluster: SimCluster, check: Dict[str, Any]) -> None:
    put(
        cluster,
        "/v1/catalog/register",
        {
            "Node": NODE,
            "Address": "127.0.0.1",
            "Service": {"ID": "web-1", "Service": "web", "Port": 80},
            "Check": check,
        },
    )


def create(cluster: SimCluster, name: str) -> str:
    body = {"Node": NODE, "Name": name, "NodeChecks": [], "TTL": "10s", "LockDelay": "0s"}
    sid: str = put(cluster, "/v1/session/create", {**body, "Behavior": "delete"})["ID"]
    return sid


def status(cluster: SimCluster) -> str:
    return str(node_checks(cluster, NODE)[CHECK]["Status"])


def test_only_the_session_of_the_checks_name_flips_it(cluster: SimCluster) -> None:
    register(cluster, session_check("new"))
    old = create(cluster, "old")
    assert status(cluster) == "critical"  # a session of another name does not arm it
    new = create(cluster, "new")
    assert status(cluster) == "passing"
    put(cluster, f"/v1/session/destroy/{old}")
    assert status(cluster) == "passing"  # the leftover ends: nothing happens to the check
    put(cluster, f"/v1/session/destroy/{new}")
    assert status(cluster) == "critical"
    assert service_health(cluster, "web", passing=True) == []


def test_a_re_pointed_check_keeps_the_status_it_is_written_with(cluster: SimCluster) -> None:
    register(cluster, session_check("a"))
    create(cluster, "b")
    register(cluster, session_check("b", "passing"))  # re-pointed at a live session
    check = node_checks(cluster, NODE)[CHECK]
    assert (check["Status"], check["Definition"]["SessionName"]) == ("passing", "b")
    register(cluster, session_check("c"))  # re-pointed at nothing yet: as written
    assert status(cluster) == "critical"


def test_a_txn_check_op_drops_the_session_name(cluster: SimCluster) -> None:
    register(cluster, {"CheckID": "plain", "Name": "plain", "Status": "passing"})
    check = {"Node": NODE, **session_check("x", "passing")}
    answer = put(cluster, "/v1/txn", [{"Check": {"Verb": "set", "Check": check}}])
    assert answer["Errors"] is None
    stored = node_checks(cluster, NODE)[CHECK]
    assert "SessionName" not in (stored.get("Definition") or {})


def test_deregistering_the_check_leaves_the_rest_of_the_node(cluster: SimCluster) -> None:
    register(cluster, session_check("a"))
    register(cluster, {"CheckID": "other", "Name": "other", "Status": "passing"})
    put(cluster, "/v1/catalog/deregister", {"Node": NODE, "CheckID": CHECK})
    assert set(node_checks(cluster, NODE)) == {"other"}
    assert len(service_health(cluster, "web", passing=True)) == 1
