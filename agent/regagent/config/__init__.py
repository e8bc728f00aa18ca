"""Configuration: YAML files merged in name order, validated into typed dataclasses."""

from __future__ import annotations

from regagent.config.load import (
    CONFIG_ENV,
    DEFAULT_CONFIG_PATH,
    load_documents,
    resolve_config_path,
)
from regagent.config.model import Config
from regagent.config.validate import parse_duration, validate


def load_config(path: str) -> Config:
    """Loads and validates the configuration at `path` (a file or a conf.d directory)."""
    return validate(load_documents(path))


__all__ = [
    "CONFIG_ENV",
    "DEFAULT_CONFIG_PATH",
    "Config",
    "load_config",
    "parse_duration",
    "resolve_config_path",
]
