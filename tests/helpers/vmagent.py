"""vmagent (Debian's victoria-metrics), a real `consul_sd_configs` consumer independent of
python-consul2: where it is, its scrape configuration for a set of Consul servers, and what its
API says about its targets."""

from __future__ import annotations

import json
import shutil
import time
import urllib.request
from typing import Any, Callable, Dict, List, Optional, TypeVar

VMAGENT = shutil.which("vmagent")
NODE_EXPORTER = shutil.which("prometheus-node-exporter") or shutil.which("node_exporter")

T = TypeVar("T")
LOOPBACK = "127.0.0.1"


def wait_for(what: str, probe: Callable[[], Optional[T]], timeout: float = 30.0) -> T:
    """Poll ``probe`` until it returns something truthy; fail with ``what`` at the deadline."""
    deadline = time.monotonic() + timeout
    last_error: Optional[BaseException] = None
    while time.monotonic() < deadline:
        try:
            value = probe()
            if value:
                return value
        except OSError as exc:  # not listening yet, connection reset, ...
            last_error = exc
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last_error!r})")


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return json.loads(resp.read())


def get_json_text(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as resp:
        text: str = resp.read().decode()
        return text


def scrape_config(servers: List[str]) -> str:
    """One job, one consul_sd_configs block per server, consul's own service dropped."""
    blocks = "".join(f"      - server: '{addr}'\n" for addr in servers)
    return (
        "scrape_configs:\n"
        "  - job_name: consul-services\n"
        "    scrape_interval: 1s\n"
        "    scrape_timeout: 1s\n"
        "    consul_sd_configs:\n"
        f"{blocks}"
        "    relabel_configs:\n"
        "      - source_labels: [__meta_consul_service]\n"
        "        regex: consul\n"
        "        action: drop\n"
        "      - source_labels: [__meta_consul_service]\n"
        "        target_label: service\n"
    )


def active_targets(api: str) -> List[Dict[str, Any]]:
    data = get_json(f"{api}/api/v1/targets")["data"]
    targets: List[Dict[str, Any]] = data["activeTargets"]
    return targets


def health(api: str, service: str) -> str:
    """vmagent's scrape health ("up", "down", "unknown") of the first target of a service."""
    state: str = by_service(active_targets(api))[service][0]["health"]
    return state


def by_service(targets: List[Dict[str, Any]]) -> Dict[str, List[Dict[str, Any]]]:
    out: Dict[str, List[Dict[str, Any]]] = {}
    for target in targets:
        out.setdefault(target["labels"].get("service", ""), []).append(target)
    return out
