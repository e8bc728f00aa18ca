"""Health checks run on the host (Consul never runs catalog checks, design decision 5).

Output text is stable on purpose: no latencies, no timestamps, so an unchanged result is an
unchanged check and costs no Consul write. Flap protection is `regagent.health.flap`.
"""

from __future__ import annotations

import http.client
import socket
from concurrent.futures import ThreadPoolExecutor
from typing import Dict, List

from regagent.health.http import GetFailed, bounded_get, describe_error
from regagent.model import CRITICAL, PASSING, WARNING, HealthProbe, Result

USER_AGENT = "regagent-check"
_CHECK_BODY_BYTES = 0  # the check judges the status line only, as Consul's HTTP check does


def http_check(url: str, timeout: float) -> Result:
    """2xx passing, 429 warning, anything else critical: Consul's own HTTP check rules."""
    try:
        answer = bounded_get(
            url, timeout=timeout, max_bytes=_CHECK_BODY_BYTES, headers={"User-Agent": USER_AGENT}
        )
    except GetFailed as exc:
        return CRITICAL, f"HTTP GET {url}: {exc.reason}"
    code = answer.status
    status = PASSING if 200 <= code < 300 else WARNING if code == 429 else CRITICAL
    return status, f"HTTP GET {url}: {code} {http.client.responses.get(code, '')}".rstrip()


def tcp_check(target: str, timeout: float) -> Result:
    host, _, port = target.rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
            pass
    except OSError as exc:
        return CRITICAL, f"TCP connect {target}: {describe_error(exc)}"
    return PASSING, f"TCP connect {target}: success"


def run_probe(probe: HealthProbe) -> Result:
    if probe.kind == "http":
        return http_check(probe.target, probe.timeout)
    return tcp_check(probe.target, probe.timeout)


def run_probes(probes: List[HealthProbe], workers: int = 8) -> Dict[HealthProbe, Result]:
    """All probes concurrently, so one slow service does not delay the cycle by its timeout each."""
    unique = list(dict.fromkeys(probes))
    if not unique:
        return {}
    with ThreadPoolExecutor(max_workers=min(workers, len(unique))) as executor:
        return dict(zip(unique, executor.map(run_probe, unique)))
