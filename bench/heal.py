"""Seconds from the end of a full Consul outage to each host's first successful write, before and
after the early try (issue 22, item 6), side by side in one run.

`--hosts` real `regagent run` daemons from each of two source trees, "before" (`--before`,
default the commit before issue 22's fixes, extracted with `git archive`) and "after" (this
checkout), run together against one three-server emulator (tests/consulsim) with regagent's
defaults: sync.interval 30s +/- 5s, cool-downs from 5 s doubling to 5 min, 2 s connect and 10 s
read timeouts. For each outage length (`--outages`, default 60 s and 6 min): every server is
stopped (connections refused), each daemon is given one more static service (SIGHUP), and after
the outage every server is started again; from that moment, the time until each daemon's new
service is in the catalog (polled every 0.2 s), i.e. its first successful write. Also the
error-level lines each daemon logged during the outage.

    python3 bench/heal.py [--before REV] [--hosts 3] [--outages 60,360]

About 15 minutes with the defaults (a 6-minute outage, then up to 5 minutes of cool-down).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))

from consulsim import SimCluster  # noqa: E402
from telemetry import BEFORE, source_tree  # noqa: E402

POLL = 0.2
WAIT_MAX = 420.0  # cooldown_max (300 s) + an interval with jitter (35 s) + margin


class Host:
    """One `regagent run` from one source tree, with its own node name and config file."""

    def __init__(self, name: str, tree: Path, cluster: SimCluster, workdir: Path) -> None:
        self.name = name
        self.node = f"bench-heal-{name}"
        self.home = workdir / name
        self.home.mkdir()
        self.path = self.home / "regagent.yaml"
        self.services: List[Dict[str, Any]] = [
            {"name": "queue", "port": 9000, "check": {"type": "none"}}
        ]
        self.cluster = cluster
        self.write_config()
        env = {**os.environ, "PYTHONPATH": str(tree)}
        env.pop("NOTIFY_SOCKET", None)
        with open(self.home / "stderr.log", "w") as stderr:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "regagent", "-c", str(self.path), "run"],
                stdout=subprocess.DEVNULL,
                stderr=stderr,
                stdin=subprocess.DEVNULL,
                env=env,
                cwd=str(self.home),
            )

    def write_config(self) -> None:
        config = {
            "consul": {"servers": list(self.cluster.addresses)},
            "node": {"name": self.node, "address": "127.0.0.1"},
            "sync": {"state_dir": str(self.home / "state")},
            "discovery": {"enabled": False},
            "services": self.services,
        }
        self.path.write_text(yaml.safe_dump(config))
        self.path.chmod(0o600)

    def add_service(self, name: str, port: int) -> None:
        """One more static service, by a reload (as an operator would)."""
        self.services.append({"name": name, "port": port, "check": {"type": "none"}})
        self.write_config()
        os.kill(self.proc.pid, signal.SIGHUP)

    def log_lines(self) -> List[str]:
        return (self.home / "stderr.log").read_text(errors="replace").splitlines()

    def errors_since(self, line: int) -> int:
        """Error-level lines logged from line `line` of its stderr on."""
        count = 0
        for text in self.log_lines()[line:]:
            try:
                count += json.loads(text).get("level") == "error"
            except ValueError:
                count += 1  # not a log line: count it against the daemon
        return count

    def has(self, service_id: str) -> bool:
        try:
            server = self.cluster.live_server()
            data = self.cluster.get(server, f"/v1/catalog/node/{self.node}?stale")
        except Exception:
            return False
        return data is not None and service_id in (data.get("Services") or {})

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)


def wait_all(hosts: List[Host], service_id: str, limit: float) -> Dict[str, Optional[float]]:
    """Seconds from now until each host has `service_id` in the catalog (None: not by `limit`)."""
    started = time.monotonic()
    found: Dict[str, Optional[float]] = {host.name: None for host in hosts}
    while time.monotonic() - started < limit and any(v is None for v in found.values()):
        for host in hosts:
            if found[host.name] is None and host.has(service_id):
                found[host.name] = time.monotonic() - started
        time.sleep(POLL)
    return found


def outage(
    cluster: SimCluster, hosts: List[Host], seconds: float
) -> Tuple[Dict[str, Optional[float]], Dict[str, int]]:
    """(seconds from the heal to each host's first write, error lines each logged meanwhile)."""
    port = 9100 + int(seconds) % 800
    name = f"extra{int(seconds)}"
    marks = {host.name: len(host.log_lines()) for host in hosts}
    for i in range(len(cluster.addresses)):
        cluster.stop_server(i)
    for host in hosts:
        host.add_service(name, port)
    time.sleep(seconds)
    errors = {host.name: host.errors_since(marks[host.name]) for host in hosts}
    for i in range(len(cluster.addresses)):
        cluster.start_server(i)
    return wait_all(hosts, f"{name}-{port}", WAIT_MAX), errors


def show(label: str, times: List[Optional[float]]) -> str:
    done = sorted(t for t in times if t is not None)
    missing = len(times) - len(done)
    if not done:
        return f"{label}: none within {WAIT_MAX:g} s"
    each = ", ".join(f"{t:.1f}" for t in done)
    tail = f", {missing} not within {WAIT_MAX:g} s" if missing else ""
    median = statistics.median(done)
    return f"{label}: median {median:5.1f} s, max {done[-1]:5.1f} s  ({each}{tail})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", default=BEFORE, help="git revision of the 'before' tree")
    parser.add_argument("--hosts", type=int, default=3, help="daemons per tree")
    parser.add_argument("--outages", default="60,360", help="outage lengths in seconds")
    args = parser.parse_args()
    lengths = [float(x) for x in args.outages.split(",") if x]
    report: List[str] = []
    with (
        tempfile.TemporaryDirectory(prefix="bench-heal-") as tmp,
        SimCluster(servers=3, election_delay="0.5s") as cluster,
    ):
        workdir = Path(tmp)
        trees = {"before": source_tree(args.before, workdir), "after": ROOT / "agent"}
        hosts = [
            Host(f"{variant}-{i}", tree, cluster, workdir)
            for variant, tree in trees.items()
            for i in range(args.hosts)
        ]
        try:
            first = wait_all(hosts, "queue-9000", 120.0)
            if any(t is None for t in first.values()):
                raise SystemExit(f"not every daemon registered at start: {first}")
            for seconds in lengths:
                found, errors = outage(cluster, hosts, seconds)
                report.append(f"outage of every server for {seconds:g} s, heal -> first write:")
                for variant in trees:
                    times = [t for name, t in found.items() if name.startswith(variant)]
                    lines = sorted(n for name, n in errors.items() if name.startswith(variant))
                    report.append("  " + show(f"{variant:6s}", times))
                    report.append(f"          error lines logged during the outage: {lines}")
                print("\n".join(report[-5:]), flush=True)
        finally:
            for host in hosts:
                host.stop()
    print(f"\nbefore = {args.before}, after = this tree; {args.hosts} daemons each")
    print("\n".join(report))


if __name__ == "__main__":
    main()
