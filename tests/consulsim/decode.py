"""Strict request decoding with Go's ``encoding/json`` rules, and Go durations.

Consul decodes bodies with ``DisallowUnknownFields`` into Go structs: keys match field names
case-insensitively, an unknown key is an error, ``null`` leaves the zero value and a type
mismatch is an error. Clients that send a typo'd or wrongly typed field must see the same
400 here that a real server gives them, so the emulator decodes against explicit schemas
instead of accepting any dict.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

JSON = Any


class DecodeError(Exception):
    """A body that Consul's decoder would reject; ``str()`` is Go's error text."""


@dataclass(frozen=True)
class Field:
    """One struct field: its Go type kind, and a nested schema for struct kinds.

    ``kind`` is one of: str, int, bool, strmap, strlist, headers (map of string lists),
    any (kept as decoded), duration (string or nanoseconds, Go ``interface{}`` aux field),
    struct, structlist, structmap, lenient (a struct whose own UnmarshalJSON ignores
    unknown keys, like HealthCheckDefinition).
    """

    kind: str
    schema: Optional[Schema] = None
    target: Optional[str] = None  # canonical name this alias fills (snake_case aliases)


@dataclass(frozen=True)
class Schema:
    """A Go struct: its type name (used in error texts) and its fields."""

    name: str
    fields: Dict[str, Field] = field(default_factory=dict)


# --------------------------------------------------------------------------- durations

_UNITS = {
    "ns": 1,
    "us": 1_000,
    "\u00b5s": 1_000,
    "\u03bcs": 1_000,
    "ms": 1_000_000,
    "s": 1_000_000_000,
    "m": 60_000_000_000,
    "h": 3_600_000_000_000,
}
_PART = re.compile(r"([0-9]*(?:\.[0-9]*)?)([a-z\u00b5\u03bc]+)")


def parse_go_duration(text: str) -> int:
    """Parse a Go ``time.ParseDuration`` string into nanoseconds (``"1m30s"``, ``"250ms"``)."""
    orig = text
    if text in ("0", "+0", "-0"):
        return 0
    if not text:
        raise DecodeError(f'time: invalid duration "{orig}"')
    sign = 1
    if text[0] in "+-":
        sign = -1 if text[0] == "-" else 1
        text = text[1:]
    total = 0.0
    pos = 0
    while pos < len(text):
        m = _PART.match(text, pos)
        if not m or m.group(1) in ("", "."):
            if re.fullmatch(r"[0-9.]+", text[pos:]):
                raise DecodeError(f'time: missing unit in duration "{orig}"')
            raise DecodeError(f'time: invalid duration "{orig}"')
        unit = m.group(2)
        if unit not in _UNITS:
            raise DecodeError(f'time: unknown unit "{unit}" in duration "{orig}"')
        total += float(m.group(1)) * _UNITS[unit]
        pos = m.end()
    return sign * round(total)


def format_go_duration(ns: int) -> str:
    """Render nanoseconds like Go's ``time.Duration.String()`` (``1m30s``, ``1.5s``, ``0s``)."""
    if ns == 0:
        return "0s"
    neg = ns < 0
    ns = abs(ns)
    if ns < 1_000_000_000:
        for unit, size in (("ms", 1_000_000), ("\u00b5s", 1_000), ("ns", 1)):
            if ns >= size:
                return ("-" if neg else "") + _trim(ns / size) + unit
    hours, rest = divmod(ns, 3_600_000_000_000)
    minutes, rest = divmod(rest, 60_000_000_000)
    secs = _trim(rest / 1_000_000_000)
    out = ""
    if hours:
        out = f"{hours}h{minutes}m{secs}s"
    elif minutes:
        out = f"{minutes}m{secs}s"
    else:
        out = f"{secs}s"
    return ("-" if neg else "") + out


def _trim(value: float) -> str:
    text = f"{value:.9f}".rstrip("0").rstrip(".")
    return text or "0"


def duration_arg(text: str) -> float:
    """argparse helper: a Go duration string as seconds."""
    return parse_go_duration(text) / 1e9


# --------------------------------------------------------------------------- JSON


def _json_kind(value: JSON) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return "null"


_GO_TYPES = {
    "str": "string",
    "int": "int",
    "bool": "bool",
    "strmap": "map[string]string",
    "strlist": "[]string",
    "headers": "map[string][]string",
}


def _type_error(value: JSON, path: str, kind: str) -> DecodeError:
    shown = _json_kind(value)
    if shown == "number":
        shown = f"number {json.dumps(value)}"
    return DecodeError(
        f"json: cannot unmarshal {shown} into Go struct field {path} "
        f"of type {_GO_TYPES.get(kind, kind)}"
    )


def _decode_value(value: JSON, fld: Field, path: str) -> JSON:
    kind = fld.kind
    if value is None:
        return None
    if kind == "any":
        return value
    if kind == "duration":
        if isinstance(value, str):
            return parse_go_duration(value)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return int(value)
        return None  # Go's interface{} aux field: other types are silently ignored
    if kind == "str":
        if not isinstance(value, str):
            raise _type_error(value, path, kind)
        return value
    if kind == "int":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _type_error(value, path, kind)
        if isinstance(value, float) and not value.is_integer():
            raise _type_error(value, path, kind)
        return int(value)
    if kind == "bool":
        if not isinstance(value, bool):
            raise _type_error(value, path, kind)
        return value
    if kind == "strmap":
        if not isinstance(value, dict):
            raise _type_error(value, path, kind)
        out: Dict[str, Any] = {}
        for key, item in value.items():
            if item is None:
                out[key] = ""
            elif not isinstance(item, str):
                raise _type_error(item, path, "str")
            else:
                out[key] = item
        return out
    if kind == "strlist":
        if not isinstance(value, list):
            raise _type_error(value, path, kind)
        items: List[str] = []
        for item in value:
            if item is None:
                items.append("")
            elif not isinstance(item, str):
                raise _type_error(item, path, "str")
            else:
                items.append(item)
        return items
    if kind == "headers":
        if not isinstance(value, dict):
            raise _type_error(value, path, kind)
        return {
            key: _decode_value(item, Field("strlist"), path) or [] for key, item in value.items()
        }
    assert fld.schema is not None
    if kind in ("struct", "lenient"):
        return decode_struct(value, fld.schema, strict=kind == "struct", path=path)
    if kind == "structlist":
        if not isinstance(value, list):
            raise _type_error(value, path, f"[]{fld.schema.name}")
        return [
            decode_struct(item, fld.schema, path=path) if item is not None else None
            for item in value
        ]
    if kind == "structmap":
        if not isinstance(value, dict):
            raise _type_error(value, path, f"map[string]{fld.schema.name}")
        return {key: decode_struct(item, fld.schema, path=path) for key, item in value.items()}
    raise AssertionError(f"unknown field kind {kind}")


def decode_struct(
    value: JSON, schema: Schema, strict: bool = True, path: str = ""
) -> Dict[str, Any]:
    """Decode a JSON object into a dict keyed by canonical field names.

    Absent and ``null`` fields are left out, so ``None`` later means Go's nil (a nil map is
    not DeepEqual to an empty one, which matters for the index rules).
    """
    path = path or schema.name
    if not isinstance(value, dict):
        raise DecodeError(
            f"json: cannot unmarshal {_json_kind(value)} into Go value of type "
            f"structs.{schema.name}"
        )
    lowered = {name.lower(): name for name in schema.fields}
    out: Dict[str, Any] = {}
    for key, item in value.items():
        name = key if key in schema.fields else lowered.get(key.lower())
        if name is None:
            if strict:
                raise DecodeError(f'json: unknown field "{key}"')
            continue
        fld = schema.fields[name]
        sub_path = f"{path}.{name}" if "." in path else f"{schema.name}.{name}"
        decoded = _decode_value(item, fld, sub_path)
        target = fld.target or name
        if decoded is None:
            if fld.target is None:
                out.pop(name, None)  # a later null resets the field, as in Go
            continue
        if fld.target is not None and target in out:
            continue  # the canonical spelling wins over a snake_case alias
        out[target] = decoded
    return out


def _parse_json(raw: bytes) -> JSON:
    """The first JSON value of a body, with Go's decoder error texts."""
    text = raw.decode("utf-8", errors="replace").lstrip()
    if not text:
        raise DecodeError("EOF")
    try:
        value, _ = json.JSONDecoder().raw_decode(text)
    except json.JSONDecodeError as exc:
        if exc.pos >= len(text.rstrip()):
            raise DecodeError("unexpected EOF") from None
        char = text[exc.pos]
        raise DecodeError(f"invalid character '{char}' looking for beginning of value") from None
    return value


def decode_body(raw: bytes, schema: Schema, strict: bool = True) -> Dict[str, Any]:
    """Decode a request body the way ``lib.DecodeJSON`` does, raising Go's error texts.

    ``strict=False`` is for structs with their own ``UnmarshalJSON`` (``structs.Session``):
    DisallowUnknownFields does not reach inside one, so unknown keys are ignored there.
    """
    return decode_struct(_parse_json(raw), schema, strict=strict)


def decode_body_list(raw: bytes, schema: Schema, go_type: str) -> List[Dict[str, Any]]:
    """Decode a body that is a JSON array of ``schema`` structs (Go type ``go_type``).

    A ``null`` element decodes to an empty struct, which the caller treats as an operation
    naming nothing.
    """
    value = _parse_json(raw)
    if value is None:
        return []
    if not isinstance(value, list):
        raise DecodeError(
            f"json: cannot unmarshal {_json_kind(value)} into Go value of type {go_type}"
        )
    return [decode_struct(item, schema) if item is not None else {} for item in value]


# --------------------------------------------------------------------------- schemas


def _fields(spec: Dict[str, Any]) -> Dict[str, Field]:
    return {name: (f if isinstance(f, Field) else Field(f)) for name, f in spec.items()}


def _aliases(pairs: List[Tuple[str, str, str]]) -> Dict[str, Field]:
    return {alias: Field(kind, target=target) for alias, target, kind in pairs}


DEFINITION = Schema(
    "HealthCheckDefinition",
    _fields(
        {
            "HTTP": "str",
            "TLSServerName": "str",
            "TLSSkipVerify": "bool",
            "Header": "headers",
            "Method": "str",
            "Body": "str",
            "DisableRedirects": "bool",
            "TCP": "str",
            "TCPUseTLS": "bool",
            "UDP": "str",
            "H2PING": "str",
            "H2PingUseTLS": "bool",
            "Interval": "duration",
            "OutputMaxSize": "int",
            "Timeout": "duration",
            "DeregisterCriticalServiceAfter": "duration",
            "ScriptArgs": "strlist",
            "DockerContainerID": "str",
            "Shell": "str",
            "GRPC": "str",
            "GRPCUseTLS": "bool",
            "AliasNode": "str",
            "AliasService": "str",
            "TTL": "duration",
            "OSService": "str",
            # Consul PR #22227 (1.21.x, 1.20.x backport): with a check Type "session", the
            # check follows the session of this Name.
            "SessionName": "str",
        }
    ),
)

_RAFT = {"CreateIndex": "int", "ModifyIndex": "int"}

HEALTH_CHECK = Schema(
    "HealthCheck",
    _fields(
        {
            "Node": "str",
            "CheckID": "str",
            "Name": "str",
            "Status": "str",
            "Notes": "str",
            "Output": "str",
            "ServiceID": "str",
            "ServiceName": "str",
            "ServiceTags": "strlist",
            "Type": "str",
            "Interval": "str",
            "Timeout": "str",
            "ExposedPort": "int",
            "PeerName": "str",
            "Definition": Field("lenient", DEFINITION),
            **_RAFT,
        }
    ),
)

WEIGHTS = Schema("Weights", _fields({"Passing": "int", "Warning": "int"}))
SERVICE_ADDRESS = Schema("ServiceAddress", _fields({"Address": "str", "Port": "int"}))

NODE_SERVICE = Schema(
    "NodeService",
    _fields(
        {
            "Kind": "str",
            "ID": "str",
            "Service": "str",
            "Tags": "strlist",
            "Address": "str",
            "TaggedAddresses": Field("structmap", SERVICE_ADDRESS),
            "Meta": "strmap",
            "Port": "int",
            "SocketPath": "str",
            "Weights": Field("struct", WEIGHTS),
            "EnableTagOverride": "bool",
            "Proxy": "any",
            "Connect": "any",
            "PeerName": "str",
            "Locality": "any",
            **_RAFT,
        }
    ),
)

REGISTER_REQUEST = Schema(
    "RegisterRequest",
    _fields(
        {
            "Datacenter": "str",
            "ID": "str",
            "Node": "str",
            "Address": "str",
            "TaggedAddresses": "strmap",
            "NodeMeta": "strmap",
            "Service": Field("struct", NODE_SERVICE),
            "Check": Field("struct", HEALTH_CHECK),
            "Checks": Field("structlist", HEALTH_CHECK),
            "SkipNodeUpdate": "bool",
            "PeerName": "str",
            "Locality": "any",
            "Token": "str",
        }
    ),
)

DEREGISTER_REQUEST = Schema(
    "DeregisterRequest",
    _fields(
        {
            "Datacenter": "str",
            "Node": "str",
            "ServiceID": "str",
            "CheckID": "str",
            "PeerName": "str",
            "Token": "str",
        }
    ),
)

CHECK_TYPE = Schema(
    "CheckType",
    {
        **_fields(
            {
                "CheckID": "str",
                "ID": "str",
                "Name": "str",
                "Status": "str",
                "Notes": "str",
                "ScriptArgs": "strlist",
                "HTTP": "str",
                "Header": "headers",
                "Method": "str",
                "Body": "str",
                "DisableRedirects": "bool",
                "TCP": "str",
                "TCPUseTLS": "bool",
                "UDP": "str",
                "Interval": "duration",
                "AliasNode": "str",
                "AliasService": "str",
                "DockerContainerID": "str",
                "Shell": "str",
                "GRPC": "str",
                "GRPCUseTLS": "bool",
                "H2PING": "str",
                "H2PingUseTLS": "bool",
                "OSService": "str",
                "TLSServerName": "str",
                "TLSSkipVerify": "bool",
                "Timeout": "duration",
                "TTL": "duration",
                "SuccessBeforePassing": "int",
                "FailuresBeforeWarning": "int",
                "FailuresBeforeCritical": "int",
                "ProxyHTTP": "str",
                "ProxyGRPC": "str",
                "DeregisterCriticalServiceAfter": "duration",
                "OutputMaxSize": "int",
                "ServiceID": "str",
            }
        ),
        **_aliases(
            [
                ("args", "ScriptArgs", "strlist"),
                ("script_args", "ScriptArgs", "strlist"),
                ("deregister_critical_service_after", "DeregisterCriticalServiceAfter", "duration"),
                ("docker_container_id", "DockerContainerID", "str"),
                ("tls_server_name", "TLSServerName", "str"),
                ("tls_skip_verify", "TLSSkipVerify", "bool"),
                ("grpc_use_tls", "GRPCUseTLS", "bool"),
                ("h2ping_use_tls", "H2PingUseTLS", "bool"),
                ("service_id", "ServiceID", "str"),
            ]
        ),
    },
)

SERVICE_DEFINITION = Schema(
    "ServiceDefinition",
    {
        **_fields(
            {
                "Kind": "str",
                "ID": "str",
                "Name": "str",
                "Tags": "strlist",
                "Address": "str",
                "TaggedAddresses": Field("structmap", SERVICE_ADDRESS),
                "Meta": "strmap",
                "Port": "int",
                "SocketPath": "str",
                "Check": Field("struct", CHECK_TYPE),
                "Checks": Field("structlist", CHECK_TYPE),
                "Weights": Field("struct", WEIGHTS),
                "Token": "str",
                "EnableTagOverride": "bool",
                "Proxy": "any",
                "Connect": "any",
                "Locality": "any",
            }
        ),
        **_aliases(
            [
                ("enable_tag_override", "EnableTagOverride", "bool"),
            ]
        ),
        "tagged_addresses": Field("structmap", SERVICE_ADDRESS, target="TaggedAddresses"),
    },
)

CHECK_UPDATE = Schema("checkUpdate", _fields({"Status": "str", "Output": "str"}))

SESSION = Schema(
    "Session",
    _fields(
        {
            "ID": "str",
            "Name": "str",
            "Node": "str",
            "LockDelay": "any",
            "Behavior": "str",
            "TTL": "str",
            "NodeChecks": "strlist",
            "ServiceChecks": Field(
                "structlist", Schema("ServiceCheck", _fields({"ID": "str", "Namespace": "str"}))
            ),
            "Checks": "strlist",
            **_RAFT,
        }
    ),
)


# --------------------------------------------------------------------------- /v1/txn
# The txn body is decoded into the Go client's api types (api/txn.go, api/agent.go,
# api/health.go), not the structs ones: other field sets, strict except for Definition.

TXN_DEFINITION = Schema(
    "HealthCheckDefinition",
    {
        **DEFINITION.fields,
        # api.HealthCheckDefinition.UnmarshalJSON also takes these (consul issue #5477)
        **_fields(
            {
                "IntervalDuration": "duration",
                "TimeoutDuration": "duration",
                "DeregisterCriticalServiceAfterDuration": "duration",
            }
        ),
    },
)

API_NODE = Schema(
    "Node",
    _fields(
        {
            "ID": "str",
            "Node": "str",
            "Address": "str",
            "Datacenter": "str",
            "TaggedAddresses": "strmap",
            "Meta": "strmap",
            "Partition": "str",
            "PeerName": "str",
            "Locality": "any",
            **_RAFT,
        }
    ),
)

AGENT_SERVICE = Schema(
    "AgentService",
    _fields(
        {
            "Kind": "str",
            "ID": "str",
            "Service": "str",
            "Tags": "strlist",
            "Meta": "strmap",
            "Port": "int",
            "Address": "str",
            "SocketPath": "str",
            "TaggedAddresses": Field("structmap", SERVICE_ADDRESS),
            "Weights": Field("struct", Schema("AgentWeights", WEIGHTS.fields)),
            "EnableTagOverride": "bool",
            "ContentHash": "str",
            "Proxy": "any",
            "Connect": "any",
            "PeerName": "str",
            "Namespace": "str",
            "Partition": "str",
            "Datacenter": "str",
            "Locality": "any",
            **_RAFT,
        }
    ),
)

API_HEALTH_CHECK = Schema(
    "HealthCheck",
    _fields(
        {
            "Node": "str",
            "CheckID": "str",
            "Name": "str",
            "Status": "str",
            "Notes": "str",
            "Output": "str",
            "ServiceID": "str",
            "ServiceName": "str",
            "ServiceTags": "strlist",
            "Type": "str",
            "Namespace": "str",
            "Partition": "str",
            "ExposedPort": "int",
            "PeerName": "str",
            "Definition": Field("lenient", TXN_DEFINITION),
            **_RAFT,
        }
    ),
)

TXN_OP = Schema(
    "TxnOp",
    _fields(
        {
            "KV": Field(
                "struct",
                Schema(
                    "KVTxnOp",
                    _fields(
                        {
                            "Verb": "str",
                            "Key": "str",
                            "Value": "str",
                            "Flags": "int",
                            "Index": "int",
                            "Session": "str",
                            "Namespace": "str",
                            "Partition": "str",
                        }
                    ),
                ),
            ),
            "Node": Field(
                "struct",
                Schema("NodeTxnOp", _fields({"Verb": "str", "Node": Field("struct", API_NODE)})),
            ),
            "Service": Field(
                "struct",
                Schema(
                    "ServiceTxnOp",
                    _fields(
                        {"Verb": "str", "Node": "str", "Service": Field("struct", AGENT_SERVICE)}
                    ),
                ),
            ),
            "Check": Field(
                "struct",
                Schema(
                    "CheckTxnOp",
                    _fields({"Verb": "str", "Check": Field("struct", API_HEALTH_CHECK)}),
                ),
            ),
        }
    ),
)
