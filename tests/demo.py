"""The README's first command: regagent's main job on this host, with no Consul and no exporter
around.

Starts a small exporter of its own (a prometheus_client server in a child process, serving
`demo_exporter_build_info{version="1.0.0"}` on a free port at this host's address) and the
bundled three-server Consul emulator, then runs the real `regagent` commands against them:
`discover` finds the exporter and names it with its version, `sync` registers it (with this
host's other exporters, if it has any), a second `sync` writes nothing; then the demo stops its
exporter, and the next `sync` turns its check critical while it stays registered. Everything it
started is stopped by pid.

    python3 -m venv .venv && .venv/bin/pip install -q -e . && .venv/bin/python -m tests.demo
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, Iterator, Tuple

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))

from consulsim import SimCluster

DEMO_VERSION = "1.0.0"
PORTS = range(9500, 9600)  # a port in the exporters' range that no known exporter uses
EXPORTER = """
import socket, sys, time
from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server
socket.getfqdn = lambda name="": name  # http.server looks its address up in DNS: no need here
registry = CollectorRegistry()
info = Gauge("demo_exporter_build_info", "A metric with a constant '1' value labeled by version "
             "from which demo_exporter was built.", ["version"], registry=registry)
info.labels(version=sys.argv[3]).set(1)
Counter("demo_exporter_scrapes", "Scrapes served.", registry=registry).inc()
start_http_server(int(sys.argv[2]), addr=sys.argv[1], registry=registry)
print("ready", flush=True)
time.sleep(300)  # the demo stops it long before; this is in case the demo dies badly
"""


def regagent(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "regagent", "-c", str(config), *args]
    print(f"\n$ regagent -c {config.name} {' '.join(args)}", flush=True)
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    sys.stdout.write(shortened(result.stdout) if args[0] == "discover" else result.stdout)
    sys.stderr.write(result.stderr)
    return result


def shortened(listing: str) -> str:
    """`discover`'s table without the rows of listeners that are not candidates (a busy host
    has many), and a line that says how many were left out."""
    lines = listing.splitlines(keepends=True)
    left_out = [line for line in lines if "not a candidate" in line]
    kept = [line for line in lines if line not in left_out]
    if left_out:
        note = f"  ({len(left_out)} more listeners, not candidates, left out here)\n"
        kept.insert(next(i for i, line in enumerate(kept) if not line.strip()), note)
    return "".join(kept)


def host_address() -> str:
    """The address this host is reached at: the source of its route towards the world (a UDP
    connect sends nothing), or loopback when it has no other address."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))  # TEST-NET-1: only the route is looked up
            address: str = probe.getsockname()[0]
        except OSError:
            return "127.0.0.1"
    return address


def free_port(address: str) -> int:
    """A port of PORTS free on `address` (else any free port)."""
    for port in [*PORTS, 0]:
        with socket.socket() as sock:
            try:
                sock.bind((address, port))
            except OSError:
                continue
            chosen: int = sock.getsockname()[1]
            return chosen
    raise RuntimeError("no free port")


@contextlib.contextmanager
def demo_exporter(address: str) -> Iterator[Tuple[subprocess.Popen[bytes], int]]:
    """The demo's exporter, listening on `address`; stopped by its pid (also if the demo fails)."""
    port = free_port(address)
    proc = subprocess.Popen(
        [sys.executable, "-c", EXPORTER, address, str(port), DEMO_VERSION],
        stdout=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
    )
    try:
        assert proc.stdout is not None
        if proc.stdout.readline() != b"ready\n":
            raise RuntimeError(f"the demo exporter did not start (exit code {proc.wait(5)})")
        yield proc, port
    finally:
        stop(proc)


def stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM by pid, SIGKILL after 5 s; safe to call twice."""
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=5)
    if proc.stdout is not None:
        proc.stdout.close()


def write_config(path: Path, cluster: SimCluster, address: str, port: int, state: Path) -> None:
    config: Dict[str, Any] = {
        "consul": {"servers": cluster.addresses},
        # The emulator listens on loopback, so `auto` would pick loopback: name the address
        # Prometheus would reach this host at.
        "node": {"address": address},
        "sync": {"state_dir": str(state)},
        # The demo's port is no known exporter's default: the operator names the ports to look at.
        "discovery": {"port_ranges": [f"{port}-{port}"]},
    }
    path.write_text(yaml.safe_dump(config))


def main() -> int:
    address = host_address()
    with tempfile.TemporaryDirectory(prefix="regagent-demo-") as tmp:
        workdir = Path(tmp)
        config = workdir / "regagent.yaml"
        with demo_exporter(address) as (exporter, port), SimCluster(servers=3) as cluster:
            print(f"Consul emulator: three servers at {', '.join(cluster.addresses)}")
            print(
                f"Demo exporter: demo_exporter {DEMO_VERSION} on {address}:{port} "
                f"(pid {exporter.pid}), in discovery.port_ranges"
            )
            write_config(config, cluster, address, port, workdir / "state")
            regagent(config, "discover")
            regagent(config, "sync", "--dry-run")
            synced = regagent(config, "sync")
            again = regagent(config, "sync")
            regagent(config, "status")
            print(f"\nStopping the demo exporter (pid {exporter.pid}): Prometheus would see")
            print("up == 0; regagent keeps the target registered and turns its check critical.")
            stop(exporter)
            time.sleep(1)  # "since" is whole seconds: the stop shows after the last sighting
            after = regagent(config, "sync")
            regagent(config, "status")
            node = socket.gethostname()
            held = cluster.catalog_node_services(node)
            print(f"\nConsul's catalog entry for node {node} (GET /v1/catalog/node/{node}):")
            print(json.dumps(held, indent=2))
        print("\nEmulator stopped.")
        ok = all(result.returncode == 0 for result in (synced, again, after))
        return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
