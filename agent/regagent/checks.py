"""Health checks run on the host (Consul never runs catalog checks, design decision 5).

Output text is stable on purpose: no latencies, no timestamps, so an unchanged result is an
unchanged check and costs no Consul write.
"""

from __future__ import annotations

import http.client
import socket
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from typing import Dict, List, Tuple

from regagent.model import CRITICAL, PASSING, WARNING, HealthProbe

Result = Tuple[str, str]  # (status, output)

# Checks go straight to the service: an http_proxy in the environment must not answer for it.
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _reason(exc: BaseException) -> str:
    if isinstance(exc, urllib.error.URLError):
        exc = exc.reason if isinstance(exc.reason, BaseException) else exc
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, (socket.timeout, TimeoutError)):
        return "timed out"
    if isinstance(exc, ConnectionResetError):
        return "connection reset"
    if isinstance(exc, http.client.HTTPException):
        return "not an HTTP answer"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    return type(exc).__name__


def http_check(url: str, timeout: float) -> Result:
    """2xx passing, 429 warning, anything else critical: Consul's own HTTP check rules."""
    request = urllib.request.Request(url, headers={"User-Agent": "regagent-check"})
    try:
        with _DIRECT.open(request, timeout=timeout) as response:
            code = response.status
    except urllib.error.HTTPError as exc:
        code = exc.code
    except Exception as exc:  # any failure to get an answer is a failed check
        return CRITICAL, f"HTTP GET {url}: {_reason(exc)}"
    status = PASSING if 200 <= code < 300 else WARNING if code == 429 else CRITICAL
    return status, f"HTTP GET {url}: {code} {http.client.responses.get(code, '')}".rstrip()


def tcp_check(target: str, timeout: float) -> Result:
    host, _, port = target.rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
            pass
    except OSError as exc:
        return CRITICAL, f"TCP connect {target}: {_reason(exc)}"
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
