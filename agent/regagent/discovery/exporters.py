"""The table of known exporters, shipped as package data (`regagent/data/exporters.yaml`).

Kept as data, not code, so adding an exporter is a one-entry change a reviewer can check against
the cited sources. Loaded through importlib.resources so it works from a wheel, a zip or a
distro package alike.

The table is not the only way to know an exporter (design decision 15): an answer with a
`<program>_build_info` names its program, and a process whose executable is called like an
exporter (`prometheus-<x>-exporter`, Debian's naming, or `<x>_exporter`, `<x>-exporter`,
upstream's) names itself; `exporter_for_binary` applies that rule where the table has no
entry. So the table is for default ports, for binary names that follow no such pattern, and for
exporters that publish no build info (their fingerprint metrics).
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, List, Optional, Tuple

import yaml

DATA_PACKAGE = "regagent"
DATA_FILE = "data/exporters.yaml"
DEFAULT_PATH = "/metrics"

# An exporter's name (the table's, a build_info's program, an executable's): it becomes a tag,
# Meta `exporter` and, with "-" for "_", a DNS-safe service name, so no more than one DNS label.
EXPORTER_NAME = re.compile(r"^[a-z](?:[a-z0-9_]{0,61}[a-z0-9])?$")
# Programs whose build_info is never an exporter's own: Go's runtime module info, and the name
# regagent's own endpoint is registered under (a listener must not pass for it).
NOT_EXPORTERS = frozenset({"go", "regagent"})
# Executable names of exporters: Debian's `prometheus-node-exporter`, `prometheus-smokeping-
# prober`; upstream's `ha_cluster_exporter`, `process-exporter`. The exporter is `<x>_<kind>`.
EXPORTER_BINARY = re.compile(r"^(?:prometheus-)?([a-z][a-z0-9_-]*?)[-_](exporter|prober)$")


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
    # Whether a valid answer on its default port that names nothing is this exporter: for
    # exporters whose /metrics may carry nothing of their own (empty while their backend is
    # down, or runtime metrics only until a target is asked for).
    identify_by_port: bool = False

    @property
    def service_name(self) -> str:
        """Consul service name: DNS-safe, so `node_exporter` becomes `node-exporter`."""
        return service_name(self.name)

    @property
    def own_build_infos(self) -> Tuple[str, ...]:
        """The build_info metrics that are this exporter's: `<name>_build_info` and any the
        fingerprint lists (an older or upstream program name, e.g. `pg_exporter_build_info`)."""
        names = [f"{self.name}_build_info"]
        names += [f for f in self.fingerprint if f.endswith("_build_info") and f not in names]
        return tuple(names)


def service_name(exporter: str) -> str:
    """An exporter's Consul service name: `node_exporter` becomes `node-exporter`."""
    return exporter.replace("_", "-")


def exporter_name(text: str) -> Optional[str]:
    """`text` if it can name an exporter (see EXPORTER_NAME, NOT_EXPORTERS), else None: it may
    come from any local process (a metric name, an executable's name)."""
    if EXPORTER_NAME.match(text) and "__" not in text and text not in NOT_EXPORTERS:
        return text
    return None


@dataclass(frozen=True)
class ExporterTable:
    """The exporters plus indexes by port and by binary name."""

    exporters: Tuple[ExporterSpec, ...]
    by_port: Dict[int, Tuple[ExporterSpec, ...]] = field(default_factory=dict)
    by_binary: Dict[str, Tuple[ExporterSpec, ...]] = field(default_factory=dict)
    by_name: Dict[str, ExporterSpec] = field(default_factory=dict)
    by_build_info: Dict[str, ExporterSpec] = field(default_factory=dict)

    @classmethod
    def of(cls, exporters: Iterable[ExporterSpec]) -> ExporterTable:
        specs = tuple(exporters)
        by_port: Dict[int, List[ExporterSpec]] = {}
        by_binary: Dict[str, List[ExporterSpec]] = {}
        by_build_info: Dict[str, ExporterSpec] = {}
        for spec in specs:
            if spec.port is not None:
                by_port.setdefault(spec.port, []).append(spec)
            for binary in spec.binaries:
                by_binary.setdefault(binary, []).append(spec)
            for metric in spec.own_build_infos:
                by_build_info.setdefault(metric, spec)
        return cls(
            exporters=specs,
            by_port={k: tuple(v) for k, v in by_port.items()},
            by_binary={k: tuple(v) for k, v in by_binary.items()},
            by_name={spec.name: spec for spec in specs},
            by_build_info=by_build_info,
        )

    def exporter_for_binary(self, binary: str) -> Optional[ExporterSpec]:
        """The exporter an executable's name says it is: the table's entry for that binary, or
        by the naming rule (EXPORTER_BINARY) the table's entry of that name or a new one."""
        listed = self.by_binary.get(binary)
        if listed:
            return listed[0]
        match = EXPORTER_BINARY.match(binary)
        if match is None:
            return None
        name = exporter_name(f"{match.group(1)}_{match.group(2)}".replace("-", "_"))
        if name is None:
            return None
        return self.by_name.get(name) or ExporterSpec(name, None, (binary,), DEFAULT_PATH, ())

    def exporter_for_program(self, program: str) -> Optional[ExporterSpec]:
        """The table's entry for the program a `<program>_build_info` names, if any."""
        return self.by_name.get(program) or self.by_build_info.get(f"{program}_build_info")

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
    unknown = set(entry) - {
        "name",
        "port",
        "binaries",
        "metrics_path",
        "fingerprint",
        "identify_by_port",
    }
    if unknown:
        raise ExporterTableError(f"{where}: unknown keys {sorted(unknown)}")
    name = entry.get("name")
    port = entry.get("port")
    path = entry.get("metrics_path", DEFAULT_PATH)
    by_port = entry.get("identify_by_port", False)
    binaries = entry.get("binaries", [])
    fingerprint = entry.get("fingerprint")
    if isinstance(fingerprint, str):
        fingerprint = [fingerprint]
    if not isinstance(name, str) or exporter_name(name) is None:
        raise ExporterTableError(
            f"{where}: name must be lowercase letters, digits and '_' (at most 63)"
        )
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
    if not isinstance(by_port, bool):
        raise ExporterTableError(f"{where} ({name}): identify_by_port must be true or false")
    if by_port and port is None:
        raise ExporterTableError(f"{where} ({name}): identify_by_port needs a port")
    return ExporterSpec(name, port, tuple(binaries), path, tuple(fingerprint), by_port)


@functools.lru_cache(maxsize=1)
def load_exporter_table() -> ExporterTable:
    """The table shipped in the package (read once per process, by the first that needs it:
    importlib.resources and what it imports cost 0.4 MB a daemon with discovery off spares)."""
    import importlib.resources

    resource = importlib.resources.files(DATA_PACKAGE).joinpath(DATA_FILE)
    return parse_exporter_table(resource.read_text(encoding="utf-8"))
