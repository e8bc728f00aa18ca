"""The composition root: every component built from one configuration, in one place, and no
policy of its own.

`build(config)` wires the server pool, the registration backend for `consul.mode`, the node
identity, health checks, discovery (the engine's intent source), the sync engine and the
listener watch. A reload builds again from the new configuration (`build(new, previous=app)`),
except what `SURVIVES_RELOAD` names. Metrics exist once a configuration serves them
(`telemetry.listen`): without it, the daemon imports no prometheus-client and no HTTP server.
Nothing here is a module-level singleton: two apps in one process share no state.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Callable, FrozenSet, List, Optional, Sequence, Tuple

from regagent.config import load_config
from regagent.config.model import Config
from regagent.consul.agent import AgentRegistrar
from regagent.consul.answers import Outcome
from regagent.consul.catalog import CatalogRegistrar, SessionSwitch
from regagent.consul.credentials import Credentials
from regagent.consul.deadman import SessionEvents, SessionKeeper, SessionSettings, default_ttl
from regagent.consul.node_watch import NodeWatch
from regagent.consul.pool import ServerPool
from regagent.consul.registrar import Registrar
from regagent.consul.retry import RetryPolicy
from regagent.daemon import Daemon, LoopParts, nothing_due
from regagent.discovery.intents import IntentSet
from regagent.discovery.probe import probe_metrics
from regagent.discovery.sensor import Change, Sensor
from regagent.discovery.service import Discovery
from regagent.discovery.unconfirmed import UnconfirmedProbes
from regagent.engine import SyncEngine
from regagent.errors import ConfigError
from regagent.health import Health, ProbePool
from regagent.identity import NodeIdentity, Writer, daemon_lock
from regagent.liveness import Heartbeat
from regagent.maintenance.check import MaintenanceChecks
from regagent.maintenance.store import MaintenanceStore
from regagent.model import ActualState, ServiceIntent
from regagent.nodechecks import NodeCheckSource
from regagent.notify import Notifier, watchdog_interval
from regagent.repair import Repair
from regagent.statedir import Lock
from regagent.watch import Watch

if TYPE_CHECKING:
    from regagent.maintenance.metric import MaintenanceCollector
    from regagent.metrics import Metrics

# What a reload keeps (SIGHUP, or a renew after an interrupted cycle), by App field; each holds
# history the new configuration must not lose:
#   pool       cool-downs, failure counts, latency, the server in use, the cluster's capabilities
#   identity   the address `auto` found (else every service is rewritten), node.json warnings
#   health     the flap history of every check
#   discovery  socket owners, probe results, background identifications, once-only reports
#   metrics    counters continue (made on the first configuration that serves them)
#   heartbeat  what the systemd watchdog reads
#   lock       the daemon's hold on its state directory, while the directory stays the same
#   maintenance_metric  registered once, with the metrics; told the new state directory
#   sessions   the dead-man's switch: its live session and renewing thread (a reload keeps the
#              session; the host is never marked dead by a reload)
# The pool and the identity are rebuilt, since the configuration names their servers and their
# node, and take over their predecessor's state (`adopt`). The others are kept and told the new
# configuration, by the same calls that configure them on the first build.
SURVIVES_RELOAD = (
    "pool",
    "identity",
    "health",
    "discovery",
    "metrics",
    "heartbeat",
    "lock",
    "maintenance_metric",
    "sessions",
)


@dataclass
class App:
    """The components of one running configuration."""

    config: Config
    policy: RetryPolicy
    pool: ServerPool
    identity: NodeIdentity
    health: Health
    discovery: Discovery
    registrar: Registrar
    engine: SyncEngine
    metrics: Optional[Metrics]  # None until a configuration serves metrics
    heartbeat: Heartbeat
    watch: Optional[Watch] = None  # None: discovery or discovery.watch_interval is off
    lock: Optional[Lock] = None  # the daemon's hold on its state directory (`regagent run`)
    # the maintenance window's end on the metrics endpoint (`regagent maint`)
    maintenance_metric: Optional[MaintenanceCollector] = None
    maintenance: Optional[MaintenanceChecks] = None  # the window as a node check, and its end
    sessions: Optional[SessionKeeper] = None  # catalog mode: the dead-man's switch
    repair: Optional[Repair] = None  # the node watch (catalog mode, `regagent run`)


def build(
    config: Config,
    *,
    previous: Optional[App] = None,
    intent_source: Optional[Wanted] = None,
    pool: Optional[ServerPool] = None,
    writer: Optional[Writer] = None,
) -> App:
    """All components for `config`; with `previous`, carrying over what SURVIVES_RELOAD names.

    `writer` says which configuration runs and whether as the daemon (`regagent run`), which
    then holds its state directory's lock. `intent_source` (then no watch) and `pool` replace
    the real ones (tests, benchmarks)."""
    writer = previous.identity.writer if previous is not None else writer or Writer()
    policy = RetryPolicy.from_config(config)
    identity = NodeIdentity(
        config.node,
        state_dir=config.sync.state_dir,
        writer=writer,
        warnings=previous.identity.warnings if previous is not None else None,
    )
    kept_lock = previous.lock if previous is not None else None
    lock = (
        daemon_lock(config.sync.state_dir, identity.warnings, kept_lock) if writer.daemon else None
    )
    pool = pool or make_pool(config, policy)
    if previous is None:
        heartbeat = Heartbeat()
        health = Health(config.sync.failures_before_critical, ProbePool())
        discovery = make_discovery(config, health, heartbeat, daemon=writer.daemon)
        metrics: Optional[Metrics] = None
    else:  # SURVIVES_RELOAD
        pool.adopt(previous.pool)
        identity.adopt(previous.identity)
        health, discovery = previous.health, previous.discovery
        metrics, heartbeat = previous.metrics, previous.heartbeat
    maintenance = MaintenanceStore(config.sync.state_dir, identity.warnings)
    maintenance_metric = previous.maintenance_metric if previous is not None else None
    health.configure(config.sync.failures_before_critical)
    discovery.reconfigure(config, beside_daemon=identity.beside_daemon)
    if metrics is None and config.telemetry.listen:
        from regagent.metrics import Metrics

        metrics = Metrics()
    if metrics is not None:
        metrics.observe_pool(pool)
        if maintenance_metric is None:  # registered once, with the metrics
            from regagent.maintenance.metric import MaintenanceCollector

            maintenance_metric = MaintenanceCollector(None)
            metrics.registry.register(maintenance_metric)
        maintenance_metric.store = maintenance  # read at each scrape

    def observe(server: str, outcome: Outcome, seconds: float) -> None:
        if threading.current_thread() is threading.main_thread():
            heartbeat.beat()  # only the loop's own progress (not the node watch's thread)
        if metrics is not None:
            metrics.observe_request(server, outcome, seconds)

    pool.observer = observe
    # The features that put checks on the host's node (catalog mode), one line each.
    node_checks: List[NodeCheckSource] = []
    maintenance_checks = MaintenanceChecks(maintenance)
    node_checks.append(maintenance_checks)  # `regagent maint`: _node_maintenance
    sessions = make_sessions(
        config,
        policy=policy,
        identity=identity,
        metrics=metrics,
        writer=writer,
        previous=previous,
        credentials=pool.credentials,
    )
    if sessions is not None:
        node_checks.append(sessions)  # the dead-man's switch: regagent:alive
    node_watch = make_node_watch(
        config, pool, identity, metrics, previous=previous, daemon=writer.daemon
    )
    registrar = make_registrar(
        config, pool, identity, node_checks, switch=sessions, node_watch=node_watch
    )
    engine = SyncEngine(
        registrar,
        discovery if intent_source is None else GivenIntents(intent_source),
        health,
        cycle_deadline=policy.cycle_deadline,
        progress=heartbeat.beat,
        begin=pool.new_cycle,
    )
    watch = make_watch(config, engine, discovery.sensor, metrics) if intent_source is None else None
    return App(
        config,
        policy,
        pool,
        identity,
        health,
        discovery,
        registrar,
        engine,
        metrics,
        heartbeat,
        watch,
        lock,
        maintenance_metric,
        maintenance_checks,
        sessions,
        make_repair(engine, node_watch, metrics),
    )


def make_node_watch(
    config: Config,
    pool: ServerPool,
    identity: NodeIdentity,
    metrics: Optional[Metrics],
    *,
    previous: Optional[App],
    daemon: bool,
) -> Optional[NodeWatch]:
    """The blocking query on the node, for the daemon in catalog mode with consul.watch_wait
    on (one-shot commands read as they always did). A reload keeps the previous watch, its
    index and its answer, when the servers, the node name and the wait are unchanged; else the
    previous one stops and the daemon starts the new one."""
    kept = previous.repair.watch if previous is not None and previous.repair else None
    wanted = daemon and config.consul.mode == "catalog" and config.consul.watch_wait > 0
    on_event = metrics.observe_watch if metrics is not None else None
    if kept is not None:
        if wanted and kept.same_target(pool, identity.name, config.consul.watch_wait):
            kept.rebind(pool)
            kept.on_event = on_event
            return kept
        kept.stop()
    if not wanted:
        return None
    return NodeWatch(pool, identity.name, config.consul.watch_wait, on_event=on_event)


def make_repair(
    engine: SyncEngine, node_watch: Optional[NodeWatch], metrics: Optional[Metrics]
) -> Optional[Repair]:
    """The loop's side of the node watch: its news repaired between cycles."""
    if node_watch is None:
        return None
    on_report = metrics.observe_repair if metrics is not None else None
    return Repair(engine, node_watch, on_report=on_report)


def session_settings(config: Config, node: str) -> SessionSettings:
    session = config.consul.session
    return SessionSettings(
        node=node,
        ttl=session.ttl if session.ttl is not None else default_ttl(config.sync.interval),
        on_stop=session.on_stop,
        enabled=session.enabled,
        datacenter=config.consul.datacenter,
    )


def make_sessions(
    config: Config,
    *,
    policy: RetryPolicy,
    identity: NodeIdentity,
    metrics: Optional[Metrics],
    writer: Writer,
    previous: Optional[App],
    credentials: Optional[Credentials] = None,
) -> Optional[SessionKeeper]:
    """The dead-man's switch in catalog mode. The daemon's renews its session through a
    server pool of its own (a thread of its own); a one-shot command's only claims the check
    (it leaves the daemon's as it is, and `deregister` removes it). `credentials` are the main
    pool's: one watch of the token and TLS files serves both pools."""
    kept = previous.sessions if previous is not None else None
    if config.consul.mode != "catalog":
        if kept is not None:  # reloaded into agent mode: the agent's node, not ours
            kept.stop("disarm")
        return None
    settings = session_settings(config, identity.name)
    pool = None
    if writer.daemon:
        pool = make_pool(config, policy, credentials)
        pool.place(identity.name)
        if metrics is not None:
            pool.observer = metrics.observe_request  # no heartbeat: not the loop's progress
        if kept is not None and kept.pool is not None:
            pool.adopt(kept.pool)
    events = SessionEvents()
    if metrics is not None:
        events = SessionEvents(
            renewed=metrics.observe_session_renewal,
            created=metrics.observe_session_created,
            state=metrics.observe_session_state,
        )
    if kept is not None:  # SURVIVES_RELOAD
        kept.configure(settings, pool, events)
        return kept
    return SessionKeeper(settings, pool, active=writer.daemon, events=events)


def make_pool(
    config: Config, policy: RetryPolicy, credentials: Optional[Credentials] = None
) -> ServerPool:
    """The servers, or in agent mode only the local agent (which forwards to them). The token
    and TLS files are read (and then followed) by `credentials`, new unless another pool's are
    given."""
    consul = config.consul
    if consul.mode == "agent":
        consul = replace(consul, servers=(consul.agent_address,))
    if credentials is None:
        credentials = Credentials(consul)
    return ServerPool(consul, credentials.token, policy=policy, credentials=credentials)


def make_registrar(
    config: Config,
    pool: ServerPool,
    identity: NodeIdentity,
    node_checks: Sequence[NodeCheckSource] = (),
    *,
    switch: Optional[SessionSwitch] = None,
    node_watch: Optional[NodeWatch] = None,
) -> Registrar:
    """The backend for `consul.mode`: with `make_pool`, the only code that knows there are
    two modes. `node_checks` go on the host's node in catalog mode; in agent mode the agent
    owns its node (its serfHealth already marks a dead host, its own maintenance API the rest)."""
    if config.consul.mode == "agent":
        return AgentRegistrar(pool, identity, config.node.meta, config.sync.interval)
    return CatalogRegistrar(
        pool,
        identity,
        config.node.meta,
        config.consul.datacenter,
        node_checks=node_checks,
        switch=switch,
        watch=node_watch,
    )


def make_discovery(
    config: Config, health: Health, heartbeat: Heartbeat, *, daemon: bool
) -> Discovery:
    """The engine's intent source. Probes inside a pass beat the heartbeat; background
    identifications do not, since only the loop's own progress may beat what the watchdog
    reads, and the daemon never waits for them (a one-shot command, a bounded time)."""
    background = UnconfirmedProbes.for_daemon if daemon else UnconfirmedProbes.for_one_shot
    sensor = Sensor(config, progress=heartbeat.beat, unconfirmed=background(probe_metrics))
    return Discovery(config, sensor=sensor, health=health)


# (node address, what Consul holds for the node if known, persist state?) -> every intent
Wanted = Callable[[str, Optional[ActualState], bool], List[ServiceIntent]]


@dataclass(frozen=True)
class GivenIntents:
    """Intents handed to `build` in place of discovery's (tests, benchmarks): every intent,
    as `wanted` says; no partial cycles."""

    wanted: Wanted

    def intents(
        self,
        address: str,
        actual: Optional[ActualState],
        change: Optional[Change] = None,
        *,
        persist: bool = True,
    ) -> Tuple[IntentSet, FrozenSet[int]]:
        return IntentSet(tuple(self.wanted(address, actual, persist))), frozenset()


def make_watch(
    config: Config, engine: SyncEngine, sensor: Sensor, metrics: Optional[Metrics] = None
) -> Optional[Watch]:
    """The look at the listeners between cycles, every discovery.watch_interval (None when
    discovery or the watch is off); its writes are counted in the metrics like a full cycle's."""
    if not config.discovery.enabled or config.discovery.watch_interval <= 0:
        return None
    return Watch(
        engine,
        sensor,
        config.discovery.watch_interval,
        on_report=metrics.observe_writes if metrics is not None else None,
    )


def pool_addresses(pool: ServerPool) -> List[str]:
    return [server.address for server in pool.servers]


def loop_parts(app: App) -> LoopParts:
    """What the daemon needs of an app."""
    sessions = app.sessions
    on_stop = None
    if sessions is not None:
        planned = app.config.consul.session.on_stop

        def on_stop(deregistering: bool) -> None:
            # Deregistration follows and removes the check and the session itself.
            sessions.stop("halt" if deregistering else planned)

    return LoopParts(
        app.engine,
        app.config.sync,
        tuple(pool_addresses(app.pool)),
        app.config.telemetry.listen,
        app.watch,
        app.metrics,
        nothing_due if app.maintenance is None else app.maintenance.due,
        on_stop,
        app.repair,
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

    if app.sessions is not None:
        app.sessions.start()
    return Daemon(
        loop_parts(app),
        reload=reload,
        renew=renew,
        notifier=notifier or Notifier.from_env(os.environ),
        heartbeat=app.heartbeat,
        watchdog_interval=watchdog_interval(os.environ),
    )
