"""Turns the merged raw mapping into a typed Config, collecting every problem at once.

Each problem names the file that set the value and its key path, e.g.
`conf.d/20-mysql.yaml: services[0].port: 70000 is not a valid port`.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import math
import os
import re
import stat
from typing import Any, Callable, Dict, List, Optional, Tuple, Type, TypeVar, Union, get_type_hints

from regagent.config.load import MergedDocument
from regagent.config.model import Config, ServiceConfig
from regagent.config.token import TOKEN_ENV, token_file_problem_text, token_file_text
from regagent.config.yaml_strict import KeyPath, format_path
from regagent.errors import ConfigError
from regagent.rules import (
    META_MAX_PAIRS,
    format_duration,
    host_problem,
    hostport_problem,
    meta_problems_by_key,
    node_name_problem,
    service_name_problem,
    text_problem,
    token_problem,
    url_path_problem,
)
from regagent.rules import (
    service_id as rule_service_id,
)

T = TypeVar("T")

_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)\s*$")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_INVALID = object()  # sentinel: the value was reported as a problem


def parse_duration(text: Union[str, int, float]) -> float:
    """`30s`, `5m`, `72h`, `1d`, `250ms` or a bare number of seconds, to seconds."""
    if isinstance(text, bool):
        raise ValueError(f"{text!r} is not a duration")
    if isinstance(text, (int, float)):
        # YAML's .nan and .inf are floats too; neither is a usable interval. A whole number
        # with hundreds of digits does not even convert to a float (OverflowError).
        try:
            seconds = float(text)
        except OverflowError:
            raise ValueError(f"{text} is not a duration (too large)") from None
        if not math.isfinite(seconds) or seconds < 0:
            raise ValueError(f"{text} is not a duration")
        return seconds
    match = _DURATION_RE.match(text)
    if not match:
        raise ValueError(f"{text!r} is not a duration (use e.g. 30s, 5m, 72h)")
    # float() of 400 digits is inf, not an error: refuse it here, not at the first sleep.
    seconds = float(match.group(1)) * _DURATION_UNITS[match.group(2)]
    if not math.isfinite(seconds):
        raise ValueError(f"{text!r} is not a duration (too large)")
    return seconds


class _Validator:
    def __init__(self, doc: MergedDocument) -> None:
        self.doc = doc
        self.problems: List[str] = []
        # Every section or list item that validated cleanly, by key path, for the cross-checks.
        self.built: Dict[KeyPath, Any] = {}

    def report(self, path: KeyPath, message: str, origin: Optional[KeyPath] = None) -> None:
        """Records a problem at `path`, naming the file that set `origin` (default: `path`)."""
        where = self.doc.origin(path if origin is None else origin)
        self.problems.append(f"{where}: {format_path(path)}: {message}")

    # -- structure ---------------------------------------------------------------------------

    def build(self, cls: Type[T], raw: Any, path: KeyPath) -> Any:
        if raw is None:
            raw = {}
        if not isinstance(raw, dict):
            self.report(path, f"expected a mapping, got {_describe(raw)}")
            return _INVALID
        problems_before = len(self.problems)
        fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        hints = get_type_hints(cls)
        kwargs: Dict[str, Any] = {}
        for key, value in raw.items():
            if not isinstance(key, str) or key not in fields:
                self.report((*path, key), f"unknown key{_did_you_mean(key, fields)}")
                continue
            converted = self.value(hints[key], value, (*path, key), fields[key].metadata)
            if converted is not _INVALID:
                kwargs[key] = converted
        for name, f in fields.items():
            if f.metadata.get("required") and name not in raw:
                self.report((*path, name), "is required")
        if path and len(self.problems) > problems_before:
            # A section with a problem must not reach the cross-checks with placeholder
            # defaults (a service without a port would become `<name>-0`). The top level is
            # still built, from its valid sections, so the cross-checks can run on those.
            return _INVALID
        built = cls(**kwargs)
        self.built[path] = built
        return built

    def value(self, hint: Any, raw: Any, path: KeyPath, meta: Any) -> Any:
        if meta.get("secret") and raw is not None and not isinstance(raw, str):
            # The usual message quotes the value; for a token that would print the secret.
            self.report(path, "expected a string (the value is secret and not shown)")
            return _INVALID
        kind = meta.get("kind")
        origin = getattr(hint, "__origin__", None)
        args: Tuple[Any, ...] = tuple(getattr(hint, "__args__", ()))
        if origin is Union:  # Optional[X]
            if raw is None:
                return None
            hint = next(a for a in args if a is not type(None))
            return self.value(hint, raw, path, meta)
        if kind in _KIND_CHECKS:
            return _KIND_CHECKS[kind](self, raw, path, meta)
        if dataclasses.is_dataclass(hint):
            return self.build(hint, raw, path)  # type: ignore[arg-type]
        if origin is tuple:
            return self.sequence(args[0], raw, path)
        if origin is dict:
            return self.string_map(raw, path)
        return self.scalar(hint, raw, path)

    def sequence(self, item: Any, raw: Any, path: KeyPath) -> Any:
        if raw is None:  # `tags:` with every item commented out
            return ()
        if not isinstance(raw, list):
            self.report(path, f"expected a list, got {_describe(raw)}")
            return _INVALID
        items = [self.value(item, v, (*path, i), {}) for i, v in enumerate(raw)]
        return tuple(v for v in items if v is not _INVALID)

    def string_map(self, raw: Any, path: KeyPath) -> Any:
        if not isinstance(raw, dict):
            self.report(path, f"expected a mapping, got {_describe(raw)}")
            return _INVALID
        out: Dict[str, str] = {}
        for key, value in raw.items():
            if isinstance(value, (dict, list)) or value is None:
                self.report((*path, key), f"expected a text value, got {_describe(value)}")
                continue
            out[str(key)] = _as_text(value)
        return out

    def scalar(self, hint: Any, raw: Any, path: KeyPath) -> Any:
        if hint is bool:
            if isinstance(raw, bool):
                return raw
            self.report(path, f"expected true or false, got {_describe(raw)}")
            return _INVALID
        if hint is int:
            if isinstance(raw, int) and not isinstance(raw, bool):
                return raw
            self.report(path, f"expected a whole number, got {_describe(raw)}")
            return _INVALID
        if hint is float:
            if isinstance(raw, (int, float)) and not isinstance(raw, bool):
                return float(raw)
            self.report(path, f"expected a number, got {_describe(raw)}")
            return _INVALID
        if hint is str:
            if isinstance(raw, str):
                return raw
            self.report(path, f"expected a string, got {_describe(raw)}")
            return _INVALID
        raise TypeError(f"unsupported config type {hint!r}")  # a bug in model.py, not user input

    # -- field kinds -------------------------------------------------------------------------

    def text(self, raw: Any, path: KeyPath) -> Optional[str]:
        if isinstance(raw, str):
            return raw
        self.report(path, f"expected a string, got {_describe(raw)}")
        return None

    def duration(self, raw: Any, path: KeyPath, meta: Any) -> Any:
        try:
            seconds = parse_duration(raw)
        except (ValueError, TypeError) as exc:
            too_large = "(too large)" in str(exc)
            hint = "too large" if too_large else "use e.g. 30s, 5m, 72h"
            self.report(path, f"{_show(raw)} is not a duration ({hint})")
            return _INVALID
        problem = _bounds_problem(seconds, meta, _duration_text)
        if problem:
            self.report(path, f"{_show(raw)} {problem}")
            return _INVALID
        return seconds

    def count(self, raw: Any, path: KeyPath, meta: Any) -> Any:
        if not _is_int(raw):
            self.report(path, f"expected a whole number, got {_describe(raw)}")
            return _INVALID
        show = _bytes_text if meta.get("unit") == "bytes" else (lambda n: str(int(n)))
        problem = _bounds_problem(raw, meta, show)
        if problem:
            self.report(path, f"{_show(raw)} {problem}")
            return _INVALID
        return raw

    def url_path(self, raw: Any, path: KeyPath, meta: Any) -> Any:
        return self.checked_text(raw, path, url_path_problem)

    def service_address(self, raw: Any, path: KeyPath, meta: Any) -> Any:
        return self.checked_text(raw, path, host_problem)

    def port(self, raw: Any, path: KeyPath, meta: Any) -> Any:
        if isinstance(raw, int) and not isinstance(raw, bool) and 1 <= raw <= 65535:
            return raw
        self.report(path, f"{_show(raw)} is not a valid port (1-65535)")
        return _INVALID

    def port_list(self, raw: Any, path: KeyPath, meta: Any) -> Any:
        if raw is None:
            return ()
        if not isinstance(raw, list):
            self.report(path, f"expected a list of ports, got {_describe(raw)}")
            return _INVALID
        ports = [self.port(p, (*path, i), meta) for i, p in enumerate(raw)]
        return tuple(p for p in ports if p is not _INVALID)

    def port_ranges(self, raw: Any, path: KeyPath, meta: Any) -> Any:
        if raw is None:
            return ()
        if not isinstance(raw, list):
            self.report(
                path, f"expected a list of port ranges like '9100-9199', got {_describe(raw)}"
            )
            return _INVALID
        out: List[Tuple[int, int]] = []
        for i, item in enumerate(raw):
            bounds = _parse_range(item)
            if bounds is None:
                self.report((*path, i), f"{_show(item)} is not a port range (use e.g. '9100-9199')")
            elif not (1 <= bounds[0] <= bounds[1] <= 65535):
                self.report(
                    (*path, i), f"{_show(item)} is not a valid port range (1-65535, low-high)"
                )
            else:
                out.append(bounds)
        return tuple(out)

    def checked_text(
        self, raw: Any, path: KeyPath, problem_of: Callable[[str], Optional[str]]
    ) -> Any:
        """A string that `problem_of` finds nothing wrong with, else reported and _INVALID."""
        text = self.text(raw, path)
        if text is None:
            return _INVALID
        problem = problem_of(text)
        if problem:
            self.report(path, problem)
            return _INVALID
        return text

    def hostport(self, raw: Any, path: KeyPath, meta: Any) -> Any:
        return self.checked_text(raw, path, hostport_problem)

    def hostport_list(self, raw: Any, path: KeyPath, meta: Any) -> Any:
        if not isinstance(raw, list):
            self.report(path, f"expected a list of host:port, got {_describe(raw)}")
            return _INVALID
        if not raw:
            self.report(path, "is empty; list at least one Consul server as host:port")
            return _INVALID
        items = [self.hostport(v, (*path, i), meta) for i, v in enumerate(raw)]
        return tuple(v for v in items if v is not _INVALID)

    def listen(self, raw: Any, path: KeyPath, meta: Any) -> Any:
        text = self.text(raw, path)
        if text is None:
            return _INVALID
        if text == "":
            return text
        return self.hostport(text, path, meta)

    def address_or_auto(self, raw: Any, path: KeyPath, meta: Any) -> Any:
        text = self.text(raw, path)
        if text is None:
            return _INVALID
        if text == "auto":
            return text
        try:
            address = ipaddress.ip_address(text)
        except ValueError:
            self.report(path, f"{text!r} is neither 'auto' nor an IP address")
            return _INVALID
        if address.is_unspecified:
            self.report(path, f"{text!r} is a wildcard address; Consul rejects it")
            return _INVALID
        return text

    def service_name(self, raw: Any, path: KeyPath, meta: Any) -> Any:
        text = self.text(raw, path)
        if text is None:
            return _INVALID
        problem = service_name_problem(text)
        if problem is not None:
            self.report(
                path,
                problem,
            )
            return _INVALID
        return text

    def service_meta(self, raw: Any, path: KeyPath, meta: Any) -> Any:
        values = self.string_map(raw, path)
        if values is _INVALID:
            return values
        for key, problem in meta_problems_by_key(values):
            self.report(path, problem, origin=path if key is None else (*path, key))
        for key, value in values.items():
            unprintable = text_problem(value)
            if unprintable:
                self.report((*path, key), unprintable)
        return values

    def printable(self, raw: Any, path: KeyPath, meta: Any) -> Any:
        """Text that reaches Consul: the printable rule exporter text gets, refused here."""
        return self.checked_text(raw, path, text_problem)

    def tags(self, raw: Any, path: KeyPath, meta: Any) -> Any:
        if raw is None:  # `tags:` with every item commented out
            return ()
        if not isinstance(raw, list):
            self.report(path, f"expected a list, got {_describe(raw)}")
            return _INVALID
        items = [self.printable(v, (*path, i), meta) for i, v in enumerate(raw)]
        return tuple(v for v in items if v is not _INVALID)

    def node_name(self, raw: Any, path: KeyPath, meta: Any) -> Any:
        return self.checked_text(raw, path, node_name_problem)

    def node_meta(self, raw: Any, path: KeyPath, meta: Any) -> Any:
        return self.service_meta(raw, path, meta)

    def token_file(self, raw: Any, path: KeyPath, meta: Any) -> Any:
        return self.checked_text(raw, path, token_file_problem)

    def choice(self, raw: Any, path: KeyPath, meta: Any) -> Any:
        choices = meta["choices"]
        if raw in choices:
            return raw
        self.report(path, f"{_show(raw)} is not one of: {', '.join(choices)}")
        return _INVALID


_KIND_CHECKS = {
    "duration": _Validator.duration,
    "count": _Validator.count,
    "url_path": _Validator.url_path,
    "service_address": _Validator.service_address,
    "port": _Validator.port,
    "port_list": _Validator.port_list,
    "port_ranges": _Validator.port_ranges,
    "hostport": _Validator.hostport,
    "hostport_list": _Validator.hostport_list,
    "listen": _Validator.listen,
    "address_or_auto": _Validator.address_or_auto,
    "service_name": _Validator.service_name,
    "service_meta": _Validator.service_meta,
    "node_meta": _Validator.node_meta,
    "node_name": _Validator.node_name,
    "text": _Validator.printable,
    "tags": _Validator.tags,
    "token_file": _Validator.token_file,
    "choice": _Validator.choice,
}


def token_file_problem(path: str) -> Optional[str]:
    """The token must be readable by us and by nobody else (it grants catalog writes), and be
    one line of printable ASCII: anything else would fail every request, quoting the header."""
    try:
        info = os.stat(path)
        text = token_file_text(path)
    except OSError as exc:
        return f"token file {path} is not readable: {exc.strerror or exc}"
    if info.st_mode & stat.S_IROTH:
        return f"token file {path} is world-readable; run: chmod o-rwx {path}"
    problem = token_file_problem_text(text)
    if problem:
        # Caught here so check-config finds it, not the first sync. Never quotes the token.
        return f"token file {path} {problem}"
    return None


def _bytes_text(size: float) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if size >= scale and size % scale == 0:
            return f"{int(size // scale)} {unit}"
    return f"{int(size)} bytes"


def _duration_text(seconds: float) -> str:
    return format_duration(seconds) if seconds else "0s"


def _bounds_problem(value: float, meta: Any, show: Callable[[float], str]) -> Optional[str]:
    """Why `value` is outside the field's `low`/`high` bounds (see config.model), or None."""
    low, high = meta.get("low"), meta.get("high")
    if low is not None and (value < low or (meta.get("low_open") and value == low)):
        if meta.get("low_open"):
            return f"is too short; must be longer than {show(low)}"
        return f"is too small; must be at least {show(low)}"
    if high is not None and value > high:
        return f"is too large; must be at most {show(high)}"
    return None


def _parse_range(item: Any) -> Optional[Tuple[int, int]]:
    if isinstance(item, int) and not isinstance(item, bool):
        return (item, item)
    if isinstance(item, list) and len(item) == 2 and all(_is_int(v) for v in item):
        return (item[0], item[1])
    if isinstance(item, str):
        low, sep, high = item.partition("-")
        if sep and low.strip().isdigit() and high.strip().isdigit():
            return (int(low), int(high))
    return None


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _as_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _show(value: Any) -> str:
    """The value as the user wrote it, cut short: a 400-digit number is not worth repeating."""
    text = repr(value) if isinstance(value, str) else str(value)
    return text if len(text) <= 60 else f"{text[:40]}... ({len(text)} characters)"


def _describe(value: Any) -> str:
    if value is None:
        return "nothing (null)"
    if isinstance(value, bool):
        return f"a boolean ({value})"
    if isinstance(value, (int, float)):
        return f"a number ({value})"
    if isinstance(value, str):
        return f"a string ({value!r})"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return type(value).__name__


def _did_you_mean(key: Any, fields: Dict[str, Any]) -> str:
    import difflib  # only a misspelt key needs it

    close = difflib.get_close_matches(str(key), list(fields), n=1, cutoff=0.6)
    return f"; did you mean '{close[0]}'?" if close else ""


def service_id(service: ServiceConfig) -> str:
    """The Consul service ID of a configured service (rules.service_id)."""
    return rule_service_id(service.name, service.port, service.id)


def _duplicate_service_ids(validator: _Validator, count: int) -> None:
    """Consul keys services by ID on a node: a second one would silently replace the first."""
    seen: Dict[str, int] = {}
    for index in range(count):
        service = validator.built.get(("services", index))
        if service is None:  # invalid, already reported
            continue
        sid = service_id(service)
        if sid not in seen:
            seen[sid] = index
            continue
        first = seen[sid]
        first_file = validator.doc.origin(("services", first))
        also = f"services[{first}]"
        if first_file != validator.doc.origin(("services", index)):
            also += f" in {first_file}"
        if service.id:
            validator.report(
                ("services", index, "id"), f"duplicate service ID {sid!r} (also {also})"
            )
        else:
            validator.report(
                ("services", index),
                f"duplicate service ID {sid!r}, derived from name and port (also {also}); "
                "set a distinct id",
            )


def _cross_checks(validator: _Validator, config: Config) -> None:
    """Rules across fields; each runs only on sections that validated cleanly."""
    raw_services = validator.doc.data.get("services")
    if isinstance(raw_services, list):
        _duplicate_service_ids(validator, len(raw_services))
    if ("consul",) in validator.built:
        consul = config.consul
        if consul.cooldown_initial > consul.cooldown_max:
            validator.report(("consul", "cooldown_initial"), "is longer than consul.cooldown_max")
        if bool(consul.tls.cert_file) != bool(consul.tls.key_file):
            validator.report(("consul", "tls"), "cert_file and key_file must be set together")
        if 0 < consul.watch_wait < 1.0:
            # A poll per few hundred milliseconds would be the periodic read, only faster.
            validator.report(("consul", "watch_wait"), "must be 0s (off) or at least 1s")
    if ("discovery",) in validator.built and 0 < config.discovery.watch_interval < 0.1:
        # Each look costs ~0.1 ms plus a wake-up; faster than 10/s buys nothing Prometheus sees.
        validator.report(("discovery", "watch_interval"), "must be 0s (off) or at least 100ms")
    if ("defaults",) in validator.built:
        _combined_meta(validator, config)
    if ("consul",) in validator.built:
        _token_checks(validator, config)
    if ("sync",) in validator.built and config.sync.jitter >= config.sync.interval:
        validator.report(("sync", "jitter"), "must be shorter than sync.interval")


# Meta keys regagent adds to every service (metrics_path, scheme, exporter, exporter_version,
# managed-by): they count against Consul's 64-pair limit too.
AUTOMATIC_META_KEYS = 5


def _combined_meta(validator: _Validator, config: Config) -> None:
    """defaults.meta and a service's meta are merged before Consul sees them: check the sum."""
    for index, service in enumerate(config.services):
        merged = {**config.defaults.meta, **service.meta}
        total = len(merged) + AUTOMATIC_META_KEYS
        if total > META_MAX_PAIRS:
            validator.report(
                ("services", index, "meta"),
                f"with defaults.meta and the {AUTOMATIC_META_KEYS} keys regagent adds this makes "
                f"{total} pairs; Consul allows at most {META_MAX_PAIRS}",
            )


def _token_checks(validator: _Validator, config: Config) -> None:
    """The token that would be sent must be sendable: inline or from the environment (the
    token file is checked with its key). Messages name the source, never the value."""
    consul = config.consul
    if consul.token_file:
        return
    if consul.token:
        problem = _inline_token_problem(validator.doc.origin(("consul", "token")))
        if problem:
            validator.report(("consul", "token"), problem)
        problem = token_problem(consul.token)
        if problem:
            validator.report(("consul", "token"), f"the inline token {problem}")
        return
    env = os.environ.get(TOKEN_ENV)
    if env:
        problem = token_problem(env)
        if problem:
            validator.problems.append(f"environment variable {TOKEN_ENV}: the token {problem}")


def _inline_token_problem(path: str) -> Optional[str]:
    """An inline token is as secret as a token file: its file must not be world-readable."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return None
    if mode & stat.S_IROTH:
        return (
            f"holds a token but {path} is world-readable; move it to consul.token_file "
            f"or run: chmod o-rwx {path}"
        )
    return None


def validate(doc: MergedDocument) -> Config:
    """The typed configuration, or ConfigError listing every problem."""
    validator = _Validator(doc)
    config = validator.build(Config, doc.data, ())
    if config is not _INVALID:
        # Run even when other problems were found: all errors are reported in one go.
        _cross_checks(validator, config)
    if validator.problems:
        raise ConfigError(validator.problems)
    assert isinstance(config, Config)
    return config
