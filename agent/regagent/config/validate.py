"""Turns the merged raw mapping into a typed Config, collecting every problem at once.

Each problem names the file that set the value and its key path, e.g.
`conf.d/20-mysql.yaml: services[0].port: 70000 is not a valid port`.
"""

from __future__ import annotations

import dataclasses
import difflib
import ipaddress
import os
import re
import stat
from typing import Any, Dict, List, Optional, Tuple, Type, TypeVar, Union, get_type_hints

from regagent.config.load import KeyPath, MergedDocument
from regagent.config.model import Config, ServiceConfig
from regagent.errors import ConfigError

T = TypeVar("T")

_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)\s*$")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
SERVICE_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")
META_KEY_RE = re.compile(r"^[A-Za-z0-9_-]+$")
META_MAX_PAIRS = 64
META_KEY_MAX = 128
META_VALUE_MAX = 512
_INVALID = object()  # sentinel: the value was reported as a problem


def parse_duration(text: Union[str, int, float]) -> float:
    """`30s`, `5m`, `72h`, `1d`, `250ms` or a bare number of seconds, to seconds."""
    if isinstance(text, bool):
        raise ValueError(f"{text!r} is not a duration")
    if isinstance(text, (int, float)):
        if text < 0:
            raise ValueError(f"{text} is not a duration (negative)")
        return float(text)
    match = _DURATION_RE.match(text)
    if not match:
        raise ValueError(f"{text!r} is not a duration (use e.g. 30s, 5m, 72h)")
    return float(match.group(1)) * _DURATION_UNITS[match.group(2)]


def format_path(path: KeyPath) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def meta_problems(meta: Dict[str, str]) -> List[str]:
    """Consul's own Meta rules (structs.ValidateServiceMetadata), checked before Consul does."""
    problems = []
    if len(meta) > META_MAX_PAIRS:
        problems.append(f"has {len(meta)} pairs; Consul allows at most {META_MAX_PAIRS}")
    for key, value in meta.items():
        if not META_KEY_RE.match(key):
            problems.append(f"key {key!r} may contain only letters, digits, '_' and '-'")
        elif len(key) > META_KEY_MAX:
            problems.append(f"key {key[:20]!r}... is longer than {META_KEY_MAX} characters")
        elif key.startswith("consul-"):
            problems.append(f"key {key!r} uses the prefix 'consul-', which Consul reserves")
        if len(value) > META_VALUE_MAX:
            problems.append(f"value of {key!r} is longer than {META_VALUE_MAX} characters")
    return problems


class _Validator:
    def __init__(self, doc: MergedDocument) -> None:
        self.doc = doc
        self.problems: List[str] = []

    def report(self, path: KeyPath, message: str) -> None:
        self.problems.append(f"{self.doc.origin(path)}: {format_path(path)}: {message}")

    # -- structure ---------------------------------------------------------------------------

    def build(self, cls: Type[T], raw: Any, path: KeyPath) -> Any:
        if raw is None:
            raw = {}
        if not isinstance(raw, dict):
            self.report(path, f"expected a mapping, got {_describe(raw)}")
            return _INVALID
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
        try:
            return cls(**kwargs)
        except TypeError:  # only reachable after a reported problem dropped a field
            return _INVALID

    def value(self, hint: Any, raw: Any, path: KeyPath, meta: Any) -> Any:
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
            return parse_duration(raw)
        except (ValueError, TypeError):
            self.report(path, f"{_show(raw)} is not a duration (use e.g. 30s, 5m, 72h)")
            return _INVALID

    def port(self, raw: Any, path: KeyPath, meta: Any) -> Any:
        if isinstance(raw, int) and not isinstance(raw, bool) and 1 <= raw <= 65535:
            return raw
        self.report(path, f"{_show(raw)} is not a valid port (1-65535)")
        return _INVALID

    def port_list(self, raw: Any, path: KeyPath, meta: Any) -> Any:
        if not isinstance(raw, list):
            self.report(path, f"expected a list of ports, got {_describe(raw)}")
            return _INVALID
        ports = [self.port(p, (*path, i), meta) for i, p in enumerate(raw)]
        return tuple(p for p in ports if p is not _INVALID)

    def port_ranges(self, raw: Any, path: KeyPath, meta: Any) -> Any:
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

    def hostport(self, raw: Any, path: KeyPath, meta: Any) -> Any:
        text = self.text(raw, path)
        if text is None:
            return _INVALID
        problem = hostport_problem(text)
        if problem:
            self.report(path, problem)
            return _INVALID
        return text

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
        if not SERVICE_NAME_RE.match(text) or len(text) > 128:
            self.report(
                path,
                f"{text!r} is not a valid service name (letters, digits, '-' and '_', "
                "starting with a letter or digit, at most 128 characters)",
            )
            return _INVALID
        return text

    def service_meta(self, raw: Any, path: KeyPath, meta: Any) -> Any:
        values = self.string_map(raw, path)
        if values is _INVALID:
            return values
        for problem in meta_problems(values):
            self.report(path, problem)
        return values

    def node_meta(self, raw: Any, path: KeyPath, meta: Any) -> Any:
        return self.service_meta(raw, path, meta)

    def token_file(self, raw: Any, path: KeyPath, meta: Any) -> Any:
        text = self.text(raw, path)
        if text is None:
            return _INVALID
        problem = token_file_problem(text)
        if problem:
            self.report(path, problem)
            return _INVALID
        return text

    def choice(self, raw: Any, path: KeyPath, meta: Any) -> Any:
        choices = meta["choices"]
        if raw in choices:
            return raw
        self.report(path, f"{_show(raw)} is not one of: {', '.join(choices)}")
        return _INVALID


_KIND_CHECKS = {
    "duration": _Validator.duration,
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
    "token_file": _Validator.token_file,
    "choice": _Validator.choice,
}


def hostport_problem(text: str) -> Optional[str]:
    host, sep, port = text.rpartition(":")
    if not sep or not host:
        return f"{text!r} is not host:port"
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        return f"{text!r} has no valid port (1-65535)"
    if host.startswith("["):
        if not host.endswith("]"):
            return f"{text!r}: unbalanced brackets around the IPv6 address"
    elif ":" in host:
        return f"{text!r}: write IPv6 addresses in brackets, e.g. [::1]:8500"
    return None


def token_file_problem(path: str) -> Optional[str]:
    """The token must be readable by us and by nobody else (it grants catalog writes)."""
    try:
        info = os.stat(path)
        with open(path, encoding="utf-8") as handle:
            handle.read(1)
    except OSError as exc:
        return f"token file {path} is not readable: {exc.strerror or exc}"
    if info.st_mode & stat.S_IROTH:
        return f"token file {path} is world-readable; run: chmod o-rwx {path}"
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
    return repr(value) if isinstance(value, str) else str(value)


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
    close = difflib.get_close_matches(str(key), list(fields), n=1, cutoff=0.6)
    return f"; did you mean '{close[0]}'?" if close else ""


def service_id(service: ServiceConfig) -> str:
    return service.id or f"{service.name}-{service.port}"


def _cross_checks(validator: _Validator, config: Config) -> None:
    seen: Dict[str, int] = {}
    for index, service in enumerate(config.services):
        sid = service_id(service)
        if sid in seen:
            validator.report(
                ("services", index, "id"),
                f"duplicate service ID {sid!r} (also services[{seen[sid]}])",
            )
        else:
            seen[sid] = index
    if config.consul.cooldown_initial > config.consul.cooldown_max:
        validator.report(("consul", "cooldown_initial"), "is longer than consul.cooldown_max")
    if config.sync.interval <= 0:
        validator.report(("sync", "interval"), "must be longer than 0s")
    if config.sync.jitter >= config.sync.interval > 0:
        validator.report(("sync", "jitter"), "must be shorter than sync.interval")
    tls = config.consul.tls
    if bool(tls.cert_file) != bool(tls.key_file):
        validator.report(("consul", "tls"), "cert_file and key_file must be set together")


def validate(doc: MergedDocument) -> Config:
    """The typed configuration, or ConfigError listing every problem."""
    validator = _Validator(doc)
    config = validator.build(Config, doc.data, ())
    if config is not _INVALID and not validator.problems:
        _cross_checks(validator, config)
    if validator.problems:
        raise ConfigError(validator.problems)
    assert isinstance(config, Config)
    return config
