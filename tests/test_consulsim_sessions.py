"""Sessions, the `session` check type, per-node blocking reads and the faults around them.

Conformance tests of the emulator against what Consul's sources say (research notes with file
references: tests/consulsim/README.md, "Sessions"). Sessions are Raft state with TTL timers
kept only by the leader; a check of Type "session" follows the session named by its
Definition.SessionName (Consul PR #22227); an older server drops that field and never touches
the check. Waits are bounded polls; the emulator's session_ttl_min is lowered to 1 s (a real
Consul option) so TTL expiry takes about two seconds.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import consul
import pytest
import requests

from consulsim import SimCluster
from consulsim.state import aggregated_status
from helpers.consul import fast_cluster
from helpers.waits import wait_for

NODE = "host1"
SESSION_NAME = "regagent:host1"
SESSION_CHECK = "regagent:alive"


@pytest.fixture
def cluster() -> Iterator[SimCluster]:
    """A 3-server emulator whose shortest session TTL is 1 s instead of Consul's 10 s."""
    sim = fast_cluster(wait_cap="5s", default_wait="5s", session_ttl_min="1s")
    sim.start()
    try:
        yield sim
    finally:
        sim.stop()


def call(
    sim: SimCluster, i: int, method: str, path: str, body: Any = None, **kw: Any
) -> requests.Response:
    kw.setdefault("timeout", 10)
    return requests.request(method, sim.url(i) + path, json=body, **kw)


def ok_json(resp: requests.Response) -> Any:
    assert resp.status_code == 200, (resp.status_code, resp.text)
    return resp.json()


def register_host(
    sim: SimCluster,
    *,
    check_status: str = "critical",
    session_name: str = SESSION_NAME,
    extra_checks: Optional[List[Dict[str, Any]]] = None,
) -> None:
    """An external node with one service and a node-level check of Type "session"."""
    checks: List[Dict[str, Any]] = [
        {
            "CheckID": SESSION_CHECK,
            "Name": "regagent alive",
            "Status": check_status,
            "Output": "critical when regagent stops renewing its session",
            "Type": "session",
            "Definition": {"SessionName": session_name},
        },
        {
            "CheckID": "web-1:up",
            "Name": "up",
            "ServiceID": "web-1",
            "Status": "passing",
            "Output": "ok",
        },
        *(extra_checks or []),
    ]
    ok_json(
        call(
            sim,
            1,
            "PUT",
            "/v1/catalog/register",
            {
                "Node": NODE,
                "Address": "10.0.0.5",
                "NodeMeta": {"external-node": "true"},
                "Service": {"ID": "web-1", "Service": "web", "Port": 9100},
                "Checks": checks,
            },
        )
    )


def create_session(sim: SimCluster, i: int = 0, **fields: Any) -> str:
    body = {"Node": NODE, "Name": SESSION_NAME, "NodeChecks": [], **fields}
    sid: str = ok_json(call(sim, i, "PUT", "/v1/session/create", body))["ID"]
    return sid


def node_check(sim: SimCluster, check_id: str, i: int = 2) -> Dict[str, Any]:
    for check in ok_json(call(sim, i, "GET", f"/v1/health/node/{NODE}")):
        if check["CheckID"] == check_id:
            found: Dict[str, Any] = check
            return found
    raise AssertionError(f"no check {check_id}")


def sessions_on_node(sim: SimCluster, i: int = 2) -> List[Dict[str, Any]]:
    found: List[Dict[str, Any]] = ok_json(call(sim, i, "GET", f"/v1/session/node/{NODE}"))
    return found


def wait_until(what: Callable[[], bool], timeout: float = 10.0) -> None:
    wait_for("the condition", what, timeout)


def index_of(resp: requests.Response) -> int:
    return int(resp.headers["X-Consul-Index"])


def blocking(
    sim: SimCluster, i: int, path: str, index: int, wait: str = "5s"
) -> Tuple[List[requests.Response], threading.Thread]:
    """Start a blocking GET in a thread; the answer lands in the returned list."""
    out: List[requests.Response] = []
    sep = "&" if "?" in path else "?"

    def run() -> None:
        out.append(call(sim, i, "GET", f"{path}{sep}index={index}&wait={wait}", timeout=30))

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return out, thread


# ---------------------------------------------------------------------- the session API


def test_create_defaults_to_the_answering_agent_and_serf_health(cluster: SimCluster) -> None:
    resp = call(cluster, 1, "PUT", "/v1/session/create")  # no body at all
    sid = ok_json(resp)["ID"]
    info = call(cluster, 2, "GET", f"/v1/session/info/{sid}")
    (sess,) = ok_json(info)
    assert sess == {
        "ID": sid,
        "Name": "",
        "Node": "consul-server-2",  # the node of the agent that answered the create
        "LockDelay": 15_000_000_000,
        "Behavior": "release",
        "TTL": "",
        "NodeChecks": ["serfHealth"],
        "ServiceChecks": None,
        "CreateIndex": sess["CreateIndex"],
        "ModifyIndex": sess["CreateIndex"],
    }
    assert index_of(info) == sess["CreateIndex"] == cluster.stats()["raft_index"]
    assert [s["ID"] for s in ok_json(call(cluster, 0, "GET", "/v1/session/list"))] == [sid]
    node = ok_json(call(cluster, 0, "GET", "/v1/session/node/consul-server-2"))
    assert [s["ID"] for s in node] == [sid]
    # An unknown session is an empty list, not a 404 (Session.Get's errNotFound).
    unknown = call(cluster, 0, "GET", "/v1/session/info/00000000-0000-0000-0000-000000000000")
    assert ok_json(unknown) == []
    assert index_of(unknown) == sess["CreateIndex"]


def test_external_node_needs_explicit_checks(cluster: SimCluster) -> None:
    register_host(cluster, check_status="passing")
    before = cluster.stats()["raft_index"]
    resp = call(cluster, 1, "PUT", "/v1/session/create", {"Node": NODE})
    assert (resp.status_code, resp.text) == (
        500,
        "rpc error making call: Missing check 'serfHealth' registration",
    )
    # The state store refused it after Raft: the index is used, nothing is stored.
    assert cluster.stats()["raft_index"] == before + 1
    assert sessions_on_node(cluster) == []
    for body in ({"Node": NODE, "NodeChecks": []}, {"Node": NODE, "Checks": []}):
        sid = ok_json(call(cluster, 0, "PUT", "/v1/session/create", body))["ID"]
        (sess,) = ok_json(call(cluster, 0, "GET", f"/v1/session/info/{sid}"))
        assert (sess["NodeChecks"], "Checks" in sess) == ([], False)


def test_create_refusals_and_their_texts(cluster: SimCluster) -> None:
    register_host(cluster, extra_checks=[{"CheckID": "down", "Name": "down", "Status": "critical"}])
    refusals = [
        ({"Node": "nowhere", "NodeChecks": []}, "Missing node registration"),
        ({"Node": NODE, "NodeChecks": ["nope"]}, "Missing check 'nope' registration"),
        ({"Node": NODE, "NodeChecks": ["down"]}, "Check 'down' is in critical state"),
        ({"Node": NODE, "NodeChecks": [], "Behavior": "bogus"}, "Invalid Behavior setting 'bogus'"),
        (
            {"Node": NODE, "NodeChecks": [], "TTL": "5"},
            "Session TTL '5' invalid: time: missing unit in duration \"5\"",
        ),
        (
            {"Node": NODE, "NodeChecks": [], "TTL": "500ms"},
            "Invalid Session TTL '500000000', must be between [1s=24h0m0s]",
        ),
        (
            {"Node": NODE, "NodeChecks": [], "TTL": "25h"},
            "Invalid Session TTL '90000000000000', must be between [1s=24h0m0s]",
        ),
        ({"Node": "", "NodeChecks": []}, "Must provide Node"),
    ]
    for body, text in refusals:
        resp = call(cluster, 0, "PUT", "/v1/session/create", body)  # the leader: no prefix
        assert (resp.status_code, resp.text) == (500, text), body
    assert ok_json(call(cluster, 0, "GET", "/v1/session/list")) == []
    # Session has its own UnmarshalJSON: unknown keys are ignored, types are not.
    sid = create_session(cluster, Whatever=1, LockDelay=30)
    (sess,) = ok_json(call(cluster, 0, "GET", f"/v1/session/info/{sid}"))
    assert sess["LockDelay"] == 30_000_000_000  # small numbers are seconds
    bad = call(cluster, 0, "PUT", "/v1/session/create", {"Node": NODE, "TTL": 10})
    assert bad.status_code == 400 and bad.text.startswith("Request decode failed: ")


def test_python_consul2_round_trip(cluster: SimCluster) -> None:
    """The session calls of a client nobody here wrote (lower-case keys, index tuples)."""
    register_host(cluster, check_status="passing")
    host, port = cluster.host_port(1)
    c = consul.Consul(host=host, port=port, timeout=10)
    sid = c.session.create(name=SESSION_NAME, node=NODE, checks=[], ttl=10, lock_delay=0)
    index, sess = c.session.info(sid)
    assert (sess["Name"], sess["Node"], sess["TTL"], sess["LockDelay"]) == (
        SESSION_NAME,
        NODE,
        "10s",
        0,
    )
    assert int(index) == sess["CreateIndex"]
    assert c.session.renew(sid)["ID"] == sid
    assert [s["ID"] for s in c.session.node(NODE)[1]] == [sid]
    assert c.session.destroy(sid) is True
    assert c.session.list()[1] == []
    with pytest.raises(consul.NotFound):
        c.session.renew(sid)


def test_renew_resets_the_leaders_timer_and_writes_nothing(cluster: SimCluster) -> None:
    register_host(cluster, check_status="passing")
    sid = create_session(cluster, TTL="10s")
    time.sleep(1.0)  # margin: the restarted timer must be visibly longer than the old one
    before = cluster.sessions_config()["timers"][sid]
    assert 0 < before < 20  # 2 x TTL, counting down
    raft = cluster.stats()["raft_index"]
    list_index = index_of(call(cluster, 0, "GET", "/v1/session/list"))
    renewed = ok_json(call(cluster, 2, "PUT", f"/v1/session/renew/{sid}"))  # via a follower
    assert [s["ID"] for s in renewed] == [sid]
    after = cluster.sessions_config()["timers"][sid]
    assert after > before  # the timer restarted at 2 x TTL
    assert cluster.stats()["raft_index"] == raft  # a renew is not a Raft write
    assert index_of(call(cluster, 0, "GET", "/v1/session/list")) == list_index
    missing = call(cluster, 1, "PUT", "/v1/session/renew/00000000-0000-0000-0000-000000000000")
    assert (missing.status_code, missing.text) == (
        404,
        "Session id '00000000-0000-0000-0000-000000000000' not found",
    )
    assert call(cluster, 1, "PUT", "/v1/session/renew/").status_code == 400


def test_destroy_unknown_session_writes_nothing(cluster: SimCluster) -> None:
    raft = cluster.stats()["raft_index"]
    resp = call(cluster, 1, "PUT", "/v1/session/destroy/00000000-0000-0000-0000-000000000000")
    assert ok_json(resp) is True
    assert cluster.stats()["raft_index"] == raft
    assert (call(cluster, 1, "PUT", "/v1/session/destroy/").text) == "Missing session"


def test_ttl_expiry_after_twice_the_ttl_is_one_raft_write(cluster: SimCluster) -> None:
    register_host(cluster, check_status="passing")
    sid = create_session(cluster, TTL="1s")
    remaining = cluster.sessions_config()["timers"][sid]
    assert 1.0 < remaining <= 2.0  # invalidated at 2 x TTL, never before TTL
    raft = cluster.stats()["raft_index"]
    wait_until(lambda: sessions_on_node(cluster) == [])
    assert cluster.stats()["raft_index"] == raft + 1  # the leader's SessionDestroy
    assert cluster.sessions_config()["timers"] == {}


# ---------------------------------------------------------------------- invalidation


def test_session_dies_with_a_critical_or_deleted_check_or_node(cluster: SimCluster) -> None:
    alive = {"CheckID": "alive", "Name": "alive", "Status": "passing"}
    register_host(cluster, check_status="passing", extra_checks=[alive])
    create_session(cluster, NodeChecks=["alive"])
    # A critical write of a check the session names invalidates it.
    ok_json(
        call(
            cluster,
            0,
            "PUT",
            "/v1/catalog/register",
            {"Node": NODE, "SkipNodeUpdate": True, "Check": {**alive, "Status": "critical"}},
        )
    )
    assert sessions_on_node(cluster) == []
    # Deleting the check invalidates it too.
    register_host(cluster, check_status="passing", extra_checks=[alive])
    create_session(cluster, NodeChecks=["alive"])
    ok_json(call(cluster, 0, "PUT", "/v1/catalog/deregister", {"Node": NODE, "CheckID": "alive"}))
    assert sessions_on_node(cluster) == []
    # And deregistering the node: "Invalidate any sessions for this node".
    register_host(cluster, check_status="passing")
    create_session(cluster)
    ok_json(call(cluster, 0, "PUT", "/v1/catalog/deregister", {"Node": NODE}))
    assert sessions_on_node(cluster) == []
    assert ok_json(call(cluster, 0, "GET", "/v1/session/list")) == []


def test_sessions_survive_a_leader_election_with_fresh_timers(cluster: SimCluster) -> None:
    register_host(cluster, check_status="passing")
    sid = create_session(cluster, TTL="10s")
    time.sleep(1.0)  # margin: the new leader's timer must be visibly longer than the old one
    before = cluster.sessions_config()["timers"][sid]
    old = cluster.drop_leader()
    new = cluster.wait_for_leader()
    assert new != old
    # Sessions are Raft state: still there, read from the old leader too.
    assert [s["ID"] for s in sessions_on_node(cluster, i=old or 0)] == [sid]
    # initializeSessionTimers: the new leader starts a fresh 2 x TTL for every session.
    assert cluster.sessions_config()["timers"][sid] > before


def test_no_leader_no_timers_and_no_renew(cluster: SimCluster) -> None:
    register_host(cluster, check_status="passing")
    sid = create_session(cluster, TTL="1s")
    cluster.stop_server(1)
    cluster.stop_server(2)  # quorum lost: no leader, so no timer runs
    assert cluster.sessions_config()["timers"] == {sid: None}
    resp = call(cluster, 0, "PUT", f"/v1/session/renew/{sid}")
    assert (resp.status_code, resp.text) == (500, "No cluster leader")
    time.sleep(2.5)  # longer than 2 x TTL: nobody may expire it meanwhile
    stale = ok_json(call(cluster, 0, "GET", "/v1/session/list?stale"))
    assert [s["ID"] for s in stale] == [sid]
    cluster.start_server(1)
    cluster.wait_for_leader()
    remaining = cluster.sessions_config()["timers"][sid]
    assert remaining is not None and remaining > 1.0
    wait_until(lambda: sessions_on_node(cluster, i=0) == [])


# ---------------------------------------------------------------------- the session check type


def test_session_check_follows_its_session(cluster: SimCluster) -> None:
    register_host(cluster)  # the session check starts critical
    check = node_check(cluster, SESSION_CHECK)
    assert (check["Type"], check["Definition"]) == ("session", {"SessionName": SESSION_NAME})
    assert ok_json(call(cluster, 0, "GET", "/v1/health/service/web?passing")) == []
    node_index = index_of(call(cluster, 0, "GET", f"/v1/catalog/node/{NODE}"))

    sid = create_session(cluster, TTL="1s")
    check = node_check(cluster, SESSION_CHECK)
    assert check["Status"] == "passing"
    assert check["Output"] == "critical when regagent stops renewing its session"
    assert len(ok_json(call(cluster, 0, "GET", "/v1/health/service/web?passing"))) == 1

    ok_json(call(cluster, 1, "PUT", f"/v1/session/destroy/{sid}"))
    assert node_check(cluster, SESSION_CHECK)["Status"] == "critical"
    assert ok_json(call(cluster, 0, "GET", "/v1/health/service/web?passing")) == []
    # Check writes never move the per-node index behind /v1/catalog/node (it shows no checks).
    assert index_of(call(cluster, 0, "GET", f"/v1/catalog/node/{NODE}")) == node_index


def test_ttl_expiry_wakes_a_blocked_health_reader(cluster: SimCluster) -> None:
    register_host(cluster)
    create_session(cluster, TTL="1s")
    resp = call(cluster, 2, "GET", "/v1/health/service/web?stale")
    assert aggregated_status(resp.json()[0]["Checks"]) == "passing"
    answers, thread = blocking(cluster, 2, "/v1/health/service/web?stale", index_of(resp), "10s")
    thread.join(timeout=15)
    assert answers, "the blocked read never returned"
    (entry,) = answers[0].json()
    assert index_of(answers[0]) > index_of(resp)
    assert aggregated_status(entry["Checks"]) == "critical"


def test_session_listing_its_own_critical_check_esm_style(cluster: SimCluster) -> None:
    """consul-esm's agentless mode: the session check starts critical and is in NodeChecks of
    the health session and of a second (lock) session; creating the health session turns it
    passing, destroying it turns it critical, which invalidates the lock session."""
    register_host(cluster)
    health = create_session(cluster, NodeChecks=[SESSION_CHECK], TTL="10s")
    assert node_check(cluster, SESSION_CHECK)["Status"] == "passing"
    lock = create_session(cluster, Name="leader lock", NodeChecks=[SESSION_CHECK])
    assert {s["ID"] for s in sessions_on_node(cluster)} == {health, lock}
    ok_json(call(cluster, 0, "PUT", f"/v1/session/destroy/{health}"))
    assert node_check(cluster, SESSION_CHECK)["Status"] == "critical"
    assert sessions_on_node(cluster) == []


def test_older_server_keeps_the_type_and_drops_the_session_name() -> None:
    with SimCluster(servers=3, election_delay="0.3s", rpc_hold="0.2s", session_checks=False) as old:
        assert old.sessions_config()["session_checks"] is False
        register_host(old)  # 200 true: an unknown Definition field is no error there
        check = node_check(old, SESSION_CHECK)
        assert (check["Type"], check["Definition"], check["Status"]) == ("session", {}, "critical")
        sid = create_session(old)
        assert node_check(old, SESSION_CHECK)["Status"] == "critical"
        ok_json(call(old, 0, "PUT", f"/v1/session/destroy/{sid}"))
        assert node_check(old, SESSION_CHECK)["Status"] == "critical"
        # The switch turns the feature on at run time (an upgraded cluster) and off again.
        old.set_session_checks(True)
        register_host(old)
        create_session(old)
        assert node_check(old, SESSION_CHECK)["Status"] == "passing"


# ---------------------------------------------------------------------- maintenance


def test_node_maintenance_check_takes_the_services_out(cluster: SimCluster) -> None:
    """The check `consul maint` makes, written through the catalog for an external node."""
    maint = {
        "CheckID": "_node_maintenance",
        "Name": "Node Maintenance Mode",
        "Notes": "kernel upgrade",
        "Status": "critical",
    }
    register_host(cluster, check_status="passing", extra_checks=[maint])
    assert ok_json(call(cluster, 0, "GET", "/v1/health/service/web?passing")) == []
    (entry,) = ok_json(call(cluster, 0, "GET", "/v1/health/service/web"))
    ids = [c["CheckID"] for c in entry["Checks"]]
    assert "_node_maintenance" in ids and "web-1:up" in ids
    assert aggregated_status(entry["Checks"]) == "maintenance"  # __meta_consul_health
    critical = ok_json(call(cluster, 0, "GET", "/v1/health/state/critical"))
    assert [c["Notes"] for c in critical if c["CheckID"] == "_node_maintenance"] == [
        "kernel upgrade"
    ]
    ok_json(
        call(
            cluster,
            0,
            "PUT",
            "/v1/catalog/deregister",
            {"Node": NODE, "CheckID": "_node_maintenance"},
        )
    )
    assert len(ok_json(call(cluster, 0, "GET", "/v1/health/service/web?passing"))) == 1


# ---------------------------------------------------------------------- blocking reads


def test_catalog_node_index_is_per_node(cluster: SimCluster) -> None:
    register_host(cluster, check_status="passing")
    first = call(cluster, 2, "GET", f"/v1/catalog/node/{NODE}?stale")
    index = index_of(first)
    assert index == first.json()["Services"]["web-1"]["ModifyIndex"]
    # Another node's writes do not move it (Consul PR #12399) ...
    ok_json(
        call(
            cluster,
            0,
            "PUT",
            "/v1/catalog/register",
            {"Node": "host2", "Address": "10.0.0.6", "Service": {"Service": "db"}},
        )
    )
    # ... nor do check writes on this node.
    ok_json(
        call(
            cluster,
            0,
            "PUT",
            "/v1/catalog/register",
            {
                "Node": NODE,
                "SkipNodeUpdate": True,
                "Check": {"CheckID": "web-1:up", "ServiceID": "web-1", "Status": "warning"},
            },
        )
    )
    assert index_of(call(cluster, 2, "GET", f"/v1/catalog/node/{NODE}?stale")) == index
    answers, thread = blocking(cluster, 2, f"/v1/catalog/node/{NODE}?stale", index, "10s")
    time.sleep(0.3)
    assert thread.is_alive()
    ok_json(call(cluster, 1, "PUT", "/v1/catalog/deregister", {"Node": NODE, "ServiceID": "web-1"}))
    thread.join(timeout=10)
    assert answers and index_of(answers[0]) > index
    assert answers[0].json()["Services"] == {}


def test_deregistered_node_wakes_its_reader_with_the_extinction_index(
    cluster: SimCluster,
) -> None:
    register_host(cluster, check_status="passing")
    index = index_of(call(cluster, 0, "GET", f"/v1/catalog/node/{NODE}"))
    answers, thread = blocking(cluster, 1, f"/v1/catalog/node/{NODE}?stale", index, "10s")
    time.sleep(0.3)
    ok_json(call(cluster, 0, "PUT", "/v1/catalog/deregister", {"Node": NODE}))
    thread.join(timeout=10)
    assert answers and answers[0].json() is None
    gone = index_of(answers[0])
    assert gone > index and gone == cluster.stats()["indexes"]["node_extinction"]


def test_snapshot_restore_sends_the_index_backwards_and_releases_readers(
    cluster: SimCluster,
) -> None:
    register_host(cluster, check_status="passing")
    saved = cluster.snapshot_save()
    saved_index = index_of(call(cluster, 0, "GET", f"/v1/catalog/node/{NODE}"))
    ok_json(
        call(
            cluster,
            0,
            "PUT",
            "/v1/catalog/register",
            {"Node": NODE, "Address": "10.0.0.5", "Service": {"Service": "extra"}},
        )
    )
    now = call(cluster, 0, "GET", f"/v1/catalog/node/{NODE}")
    assert set(now.json()["Services"]) == {"web-1", "extra"}
    answers, thread = blocking(cluster, 2, f"/v1/catalog/node/{NODE}?stale", index_of(now), "20s")
    time.sleep(0.3)
    raft = cluster.stats()["raft_index"]
    cluster.snapshot_restore(saved)
    thread.join(timeout=5)
    assert answers, "a restore must release blocked reads at once"
    assert index_of(answers[0]) == saved_index < index_of(now)  # backwards
    assert set(answers[0].json()["Services"]) == {"web-1"}
    assert cluster.stats()["raft_index"] == raft  # the log goes on; the next write is higher
    ok_json(call(cluster, 0, "PUT", "/v1/catalog/register", {"Node": "n3", "Address": "1.2.3.4"}))
    assert cluster.stats()["raft_index"] == raft + 1


def test_no_block_server_answers_blocking_reads_at_once(cluster: SimCluster) -> None:
    register_host(cluster, check_status="passing")
    index = index_of(call(cluster, 0, "GET", f"/v1/catalog/node/{NODE}"))
    cluster.no_block(1)
    answers, thread = blocking(cluster, 1, f"/v1/catalog/node/{NODE}?stale", index, "30s")
    thread.join(timeout=5)
    assert answers and index_of(answers[0]) == index  # at once, nothing changed
    assert cluster.stats()["servers"][1]["no_block"] is True
    # Other servers still block; server 1 blocks again once repaired.
    others, other_thread = blocking(cluster, 2, f"/v1/catalog/node/{NODE}?stale", index, "30s")
    cluster.no_block(1, on=False)
    again, again_thread = blocking(cluster, 1, f"/v1/catalog/node/{NODE}?stale", index, "30s")
    time.sleep(0.3)
    assert other_thread.is_alive() and again_thread.is_alive()
    ok_json(call(cluster, 0, "PUT", "/v1/catalog/deregister", {"Node": NODE, "ServiceID": "web-1"}))
    other_thread.join(timeout=10)
    again_thread.join(timeout=10)
    assert others and again


def test_session_acl_needs_session_write() -> None:
    acl = {
        "default_policy": "deny",
        "tokens": {
            "node-only": {
                "AccessorID": "11111111-2222-3333-4444-555555555555",
                "node_prefix": {"": "write"},
                "service_prefix": {"": "write"},
            },
            "sessions": {
                "AccessorID": "22222222-2222-3333-4444-555555555555",
                "node_prefix": {"": "write"},
                "service_prefix": {"": "write"},
                "session_prefix": {"": "write"},
            },
        },
    }
    with SimCluster(servers=3, election_delay="0.3s", rpc_hold="0.2s", acl=acl) as sim:
        headers = {"X-Consul-Token": "sessions"}
        register_host_with = {
            "Node": NODE,
            "Address": "10.0.0.5",
            "Service": {"ID": "web-1", "Service": "web"},
        }
        ok_json(call(sim, 0, "PUT", "/v1/catalog/register", register_host_with, headers=headers))
        body = {"Node": NODE, "NodeChecks": []}
        denied = call(
            sim, 0, "PUT", "/v1/session/create", body, headers={"X-Consul-Token": "node-only"}
        )
        assert denied.status_code == 403
        assert "lacks permission 'session:write' on \"host1\"" in denied.text
        sid = ok_json(call(sim, 0, "PUT", "/v1/session/create", body, headers=headers))["ID"]
        listed = call(sim, 0, "GET", "/v1/session/list", headers={"X-Consul-Token": "node-only"})
        assert ok_json(listed) == []  # filtered silently
        assert [
            s["ID"] for s in ok_json(call(sim, 0, "GET", "/v1/session/list", headers=headers))
        ] == [sid]
