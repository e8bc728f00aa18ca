"""A short GET of a metrics path on a local address, and a check of what came back.

The GET is `regagent.health.http.bounded_get`: bounded in time and bytes whatever the exporter
does. The reason texts returned are stable (no timings, no addresses that vary) because they end
up in check output and discovery reports.

An answer with no sample at all is still a metrics page when it says so: an exporter whose
backend is down may serve an empty 200 (bird_exporter without bird), which Prometheus scrapes as
`up == 1` with no samples. Such an answer is valid only with a Prometheus content type
(`text/plain; version=0.0.4` or OpenMetrics); an empty page of any other type is not metrics.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Dict, FrozenSet, Mapping, Optional, Set, Tuple

from regagent.health.http import Answer, GetFailed, bounded_get
from regagent.model import url_host

__all__ = ["Exposition", "ProbeResult", "parse_exposition", "probe_metrics", "url_host"]

ACCEPT = "text/plain;version=0.0.4;q=1,application/openmetrics-text;q=0.5,*/*;q=0.1"
USER_AGENT = "regagent-discovery"

_NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
_SAMPLE = re.compile(rf"^({_NAME})(\{{.*\}})?\s+(\S+)(?:\s+\S+)?\s*$")
_LABEL = re.compile(r'\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*=\s*"((?:[^"\\]|\\.)*)"\s*,?')
_COMMENT = re.compile(rf"^#\s+(HELP|TYPE|UNIT)\s+({_NAME})(?:\s+(.*))?$")
_ESCAPE = re.compile(r"\\(.)")
_HTTPS_HINT = "client sent an http request to an https server"


@dataclass(frozen=True)
class Exposition:
    """What a metrics body says about its source: metric names, the labels of its build_info
    metrics (`*_build_info` and the unprefixed `build_info`) and their HELP texts, and the
    labels of its other `*_info` metrics (the first sample of each)."""

    valid: bool
    problem: str = ""
    names: FrozenSet[str] = frozenset()
    build_info: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    helps: Mapping[str, str] = field(default_factory=dict)  # HELP text of the build_info names
    info: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    samples: int = 0

    def version_of(self, preferred: Tuple[str, ...] = ()) -> Optional[str]:
        """`version` label of the exporter's own build_info (preferred names first).

        `go_build_info` is the Go runtime's module info, never the exporter's version.
        """
        for name in preferred:
            labels = self.build_info.get(name)
            if labels and labels.get("version"):
                return labels["version"]
        candidates = [
            labels["version"]
            for name, labels in sorted(self.build_info.items())
            if name != "go_build_info" and labels.get("version")
        ]
        return candidates[0] if len(candidates) == 1 else None


@dataclass(frozen=True)
class ProbeResult:
    """Outcome of one metrics GET; `reason` says why not an exporter when `ok` is false."""

    url: str
    scheme: str
    ok: bool
    reason: str
    status: Optional[int] = None
    exposition: Optional[Exposition] = None
    timed_out: bool = False  # no answer within the timeout: the listener may just be slow


def probe_metrics(
    address: str, port: int, path: str, timeout: float, max_bytes: int
) -> ProbeResult:
    """GET `path` over http (or https, when the server says it only speaks TLS) and judge it."""
    scheme = "http"
    url = f"{scheme}://{url_host(address)}:{port}{path}"
    try:
        answer = _get(url, timeout, max_bytes)
        if answer.status == 400 and _HTTPS_HINT in answer.body[:512].decode("latin-1").lower():
            scheme = "https"
            url = f"{scheme}://{url_host(address)}:{port}{path}"
            answer = _get(url, timeout, max_bytes)
    except GetFailed as exc:
        reason = f"timed out after {timeout:g}s" if exc.timed_out else exc.reason
        return ProbeResult(url, scheme, False, reason, timed_out=exc.timed_out)
    status = answer.status
    if status != 200:
        return ProbeResult(url, scheme, False, f"HTTP {status} for {path}", status)
    media = answer.content_type.split(";", 1)[0].strip().lower()
    if media and media not in ("text/plain", "application/openmetrics-text"):
        return ProbeResult(url, scheme, False, f"not a metrics page ({media})", status)
    exposition = parse_exposition(
        answer.body.decode("utf-8", errors="replace"),
        answer.truncated,
        allow_empty=prometheus_content_type(answer.content_type),
    )
    if not exposition.valid:
        return ProbeResult(url, scheme, False, exposition.problem, status, exposition)
    return ProbeResult(url, scheme, True, "", status, exposition)


def _get(url: str, timeout: float, max_bytes: int) -> Answer:
    # Identification only, so TLS is not verified: local exporters often use self-signed
    # certificates. The health check of the registered service does verify.
    headers = {"Accept": ACCEPT, "User-Agent": USER_AGENT}
    return bounded_get(url, timeout=timeout, max_bytes=max_bytes, headers=headers, verify=False)


def prometheus_content_type(content_type: str) -> bool:
    """Whether a Content-Type says Prometheus exposition: text format 0.0.4, or OpenMetrics."""
    media, _, params = content_type.partition(";")
    media = media.strip().lower()
    if media == "application/openmetrics-text":
        return True
    versions = [
        p.split("=", 1)[1].strip() for p in params.split(";") if p.strip().startswith("version=")
    ]
    return media == "text/plain" and versions == ["0.0.4"]


def is_build_info(name: str) -> bool:
    """A build_info metric: `<program>_build_info`, or the unprefixed `build_info`."""
    return name == "build_info" or name.endswith("_build_info")


def parse_exposition(
    text: str, truncated: bool = False, *, allow_empty: bool = False
) -> Exposition:
    """Checks Prometheus text (or OpenMetrics) format and collects names, build_info labels and
    HELP texts, and other `*_info` labels.

    Every line must be a comment or a well-formed sample; a body cut at `max_bytes` may end in a
    partial line, which is ignored. A body without samples is valid only with `allow_empty` (the
    answer said it is Prometheus exposition).
    """
    lines = text.split("\n")
    if truncated and lines:
        lines = lines[:-1]
    names: Set[str] = set()
    build_info: Dict[str, Dict[str, str]] = {}
    helps: Dict[str, str] = {}
    info: Dict[str, Dict[str, str]] = {}
    samples = 0
    for number, raw in enumerate(lines, start=1):
        line = raw.strip()
        if not line:
            continue
        if line.startswith("#"):
            match = _COMMENT.match(line)
            if match:
                names.add(match.group(2))
                if match.group(1) == "HELP" and is_build_info(match.group(2)):
                    helps.setdefault(match.group(2), match.group(3) or "")
            continue
        sample = _SAMPLE.match(line)
        if sample is None or not _is_number(sample.group(3)):
            return Exposition(False, f"not Prometheus exposition format (line {number})")
        name, labels_text = sample.group(1), sample.group(2)
        names.add(name)
        samples += 1
        if is_build_info(name) and name not in build_info:
            labels = parse_labels(labels_text or "{}")
            if labels is None:
                return Exposition(False, f"not Prometheus exposition format (line {number})")
            build_info[name] = labels
        elif name.endswith("_info") and name not in info:
            # Read only for an exporter's own `<name>_info` version; odd labels elsewhere in a
            # body are not this parser's business.
            info[name] = parse_labels(labels_text or "{}") or {}
    if samples == 0 and not allow_empty:
        return Exposition(False, "no metrics in response")
    return Exposition(True, "", frozenset(names), build_info, helps, info, samples)


def parse_labels(text: str) -> Optional[Dict[str, str]]:
    """`{a="1",b="x\\"y"}` to a dict; None when malformed."""
    inner = text.strip()
    if not (inner.startswith("{") and inner.endswith("}")):
        return None
    inner = inner[1:-1]
    labels: Dict[str, str] = {}
    pos = 0
    while pos < len(inner):
        match = _LABEL.match(inner, pos)
        if match is None:
            if inner[pos:].strip():
                return None
            break
        labels[match.group(1)] = _unescape(match.group(2))
        pos = match.end()
    return labels


def _unescape(value: str) -> str:
    return _ESCAPE.sub(lambda m: "\n" if m.group(1) == "n" else m.group(1), value)


def _is_number(token: str) -> bool:
    try:
        float(token)  # also accepts NaN, +Inf, -Inf as the format allows
    except ValueError:
        return False
    return True
