"""Footprint of `regagent run`, before and after: RSS and CPU per steady-state cycle, side by side.

For each of two source trees, "before" (`--before`, default the commit before issue 23's
footprint work, extracted with `git archive`) and "after" (this checkout), in alternating
order over `--rounds` rounds, a real `regagent run` against the three-server emulator with 20
static services, each TCP-checked against a listener this script holds open (so every check
passes and the steady state writes nothing), telemetry on (its endpoint registered as the 21st
service), discovery off (its cost is bench/discovery.py's), `sync.interval` 1s (its minimum).
Cycles are counted by the `STATUS=` datagrams the daemon sends to a notify socket this script
owns; CPU is the child's user+system time over `--cycles` cycles after `WARMUP`, RSS is read at
the end. Also, once per tree: the same daemon with telemetry off (RSS after `WARMUP` cycles),
and the peak RSS of the one-shot commands `check-config` and `discover`.

The medians of the rounds are printed for both trees. CPU per cycle on a shared machine moves
by a millisecond from run to run: compare the two columns of one run, not runs.

Goals: RSS at most 30 MB; at most 3 ms CPU per steady-state cycle.

    python3 bench/footprint.py [--before REV] [--rounds 3] [--cycles 60] [--threads]
                               [--python /usr/bin/python3]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import selectors
import shutil
import socket
import statistics
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterator, List, Optional

import psutil
import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from consulsim import SimCluster  # noqa: E402 - tests/ on the path first

BEFORE = "fb9625b"  # main before issue 23's third refactor and the footprint work
SERVICES = 20
WARMUP = 10
RSS_GOAL_MB = 30.0
CPU_GOAL_MS = 3.0


def extract(rev: str, workdir: Path) -> Path:
    """`agent/` of `rev`, extracted into `workdir`; what PYTHONPATH points at."""
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", "--format=tar", rev, "agent"],
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


@contextlib.contextmanager
def listeners(count: int) -> Iterator[List[int]]:
    """Loopback listeners for the TCP checks, with a thread of this script accepting and
    closing their connections (a full backlog would make the checks time out); their ports."""
    socks = []
    selector = selectors.DefaultSelector()
    for _ in range(count):
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        sock.listen(128)
        sock.setblocking(False)
        selector.register(sock, selectors.EVENT_READ)
        socks.append(sock)

    def accept() -> None:
        while True:
            try:
                for key, _ in selector.select(timeout=1):
                    with contextlib.suppress(OSError):
                        key.fileobj.accept()[0].close()  # type: ignore[union-attr]
            except (OSError, ValueError):  # closed at the end
                return

    threading.Thread(target=accept, daemon=True).start()
    try:
        yield [s.getsockname()[1] for s in socks]
    finally:
        for sock in socks:
            sock.close()
        selector.close()


def write_config(
    workdir: Path, servers: List[str], ports: List[int], telemetry: Optional[int]
) -> Path:
    services = [
        {"name": f"svc{i}", "port": port, "tags": ["bench"], "check": {"type": "tcp"}}
        for i, port in enumerate(ports)
    ]
    config = {
        "consul": {"servers": servers, "connect_timeout": "1s", "read_timeout": "2s"},
        "node": {"name": "footprint-host"},
        "sync": {"interval": "1s", "jitter": "0s", "state_dir": str(workdir)},
        "discovery": {"enabled": False},
        "services": services,
        "telemetry": {"listen": f"127.0.0.1:{telemetry}" if telemetry else ""},
        "log": {"level": "warning", "format": "json"},
    }
    path = workdir / f"regagent-{telemetry or 'off'}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def cpu_seconds(proc: psutil.Process) -> float:
    times = proc.cpu_times()
    return float(times.user + times.system)


def count_statuses(notify: socket.socket, wanted: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    seen = 0
    while seen < wanted:
        left = deadline - time.monotonic()
        if left <= 0:
            raise RuntimeError(f"only {seen} of {wanted} cycles within {timeout}s")
        notify.settimeout(left)
        if b"STATUS=" in notify.recv(4096):
            seen += 1


@dataclass
class Run:
    rss_mb: float
    cpu_ms: float  # per steady-state cycle; 0 when not measured
    writes: int  # in the steady state


def run_daemon(
    tree: Path,
    workdir: Path,
    telemetry: bool,
    cycles: int,
    *,
    threads: bool = False,
    python: str = sys.executable,
) -> Run:
    """`regagent run` from `tree` against a fresh emulator: RSS at the end, CPU per cycle
    over `cycles` cycles after WARMUP (none measured with `cycles` 0)."""
    cluster = SimCluster(servers=3).start()
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify_path = workdir / f"notify-{time.monotonic_ns()}"
    notify.bind(str(notify_path))
    state = Path(tempfile.mkdtemp(prefix="state-", dir=workdir))
    proc: Optional[subprocess.Popen[bytes]] = None
    try:
        with listeners(SERVICES) as ports:
            config = write_config(
                state, cluster.addresses, ports, free_port() if telemetry else None
            )
            env = {**os.environ, "NOTIFY_SOCKET": str(notify_path), "PYTHONPATH": str(tree)}
            proc = subprocess.Popen(
                [python, "-m", "regagent", "-c", str(config), "run"],
                env=env,
                stdin=subprocess.DEVNULL,
                cwd=str(workdir),
            )
            child = psutil.Process(proc.pid)
            count_statuses(notify, WARMUP, timeout=60)
            cluster.reset_stats()
            before = cpu_seconds(child)
            threads_before = {t.id: t.user_time + t.system_time for t in child.threads()}
            spent = 0.0
            if cycles:
                count_statuses(notify, cycles, timeout=cycles * 5)
                spent = cpu_seconds(child) - before
            if threads and cycles:
                for thread in child.threads():
                    used = thread.user_time + thread.system_time - threads_before.get(thread.id, 0)
                    kind = "main" if thread.id == child.pid else f"thread {thread.id}"
                    print(f"    {kind:16} {used * 1000 / cycles:6.2f} ms per cycle")
            writes = int(cluster.stats()["writes_applied"])
            rss = float(child.memory_info().rss) / 2**20
            return Run(rss, spent * 1000 / cycles if cycles else 0.0, writes)
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=30)
        cluster.stop()
        notify.close()


def peak_rss_mb(tree: Path, workdir: Path, python: str, *command: str) -> float:
    """Peak RSS (MB) of a one-shot `regagent` command from `tree`."""
    env = {**os.environ, "PYTHONPATH": str(tree)}
    proc = subprocess.Popen(
        [python, "-m", "regagent", *command],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        cwd=str(workdir),
    )
    _, _, usage = os.wait4(proc.pid, 0)
    proc.returncode = 0  # reaped above
    return usage.ru_maxrss / 1024


def idle_rss(python: str, code: str) -> float:
    """RSS (MB) of an interpreter that ran `code` and then sleeps."""
    proc = subprocess.Popen(
        [python, "-c", f"{code}\nimport time\nprint('ok', flush=True)\ntime.sleep(60)"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        proc.stdout.readline()
        return float(psutil.Process(proc.pid).memory_info().rss) / 2**20
    finally:
        proc.kill()
        proc.wait()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--before", default=BEFORE, help=f"git revision (default {BEFORE})")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--cycles", type=int, default=60)
    parser.add_argument("--threads", action="store_true", help="CPU per thread of each run")
    parser.add_argument(
        "--python",
        default=sys.executable,
        help="interpreter of the daemons (e.g. /usr/bin/python3 with Debian's packages, as the "
        ".deb runs; default: this one)",
    )
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="ra-footprint-", dir="/tmp"))
    try:
        trees = {"before": extract(args.before, workdir), "after": REPO / "agent"}
        runs: Dict[str, List[Run]] = {name: [] for name in trees}
        for round_ in range(args.rounds):
            order = list(trees) if round_ % 2 == 0 else list(reversed(trees))
            for name in order:
                run = run_daemon(
                    trees[name],
                    workdir,
                    True,
                    args.cycles,
                    threads=args.threads,
                    python=args.python,
                )
                runs[name].append(run)
                print(
                    f"  round {round_ + 1} {name:6}  RSS {run.rss_mb:5.1f} MB  "
                    f"CPU {run.cpu_ms:5.2f} ms/cycle  writes {run.writes}",
                    flush=True,
                )
        config = write_config(workdir, ["127.0.0.1:1"], [], None)  # neither command asks it
        rows = {
            name: {
                "rss": statistics.median(r.rss_mb for r in runs[name]),
                "cpu": statistics.median(r.cpu_ms for r in runs[name]),
                "writes": max(r.writes for r in runs[name]),
                "quiet": run_daemon(tree, workdir, False, 0, python=args.python).rss_mb,
                "check": peak_rss_mb(tree, workdir, args.python, "-c", str(config), "check-config"),
                "discover": peak_rss_mb(tree, workdir, args.python, "-c", str(config), "discover"),
            }
            for name, tree in trees.items()
        }
    finally:
        shutil.rmtree(workdir)
    bare = idle_rss(args.python, "pass")
    before, after = rows["before"], rows["after"]
    print(f"\nbefore = {args.before}, after = this checkout; medians of {args.rounds} rounds")
    print(f"interpreter: {args.python}")
    print(f"{'':44} {'before':>8} {'after':>8}")
    lines = [
        (f"regagent run, {SERVICES} services: RSS (MB)", "rss", "{:8.1f}"),
        ("CPU per steady-state cycle (ms)", "cpu", "{:8.2f}"),
        ("writes in the steady state", "writes", "{:8d}"),
        ("regagent run, telemetry off: RSS (MB)", "quiet", "{:8.1f}"),
        ("regagent check-config: peak RSS (MB)", "check", "{:8.1f}"),
        ("regagent discover: peak RSS (MB)", "discover", "{:8.1f}"),
    ]
    for label, key, fmt in lines:
        print(f"{label:44} {fmt.format(before[key])} {fmt.format(after[key])}")
    print(f"{'bare interpreter: RSS (MB)':44} {bare:8.1f}")
    ok = after["rss"] <= RSS_GOAL_MB and after["cpu"] <= CPU_GOAL_MS
    print(
        f"goals (RSS <= {RSS_GOAL_MB:g} MB, CPU <= {CPU_GOAL_MS:g} ms): "
        f"{'met' if ok else 'NOT met'} by after"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
