"""Seconds from a host's death (its `regagent run` killed -9) to its services critical in
Consul's health API, before and after the dead-man's switch (issue 25), side by side in one run;
and what the switch costs: session renewals per second per host, extrapolated to a fleet.

`--hosts` real daemons from each of two source trees, "before" (`--before`, default `main`,
extracted with `git archive`) and "after" (this checkout), each its own node with one static
service `app`, run together against one three-server emulator (tests/consulsim) that keeps
Consul's default `session_ttl_min` (10 s). Both use sync.interval 30s; "after" sets
consul.session.ttl to `--ttl` (default 10 s, the shortest a default Consul accepts; the
shipped default is max(30 s, 3 x interval) = 90 s, for which the numbers scale by 9).

1. Steady state for `--steady` seconds (after every switch is armed): the renew requests the
   emulator served, per "after" host per second, and extrapolated to 10,000 hosts, beside the
   formula 3 / TTL (one renew every TTL/3).
2. Every daemon is killed with SIGKILL at the same moment; then, polling
   `/v1/health/service/app?passing` every 0.1 s, the time until each host's instance is gone
   from it (its services critical), up to 2 x TTL + `--margin` seconds. Consul invalidates a
   session between TTL and 2 x TTL after its last renew.

    python3 bench/dead_host.py [--before main] [--hosts 5] [--ttl 10] [--steady 60]

About 2 minutes with the defaults. Everything started is stopped by pid.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))

from consulsim import SimCluster  # noqa: E402
from telemetry import source_tree  # noqa: E402

POLL = 0.1
FLEET = 10_000


class Host:
    """One `regagent run` from one source tree, with its own node and config file."""

    def __init__(self, name: str, tree: Path, cluster: SimCluster, workdir: Path, ttl: float):
        self.name = name
        self.node = f"bench-dead-{name}"
        self.home = workdir / name
        self.home.mkdir()
        path = self.home / "regagent.yaml"
        consul: Dict[str, Any] = {"servers": list(cluster.addresses)}
        if name.startswith("after"):
            consul["session"] = {"ttl": f"{ttl:g}s"}
        config = {
            "consul": consul,
            "node": {"name": self.node, "address": "127.0.0.1"},
            "sync": {"state_dir": str(self.home / "state")},
            "discovery": {"enabled": False},
            "services": [{"name": "app", "port": 9000, "check": {"type": "none"}}],
        }
        path.write_text(yaml.safe_dump(config))
        path.chmod(0o600)
        env = {**os.environ, "PYTHONPATH": str(tree)}
        env.pop("NOTIFY_SOCKET", None)
        with open(self.home / "stderr.log", "w") as stderr:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "regagent", "-c", str(path), "run"],
                stdout=subprocess.DEVNULL,
                stderr=stderr,
                stdin=subprocess.DEVNULL,
                env=env,
                cwd=str(self.home),
            )

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)


def passing_nodes(cluster: SimCluster) -> set:  # type: ignore[type-arg]
    data = cluster.get(cluster.live_server(), "/v1/health/service/app?stale&passing")
    return {entry["Node"]["Node"] for entry in data}


def armed_nodes(cluster: SimCluster) -> set:  # type: ignore[type-arg]
    data = cluster.get(cluster.live_server(), "/v1/health/state/passing?stale")
    return {c["Node"] for c in data if c["CheckID"] == "regagent:alive"}


def renews(cluster: SimCluster) -> int:
    endpoints = cluster.stats()["endpoints"]
    return sum(n for k, n in endpoints.items() if k.startswith("PUT /v1/session/renew"))


def requests(cluster: SimCluster) -> int:
    return int(sum(cluster.stats()["endpoints"].values()))


def wait(what: str, predicate: Any, limit: float) -> None:
    deadline = time.monotonic() + limit
    while not predicate():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(0.2)


def show(label: str, times: List[Optional[float]], limit: float) -> str:
    done = sorted(t for t in times if t is not None)
    missing = len(times) - len(done)
    if not done:
        return f"{label}: never critical (none of {len(times)} within {limit:g} s)"
    each = ", ".join(f"{t:.1f}" for t in done)
    tail = f", {missing} not within {limit:g} s" if missing else ""
    return f"{label}: p50 {statistics.median(done):5.1f} s, max {done[-1]:5.1f} s  ({each}{tail})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", default="main", help="git revision of the 'before' tree")
    parser.add_argument("--hosts", type=int, default=5, help="daemons per tree")
    parser.add_argument("--ttl", type=float, default=10.0, help="session TTL of 'after' (s)")
    parser.add_argument("--steady", type=float, default=60.0, help="steady-state window (s)")
    parser.add_argument("--margin", type=float, default=10.0, help="wait beyond 2 x TTL (s)")
    args = parser.parse_args()
    limit = 2 * args.ttl + args.margin
    with (
        tempfile.TemporaryDirectory(prefix="bench-dead-") as tmp,
        SimCluster(servers=3, election_delay="0.5s") as cluster,
    ):
        workdir = Path(tmp)
        trees = {"before": source_tree(args.before, workdir), "after": ROOT / "agent"}
        hosts = [
            Host(f"{variant}-{i}", tree, cluster, workdir, args.ttl)
            for variant, tree in trees.items()
            for i in range(args.hosts)
        ]
        after = [h for h in hosts if h.name.startswith("after")]
        try:
            everyone = {h.node for h in hosts}
            wait("every host registered", lambda: passing_nodes(cluster) >= everyone, 120)
            wait(
                "every switch armed",
                lambda: armed_nodes(cluster) >= {h.node for h in after},
                120,
            )
            first_renews, first_requests, started = renews(cluster), requests(cluster), time.time()
            time.sleep(args.steady)
            seconds = time.time() - started
            renew_rate = (renews(cluster) - first_renews) / seconds / len(after)
            request_rate = (requests(cluster) - first_requests) / seconds / len(hosts)

            for host in hosts:
                host.kill()
            killed = time.monotonic()
            critical: Dict[str, Optional[float]] = {h.node: None for h in hosts}
            while time.monotonic() - killed < limit and any(v is None for v in critical.values()):
                alive = passing_nodes(cluster)
                now = time.monotonic() - killed
                for node, seen in list(critical.items()):
                    if seen is None and node not in alive:
                        critical[node] = now
                time.sleep(POLL)
        finally:
            for host in hosts:
                host.kill()
    print(f"before = {args.before}, after = this tree; {args.hosts} hosts each, ")
    print(f"after: consul.session.ttl {args.ttl:g} s (Consul invalidates within 2 x TTL = ")
    print(f"{2 * args.ttl:g} s); sync.interval 30 s for both\n")
    print("killed -9 -> its service out of /v1/health/service/app?passing:")
    for variant in trees:
        times = [t for node, t in critical.items() if node.startswith(f"bench-dead-{variant}")]
        print("  " + show(f"{variant:6s}", times, limit))
    print(f"\nsteady state over {seconds:.0f} s:")
    print(
        f"  session renews: {renew_rate:.3f}/s per host (3 / TTL = {3 / args.ttl:.3f}); "
        f"{FLEET:,} hosts: {renew_rate * FLEET:,.0f}/s on the leader"
    )
    print(
        f"  at the default TTL max(30 s, 3 x 30 s) = 90 s: {3 / 90:.4f}/s per host, "
        f"{FLEET:,} hosts: {FLEET * 3 / 90:,.0f}/s"
    )
    print(f"  all requests the emulator served, per host (both trees): {request_rate:.3f}/s")


if __name__ == "__main__":
    main()
