"""The shipped `conf.d/` states the built-in defaults, no more and no less.

An operator reads `/etc/regagent/conf.d/00-regagent.yaml` to learn what regagent does when
nothing else is configured; if a default changes in code but not there (or the other way
round), that file lies. Every key the file sets must equal the code default, and every key of
the configuration must be mentioned in it (set, or commented out).
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any, Iterator, Tuple

from regagent.config import Config, load_config

CONF_D = Path(__file__).resolve().parent.parent / "conf.d"


def test_the_shipped_configuration_is_exactly_the_code_defaults() -> None:
    assert load_config(str(CONF_D)) == Config()


def leaf_keys(cls: Any, prefix: str = "") -> Iterator[Tuple[str, str]]:
    """(dotted path, key) of every configuration field; sections recurse."""
    for f in dataclasses.fields(cls):
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else None
        if dataclasses.is_dataclass(default):
            yield from leaf_keys(type(default), f"{prefix}{f.name}.")
        else:
            yield f"{prefix}{f.name}", f.name


def test_every_configuration_key_is_documented_in_the_shipped_file() -> None:
    text = (CONF_D / "00-regagent.yaml").read_text(encoding="utf-8")
    mentioned = set(re.findall(r"^\s*#?\s*-?\s*([a-z_]+):", text, flags=re.MULTILINE))
    missing = [path for path, key in leaf_keys(Config) if key not in mentioned]
    assert missing == []
