"""How fast `regagent run` registers a new exporter and marks a dead one critical, and what the
watch costs while nothing happens.

Against the three-server emulator (tests/consulsim), with `regagent run` as a subprocess at its
defaults (sync.interval 30s +/- 5s, discovery.watch_interval 1s); only the discovery scope is
configured: `discovery.port_ranges` covers the bench's 20 ports; every known exporter port and
every exporter binary installed on this host is excluded, so exporters the host runs itself are
left alone.

1. Starts 20 exporters (tests/watch_exporters.py, a node_exporter-like /metrics) one by one at
   random moments; for each, the time from its listen() (the exporter prints it) to its service
   being visible and passing through a server other than the one regagent writes to.
2. Idle, watch on: regagent's CPU time (its process CPU clock, ns resolution) over a window
   that starts just after a full cycle and ends just after the 2nd full cycle after that
   (about a minute), scaled to one minute; the Consul requests made in that window, and how
   many ports of the host changed listeners meanwhile (other processes: on a shared build
   host, other test suites).
3. Kills the exporters one by one at random moments (each registered for more than the watch's
   5 s hold-off); for each, the time from the kill to its check being critical there.
4. Idle, watch off (`discovery.watch_interval: 0`): a new daemon, the same 20 exporters running
   again, the same kind of window.

Prints p50 / p95 / max of both latencies, the writes made, and CPU per idle minute with the
watch on and off side by side. Goals: registration p50 <= 1.5 s, max <= 3 s; critical
p50 <= 1.5 s; idle CPU with the watch on <= 1.2x off and under 1 % of one core.

    python3 bench/latency.py [--exporters 20] [--cycles 2] [--seed 1]
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Tuple

import psutil  # type: ignore[import-untyped]
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from consulsim import SimCluster  # noqa: E402
from regagent.discovery.exporters import load_exporter_table  # noqa: E402
from regagent.discovery.listeners import ListenerReader  # noqa: E402

HELPER = str(ROOT / "tests" / "watch_exporters.py")
NODE = "bench-latency-host"
POLL = 0.02  # seconds between two looks at the observing server
TIMEOUT = 60.0  # a registration or critical not seen by then is reported as a failure


def free_ports(count: int) -> List[int]:
    """`count` consecutive free ports (so one port range covers them)."""
    for _ in range(200):
        base = random.randint(20000, 60000)
        if all(_free(base + i) for i in range(count)):
            return [base + i for i in range(count)]
    raise RuntimeError("no free port range found")


def _free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("0.0.0.0", port))
        except OSError:
            return False
    return True


def write_config(workdir: Path, cluster: SimCluster, ports: List[int], watch: bool) -> Path:
    table = load_exporter_table()
    discovery: Dict[str, Any] = {
        "port_ranges": [f"{ports[0]}-{ports[-1]}"],
        "exclude_ports": sorted(set(table.by_port) - set(ports)),
        # Exporter binaries installed here (another engineer may run one on any port). Only
        # those: each pattern costs an fnmatch per candidate per pass, and a list of all ~100
        # names would make the bench measure the cost of an unusual configuration.
        "exclude_processes": sorted(
            {b for s in table.by_name.values() for b in s.binaries if shutil.which(b)}
        ),
    }
    if not watch:
        discovery["watch_interval"] = "0s"
    config = {
        "consul": {"servers": list(cluster.addresses)},
        "node": {"name": NODE},
        "sync": {"state_dir": str(workdir / "state")},
        "discovery": discovery,
    }
    path = workdir / ("regagent-on.yaml" if watch else "regagent-off.yaml")
    path.write_text(yaml.safe_dump(config))
    path.chmod(0o600)
    return path


class Exporter:
    """One exporter process; `listened` is the Unix time of its listen()."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.proc = subprocess.Popen(
            [sys.executable, HELPER, "serve", str(port), "--lifetime", "3600"],
            stdout=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().split()
        if not line or line[0] != "listening":
            raise RuntimeError(f"exporter on {port} did not start")
        self.listened = float(line[1])

    def kill(self) -> float:
        """Kills it by pid; returns the Unix time of the kill."""
        killed = time.time()
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)
        return killed


def statuses(cluster: SimCluster, server: int) -> Dict[str, str]:
    checks = cluster.get(server, f"/v1/health/node/{NODE}?stale") or []
    return {c["ServiceID"]: c["Status"] for c in checks if c.get("ServiceID")}


def sid(port: int) -> str:
    return f"node-exporter-{port}"


def start_daemon(config: Path, workdir: Path, name: str) -> subprocess.Popen:  # type: ignore[type-arg]
    log = open(workdir / f"{name}.log", "w")  # noqa: SIM115 - closed with the process
    return subprocess.Popen(
        [sys.executable, "-m", "regagent", "-c", str(config), "run"],
        stdout=subprocess.DEVNULL,
        stderr=log,
        stdin=subprocess.DEVNULL,
    )


def stop_daemon(proc: subprocess.Popen) -> None:  # type: ignore[type-arg]
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()


def full_reads(cluster: SimCluster) -> int:
    """Full cycles so far: each reads the node's services once."""
    return int(cluster.stats()["endpoints"].get("GET /v1/catalog/node/:arg", 0))


def writes(cluster: SimCluster) -> int:
    return sum(n for k, n in cluster.stats()["endpoints"].items() if k.startswith("PUT "))


def wait_cycles(cluster: SimCluster, count: int, limit: float = 120.0) -> None:
    """Returns 1 s after the `count`-th full cycle from now began (it is over by then)."""
    target = full_reads(cluster) + count
    deadline = time.monotonic() + limit
    while full_reads(cluster) < target:
        if time.monotonic() > deadline:
            raise RuntimeError("no full cycle came")
        time.sleep(0.1)
    time.sleep(1.0)


def writer_server(cluster: SimCluster) -> int:
    """The server regagent sent its writes to (the busiest with PUTs)."""
    per = [
        sum(n for k, n in s["endpoints"].items() if k.startswith("PUT "))
        for s in cluster.stats()["servers"]
    ]
    return per.index(max(per))


def cpu_seconds(pid: int) -> float:
    """CPU time of process `pid`, all threads (dead ones too), at nanosecond resolution: its
    process CPU clock, clock_getcpuclockid(3)'s encoding (utime+stime come in 10 ms ticks,
    too coarse for an idle daemon)."""
    try:
        return time.clock_gettime(((~pid) << 3) | 2)  # CPUCLOCK_SCHED of the whole process
    except OSError:
        times = psutil.Process(pid).cpu_times()
        return float(times.user + times.system)


def idle_cpu(cluster: SimCluster, pid: int, cycles: int) -> Tuple[float, float, int, int]:
    """(CPU seconds per minute, window seconds, Consul requests, host listener changes) over
    a window of `cycles` full cycles."""
    wait_cycles(cluster, 1)
    reader = ListenerReader()
    before = cpu_seconds(pid)
    started = time.monotonic()
    requests = cluster.stats()["requests"]
    target = full_reads(cluster) + cycles
    changes, keys = 0, reader().keys
    deadline = started + 300.0
    while full_reads(cluster) < target and time.monotonic() < deadline:
        time.sleep(0.25)
        now = reader().keys
        changes += len({port for port, _inode in keys ^ now})
        keys = now
    time.sleep(1.0)  # the last cycle is over
    after = cpu_seconds(pid)
    window = time.monotonic() - started
    reader.close()
    used = int(cluster.stats()["requests"] - requests)
    return (after - before) / window * 60.0, window, used, changes


def staggered(
    cluster: SimCluster,
    server: int,
    *,
    count: int,
    action: Any,
    status: str,
    gaps: List[float],
) -> Tuple[List[float], int]:
    """Runs `action(i) -> (service ID, Unix time)` at random moments while polling for
    `status`; returns the latencies and how many were never seen."""
    want: Dict[str, Tuple[str, float]] = {}
    seen: Dict[str, float] = {}
    next_at = time.monotonic()
    i = 0
    deadline = time.monotonic() + TIMEOUT + sum(gaps)
    while (i < count or len(seen) < len(want)) and time.monotonic() < deadline:
        if i < count and time.monotonic() >= next_at:
            service_id, since = action(i)
            want[service_id] = (status, since)
            next_at = time.monotonic() + gaps[i]
            i += 1
        now_status = statuses(cluster, server)
        now = time.time()
        for service_id, (wanted, since) in want.items():
            if service_id not in seen and now_status.get(service_id) == wanted:
                seen[service_id] = now - since
        time.sleep(POLL)
    return list(seen.values()), len(want) - len(seen)


def summary(samples: List[float]) -> str:
    if not samples:
        return "n/a"
    ordered = sorted(samples)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return f"p50 {statistics.median(ordered):.2f} s   p95 {p95:.2f} s   max {ordered[-1]:.2f} s"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--exporters", type=int, default=20)
    parser.add_argument("--cycles", type=int, default=2, help="full cycles per idle window")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    ports = free_ports(args.exporters)
    exporters: List[Exporter] = []
    daemons: List[subprocess.Popen] = []  # type: ignore[type-arg]
    with (
        tempfile.TemporaryDirectory(prefix="regagent-latency-") as tmp,
        SimCluster(servers=3) as cluster,
    ):
        workdir = Path(tmp)
        try:
            on = start_daemon(write_config(workdir, cluster, ports, True), workdir, "on")
            daemons.append(on)
            wait_cycles(cluster, 1, limit=30.0)
            observer = (writer_server(cluster) + 1) % 3

            def start(i: int) -> Tuple[str, float]:
                exporter = Exporter(ports[i])
                exporters.append(exporter)
                return sid(exporter.port), exporter.listened

            cluster.reset_stats()
            gaps = [rng.uniform(0.3, 2.5) for _ in range(args.exporters)]
            registered, missed_reg = staggered(
                cluster, observer, count=args.exporters, action=start, status="passing", gaps=gaps
            )
            reg_writes = writes(cluster)

            on_cpu, on_window, on_requests, on_churn = idle_cpu(cluster, on.pid, args.cycles)
            on_cycles = args.cycles

            time.sleep(6.0)  # every exporter registered > the 5 s hold-off ago
            cluster.reset_stats()

            def kill(i: int) -> Tuple[str, float]:
                exporter = exporters[i]
                return sid(exporter.port), exporter.kill()

            order = list(range(len(exporters)))
            rng.shuffle(order)
            gaps = [rng.uniform(0.3, 2.5) for _ in order]
            critical, missed_crit = staggered(
                cluster,
                observer,
                count=len(order),
                action=lambda i: kill(order[i]),
                status="critical",
                gaps=gaps,
            )
            crit_writes = writes(cluster)
            stop_daemon(on)

            exporters[:] = [Exporter(port) for port in ports]
            off = start_daemon(write_config(workdir, cluster, ports, False), workdir, "off")
            daemons.append(off)
            wait_cycles(cluster, 1, limit=30.0)
            off_cpu, off_window, off_requests, off_churn = idle_cpu(cluster, off.pid, args.cycles)
        finally:
            for daemon in daemons:
                stop_daemon(daemon)
            for exporter in exporters:
                if exporter.proc.poll() is None:
                    exporter.kill()

    print(f"regagent run, defaults; {args.exporters} exporters; emulator: 3 servers")
    print(f"read through server {observer}, not the one regagent writes to")
    print()
    print(f"listen() -> passing there:  {summary(registered)}   (missed: {missed_reg})")
    print(f"kill     -> critical there: {summary(critical)}   (missed: {missed_crit})")
    print(f"writes: {reg_writes} while registering, {crit_writes} while killing")
    print()
    print("idle CPU per minute      watch on          watch off")
    print(
        f"  CPU seconds / minute   {on_cpu:8.3f} s        {off_cpu:8.3f} s"
        f"     (on/off = {on_cpu / off_cpu if off_cpu else float('nan'):.2f}x)"
    )
    print(f"  % of one core          {on_cpu / 60 * 100:8.3f} %        {off_cpu / 60 * 100:8.3f} %")
    print(
        f"  window (s), cycles     {on_window:8.1f}, {on_cycles}         {off_window:8.1f}, "
        f"{args.cycles}"
    )
    print(f"  Consul requests        {on_requests:8d}          {off_requests:8d}")
    print(
        f"  host listener changes  {on_churn:8d}          {off_churn:8d}   (ports; other processes)"
    )
    print(f"  watch cost             {on_cpu - off_cpu:8.3f} s / minute")
    print(f"  (each window: from just after a full cycle to just after {args.cycles} more;")
    print("   CPU scaled to one minute; requests = 2 reads per full cycle if the watch is free)")


if __name__ == "__main__":
    main()
