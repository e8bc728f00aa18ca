"""The table of known exporters, shipped as package data (`regagent/data/exporters.yaml`).

Kept as data, not code, so adding an exporter is a one-entry change a reviewer can check against
the cited sources. Loaded through importlib.resources so it works from a wheel, a zip or a
distro package alike.
"""

from __future__ import annotations

import functools
import importlib.resources
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, List, Optional, Tuple

import yaml

DATA_PACKAGE = "regagent"
DATA_FILE = "data/exporters.yaml"


class ExporterTableError(ValueError):
    """The exporter table is malformed (a packaging bug, not a user error)."""


@dataclass(frozen=True)
class ExporterSpec:
    """One known exporter: where it usually listens, how it is called, how to recognise it."""

    name: str
    port: Optional[int]
    binaries: Tuple[str, ...]
    metrics_path: str
    fingerprint: Tuple[str, ...]

    @property
    def service_name(self) -> str:
        """Consul service name: DNS-safe, so `node_exporter` becomes `node-exporter`."""
        return self.name.replace("_", "-")


@dataclass(frozen=True)
class ExporterTable:
    """The exporters plus indexes by port and by binary name."""

    exporters: Tuple[ExporterSpec, ...]
    by_port: Dict[int, Tuple[ExporterSpec, ...]] = field(default_factory=dict)
    by_binary: Dict[str, Tuple[ExporterSpec, ...]] = field(default_factory=dict)
    by_name: Dict[str, ExporterSpec] = field(default_factory=dict)

    @classmethod
    def of(cls, exporters: Iterable[ExporterSpec]) -> ExporterTable:
        specs = tuple(exporters)
        by_port: Dict[int, List[ExporterSpec]] = {}
        by_binary: Dict[str, List[ExporterSpec]] = {}
        for spec in specs:
            if spec.port is not None:
                by_port.setdefault(spec.port, []).append(spec)
            for binary in spec.binaries:
                by_binary.setdefault(binary, []).append(spec)
        return cls(
            exporters=specs,
            by_port={k: tuple(v) for k, v in by_port.items()},
            by_binary={k: tuple(v) for k, v in by_binary.items()},
            by_name={spec.name: spec for spec in specs},
        )

    def match_fingerprint(self, metric_names: Iterable[str]) -> Optional[ExporterSpec]:
        """The exporter whose fingerprint matches a metric name most specifically, if any.

        Ties (same length) go to the earlier table entry, which keeps the answer deterministic.
        """
        names = sorted(set(metric_names))
        best: Optional[ExporterSpec] = None
        best_len = 0
        for spec in self.exporters:
            for prefix in spec.fingerprint:
                if len(prefix) > best_len and _any_startswith(names, prefix):
                    best, best_len = spec, len(prefix)
        return best


def _any_startswith(sorted_names: List[str], prefix: str) -> bool:
    # Binary search: the first name >= prefix is the only one that can start with it.
    lo, hi = 0, len(sorted_names)
    while lo < hi:
        mid = (lo + hi) // 2
        if sorted_names[mid] < prefix:
            lo = mid + 1
        else:
            hi = mid
    return lo < len(sorted_names) and sorted_names[lo].startswith(prefix)


def parse_exporter_table(text: str) -> ExporterTable:
    """Validates and indexes the YAML text of an exporter table."""
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ExporterTableError(f"exporter table: malformed YAML: {exc}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("exporters"), list):
        raise ExporterTableError("exporter table: expected a mapping with an 'exporters' list")
    specs = [_spec(i, entry) for i, entry in enumerate(doc["exporters"])]
    names = [s.name for s in specs]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ExporterTableError(f"exporter table: duplicate names {duplicates}")
    return ExporterTable.of(specs)


def _spec(index: int, entry: Any) -> ExporterSpec:
    where = f"exporter table: exporters[{index}]"
    if not isinstance(entry, dict):
        raise ExporterTableError(f"{where}: expected a mapping")
    unknown = set(entry) - {"name", "port", "binaries", "metrics_path", "fingerprint"}
    if unknown:
        raise ExporterTableError(f"{where}: unknown keys {sorted(unknown)}")
    name = entry.get("name")
    port = entry.get("port")
    path = entry.get("metrics_path", "/metrics")
    binaries = entry.get("binaries", [])
    fingerprint = entry.get("fingerprint")
    if isinstance(fingerprint, str):
        fingerprint = [fingerprint]
    if not isinstance(name, str) or not name:
        raise ExporterTableError(f"{where}: name must be a non-empty string")
    if port is not None and (not isinstance(port, int) or not 1 <= port <= 65535):
        raise ExporterTableError(f"{where} ({name}): port must be 1-65535 or null")
    if not isinstance(path, str) or not path.startswith("/"):
        raise ExporterTableError(f"{where} ({name}): metrics_path must start with '/'")
    if not isinstance(binaries, list) or not all(isinstance(b, str) and b for b in binaries):
        raise ExporterTableError(f"{where} ({name}): binaries must be a list of names")
    if (
        not isinstance(fingerprint, list)
        or not fingerprint
        or not all(isinstance(f, str) and f for f in fingerprint)
    ):
        raise ExporterTableError(f"{where} ({name}): fingerprint must name at least one metric")
    return ExporterSpec(name, port, tuple(binaries), path, tuple(fingerprint))


@functools.lru_cache(maxsize=1)
def load_exporter_table() -> ExporterTable:
    """The table shipped in the package (read once per process)."""
    resource = importlib.resources.files(DATA_PACKAGE).joinpath(DATA_FILE)
    return parse_exporter_table(resource.read_text(encoding="utf-8"))
