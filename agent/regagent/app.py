"""The composition root: every component built from one configuration, in one place.

`build(config)` wires the server pool, the registration backend for `consul.mode`, the node
identity, health checks, discovery and the sync engine. `build(new, previous=app)` does it
again for a reloaded configuration while keeping what must survive a reload: server cool-downs
and the server in use, the flap history, discovery's caches and once-only reports, and the
node address found for `auto`, the metrics (counters continue) and the daemon's heartbeat.
Metrics exist once a configuration serves them (`telemetry.listen`): without it, the daemon
imports no prometheus-client and no HTTP server.
Nothing here is a module-level singleton: two apps in one process share no state.

It also adds regagent's own metrics endpoint (`telemetry.listen`, built by
`regagent.discovery.intents.self_intent`) to the desired state as the service `regagent`, so
that it goes through the one planner and write path like any other.
"""

from __future__ import annotations

import os
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Callable, Dict, FrozenSet, List, Optional, Tuple

import structlog

from regagent.config import load_config
from regagent.config.model import Config
from regagent.config.token import load_token
from regagent.consul.agent import AgentRegistrar
from regagent.consul.answers import Outcome
from regagent.consul.catalog import CatalogRegistrar
from regagent.consul.pool import ServerPool
from regagent.consul.registrar import Registrar
from regagent.consul.retry import RetryPolicy
from regagent.daemon import Daemon, LoopParts
from regagent.discovery.identify import Prober
from regagent.discovery.intents import self_intent
from regagent.discovery.listeners import ListenerKeysReader
from regagent.discovery.probe import ProbeResult, probe_metrics
from regagent.discovery.runner import DiscoveryRunner
from regagent.discovery.unconfirmed import UnconfirmedProbes
from regagent.engine import IntentSource, QuickSource, SyncEngine
from regagent.errors import ConfigError, StateDirectoryInUse
from regagent.health.checks import run_all, run_probe
from regagent.health.health import Health, ProbeRunner
from regagent.identity import DAEMON_LOCK, NodeIdentity, Writer
from regagent.liveness import Heartbeat
from regagent.model import ActualState, HealthProbe, Result, ServiceIntent
from regagent.notify import Notifier, watchdog_interval
from regagent.statedir import Corrupt, Lock, StateDir, Untrusted
from regagent.threads import signals_blocked
from regagent.watch import Watch

if TYPE_CHECKING:
    from regagent.metrics import Metrics

log = structlog.get_logger(__name__)


@dataclass
class App:
    """The components of one running configuration."""

    config: Config
    policy: RetryPolicy
    pool: ServerPool
    identity: NodeIdentity
    health: Health
    discovery: DiscoveryRunner
    registrar: Registrar
    engine: SyncEngine
    metrics: Optional[Metrics]  # None until a configuration serves metrics
    heartbeat: Heartbeat
    watch: Optional[Watch] = None  # None: discovery or discovery.watch_interval is off
    lock: Optional[Lock] = None  # the daemon's hold on its state directory (`regagent run`)


def make_pool(config: Config, policy: RetryPolicy) -> ServerPool:
    """The servers, or in agent mode only the local agent (which forwards to them)."""
    consul = config.consul
    if consul.mode == "agent":
        consul = replace(consul, servers=(consul.agent_address,))
    return ServerPool(consul, load_token(config.consul), policy=policy)


def make_registrar(config: Config, pool: ServerPool, identity: NodeIdentity) -> Registrar:
    """The backend for `consul.mode`: with `make_pool`, the only code that knows there are
    two modes."""
    if config.consul.mode == "agent":
        return AgentRegistrar(pool, identity, config.node.meta, config.sync.interval)
    return CatalogRegistrar(pool, identity, config.node.meta, config.consul.datacenter)


def discovery_source(
    config: Config, runner: DiscoveryRunner, identity: Optional[NodeIdentity] = None
) -> IntentSource:
    """Discovery plus static services, as the engine asks for them each cycle. A one-shot
    command beside the running daemon leaves the discovery state file to the daemon, which
    owns the state directory (another configuration's view must not become the daemon's)."""

    def intents(address: str, actual: Optional[ActualState], persist: bool) -> List[ServiceIntent]:
        beside_daemon = identity is not None and identity.beside_daemon()
        return runner.intents(config, address, actual, persist, own_state=not beside_daemon)

    return intents


def with_self(config: Config, source: IntentSource) -> IntentSource:
    """`source` plus regagent's own endpoint, when telemetry is on."""
    if not config.telemetry.listen:
        return source

    def intents(address: str, actual: Optional[ActualState], persist: bool) -> List[ServiceIntent]:
        wanted = source(address, actual, persist)
        own = self_intent(config, address)
        if own is not None and all(i.service.id != own.service.id for i in wanted):
            wanted = [*wanted, own]
        return wanted

    return intents


def beating_prober(heartbeat: Heartbeat, prober: Prober = probe_metrics) -> Prober:
    """Discovery's prober, beating the daemon's heartbeat after each probe."""

    def probe(address: str, port: int, path: str, timeout: float, max_bytes: int) -> ProbeResult:
        try:
            return prober(address, port, path, timeout, max_bytes)
        finally:
            heartbeat.beat()

    return probe


def build(
    config: Config,
    *,
    previous: Optional[App] = None,
    intent_source: Optional[IntentSource] = None,
    pool: Optional[ServerPool] = None,
    writer: Optional[Writer] = None,
) -> App:
    """All components for `config`; with `previous`, carrying over what a reload keeps.

    `writer` says which configuration runs and whether as the daemon (`regagent run`), which
    then holds its state directory's lock. `intent_source` and `pool` replace the real ones
    (tests, benchmarks)."""
    policy = RetryPolicy.from_config(config)
    if previous is not None:
        writer = previous.identity.writer
    writer = writer or Writer()
    identity = NodeIdentity(
        config.node,
        state_dir=config.sync.state_dir,
        writer=writer,
        warnings=previous.identity.warnings if previous is not None else None,
    )
    lock = daemon_lock(config, identity, previous) if writer.daemon else None
    pool = pool or make_pool(config, policy)
    if previous is not None:
        pool.adopt(previous.pool)
        identity.adopt(previous.identity)
        health = previous.health
        health.configure(config.sync.failures_before_critical)
        runner = previous.discovery
        metrics = previous.metrics
        heartbeat = previous.heartbeat
    else:
        health = Health(config.sync.failures_before_critical, persistent_probe_runner())
        metrics = None
        heartbeat = Heartbeat()
        # Background identifications probe with the plain prober: only the loop's own progress
        # may beat the heartbeat the watchdog reads.
        unconfirmed = (
            UnconfirmedProbes.for_daemon(probe_metrics)
            if writer.daemon
            else UnconfirmedProbes.for_one_shot(probe_metrics)
        )
        runner = DiscoveryRunner(
            health=health, prober=beating_prober(heartbeat), unconfirmed=unconfirmed
        )
    if metrics is None and config.telemetry.listen:
        from regagent.metrics import Metrics

        metrics = Metrics()
    if metrics is not None:
        metrics.observe_pool(pool)

    def observe(server: str, outcome: Outcome, seconds: float) -> None:
        heartbeat.beat()
        if metrics is not None:
            metrics.observe_request(server, outcome, seconds)

    pool.observer = observe
    registrar = make_registrar(config, pool, identity)
    source = with_self(config, intent_source or discovery_source(config, runner, identity))
    quick = quick_source(config, runner) if intent_source is None else None
    engine = SyncEngine(
        registrar,
        source,
        health,
        cycle_deadline=policy.cycle_deadline,
        quick=quick,
        progress=heartbeat.beat,
        begin=pool.new_cycle,
    )
    watch = make_watch(config, engine, runner, metrics) if quick is not None else None
    return App(
        config,
        policy,
        pool,
        identity,
        health,
        runner,
        registrar,
        engine,
        metrics,
        heartbeat,
        watch,
        lock,
    )


def daemon_lock(config: Config, identity: NodeIdentity, previous: Optional[App]) -> Optional[Lock]:
    """The daemon's lock on `sync.state_dir`, so that a one-shot command beside it leaves its
    node alone and a second daemon does not share the directory. Kept across a reload that
    keeps the directory; None (said once) where the directory cannot hold it."""
    directory = StateDir(config.sync.state_dir, identity.warnings)
    kept = previous.lock if previous is not None else None
    if kept is not None and kept.directory.path == directory.path:
        return kept
    lock = Lock(directory, DAEMON_LOCK)
    try:
        taken = lock.acquire()
    except (OSError, Untrusted, Corrupt) as exc:
        identity.warnings.once(
            "state_lock_unavailable",
            directory.file(DAEMON_LOCK),
            str(exc),
            consequence="one-shot commands cannot tell that the daemon runs",
        )
        return None
    if not taken:
        raise StateDirectoryInUse(
            f"sync.state_dir {directory.path} is in use by another `regagent run` (it holds "
            f"{lock.directory.file(DAEMON_LOCK)}); two daemons sharing it would take each "
            "other's node for a rename. Give each configuration its own sync.state_dir"
        )
    if previous is not None and previous.lock is not None:
        previous.lock.release()  # the reload moved the state directory
    return lock


def quick_source(config: Config, runner: DiscoveryRunner) -> Optional[QuickSource]:
    """The watch's quick discovery pass, or None when discovery or the watch is off."""
    if not config.discovery.enabled or config.discovery.watch_interval <= 0:
        return None

    def quick(address: str, actual: ActualState) -> Tuple[List[ServiceIntent], FrozenSet[int]]:
        return runner.quick_intents(config, address, actual)

    return quick


def make_watch(
    config: Config, engine: SyncEngine, runner: DiscoveryRunner, metrics: Optional[Metrics] = None
) -> Watch:
    """The look at the listeners between cycles, every discovery.watch_interval; its writes
    are counted in the metrics like a full cycle's."""
    return Watch(
        engine,
        runner,
        config.discovery.watch_interval,
        keys=ListenerKeysReader(),
        relevant=lambda port: runner.could_matter(config, port),
        on_report=metrics.observe_writes if metrics is not None else None,
    )


PROBE_WORKERS = 8


def persistent_probe_runner(workers: int = PROBE_WORKERS) -> ProbeRunner:
    """The health checks of a cycle run concurrently on threads that live as long as the
    process: starting eight threads every cycle cost more CPU than the checks themselves
    (bench/footprint.py). The threads start without our signals, which stay with the main
    thread (see `regagent.threads.signals_blocked`)."""
    executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="regagent-check")

    def submit(probe: HealthProbe) -> Future[Result]:
        with signals_blocked():  # threads are started lazily, on the first submits
            return executor.submit(run_probe, probe)

    def run(probes: List[HealthProbe]) -> Dict[HealthProbe, Result]:
        return run_all(probes, submit)

    return run


def pool_addresses(pool: ServerPool) -> List[str]:
    return [server.address for server in pool.servers]


def loop_parts(app: App) -> LoopParts:
    """What the daemon needs of an app."""
    return LoopParts(
        app.engine,
        app.config.sync,
        tuple(pool_addresses(app.pool)),
        app.config.telemetry.listen,
        app.watch,
        app.metrics,
    )


def daemon(
    app: App,
    config_path: Optional[str] = None,
    *,
    on_reload: Callable[[Config], None] = lambda config: None,
    notifier: Optional[Notifier] = None,
) -> Daemon:
    """The `regagent run` loop around the app's engine; SIGHUP re-reads `config_path` and
    rebuilds with `build(new, previous=current)`, after `on_reload(new)` (logging set-up)."""
    current = [app]

    def reload() -> LoopParts:
        if config_path is None:
            raise ConfigError(["started without a configuration path to re-read"])
        config = load_config(config_path)  # ConfigError: rejected whole, nothing changed
        rebuilt = build(config, previous=current[0])
        on_reload(config)
        current[0] = rebuilt
        return loop_parts(rebuilt)

    def renew() -> LoopParts:
        current[0] = build(current[0].config, previous=current[0])
        return loop_parts(current[0])

    return Daemon(
        loop_parts(app),
        reload=reload,
        renew=renew,
        notifier=notifier or Notifier.from_env(os.environ),
        heartbeat=app.heartbeat,
        watchdog_interval=watchdog_interval(os.environ),
    )
