"""Listener discovery cost vs. established connections (design decision 7).

Opens 0, 5,000 and 15,000 established loopback TCP connections and prints, for each level, the
median time of:
  - regagent's listener discovery (`regagent.discovery.listeners.listening_sockets`),
  - `psutil.net_connections("tcp")`,
  - `ss -Htln` (a subprocess, as an operator would run it: mostly process start-up),
  - for information, regagent's /proc/net/tcp fallback (which is O(connections)),
with the ratios psutil/regagent and regagent/ss; then the median time of a whole discovery pass
(`regagent.discovery.identify.discover` over this host's real listeners, probes stubbed so that
only regagent's own work is timed):
  - warm: the process-owner cache kept between passes, as the daemon keeps it between cycles,
  - cold: a fresh cache each pass (the first cycle, or a new listener whose port is unknown),
  - every owner: for comparison, looking up the owner of every listener with a cold cache, which
    is what each pass paid for new listeners before owners were looked up only when needed.
An owner lookup walks every process's descriptors, so its cost grows with the connections.

The server ends of the connections live in a helper process (this script with --serve), so
that each process stays under its open-file limit; the limit is raised to the hard limit (and,
when running as root, the hard limit too) as needed. Connections are spread over several
listener ports. Everything it starts it stops, by pid.

    PYTHONPATH=agent python bench/discovery.py [--levels 0,5000,15000] [--repeat 15]
"""

from __future__ import annotations

import argparse
import resource
import selectors
import shutil
import socket
import statistics
import subprocess
import sys
import time
from typing import Callable, List, Tuple

from regagent.config.model import Config
from regagent.discovery.exporters import load_exporter_table
from regagent.discovery.identify import discover, group_by_port, needs_owner
from regagent.discovery.listeners import listening_sockets, listening_sockets_proc
from regagent.discovery.probe import ProbeResult
from regagent.discovery.processes import ProcessResolver

LISTENER_PORTS = 4


def raise_nofile(wanted: int) -> int:
    """Raise RLIMIT_NOFILE to at least `wanted` if allowed; returns the soft limit in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= wanted:
        return soft
    target = wanted if hard == resource.RLIM_INFINITY else max(wanted, hard)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, max(target, hard)))
    except (ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def serve(count: int) -> None:
    """Helper mode: listen on `count` ports, print them, accept until stdin closes."""
    raise_nofile(40_000)
    listeners = []
    sel = selectors.DefaultSelector()
    for _ in range(count):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))
        sock.listen(4096)
        sock.setblocking(False)
        sel.register(sock, selectors.EVENT_READ)
        listeners.append(sock)
    sel.register(sys.stdin, selectors.EVENT_READ)
    print(" ".join(str(s.getsockname()[1]) for s in listeners), flush=True)
    held: List[socket.socket] = []
    while True:
        for key, _ in sel.select(timeout=60):
            if key.fileobj is sys.stdin:
                if not sys.stdin.readline():
                    return
                print(len(held), flush=True)
                continue
            sock = key.fileobj
            assert isinstance(sock, socket.socket)
            for _ in range(1024):
                try:
                    conn, _ = sock.accept()
                except BlockingIOError:
                    break
                held.append(conn)


def run_ss(ss: str) -> None:
    subprocess.run([ss, "-Htln"], check=True, capture_output=True)


def stub_probe(address: str, port: int, path: str, timeout: float, max_bytes: int) -> ProbeResult:
    return ProbeResult(f"http://{address}:{port}{path}", "http", False, "stubbed")


class PassTimer:
    """Whole discovery passes with the default configuration, probes stubbed."""

    def __init__(self) -> None:
        self.config = Config()
        self.table = load_exporter_table()
        self.warm_resolver = ProcessResolver()

    def run(self, resolver: ProcessResolver) -> None:
        discover(self.config, table=self.table, resolver=resolver, prober=stub_probe)

    def warm(self) -> None:
        self.run(self.warm_resolver)

    def cold(self) -> None:
        self.run(ProcessResolver())

    @staticmethod
    def every_owner() -> None:
        listeners = listening_sockets()
        ProcessResolver().resolve([lst.inode for lst in listeners])

    def counts(self) -> Tuple[int, int]:
        """(listeners on this host, listeners whose owner a pass looks up)."""
        listeners = listening_sockets()
        groups = group_by_port(listeners)
        needing = [g for p, g in groups.items() if needs_owner(p, g, self.config, self.table)]
        return len(listeners), sum(len(g) for g in needing)


def median_ms(func: Callable[[], object], repeat: int) -> float:
    func()  # warm-up (imports, caches)
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        func()
        samples.append((time.perf_counter() - start) * 1000)
    return statistics.median(samples)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--levels", default="0,5000,15000")
    parser.add_argument("--repeat", type=int, default=15)
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve)
        return 0

    import psutil

    levels = [int(x) for x in args.levels.split(",")]
    limit = raise_nofile(max(levels) + 1000)
    if limit < max(levels) + 100:
        print(f"open-file limit {limit} is too low for {max(levels)} connections", file=sys.stderr)
        return 1
    ss = shutil.which("ss")

    helper = subprocess.Popen(
        [sys.executable, __file__, "--serve", str(LISTENER_PORTS)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    clients: List[socket.socket] = []
    rows: List[Tuple[int, float, float, float, float]] = []
    passes: List[Tuple[int, float, float, float, Tuple[int, int]]] = []
    timer = PassTimer()
    try:
        assert helper.stdout is not None and helper.stdin is not None
        ports = [int(p) for p in helper.stdout.readline().split()]
        for level in levels:
            while len(clients) < level:
                port = ports[len(clients) % len(ports)]
                clients.append(socket.create_connection(("127.0.0.1", port)))
            helper.stdin.write("count\n")
            helper.stdin.flush()
            for _ in range(1000):  # bounded: until the helper has accepted them all
                if int(helper.stdout.readline()) >= level:
                    break
                time.sleep(0.05)
                helper.stdin.write("count\n")
                helper.stdin.flush()
            ours = median_ms(listening_sockets, args.repeat)
            theirs = median_ms(lambda: psutil.net_connections("tcp"), max(3, args.repeat // 2))
            ss_ms = median_ms(lambda: run_ss(ss), args.repeat) if ss else float("nan")
            fallback = median_ms(listening_sockets_proc, args.repeat)
            rows.append((level, ours, theirs, ss_ms, fallback))
            warm = median_ms(timer.warm, args.repeat)
            cold = median_ms(timer.cold, max(3, args.repeat // 2))
            every = median_ms(timer.every_owner, max(3, args.repeat // 2))
            passes.append((level, warm, cold, every, timer.counts()))
    finally:
        for sock in clients:
            sock.close()
        if helper.stdin is not None:
            helper.stdin.close()
        try:
            helper.wait(timeout=10)
        except subprocess.TimeoutExpired:
            helper.kill()
            helper.wait(timeout=10)

    print(f"listener discovery, median of {args.repeat} runs (ms); {LISTENER_PORTS} listener ports")
    header = (
        f"{'established':>11}  {'regagent':>9}  {'psutil':>9}  {'ss -Htln':>9}"
        f"  {'psutil/regagent':>15}  {'regagent/ss':>11}  {'/proc fallback':>14}"
    )
    print(header)
    for level, ours, theirs, ss_ms, fallback in rows:
        print(
            f"{level:>11,}  {ours:>9.2f}  {theirs:>9.2f}  {ss_ms:>9.2f}"
            f"  {theirs / ours:>14.1f}x  {ours / ss_ms:>10.3f}x  {fallback:>14.2f}"
        )
    print()
    print("discover() pass, probes stubbed, median (ms)")
    print(
        f"{'established':>11}  {'warm':>9}  {'cold':>9}  {'every owner':>11}"
        f"  {'listeners':>9}  {'owner needed':>12}"
    )
    for level, warm, cold, every, (listeners, needing) in passes:
        print(
            f"{level:>11,}  {warm:>9.2f}  {cold:>9.2f}  {every:>11.2f}"
            f"  {listeners:>9}  {needing:>12}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
