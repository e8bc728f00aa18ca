"""A slow new exporter is identified by a longer look in the background (issue 24): a real
`regagent run` registers it, meanwhile registers a fast exporter that appeared with it, runs its
cycles, and stops when told, without waiting for the slow answer.

The slow exporter answers each GET after 3 s: longer than `probe_timeout` (1 s), shorter than
`identify_timeout` (6 s). Before issue 24 it was never registered (every probe timed out).
Once registered, its health probe keeps `probe_timeout`: it turns critical, saying it timed
out, and stays, also past `sync.deregister_after` (it is there, only slow).
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List

from consulsim import SimCluster
from helpers.cli import events
from helpers.consul import node_checks, node_services, running_daemon, write_config
from helpers.discovery import exporter, hermetic_discovery, only, stop, wait_listening
from helpers.fakes import discovery_for, full_pass, reading_of
from helpers.ports import free_port
from helpers.waits import wait_for
from regagent.config.model import Config, DiscoveryConfig, SyncConfig
from regagent.model import CRITICAL, PASSING

NODE = "slow-host"

SLOW = """
import http.server, socketserver, sys, time
BODY = b'slow_exporter_build_info{version="0.9.1"} 1\\n'
class Slow(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        time.sleep(float(sys.argv[2]) if len(sys.argv) > 2 else 3.0)
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; version=0.0.4")
        self.send_header("Content-Length", str(len(BODY)))
        self.end_headers()
        self.wfile.write(BODY)
    def log_message(self, *args):
        pass
class Server(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True
Server(("0.0.0.0", int(sys.argv[1])), Slow).serve_forever()
"""


@contextlib.contextmanager
def slow_exporter(port: int, delay: float = 3.0) -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen(
        [sys.executable, "-c", SLOW, str(port), str(delay)], stdin=subprocess.DEVNULL
    )
    try:
        wait_listening(port, proc)
        yield proc
    finally:
        stop(proc)


def statuses(cluster: SimCluster) -> Dict[str, Any]:
    return {check["ServiceID"]: check for check in node_checks(cluster, NODE).values()}


def test_a_slow_new_exporter_is_registered_without_holding_up_the_daemon(
    consul_cluster: SimCluster, tmp_path: Path
) -> None:
    slow_port, fast_port = free_port(addr="0.0.0.0"), free_port(addr="0.0.0.0")
    discovery = hermetic_discovery([slow_port, fast_port])
    discovery.update(probe_timeout="1s", identify_timeout="6s")
    config = write_config(
        tmp_path,
        consul_cluster,
        [],
        node={"name": NODE, "address": "127.0.0.1"},
        sync={"interval": "2s", "jitter": "100ms", "state_dir": str(tmp_path / "state")},
        discovery=discovery,
    )
    slow_sid, fast_sid = f"slow-exporter-{slow_port}", f"node-exporter-{fast_port}"
    order: List[str] = []

    def registered() -> bool:
        services = node_services(consul_cluster, NODE)
        order.extend(sid for sid in (slow_sid, fast_sid) if sid in services and sid not in order)
        return len(order) == 2

    with running_daemon(config) as daemon:
        time.sleep(1.0)  # past the daemon's first cycle: both appear to the watch
        with slow_exporter(slow_port), exporter("serve", str(fast_port)):
            wait_for("both registered", registered, 30)
            meta = node_services(consul_cluster, NODE)[slow_sid]["Meta"]
            assert (meta["exporter_version"], meta["identified_by"]) == ("0.9.1", "build_info")
            # its health probe has the 1 s bound: after three failed cycles it is critical,
            # and stays registered
            wait_for(
                "the slow one critical",
                lambda: statuses(consul_cluster).get(slow_sid, {}).get("Status") == "critical",
                30,
            )
            output = statuses(consul_cluster)[slow_sid]["Output"]
            # what Prometheus sees: it answers, too slowly (not "not serving metrics ... since",
            # which started deregister_after's count)
            assert output == (
                f"slow_exporter on :{slow_port}: no metrics from /metrics (timed out after 1s)"
            )
            assert statuses(consul_cluster)[fast_sid]["Status"] == "passing"
    # the fast one, whose first probe answered, never waited behind the slow one's longer look
    assert order == [fast_sid, slow_sid]
    assert daemon.returncode == 0, daemon.stderr_text
    assert "cycle_interrupted" not in daemon.stderr_text
    assert "CycleDeadline" not in daemon.stderr_text
    assert events(daemon.stderr_text, "watch_pass_crashed") == []


def test_a_slow_exporter_still_answering_outlives_deregister_after(tmp_path: Path) -> None:
    """Registered from a longer look, then probed in-cycle with probe_timeout, which it never
    meets: failing (its check says it timed out), but there, so 72 h later (a fake clock: the
    passes' `now`) it is still registered rather than removed as vanished."""
    port = free_port(addr="0.0.0.0")
    settings = DiscoveryConfig(port_ranges=((port, port),), probe_timeout=0.2, identify_timeout=3)
    config = Config(discovery=settings, sync=SyncConfig(state_dir=str(tmp_path)))
    discovery = discovery_for(config, reading_of(only(port)))
    sid = f"slow-exporter-{port}"
    start = 1.8e9
    with slow_exporter(port, delay=0.6):
        registered: Dict[str, Any] = {}
        for _ in range(100):  # bounded: the longer look takes 0.6 s
            registered = {i.service.id: i for i in full_pass(discovery, "192.0.2.10", start)}
            if sid in registered:
                break
            time.sleep(0.05)
        assert registered[sid].status == (
            PASSING,
            f"slow_exporter 0.9.1 serving /metrics on :{port}",
        )
        later = start + config.sync.deregister_after + 3600
        for step in range(config.sync.failures_before_critical):
            kept = {i.service.id: i for i in full_pass(discovery, "192.0.2.10", later + step)}
            assert sid in kept, "deregistered while it still answers"
        assert kept[sid].status == (
            CRITICAL,
            f"slow_exporter on :{port}: no metrics from /metrics (timed out after 0.2s)",
        )
