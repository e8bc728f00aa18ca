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

Writes are atomic (temporary file, fsync, rename, fsync of the directory). A missing file is an
empty state; an unreadable or corrupt one is reported and replaced, never fatal.

The file is rewritten only when an entry comes, goes or changes its registration, or when a
last-seen time has moved by `LAST_SEEN_STEP` (see `worth_saving`), not every cycle: a present
exporter's last_seen advances every 30 s, and an fsync'd rewrite per cycle on every host buys
nothing. The price: a stored last_seen may lag the truth by up to the step, so a vanished
exporter's "since" (which is its stored last_seen) reads up to 10 minutes early and its
`sync.deregister_after` grace ends up to 10 minutes early. The text itself stays stable, across
cycles and restarts, because it comes from the file.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Dict, Mapping, Set, Tuple

import structlog

log = structlog.get_logger(__name__)

STATE_FILE = "discovered.json"
STATE_VERSION = 1
LAST_SEEN_STEP = 600.0  # seconds a stored last_seen may lag before the file is rewritten


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


def format_time(timestamp: float) -> str:
    """UTC, whole seconds: `2026-11-26T10:00:00Z` (stable text for check output)."""
    return datetime.fromtimestamp(int(timestamp), tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(text: str) -> float:
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc).timestamp()


_warned: Set[Tuple[str, str, str]] = set()


def _warn_once(event: str, path: str, error: str, **fields: str) -> None:
    """A broken state directory stays broken for every 30 s cycle: say so once per cause."""
    if (event, path, error) not in _warned:
        _warned.add((event, path, error))
        log.warning(event, path=path, error=error, **fields)


def load_state(path: str) -> Dict[str, SeenService]:
    """The stored entries; {} (with a warning unless simply absent) when missing or corrupt."""
    try:
        with open(path, encoding="utf-8") as handle:
            raw = handle.read()
    except FileNotFoundError:
        return {}
    except OSError as exc:
        _warn_once("discovery_state_unreadable", path, str(exc), action="starting empty")
        return {}
    try:
        return decode_state(raw)
    except (ValueError, TypeError, KeyError) as exc:
        log.warning("discovery_state_corrupt", path=path, error=str(exc), action="rebuilding it")
        return {}


def decode_state(raw: str) -> Dict[str, SeenService]:
    """Parses the JSON text; raises ValueError/TypeError/KeyError when it is not a valid state."""
    doc = json.loads(raw)
    if not isinstance(doc, dict) or doc.get("version") != STATE_VERSION:
        raise ValueError(f"expected a version {STATE_VERSION} state document")
    services = doc["services"]
    if not isinstance(services, dict):
        raise TypeError("services must be a mapping")
    entries: Dict[str, SeenService] = {}
    for service_id, item in services.items():
        if not isinstance(item, dict):
            raise TypeError(f"{service_id}: entry must be a mapping")
        port = item["port"]
        tags = item["tags"]
        meta = item["meta"]
        if not isinstance(port, int) or not 1 <= port <= 65535:
            raise ValueError(f"{service_id}: bad port {port!r}")
        if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
            raise TypeError(f"{service_id}: tags must be a list of strings")
        if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
            raise TypeError(f"{service_id}: meta must map strings to strings")
        known = {"name", "port", "address", "tags", "meta", "first_seen", "last_seen"}
        entries[service_id] = SeenService(
            id=service_id,
            name=str(item["name"]),
            port=port,
            address=str(item["address"]),
            tags=tuple(tags),
            meta=dict(meta),
            first_seen=parse_time(item["first_seen"]),
            last_seen=parse_time(item["last_seen"]),
            extra={k: v for k, v in item.items() if k not in known},
        )
    return entries


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
            "first_seen": format_time(entry.first_seen),
            "last_seen": format_time(entry.last_seen),
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


def save_state(path: str, entries: Mapping[str, SeenService]) -> bool:
    """Atomically replaces the state file; False (logged) when it cannot be written."""
    text = encode_state(entries) + "\n"
    directory = os.path.dirname(path) or "."
    try:
        os.makedirs(directory, mode=0o750, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".discovered.", suffix=".tmp", dir=directory)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(text)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, path)
        except BaseException:
            _unlink_quietly(tmp)
            raise
        _fsync_directory(directory)
    except OSError as exc:
        _warn_once("discovery_state_unwritable", path, str(exc))
        return False
    return True


def _unlink_quietly(path: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)


def _fsync_directory(directory: str) -> None:
    # The rename is durable only once the directory entry is on disk.
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
