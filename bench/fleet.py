"""What a fleet of regagent hosts costs the Consul servers: many engines against the emulator.

Every host is a full engine (`regagent.app.build`), in this process, with its own node name, its
own server pool and 20 static services; hosts run their cycles one after another ("a round" is
one cycle of every host, which stands for one sync interval). Counts come from the emulator's own
statistics: requests per server split into reads (GET) and write requests (PUT), write requests
that reached Raft (`writes_applied`) and those that changed an index (`writes_changed`).

Scenarios: the whole fleet's cold start; steady state per round; a fleet-wide restart of regagent
with nothing changed; one exporter restarting on every host (critical for a round, then back);
one Consul server lost and back (scaled down: see --outage); one server answering 429; then the
wire figures: a one-shot
sync whose first server is black-holed (hedged reads on and off), an endless answer (RSS) and a
dripping server (time to give up).

    python3 bench/fleet.py                       # 1,000 hosts (a few minutes on 2 cores)
    python3 bench/fleet.py --hosts 200 --single-writes --no-spread   # the old behaviour
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import resource
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from consulsim import SimCluster
from regagent.app import App, build
from regagent.config import load_config
from regagent.config.model import Config
from regagent.consul.answers import ServerFailed
from regagent.consul.pool import make_client
from regagent.consul.retry import RetryPolicy
from regagent.logs import configure_logging
from regagent.model import ServiceIntent, ServiceRegistration

SERVICES = 20
INTERVAL = 30.0  # the default sync.interval, for the extrapolation


class Host:
    """One simulated host: its app and a switch for the exporter that restarts."""

    def __init__(self, name: str, services: int) -> None:
        self.name = name
        self.exporter_down = False
        self.services = [
            ServiceRegistration(f"exp{i}-{9100 + i}", f"exp{i}", 9100 + i, "127.0.0.1", ("fleet",))
            for i in range(services)
        ]
        self.app: Optional[App] = None

    def intents(self, *_: Any) -> List[ServiceIntent]:
        out = []
        for i, service in enumerate(self.services):
            status = ("critical", "connection refused") if i == 0 and self.exporter_down else None
            out.append(ServiceIntent(service, "static", status=status))
        return out


def base_config(cluster: SimCluster, workdir: Path, outage_cooldown: Tuple[float, float]) -> Config:
    path = workdir / "regagent.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "consul": {
                    "servers": cluster.addresses,
                    "connect_timeout": "1s",
                    "read_timeout": "10s",
                    "cooldown_initial": f"{outage_cooldown[0]}s",
                    "cooldown_max": f"{outage_cooldown[1]}s",
                },
                "node": {"name": "fleet-template", "address": "127.0.0.1"},
                "discovery": {"enabled": False},
                "sync": {"state_dir": str(workdir), "failures_before_critical": 1},
            }
        )
    )
    return load_config(str(path))


def start(host: Host, config: Config, args: argparse.Namespace) -> None:
    """A fresh regagent process for `host`: new pool, nothing remembered."""
    node = dataclasses.replace(config.node, name=host.name)
    app = build(dataclasses.replace(config, node=node), intent_source=host.intents)
    if args.single_writes:
        app.pool.capabilities["txn"] = False
    if args.no_spread:
        app.pool.home = app.pool.current = 0
        app.pool.order = list(range(len(app.pool.servers)))
    host.app = app


Snapshot = Dict[str, Any]


def counts(cluster: SimCluster) -> Snapshot:
    return cluster.stats()


def delta(before: Snapshot, after: Snapshot) -> Dict[str, Any]:
    servers = []
    for b, a in zip(before["servers"], after["servers"]):
        reads = sum(n for k, n in a["endpoints"].items() if k.startswith("GET ")) - sum(
            n for k, n in b["endpoints"].items() if k.startswith("GET ")
        )
        puts = sum(n for k, n in a["endpoints"].items() if k.startswith("PUT ")) - sum(
            n for k, n in b["endpoints"].items() if k.startswith("PUT ")
        )
        servers.append({"reads": reads, "writes": puts, "leader": a["leader"]})
    return {
        "servers": servers,
        "applied": after["writes_applied"] - before["writes_applied"],
        "changed": after["writes_changed"] - before["writes_changed"],
    }


def round_of(hosts: List[Host]) -> int:
    """One cycle of every host; returns how many cycles ended in an error."""
    errors = 0
    for host in hosts:
        assert host.app is not None
        report = host.app.engine.cycle()
        errors += report.error is not None
    return errors


def show(title: str, d: Dict[str, Any], hosts: int, rounds: int = 1, errors: int = 0) -> None:
    reads = [s["reads"] for s in d["servers"]]
    writes = [s["writes"] for s in d["servers"]]
    total_reads, total_writes = sum(reads), sum(writes)
    fair = total_reads / len(reads) if reads else 0
    worst = max(reads) / fair if fair else 0.0
    per = f" per round (over {rounds})" if rounds > 1 else ""
    print(f"\n{title}{per}:")
    print(
        f"  cluster: {total_reads / rounds:8.0f} reads, "
        f"{total_writes / rounds:7.0f} write requests, {d['applied'] / rounds:7.0f} applied, "
        f"{d['changed'] / rounds:7.0f} index-changing"
        + (f"; {errors} failed cycles" if errors else "")
    )
    print(
        f"  per host: {total_reads / rounds / hosts:6.2f} reads, "
        f"{total_writes / rounds / hosts:6.2f} write requests, "
        f"{d['applied'] / rounds / hosts:6.2f} applied"
    )
    for i, s in enumerate(d["servers"]):
        role = "leader  " if s["leader"] else "follower"
        print(
            f"  server {i + 1} ({role}): {s['reads'] / rounds:8.0f} reads, "
            f"{s['writes'] / rounds:7.0f} write requests"
        )
    print(f"  busiest server's reads: {worst:.2f}x its fair share (goal <= 1.5)")


def scenario(cluster: SimCluster, title: str, hosts: List[Host], rounds: int = 1) -> Dict[str, Any]:
    before = counts(cluster)
    errors = sum(round_of(hosts) for _ in range(rounds))
    d = delta(before, counts(cluster))
    show(title, d, len(hosts), rounds, errors)
    return d


def outage(cluster: SimCluster, hosts: List[Host], seconds: float) -> None:
    """One follower stopped for `seconds` (rounds keep running), then back for as long."""
    leader = cluster.wait_for_leader()
    lost = next(i for i in range(len(cluster.addresses)) if i != leader)
    print(f"\none server lost (server {lost + 1}, a follower) for {seconds:g}s, then back:")
    for phase, action in (("down", cluster.stop_server), ("back", cluster.start_server)):
        action(lost)
        if phase == "back":
            cluster.wait_for_leader()
        ended = time.monotonic() + seconds
        rounds = 0
        while time.monotonic() < ended or rounds == 0:
            before = counts(cluster)
            started = time.monotonic()
            errors = round_of(hosts)
            d = delta(before, counts(cluster))
            rounds += 1
            reads = " ".join(f"{s['reads']:6d}" for s in d["servers"])
            print(
                f"  {phase} round {rounds} ({time.monotonic() - started:4.1f}s): reads per server"
                f" {reads}; {d['applied']} writes applied; {errors} failed cycles"
            )


def rate_limited(cluster: SimCluster, hosts: List[Host], rounds: int) -> None:
    """One follower answers every request 429 (Retry-After 5 s) for `rounds`, then recovers."""
    leader = cluster.wait_for_leader()
    limited = next(i for i in reversed(range(len(cluster.addresses))) if i != leader)
    print(f"\none server rate-limiting (server {limited + 1} answers 429, Retry-After 5s):")
    for phase in ("429", "healed"):
        if phase == "429":
            cluster.answer_status(limited, 429, retry_after=5)
        else:
            cluster.answer_status(limited, 0)
            time.sleep(5)  # its Retry-After
        for n in range(rounds):
            before = counts(cluster)
            errors = round_of(hosts)
            d = delta(before, counts(cluster))
            reads = " ".join(f"{s['reads']:6d}" for s in d["servers"])
            print(
                f"  {phase} round {n + 1}: requests (reads) per server {reads}; "
                f"{d['applied']} writes applied; {errors} failed cycles"
            )


# --- the wire: first contact, endless answers, drips ---------------------------------------------


def oneshot_blackholed(cluster: SimCluster, workdir: Path) -> float:
    """A one-shot `regagent sync` (a real process) whose home server is black-holed."""
    path = workdir / "oneshot.yaml"
    name = "oneshot-host"
    path.write_text(
        yaml.safe_dump(
            {
                "consul": {"servers": cluster.addresses},  # default 2s connect, 10s read
                "node": {"name": name, "address": "127.0.0.1"},
                "discovery": {"enabled": False},
                "sync": {"state_dir": str(workdir)},
                "services": [{"name": "one", "port": 9999, "check": {"type": "none"}}],
            }
        )
    )
    from regagent.consul.retry import start_index

    home = start_index(name, len(cluster.addresses))
    cluster.blackhole(home)
    try:
        started = time.perf_counter()
        result = subprocess.run(
            [sys.executable, "-m", "regagent", "-c", str(path), "sync"],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        took = time.perf_counter() - started
    finally:
        cluster.blackhole(home, False)
    if result.returncode != 0:
        raise SystemExit(f"one-shot sync failed: {result.stderr}")
    return took


def unhedged_blackholed(cluster: SimCluster, config: Config) -> float:
    """The same first read in-process with the head start longer than the read timeout: what
    every one-shot command paid before hedged reads."""
    host = Host("unhedged-host", 1)
    node = dataclasses.replace(config.node, name=host.name)
    consul = dataclasses.replace(config.consul, read_timeout=10.0)
    app = build(dataclasses.replace(config, node=node, consul=consul), intent_source=host.intents)
    app.pool.policy = dataclasses.replace(app.pool.policy, hedge_min=60.0, hedge_max=60.0)
    app.pool.place(host.name)
    cluster.blackhole(app.pool.home)
    try:
        started = time.perf_counter()
        report = app.engine.cycle()
        took = time.perf_counter() - started
    finally:
        cluster.blackhole(app.pool.home, False)
    if report.error is not None:
        raise SystemExit(f"unhedged cycle failed: {report.error}")
    return took


@contextlib.contextmanager
def hostile(kind: str) -> Iterator[int]:
    """A loopback server that sends an endless 200 answer, or drips its headers at 1 byte/s."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    stop = threading.Event()

    def serve(conn: socket.socket) -> None:
        with conn, contextlib.suppress(OSError):
            conn.recv(65536)
            if kind == "endless":
                conn.sendall(b"HTTP/1.1 200 OK\r\n\r\n")
                block = b"x" * 65536
                while not stop.is_set():
                    conn.sendall(block)
            else:
                for byte in b"HTTP/1.1 200 OK\r\n" + b"X" * 1000:
                    if stop.is_set():
                        return
                    conn.sendall(bytes([byte]))
                    time.sleep(1.0)

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            threading.Thread(target=serve, args=(conn,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    try:
        yield listener.getsockname()[1]
    finally:
        stop.set()
        listener.close()


def hostile_figures(config: Config) -> Tuple[float, str, float, float, str]:
    """(seconds, error) for an endless answer with the RSS growth in MiB, and for a drip."""
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    with hostile("endless") as port:
        client = make_client(
            f"127.0.0.1:{port}", config.consul, None, RetryPolicy.from_config(config)
        )
        started = time.perf_counter()
        try:
            client.status.leader()
            endless_error = "no error!"
        except ServerFailed as exc:
            endless_error = str(exc)
        endless_s = time.perf_counter() - started
    rss_growth = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - rss_before
    with hostile("drip") as port:
        consul = dataclasses.replace(config.consul, connect_timeout=2.0, read_timeout=10.0)
        client = make_client(f"127.0.0.1:{port}", consul, None, RetryPolicy.from_consul(consul))
        started = time.perf_counter()
        try:
            client.status.leader()
            drip_error = "no error!"
        except ServerFailed as exc:
            drip_error = str(exc)
        drip_s = time.perf_counter() - started
    return endless_s, endless_error, rss_growth, drip_s, drip_error


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hosts", type=int, default=1000)
    parser.add_argument("--services", type=int, default=SERVICES)
    parser.add_argument("--steady-rounds", type=int, default=2)
    parser.add_argument("--outage", type=float, default=20.0, help="seconds the server is lost")
    parser.add_argument("--single-writes", action="store_true", help="no /v1/txn (the old way)")
    parser.add_argument("--no-spread", action="store_true", help="every host starts at server 1")
    parser.add_argument("--skip-wire", action="store_true", help="no one-shot/hostile figures")
    args = parser.parse_args()
    configure_logging("error")
    cluster = SimCluster(servers=3, election_delay="0.5s", rpc_hold="1s")
    with cluster, tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        leader = cluster.wait_for_leader()
        # cool-downs scaled down with the outage (5 s / 300 s by default)
        config = base_config(cluster, workdir, (2.0, 10.0))
        hosts = [Host(f"fleet-host-{i:05d}", args.services) for i in range(args.hosts)]
        layout = "single writes" if args.single_writes else "/v1/txn"
        spread = "all start at server 1" if args.no_spread else "spread by node name"
        print(
            f"regagent fleet benchmark: {args.hosts} hosts x {args.services} services, "
            f"3 emulated servers (leader: server {leader + 1}); {layout}; {spread}"
        )
        started = time.perf_counter()
        for host in hosts:
            start(host, config, args)
        print(f"  {args.hosts} engines built in {time.perf_counter() - started:.1f}s")

        started = time.perf_counter()
        scenario(cluster, "cold start (every host's first sync)", hosts)
        print(f"  took {time.perf_counter() - started:.1f}s")
        scenario(cluster, "steady state", hosts, args.steady_rounds)
        for host in hosts:
            start(host, config, args)
        scenario(cluster, "fleet-wide restart of regagent, nothing changed", hosts)
        for host in hosts:
            host.exporter_down = True
        scenario(cluster, "one exporter restarting on every host: down", hosts)
        for host in hosts:
            host.exporter_down = False
        scenario(cluster, "one exporter restarting on every host: back", hosts)
        outage(cluster, hosts, args.outage)
        scenario(cluster, "after the outage", hosts)
        rate_limited(cluster, hosts, 2)

        if not args.skip_wire:
            print("\nfirst contact with a black-holed home server (read timeout 10s):")
            took = oneshot_blackholed(cluster, workdir)
            print(f"  one-shot `regagent sync`, hedged reads: {took:.2f}s")
            print(
                "  the same cycle without hedging (before): "
                f"{unhedged_blackholed(cluster, config):.2f}s"
            )
            endless_s, endless_error, rss, drip_s, drip_error = hostile_figures(config)
            print("\nhostile servers (default limits: 2s connect + 10s read = 12s deadline):")
            print(
                f"  endless 200 answer: {endless_error!r} after {endless_s:.2f}s, "
                f"RSS +{rss:.0f} MiB"
            )
            print(f"  headers dripped at 1 byte/s: {drip_error!r} after {drip_s:.1f}s")


if __name__ == "__main__":
    main()
