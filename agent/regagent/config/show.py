"""The effective configuration as plain data, for `regagent check-config`; secrets masked."""

from __future__ import annotations

import dataclasses
from typing import Any, Dict

from regagent.config.model import Config
from regagent.rules import format_duration

MASK = "********"


def to_plain(value: Any, metadata: Any = None) -> Any:
    """A config value as YAML/JSON-ready data, written as a user would write it."""
    kind = (metadata or {}).get("kind")
    if (metadata or {}).get("secret") and value:
        return MASK
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {
            f.name: to_plain(getattr(value, f.name), f.metadata) for f in dataclasses.fields(value)
        }
    if kind == "duration" and isinstance(value, float):
        return format_duration(value)
    if kind == "port_ranges":
        return [f"{low}-{high}" for low, high in value]
    if isinstance(value, (tuple, list)):
        return [to_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: to_plain(v) for k, v in value.items()}
    return value


def effective_config(config: Config) -> Dict[str, Any]:
    """The whole configuration as plain data, defaults filled in and secrets masked."""
    plain: Dict[str, Any] = to_plain(config)
    return plain
