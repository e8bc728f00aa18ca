"""Footprint of `regagent run`: RSS and CPU per steady-state cycle, beside a bare interpreter.

The daemon runs as a real process against the three-server emulator with 20 static services,
each TCP-checked against a listener this script holds open (so every check passes and the
steady state writes nothing), telemetry on (its endpoint registered as the 21st service),
discovery off (its cost is bench/discovery.py's), `sync.interval` 1s (its minimum). Cycles
are counted by the `STATUS=` datagrams the daemon sends to a notify socket this script owns;
CPU is the child's user+system time over `--cycles` cycles after `WARMUP`.

Goals: RSS under 40 MB; under 3 ms CPU per steady-state cycle.

    python3 bench/footprint.py [--cycles 100] [--profile out.prof]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import selectors
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import List, Optional, Tuple

import psutil
import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from consulsim import SimCluster  # noqa: E402 - tests/ on the path first

SERVICES = 20
WARMUP = 10
RSS_GOAL_MB = 40.0
CPU_GOAL_MS = 3.0


def listeners(count: int) -> List[socket.socket]:
    """Loopback listeners for the TCP checks, with a thread of this script accepting and
    closing their connections (a full backlog would make the checks time out)."""
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
    return socks


def write_config(workdir: Path, cluster: SimCluster, ports: List[int], telemetry: int) -> Path:
    services = [
        {"name": f"svc{i}", "port": port, "tags": ["bench"], "check": {"type": "tcp"}}
        for i, port in enumerate(ports)
    ]
    config = {
        "consul": {"servers": cluster.addresses, "connect_timeout": "1s", "read_timeout": "2s"},
        "node": {"name": "footprint-host"},
        "sync": {"interval": "1s", "jitter": "0s", "state_dir": str(workdir)},
        "discovery": {"enabled": False},
        "services": services,
        "telemetry": {"listen": f"127.0.0.1:{telemetry}"},
        "log": {"level": "warning", "format": "json"},
    }
    path = workdir / "regagent.yaml"
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


def idle_rss(code: str) -> float:
    """RSS (MB) of an interpreter that ran `code` and then sleeps."""
    proc = subprocess.Popen(
        [sys.executable, "-c", f"{code}\nimport time\nprint('ok', flush=True)\ntime.sleep(60)"],
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


def measure(cycles: int, profile: Optional[str]) -> Tuple[float, float, int]:
    """(RSS MB, CPU ms per steady-state cycle, writes in the steady state)."""
    workdir = Path(tempfile.mkdtemp(prefix="ra-bench-", dir="/tmp"))
    socks = listeners(SERVICES)
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(workdir / "notify"))
    cluster = SimCluster(servers=3).start()
    proc: Optional[subprocess.Popen[bytes]] = None
    try:
        ports = [s.getsockname()[1] for s in socks]
        config = write_config(workdir, cluster, ports, free_port())
        command = [sys.executable, "-m", "regagent", "-c", str(config), "run"]
        if profile:
            command = [sys.executable, "-m", "cProfile", "-o", profile, *command[1:]]
        env = {**os.environ, "NOTIFY_SOCKET": str(workdir / "notify")}
        proc = subprocess.Popen(command, env=env, stdin=subprocess.DEVNULL)
        child = psutil.Process(proc.pid)
        count_statuses(notify, WARMUP, timeout=60)
        cluster.reset_stats()
        before = cpu_seconds(child)
        threads_before = {t.id: t.user_time + t.system_time for t in child.threads()}
        count_statuses(notify, cycles, timeout=cycles * 5)
        spent = cpu_seconds(child) - before
        for thread in child.threads():
            used = thread.user_time + thread.system_time - threads_before.get(thread.id, 0.0)
            kind = "main" if thread.id == child.pid else f"thread {thread.id}"
            print(f"  {kind:16} {used * 1000 / cycles:6.2f} ms per cycle")
        writes = int(cluster.stats()["writes_applied"])
        rss = float(child.memory_info().rss) / 2**20
        return rss, spent * 1000 / cycles, writes
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=30)
        cluster.stop()
        notify.close()
        for sock in socks:
            sock.close()
        shutil.rmtree(workdir)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cycles", type=int, default=100)
    parser.add_argument("--profile", help="run the daemon under cProfile, stats to this file")
    args = parser.parse_args()
    bare = idle_rss("pass")
    imported = idle_rss("import regagent.cli, regagent.app")
    rss, cpu_ms, writes = measure(args.cycles, args.profile)
    print(f"bare interpreter            RSS {bare:6.1f} MB")
    print(f"interpreter + regagent      RSS {imported:6.1f} MB  ({imported / bare:.2f}x bare)")
    print(
        f"regagent run, {SERVICES} services  RSS {rss:6.1f} MB  ({rss / bare:.2f}x bare, "
        f"{rss / imported:.2f}x imported; goal < {RSS_GOAL_MB:g} MB)"
    )
    print(
        f"CPU per steady-state cycle  {cpu_ms:6.2f} ms over {args.cycles} cycles "
        f"(goal < {CPU_GOAL_MS:g} ms); writes in steady state: {writes}"
    )
    ok = rss < RSS_GOAL_MB and cpu_ms < CPU_GOAL_MS
    print("goals met" if ok else "goals NOT met")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
