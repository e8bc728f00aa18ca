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
import json
import queue
import random
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from consulsim import SimCluster
from regagent.app import App, build
from regagent.config import load_config
from regagent.config.model import Config
from regagent.consul.answers import ServerFailed
from regagent.consul.catalog import CatalogRegistrar
from regagent.consul.node_watch import NodeWatch
from regagent.consul.pool import make_client
from regagent.consul.retry import RetryPolicy
from regagent.logs import configure_logging
from regagent.model import ServiceIntent, ServiceRegistration
from regagent.repair import Repair

SERVICES = 20
INTERVAL = 30.0  # the default sync.interval, for the extrapolation
JITTER = 5.0  # the default sync.jitter
WATCH_WAIT = 300.0  # the default consul.watch_wait


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
        self.repair: Optional[Repair] = None  # with the node watch attached
        self.news_at: List[float] = []  # when its watch had an answer (monotonic)

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
    # A state directory per host: hosts sharing one would take each other's node for their
    # own previous name (a rename) and remove it.
    state = Path(config.sync.state_dir) / host.name
    state.mkdir(mode=0o700, exist_ok=True)
    sync = dataclasses.replace(config.sync, state_dir=str(state))
    app = build(dataclasses.replace(config, node=node, sync=sync), intent_source=host.intents)
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
            client.leader()
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
            client.leader()
            drip_error = "no error!"
        except ServerFailed as exc:
            drip_error = str(exc)
        drip_s = time.perf_counter() - started
    return endless_s, endless_error, rss_growth, drip_s, drip_error


# --- the node watch (issue 25): before (watch off, each cycle reads) and after ---------------


def service_ids(cluster: SimCluster, node: str) -> List[str]:
    data = cluster.get(cluster.live_server(), f"/v1/catalog/node/{node}?stale")
    return [] if data is None else sorted(data["Services"])


def third_party_deregister(cluster: SimCluster, node: str, service_id: str) -> None:
    """`consul catalog deregister -node <node> -id <id>`, as another client would."""
    request = urllib.request.Request(
        cluster.url(cluster.live_server()) + "/v1/catalog/deregister",
        data=json.dumps({"Node": node, "ServiceID": service_id}).encode(),
        method="PUT",
    )
    with urllib.request.urlopen(request, timeout=10) as answer:
        answer.read()


def attach_watch(host: Host, wait: float, news: queue.Queue[Host]) -> None:
    """What `regagent run` builds in catalog mode (`app.make_node_watch`): the host's node
    watch, read by its registrar, its news repaired by the loop (here: `drain`)."""
    app = host.app
    assert app is not None and isinstance(app.registrar, CatalogRegistrar)
    watch = NodeWatch(app.pool, host.name, wait)
    app.registrar.watch = watch
    host.repair = Repair(app.engine, watch)

    def told() -> None:
        host.news_at = [*host.news_at[-9:], time.monotonic()]
        news.put(host)

    watch.on_news = told
    watch.start()


def drain(news: queue.Queue[Host], timeout: float = 0.0) -> int:
    """Repairs every host with news, as each daemon's loop would; waits up to `timeout` for
    the first. One thread for all hosts: an engine is never used by two at once."""
    done = 0
    try:
        host = news.get(timeout=timeout) if timeout > 0 else news.get_nowait()
        while True:
            if host.repair is not None and host.repair.due:
                host.repair.run()
                done += 1
            host = news.get_nowait()
    except queue.Empty:
        return done


def paced(
    hosts: List[Host], seconds: float, interval: float, news: queue.Queue[Host]
) -> Tuple[int, int]:
    """Every host cycles once per `interval` (a round), repairs run between cycles; for
    `seconds`. Returns (rounds, failed cycles)."""
    ended = time.monotonic() + seconds
    rounds = errors = 0
    while time.monotonic() < ended:
        started = time.monotonic()
        for host in hosts:
            assert host.app is not None
            errors += host.app.engine.cycle().error is not None
            drain(news)
        rounds += 1
        while time.monotonic() < min(ended, started + interval):
            drain(news, timeout=min(0.05, max(0.001, started + interval - time.monotonic())))
    return rounds, errors


def restoration_before(cluster: SimCluster, sample: List[Host], rng: random.Random) -> List[float]:
    """Watch off: each sample host cycles every sync.interval +/- jitter (real time, the
    defaults); a third party deregisters one of its services at a random moment; seconds
    until the service is back."""
    now = time.monotonic()
    due = {host.name: now + rng.uniform(0, INTERVAL) for host in sample}
    struck = {host.name: now + rng.uniform(0, INTERVAL) for host in sample}
    lost: Dict[str, float] = {}
    back: Dict[str, float] = {}
    while len(back) < len(sample):
        now = time.monotonic()
        for host in sample:
            assert host.app is not None
            if host.name not in lost and now >= struck[host.name]:
                third_party_deregister(cluster, host.name, host.services[1].id)
                lost[host.name] = time.monotonic()
            if now >= due[host.name]:
                host.app.engine.cycle()
                due[host.name] = now + INTERVAL + rng.uniform(-JITTER, JITTER)
                if (
                    host.name in lost
                    and host.name not in back
                    and host.services[1].id in service_ids(cluster, host.name)
                ):
                    back[host.name] = time.monotonic() - lost[host.name]
        time.sleep(0.01)
    return sorted(back.values())


def restoration_after(
    cluster: SimCluster, sample: List[Host], news: queue.Queue[Host], rng: random.Random
) -> Tuple[List[float], List[float]]:
    """Watch on (the whole fleet's polls held): a third party deregisters a service of one
    sample host at a time; seconds until it is back (the loop only repairs meanwhile), and
    of those the seconds until the watch had Consul's answer."""
    took = []
    woke = []
    for host in sample:
        time.sleep(rng.uniform(0.2, 1.0))
        wanted = host.services[1].id
        third_party_deregister(cluster, host.name, wanted)
        lost = time.monotonic()
        while wanted not in service_ids(cluster, host.name):
            drain(news, timeout=0.005)
            if time.monotonic() - lost > 120:
                raise SystemExit(f"{host.name}: {wanted} not restored within 120s")
        took.append(time.monotonic() - lost)
        woke.append(min((t for t in host.news_at if t > lost), default=lost + took[-1]) - lost)
    return sorted(took), sorted(woke)


def spread(values: List[float]) -> str:
    return f"p50 {statistics.median(values):.2f}s, max {max(values):.2f}s"


def node_watch_figures(
    cluster: SimCluster, hosts: List[Host], steady: Dict[str, Any], args: argparse.Namespace
) -> None:
    """Before (consul.watch_wait 0s: main's reads, two per cycle) and after (the watch on),
    side by side in this run, at the defaults (interval 30s +/- 5s, wait 5m)."""
    rng = random.Random(25)
    scale = args.time_scale
    n = len(hosts)
    sample = rng.sample(hosts, min(args.samples, n))
    before_reads = [s["reads"] / args.steady_rounds / INTERVAL for s in steady["servers"]]
    print(f"\nnode watch, {n} hosts: third-party deregistration to restoration, watch off:")
    before_restore = restoration_before(cluster, sample, rng)
    print(f"  {len(sample)} hosts, cycles every {INTERVAL:g}s +/- {JITTER:g}s: "
          f"{spread(before_restore)}")  # fmt: skip

    news: queue.Queue[Host] = queue.Queue()
    wait = WATCH_WAIT / scale
    # Started over one wait, as a fleet's daemons start at different times: polls started in
    # the same second would also end in the same second (give or take Consul's jitter).
    for host in hosts:
        attach_watch(host, wait, news)
        drain(news, timeout=wait / n)
    ready = time.monotonic() + 60
    while time.monotonic() < ready and not all(
        h.repair is not None and h.repair.watch.fresh() is not None for h in hosts
    ):
        drain(news, timeout=0.1)
    paced(hosts, INTERVAL / scale, INTERVAL / scale, news)  # the first cycles read the checks
    print(f"steady state with the watch, time {scale:g}x faster (wait {wait:g}s, "
          f"cycles every {INTERVAL / scale:g}s), over {4 * wait:g}s:")  # fmt: skip
    before = counts(cluster)
    held = sum(h.repair.watch.counts.get("unchanged", 0) for h in hosts if h.repair)
    started = time.monotonic()
    rounds, errors = paced(hosts, 4 * wait, INTERVAL / scale, news)
    elapsed = time.monotonic() - started
    d = delta(before, counts(cluster))
    real = elapsed * scale
    after_reads = [s["reads"] / real for s in d["servers"]]
    after_writes = sum(s["writes"] for s in d["servers"])
    polls = sum(h.repair.watch.counts.get("unchanged", 0) for h in hosts if h.repair) - held
    failed = sum(h.repair.watch.counts.get("failed", 0) for h in hosts if h.repair)
    print(f"  {rounds} rounds ({rounds / (elapsed / (INTERVAL / scale)):.2f} of the nominal), "
          f"{errors} failed cycles, {after_writes} write requests, {polls} polls held to "
          f"their wait, {failed} failed polls since the start")  # fmt: skip
    print("\nnode watch, before/after at the defaults (reads per second; after: measured "
          f"{scale:g}x faster, divided by {scale:g}):")  # fmt: skip
    print(f"  {'':34} {'before (watch off)':>20} {'after (watch on)':>18}")
    for i, (b, a) in enumerate(zip(before_reads, after_reads)):
        print(f"  server {i + 1}:{'':25} {b:16.2f}/s {a:16.3f}/s")
    per_host_b = sum(before_reads) / n * INTERVAL
    per_host_a = sum(after_reads) / n * INTERVAL
    print(f"  per host, per {INTERVAL:g}s:{'':15} {per_host_b:18.3f} {per_host_a:18.4f}"
          f"   ({per_host_b / per_host_a:.1f}x fewer; goal >= 10x)")  # fmt: skip
    after_restore, woke = restoration_after(cluster, sample, news, rng)
    print(f"  third-party deregister to restored: {spread(before_restore):>22}   "
          f"{spread(after_restore)} (goal p50 <= 1s)")  # fmt: skip
    print(
        f"    of which until the poll's answer arrived: {spread(woke)} (the emulator wakes "
        f"every held query on each write: {n} here; Consul only the changed node's)"
    )
    for host in hosts:
        if host.repair is not None:
            host.repair.watch.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hosts", type=int, default=1000)
    parser.add_argument("--services", type=int, default=SERVICES)
    parser.add_argument("--steady-rounds", type=int, default=2)
    parser.add_argument("--outage", type=float, default=20.0, help="seconds the server is lost")
    parser.add_argument("--single-writes", action="store_true", help="no /v1/txn (the old way)")
    parser.add_argument("--no-spread", action="store_true", help="every host starts at server 1")
    parser.add_argument("--skip-wire", action="store_true", help="no one-shot/hostile figures")
    parser.add_argument(
        "--only-watch", action="store_true", help="only the node watch's before/after figures"
    )
    parser.add_argument(
        "--time-scale",
        type=float,
        default=10.0,
        help="the node watch's steady state runs this many times faster than real time",
    )
    parser.add_argument("--samples", type=int, default=20, help="restorations measured")
    args = parser.parse_args()
    configure_logging("error")
    # Blocking reads held as Consul holds them (max_query_time 10m), for the node watch.
    cluster = SimCluster(
        servers=3, election_delay="0.5s", rpc_hold="1s", wait_cap="10m", default_wait="5m"
    )
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
        steady = scenario(cluster, "steady state", hosts, args.steady_rounds)
        if args.only_watch:
            node_watch_figures(cluster, hosts, steady, args)
            return
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
        node_watch_figures(cluster, hosts, steady, args)


if __name__ == "__main__":
    main()
