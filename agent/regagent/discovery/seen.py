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
import errno
import ipaddress
import json
import os
import stat
import tempfile
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Dict, List, Mapping, Optional, Set, Tuple

import structlog

from regagent.rules import (
    meta_problems,
    printable_text,
    service_name_problem,
    url_path_problem,
)
from regagent.rules import service_id as service_id_rule

log = structlog.get_logger(__name__)

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


# -- trust: who may have written the file ----------------------------------------------------


def ownership_problem(info: os.stat_result, path: str) -> Optional[str]:
    """Why a file or directory with this stat is not trusted as regagent's own, or None.

    Only this process's user (or root on its behalf, which can do anything anyway) may be able
    to write it: anyone else could plant entries that regagent would register, and Prometheus
    scrape (trust model, design decision 12).
    """
    euid = os.geteuid()
    if info.st_uid != euid:
        return (
            f"is owned by uid {info.st_uid}, not by regagent's uid {euid}; run: chown {euid} {path}"
        )
    writable = [
        who
        for who, bit in (("group", stat.S_IWGRP), ("others", stat.S_IWOTH))
        if info.st_mode & bit
    ]
    if writable:
        return f"is writable by {' and '.join(writable)}; run: chmod go-w {path}"
    return None


def directory_problem(directory: str) -> Optional[str]:
    """Why `directory` must not hold regagent's state, or None (also when it does not exist
    yet: save_state creates it, mode 750)."""
    try:
        info = os.stat(directory)
    except FileNotFoundError:
        return None
    except OSError as exc:
        return f"cannot be inspected: {exc.strerror or exc}"
    if not stat.S_ISDIR(info.st_mode):
        return "is not a directory"
    return ownership_problem(info, directory)


class _Untrusted(Exception):
    """The file exists but may have been written by someone else: not read."""


def load_state(path: str) -> Dict[str, SeenService]:
    """The stored entries; {} (with a warning, once per cause, unless simply absent) when the
    file is missing, untrusted or corrupt.

    Untrusted (directory or file owned by another user or writable by group/others): nothing
    is read. Corrupt (a symlink, not a regular file, over MAX_STATE_BYTES, not a valid
    state): nothing is used; the next save replaces it. Either way the daemon goes on with
    what discovery finds now and what Consul still holds (adopted by the runner).
    """
    directory = os.path.dirname(path) or "."
    problem = directory_problem(directory)
    if problem:
        _warn_once(
            "discovery_state_untrusted",
            directory,
            f"state directory {problem}",
            action="not reading or writing the state file",
        )
        return {}
    try:
        raw = _read_own_file(path)
    except FileNotFoundError:
        return {}
    except _Untrusted as exc:
        _warn_once(
            "discovery_state_untrusted",
            path,
            f"state file {exc}",
            action="not reading it; replaced by a new file at the next save",
        )
        return {}
    except _Corrupt as exc:
        _warn_once("discovery_state_corrupt", path, str(exc), action="rebuilding it")
        return {}
    except OSError as exc:
        _warn_once("discovery_state_unreadable", path, str(exc), action="starting empty")
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
        _warn_once(
            "discovery_state_corrupt",
            path,
            f"{type(exc).__name__}: {str(exc)[:200]}",
            action="rebuilding it",
        )
        return {}


class _Corrupt(Exception):
    """The path does not hold a state file regagent could have written."""


def _read_own_file(path: str) -> str:
    """The text of the state file, opened without following a symlink and without blocking
    on a FIFO; raises _Untrusted, _Corrupt or OSError."""
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise _Corrupt("is a symbolic link (not followed)") from None
        if exc.errno == errno.ENXIO:  # a socket or a FIFO without writer on some systems
            raise _Corrupt("is not a regular file") from None
        raise
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise _Corrupt("is not a regular file")
        problem = ownership_problem(info, path)
        if problem:
            raise _Untrusted(problem)
        if info.st_size > MAX_STATE_BYTES:
            raise _Corrupt(f"is larger than {MAX_STATE_BYTES // (1024 * 1024)} MiB")
        data = _read_at_most(fd, MAX_STATE_BYTES + 1)
    finally:
        os.close(fd)
    if len(data) > MAX_STATE_BYTES:  # grew after the fstat
        raise _Corrupt(f"is larger than {MAX_STATE_BYTES // (1024 * 1024)} MiB")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise _Corrupt("is not UTF-8 text") from None


def _read_at_most(fd: int, limit: int) -> bytes:
    chunks: List[bytes] = []
    size = 0
    while size < limit:
        chunk = os.read(fd, min(65536, limit - size))
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


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
    """Atomically replaces the state file; False (logged) when it cannot be written or the
    directory is not trusted. The new file is mode 600, and the rename replaces whatever was
    at `path` (a symlink, a FIFO, another user's file) without following or opening it."""
    text = encode_state(entries) + "\n"
    directory = os.path.dirname(path) or "."
    try:
        os.makedirs(directory, mode=0o750, exist_ok=True)
        problem = directory_problem(directory)
        if problem:
            _warn_once(
                "discovery_state_untrusted",
                directory,
                f"state directory {problem}",
                action="not reading or writing the state file",
            )
            return False
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
