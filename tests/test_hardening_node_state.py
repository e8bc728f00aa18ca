"""`node.json` (which node a configuration used last) can never order a deletion on its own.

Before: the rename guard's file was read whoever wrote it, and any other name in it was taken
for this host's old name: a local user who could write it (a world-writable state directory,
or a file of their own) named another node of this host, and the next sync deleted that node
and every regagent service on it; a one-shot `regagent sync` with a scratch configuration and
the running daemon, sharing `/var/lib/regagent`, each took the other for a rename and deleted
the other's node. Now the file passes the state directory's trust rules, records one name per
configuration (with the host identity and the command that wrote it), and a one-shot command
beside the daemon (which holds `run.lock`) retires and records nothing. Real processes: an
unprivileged writer through setpriv, a real `regagent run` and real one-shot commands against
the emulator.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List

import pytest
import yaml
from structlog.testing import capture_logs

from consulsim import SimCluster
from helpers.consul import node_services, regagent, running_daemon, static, write_config
from helpers.discovery import exporter, hermetic_discovery
from helpers.ports import free_port
from helpers.waits import wait_for
from regagent.config.model import NodeConfig
from regagent.identity import NODE_FILE, NodeIdentity, NodeNames, Writer, host_id
from regagent.statedir import StateDir, Warnings

needs_root = pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("setpriv"), reason="needs root and setpriv"
)
SETPRIV = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]


@pytest.fixture
def shared_top() -> Iterator[Path]:
    """A directory reachable by user nobody (tmp_path's parents are private to root)."""
    top = Path(tempfile.mkdtemp(prefix="regagent-node-state-"))
    top.chmod(0o755)
    try:
        yield top
    finally:
        shutil.rmtree(top)


def config_for(
    where: Path, cluster: SimCluster, node: str, state_dir: Path, services: List[Dict[str, Any]]
) -> Path:
    """A configuration of its own (own file) for node `node`, state in `state_dir`."""
    where.mkdir(parents=True, exist_ok=True)
    return write_config(
        where,
        cluster,
        services,
        node={"name": node, "address": "127.0.0.1"},
        sync={"interval": "1s", "jitter": "50ms", "state_dir": str(state_dir)},
    )


def planted_record(config: Path, node: str) -> str:
    """What a forger writes: a well-formed record saying `config` used `node` last (with this
    host's id, which anyone can compute from /etc/machine-id or read in Consul), plus the
    earlier format's key."""
    record = {
        "node": node,
        "host_id": host_id(),
        "command": "one-shot",
        "recorded": "2026-01-01T00:00:00Z",
    }
    return json.dumps({"version": 2, "configs": {str(config): record}, "node": node})


def plant_as_nobody(path: Path, text: str) -> None:
    subprocess.run(
        [*SETPRIV, "/bin/sh", "-c", 'umask 022; cat > "$1"', "sh", str(path)],
        input=text.encode(),
        check=True,
        timeout=30,
    )
    assert path.stat().st_uid == pwd.getpwnam("nobody").pw_uid


# -- item 1: whoever can write node.json cannot order a deletion --------------------------------


@needs_root
@pytest.mark.parametrize("access", ["world-writable-directory", "file-of-their-own"])
def test_a_node_json_written_by_another_user_deletes_nothing(
    consul_cluster: SimCluster, shared_top: Path, access: str
) -> None:
    # Another configuration's node on this host: it carries this host's identity.
    victim = config_for(
        shared_top / "victim",
        consul_cluster,
        "victim",
        shared_top / "victim-state",
        [static("db", 5432)],
    )
    assert regagent(victim, "sync").returncode == 0
    assert set(node_services(consul_cluster, "victim")) == {"db-5432"}

    state = shared_top / "state"
    state.mkdir(mode=0o750)
    mine = config_for(shared_top / "mine", consul_cluster, "mine", state, [static("queue", 9000)])
    state.chmod(0o1777)  # e.g. a state directory created by hand with the wrong mode
    plant_as_nobody(state / NODE_FILE, planted_record(mine, "victim"))
    if access == "file-of-their-own":
        state.chmod(0o750)  # the directory fixed later; the file still belongs to nobody

    done = regagent(mine, "sync", "--log-level", "info")

    assert done.returncode == 0, done.stderr
    assert set(node_services(consul_cluster, "victim")) == {"db-5432"}  # not retired
    assert set(node_services(consul_cluster, "mine")) == {"queue-9000"}
    assert "node_renamed" not in done.stderr
    assert done.stderr.count('"node_state_untrusted"') == 1, done.stderr


def test_odd_node_json_files_are_not_used(tmp_path: Path) -> None:
    """The same rules as discovered.json: no symlink followed, no FIFO read (it would hang),
    nothing over the size cap, nothing but a strict record."""
    state = tmp_path / "state"
    state.mkdir(mode=0o750)
    writer = Writer(str(tmp_path / "regagent.yaml"))
    good = json.loads(planted_record(Path(writer.config), "other-node"))
    good.pop("node")
    elsewhere = tmp_path / "elsewhere.json"
    elsewhere.write_text(json.dumps(good))
    odd = {
        "symlink": lambda p: p.symlink_to(elsewhere),
        "fifo": lambda p: os.mkfifo(p, 0o600),
        "too-large": lambda p: p.write_text(json.dumps(good) + " " * (64 * 1024)),
        "bad-node-name": lambda p: p.write_text(json.dumps(good).replace("other-node", "a/../b")),
        "control-character": lambda p: p.write_text(
            json.dumps(good).replace("one-shot", "one-\\u001bshot")
        ),
    }
    for kind, make in odd.items():
        path = state / NODE_FILE
        if path.exists() or path.is_symlink():
            path.unlink()
        make(path)
        names = NodeNames(StateDir(str(state), Warnings()), writer, host_id())
        with capture_logs() as logs:
            assert names.previous("this-node") is None, kind
        assert [e["event"] for e in logs] == ["node_state_corrupt"], kind
    path.unlink()
    path.write_text(json.dumps(good))
    path.chmod(0o600)
    names = NodeNames(StateDir(str(state), Warnings()), writer, host_id())
    assert names.previous("this-node") == "other-node"  # a good record is used


def test_a_record_made_on_another_host_is_not_this_hosts_rename(tmp_path: Path) -> None:
    state = tmp_path / "state"
    writer = Writer(str(tmp_path / "regagent.yaml"))
    NodeNames(StateDir(str(state)), writer, "a" * 32).record("old-name")
    copied = NodeNames(StateDir(str(state)), writer, "b" * 32)  # a cloned disk, say
    assert copied.previous("new-name") is None
    assert NodeNames(StateDir(str(state)), writer, "a" * 32).previous("new-name") == "old-name"


def test_the_records_are_bounded(tmp_path: Path) -> None:
    state = StateDir(str(tmp_path / "state"))
    for i in range(40):
        NodeNames(state, Writer(f"/etc/regagent-{i}"), "a" * 32, clock=lambda i=i: 1e9 + i).record(
            f"node-{i}"
        )
    kept = NodeNames(state, Writer("/etc/regagent-39"), "a" * 32).load()
    assert len(kept) == 32 and "/etc/regagent-39" in kept and "/etc/regagent-0" not in kept


# -- item 3: a second configuration is not a rename ---------------------------------------------


def test_two_one_shot_configurations_sharing_a_state_directory_keep_both_nodes(
    consul_cluster: SimCluster, tmp_path: Path
) -> None:
    state = tmp_path / "state"
    live = config_for(tmp_path / "live", consul_cluster, "live", state, [static("queue", 9000)])
    scratch = config_for(
        tmp_path / "scratch", consul_cluster, "scratch", state, [static("tmp", 9001)]
    )

    for config in (live, scratch, live, scratch):
        done = regagent(config, "sync", "--log-level", "info")
        assert done.returncode == 0, done.stderr
        assert "node_renamed" not in done.stderr

    assert set(node_services(consul_cluster, "live")) == {"queue-9000"}
    assert set(node_services(consul_cluster, "scratch")) == {"tmp-9001"}
    records = json.loads((state / NODE_FILE).read_text())["configs"]
    assert {k: v["node"] for k, v in records.items()} == {
        str(live): "live",
        str(scratch): "scratch",
    }


def test_a_one_shot_beside_the_daemon_never_retires_its_node_and_the_daemon_keeps_renames(
    consul_cluster: SimCluster, tmp_path: Path
) -> None:
    state = tmp_path / "state"
    live = config_for(tmp_path / "live", consul_cluster, "live", state, [static("queue", 9000)])
    scratch = config_for(
        tmp_path / "scratch", consul_cluster, "scratch", state, [static("tmp", 9001)]
    )
    with running_daemon(live) as daemon:
        wait_for("the daemon's node", lambda: "queue-9000" in node_services(consul_cluster, "live"))
        wait_for("its record", (state / NODE_FILE).exists)

        # A scratch configuration, run by hand on the same host.
        done = regagent(scratch, "sync", "--log-level", "info")
        assert done.returncode == 0, done.stderr
        assert "node_rename_left_to_daemon" in done.stderr
        time.sleep(3)  # three daemon cycles (sync.interval 1s)
        assert set(node_services(consul_cluster, "live")) == {"queue-9000"}
        assert set(node_services(consul_cluster, "scratch")) == {"tmp-9001"}

        # The daemon's own configuration edited (not yet reloaded), and synced by hand.
        doc = yaml.safe_load(live.read_text())
        doc["node"]["name"] = "renamed"
        live.write_text(yaml.safe_dump(doc))
        done = regagent(live, "sync", "--log-level", "info")
        assert done.returncode == 0, done.stderr
        assert "node_renamed" not in done.stderr
        assert set(node_services(consul_cluster, "live")) == {"queue-9000"}  # still the daemon's

        # A second daemon on the same state directory is refused, not run beside the first.
        second = regagent(scratch, "run", timeout=30)
        assert second.returncode == 1
        assert "is in use by another `regagent run`" in second.stderr
        assert "Give each configuration its own sync.state_dir" in second.stderr

        # The daemon reloads the edited configuration: a rename, so it retires its old node.
        daemon.send_signal(signal.SIGHUP)
        wait_for("the old node retired", lambda: node_services(consul_cluster, "live") == {})
        assert set(node_services(consul_cluster, "renamed")) == {"queue-9000"}
        assert set(node_services(consul_cluster, "scratch")) == {"tmp-9001"}  # never the daemon's
    assert daemon.returncode == 0, daemon.stderr_text


def test_a_renamed_host_still_retires_its_old_node_through_one_shot_commands(
    consul_cluster: SimCluster, tmp_path: Path
) -> None:
    """The same configuration under another name is still a rename when no daemon runs."""
    state = tmp_path / "state"
    config = config_for(tmp_path / "c", consul_cluster, "before", state, [static("queue", 9000)])
    assert regagent(config, "sync").returncode == 0
    doc = yaml.safe_load(config.read_text())
    doc["node"]["name"] = "after"
    config.write_text(yaml.safe_dump(doc))

    done = regagent(config, "sync", "--log-level", "info")

    assert done.returncode == 0, done.stderr
    assert node_services(consul_cluster, "before") == {}
    assert set(node_services(consul_cluster, "after")) == {"queue-9000"}
    assert "node_renamed" in done.stderr


def test_identity_carries_its_warnings_across_a_reload(tmp_path: Path) -> None:
    first = NodeIdentity(NodeConfig(name="h"), state_dir=str(tmp_path))
    again = NodeIdentity(NodeConfig(name="h"), state_dir=str(tmp_path), warnings=first.warnings)
    assert again.warnings is first.warnings


def test_a_one_shot_beside_the_daemon_leaves_the_discovery_state_to_it(
    consul_cluster: SimCluster, tmp_path: Path
) -> None:
    """The scratch configuration discovers other ports: its view must not become the
    daemon's (which would register the scratch exporter on the daemon's node, critical)."""
    state = tmp_path / "state"
    mine, theirs = free_port(), free_port()
    live = config_for(tmp_path / "live", consul_cluster, "live", state, [])
    scratch = config_for(tmp_path / "scratch", consul_cluster, "scratch", state, [])
    for config, port in ((live, mine), (scratch, theirs)):
        doc = yaml.safe_load(config.read_text())
        doc["discovery"] = hermetic_discovery([port])
        config.write_text(yaml.safe_dump(doc))
    with exporter("serve", str(mine)), exporter("serve", str(theirs)):
        with running_daemon(live) as daemon:
            wait_for(
                "the daemon's exporter",
                lambda: f"node-exporter-{mine}" in node_services(consul_cluster, "live"),
            )
            done = regagent(scratch, "sync")
            assert done.returncode == 0, done.stderr
            assert set(node_services(consul_cluster, "scratch")) == {f"node-exporter-{theirs}"}
            time.sleep(3)  # three daemon cycles
            assert set(node_services(consul_cluster, "live")) == {f"node-exporter-{mine}"}
        assert daemon.returncode == 0, daemon.stderr_text
    saved = json.loads((state / "discovered.json").read_text())["services"]
    assert set(saved) == {f"node-exporter-{mine}"}
