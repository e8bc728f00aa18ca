"""Conformance of the emulator's ``PUT /v1/txn`` (consul-api.md section 9), over real HTTP.

Node, Service and Check operations: atomic and in order at one Raft index, 409 listing every
failed operation with nothing applied, no-op sets that move no index and wake no watcher,
read-only versus write transactions, limits, ACLs, faults and the switch that makes a server
refuse /v1/txn like an old Consul.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Dict, List, Tuple

import consul
import pytest
import requests

from consulsim import SimCluster

NODE = {"Node": "host1", "Address": "10.0.0.5", "Meta": {"external-node": "true"}}
WEB = {"ID": "web-1", "Service": "web", "Tags": ["b", "a"], "Port": 9100, "Meta": {"v": "1"}}
WEB_CHECK = {
    "Node": "host1",
    "CheckID": "web-1:up",
    "Name": "up",
    "ServiceID": "web-1",
    "ServiceName": "web",
    "Status": "passing",
    "Output": "ok",
}


def node_op(verb: str, **node: Any) -> Dict[str, Any]:
    return {"Node": {"Verb": verb, "Node": {**NODE, **node}}}


def service_op(verb: str, node: str = "host1", **service: Any) -> Dict[str, Any]:
    return {"Service": {"Verb": verb, "Node": node, "Service": {**WEB, **service}}}


def check_op(verb: str, **check: Any) -> Dict[str, Any]:
    return {"Check": {"Verb": verb, "Check": {**WEB_CHECK, **check}}}


REGISTER = [node_op("set"), service_op("set"), check_op("set")]


def txn(
    cluster: SimCluster,
    ops: Any,
    server: int = 0,
    query: str = "",
    token: str = "",
    **kw: Any,
) -> requests.Response:
    """PUT /v1/txn on ``server``; ``ops`` is JSON-encoded unless ``data=`` is given."""
    headers = {"X-Consul-Token": token} if token else {}
    if "data" not in kw:
        kw["json"] = ops
    kw.setdefault("timeout", 10)
    return requests.put(f"{cluster.url(server)}/v1/txn{query}", headers=headers, **kw)


def results(resp: requests.Response) -> List[Dict[str, Any]]:
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["Errors"] is None
    out: List[Dict[str, Any]] = body["Results"]
    return out


def errors(resp: requests.Response) -> List[Tuple[int, str]]:
    assert resp.status_code == 409, resp.text
    assert resp.headers["Content-Type"] == "application/json"
    body = resp.json()
    assert body["Results"] is None
    return [(e["OpIndex"], e["What"]) for e in body["Errors"]]


def read_indexes(cluster: SimCluster) -> Tuple[int, ...]:
    """X-Consul-Index of the reads whose index rules regagent relies on."""
    out = []
    for path in (
        "/v1/catalog/services",
        "/v1/catalog/service/web",
        "/v1/health/service/web",
        "/v1/health/node/host1",
    ):
        resp = requests.get(cluster.url(0) + path, timeout=10)
        out.append(int(resp.headers["X-Consul-Index"]))
    return tuple(out)


# ---------------------------------------------------------------------- writes


def test_node_service_and_check_in_order_at_one_index(consul_cluster: SimCluster) -> None:
    consul_cluster.reset_stats()
    out = results(txn(consul_cluster, REGISTER, server=1))  # a follower forwards it
    assert [next(iter(r)) for r in out] == ["Node", "Service", "Check"]
    stats = consul_cluster.stats()
    raft = stats["raft_index"]
    assert {r[k]["ModifyIndex"] for r in out for k in r} == {raft}
    assert {r[k]["CreateIndex"] for r in out for k in r} == {raft}
    assert (stats["writes_applied"], stats["writes_changed"]) == (1, 1)  # one write
    assert stats["requests"] == 1
    assert stats["endpoints"] == {"PUT /v1/txn": 1}
    assert stats["txn"] == {"read": 0, "write": 1, "conflicts": 0, "ops": 3}
    assert read_indexes(consul_cluster) == (raft,) * 4

    node, service, check = (out[0]["Node"], out[1]["Service"], out[2]["Check"])
    assert (node["Node"], node["Address"], node["Datacenter"]) == ("host1", "10.0.0.5", "dc1")
    assert node["Meta"] == {"external-node": "true"}
    assert (service["ID"], service["Service"], service["Port"]) == ("web-1", "web", 9100)
    assert service["Weights"] == {"Passing": 1, "Warning": 1}  # omitted: the default
    assert (check["Status"], check["ServiceName"], check["ServiceTags"]) == (
        "passing",
        "web",
        ["b", "a"],
    )
    assert check["Type"] == ""  # a txn check set does not derive Type
    entries = consul_cluster.get(2, "/v1/health/service/web")
    assert [c["CheckID"] for c in entries[0]["Checks"]] == ["web-1:up"]


def test_python_consul2_round_trip(consul_cluster: SimCluster) -> None:
    host, port = consul_cluster.host_port(0)
    c = consul.Consul(host=host, port=port, timeout=10)
    body = c.txn.put(REGISTER)
    assert [next(iter(r)) for r in body["Results"]] == ["Node", "Service", "Check"]
    assert c.catalog.service("web")[1][0]["ServiceID"] == "web-1"
    with pytest.raises(consul.base.ClientError, match=r"^409 .*Missing node registration"):
        c.txn.put([service_op("set", node="nowhere")])


def test_results_skip_deletes_and_keep_nil_tags_and_meta(consul_cluster: SimCluster) -> None:
    bare = {"ID": "db-1", "Service": "db"}
    out = results(
        txn(
            consul_cluster,
            [
                node_op("set"),
                {"Service": {"Verb": "set", "Node": "host1", "Service": bare}},
                service_op("set", ID="web-2", Tags=[], Meta={}),
                service_op("delete", ID="web-2"),
                {"Service": {"Verb": "get", "Node": "host1", "Service": bare}},
            ],
        )
    )
    assert [next(iter(r)) for r in out] == ["Node", "Service", "Service", "Service"]
    assert (out[1]["Service"]["Tags"], out[1]["Service"]["Meta"]) == (None, None)
    assert (out[2]["Service"]["Tags"], out[2]["Service"]["Meta"]) == ([], {})
    assert out[3]["Service"]["ID"] == "db-1"
    assert results(txn(consul_cluster, [service_op("delete", ID="db-1")])) == []


def test_later_ops_see_earlier_ones(consul_cluster: SimCluster) -> None:
    out = results(
        txn(
            consul_cluster,
            [
                *REGISTER,
                check_op("set", Status="critical", Output="down"),
                check_op("get"),
                service_op("delete"),
                {"Node": {"Verb": "get", "Node": {"Node": "host1"}}},
            ],
        )
    )
    assert out[3]["Check"]["Status"] == "critical"
    assert out[3]["Check"]["ModifyIndex"] == out[2]["Check"]["ModifyIndex"]  # one index
    assert out[4]["Check"]["Output"] == "down"
    assert consul_cluster.get(0, "/v1/catalog/service/web") == []
    assert consul_cluster.get(0, "/v1/health/node/host1") == []  # its check went with it


def test_any_failure_applies_nothing_and_lists_every_failed_op(
    consul_cluster: SimCluster,
) -> None:
    before = consul_cluster.stats()
    resp = txn(
        consul_cluster,
        [
            node_op("set", Node="host2"),
            service_op("set", node="host3"),  # service and check sets never create nodes
            check_op("set", Node="host2", ServiceID="nope"),
            {"Check": {"Verb": "set", "Check": {"Node": "host3", "CheckID": "c"}}},
            service_op("sett"),
        ],
    )
    assert errors(resp) == [
        (1, "Missing node registration"),
        (2, "Missing service registration"),
        (3, "Missing node registration"),
        (4, 'unknown Service verb "sett"'),
    ]
    after = consul_cluster.stats()
    assert after["raft_index"] == before["raft_index"] + 1  # the FSM ran, then aborted
    assert after["indexes"] == {**before["indexes"], "raft": after["raft_index"]}
    assert after["writes_changed"] == before["writes_changed"]
    assert consul_cluster.get(0, "/v1/catalog/node/host2") is None
    assert after["txn"]["conflicts"] == 1


def test_validation_errors_are_txn_errors_and_skip_raft(consul_cluster: SimCluster) -> None:
    raft = consul_cluster.stats()["raft_index"]
    resp = txn(
        consul_cluster,
        [
            node_op("set", ID="not-a-uuid"),
            {"Node": {"Verb": "set", "Node": {"Address": "1.2.3.4"}}},
            service_op("delete", Service=""),  # the name is needed on every non-get op
            service_op("set", Address="0.0.0.0"),
        ],
        server=1,  # TxnErrors are a result, not an RPC error: no relay prefix
    )
    assert errors(resp) == [
        (0, "Bad node ID: uuid string is wrong length"),
        (1, "Must provide node"),
        (2, "Must provide service name (Service.Service) when service ID is provided"),
        (3, "Invalid service address"),
    ]
    assert consul_cluster.stats()["raft_index"] == raft  # pre-checks run before Raft

    results(txn(consul_cluster, [node_op("set")]))
    resp = txn(consul_cluster, [service_op("set", ID="x", Service="x", Meta={"a.b": "1"})])
    assert errors(resp) == [
        (
            0,
            "Invalid Service Meta for node host1 and serviceID x: Couldn't load metadata "
            "pair('a.b', '1'): Key contains invalid characters",
        )
    ]


def test_node_set_replaces_the_node(consul_cluster: SimCluster) -> None:
    results(txn(consul_cluster, REGISTER))
    out = results(txn(consul_cluster, [{"Node": {"Verb": "set", "Node": {"Node": "host1"}}}]))
    assert (out[0]["Node"]["Address"], out[0]["Node"]["Meta"]) == ("", None)
    assert consul_cluster.get(0, "/v1/catalog/node/host1")["Node"]["Meta"] is None
    assert consul_cluster.get(0, "/v1/catalog/service/web")  # its services stay


def test_check_set_defaults_status_and_takes_service_fields(consul_cluster: SimCluster) -> None:
    results(txn(consul_cluster, REGISTER[:2]))
    check = {"Node": "host1", "Name": "up", "ServiceID": "web-1", "ServiceName": "web"}
    out = results(txn(consul_cluster, [{"Check": {"Verb": "set", "Check": check}}]))
    row = out[0]["Check"]
    assert (row["CheckID"], row["Status"], row["ServiceTags"]) == ("up", "critical", ["b", "a"])


def test_cas_and_delete_cas(consul_cluster: SimCluster) -> None:
    created = results(txn(consul_cluster, [node_op("cas"), service_op("cas", ModifyIndex=0)]))
    index = created[1]["Service"]["ModifyIndex"]
    assert errors(txn(consul_cluster, [service_op("cas", ModifyIndex=0)])) == [
        (0, 'failed to set service "web-1" on node "host1", index is stale')
    ]
    assert errors(txn(consul_cluster, [node_op("cas", ModifyIndex=index + 7)])) == [
        (0, 'failed to set node "host1", index is stale')
    ]
    moved = results(txn(consul_cluster, [service_op("cas", ModifyIndex=index, Port=1)]))
    assert moved[0]["Service"]["ModifyIndex"] > index
    assert errors(
        txn(
            consul_cluster,
            [
                service_op("delete-cas", ModifyIndex=index),
                check_op("delete-cas", ModifyIndex=1),  # absent: stale too
                check_op("cas", ModifyIndex=3),
            ],
        )
    ) == [
        (0, 'failed to delete service "web-1" on node "host1", index is stale'),
        (1, 'failed to delete check "web-1:up" on node "host1", index is stale'),
        (2, 'failed to set check "web-1:up" on node "host1", index is stale'),
    ]
    current = moved[0]["Service"]["ModifyIndex"]
    assert results(txn(consul_cluster, [service_op("delete-cas", ModifyIndex=current)])) == []
    assert results(txn(consul_cluster, [service_op("delete"), check_op("delete")])) == []
    node = consul_cluster.get(0, "/v1/catalog/node/host1")["Node"]
    assert errors(txn(consul_cluster, [node_op("delete-cas", ModifyIndex=1)])) == [
        (0, 'failed to delete node "host1", index is stale')
    ]
    delete = node_op("delete-cas", ModifyIndex=node["ModifyIndex"])
    assert results(txn(consul_cluster, [delete])) == []
    assert consul_cluster.get(0, "/v1/catalog/node/host1") is None


def test_deleting_a_node_deletes_its_services_and_checks(consul_cluster: SimCluster) -> None:
    results(txn(consul_cluster, REGISTER))
    assert results(txn(consul_cluster, [node_op("delete")])) == []
    assert consul_cluster.get(0, "/v1/catalog/services") == {"consul": []}
    assert consul_cluster.get(0, "/v1/health/node/host1") == []
    assert results(txn(consul_cluster, [node_op("delete")])) == []  # absent: still fine


# ---------------------------------------------------------------------- index rules


def _register_through_catalog(cluster: SimCluster) -> None:
    host, port = cluster.host_port(0)
    c = consul.Consul(host=host, port=port, timeout=10)
    check = {k: v for k, v in WEB_CHECK.items() if k not in ("Node", "ServiceName")}
    assert c.catalog.register("host1", "10.0.0.5", service=WEB, check=check, node_meta=NODE["Meta"])


@pytest.mark.parametrize("first", ["catalog register", "txn"])
def test_noop_set_moves_no_index(consul_cluster: SimCluster, first: str) -> None:
    if first == "txn":
        results(txn(consul_cluster, REGISTER))
    else:
        _register_through_catalog(consul_cluster)
    before = read_indexes(consul_cluster)
    stored = consul_cluster.get(0, "/v1/catalog/service/web")[0]["ModifyIndex"]
    consul_cluster.reset_stats()

    out = results(txn(consul_cluster, REGISTER, server=2))

    stats = consul_cluster.stats()
    assert (stats["writes_applied"], stats["writes_changed"]) == (1, 0)
    assert read_indexes(consul_cluster) == before
    assert {r[k]["ModifyIndex"] for r in out for k in r} == {stored}  # the old indexes


def test_noop_txn_wakes_no_blocking_query(consul_cluster: SimCluster) -> None:
    results(txn(consul_cluster, REGISTER))
    index = read_indexes(consul_cluster)[2]
    answers: List[Tuple[int, float]] = []

    def watch(wait: str) -> None:
        start = time.monotonic()
        resp = requests.get(
            f"{consul_cluster.url(1)}/v1/health/service/web?index={index}&wait={wait}",
            timeout=10,
        )
        answers.append((int(resp.headers["X-Consul-Index"]), time.monotonic() - start))

    thread = threading.Thread(target=watch, args=("1s",))
    thread.start()
    time.sleep(0.2)
    results(txn(consul_cluster, REGISTER))
    thread.join(5)
    assert answers[0][0] == index and answers[0][1] >= 0.95  # slept to the timeout

    thread = threading.Thread(target=watch, args=("2s",))
    thread.start()
    time.sleep(0.2)
    results(txn(consul_cluster, [check_op("set", Status="warning")]))
    thread.join(5)
    assert answers[1][0] > index and answers[1][1] < 1.0


def test_txn_after_catalog_register_drops_lossy_fields(consul_cluster: SimCluster) -> None:
    """Service ops carry no TaggedAddresses: re-sending a service that had them is a change."""
    host, port = consul_cluster.host_port(0)
    c = consul.Consul(host=host, port=port, timeout=10)
    tagged = {**WEB, "TaggedAddresses": {"lan": {"Address": "10.0.0.5", "Port": 9100}}}
    c.catalog.register("host1", "10.0.0.5", service=tagged, node_meta=NODE["Meta"])
    stored = c.catalog.service("web")[1][0]["ModifyIndex"]
    out = results(txn(consul_cluster, [service_op("set")]))
    assert out[0]["Service"]["ModifyIndex"] > stored
    assert "TaggedAddresses" not in out[0]["Service"]


# ---------------------------------------------------------------------- read-only txn


def test_read_only_txn_is_served_without_raft(consul_cluster: SimCluster) -> None:
    results(txn(consul_cluster, REGISTER))
    raft = consul_cluster.stats()["raft_index"]
    gets = [
        {"Node": {"Verb": "get", "Node": {"Node": "host1"}}},
        service_op("get"),
        check_op("get"),
    ]
    for query in ("", "?stale", "?consistent"):
        resp = txn(consul_cluster, gets, server=1, query=query)
        body = resp.json()
        assert [next(iter(r)) for r in results(resp)] == ["Node", "Service", "Check"]
        assert resp.headers["X-Consul-KnownLeader"] == "true"
        assert resp.headers["X-Consul-LastContact"] == "0"
        assert "X-Consul-Index" not in resp.headers
        assert "X-Consul-Effective-Consistency" not in resp.headers
        # TxnReadResponse embeds QueryMeta: its fields sit next to Results and Errors
        assert (body["Index"], body["KnownLeader"], body["LastContact"]) == (0, True, 0)
        assert body["ResultsFilteredByACLs"] is False
    assert consul_cluster.stats()["raft_index"] == raft
    assert consul_cluster.stats()["txn"]["read"] == 3

    resp = txn(consul_cluster, [service_op("get", ID="nope")], query="?stale")
    assert errors(resp) == [(0, 'service "nope" on node "host1" doesn\'t exist')]
    assert resp.headers["X-Consul-KnownLeader"] == "true"
    resp = txn(consul_cluster, gets, query="?stale&consistent")
    assert (resp.status_code, resp.text) == (
        400,
        "Cannot specify ?stale with ?consistent, conflicting semantics.",
    )
    assert results(txn(consul_cluster, [{}, {"Node": None}])) == []  # no op named: dropped


def test_write_txn_sets_no_read_headers(consul_cluster: SimCluster) -> None:
    resp = txn(consul_cluster, REGISTER, server=1, query="?stale")
    assert resp.status_code == 200
    for header in ("X-Consul-Index", "X-Consul-KnownLeader", "X-Consul-LastContact"):
        assert header not in resp.headers
    assert set(resp.json()) == {"Results", "Errors"}


# ---------------------------------------------------------------------- HTTP limits


def test_decoding_and_method_errors(consul_cluster: SimCluster) -> None:
    resp = txn(consul_cluster, [service_op("set", Foo=1)])
    assert (resp.status_code, resp.text) == (
        400,
        'Failed to parse body: json: unknown field "Foo"',
    )
    resp = txn(consul_cluster, None, data=b"{")
    assert (resp.status_code, resp.text) == (400, "Failed to parse body: unexpected EOF")
    resp = txn(consul_cluster, {"Node": {}})
    assert resp.status_code == 400
    assert "cannot unmarshal object into Go value of type api.TxnOps" in resp.text
    lenient = check_op("set", Definition={"HTTP": "http://x/", "Interval": "10s", "Foo": 1})
    assert results(txn(consul_cluster, [node_op("set"), service_op("set"), lenient]))
    resp = requests.get(consul_cluster.url(0) + "/v1/txn", timeout=10)
    assert (resp.status_code, resp.text) == (405, "method GET not allowed")
    assert resp.headers["Allow"] == "OPTIONS,PUT"


def test_operation_and_size_limits(consul_cluster: SimCluster) -> None:
    gets = [{"Node": {"Verb": "get", "Node": {"Node": "consul-server-1"}}}]
    assert len(results(txn(consul_cluster, gets * 128))) == 128
    resp = txn(consul_cluster, gets * 129)
    assert (resp.status_code, resp.text) == (
        413,
        "Transaction contains too many operations (129 > 128)",
    )
    consul_cluster.set_txn_max_ops(64)  # a Consul from 0.7 to 1.13
    assert consul_cluster.txn_config()["max_ops"] == 64
    resp = txn(consul_cluster, gets * 65)
    assert (resp.status_code, resp.text) == (
        413,
        "Transaction contains too many operations (65 > 64)",
    )
    assert len(results(txn(consul_cluster, gets * 64))) == 64

    big = [node_op("set", Meta={"k": "x" * 512})] * 1100
    resp = txn(consul_cluster, big)
    assert resp.status_code == 413
    assert resp.text.startswith("Request body(")
    assert "too large, max size: 524288 bytes. See https://www.consul.io/" in resp.text


def test_kv_operations_are_refused_clearly(consul_cluster: SimCluster) -> None:
    resp = txn(consul_cluster, [{"KV": {"Verb": "get", "Key": "k"}}, node_op("set")])
    assert errors(resp) == [(0, "consulsim: KV operations in /v1/txn are not emulated")]
    resp = txn(consul_cluster, [{"KV": {"Verb": "set", "Key": "k", "Vaule": "eA=="}}])
    assert resp.status_code == 400


# ---------------------------------------------------------------------- cluster behaviour


def test_no_leader_fails_writes_but_serves_stale_reads(consul_cluster: SimCluster) -> None:
    results(txn(consul_cluster, REGISTER))
    consul_cluster.stop_server(0)
    consul_cluster.stop_server(1)
    resp = txn(consul_cluster, REGISTER, server=2)
    assert (resp.status_code, resp.text) == (500, "No cluster leader")
    resp = txn(consul_cluster, [service_op("get")], server=2)
    assert (resp.status_code, resp.text) == (500, "No cluster leader")
    resp = txn(consul_cluster, [service_op("get")], server=2, query="?stale")
    assert results(resp)[0]["Service"]["ID"] == "web-1"
    assert resp.headers["X-Consul-KnownLeader"] == "false"
    assert int(resp.headers["X-Consul-LastContact"]) > 0
    assert resp.json()["LastContact"] == int(resp.headers["X-Consul-LastContact"]) * 1_000_000


def test_faults_apply_to_txn(consul_cluster: SimCluster) -> None:
    consul_cluster.blackhole(1)
    with pytest.raises(requests.exceptions.ReadTimeout):
        txn(consul_cluster, REGISTER, server=1, timeout=0.5)
    consul_cluster.blackhole(1, on=False)
    consul_cluster.slow(2, 0.4)
    start = time.monotonic()
    results(txn(consul_cluster, REGISTER, server=2))
    assert time.monotonic() - start >= 0.4
    consul_cluster.slow(2, 0)
    consul_cluster.stop_server(1)
    with pytest.raises(requests.exceptions.ConnectionError):
        txn(consul_cluster, REGISTER, server=1)


ACL = {
    "default_policy": "deny",
    "tokens": {
        "writer": {
            "AccessorID": "11111111-2222-3333-4444-555555555555",
            "node_prefix": {"": "write"},
            "service_prefix": {"": "write"},
        },
        "svc-only": {
            "AccessorID": "aaaaaaaa-2222-3333-4444-555555555555",
            "service_prefix": {"": "write"},
            "node_prefix": {"": "read"},
        },
        "db-reader": {
            "AccessorID": "bbbbbbbb-2222-3333-4444-555555555555",
            "service": {"db": "read"},
            "node_prefix": {"": "read"},
        },
    },
}


def test_acl_denials_are_txn_errors(consul_cluster: SimCluster) -> None:
    consul_cluster.set_acl(ACL)
    resp = txn(consul_cluster, REGISTER, token="svc-only")
    assert errors(resp) == [
        (
            0,
            "Permission denied: token with AccessorID 'aaaaaaaa-2222-3333-4444-555555555555' "
            "lacks permission 'node:write' on \"host1\"",
        )
    ]
    resp = txn(consul_cluster, [service_op("set")])
    assert errors(resp) == [
        (
            0,
            "Permission denied: anonymous token lacks permission 'service:write' on \"web\". "
            "The anonymous token is used implicitly when a request does not specify a token.",
        )
    ]
    resp = txn(consul_cluster, REGISTER, server=1, token="nope")
    assert (resp.status_code, resp.text) == (403, "rpc error making call: ACL not found")
    results(txn(consul_cluster, REGISTER, token="writer"))
    assert results(txn(consul_cluster, REGISTER[1:], token="svc-only"))  # node untouched

    # reads: no ACL error for gets, unreadable results are filtered out
    resp = txn(consul_cluster, [node_op("get"), service_op("get")], token="db-reader")
    assert [next(iter(r)) for r in results(resp)] == ["Node"]
    assert resp.json()["ResultsFilteredByACLs"] is True


def test_txn_switch_refuses_like_an_old_consul(consul_cluster: SimCluster) -> None:
    consul_cluster.reset_stats()
    consul_cluster.set_txn(False, server=1)
    resp = txn(consul_cluster, REGISTER, server=1)
    assert (resp.status_code, resp.text) == (404, "")
    assert requests.get(consul_cluster.url(1) + "/v1/txn", timeout=10).status_code == 404
    results(txn(consul_cluster, REGISTER, server=0))  # the others still serve it
    assert consul_cluster.stats()["servers"][1]["endpoints"] == {
        "GET /v1/txn": 1,
        "PUT /v1/txn": 1,
    }
    assert consul_cluster.stats()["servers"][1]["txn_refusal"] == 404

    consul_cluster.set_txn(False, status=403)  # a proxy that blocks it, on every server
    assert consul_cluster.txn_config()["refusal"] == [403, 403, 403]
    assert txn(consul_cluster, REGISTER, server=2).status_code == 403
    consul_cluster.set_txn(True)
    assert results(txn(consul_cluster, REGISTER, server=1))


def test_txn_switch_and_limit_at_start() -> None:
    with SimCluster(servers=1, txn=False, txn_max_ops=64) as cluster:
        assert cluster.txn_config() == {"max_ops": 64, "max_req_len": 524288, "refusal": [404]}
        assert txn(cluster, REGISTER).status_code == 404
