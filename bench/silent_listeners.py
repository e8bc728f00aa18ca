"""What 400 silent listeners cost `regagent run`: cycle time, writes done, and how long a new
exporter among them waits to be registered and a dead one to turn critical.

A silent listener accepts connections and never answers (any local user can open hundreds in
`discovery.port_ranges`). Each probe of one lasts the whole `discovery.probe_timeout` (2 s).

For each mode, side by side in one run, against a fresh three-server emulator (tests/consulsim):

- before: every candidate probed inside the cycle and inside every watch pass, as regagent did
  before probes of unconfirmed listeners moved to the background (the daemon of this checkout
  with `Sensor.unconfirmed` set to None, which is exactly that code path);
- after: this checkout as shipped.

Timeline: an exporter D (tests/watch_exporters.py, node_exporter-like) runs and `regagent run`
(sync.interval 30s +/- 5s, watch_interval 1s: the defaults) registers it; then 400 silent
listeners open in the same port range; 2 s later D is killed and a new exporter N starts on a
port among them. Measured: each full cycle after the listeners opened (duration, writes done,
error), the longest watch pass, the time from N's listen() to N passing and from D's kill to
D critical (seen through a server regagent does not write to), over a window of --window
seconds (default 200: two cycles of the old path).

    python3 bench/silent_listeners.py [--silent 400] [--window 200] [--modes before,after]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "agent"))

from consulsim import SimCluster  # noqa: E402
from regagent.discovery.exporters import load_exporter_table  # noqa: E402

HELPER = str(ROOT / "tests" / "watch_exporters.py")
NODE = "bench-silent-host"
POLL = 0.1


# -- the daemon under test (this script, run as a subprocess) -----------------------------------


def run_daemon(mode: str, config_path: str) -> int:
    """`regagent run` for `config_path`, printing one JSON line per cycle and watch pass."""
    from regagent.app import build, daemon
    from regagent.config import load_config
    from regagent.identity import Writer
    from regagent.logs import configure_logging

    config = load_config(config_path)
    configure_logging(os.environ.get("BENCH_LOG_LEVEL", "warning"), "json")
    app = build(config, writer=Writer.of(config_path, daemon=True))
    if mode == "before":
        app.discovery.sensor.unconfirmed = None  # every candidate probed in the pass: the old path
    engine = app.engine
    full, partial = engine.cycle, engine.partial_cycle

    def timed_cycle(dry_run: bool = False) -> Any:
        started = time.monotonic()
        report = full(dry_run)
        emit("cycle", started, report.writes, report.planned_writes, report.error)
        return report

    def timed_partial(*args: Any, **kwargs: Any) -> Any:
        started = time.monotonic()
        result = partial(*args, **kwargs)
        if result.ran:
            report = result.report
            emit("pass", started, report.writes, report.planned_writes, report.error)
        return result

    engine.cycle = timed_cycle  # type: ignore[method-assign]
    engine.partial_cycle = timed_partial  # type: ignore[method-assign]
    service = daemon(app, config_path)
    service.install_signal_handlers()
    return service.run()


def emit(kind: str, started: float, writes: int, planned: int, error: Optional[Exception]) -> None:
    line = {
        "kind": kind,
        "at": time.time(),
        "duration": round(time.monotonic() - started, 3),
        "writes": writes,
        "planned": planned,
        "error": type(error).__name__ if error is not None else None,
    }
    print(json.dumps(line), flush=True)


# -- the host: silent listeners and exporters ---------------------------------------------------


def listen_silently(ports: List[int], lifetime: float) -> int:
    """Listens on every port, never accepts (the kernel completes the handshakes)."""
    sockets = []
    for port in ports:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("0.0.0.0", port))
        sock.listen(8)
        sockets.append(sock)
    print("listening", flush=True)
    time.sleep(lifetime)
    return 0


def free_range(count: int) -> List[int]:
    import random

    for _ in range(200):
        base = random.randint(20000, 60000 - count)
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


def spawn(*args: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, *args], stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line.startswith("listening"):
        proc.kill()
        raise RuntimeError(f"{args} did not start")
    return proc


def stop(proc: subprocess.Popen[Any], sig: int = signal.SIGKILL) -> None:
    if proc.poll() is None:
        os.kill(proc.pid, sig)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()


# -- one mode -----------------------------------------------------------------------------------


def write_config(workdir: Path, cluster: SimCluster, ports: List[int]) -> Path:
    table = load_exporter_table()
    discovery = {
        "port_ranges": [f"{ports[0]}-{ports[-1]}"],
        "exclude_ports": sorted(set(table.by_port) - set(ports)),
        # Exporter binaries installed here: another engineer's tests may run one on any port.
        "exclude_processes": sorted(
            {b for s in table.by_name.values() for b in s.binaries if shutil.which(b)}
        ),
    }
    config = {
        "consul": {"servers": list(cluster.addresses)},
        "node": {"name": NODE, "address": "127.0.0.1"},
        "sync": {"state_dir": str(workdir / "state")},
        "discovery": discovery,
    }
    path = workdir / "regagent.yaml"
    path.write_text(yaml.safe_dump(config))
    path.chmod(0o600)
    return path


def statuses(cluster: SimCluster, server: int) -> Dict[str, str]:
    checks = cluster.get(server, f"/v1/health/node/{NODE}?stale") or []
    return {c["ServiceID"]: c["Status"] for c in checks if c.get("ServiceID")}


def wait_status(cluster: SimCluster, sid: str, status: str, limit: float) -> Optional[float]:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if statuses(cluster, 2).get(sid) == status:
            return time.time()
        time.sleep(POLL)
    return None


def run_mode(mode: str, silent: int, window: float) -> Dict[str, Any]:
    ports = free_range(silent + 2)
    dead_port, new_port = ports[silent // 3], ports[2 * silent // 3]
    silent_ports = [p for p in ports if p not in (dead_port, new_port)]
    workdir = Path(tempfile.mkdtemp(prefix=f"regagent-silent-{mode}-"))
    cluster = SimCluster(servers=3)
    cluster.start()
    procs: List[subprocess.Popen[Any]] = []
    lines: List[Dict[str, Any]] = []
    try:
        config = write_config(workdir, cluster, ports)
        dead = spawn(HELPER, "serve", str(dead_port), "--lifetime", "3600")
        procs.append(dead)
        regagent = subprocess.Popen(
            [sys.executable, __file__, "--daemon", mode, str(config)],
            stdout=subprocess.PIPE,
            stderr=open(workdir / "daemon.log", "w"),  # noqa: SIM115 - closed with the process
            stdin=subprocess.DEVNULL,
            text=True,
        )
        procs.append(regagent)
        reader = threading.Thread(target=_collect, args=(regagent, lines), daemon=True)
        reader.start()
        if wait_status(cluster, f"node-exporter-{dead_port}", "passing", 60) is None:
            raise RuntimeError(f"{mode}: the first exporter was never registered")
        time.sleep(6)  # past the watch's 5 s hold-off, so D's death may be written at once

        opened = time.time()
        lifetime = str(window + 60)
        procs.append(spawn(__file__, "--listen-silently", lifetime, *map(str, silent_ports)))
        time.sleep(2)
        killed = time.time()
        stop(dead)
        new = spawn(HELPER, "serve", str(new_port), "--lifetime", "3600")
        procs.append(new)
        started = time.time()

        registered = critical = None
        deadline = time.monotonic() + window
        while time.monotonic() < deadline and (registered is None or critical is None):
            seen = statuses(cluster, 2)
            now = time.time()
            if registered is None and seen.get(f"node-exporter-{new_port}") == "passing":
                registered = now - started
            if critical is None and seen.get(f"node-exporter-{dead_port}") == "critical":
                critical = now - killed
            time.sleep(POLL)
        # Keep watching until two full cycles ran after the listeners opened (or the window).
        while time.monotonic() < deadline:
            if len([x for x in lines if x["kind"] == "cycle" and x["at"] > opened]) >= 2:
                break
            time.sleep(0.5)
        stop(regagent, signal.SIGTERM)
        reader.join(timeout=10)
    finally:
        for proc in reversed(procs):
            stop(proc)
        cluster.stop()
    cycles = [x for x in lines if x["kind"] == "cycle" and x["at"] > opened]
    passes = [x for x in lines if x["kind"] == "pass" and x["at"] > opened]
    if os.environ.get("BENCH_KEEP"):  # for a closer look: the ports, the log, the timeline
        print(f"{mode}: dead {dead_port}, new {new_port}, log {workdir / 'daemon.log'}")
        for line in lines:
            print(f"  {line['at'] - killed:+8.2f} s after the kill: {line}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    return {
        "mode": mode,
        "cycles": cycles,
        "passes": passes,
        "registered": registered,
        "critical": critical,
    }


def _collect(proc: subprocess.Popen[str], lines: List[Dict[str, Any]]) -> None:
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith("{"):
            lines.append(json.loads(line))


# -- report -------------------------------------------------------------------------------------


def show(results: List[Dict[str, Any]], silent: int, window: float) -> None:
    def seconds(value: Optional[float]) -> str:
        return f"{value:.2f} s" if value is not None else f"not within {window:g} s"

    rows = [
        ("full cycles after the listeners opened", lambda r: str(len(r["cycles"]))),
        (
            "full cycle duration, median / max",
            lambda r: _median_max([c["duration"] for c in r["cycles"]]),
        ),
        (
            "writes done / planned by those cycles",
            lambda r: (
                f"{sum(c['writes'] for c in r['cycles'])} / "
                f"{sum(c['planned'] for c in r['cycles'])}"
            ),
        ),
        (
            "cycles ended by an error",
            lambda r: ", ".join(c["error"] for c in r["cycles"] if c["error"]) or "none",
        ),
        ("watch passes that ran", lambda r: str(len(r["passes"]))),
        (
            "writes done / planned by those passes",
            lambda r: (
                f"{sum(p['writes'] for p in r['passes'])} / "
                f"{sum(p['planned'] for p in r['passes'])}"
            ),
        ),
        (
            "longest watch pass",
            lambda r: _median_max([p["duration"] for p in r["passes"]]).split(" / ")[-1],
        ),
        ("new exporter N: listen() to passing", lambda r: seconds(r["registered"])),
        ("dead exporter D: kill to critical", lambda r: seconds(r["critical"])),
    ]
    print(f"\n{silent} silent listeners in discovery.port_ranges (probe_timeout 2s)\n")
    width = max(len(name) for name, _ in rows)
    print(" " * width + "".join(f"  {r['mode']:>22}" for r in results))
    for name, cell in rows:
        print(f"{name:<{width}}" + "".join(f"  {cell(r):>22}" for r in results))


def _median_max(values: List[float]) -> str:
    if not values:
        return "-"
    return f"{statistics.median(values):.2f} / {max(values):.2f} s"


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--daemon":
        return run_daemon(sys.argv[2], sys.argv[3])
    if len(sys.argv) > 1 and sys.argv[1] == "--listen-silently":
        return listen_silently([int(p) for p in sys.argv[3:]], float(sys.argv[2]))
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--silent", type=int, default=400)
    parser.add_argument("--window", type=float, default=200.0)
    parser.add_argument("--modes", default="before,after")
    args = parser.parse_args()
    results = [run_mode(mode, args.silent, args.window) for mode in args.modes.split(",")]
    show(results, args.silent, args.window)
    return 0


if __name__ == "__main__":
    sys.exit(main())
