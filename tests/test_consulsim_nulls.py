"""Null versus empty maps and lists on the emulator's read endpoints (consul-api.md section 10).

Raft keeps nil as nil and empty as empty; only ``ServiceNode.PartialClone`` (catalog/service),
the handlers' "Use empty list instead of nil" rewrites and nothing else fill in empties. One
test per row of that table, each against a service stored without Meta and Tags (nil) and
one stored with ``{}``/``[]`` (empty), over real HTTP.
"""

from __future__ import annotations

from typing import Any, Dict

import pytest
import requests

from consulsim import SimCluster

BARE = {"Node": "bare", "Address": "10.0.0.1", "Service": {"ID": "web-1", "Service": "web"}}
EMPTY = {
    "Node": "empty",
    "Address": "10.0.0.2",
    "NodeMeta": {},
    "TaggedAddresses": {},
    "Service": {"ID": "web-2", "Service": "web", "Tags": [], "Meta": {}},
}
CHECK = {"CheckID": "up", "Name": "up", "Status": "passing"}


def register(cluster: SimCluster, body: Dict[str, Any]) -> None:
    sid = body["Service"]["ID"]
    body = {**body, "Checks": [{**CHECK, "CheckID": f"{sid}:up", "ServiceID": sid}]}
    resp = requests.put(cluster.url(0) + "/v1/catalog/register", json=body, timeout=10)
    assert resp.status_code == 200, resp.text


@pytest.fixture
def stored(consul_cluster: SimCluster) -> SimCluster:
    """A cluster holding ``web`` twice: on node ``bare`` with nil fields, ``empty`` with {}/[]."""
    register(consul_cluster, BARE)
    register(consul_cluster, EMPTY)
    return consul_cluster


def by_node(entries: Any, key: str = "Node") -> Dict[str, Any]:
    return {(e[key]["Node"] if isinstance(e[key], dict) else e[key]): e for e in entries}


def test_catalog_service_fills_service_meta_and_tags(stored: SimCluster) -> None:
    rows = by_node(stored.get(1, "/v1/catalog/service/web"))
    # PartialClone: ServiceMeta {} and ServiceTags [] always
    assert (rows["bare"]["ServiceMeta"], rows["bare"]["ServiceTags"]) == ({}, [])
    assert (rows["empty"]["ServiceMeta"], rows["empty"]["ServiceTags"]) == ({}, [])
    # node fields are copied as stored
    assert (rows["bare"]["NodeMeta"], rows["bare"]["TaggedAddresses"]) == (None, None)
    assert (rows["empty"]["NodeMeta"], rows["empty"]["TaggedAddresses"]) == ({}, {})


def test_catalog_node_keeps_nil_meta_and_fills_tags(stored: SimCluster) -> None:
    bare = stored.get(1, "/v1/catalog/node/bare")
    assert bare["Node"]["Meta"] is None
    assert (bare["Services"]["web-1"]["Meta"], bare["Services"]["web-1"]["Tags"]) == (None, [])
    empty = stored.get(1, "/v1/catalog/node/empty")
    assert empty["Node"]["Meta"] == {}
    assert (empty["Services"]["web-2"]["Meta"], empty["Services"]["web-2"]["Tags"]) == ({}, [])


def test_health_service_keeps_nil_meta_and_fills_tags(stored: SimCluster) -> None:
    entries = by_node(stored.get(1, "/v1/health/service/web"))
    bare, empty = entries["bare"], entries["empty"]
    assert (bare["Service"]["Meta"], bare["Node"]["Meta"]) == (None, None)
    assert bare["Service"]["Tags"] == []
    assert [c["ServiceTags"] for c in bare["Checks"]] == [[]]
    assert (empty["Service"]["Meta"], empty["Node"]["Meta"]) == ({}, {})
    assert empty["Service"]["Tags"] == []


def test_txn_results_keep_nil_tags_and_meta(stored: SimCluster) -> None:
    ops = [
        {"Service": {"Verb": "get", "Node": "bare", "Service": {"ID": "web-1"}}},
        {"Service": {"Verb": "get", "Node": "empty", "Service": {"ID": "web-2"}}},
        {"Check": {"Verb": "get", "Check": {"Node": "bare", "CheckID": "web-1:up"}}},
    ]
    resp = requests.put(stored.url(1) + "/v1/txn", json=ops, timeout=10)
    bare, empty, check = [next(iter(r.values())) for r in resp.json()["Results"]]
    assert (bare["Tags"], bare["Meta"]) == (None, None)  # no handler rewrite on txn
    assert (empty["Tags"], empty["Meta"]) == ([], {})
    assert check["ServiceTags"] is None


def test_register_without_node_meta_replaces_it_unless_skip_node_update(
    consul_cluster: SimCluster,
) -> None:
    register(consul_cluster, {**BARE, "NodeMeta": {"rack": "r1"}})
    register(
        consul_cluster,
        {"Node": "bare", "SkipNodeUpdate": True, "Service": {"ID": "db-1", "Service": "db"}},
    )
    node = consul_cluster.get(0, "/v1/catalog/node/bare")["Node"]
    assert (node["Address"], node["Meta"]) == ("10.0.0.1", {"rack": "r1"})
    register(consul_cluster, {**BARE, "Service": {"ID": "db-1", "Service": "db"}})
    assert consul_cluster.get(0, "/v1/catalog/node/bare")["Node"]["Meta"] is None
