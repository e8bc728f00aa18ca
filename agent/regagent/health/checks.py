"""Health checks run on the host (Consul never runs catalog checks, design decision 5).

Output text is stable on purpose: no latencies, no timestamps, so an unchanged result is an
unchanged check and costs no Consul write. Flap protection is `regagent.health.flap`.
"""

from __future__ import annotations

import http.client
import socket
from concurrent.futures import ThreadPoolExecutor
from types import TracebackType
from typing import Dict, List, Optional, Type

from regagent.health.http import GetFailed, bounded_get, describe_error
from regagent.model import CRITICAL, PASSING, WARNING, HealthProbe, Result
from regagent.threads import signals_blocked

USER_AGENT = "regagent-check"
WORKERS = 8  # checks run at once, so one slow service does not delay the others by its timeout
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


class ProbePool:
    """Runs the probes of a cycle concurrently, on threads kept for the next cycle: starting
    eight threads every cycle cost more CPU than the checks themselves (bench/footprint.py).
    The threads start lazily, on the first probes, without the daemon's signals, which stay
    with the main thread (`regagent.threads`)."""

    def __init__(self, workers: int = WORKERS) -> None:
        self._executor = ThreadPoolExecutor(
            max_workers=workers, thread_name_prefix="regagent-check"
        )

    def __call__(self, probes: List[HealthProbe]) -> Dict[HealthProbe, Result]:
        """Each distinct probe's result (a probe shared by two services runs once)."""
        unique = list(dict.fromkeys(probes))
        if not unique:
            return {}
        with signals_blocked():  # threads are started on the submits
            futures = [self._executor.submit(run_probe, probe) for probe in unique]
        return {probe: future.result() for probe, future in zip(unique, futures)}

    def close(self) -> None:
        """Ends the threads once their probes are done."""
        self._executor.shutdown(wait=True)

    def __enter__(self) -> ProbePool:
        return self

    def __exit__(
        self,
        kind: Optional[Type[BaseException]],
        value: Optional[BaseException],
        traceback: Optional[TracebackType],
    ) -> None:
        self.close()


def run_probes(probes: List[HealthProbe], workers: int = WORKERS) -> Dict[HealthProbe, Result]:
    """All probes concurrently, once, on threads of their own that end with the call."""
    with ProbePool(max(1, min(workers, len(set(probes))))) as pool:
        return pool(probes)
