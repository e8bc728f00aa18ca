"""Discovery's test helpers: exporters started for a test, discovery restricted to the test's own
ports (this host may run exporters of its own, e.g. node_exporter on :9100), and findings for
the pure intent builder."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional

from regagent.config.model import Config
from regagent.discovery.exporters import load_exporter_table
from regagent.discovery.identify import IDENTIFIED, LOOPBACK, WILDCARD, DiscoveryResult, Finding
from regagent.discovery.intents import IntentSet, build_intents
from regagent.discovery.listeners import Listener, listening_sockets, listening_sockets_netlink
from regagent.discovery.seen import SeenService

HERE = Path(__file__).resolve().parent.parent
FAKE = str(HERE / "data" / "discovery" / "fake_server.py")  # a fake exporter, by mode
WATCH_EXPORTER = str(HERE / "watch_exporters.py")
NODE = "192.0.2.10"  # the node address intents are built for
NOW = 1_800_000_000.0  # 2027-01-15T08:00:00Z


def hermetic_discovery(
    ports: List[int], *, real_exporters: bool = False, **extra: Any
) -> Dict[str, Any]:
    """A `discovery` section for `ports` that exporters the host runs itself cannot change:
    every other port of the exporter table (each a candidate whatever `port_ranges` says) is
    excluded, and so is every known exporter binary, unless the test runs `real_exporters`
    (then one on another port could still be found by its name)."""
    table = load_exporter_table()
    section: Dict[str, Any] = {
        "enabled": True,
        "port_ranges": [f"{p}-{p}" for p in ports],
        "exclude_ports": sorted(set(table.by_port) - set(ports)),
    }
    if not real_exporters:
        section["exclude_processes"] = sorted(
            {b for spec in table.by_name.values() for b in spec.binaries}
        )
    return {**section, **extra}


def only(*ports: int) -> Callable[[], List[Listener]]:
    """Real listener discovery, restricted to the test's own ports: other listeners on this
    host (a developer's exporters, other tests' servers) must not change the outcome."""

    def listeners() -> List[Listener]:
        return [lst for lst in listening_sockets() if lst.port in ports]

    return listeners


def wait_listening(port: int, proc: subprocess.Popen[bytes], tries: int = 200) -> None:
    """Until a LISTEN socket on `port` exists (bounded: tries x 25 ms)."""
    for _ in range(tries):
        if proc.poll() is not None:
            raise RuntimeError(f"process for port {port} exited with {proc.returncode}")
        if any(lst.port == port for lst in listening_sockets_netlink()):
            return
        time.sleep(0.025)
    raise RuntimeError(f"nothing listens on port {port}")


def stop(proc: subprocess.Popen[Any]) -> None:
    """Stops one process by its pid: TERM, then KILL after a bounded wait."""
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=5)


def kill(proc: subprocess.Popen[Any]) -> None:
    """An exporter that dies: KILL by its pid."""
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


@contextlib.contextmanager
def exporter(*args: str) -> Iterator[subprocess.Popen[str]]:
    """tests/watch_exporters.py as a process, handed over once it listens, killed by pid."""
    proc = subprocess.Popen(
        [sys.executable, WATCH_EXPORTER, *args],
        stdout=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().startswith("listening ")
        yield proc
    finally:
        kill(proc)


def finding(  # noqa: PLR0917 - a test factory where every default is meaningful
    port: int = 9100,
    exporter: Optional[str] = "node_exporter",
    version: Optional[str] = "1.5.0",
    kind: str = WILDCARD,
    address: str = "",
    outcome: str = IDENTIFIED,
    in_range: bool = False,
) -> Finding:
    """What identification would say of one listener."""
    listen = {WILDCARD: "0.0.0.0", LOOPBACK: "127.0.0.1"}.get(kind, address)
    listener = Listener(listen, port, socket.AF_INET, 1000 + port)
    return Finding(
        port=port,
        listeners=(listener,),
        process=None,
        address_kind=kind,
        address="" if kind == WILDCARD else listen,
        probe_address="127.0.0.1" if kind == WILDCARD else listen,
        outcome=outcome,
        reason="test",
        exporter=exporter,
        version=version,
        in_port_range=in_range,
    )


def run(
    config: Config,
    *findings: Finding,
    now: float = NOW,
    previous: Optional[Dict[str, SeenService]] = None,
) -> IntentSet:
    """The intents the pure builder makes of `findings` for NODE."""
    return build_intents(config, NODE, DiscoveryResult(tuple(findings)), now, previous=previous)


def seen_entry(service_id: str = "node-exporter-9100") -> SeenService:
    """A well-formed entry of discovered.json: a node_exporter seen a minute ago at NOW."""
    name, _, port = service_id.rpartition("-")
    return SeenService(
        id=service_id,
        name=name,
        port=int(port),
        address=NODE,
        tags=("node_exporter",),
        meta={
            "exporter": "node_exporter",
            "managed-by": "regagent",
            "metrics_path": "/metrics",
            "scheme": "http",
        },
        first_seen=NOW,
        last_seen=NOW + 60,
    )
