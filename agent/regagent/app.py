"""The composition root: every component built from one configuration, in one place.

`build(config)` wires the server pool, the registration backend for `consul.mode`, the node
identity, health checks, discovery and the sync engine. `build(new, previous=app)` does it
again for a reloaded configuration while keeping what must survive a reload: server cool-downs
and the server in use, the flap history, discovery's caches and once-only reports, and the
node address found for `auto`. Nothing here is a module-level singleton: two apps in one
process share no state.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import FrozenSet, List, Optional, Tuple

from regagent.config.model import Config
from regagent.config.token import load_token
from regagent.consul.agent import AgentRegistrar
from regagent.consul.catalog import CatalogRegistrar
from regagent.consul.pool import ServerPool
from regagent.consul.registrar import Registrar
from regagent.consul.retry import RetryPolicy
from regagent.daemon import Daemon
from regagent.discovery.listeners import ListenerKeysReader
from regagent.discovery.runner import DiscoveryRunner
from regagent.engine import IntentSource, QuickSource, SyncEngine
from regagent.health.health import Health
from regagent.identity import NodeIdentity
from regagent.model import ActualState, ServiceIntent
from regagent.watch import Watch


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
    watch: Optional[Watch] = None  # None: discovery or discovery.watch_interval is off


def make_pool(config: Config, policy: RetryPolicy) -> ServerPool:
    """The servers, or in agent mode only the local agent (which forwards to them)."""
    consul = config.consul
    if consul.mode == "agent":
        consul = replace(consul, servers=(consul.agent_address,))
    return ServerPool(consul, load_token(config.consul), policy=policy)


def make_registrar(config: Config, pool: ServerPool, identity: NodeIdentity) -> Registrar:
    """The backend for `consul.mode`: the one place that knows there are two."""
    if config.consul.mode == "agent":
        return AgentRegistrar(pool, identity, config.node.meta, config.sync.interval)
    return CatalogRegistrar(pool, identity, config.node.meta, config.consul.datacenter)


def discovery_source(config: Config, runner: DiscoveryRunner) -> IntentSource:
    """Discovery plus static services, as the engine asks for them each cycle."""

    def intents(address: str, actual: Optional[ActualState], persist: bool) -> List[ServiceIntent]:
        return runner.intents(config, address, actual, persist)

    return intents


def build(
    config: Config,
    *,
    previous: Optional[App] = None,
    intent_source: Optional[IntentSource] = None,
    pool: Optional[ServerPool] = None,
) -> App:
    """All components for `config`; with `previous`, carrying over what a reload keeps.

    `intent_source` and `pool` replace the real ones (tests, benchmarks)."""
    policy = RetryPolicy.from_config(config)
    pool = pool or make_pool(config, policy)
    identity = NodeIdentity(config.node, state_dir=config.sync.state_dir)
    if previous is not None:
        pool.adopt(previous.pool)
        identity.adopt(previous.identity)
        health = previous.health
        health.configure(config.sync.failures_before_critical)
        runner = previous.discovery
    else:
        health = Health(config.sync.failures_before_critical)
        runner = DiscoveryRunner(health=health)
    registrar = make_registrar(config, pool, identity)
    source = intent_source or discovery_source(config, runner)
    quick = quick_source(config, runner) if intent_source is None else None
    engine = SyncEngine(
        registrar, source, health, cycle_deadline=policy.cycle_deadline, quick=quick
    )
    watch = make_watch(config, engine, runner) if quick is not None else None
    return App(config, policy, pool, identity, health, runner, registrar, engine, watch)


def quick_source(config: Config, runner: DiscoveryRunner) -> Optional[QuickSource]:
    """The watch's quick discovery pass, or None when discovery or the watch is off."""
    if not config.discovery.enabled or config.discovery.watch_interval <= 0:
        return None

    def quick(address: str, actual: ActualState) -> Tuple[List[ServiceIntent], FrozenSet[int]]:
        return runner.quick_intents(config, address, actual)

    return quick


def make_watch(config: Config, engine: SyncEngine, runner: DiscoveryRunner) -> Watch:
    """The look at the listeners between cycles, every discovery.watch_interval."""
    return Watch(
        engine,
        runner,
        config.discovery.watch_interval,
        keys=ListenerKeysReader(),
        relevant=lambda port: runner.could_matter(config, port),
    )


def daemon(app: App) -> Daemon:
    """The `regagent run` loop around the app's engine."""
    return Daemon(app.engine, app.config.sync, app.config.consul.servers, watch=app.watch)
