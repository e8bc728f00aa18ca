"""What hostile clients of the metrics endpoint do to `regagent run`, before and after the bounded
endpoint (issue 22, items 4 and 5), side by side in one run.

For each of two source trees, "before" (`--before`, default the commit before those fixes,
extracted with `git archive`) and "after" (this checkout), a real `regagent run` with
`telemetry.listen` on loopback against the three-server emulator (tests/consulsim), then:

1. slow-header clients (tests/hostile_clients.py: each sends a request line, then a header
   byte every second, and reconnects when closed): 4 from one address, 500 from one address,
   500 over 100 addresses; meanwhile `--scrapes` scrapes, one every 0.5 s, each with a 5 s
   timeout, counted when answered 200; the daemon's CPU and the sync cycles it completed
   during the attack (from its own metrics, scraped before and after);
2. a flood of connections closed with a reset (SO_LINGER 0) for `--flood` seconds: the
   tracebacks, and the stderr lines that are not one JSON object, the daemon wrote meanwhile.

    python3 bench/telemetry.py [--before REV] [--scrapes 12] [--flood 15]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import psutil  # type: ignore[import-untyped]
import yaml
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from consulsim import SimCluster  # noqa: E402
from hostile_clients import rst_flood, slow_header_clients  # noqa: E402

BEFORE = "92c0f3f"  # the commit before issue 22's fixes
SCENARIOS: List[Tuple[str, int, Sequence[str]]] = [
    ("4 slow clients, 1 address", 4, ["127.0.0.2"]),
    ("500 slow clients, 1 address", 500, ["127.0.0.2"]),
    ("500 slow clients, 100 addresses", 500, [f"127.0.1.{i}" for i in range(1, 101)]),
]


def source_tree(rev: str, workdir: Path) -> Path:
    """`agent/` of `rev`, extracted into `workdir`; what PYTHONPATH points at."""
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", "--format=tar", rev, "agent"],
        check=True,
        capture_output=True,
    ).stdout
    target = workdir / f"tree-{rev}"
    target.mkdir()
    with tempfile.TemporaryFile() as tar_file:
        tar_file.write(archive)
        tar_file.seek(0)
        with tarfile.open(fileobj=tar_file) as tar:
            tar.extractall(target)  # our own repository
    return target / "agent"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Daemon:
    """`regagent run` from one source tree, its stderr in a file; stopped by pid."""

    def __init__(self, name: str, tree: Path, cluster: SimCluster, workdir: Path) -> None:
        self.name = name
        self.port = free_port()
        home = workdir / name
        home.mkdir()
        config = {
            "consul": {"servers": list(cluster.addresses)},
            "node": {"name": f"bench-telemetry-{name}", "address": "127.0.0.1"},
            "sync": {"interval": "2s", "jitter": "100ms", "state_dir": str(home / "state")},
            "discovery": {"enabled": False},
            "services": [{"name": "queue", "port": 9000, "check": {"type": "none"}}],
            "telemetry": {"listen": f"127.0.0.1:{self.port}"},
        }
        path = home / "regagent.yaml"
        path.write_text(yaml.safe_dump(config))
        path.chmod(0o600)
        self.stderr_path = home / "stderr.log"
        env = {**os.environ, "PYTHONPATH": str(tree)}
        env.pop("NOTIFY_SOCKET", None)
        with open(self.stderr_path, "w") as stderr:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "regagent", "-c", str(path), "run"],
                stdout=subprocess.DEVNULL,
                stderr=stderr,
                stdin=subprocess.DEVNULL,
                env=env,
                cwd=str(home),
            )
        self.process = psutil.Process(self.proc.pid)
        for _ in range(200):
            if scrape(self.port, timeout=1.0) is not None:
                return
            time.sleep(0.1)
        raise RuntimeError(f"{name}: the metrics endpoint never answered")

    def cpu(self) -> float:
        times = self.process.cpu_times()
        return float(times.user + times.system)

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)

    def stderr_lines(self) -> List[str]:
        return self.stderr_path.read_text(errors="replace").splitlines()


def scrape(port: int, timeout: float = 5.0) -> Optional[str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=timeout) as got:
            return got.read().decode() if got.status == 200 else None
    except OSError:
        return None


def cycles(text: Optional[str]) -> Optional[float]:
    if text is None:
        return None
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "regagent_sync_cycles_total" and sample.labels == {
                "result": "success"
            }:
                return float(sample.value)
    return None


def settled_cycles(port: int) -> Optional[float]:
    """The success counter, read once the endpoint answers again (bounded)."""
    for _ in range(60):
        found = cycles(scrape(port, timeout=2.0))
        if found is not None:
            return found
        time.sleep(0.5)
    return None


def attack(daemon: Daemon, count: int, sources: Sequence[str], scrapes: int) -> Dict[str, Any]:
    before_cycles = settled_cycles(daemon.port)
    with slow_header_clients("127.0.0.1", daemon.port, count, every=1.0, sources=sources) as slow:
        for _ in range(100):
            if slow.connects >= count:
                break
            time.sleep(0.05)
        time.sleep(2.0)  # every client connected and dripping
        cpu, started = daemon.cpu(), time.monotonic()
        answered = 0
        for _ in range(scrapes):
            answered += scrape(daemon.port) is not None
            time.sleep(0.5)
        took = time.monotonic() - started
        cpu_share = (daemon.cpu() - cpu) / took
        connects = slow.connects
    after_cycles = settled_cycles(daemon.port)
    done = None
    if before_cycles is not None and after_cycles is not None:
        done = after_cycles - before_cycles
    return {
        "answered": answered,
        "cpu": cpu_share,
        "cycles": done,
        "window": took,
        "connects": connects,
    }


def flood(daemon: Daemon, seconds: float) -> Dict[str, Any]:
    skip = len(daemon.stderr_lines())
    made = rst_flood("127.0.0.1", daemon.port, seconds)
    time.sleep(1.0)
    lines = daemon.stderr_lines()[skip:]
    not_json = 0
    for line in lines:
        try:
            json.loads(line)
        except ValueError:
            not_json += 1
    tracebacks = sum("Traceback (most recent call last)" in line for line in lines)
    return {
        "connections": made,
        "tracebacks": tracebacks,
        "not_json": not_json,
        "lines": len(lines),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", default=BEFORE, help="git revision of the 'before' tree")
    parser.add_argument("--scrapes", type=int, default=12)
    parser.add_argument("--flood", type=float, default=15.0, help="seconds of reset flood")
    args = parser.parse_args()
    results: Dict[str, Dict[str, Any]] = {}
    with (
        tempfile.TemporaryDirectory(prefix="bench-telemetry-") as tmp,
        SimCluster(servers=3) as cluster,
    ):
        workdir = Path(tmp)
        trees = {"before": source_tree(args.before, workdir), "after": ROOT / "agent"}
        for name, tree in trees.items():
            daemon = Daemon(name, tree, cluster, workdir)
            try:
                results[name] = {
                    title: attack(daemon, count, sources, args.scrapes)
                    for title, count, sources in SCENARIOS
                }
                results[name]["flood"] = flood(daemon, args.flood)
            finally:
                daemon.stop()
    print(f"metrics endpoint under hostile clients: before = {args.before}, after = this tree")
    print(f"  scrapes answered of {args.scrapes} (one every 0.5 s, 5 s timeout each):")
    for title, _, _ in SCENARIOS:
        b, a = results["before"][title], results["after"][title]
        print(
            f"    {title:33s} before {b['answered']:2d}  after {a['answered']:2d}"
            f"   (daemon CPU {b['cpu']:.0%} / {a['cpu']:.0%} of a core;"
            f" sync cycles done {b['cycles']} / {a['cycles']}"
            f" in ~{a['window']:.0f} s + settling;"
            f" client connects {b['connects']} / {a['connects']})"
        )
    b, a = results["before"]["flood"], results["after"]["flood"]
    print(f"  reset flood, {args.flood:g} s:")
    print(
        f"    connections      before {b['connections']}  after {a['connections']}\n"
        f"    tracebacks       before {b['tracebacks']}  after {a['tracebacks']}\n"
        f"    non-JSON lines   before {b['not_json']}  after {a['not_json']}"
        f"   (stderr lines: {b['lines']} / {a['lines']})"
    )


if __name__ == "__main__":
    main()
