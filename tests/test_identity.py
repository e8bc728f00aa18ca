"""One host, one node (design decision 10): host identity, renamed hosts, `auto` addresses.

A second "host" is played for real: `unshare --uts --mount` gives the child its own host name and,
through a bind mount over /etc/machine-id, its own machine id, while it talks to the same
emulator on loopback.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Optional

import pytest
import yaml

from consulsim import SimCluster
from helpers.consul import node_services, static, write_config
from regagent.config.model import NodeConfig
from regagent.errors import NoLocalRoute
from regagent.identity import HOST_ID_KEY, NodeIdentity, host_id

UNSHARE = shutil.which("unshare")
needs_namespaces = pytest.mark.skipif(
    UNSHARE is None or os.geteuid() != 0, reason="needs unshare(1) and root for namespaces"
)


def as_host(
    config: Path, tmp_path: Path, hostname: str, machine_id: Optional[str], *args: str
) -> subprocess.CompletedProcess[str]:
    """`regagent ARGS` as another host: its own UTS namespace (host name) and, when given, its
    own /etc/machine-id bind-mounted in a private mount namespace."""
    script = f"hostname {hostname}\n"
    if machine_id is not None:
        fake = tmp_path / f"machine-id-{hostname}-{machine_id[:6]}"
        fake.write_text(machine_id + "\n")
        script += f"mount --bind {fake} /etc/machine-id\n"
    script += 'exec "$@"\n'
    argv = [UNSHARE or "unshare", "--uts", "--mount", "sh", "-ec", script, "host"]
    argv += [sys.executable, "-m", "regagent", "-c", str(config), *args]
    return subprocess.run(
        argv, capture_output=True, text=True, timeout=60, check=False, stdin=subprocess.DEVNULL
    )


def hostless_config(tmp_path: Path, cluster: SimCluster, services: List[Dict[str, object]]) -> Path:
    """The test config without node.name: the node is named after the host."""
    path = write_config(tmp_path, cluster, services)
    doc = yaml.safe_load(path.read_text())
    doc["node"] = {"address": "127.0.0.1"}
    path.write_text(yaml.safe_dump(doc))
    return path


def node_meta(cluster: SimCluster, node: str) -> Optional[Dict[str, str]]:
    data = cluster.get(cluster.live_server(), f"/v1/catalog/node/{node}?stale")
    return None if data is None else dict(data["Node"]["Meta"] or {})


def test_host_id_is_a_hash_of_the_machine_id_never_the_id_itself(tmp_path: Path) -> None:
    one, other = tmp_path / "one", tmp_path / "other"
    one.write_text("3d1219c7c4c5404aaa1f6d2a48adfda4\n")
    other.write_text("0123456789abcdef0123456789abcdef\n")
    assert host_id(str(one)) == host_id(str(one))
    assert host_id(str(one)) != host_id(str(other))
    assert "3d1219c7c4c5404aaa1f6d2a48adfda4" not in str(host_id(str(one)))
    assert host_id(str(tmp_path / "missing")) is None


@needs_namespaces
def test_two_hosts_with_the_same_name_do_not_fight_the_second_is_refused(
    consul_cluster: SimCluster, tmp_path: Path
) -> None:
    config = hostless_config(tmp_path, consul_cluster, [static("queue", 9000)])
    first = as_host(config, tmp_path, "cloned", None, "sync")
    assert first.returncode == 0, first.stderr
    owner = node_meta(consul_cluster, "cloned")
    assert owner is not None and owner[HOST_ID_KEY] == host_id()

    consul_cluster.reset_stats()
    other_id = "0123456789abcdef0123456789abcdef"
    for _ in range(3):  # every cycle of the clone, not just the first
        clone = as_host(config, tmp_path, "cloned", other_id, "sync")
        assert clone.returncode == 1
        assert "registered by regagent on another host" in clone.stderr
        assert "Give this host a name of its own" in clone.stderr
    assert consul_cluster.stats()["writes_applied"] == 0  # nothing overwritten
    assert node_meta(consul_cluster, "cloned") == owner
    assert set(node_services(consul_cluster, "cloned")) == {"queue-9000"}


@needs_namespaces
def test_a_renamed_host_retires_its_old_node(consul_cluster: SimCluster, tmp_path: Path) -> None:
    config = hostless_config(tmp_path, consul_cluster, [static("queue", 9000)])
    assert as_host(config, tmp_path, "old-name", None, "sync").returncode == 0
    assert set(node_services(consul_cluster, "old-name")) == {"queue-9000"}

    renamed = as_host(config, tmp_path, "new-name", None, "sync", "--log-level", "info")
    assert renamed.returncode == 0, renamed.stderr
    assert set(node_services(consul_cluster, "new-name")) == {"queue-9000"}
    assert node_meta(consul_cluster, "old-name") is None  # gone, not left passing forever
    assert "node_renamed" in renamed.stderr and "old-name" in renamed.stderr


@needs_namespaces
def test_a_rename_leaves_an_old_node_of_another_host_alone(
    consul_cluster: SimCluster, tmp_path: Path
) -> None:
    config = hostless_config(tmp_path, consul_cluster, [static("queue", 9000)])
    assert as_host(config, tmp_path, "shared", None, "sync").returncode == 0
    # Another machine takes the name "shared" (this host's record still says it used it).
    other_state = tmp_path / "other"
    other_state.mkdir()
    doc = yaml.safe_load(config.read_text())
    doc["sync"]["state_dir"] = str(other_state)
    other_config = tmp_path / "other.yaml"
    other_config.write_text(yaml.safe_dump(doc))
    other_config.chmod(0o600)
    # Removing our node first lets the other host register its own under that name.
    assert as_host(config, tmp_path, "shared", None, "deregister", "--yes").returncode == 0
    assert as_host(other_config, tmp_path, "shared", "f" * 32, "sync").returncode == 0

    renamed = as_host(config, tmp_path, "mine-now", None, "sync", "--log-level", "info")
    assert renamed.returncode == 0, renamed.stderr
    assert set(node_services(consul_cluster, "shared")) == {"queue-9000"}  # theirs: kept
    assert "not this host's" in renamed.stderr


def test_auto_address_never_resolves_to_loopback() -> None:
    interfaces = [
        (socket.AF_INET, "127.0.0.1"),
        (socket.AF_INET6, "::1"),
        (socket.AF_INET6, "fe80::1"),
        (socket.AF_INET, "192.0.2.7"),
        (socket.AF_INET6, "2001:db8::5"),
    ]
    v4 = NodeIdentity(
        NodeConfig(name="h"), route=lambda _: "127.0.0.1", interfaces=lambda: interfaces
    )
    assert v4.address("127.0.0.1:8500") == "192.0.2.7"
    v6 = NodeIdentity(NodeConfig(name="h"), route=lambda _: "::1", interfaces=lambda: interfaces)
    assert v6.address("[::1]:8500") == "2001:db8::5"
    routed = NodeIdentity(NodeConfig(name="h"), route=lambda _: "10.1.2.3", interfaces=lambda: [])
    assert routed.address("10.0.0.1:8500") == "10.1.2.3"
    explicit = NodeIdentity(NodeConfig(name="h", address="127.0.0.1"), route=lambda _: "x")
    assert explicit.address("127.0.0.1:8500") == "127.0.0.1"  # the operator's explicit choice
    only_lo = NodeIdentity(
        NodeConfig(name="h"), route=lambda _: "127.0.0.1", interfaces=lambda: interfaces[:2]
    )
    with pytest.raises(NoLocalRoute, match="loopback interface"):
        only_lo.address("127.0.0.1:8500")


@needs_namespaces
def test_auto_on_a_host_with_only_loopback_is_a_clear_error(tmp_path: Path) -> None:
    """A real network namespace with nothing but `lo`: there is no address to register at."""
    config = tmp_path / "c.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "consul": {"servers": ["127.0.0.1:8500"]},
                "node": {"name": "lonely"},
                "discovery": {"enabled": False},
                "sync": {"state_dir": str(tmp_path)},
            }
        )
    )
    script = 'ip link set lo up\nexec "$@"\n'
    argv = [UNSHARE or "unshare", "--net", "sh", "-ec", script, "host"]
    argv += [sys.executable, "-m", "regagent", "-c", str(config), "discover"]
    shown = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    assert "the route to 127.0.0.1:8500 is the loopback interface" in shown.stderr
    assert "set node.address" in shown.stderr


@needs_namespaces
def test_the_host_addresses_are_every_address_ip_lists_and_auto_takes_one() -> None:
    """A network namespace of the test's own, addresses set with ip(8): the kernel's list
    (netlink) has each one, a point-to-point address as its own end, and `auto`, routed to
    loopback, registers at one of them."""
    script = (
        "ip link set lo up\n"
        "ip link add v0 type veth peer name v1\n"
        "ip addr add 198.51.100.7/24 dev v0\n"
        "ip addr add 10.9.9.1 peer 10.9.9.2 dev v0\n"
        "ip addr add 2001:db8::7/64 dev v0 nodad\n"
        'exec "$@"\n'
    )
    code = (
        "import json\n"
        "from regagent.config.model import NodeConfig\n"
        "from regagent.identity import NodeIdentity\n"
        "from regagent.netlink import host_addresses\n"
        "auto = NodeIdentity(NodeConfig(name='h')).address('127.0.0.1:8500')\n"
        "print(json.dumps([sorted(host_addresses()), auto]))\n"
    )
    argv = [UNSHARE or "unshare", "--net", "sh", "-ec", script, "host", sys.executable, "-c", code]
    shown = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    assert shown.returncode == 0, shown.stderr
    listed, auto = json.loads(shown.stdout.splitlines()[-1])
    v4, v6 = int(socket.AF_INET), int(socket.AF_INET6)
    assert listed == sorted(
        [
            [v4, "127.0.0.1"],
            [v4, "198.51.100.7"],
            [v4, "10.9.9.1"],  # this end of the point-to-point link, not its peer
            [v6, "::1"],
            [v6, "2001:db8::7"],
        ]
    )
    assert auto in ("198.51.100.7", "10.9.9.1")


@needs_namespaces
def test_a_failed_retirement_is_retried_by_the_next_in_sync_cycle(tmp_path: Path) -> None:
    """The old node must not stay passing forever because steady state writes nothing: a
    retirement refused once (a token that may not touch the old node) is done by the next
    cycle that finds Consul in sync, once the token allows it."""
    full = {"AccessorID": "a1", "node_prefix": {"": "write"}, "service_prefix": {"": "write"}}
    narrow = {
        "AccessorID": "a2",
        "node_prefix": {"new-": "write", "old-": "read"},
        "service_prefix": {"": "write"},
    }
    acl = {"default_policy": "deny", "tokens": {"full-secret": full, "narrow-secret": narrow}}
    cluster = SimCluster(servers=3, election_delay="0.3s", rpc_hold="0.2s", acl=acl)
    cluster.start()
    try:
        config = hostless_config(tmp_path, cluster, [static("queue", 9000)])
        token = tmp_path / "token"
        doc = yaml.safe_load(config.read_text())
        doc["consul"]["token_file"] = str(token)
        config.write_text(yaml.safe_dump(doc))
        token.write_text("full-secret\n")
        token.chmod(0o600)
        assert as_host(config, tmp_path, "old-name", None, "sync").returncode == 0

        token.write_text("narrow-secret\n")
        renamed = as_host(config, tmp_path, "new-name", None, "sync")
        assert renamed.returncode == 0, renamed.stderr
        assert "previous_node_not_retired" in renamed.stderr
        old = cluster.get(0, "/v1/catalog/node/old-name?stale", token="full-secret")
        assert old is not None  # still there: the narrow token may not remove it

        token.write_text("full-secret\n")
        settled = as_host(config, tmp_path, "new-name", None, "sync", "--log-level", "info")
        assert settled.returncode == 0, settled.stderr
        assert "In sync" in settled.stdout  # nothing to write, and yet...
        assert cluster.get(0, "/v1/catalog/node/old-name?stale", token="full-secret") is None
    finally:
        cluster.stop()
