"""Service intents, pure: configured services (`static_intent`), discovered exporters present
(`discovered_intent`) or vanished but kept (`vanished_intent`), and regagent's own endpoint
(`self_intent`), with `defaults` applied.

`build_intents` is pure: the same config, node address, discovery result, clock reading and
previous discovery state always give the same intents and the same new state. What reads
sockets or files is elsewhere: `regagent.discovery.sensor` senses the host, and
`regagent.discovery.service.Discovery`, the engine's intent source, reads and writes the state
file around this module.

Rules (design decisions 3, 4 and 9):
- Service ID `<name>-<port>` (static services may set their own `id`).
- Wildcard listener -> the node address; loopback-only -> not registered; specific IP -> that IP.
- Tags: the exporter name, `defaults.tags`, matching overrides' tags; always canonical.
- Meta: `defaults.meta`, then metrics_path, scheme, exporter, exporter_version, identified_by
  (how it was identified: build_info, fingerprint, process, port; absent for an unknown
  exporter), then overrides' meta; `managed-by=regagent` always wins.
- A discovered exporter that is identified now is passing, with stable output text; one
  identified by its process while its answer failed (slow, erroring) is critical and says why.
  One that was seen before but is gone stays registered as critical ("not listening on :9100
  since ...") until `sync.deregister_after` has passed since it was last seen, then it is dropped.
- What a registration says of an exporter does not flap with its backend: when only its process
  or port names it now (its answer names nothing, or failed), the version and `identified_by`
  its answer gave before on the same port are kept.
- A static service wins over a discovered one on the same ID or port, and a present exporter
  supersedes a vanished one that was registered on the same port (e.g. after a rename).
- At most `discovery.max_new_per_cycle` exporters not in the previous state are added per call,
  in port order; the rest are skipped as "held back" and come in the next cycles.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field, replace
from typing import Dict, List, Mapping, Optional, Tuple, Union

from regagent import __version__
from regagent.config.model import Config, ExporterOverride, ServiceConfig
from regagent.discovery.evidence import FROM_ANSWER, PORT, PROCESS
from regagent.discovery.exporters import ExporterTable, load_exporter_table, service_name
from regagent.discovery.identify import (
    EXCLUDED,
    GENERIC_SERVICE,
    IDENTIFIED,
    LOOPBACK,
    NOT_EXPORTER,
    UNKNOWN,
    WILDCARD,
    DiscoveryResult,
    Finding,
)
from regagent.discovery.probe import url_host
from regagent.discovery.seen import SeenService, parse_time
from regagent.model import (
    CRITICAL,
    PASSING,
    ActualState,
    CheckState,
    HealthProbe,
    ServiceIntent,
    ServiceRegistration,
    Source,
    canonical_service,
)
from regagent.rules import exporter_text, service_id, split_hostport, utc_text

LOOPBACK_REASON = "listens on loopback only"
HELD_BACK_REASON = "held back"
SELF_SERVICE = "regagent"  # regagent's own endpoint: service name, and its Meta exporter
_WILDCARDS = ("", "0.0.0.0", "[::]")


@dataclass(frozen=True)
class Skipped:
    """A discovered exporter that is not registered, and why (for `discover` and the log)."""

    port: int
    endpoints: str
    exporter: Optional[str]
    reason: str

    @property
    def warn(self) -> bool:
        """Worth a warning, not an info line: likely a mistake (loopback only) or a flood
        (held back by `discovery.max_new_per_cycle`); the other reasons are choices."""
        return self.reason.startswith((LOOPBACK_REASON, HELD_BACK_REASON))


@dataclass(frozen=True)
class IntentSet:
    """What one pass wants registered (its intents), the discovery state to persist, and what
    was left out and why. Not a `DesiredState`: the checks are not run yet."""

    intents: Tuple[ServiceIntent, ...]
    seen: Mapping[str, SeenService] = field(default_factory=dict)
    skipped: Tuple[Skipped, ...] = ()
    expired: Tuple[str, ...] = ()  # service IDs dropped this time after deregister_after
    by_port: Mapping[int, str] = field(default_factory=dict)  # discovered port -> service ID
    # Seen before, still listening, but the probe failed now: critical here, and a candidate
    # for discovery's flap protection (a vanished listener is not).
    not_serving: Tuple[str, ...] = ()


def build_intents(
    config: Config,
    node_address: str,
    discovery: Optional[DiscoveryResult],
    now: float,
    *,
    previous: Optional[Mapping[str, SeenService]] = None,
    table: Optional[ExporterTable] = None,
    max_new: Optional[int] = None,
) -> IntentSet:
    """Pure: static services plus discovered (present or vanished-but-kept) exporters.

    `discovery` None means discovery is disabled: only static services, state kept as it was.
    `max_new`: how many exporters new to `previous` may be added (default
    `discovery.max_new_per_cycle`; less when passes between full cycles used some already).
    """
    previous = {sid: _not_in_the_future(entry, now) for sid, entry in (previous or {}).items()}
    statics = [static_intent(svc, config, node_address) for svc in config.services]
    static_ids = {intent.service.id for intent in statics}
    static_ports = {intent.service.port: intent.service.id for intent in statics}
    if discovery is None:
        return IntentSet(tuple(statics), previous)
    if not discovery.complete:
        # Listeners could not be read: nothing is known to have vanished. Keep what was seen,
        # and let a health probe decide its status instead of guessing.
        kept = [
            _unverified_intent(entry, config)
            for sid, entry in sorted(previous.items())
            if sid not in static_ids and entry.port not in static_ports
        ]
        return IntentSet(tuple(statics + kept), previous)

    table = table or load_exporter_table()
    intents: List[ServiceIntent] = list(statics)
    seen: Dict[str, SeenService] = {}
    skipped: List[Skipped] = []
    by_port: Dict[int, str] = {}
    not_serving: List[str] = []
    new = 0
    for found in discovery.exporters:
        finding = with_earlier_evidence(found, previous)
        outcome = discovered_intent(finding, config, node_address, table)
        if isinstance(outcome, str):
            skipped.append(Skipped(finding.port, finding.endpoints, finding.exporter, outcome))
            continue
        service = outcome.service
        clash = static_ports.get(service.port) or (service.id if service.id in static_ids else "")
        if clash:
            reason = f"port {service.port} is configured as static service {clash}"
            skipped.append(Skipped(finding.port, finding.endpoints, finding.exporter, reason))
            continue
        if service.id in seen:
            reason = f"service ID {service.id} already taken by another listener"
            skipped.append(Skipped(finding.port, finding.endpoints, finding.exporter, reason))
            continue
        earlier = previous.get(service.id)
        if earlier is None:
            if new >= (config.discovery.max_new_per_cycle if max_new is None else max_new):
                # Trust model: whatever listens here is evidence, not authority. A local
                # process opening many ports must not flood the catalog in one cycle.
                reason = (
                    f"{HELD_BACK_REASON}: at most discovery.max_new_per_cycle "
                    f"({config.discovery.max_new_per_cycle}) new exporters are registered per "
                    "cycle; this one is next"
                )
                skipped.append(Skipped(finding.port, finding.endpoints, finding.exporter, reason))
                continue
            new += 1
        seen[service.id] = _seen_entry(service, earlier.first_seen if earlier else now, now)
        by_port[finding.port] = service.id
        intents.append(outcome)
        if earlier is not None and finding.problem:
            not_serving.append(service.id)  # a known exporter failing its probe: flap-held

    listening = {f.port for f in discovery.findings}
    excluded_now = {f.port for f in discovery.findings if f.outcome == EXCLUDED}
    # Known exporters slower than probe_timeout (identified on a longer look): still there.
    slow = {
        f.port: f.reason for f in discovery.findings if f.outcome == NOT_EXPORTER and f.timed_out
    }
    expired: List[str] = []
    for sid, entry in sorted(previous.items()):
        if sid in seen or sid in static_ids or entry.port in static_ports:
            continue
        if entry.port in by_port:
            # The port now serves a (possibly renamed) exporter under another ID: keeping the
            # old registration would make Prometheus scrape the same endpoint twice.
            continue
        if _ignored(config.discovery.overrides, entry.meta.get("exporter"), entry.port):
            continue
        if entry.port in config.discovery.exclude_ports or entry.port in excluded_now:
            continue  # the operator asked to drop it: no 72h of a critical target
        if entry.meta.get("exporter") == UNKNOWN and not config.discovery.register_unknown:
            continue
        if entry.port in slow:
            # Listening and answering, only slower than its in-cycle probe allows: failing
            # (its check says it timed out), never vanished, so deregister_after does not run.
            seen[sid] = replace(entry, last_seen=now)
            intents.append(slow_intent(entry, slow[entry.port]))
            not_serving.append(sid)
            continue
        if now - entry.last_seen > config.sync.deregister_after:
            expired.append(sid)
            continue
        seen[sid] = entry
        intents.append(vanished_intent(entry, entry.port in listening))
        if entry.port in listening:
            not_serving.append(sid)
    return IntentSet(
        tuple(intents), seen, tuple(skipped), tuple(expired), by_port, tuple(not_serving)
    )


def static_intent(svc: ServiceConfig, config: Config, node_address: str) -> ServiceIntent:
    """A configured service: ID `<name>-<port>` unless set, node address unless set."""
    address = svc.address or node_address
    meta = {
        **config.defaults.meta,
        **svc.meta,
        "metrics_path": svc.metrics_path,
        "scheme": svc.scheme,
    }
    service = canonical_service(
        ServiceRegistration(
            id=service_id(svc.name, svc.port, svc.id),
            name=svc.name,
            port=svc.port,
            address=address,
            tags=(*svc.tags, *config.defaults.tags),
            meta=meta,
        )
    )
    return ServiceIntent(service, Source.STATIC, probe=static_probe(svc, address))


def static_probe(svc: ServiceConfig, address: str) -> Optional[HealthProbe]:
    """http: GET of scheme://address:port/path; tcp: connect to address:port; none: no probe."""
    check = svc.check
    if check.type == "http":
        path = check.path or svc.metrics_path
        url = f"{svc.scheme}://{url_host(address)}:{svc.port}{path}"
        return HealthProbe("http", url, check.timeout)
    if check.type == "tcp":
        return HealthProbe("tcp", f"{url_host(address)}:{svc.port}", check.timeout)
    return None


def self_intent(config: Config, node_address: str) -> Optional[ServiceIntent]:
    """regagent's own metrics endpoint as service `regagent`: Prometheus then scrapes every
    agent, and `up == 0` for it says this host's agent is down and its check states frozen.
    None with telemetry off, or on loopback while the node address is not (unreachable)."""
    listen = config.telemetry.listen
    if not listen:
        return None
    host, port = split_hostport(listen)
    address = node_address if host in _WILDCARDS else host.strip("[]")
    if _is_loopback(address) and not _is_loopback(node_address):
        return None  # Prometheus reaches this host at the node address, not at its loopback
    meta = {
        **config.defaults.meta,
        "metrics_path": "/metrics",
        "scheme": "http",
        "exporter": SELF_SERVICE,
        "exporter_version": __version__,
    }
    service = canonical_service(
        ServiceRegistration(
            id=f"{SELF_SERVICE}-{port}",
            name=SELF_SERVICE,
            port=port,
            address=address,
            tags=(SELF_SERVICE, *config.defaults.tags),
            meta=meta,
        )
    )
    # Known passing while the process runs: its check is the agent being alive, and Prometheus
    # scraping it says the rest (no probe of ourselves each cycle).
    status = (PASSING, f"regagent {__version__} serving /metrics on :{port}")
    return ServiceIntent(service, Source.SELF, status=status)


def with_self(wanted: IntentSet, config: Config, node_address: str) -> IntentSet:
    """`wanted` plus regagent's own endpoint (`self_intent`), unless a configured service
    already has its ID."""
    own = self_intent(config, node_address)
    if own is None or any(i.service.id == own.service.id for i in wanted.intents):
        return wanted
    return replace(wanted, intents=(*wanted.intents, own))


def _is_loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return address == "localhost"


def matching_overrides(
    overrides: Tuple[ExporterOverride, ...], exporter: Optional[str], port: int
) -> List[ExporterOverride]:
    """Overrides whose exporter and port (those that are set) both match, in config order."""
    found = []
    for override in overrides:
        if override.exporter is None and override.port is None:
            continue
        if override.exporter is not None and override.exporter != exporter:
            continue
        if override.port is not None and override.port != port:
            continue
        found.append(override)
    return found


def _ignored(overrides: Tuple[ExporterOverride, ...], exporter: Optional[str], port: int) -> bool:
    return any(o.ignore for o in matching_overrides(overrides, exporter, port))


def discovered_intent(
    finding: Finding, config: Config, node_address: str, table: ExporterTable
) -> Union[ServiceIntent, str]:
    """A present exporter's intent (passing, as its probe just said), or the reason it is not
    registered."""
    settings = config.discovery
    if finding.outcome != IDENTIFIED:
        if not settings.register_unknown:
            return "unknown exporter (discovery.register_unknown is off)"
        if not finding.in_port_range:
            return "unknown exporter outside discovery.port_ranges"
    if finding.address_kind == LOOPBACK:
        return f"{LOOPBACK_REASON} ({finding.endpoints}): Prometheus cannot reach it"
    if finding.address_kind == WILDCARD and _ipv4_only(finding) and ":" in node_address:
        return (
            f"listens on IPv4 only ({finding.endpoints}) but the node address {node_address} "
            "is IPv6: Prometheus would find nothing there; set node.address to an IPv4 address"
        )
    exporter = finding.exporter or UNKNOWN
    overrides = matching_overrides(settings.overrides, exporter, finding.port)
    if any(o.ignore for o in overrides):
        return "ignored by discovery.overrides"
    identified = finding.outcome == IDENTIFIED
    spec = table.by_name.get(exporter)
    if spec is not None:
        name = spec.service_name
    else:  # a program only its build_info or its executable named
        name = service_name(exporter) if identified else GENERIC_SERVICE
    tags: List[str] = [exporter] if identified or spec is not None else []
    tags += config.defaults.tags
    override_meta: Dict[str, str] = {}
    for override in overrides:
        name = override.name or name
        tags += override.tags
        override_meta.update(override.meta)
    address = node_address if finding.address_kind == WILDCARD else finding.address
    meta = {
        **config.defaults.meta,
        "metrics_path": finding.metrics_path,
        "scheme": finding.scheme,
        "exporter": exporter,
        "exporter_version": exporter_text(finding.version) or UNKNOWN,
        **({"identified_by": finding.identified_by} if finding.identified_by else {}),
        **override_meta,
    }
    service = canonical_service(
        ServiceRegistration(
            id=service_id(name, finding.port),
            name=name,
            port=finding.port,
            address=address,
            tags=tuple(tags),
            meta=meta,
        )
    )
    url = f"{finding.scheme}://{url_host(address)}:{finding.port}{finding.metrics_path}"
    probe = HealthProbe("http", url, settings.probe_timeout)
    status = (CRITICAL, _failing_text(finding)) if finding.problem else (PASSING, _ok_text(finding))
    return ServiceIntent(service, Source.DISCOVERY, probe=probe, status=status)


def with_earlier_evidence(finding: Finding, previous: Mapping[str, SeenService]) -> Finding:
    """`finding`, with the version and `identified_by` its answer gave before on this port when
    only its process or port names it now (its backend down, say): the registration then stays
    as it was, and only its check says what changed."""
    if finding.outcome != IDENTIFIED or finding.identified_by not in (PROCESS, PORT):
        return finding
    for entry in previous.values():
        meta = entry.meta
        if entry.port != finding.port or meta.get("exporter") != finding.exporter:
            continue
        before = meta.get("identified_by")
        if finding.problem:  # no answer now: what the last one said of its path stands
            finding = replace(
                finding,
                metrics_path=meta.get("metrics_path", finding.metrics_path),
                scheme=meta.get("scheme", finding.scheme),
            )
        if before is None or before in FROM_ANSWER:  # absent: registered by an answer (0.x)
            version = meta.get("exporter_version")
            return replace(
                finding,
                identified_by=before,
                version=version if version and version != UNKNOWN else finding.version,
            )
        return finding
    return finding


def _ipv4_only(finding: Finding) -> bool:
    """Only `0.0.0.0` wildcards: nothing answers on the host's IPv6 addresses. (A `::`
    wildcard also takes IPv4 unless the socket is IPV6_V6ONLY, which the dump does not show.)"""
    return all(lst.address == "0.0.0.0" for lst in finding.listeners if lst.is_wildcard)


def _failing_text(finding: Finding) -> str:
    """An exporter named without its answer (its process vouches for it) whose answer failed:
    still a target, and its check says what Prometheus will see. Stable text, like _ok_text."""
    where = f"{finding.exporter} on :{finding.port}"
    return f"{where}: no metrics from {finding.metrics_path} ({finding.problem})"


def _ok_text(finding: Finding) -> str:
    # Stable on purpose: Output is compared to decide whether to write (no timings, no clock).
    what = finding.exporter if finding.outcome == IDENTIFIED else "unknown exporter"
    text = exporter_text(finding.version)  # already clean from identify; a Finding is data
    version = f" {text}" if text else ""
    return f"{what}{version} serving {finding.metrics_path} on :{finding.port}"


def slow_intent(entry: SeenService, reason: str) -> ServiceIntent:
    """A kept exporter whose in-cycle probe timed out: critical, registered as it was."""
    exporter = entry.meta.get("exporter", entry.name)
    path = entry.meta.get("metrics_path", "/metrics")
    output = f"{exporter} on :{entry.port}: no metrics from {path} ({reason})"
    return ServiceIntent(_registration(entry), Source.DISCOVERY, status=(CRITICAL, output))


def vanished_intent(entry: SeenService, still_listening: bool) -> ServiceIntent:
    """A kept exporter that no longer serves metrics: critical, registered as it was."""
    what = "not serving metrics" if still_listening else "not listening"
    output = f"{what} on :{entry.port} since {utc_text(entry.last_seen)}"
    return ServiceIntent(_registration(entry), Source.DISCOVERY, status=(CRITICAL, output))


def _unverified_intent(entry: SeenService, config: Config) -> ServiceIntent:
    scheme = entry.meta.get("scheme", "http")
    path = entry.meta.get("metrics_path", "/metrics")
    url = f"{scheme}://{url_host(entry.address)}:{entry.port}{path}"
    probe = HealthProbe("http", url, config.discovery.probe_timeout)
    return ServiceIntent(_registration(entry), Source.DISCOVERY, probe=probe)


def _registration(entry: SeenService) -> ServiceRegistration:
    return canonical_service(
        ServiceRegistration(entry.id, entry.name, entry.port, entry.address, entry.tags, entry.meta)
    )


def _not_in_the_future(entry: SeenService, now: float) -> SeenService:
    """Seen times after `now` become `now` (and are stored so): a clock set back, or a planted
    entry, must not keep a vanished exporter registered past `deregister_after`."""
    if entry.last_seen <= now and entry.first_seen <= now:
        return entry
    return replace(
        entry, first_seen=min(entry.first_seen, now), last_seen=min(entry.last_seen, now)
    )


def _seen_entry(service: ServiceRegistration, first_seen: float, last_seen: float) -> SeenService:
    """The state entry for a registration: what to re-create byte-identically if it vanishes."""
    return SeenService(
        id=service.id,
        name=service.name,
        port=service.port,
        address=service.address,
        tags=tuple(service.tags),
        meta=dict(service.meta),
        first_seen=first_seen,
        last_seen=last_seen,
    )


_SINCE = re.compile(r" since (\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ)$")


def _last_seen_from_check(check: Optional[CheckState], now: float) -> float:
    """A vanished exporter's check says since when; that survives a lost state file."""
    if check is not None and check.status == CRITICAL:
        match = _SINCE.search(check.output)
        if match:
            try:
                return min(parse_time(match.group(1)), now)
            except ValueError:
                pass
    return now


def adopt_registered(
    previous: Mapping[str, SeenService],
    actual: Optional[ActualState],
    now: float,
    config: Optional[Config] = None,
) -> Dict[str, SeenService]:
    """Discovered services Consul holds but the state file lacks (lost or unwritable file).

    Without this, a lost state file would make every vanished exporter look unknown and the
    planner would deregister it at once: a silent drop (decision 4). The last-seen time comes
    from the critical check's own "since" text when there is one, so the grace period neither
    restarts nor drifts (a drifting text would also cost a Consul write every cycle).

    Only what discovery registers is taken back: an owned service with Meta `exporter`, but
    not regagent's own endpoint (Meta exporter=regagent, on whatever port it listened) nor a
    static service of `config` (by ID), which their own sources keep or remove.
    """
    adopted = dict(previous)
    if actual is None:
        return adopted
    statics = {service_id(s.name, s.port, s.id) for s in config.services} if config else set()
    checks = {c.service_id: c for c in actual.checks}
    for service in actual.services:
        if service.id in adopted or service.id in statics or not discovered_registration(service):
            continue
        seen = _last_seen_from_check(checks.get(service.id), now)
        adopted[service.id] = _seen_entry(service, seen, seen)
    return adopted


def discovered_registration(service: ServiceRegistration) -> bool:
    """Whether a registration in Consul can be one discovery made (Meta `exporter`, owned), and
    is not regagent's own endpoint, which carries Meta exporter=regagent too."""
    exporter = service.meta.get("exporter")
    return service.managed and exporter is not None and exporter != SELF_SERVICE
