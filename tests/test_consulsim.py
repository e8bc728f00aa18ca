"""The Consul emulator checked through python-consul2, a client nobody here wrote.

Every endpoint regagent uses is round-tripped; index rules, blocking queries, error texts,
fault injection and ACLs are asserted as a Consul client would observe them.
"""

from __future__ import annotations

import socket
import threading
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

import consul
import pytest
import requests

from consulsim import SimCluster, SimClusterError
from tls_pki import TLSFiles

Client = Callable[..., consul.Consul]

WEB = {
    "ID": "web-1",
    "Service": "web",
    "Tags": ["b", "a"],
    "Address": "10.0.0.5",
    "Port": 9100,
    "Meta": {"managed-by": "regagent", "version": "1.2"},
}


@pytest.fixture
def client(consul_cluster: SimCluster, monkeypatch: pytest.MonkeyPatch) -> Client:
    """Build python-consul2 clients for server i, immune to CONSUL_HTTP_* overrides."""
    for name in (
        "CONSUL_HTTP_ADDR",
        "CONSUL_HTTP_TOKEN",
        "CONSUL_HTTP_SSL",
        "CONSUL_HTTP_SSL_VERIFY",
    ):
        monkeypatch.delenv(name, raising=False)

    def make(i: int = 0, token: Optional[str] = None, consistency: str = "default") -> Any:
        host, port = consul_cluster.host_port(i)
        return consul.Consul(host=host, port=port, token=token, consistency=consistency, timeout=10)

    return make


def raw(cluster: SimCluster, i: int, method: str, path: str, **kw: Any) -> requests.Response:
    """A plain HTTP request to server i (for what python-consul2 does not expose)."""
    kw.setdefault("timeout", 10)
    return requests.request(method, cluster.url(i) + path, **kw)


def register_web(c: Any, **changes: Any) -> bool:
    service = {**WEB, **changes.pop("service", {})}
    check = changes.pop(
        "check",
        {
            "CheckID": "web-1:up",
            "Name": "up",
            "ServiceID": "web-1",
            "Status": "passing",
            "Output": "ok",
        },
    )
    return bool(
        c.catalog.register(
            "host1",
            "10.0.0.5",
            service=service,
            check=check,
            node_meta={"external-node": "true"},
            **changes,
        )
    )


def indexes(c: Any) -> Tuple[str, str, str, str]:
    """X-Consul-Index of the four reads whose index rules regagent relies on."""
    return (
        c.catalog.services()[0],
        c.catalog.service("web")[0],
        c.health.service("web")[0],
        c.health.node("host1")[0],
    )


# ---------------------------------------------------------------------- round trips


def test_status_leader_and_peers(consul_cluster: SimCluster, client: Client) -> None:
    for i in range(3):
        assert client(i).status.leader() == consul_cluster.addresses[0]
        assert client(i).status.peers() == consul_cluster.addresses


def test_catalog_register_round_trip_on_every_read(
    consul_cluster: SimCluster, client: Client
) -> None:
    assert register_web(client(1))  # written through a follower, forwarded to the leader
    c = client(2)

    _, services = c.catalog.services()
    assert services == {"consul": [], "web": ["b", "a"]}

    _, nodes = c.catalog.service("web")
    assert len(nodes) == 1
    sn = nodes[0]
    assert (sn["Node"], sn["Address"], sn["ServiceID"], sn["ServicePort"]) == (
        "host1",
        "10.0.0.5",
        "web-1",
        9100,
    )
    assert sn["NodeMeta"] == {"external-node": "true"}
    assert sn["ServiceMeta"] == WEB["Meta"]
    assert sn["ServiceTags"] == ["b", "a"]
    assert sn["ServiceWeights"] == {"Passing": 1, "Warning": 1}
    assert sn["Datacenter"] == "dc1"

    _, node = c.catalog.node("host1")
    assert node["Node"]["Meta"] == {"external-node": "true"}
    assert node["Services"]["web-1"]["Tags"] == ["b", "a"]
    assert c.catalog.node("nosuchnode")[1] is None

    _, entries = c.health.service("web")
    assert [e["Service"]["ID"] for e in entries] == ["web-1"]
    check = entries[0]["Checks"][0]
    assert (check["CheckID"], check["Status"], check["Output"]) == ("web-1:up", "passing", "ok")
    assert (check["ServiceName"], check["ServiceTags"]) == ("web", ["b", "a"])

    assert [ch["CheckID"] for ch in c.health.node("host1")[1]] == ["web-1:up"]
    assert [ch["CheckID"] for ch in c.health.checks("web")[1]] == ["web-1:up"]
    assert c.health.service("web", tag="B")[1]  # tags compare case-insensitively
    assert c.health.service("web", tag="c")[1] == []
    assert c.catalog.service("web", node_meta={"external-node": "false"})[1] == []


def test_node_services_and_nodes_endpoints(consul_cluster: SimCluster, client: Client) -> None:
    register_web(client(0))
    body = raw(consul_cluster, 1, "GET", "/v1/catalog/node-services/host1").json()
    assert body["Node"]["Node"] == "host1"
    assert [s["ID"] for s in body["Services"]] == ["web-1"]
    assert raw(consul_cluster, 1, "GET", "/v1/catalog/node-services/nope").json() == {
        "Node": None,
        "Services": None,
    }
    names = [n["Node"] for n in raw(consul_cluster, 1, "GET", "/v1/catalog/nodes").json()]
    assert names == ["consul-server-1", "consul-server-2", "consul-server-3", "host1"]


def test_deregister_service_check_and_node(consul_cluster: SimCluster, client: Client) -> None:
    c = client(0)
    register_web(c)
    assert c.catalog.deregister("host1", check_id="web-1:up")
    assert c.health.node("host1")[1] == []
    assert c.catalog.deregister("host1", service_id="web-1")
    assert c.catalog.service("web")[1] == []
    assert c.catalog.services()[1] == {"consul": []}
    consul_cluster.reset_stats()
    assert c.catalog.deregister("host1", service_id="web-1")  # missing: a 200 no-op
    stats = consul_cluster.stats()
    assert (stats["writes_applied"], stats["writes_changed"]) == (1, 0)
    assert c.catalog.deregister("host1")
    assert c.catalog.node("host1")[1] is None


# ---------------------------------------------------------------------- index rules


def test_noop_register_advances_raft_only(consul_cluster: SimCluster, client: Client) -> None:
    c = client(0)
    register_web(c)
    before = indexes(c)
    modify = c.catalog.service("web")[1][0]["ModifyIndex"]
    raft = consul_cluster.stats()["raft_index"]
    consul_cluster.reset_stats()

    register_web(client(2))  # identical, through another server

    stats = consul_cluster.stats()
    assert (stats["writes_applied"], stats["writes_changed"]) == (1, 0)
    assert stats["raft_index"] == raft + 1
    assert indexes(c) == before
    assert c.catalog.service("web")[1][0]["ModifyIndex"] == modify


@pytest.mark.parametrize(
    ("change", "moves"),
    [
        ({"service": {"Tags": ["a", "b"]}}, True),  # tag order matters (DeepEqual)
        ({"service": {"Weights": {"Passing": 1, "Warning": 1}}}, False),  # default weights
        (
            {"check": {"CheckID": "web-1:up", "Name": "up", "ServiceID": "web-1", "Output": "ok"}},
            True,
        ),  # no Status: resets to critical
    ],
)
def test_what_changes_an_index(
    consul_cluster: SimCluster, client: Client, change: Dict[str, Any], moves: bool
) -> None:
    c = client(0)
    register_web(c)
    before = c.health.service("web")[0]
    register_web(c, **change)
    assert (c.health.service("web")[0] != before) is moves


def test_meta_nil_versus_empty_is_a_change(consul_cluster: SimCluster, client: Client) -> None:
    c = client(0)
    register_web(c, service={"Meta": None})
    before = c.catalog.service("web")[0]
    register_web(c, service={"Meta": None})
    assert c.catalog.service("web")[0] == before
    register_web(c, service={"Meta": {}})
    assert c.catalog.service("web")[0] != before


def test_check_status_change_leaves_services_index(
    consul_cluster: SimCluster, client: Client
) -> None:
    c = client(0)
    register_web(c)
    services_idx, _, health_idx, node_idx = indexes(c)
    register_web(
        c,
        check={
            "CheckID": "web-1:up",
            "Name": "up",
            "ServiceID": "web-1",
            "Status": "critical",
            "Output": "down",
        },
    )
    after = indexes(c)
    assert after[0] == services_idx
    assert int(after[2]) > int(health_idx)
    assert int(after[3]) > int(node_idx)


def test_default_check_status_is_critical(consul_cluster: SimCluster, client: Client) -> None:
    c = client(0)
    register_web(c, check={"CheckID": "web-1:up", "Name": "up", "ServiceID": "web-1"})
    assert c.health.checks("web")[1][0]["Status"] == "critical"
    assert c.health.service("web", passing=True)[1] == []
    assert len(c.health.service("web")[1]) == 1


def test_extinct_service_reports_extinction_index(
    consul_cluster: SimCluster, client: Client
) -> None:
    c = client(0)
    register_web(c)
    c.catalog.deregister("host1", service_id="web-1")
    raft = consul_cluster.stats()["raft_index"]
    assert int(c.catalog.service("web")[0]) == raft
    assert consul_cluster.stats()["indexes"]["service_extinction"] == raft


# ---------------------------------------------------------------------- blocking


def _blocking(call: Callable[[], Tuple[str, Any]]) -> Tuple[List[Any], threading.Thread]:
    out: List[Any] = []

    def run() -> None:
        start = time.monotonic()
        index, _ = call()
        out.append((index, time.monotonic() - start))

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return out, thread


def test_blocking_read_ignores_noop_and_wakes_on_change(
    consul_cluster: SimCluster, client: Client
) -> None:
    c = client(1)
    register_web(c)
    index, _ = c.health.service("web")

    out, thread = _blocking(lambda: client(2).health.service("web", index=index, wait="1s"))
    time.sleep(0.2)
    register_web(client(0))  # no-op write: must not wake the watcher
    thread.join(5)
    new_index, elapsed = out[0]
    assert new_index == index
    assert elapsed >= 0.95  # returned at the wait timeout, not at the write

    out, thread = _blocking(lambda: client(2).health.service("web", index=index, wait="2s"))
    time.sleep(0.2)
    register_web(client(0), service={"Port": 9101})
    thread.join(5)
    new_index, elapsed = out[0]
    assert int(new_index) > int(index)
    assert elapsed < 1.0


def test_blocked_node_read_wakes_only_for_its_own_node(
    consul_cluster: SimCluster, client: Client
) -> None:
    """Consul PR #12399: a blocking /v1/catalog/node/<a> waits on node a's entry alone, so
    writes to another node (or to a's checks) neither answer it nor even wake it."""
    c = client(0)
    for node in ("host-a", "host-b"):
        c.catalog.register(node, "10.0.0.9", service={"ID": "web-1", "Service": "web"})
    check = {"CheckID": "a-up", "Name": "up", "Status": "passing"}
    c.catalog.register("host-a", "10.0.0.9", check=check)
    index, _ = c.catalog.node("host-a")
    woken = consul_cluster.stats()["blocked_reads_woken"]

    out, thread = _blocking(lambda: client(1).catalog.node("host-a", index=index, wait="1s"))
    time.sleep(0.2)
    for port in range(8001, 8006):  # each one moves host-b's index
        c.catalog.register("host-b", "10.0.0.9", service={"ID": "web-1", "Service": "web",
                                                           "Port": port})  # fmt: skip
    c.catalog.register("host-a", "10.0.0.9", check={**check, "Status": "critical"})
    thread.join(5)
    new_index, elapsed = out[0]
    assert new_index == index
    assert elapsed >= 0.95  # returned at its wait, not at a write
    assert consul_cluster.stats()["blocked_reads_woken"] == woken

    out, thread = _blocking(lambda: client(2).catalog.node("host-a", index=index, wait="5s"))
    time.sleep(0.2)
    c.catalog.register("host-a", "10.0.0.9", service={"ID": "web-1", "Service": "web", "Port": 1})
    thread.join(5)
    new_index, elapsed = out[0]
    assert int(new_index) > int(index)
    assert elapsed < 1.0
    assert consul_cluster.stats()["blocked_reads_woken"] == woken + 1

    index = new_index
    out, thread = _blocking(lambda: client(1).catalog.node("host-a", index=index, wait="5s"))
    time.sleep(0.2)
    c.catalog.deregister("host-a")  # the reader wakes with the node extinction index
    thread.join(5)
    new_index, elapsed = out[0]
    assert int(new_index) > int(index)
    assert elapsed < 1.0
    assert c.catalog.node("host-a") == (new_index, None)


def test_blocking_wait_is_capped(consul_cluster: SimCluster, client: Client) -> None:
    index, _ = client(0).catalog.services()
    start = time.monotonic()
    assert client(0).catalog.services(index=index, wait="10m")[0] == index
    assert 1.9 <= time.monotonic() - start < 2.0 * (1 + 1 / 16) + 0.5  # --wait-cap 2s


# ---------------------------------------------------------------------- decoding and errors


def test_strict_decoding(consul_cluster: SimCluster, client: Client) -> None:
    c = client(0)
    with pytest.raises(
        consul.base.BadRequest, match='Request decode failed: json: unknown field "Foo"'
    ):
        c.catalog.register("host1", "10.0.0.5", service={"Service": "web", "Foo": 1})
    # a catalog check has no top-level "http": python-consul2's Check.http does not fit here
    with pytest.raises(consul.base.BadRequest, match='unknown field "http"'):
        c.catalog.register(
            "host1",
            "10.0.0.5",
            service={"Service": "web"},
            check=consul.Check.http("http://x/", "10s"),
        )
    resp = raw(consul_cluster, 0, "PUT", "/v1/catalog/register", data=b"")
    assert (resp.status_code, resp.text) == (400, "Request decode failed: EOF")
    resp = raw(
        consul_cluster,
        0,
        "PUT",
        "/v1/catalog/register",
        json={"node": "h", "ADDRESS": "1.2.3.4", "service": {"SERVICE": "x", "port": 1}},
    )
    assert (resp.status_code, resp.text) == (200, "true")
    resp = raw(
        consul_cluster,
        0,
        "PUT",
        "/v1/catalog/register",
        json={"Node": "h", "Address": "1.2.3.4", "Service": {"Service": "x", "Port": "1"}},
    )
    assert resp.status_code == 400
    assert "cannot unmarshal string" in resp.text


@pytest.mark.parametrize(
    ("body", "text"),
    [
        ({"Address": "1.2.3.4"}, "Must provide node"),
        ({"Node": "h"}, "Must provide address if SkipNodeUpdate is not set"),
        (
            {"Node": "h", "Address": "a", "Service": {"ID": "x"}},
            "Must provide service name (Service.Service) when service ID is provided",
        ),
        (
            {"Node": "h", "Address": "a", "Service": {"Service": "x", "Address": "0.0.0.0"}},
            "Invalid service address",
        ),
        (
            {"Node": "h", "Address": "a", "Service": {"Service": "x", "Meta": {"a.b": "1"}}},
            "Invalid Service Meta for node h and serviceID x: Couldn't load metadata "
            "pair('a.b', '1'): Key contains invalid characters",
        ),
        (
            {"Node": "h", "Address": "a", "Service": {"Service": "x", "Meta": {"consul-x": "1"}}},
            "Invalid Service Meta for node h and serviceID x: Couldn't load metadata "
            "pair('consul-x', '1'): Key prefix 'consul-' is reserved for internal use",
        ),
    ],
)
def test_register_errors_and_follower_prefix(
    consul_cluster: SimCluster, body: Dict[str, Any], text: str
) -> None:
    leader = raw(consul_cluster, 0, "PUT", "/v1/catalog/register", json=body)
    assert (leader.status_code, leader.text) == (500, text)
    follower = raw(consul_cluster, 1, "PUT", "/v1/catalog/register", json=body)
    assert (follower.status_code, follower.text) == (500, f"rpc error making call: {text}")


def test_check_for_unknown_service_fails(consul_cluster: SimCluster, client: Client) -> None:
    register_web(client(0))
    with pytest.raises(
        consul.ConsulException, match='failed inserting check on node "host1": Missing service'
    ):
        client(0).catalog.register(
            "host1", "10.0.0.5", check={"CheckID": "c", "Name": "c", "ServiceID": "nope"}
        )


def test_http_level_errors(consul_cluster: SimCluster) -> None:
    resp = raw(consul_cluster, 0, "GET", "/v1/catalog/register")
    assert (resp.status_code, resp.text) == (405, "method GET not allowed")
    assert resp.headers["Allow"] == "OPTIONS,PUT"
    assert raw(consul_cluster, 0, "GET", "/v1/agent/check/pass/x").status_code == 405
    resp = raw(consul_cluster, 0, "GET", "/v1/nope")
    assert (resp.status_code, resp.text) == (
        404,
        "Invalid URL path: not a recognized HTTP API endpoint",
    )
    for query, text in [
        ("?index=1&wait=soon", "Invalid wait time"),
        ("?index=x", "Invalid index"),
        ("?stale&consistent", "Cannot specify ?stale with ?consistent, conflicting semantics."),
    ]:
        resp = raw(consul_cluster, 0, "GET", "/v1/catalog/services" + query)
        assert (resp.status_code, resp.text) == (400, text)
    assert raw(consul_cluster, 0, "GET", "/v1/catalog/service/").text == "Missing service name"


def test_read_headers(consul_cluster: SimCluster) -> None:
    resp = raw(consul_cluster, 1, "GET", "/v1/health/service/consul?stale")
    assert resp.headers["X-Consul-KnownLeader"] == "true"
    assert resp.headers["X-Consul-Effective-Consistency"] == "stale"
    assert int(resp.headers["X-Consul-Index"]) >= 1
    assert resp.headers["X-Consul-LastContact"].isdigit()
    assert resp.headers["Content-Type"] == "application/json"
    assert (
        raw(consul_cluster, 1, "GET", "/v1/catalog/services?consistent").headers[
            "X-Consul-Effective-Consistency"
        ]
        == "consistent"
    )


# ---------------------------------------------------------------------- agent endpoints


def test_agent_self(consul_cluster: SimCluster, client: Client) -> None:
    me = client(2).agent.self()
    assert me["Config"]["Datacenter"] == "dc1"
    assert me["Config"]["NodeName"] == "consul-server-3"


def test_agent_registration_belongs_to_that_server(
    consul_cluster: SimCluster, client: Client
) -> None:
    b = client(1)
    assert b.agent.service.register(
        "redis",
        service_id="redis-1",
        address="10.0.0.7",
        port=9121,
        tags=["x"],
        meta={"managed-by": "regagent"},
        check=consul.Check.ttl("30s"),
    )
    assert set(b.agent.services()) == {"redis-1"}
    assert b.agent.services()["redis-1"]["Meta"] == {"managed-by": "regagent"}
    assert client(0).agent.services() == {}
    assert b.agent.checks()["service:redis-1"]["Status"] == "critical"

    _, entries = client(0).health.service("redis")
    assert [e["Node"]["Node"] for e in entries] == ["consul-server-2"]
    assert {ch["CheckID"] for ch in entries[0]["Checks"]} == {"serfHealth", "service:redis-1"}

    for call, status in [
        (b.agent.check.ttl_pass, "passing"),
        (b.agent.check.ttl_warn, "warning"),
        (b.agent.check.ttl_fail, "critical"),
        (b.agent.check.ttl_pass, "passing"),
    ]:
        assert call("service:redis-1", notes=f"now {status}")
        assert b.agent.checks()["service:redis-1"]["Status"] == status
    _, checks = client(2).health.checks("redis")
    assert (checks[0]["Status"], checks[0]["Output"]) == ("passing", "now passing")
    resp = raw(
        consul_cluster,
        1,
        "PUT",
        "/v1/agent/check/update/service:redis-1",
        json={"Status": "warning", "Output": "slow"},
    )
    assert (resp.status_code, resp.text) == (200, "")
    _, checks = client(2).health.checks("redis")
    assert (checks[0]["Status"], checks[0]["Output"]) == ("warning", "slow")

    # the same ID through another server is a second instance, on that server's node
    client(2).agent.service.register("redis", service_id="redis-1", address="10.0.0.7", port=9121)
    nodes = [e["Node"]["Node"] for e in client(0).health.service("redis")[1]]
    assert nodes == ["consul-server-2", "consul-server-3"]

    assert b.agent.service.deregister("redis-1")
    assert b.agent.service.deregister("redis-1") is False  # 404 for an unknown ID
    nodes = [e["Node"]["Node"] for e in client(0).health.service("redis")[1]]
    assert nodes == ["consul-server-3"]


def test_agent_state_survives_restart_and_turns_critical_meanwhile(
    consul_cluster: SimCluster, client: Client
) -> None:
    client(1).agent.service.register(
        "redis", service_id="redis-1", port=9121, check=consul.Check.ttl("30s")
    )
    client(1).agent.check.ttl_pass("service:redis-1")
    assert client(0).health.service("redis", passing=True)[1]
    consul_cluster.stop_server(1)
    # serfHealth of the dead server's node turns every service on it critical
    assert client(0).health.service("redis", passing=True)[1] == []
    assert len(client(0).health.service("redis")[1]) == 1
    consul_cluster.start_server(1)
    assert set(client(1).agent.services()) == {"redis-1"}
    assert client(0).health.service("redis", passing=True)[1]


def test_refused_write_still_consumes_a_raft_index(consul_cluster: SimCluster) -> None:
    raft = consul_cluster.stats()["raft_index"]
    resp = raw(
        consul_cluster,
        0,
        "PUT",
        "/v1/catalog/register",
        json={"Node": "h", "Address": "a", "Service": {"Service": "x", "Meta": {"": "1"}}},
    )
    assert resp.status_code == 500
    stats = consul_cluster.stats()
    assert stats["raft_index"] == raft + 1
    assert stats["indexes"]["tables"]["nodes"] < stats["raft_index"]  # nothing was stored


def test_agent_errors(consul_cluster: SimCluster, client: Client) -> None:
    resp = raw(consul_cluster, 0, "PUT", "/v1/agent/service/deregister/nope")
    assert (resp.status_code, resp.text) == (
        404,
        'Unknown service ID "nope". Ensure that the service ID is passed, not the service name.',
    )
    resp = raw(consul_cluster, 0, "PUT", "/v1/agent/check/pass/nope")
    assert resp.status_code == 404
    resp = raw(consul_cluster, 0, "PUT", "/v1/agent/service/register", json={"Port": 1})
    assert (resp.status_code, resp.text) == (400, "Missing service name")
    resp = raw(
        consul_cluster,
        0,
        "PUT",
        "/v1/agent/service/register",
        json={"Name": "x", "Check": {"HTTP": "http://x/"}},
    )
    assert (resp.status_code, resp.text) == (
        400,
        "Invalid check: Interval must be > 0 for Script, HTTP, H2PING, TCP, UDP or "
        "OSService checks",
    )
    client(0).agent.service.register("web", check=consul.Check.http("http://x/", "10s"))
    resp = raw(consul_cluster, 0, "PUT", "/v1/agent/check/pass/service:web")
    assert (resp.status_code, resp.text) == (
        500,
        'CheckID "service:web" does not have associated TTL',
    )
    resp = raw(
        consul_cluster, 0, "PUT", "/v1/agent/check/update/service:web", json={"Status": "ok"}
    )
    assert (resp.status_code, resp.text) == (400, "Invalid check status: 'ok'")


def test_agent_ttl_expires(consul_cluster: SimCluster, client: Client) -> None:
    a = client(0)
    a.agent.service.register("job", check=consul.Check.ttl("1s"))
    a.agent.check.ttl_pass("service:job", notes="fine")
    assert a.agent.checks()["service:job"]["Status"] == "passing"
    deadline = time.monotonic() + 5
    while a.agent.checks()["service:job"]["Status"] != "critical":
        assert time.monotonic() < deadline, "TTL never expired"
        time.sleep(0.1)
    assert a.agent.checks()["service:job"]["Output"] == (
        "TTL expired (last output before timeout follows): fine"
    )


def test_anti_entropy_removes_foreign_entries_on_agent_node(
    consul_cluster: SimCluster, client: Client
) -> None:
    c = client(0)
    c.catalog.register(
        "consul-server-2", "127.0.0.1", service={"Service": "intruder"}, skipnodeupdate=True
    )
    assert c.catalog.service("intruder")[1]
    deadline = time.monotonic() + 5
    while c.catalog.service("intruder")[1]:
        assert time.monotonic() < deadline, "anti-entropy never removed the foreign service"
        time.sleep(0.1)


# ---------------------------------------------------------------------- faults


def test_stopped_server_refuses_and_comes_back(consul_cluster: SimCluster, client: Client) -> None:
    consul_cluster.stop_server(2)
    with pytest.raises(requests.exceptions.ConnectionError):
        client(2).status.leader()
    assert register_web(client(1))
    _, entries = client(0).health.service("consul")
    serf = {e["Node"]["Node"]: e["Checks"][0] for e in entries}
    assert serf["consul-server-3"]["Status"] == "critical"
    assert serf["consul-server-3"]["Output"] == "Agent not live or unreachable"

    consul_cluster.start_server(2)
    assert client(2).catalog.service("web")[1]  # same port, replicated data
    _, entries = client(2).health.service("consul", passing=True)
    assert len(entries) == 3


def test_blackholed_server_accepts_but_never_answers(consul_cluster: SimCluster) -> None:
    consul_cluster.blackhole(1)
    host, port = consul_cluster.host_port(1)
    with socket.create_connection((host, port), timeout=1):
        pass  # the TCP handshake succeeds
    with pytest.raises(requests.exceptions.ReadTimeout):
        raw(consul_cluster, 1, "GET", "/v1/status/leader", timeout=0.5)
    consul_cluster.blackhole(1, on=False)
    assert raw(consul_cluster, 1, "GET", "/v1/status/leader").status_code == 200


def test_slow_server_delays_answers(consul_cluster: SimCluster) -> None:
    consul_cluster.slow(0, 0.4)
    start = time.monotonic()
    assert raw(consul_cluster, 0, "GET", "/v1/status/leader").status_code == 200
    assert time.monotonic() - start >= 0.4
    consul_cluster.slow(0, 0)
    start = time.monotonic()
    raw(consul_cluster, 0, "GET", "/v1/status/leader")
    assert time.monotonic() - start < 0.3


def test_drop_leader_elects_another(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CONSUL_HTTP_ADDR", raising=False)
    # own cluster: an election delay well above the RPC hold, so the leaderless window is
    # observable even on a loaded machine
    with SimCluster(election_delay="1.5s", rpc_hold="0.2s") as cluster:

        def c(i: int) -> Any:
            host, port = cluster.host_port(i)
            return consul.Consul(host=host, port=port, timeout=10)

        assert cluster.drop_leader() == 0
        assert c(1).status.leader() == ""
        start = time.monotonic()
        with pytest.raises(consul.ConsulException, match="500 No cluster leader"):
            register_web(c(1))
        assert time.monotonic() - start >= 0.2  # held for a leader first
        new = cluster.wait_for_leader(timeout=5)
        assert new != 0  # the dropped leader sits the election out
        assert c(0).status.leader() == cluster.addresses[new]
        assert register_web(c(0))


def test_quorum_loss_fails_writes_but_serves_stale_reads(
    consul_cluster: SimCluster, client: Client
) -> None:
    register_web(client(0))
    consul_cluster.stop_server(0)
    consul_cluster.stop_server(1)
    c = client(2)
    start = time.monotonic()
    with pytest.raises(consul.ConsulException, match="500 No cluster leader"):
        register_web(c)
    assert time.monotonic() - start >= 0.2  # waited rpc-hold for a leader first
    with pytest.raises(consul.ConsulException, match="500 No cluster leader"):
        c.catalog.services()
    assert c.status.leader() == ""
    resp = raw(consul_cluster, 2, "GET", "/v1/health/service/web?stale")
    assert resp.status_code == 200
    assert resp.headers["X-Consul-KnownLeader"] == "false"
    assert int(resp.headers["X-Consul-LastContact"]) > 0
    assert [e["Service"]["ID"] for e in resp.json()] == ["web-1"]
    assert client(2, consistency="stale").catalog.service("web")[1]

    consul_cluster.start_server(1)
    assert consul_cluster.wait_for_leader(timeout=5) in (1, 2)
    assert register_web(client(1))


def test_stats_count_requests_per_server_and_endpoint(
    consul_cluster: SimCluster, client: Client
) -> None:
    consul_cluster.reset_stats()
    register_web(client(1))
    client(2).health.service("web")
    client(2).health.service("web")
    stats = consul_cluster.stats()
    assert stats["servers"][1]["endpoints"] == {"PUT /v1/catalog/register": 1}
    assert stats["servers"][2]["endpoints"] == {"GET /v1/health/service/:arg": 2}
    assert stats["servers"][0]["requests"] == 0
    assert stats["requests"] == 3
    assert (stats["writes_applied"], stats["writes_changed"]) == (1, 1)
    assert stats["leader"] == 0
    assert stats["indexes"]["service"]["web"] == stats["raft_index"]
    assert set(stats["indexes"]["tables"]) == {"nodes", "services", "checks"}


# ---------------------------------------------------------------------- ACLs

ACL = {
    "default_policy": "deny",
    "tokens": {
        "writer": {
            "AccessorID": "11111111-2222-3333-4444-555555555555",
            "node_prefix": {"": "write"},
            "service_prefix": {"": "write"},
            "agent_prefix": {"": "read"},
        },
        "svc-only": {
            "AccessorID": "aaaaaaaa-2222-3333-4444-555555555555",
            "service_prefix": {"": "write"},
            "node_prefix": {"": "read"},
        },
        "web-reader": {
            "AccessorID": "bbbbbbbb-2222-3333-4444-555555555555",
            "service": {"web": "read"},
            "node_prefix": {"": "read"},
        },
    },
}


def test_acl_denials(consul_cluster: SimCluster, client: Client) -> None:
    consul_cluster.set_acl(ACL)
    with pytest.raises(consul.ACLPermissionDenied) as denied:
        register_web(client(0, token="svc-only"))
    assert str(denied.value) == (
        "Permission denied: token with AccessorID 'aaaaaaaa-2222-3333-4444-555555555555' lacks "
        "permission 'node:write' on \"host1\""
    )
    resp = raw(
        consul_cluster,
        0,
        "PUT",
        "/v1/catalog/register",
        json={"Node": "host1", "Address": "1.2.3.4"},
    )
    assert (resp.status_code, resp.text) == (
        403,
        "Permission denied: anonymous token lacks permission 'node:write' on \"host1\". The "
        "anonymous token is used implicitly when a request does not specify a token.",
    )
    resp = raw(
        consul_cluster,
        1,
        "PUT",
        "/v1/catalog/register",
        json={"Node": "host1", "Address": "1.2.3.4"},
        headers={"X-Consul-Token": "nope"},
    )
    assert (resp.status_code, resp.text) == (403, "rpc error making call: ACL not found")
    resp = raw(consul_cluster, 0, "GET", "/v1/agent/self", headers={"X-Consul-Token": "nope"})
    assert (resp.status_code, resp.text) == (403, "ACL not found")

    assert register_web(client(0, token="writer"))
    # an unchanged node needs only service:write (vetRegisterWithACL)
    assert register_web(client(1, token="svc-only"), service={"Port": 9200})
    with pytest.raises(consul.ACLPermissionDenied):
        client(0, token="svc-only").agent.self()
    assert client(0, token="writer").agent.self()["Config"]["Datacenter"] == "dc1"


def test_acl_filters_reads_silently(consul_cluster: SimCluster, client: Client) -> None:
    consul_cluster.set_acl(ACL)
    register_web(client(0, token="writer"))
    client(0, token="writer").catalog.register(
        "host2", "10.0.0.6", service={"Service": "db", "Port": 5432}
    )
    assert set(client(0, token="writer").catalog.services()[1]) == {"consul", "web", "db"}
    assert set(client(0, token="web-reader").catalog.services()[1]) == {"web"}
    assert client(0, token="web-reader").health.service("db")[1] == []
    resp = raw(
        consul_cluster,
        0,
        "GET",
        "/v1/catalog/services",
        headers={"Authorization": "Bearer web-reader"},
    )
    assert resp.headers["X-Consul-Results-Filtered-By-ACLs"] == "true"
    assert resp.headers["X-Consul-Default-ACL-Policy"] == "deny"
    assert client(0).catalog.services()[1] == {}  # anonymous reads nothing


def test_other_loopback_address() -> None:
    with SimCluster(servers=1, bind="127.0.0.2") as cluster:
        assert cluster.addresses[0].startswith("127.0.0.2:")
        assert cluster.leader() == 0  # a single server is its own quorum
        node = cluster.catalog_node_services("consul-server-1")
        assert node["Node"]["Address"] == "127.0.0.2"


def test_acl_file_at_start(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CONSUL_HTTP_ADDR", raising=False)
    monkeypatch.delenv("CONSUL_HTTP_TOKEN", raising=False)
    with SimCluster(acl=ACL) as cluster:
        host, port = cluster.host_port(0)
        with pytest.raises(consul.ACLPermissionDenied):
            consul.Consul(host=host, port=port).catalog.register("h", "1.2.3.4")
        assert consul.Consul(host=host, port=port, token="writer").catalog.register("h", "1.2.3.4")


# ---------------------------------------------------------------------- TLS


def _tls_cluster(files: TLSFiles, **kw: Any) -> SimCluster:
    return SimCluster(
        servers=2,
        tls_cert=str(files.server_cert),
        tls_key=str(files.server_key),
        tls_ca=str(files.ca),
        **kw,
    )


def test_tls_servers_speak_https_and_keep_their_faults(tls_files: TLSFiles) -> None:
    with _tls_cluster(tls_files) as cluster:
        assert cluster.url(0).startswith("https://127.0.0.1:")
        assert cluster.get(0, "/v1/status/leader") in cluster.addresses
        host, port = cluster.host_port(0)
        api = consul.Consul(host=host, port=port, scheme="https", verify=str(tls_files.ca))
        assert api.catalog.register("h", "10.0.0.1", service={"Service": "web", "Port": 80})
        assert "web" in cluster.get(1, "/v1/catalog/services?stale")

        https = {"verify": str(tls_files.ca), "timeout": 10}
        cluster.blackhole(0)
        with pytest.raises(requests.exceptions.ReadTimeout):  # handshake done, never answered
            requests.get(cluster.url(0) + "/v1/status/leader", **{**https, "timeout": 0.5})
        cluster.blackhole(0, on=False)
        cluster.slow(0, 0.4)
        start = time.monotonic()
        assert requests.get(cluster.url(0) + "/v1/status/leader", **https).status_code == 200
        assert time.monotonic() - start >= 0.4
        cluster.slow(0, 0)
        cluster.stop_server(1)
        with pytest.raises(requests.exceptions.ConnectionError):
            requests.get(cluster.url(1) + "/v1/status/leader", **https)
        cluster.start_server(1)
        assert requests.get(cluster.url(1) + "/v1/status/leader", **https).status_code == 200


def test_tls_port_answers_plain_http_like_go(tls_files: TLSFiles) -> None:
    with _tls_cluster(tls_files) as cluster:
        plain = requests.get(f"http://{cluster.addresses[0]}/v1/status/leader", timeout=10)
        assert plain.status_code == 400
        assert plain.text == "Client sent an HTTP request to an HTTPS server.\n"
        assert cluster.stats()["requests"] == 0  # the control port stays plain HTTP


def test_tls_client_ca_requires_a_client_certificate(tls_files: TLSFiles) -> None:
    client_cert = (str(tls_files.client_cert), str(tls_files.client_key))
    with _tls_cluster(
        tls_files,
        tls_client_ca=str(tls_files.ca),
        tls_client_cert=client_cert[0],
        tls_client_key=client_cert[1],
    ) as cluster:
        url = cluster.url(0) + "/v1/status/leader"
        with pytest.raises(requests.exceptions.SSLError, match="certificate required"):
            requests.get(url, verify=str(tls_files.ca), timeout=10)
        answer = requests.get(url, verify=str(tls_files.ca), cert=client_cert, timeout=10)
        assert answer.status_code == 200
        assert cluster.get(1, "/v1/status/leader") == answer.json()  # get() presents it too


def test_tls_flags_are_checked_at_start(tls_files: TLSFiles) -> None:
    with pytest.raises(SimClusterError, match="--tls-cert and --tls-key go together"):
        SimCluster(servers=1, tls_cert=str(tls_files.server_cert)).start()
    with pytest.raises(SimClusterError, match="cannot load the TLS files"):
        SimCluster(
            servers=1, tls_cert=str(tls_files.server_cert), tls_key=str(tls_files.client_key)
        ).start()


def test_percent_encoded_paths_are_decoded_as_consul_does(consul_cluster: SimCluster) -> None:
    """Go's router and Consul's handlers read the decoded URL path: a node name that must be
    quoted in a URL (regagent quotes every name) reads back as itself."""
    host, port = consul_cluster.host_port(0)
    base = f"http://{host}:{port}"
    body = {
        "Node": "rack 7/web01",
        "Address": "10.0.0.9",
        "Service": {"Service": "web", "Port": 80},
    }
    assert requests.put(f"{base}/v1/catalog/register", json=body, timeout=5).status_code == 200
    quoted = requests.get(f"{base}/v1/catalog/node/rack%207%2Fweb01?stale", timeout=5)
    assert quoted.status_code == 200
    assert quoted.json()["Node"]["Node"] == "rack 7/web01"
    checks = requests.get(f"{base}/v1/health/node/rack%207%2Fweb01?stale", timeout=5).json()
    assert checks == []
    assert requests.get(f"{base}/v1/catalog/node/rack%207?stale", timeout=5).json() is None
