"""`<state_dir>/discovered.json`: when each discovered service was first and last seen.

This is what lets a vanished exporter stay registered, critical, until `sync.deregister_after`
(design decision 4), across daemon restarts and reboots. Each entry also keeps the registration
as last written, so a vanished service can be re-created byte-identically (no spurious writes).

Format (version 1):

    {
      "version": 1,
      "services": {
        "node-exporter-9100": {
          "name": "node-exporter", "port": 9100, "address": "192.0.2.10",
          "tags": ["node_exporter"],
          "meta": {"exporter": "node_exporter", "managed-by": "regagent", ...},
          "first_seen": "2026-11-26T10:00:00Z", "last_seen": "2026-11-26T10:30:00Z"
        }
      }
    }

Read and written by the state directory's rules (`regagent.statedir`: trusted only if
regagent's own, bounded, atomic fsync'd writes). A missing file is an empty state; an
untrusted, unreadable or corrupt one is reported once and replaced, never fatal.

The file is rewritten only when an entry comes, goes or changes its registration, or when a
last-seen time has moved by `LAST_SEEN_STEP` (see `worth_saving`), not every cycle: a present
exporter's last_seen advances every 30 s, and an fsync'd rewrite per cycle on every host buys
nothing. The price: a stored last_seen may lag the truth by up to the step, so a vanished
exporter's "since" (which is its stored last_seen) reads up to 10 minutes early and its
`sync.deregister_after` grace ends up to 10 minutes early. The text itself stays stable, across
cycles and restarts, because it comes from the file.
"""

from __future__ import annotations

import ipaddress
import json
import os
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Dict, Mapping, Optional, Tuple

from regagent.rules import (
    meta_problems,
    printable_text,
    service_name_problem,
    url_path_problem,
    utc_text,
)
from regagent.rules import service_id as service_id_rule
from regagent.statedir import StateDir, StateFile, Warnings

STATE_FILE = "discovered.json"
STATE_VERSION = 1
LAST_SEEN_STEP = 600.0  # seconds a stored last_seen may lag before the file is rewritten
# regagent writes a few hundred bytes per exporter; a larger file was not written by it (and
# /dev/zero, linked in, would otherwise be read until memory runs out).
MAX_STATE_BYTES = 4 * 1024 * 1024
MAX_TAGS = 256
# Seen times outside 2000..2100 are not times regagent wrote. One in the future within that
# range (a clock set back, or a planted entry that would never expire) is clamped to the
# cycle's clock by build_intents, which knows the time; decoding stays clock-free.
EARLIEST = 946684800.0  # 2000-01-01T00:00:00Z
LATEST = 4102444800.0  # 2100-01-01T00:00:00Z


@dataclass(frozen=True)
class SeenService:
    """A discovered service as last registered, with the times it was first and last seen."""

    id: str
    name: str
    port: int
    address: str
    tags: Tuple[str, ...]
    meta: Mapping[str, str]
    first_seen: float
    last_seen: float
    extra: Mapping[str, Any] = field(default_factory=dict)  # unknown keys, kept on rewrite


def state_path(state_dir: str) -> str:
    return os.path.join(state_dir, STATE_FILE)


def parse_time(text: str) -> float:
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc).timestamp()


# -- reading and writing: the state directory's rules (regagent.statedir) ----------------------


def state_file(path: str, warnings: Optional[Warnings] = None) -> StateFile:
    """`path` as a file of its state directory, problems said once per `warnings`."""
    directory = StateDir(os.path.dirname(path) or ".", warnings)
    return StateFile(directory, os.path.basename(path), "discovery_state", MAX_STATE_BYTES)


def load_state(path: str, warnings: Optional[Warnings] = None) -> Dict[str, SeenService]:
    """The stored entries; {} (with a warning, once per cause and `warnings`, unless simply
    absent) when the file is missing, untrusted or corrupt.

    Untrusted (directory or file owned by another user or writable by group/others): nothing
    is read. Corrupt (a symlink, not a regular file, over MAX_STATE_BYTES, not a valid
    state): nothing is used; the next save replaces it. Either way the daemon goes on with
    what discovery finds now and what Consul still holds (adopted by `regagent.discovery.service`).
    """
    stored = state_file(path, warnings)
    raw = stored.read()
    if raw is None:
        return {}
    try:
        return decode_state(raw)
    # Any failure to decode means "corrupt", including a file nested deep enough to exhaust
    # the parser's recursion or memory: it must not crash every cycle forever.
    except (
        ValueError,
        TypeError,
        KeyError,
        AttributeError,
        OverflowError,
        RecursionError,
        MemoryError,
    ) as exc:
        stored.corrupt(f"{type(exc).__name__}: {str(exc)[:200]}")
        return {}


# -- decoding: every entry as strictly as configuration ----------------------------------------


def decode_state(raw: str) -> Dict[str, SeenService]:
    """Parses the JSON text; raises ValueError/TypeError/KeyError when it is not a valid state.

    Every entry is checked as strictly as a configured service, because the registration is
    re-created from it: a planted entry must not register an arbitrary address or path.
    """
    doc = json.loads(raw)
    if not isinstance(doc, dict) or doc.get("version") != STATE_VERSION:
        raise ValueError(f"expected a version {STATE_VERSION} state document")
    services = doc["services"]
    if not isinstance(services, dict):
        raise TypeError("services must be a mapping")
    entries: Dict[str, SeenService] = {}
    for service_id, item in services.items():
        if not isinstance(item, dict):
            raise TypeError(f"{_quote(service_id)}: entry must be a mapping")
        entries[service_id] = _decode_entry(service_id, item)
    return entries


def _decode_entry(service_id: str, item: Dict[str, Any]) -> SeenService:
    where = _quote(service_id)
    name, port, address = item["name"], item["port"], item["address"]
    tags, meta = item["tags"], item["meta"]
    if not isinstance(name, str) or service_name_problem(name):
        raise ValueError(f"{where}: bad service name")
    if not isinstance(port, int) or isinstance(port, bool) or not 1 <= port <= 65535:
        raise ValueError(f"{where}: bad port {port!r}")
    if service_id != service_id_rule(name, port):
        raise ValueError(f"{where}: the ID of a discovered service is <name>-<port>")
    if not isinstance(address, str) or _address_problem(address):
        raise ValueError(f"{where}: address is not an IP address")
    if not isinstance(tags, list) or not all(_clean(t) for t in tags) or len(tags) > MAX_TAGS:
        raise TypeError(f"{where}: tags must be a list of printable strings")
    if not isinstance(meta, dict) or not all(_clean(k) and _clean(v) for k, v in meta.items()):
        raise TypeError(f"{where}: meta must map printable strings to printable strings")
    problem = _meta_problem(meta)
    if problem:
        raise ValueError(f"{where}: meta {problem}")
    first_seen = parse_time(item["first_seen"])
    last_seen = parse_time(item["last_seen"])
    if not EARLIEST <= first_seen <= last_seen <= LATEST:
        raise ValueError(f"{where}: first_seen/last_seen out of order or out of range")
    known = {"name", "port", "address", "tags", "meta", "first_seen", "last_seen"}
    return SeenService(
        id=service_id,
        name=name,
        port=port,
        address=address,
        tags=tuple(tags),
        meta=dict(meta),
        first_seen=first_seen,
        last_seen=last_seen,
        extra={k: v for k, v in item.items() if k not in known},
    )


def _quote(service_id: Any) -> str:
    return repr(printable_text(str(service_id), 80))


def _clean(value: Any) -> bool:
    return isinstance(value, str) and printable_text(value) == value


def _address_problem(address: str) -> Optional[str]:
    try:
        parsed = ipaddress.ip_address(address)
    except ValueError:
        return "not an IP address"
    return "a wildcard address" if parsed.is_unspecified else None


def _meta_problem(meta: Dict[str, str]) -> Optional[str]:
    problems = meta_problems(meta)
    if problems:
        return problems[0]
    if meta.get("managed-by") != "regagent":
        return "lacks managed-by=regagent"
    if "exporter" not in meta:
        return "lacks exporter"
    if meta.get("scheme", "http") not in ("http", "https"):
        return "has a scheme other than http or https"
    path_problem = url_path_problem(meta.get("metrics_path", "/metrics"))
    if path_problem:
        return f"metrics_path {path_problem}"
    return None


def encode_state(entries: Mapping[str, SeenService]) -> str:
    """Canonical JSON (sorted keys), so an unchanged state is an unchanged file."""
    services = {
        service_id: {
            **dict(entry.extra),
            "name": entry.name,
            "port": entry.port,
            "address": entry.address,
            "tags": list(entry.tags),
            "meta": dict(entry.meta),
            "first_seen": utc_text(entry.first_seen),
            "last_seen": utc_text(entry.last_seen),
        }
        for service_id, entry in sorted(entries.items())
    }
    return json.dumps({"version": STATE_VERSION, "services": services}, indent=2, sort_keys=True)


def worth_saving(
    stored: Mapping[str, SeenService],
    current: Mapping[str, SeenService],
    step: float = LAST_SEEN_STEP,
) -> bool:
    """Whether `current` differs from the file's `stored` by more than last_seen creeping on.

    Entries added or dropped, or a changed registration or first_seen, are saved at once;
    last_seen only once it has moved by `step` (the file keeps whole seconds).
    """
    if stored.keys() != current.keys():
        return True
    for service_id, entry in current.items():
        old = stored[service_id]
        if _registered(entry) != _registered(old) or int(entry.first_seen) != int(old.first_seen):
            return True
        if abs(entry.last_seen - old.last_seen) >= step:
            return True
    return False


def _registered(entry: SeenService) -> Tuple[str, int, str, Tuple[str, ...], Dict[str, str]]:
    return entry.name, entry.port, entry.address, tuple(entry.tags), dict(entry.meta)


def save_state(
    path: str, entries: Mapping[str, SeenService], warnings: Optional[Warnings] = None
) -> bool:
    """Atomically replaces the state file (mode 600); False (said once) when it cannot be
    written or the directory is not trusted."""
    return state_file(path, warnings).write(encode_state(entries) + "\n")
