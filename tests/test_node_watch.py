"""The daemon's blocking query on its own node (regagent.consul.node_watch, issue 25 part 1),
against real emulator processes with three servers and a real `regagent run`.

Full cycles run every 60 s here, so within a test only the first one runs: whatever is put
back after it was put back by the watch's repair, not by a cycle."""

from __future__ import annotations

import contextlib
import json
import math
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, Optional

import yaml

from consulsim import SimCluster
from helpers.catalog_sim import daemon_process
from helpers.waits import wait_for
from regagent.consul.node_watch import BACKOFF_MAX, MIN_GAP
from regagent.consul.retry import start_index
from regagent.daemon import STOP_BOUND

NODE = "watch-test-host"
SERVICES = [{"name": "alpha", "port": 9101}, {"name": "beta", "port": 9102}]
WATCH_WAIT = 2.0  # the emulator's cap below is higher: every poll is held the full wait
READ_TIMEOUT = 1.0
NODE_READ = "GET /v1/catalog/node/:arg"
CHECK_READ = "GET /v1/health/node/:arg"


@contextlib.contextmanager
def cluster(**options: Any) -> Iterator[SimCluster]:
    sim = SimCluster(servers=3, wait_cap="30s", default_wait="30s", **options)
    sim.start()
    try:
        sim.wait_for_leader()
        yield sim
    finally:
        sim.stop()


def write_config(
    tmp_path: Path, sim: SimCluster, *, wait: float = WATCH_WAIT, interval: str = "60s"
) -> Path:
    config = {
        "consul": {
            "servers": list(sim.addresses),
            "connect_timeout": "1s",
            "read_timeout": f"{READ_TIMEOUT:g}s",
            "cooldown_initial": "1s",
            "cooldown_max": "2s",
            "watch_wait": f"{wait:g}s",
        },
        "node": {"name": NODE, "address": "127.0.0.1"},
        "sync": {"interval": interval, "jitter": "100ms", "state_dir": str(tmp_path / "state")},
        "discovery": {"enabled": False},
        "services": [{**s, "check": {"type": "none"}} for s in SERVICES],
        "log": {"level": "debug"},
    }
    path = tmp_path / "regagent.yaml"
    path.write_text(yaml.safe_dump(config))
    path.chmod(0o600)
    return path


def wait_until(what: str, condition: Callable[[], bool], timeout: float = 30.0) -> None:
    wait_for(what, condition, timeout)


def services_of(sim: SimCluster) -> Dict[str, Any]:
    """From the emulator's control API: the test's own look is no request to a server."""
    return {s["ID"]: s for s in sim.catalog()["services"] if s["Node"] == NODE}


def registered(sim: SimCluster) -> bool:
    return set(services_of(sim)) == {"alpha-9101", "beta-9102"}


def put(sim: SimCluster, server: int, path: str, body: Dict[str, Any]) -> None:
    request = urllib.request.Request(
        sim.url(server) + path, data=json.dumps(body).encode(), method="PUT"
    )
    with urllib.request.urlopen(request, timeout=10) as answer:
        assert answer.status == 200


def deregister(sim: SimCluster, server: int, service_id: Optional[str] = None) -> None:
    """A third party's `consul catalog deregister` (of one service, or of the whole node)."""
    body: Dict[str, Any] = {"Node": NODE}
    if service_id is not None:
        body["ServiceID"] = service_id
    put(sim, server, "/v1/catalog/deregister", body)


def endpoint(sim: SimCluster, key: str, server: Optional[int] = None) -> int:
    stats = sim.stats()
    source = stats["endpoints"] if server is None else stats["servers"][server]["endpoints"]
    return int(source.get(key, 0))


def silent(error: str) -> bool:
    """The transport's words for a server that did not answer within the bound."""
    return "read timed out" in error or "too slow" in error


def home() -> int:
    return start_index(NODE, 3)


def test_a_deregistered_service_comes_back_through_another_server_when_the_first_dies(
    tmp_path: Path,
) -> None:
    with cluster() as sim, daemon_process(write_config(tmp_path, sim)) as run:
        wait_until("registered", lambda: registered(sim))
        first = home()
        wait_until(
            "the watch polls its home server",
            lambda: endpoint(sim, NODE_READ, first) >= 2,
        )
        sim.stop_server(first)  # cuts the poll in flight
        other = next(i for i in range(3) if i != first)
        deregister(sim, other, "beta-9102")
        wait_until("beta is back", lambda: registered(sim), timeout=20)
        repaired = run.events("catalog_repaired")
        assert [e["services"] for e in repaired] == [["beta-9102"]]
        assert len(run.events("sync_applied")) == 1  # only the first cycle wrote
        # The whole node, too: the poll wakes with `null` and the node comes back.
        deregister(sim, other)
        wait_until("the node is back", lambda: registered(sim), timeout=20)
        assert run.events("catalog_repaired")[-1]["node"] == "recreated"
        assert run.stop() == 0


def test_a_server_that_holds_the_poll_past_its_bound_is_left(tmp_path: Path) -> None:
    with cluster() as sim, daemon_process(write_config(tmp_path, sim)) as run:
        wait_until("registered", lambda: registered(sim))
        first = home()
        wait_until("the watch polls home", lambda: endpoint(sim, NODE_READ, first) >= 2)
        sim.blackhole(first)  # takes the poll, never answers
        wait_until(
            "the silent server is cooled down during the watch",
            lambda: any(
                e.get("during") == "watch node" and silent(e.get("error", ""))
                for e in run.events("consul_server_failed")
            ),
            timeout=20,
        )
        other = next(i for i in range(3) if i != first)
        deregister(sim, other, "alpha-9101")
        wait_until("alpha is back", lambda: registered(sim), timeout=20)
        assert run.events("catalog_repaired")
        sim.blackhole(first, on=False)


def test_a_snapshot_restore_resets_the_index_and_the_node_comes_back(tmp_path: Path) -> None:
    with cluster() as sim:
        empty = sim.snapshot_save()  # before regagent ever wrote: restoring it loses the node
        with daemon_process(write_config(tmp_path, sim)) as run:
            wait_until("registered", lambda: registered(sim))
            # Polls: index 0 (no node yet), then the node's first index, then one held on
            # the index after regagent's write: that one is released by the restore.
            wait_until("the watch holds a poll", lambda: endpoint(sim, NODE_READ) >= 3)
            sim.snapshot_restore(empty)
            wait_until("the node is back", lambda: registered(sim), timeout=20)
            resets = run.events("node_watch_index_reset")
            assert resets and resets[0]["answered"] < resets[0]["sent"]
            assert run.events("catalog_repaired")[-1]["node"] == "recreated"


def test_a_server_that_never_blocks_costs_a_bounded_number_of_polls(tmp_path: Path) -> None:
    with cluster() as sim:
        for i in range(3):
            sim.no_block(i)
        sim.reset_stats()
        started = time.monotonic()
        with daemon_process(write_config(tmp_path, sim)) as run:
            wait_until("registered", lambda: registered(sim))
            time.sleep(12)
            elapsed = time.monotonic() - started
            reads = endpoint(sim, NODE_READ)
            cycles = endpoint(sim, CHECK_READ)  # one per full cycle that read Consul
            assert run.events("node_watch_not_blocking")
        # Poll starts are MIN_GAP apart and the gap doubles with each answer that did not
        # block: 0, 1, 2, 4, 8, 16, ... seconds (capped at BACKOFF_MAX), so over `elapsed`
        # seconds at most 2 + log2(elapsed) polls, plus the read of each full cycle (only the
        # first, here). A loop without the backoff would have made `elapsed / MIN_GAP`.
        assert MIN_GAP == 1.0 and BACKOFF_MAX >= 16
        bound = 2 + math.ceil(math.log2(elapsed + 1)) + cycles
        assert reads <= bound, (reads, bound, elapsed)
        assert reads < elapsed / MIN_GAP


def test_a_reload_keeps_the_watch_and_its_answer(tmp_path: Path) -> None:
    with cluster() as sim:
        config = write_config(tmp_path, sim)
        with daemon_process(config) as run:
            wait_until("registered", lambda: registered(sim))
            wait_until("the watch holds a poll", lambda: endpoint(sim, NODE_READ) >= 2)
            plain_reads = sim.stats()
            run.proc.send_signal(signal.SIGHUP)
            wait_until("reloaded", lambda: bool(run.events("config_reloaded")))
            deregister(sim, 0, "alpha-9101")
            wait_until("alpha is back", lambda: registered(sim), timeout=20)
            assert len(run.events("node_watch_started")) == 1
            assert run.events("catalog_repaired")
            # No fresh start from index 0 after the reload: every node read since was a
            # blocking poll (held, or woken by the deregistration and the repair).
            since = endpoint(sim, NODE_READ) - int(plain_reads["endpoints"].get(NODE_READ, 0))
            assert since <= 4
        # A reload that changes the wait starts a new watch.
        write_config(tmp_path, sim, wait=3.0)
        with daemon_process(config) as run:
            wait_until("started", lambda: bool(run.events("node_watch_started")))
            run.proc.send_signal(signal.SIGHUP)
            wait_until("reloaded", lambda: bool(run.events("config_reloaded")))
            write_config(tmp_path, sim, wait=4.0)
            run.proc.send_signal(signal.SIGHUP)
            wait_until("a new watch", lambda: len(run.events("node_watch_started")) == 2)


def test_sigterm_ends_the_daemon_while_a_poll_is_held(tmp_path: Path) -> None:
    with cluster() as sim, daemon_process(write_config(tmp_path, sim, wait=25.0)) as run:
        wait_until("registered", lambda: registered(sim))
        wait_until("the watch holds a poll", lambda: endpoint(sim, NODE_READ) >= 2)
        asked = time.monotonic()
        assert run.stop() == 0
        assert time.monotonic() - asked < STOP_BOUND  # the 25 s poll did not hold it up


def test_one_shot_syncs_and_dry_runs_read_as_before(tmp_path: Path) -> None:
    with cluster() as sim:
        config = write_config(tmp_path, sim)
        for args in (["sync", "--dry-run"], ["sync"], ["sync"]):
            sim.reset_stats()
            subprocess.run(
                [sys.executable, "-m", "regagent", "-c", str(config), *args],
                check=True,
                capture_output=True,
                timeout=60,
            )
            # Exactly the two reads of a cycle; no poll, no blocking query.
            assert endpoint(sim, NODE_READ) == 1
            assert endpoint(sim, CHECK_READ) == 1
        assert registered(sim)


def test_a_check_status_set_by_a_third_party_is_written_back_when_the_checks_are_reread(
    tmp_path: Path,
) -> None:
    """Check writes do not move the node's index: the watch does not see this one, and the
    cycles go on with the checks they last read until those are two waits old (4 s here)."""
    with cluster() as sim, daemon_process(write_config(tmp_path, sim, interval="1s")) as run:
        wait_until("registered", lambda: registered(sim))
        wait_until("the watch holds a poll", lambda: endpoint(sim, NODE_READ) >= 3)
        reads = endpoint(sim, CHECK_READ)
        put(
            sim,
            0,
            "/v1/catalog/register",
            {
                "Node": NODE,
                "SkipNodeUpdate": True,
                "Check": {
                    "CheckID": "service:alpha-9101",
                    "Name": "alpha health",
                    "ServiceID": "alpha-9101",
                    "Status": "critical",
                    "Output": "set by hand",
                },
            },
        )

        def status() -> str:
            checks = [c for c in sim.catalog()["checks"] if c["CheckID"] == "service:alpha-9101"]
            return str(checks[0]["Status"]) if checks else ""

        wait_until("passing again", lambda: status() == "passing", timeout=30)
        assert endpoint(sim, CHECK_READ) > reads  # a cycle read the checks again
        assert not run.events("catalog_repaired")  # the watch never saw it
