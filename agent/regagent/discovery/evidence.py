"""Which exporter a listener is, from the evidence at hand, strongest first (design decision 15).

Pure: an answer (the parsed /metrics page, or None when there was no valid one), the listening
process (or None) and the exporter table in, a `Naming` out. The kinds of evidence, in order,
each also the value of the registration's Meta `identified_by`:

1. `build_info`: the answer's own build_info names its program. `<program>_build_info` (not
   Go's `go_build_info`), or an unprefixed `build_info` whose HELP text says "... from which
   <program> was built" (prometheus/common's wording; the bare name alone names nothing). The
   table's entry for that program is used when it has one (`pg_exporter_build_info` is
   postgres_exporter). A program the table does not know names itself only by a name no
   ordinary service has (`*_exporter`, `*_prober`), or when something an unprivileged user cannot
   fake confirms it: the port is in a configured `port_ranges`, or a process root started, or
   an executable only root can change, goes by that name (`self_named`). Otherwise any user
   could bind a free default port of the table and register `vault` or `web` there. An answer that
   carries the build_info of several programs (a pushgateway, exporter_exporter's proxy paths)
   is named only by the one its port or process confirms.
2. `fingerprint`: the table's fingerprint metrics, for exporters that publish no build info
   (`ipmi_up`, `varnish_`).
3. `process`: the listening process is a known exporter's executable and only root could have
   started it as such (`ProcessInfo.vouched_names`): named even when its answer is slow, empty
   or names nothing, because an exporter whose backend is down is still a target.
4. `port`: the table's default port, for an answer that carries nothing of its own (empty, or
   runtime metrics only), when the port's one table entry says its exporter may answer so
   (`identify_by_port`).

A version is only ever read from the exporter's own metric: its build_info (`version`, else
`build_version`), or `<exporter>_info`. Never from a metric of the monitored thing
(`varnish_version`, `node_os_version`, `mysql_version_info`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

from regagent.discovery.exporters import ExporterSpec, ExporterTable, exporter_name
from regagent.discovery.probe import Exposition
from regagent.discovery.processes import ProcessInfo

BUILD_INFO = "build_info"
FINGERPRINT = "fingerprint"
PROCESS = "process"
PORT = "port"
EVIDENCE = (BUILD_INFO, FINGERPRINT, PROCESS, PORT)  # strongest first
FROM_ANSWER = (BUILD_INFO, FINGERPRINT)  # what the listener's answer itself said

RUNTIME_PREFIXES = ("go_", "process_", "promhttp_")  # what any Go program serves by default
VERSION_LABELS = ("version", "build_version")  # cloudwatch_exporter says build_version
_BUILT_FROM = re.compile(r"\bfrom which (\S+?) was built\.?\s*$")
_SUFFIX = "_build_info"
# What only an exporter is called: an off-table program so named may name itself by its answer.
EXPORTER_SUFFIXES = ("_exporter", "_prober")


@dataclass(frozen=True)
class Naming:
    """What a listener was identified as, by which kind of evidence, and a short why."""

    exporter: str
    identified_by: str  # one of EVIDENCE
    reason: str
    version: Optional[str] = None


def name_listener(
    port: int,
    answer: Optional[Exposition],
    process: Optional[ProcessInfo],
    table: ExporterTable,
    *,
    in_port_range: bool = False,
) -> Tuple[Optional[Naming], str]:
    """The exporter the evidence names, strongest first; else None and why the answer named
    nothing ("" when it simply carried nothing known). `in_port_range`: the port is in a
    configured `discovery.port_ranges` (the operator asked for it)."""
    hints = [*candidate_exporters(process, table), *table.by_port.get(port, ())]
    naming, why = (None, "")
    if answer is not None:
        naming, why = by_answer(answer, table, hints, process=process, in_port_range=in_port_range)
    if naming is None:
        naming = by_process(process, table) or by_port(port, answer, table)
    return naming, why


def by_answer(
    answer: Exposition,
    table: ExporterTable,
    hints: Sequence[ExporterSpec] = (),
    *,
    process: Optional[ProcessInfo] = None,
    in_port_range: bool = False,
) -> Tuple[Optional[Naming], str]:
    """Rules 1 and 2: what the answer names by its build_info, else by a table fingerprint.
    `hints`: the exporters the port and the process suggest, which pick one of several
    programs' build_info; `process` and `in_port_range` may confirm an off-table program
    (`self_named`)."""
    programs = build_info_programs(answer)
    if len(programs) > 1:
        confirmed = [p for p in programs if _hinted(p, hints, table)]
        if len(confirmed) != 1:
            listed = ", ".join(sorted(programs))
            return (
                None,
                f"build_info of several programs ({listed}), none confirmed by its port or process",
            )
        programs = {confirmed[0]: programs[confirmed[0]]}
    if programs:
        ((program, metric),) = programs.items()
        spec = table.exporter_for_program(program)
        if spec is None and not self_named(program, process, in_port_range):
            return None, (
                f"{metric} names {program}, which the exporter table does not know: an answer "
                "alone names only a *_exporter or *_prober (add the port to "
                "discovery.port_ranges to accept it)"
            )
        how = metric if metric != "build_info" else f"build_info whose HELP names {program}"
        return Naming(
            spec.name if spec else program, BUILD_INFO, how, version_in(answer, [metric])
        ), ""
    spec = table.match_fingerprint(answer.names)
    if spec is None:
        return None, ""
    version = version_in(answer, [*spec.own_build_infos, f"{spec.name}_info"])
    return Naming(spec.name, FINGERPRINT, matched(spec, answer), version), ""


def self_named(program: str, process: Optional[ProcessInfo], in_port_range: bool) -> bool:
    """Whether a program the table does not know may be named by its own build_info: its name
    is one no ordinary service has, or the operator's port range or a trusted process name
    confirms it (see the module docstring)."""
    if program.endswith(EXPORTER_SUFFIXES) or in_port_range:
        return True
    if process is None:
        return False
    return any(name.replace("-", "_") == program for name in process.trusted_names)


def by_process(process: Optional[ProcessInfo], table: ExporterTable) -> Optional[Naming]:
    """Rule 3: a known exporter's executable, run as only root could have run it."""
    if process is None:
        return None
    for binary in sorted(process.vouched_names):
        spec = table.exporter_for_binary(binary)
        if spec is not None:
            who = process.user or f"uid {process.uid}"
            return Naming(spec.name, PROCESS, f"{process.exe or binary} run by {who}")
    return None


def by_port(port: int, answer: Optional[Exposition], table: ExporterTable) -> Optional[Naming]:
    """Rule 4: a valid answer with nothing of its own, on the default port of the one table
    entry there, which says its exporter may answer so."""
    specs = table.by_port.get(port, ())
    if answer is None or len(specs) != 1 or not specs[0].identify_by_port:
        return None
    if not all(name.startswith(RUNTIME_PREFIXES) for name in answer.names):
        return None
    what = "an empty page" if not answer.names else "runtime metrics only"
    return Naming(specs[0].name, PORT, f"default port of {specs[0].name}, serving {what}")


def candidate_exporters(process: Optional[ProcessInfo], table: ExporterTable) -> List[ExporterSpec]:
    """Exporters the process's trusted names say it is (candidacy: its answer must confirm)."""
    if process is None:
        return []
    found: List[ExporterSpec] = []
    for binary in sorted(process.trusted_names):
        spec = table.exporter_for_binary(binary)
        if spec is not None and spec not in found:
            found.append(spec)
    return found


def build_info_programs(answer: Exposition) -> Dict[str, str]:
    """Each program an answer's build_info metrics name, with the metric that names it."""
    found: Dict[str, str] = {}
    for metric in sorted(answer.build_info):
        if metric == "build_info":
            said = _BUILT_FROM.search(answer.helps.get(metric, ""))
            program = exporter_name(said.group(1)) if said else None
        else:
            program = exporter_name(metric[: -len(_SUFFIX)])
        if program is not None:
            found.setdefault(program, metric)
    return found


def version_in(answer: Exposition, metrics: Sequence[str]) -> Optional[str]:
    """The version label of the first of `metrics` that has one (build_info or `*_info`)."""
    for metric in metrics:
        labels = answer.build_info.get(metric) or answer.info.get(metric) or {}
        for label in VERSION_LABELS:
            if labels.get(label):
                return labels[label]
    return None


def matched(spec: ExporterSpec, answer: Exposition) -> str:
    """The longest of the spec's fingerprints the answer matches (for the reason text)."""
    for prefix in sorted(spec.fingerprint, key=len, reverse=True):
        if any(name.startswith(prefix) for name in answer.names):
            return prefix
    return spec.fingerprint[0]


def _hinted(program: str, hints: Sequence[ExporterSpec], table: ExporterTable) -> bool:
    spec = table.exporter_for_program(program)
    return any(hint.name in (program, spec.name if spec else program) for hint in hints)
