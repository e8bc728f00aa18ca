"""The typed configuration. Field defaults here are the built-in defaults.

Each field's metadata may carry a `kind` the validator understands: "duration" (seconds, written
as `30s`, `5m`, `72h`), "port" (1-65535), "hostport", "port_range", "choice" (with `choices`),
"count" (a whole number), "url_path", "service_address", "node_name", and "text" / "tags" /
"service_meta" for text sent to Consul (printable only: no control, bidi or zero-width
characters). Durations and counts carry bounds
(`low`, `high`; `low_open` when the low bound itself is refused): a value that passes
check-config must never fail at run time, and zero or absurd values would (a 0 s timeout, a
1e400 s interval, a 0-byte probe). Secrets are marked `secret=True` so check-config can mask them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, Optional, Tuple


def _kind(kind: str, **extra: Any) -> Dict[str, Any]:
    return {"kind": kind, **extra}


MINUTE = 60.0
HOUR = 3600.0
DAY = 86400.0
MIB = 1024 * 1024


def _timeout(high: float = 10.0) -> Dict[str, Any]:
    """A network timeout: more than 0 s (0 means "fail at once"), at most `high` seconds.

    The bounds keep every single call (connect + read at most 40 s) well inside the 60 s
    between systemd watchdog pings, so one slow call can never get a working daemon killed."""
    return _kind("duration", low=0.0, low_open=True, high=high)


@dataclass(frozen=True)
class TLSConfig:
    ca_file: Optional[str] = None
    cert_file: Optional[str] = None
    key_file: Optional[str] = None
    verify: bool = True


@dataclass(frozen=True)
class SessionConfig:
    """The dead-man's switch (catalog mode, `regagent run` only): a Consul session with a TTL
    on the host's node, renewed by the daemon, and a node check Consul turns critical when the
    session ends."""

    enabled: bool = True
    # None: max(30s, 3 x sync.interval). At least the servers' session_ttl_min (10s unless
    # changed), at most Consul's 24h. Consul marks a dead host critical within 2 x ttl.
    ttl: Optional[float] = field(default=None, metadata=_kind("duration", low=1.0, high=DAY))
    # A planned stop (SIGTERM): `disarm` keeps the host's last status (the check is removed,
    # the session destroyed); `critical` ends the session so Consul marks the host critical now.
    on_stop: str = field(default="disarm", metadata=_kind("choice", choices=("disarm", "critical")))


@dataclass(frozen=True)
class ConsulConfig:
    servers: Tuple[str, ...] = field(default=("127.0.0.1:8500",), metadata=_kind("hostport_list"))
    scheme: str = field(default="http", metadata=_kind("choice", choices=("http", "https")))
    datacenter: Optional[str] = None
    token_file: Optional[str] = field(default=None, metadata=_kind("token_file"))
    token: Optional[str] = field(default=None, metadata={"secret": True})
    tls: TLSConfig = field(default_factory=TLSConfig)
    connect_timeout: float = field(default=2.0, metadata=_timeout())
    # Above Consul's rpc_hold_timeout (7s), so "No cluster leader" arrives before a timeout.
    read_timeout: float = field(default=10.0, metadata=_timeout(high=30.0))
    mode: str = field(default="catalog", metadata=_kind("choice", choices=("catalog", "agent")))
    agent_address: str = field(default="127.0.0.1:8500", metadata=_kind("hostport"))
    cooldown_initial: float = field(default=5.0, metadata=_kind("duration", low=0.1, high=HOUR))
    cooldown_max: float = field(default=300.0, metadata=_kind("duration", low=0.1, high=DAY))
    # The blocking query on this host's own node (catalog mode, `regagent run`): how long each
    # poll may wait for a change. 0 turns it off; at most Consul's own cap, max_query_time (10m).
    watch_wait: float = field(default=300.0, metadata=_kind("duration", low=0.0, high=600.0))
    session: SessionConfig = field(default_factory=SessionConfig)


@dataclass(frozen=True)
class NodeConfig:
    name: Optional[str] = field(default=None, metadata=_kind("node_name"))  # None: host name
    address: str = field(default="auto", metadata=_kind("address_or_auto"))
    meta: Dict[str, str] = field(default_factory=dict, metadata=_kind("node_meta"))


@dataclass(frozen=True)
class SyncConfig:
    # At least 1 s: the cycle reads Consul twice; far below a second would hammer the servers.
    interval: float = field(default=30.0, metadata=_kind("duration", low=1.0, high=DAY))
    jitter: float = field(default=5.0, metadata=_kind("duration", low=0.0, high=HOUR))
    deregister_after: float = field(
        default=72 * HOUR, metadata=_kind("duration", low=0.0, high=365 * DAY)
    )
    deregister_on_shutdown: bool = False
    # Consecutive failed probes before a registered service turns critical (against flapping).
    failures_before_critical: int = field(default=3, metadata=_kind("count", low=1, high=100))
    state_dir: str = "/var/lib/regagent"


@dataclass(frozen=True)
class ExporterOverride:
    """Adjusts discovered exporters matched by exporter name and/or port."""

    exporter: Optional[str] = None
    port: Optional[int] = field(default=None, metadata=_kind("port"))
    name: Optional[str] = field(default=None, metadata=_kind("service_name"))
    tags: Tuple[str, ...] = field(default=(), metadata=_kind("tags"))
    meta: Dict[str, str] = field(default_factory=dict, metadata=_kind("service_meta"))
    ignore: bool = False


@dataclass(frozen=True)
class DiscoveryConfig:
    enabled: bool = True
    port_ranges: Tuple[Tuple[int, int], ...] = field(default=(), metadata=_kind("port_ranges"))
    exclude_ports: Tuple[int, ...] = field(default=(), metadata=_kind("port_list"))
    exclude_processes: Tuple[str, ...] = ()
    register_unknown: bool = False
    probe_timeout: float = field(default=2.0, metadata=_timeout())
    # A new listener that does not answer within probe_timeout gets one longer look, in the
    # background (never inside a cycle): Prometheus's own default scrape timeout.
    identify_timeout: float = field(default=10.0, metadata=_timeout(high=30.0))
    probe_max_bytes: int = field(
        default=4 * MIB, metadata=_kind("count", low=1024, high=64 * MIB, unit="bytes")
    )
    # New discovered registrations per cycle; the rest wait for the next cycle (trust model:
    # a local process must not be able to flood the catalog in one go).
    max_new_per_cycle: int = field(default=10, metadata=_kind("count", low=1, high=1000))
    # Seconds between looks at the LISTEN sockets between full cycles (a new exporter is
    # registered, a vanished one marked critical, within about this); 0 turns the watch off.
    watch_interval: float = field(default=1.0, metadata=_kind("duration"))
    overrides: Tuple[ExporterOverride, ...] = ()


@dataclass(frozen=True)
class CheckConfig:
    type: str = field(default="http", metadata=_kind("choice", choices=("http", "tcp", "none")))
    path: Optional[str] = field(default=None, metadata=_kind("url_path"))  # http: metrics_path
    timeout: float = field(default=2.0, metadata=_timeout())


@dataclass(frozen=True)
class ServiceConfig:
    name: str = field(default="", metadata=_kind("service_name", required=True))
    port: int = field(default=0, metadata=_kind("port", required=True))
    id: Optional[str] = field(default=None, metadata=_kind("text"))  # default: <name>-<port>
    address: Optional[str] = field(default=None, metadata=_kind("service_address"))  # node's
    tags: Tuple[str, ...] = field(default=(), metadata=_kind("tags"))
    meta: Dict[str, str] = field(default_factory=dict, metadata=_kind("service_meta"))
    metrics_path: str = field(default="/metrics", metadata=_kind("url_path"))
    scheme: str = field(default="http", metadata=_kind("choice", choices=("http", "https")))
    check: CheckConfig = field(default_factory=CheckConfig)


@dataclass(frozen=True)
class DefaultsConfig:
    tags: Tuple[str, ...] = field(default=(), metadata=_kind("tags"))
    meta: Dict[str, str] = field(default_factory=dict, metadata=_kind("service_meta"))


@dataclass(frozen=True)
class TelemetryConfig:
    listen: str = field(default="", metadata=_kind("listen"))  # "" disables the endpoint


@dataclass(frozen=True)
class LogConfig:
    level: str = field(
        default="info", metadata=_kind("choice", choices=("debug", "info", "warning", "error"))
    )
    format: str = field(
        default="auto", metadata=_kind("choice", choices=("auto", "json", "console"))
    )


@dataclass(frozen=True)
class Config:
    consul: ConsulConfig = field(default_factory=ConsulConfig)
    node: NodeConfig = field(default_factory=NodeConfig)
    sync: SyncConfig = field(default_factory=SyncConfig)
    discovery: DiscoveryConfig = field(default_factory=DiscoveryConfig)
    services: Tuple[ServiceConfig, ...] = ()
    defaults: DefaultsConfig = field(default_factory=DefaultsConfig)
    telemetry: TelemetryConfig = field(default_factory=TelemetryConfig)
    log: LogConfig = field(default_factory=LogConfig)
