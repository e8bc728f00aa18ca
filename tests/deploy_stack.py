"""The reference deployment in deploy/, read and rewritten for tests on loopback.

Tests never edit what operators copy: they load the shipped files, swap the placeholder host
names (`*.example.org`) for loopback ports and temp paths, shorten durations where a test needs
it, and write the result to a temp directory. Each rewrite is a small named function, so a test
says exactly what differs from the shipped file (and nothing else does).
"""

from __future__ import annotations

import copy
import json
import re
import shutil
import socket
import threading
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional, Tuple

import yaml

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
PROMETHEUS_CONFIGS = [
    DEPLOY / "prometheus" / "prometheus-1.yml",
    DEPLOY / "prometheus" / "prometheus-2.yml",
]
RULES = DEPLOY / "prometheus" / "rules" / "alerts.rules.yml"
RULE_TESTS = DEPLOY / "prometheus" / "tests" / "alerts.test.yml"
ALERTMANAGER = DEPLOY / "alertmanager" / "alertmanager.yml"
NGINX = DEPLOY / "nginx" / "alert-relays.conf"
VICTORIA_DEFAULT = DEPLOY / "victoria-metrics" / "default"
ALERTMANAGER_DEFAULTS = [
    DEPLOY / "alertmanager" / "default-alertmanager-1",
    DEPLOY / "alertmanager" / "default-alertmanager-2",
]

PROMTOOL = shutil.which("promtool")
PROMETHEUS = shutil.which("prometheus")
ALERTMANAGER_BIN = shutil.which("prometheus-alertmanager") or shutil.which("alertmanager")
AMTOOL = shutil.which("amtool")
NGINX_BIN = shutil.which("nginx")
VICTORIA_METRICS = shutil.which("victoria-metrics")
DOT = shutil.which("dot")
LOOPBACK = "127.0.0.1"


def load_yaml(path: Path) -> Dict[str, Any]:
    """One shipped YAML file as a dict."""
    data: Dict[str, Any] = yaml.safe_load(path.read_text())
    return data


def dump_yaml(data: Mapping[str, Any], path: Path) -> Path:
    """Write a rewritten config; returns the path for chaining."""
    path.write_text(yaml.safe_dump(dict(data), sort_keys=False))
    return path


def replace_hosts(text: str, hosts: Mapping[str, str]) -> str:
    """Swap `name.example.org:port` placeholders for test addresses; every key must occur."""
    for placeholder, address in hosts.items():
        if placeholder not in text:
            raise AssertionError(f"{placeholder} is not in the shipped file any more")
        text = text.replace(placeholder, address)
    return text


def without_consul_sd(config: Mapping[str, Any]) -> Dict[str, Any]:
    """The config minus every consul_sd_configs block: what Debian's promtool/Prometheus load.

    Debian 12 builds Prometheus 2.42 without Consul discovery, so both reject the key.
    """
    out = copy.deepcopy(dict(config))
    for job in out.get("scrape_configs", []):
        job.pop("consul_sd_configs", None)
    return out


def scrape_part_for_vmagent(config: Mapping[str, Any]) -> Dict[str, Any]:
    """`scrape_configs` only, minus `refresh_interval`, the one consul_sd key vmagent 1.79 lacks.

    vmagent has `-promscrape.consulSDCheckInterval` instead; everything else stays, and
    vmagent parses it strictly (an unknown or misspelt key fails).
    """
    jobs = copy.deepcopy(config["scrape_configs"])
    for job in jobs:
        for block in job.get("consul_sd_configs", []):
            block.pop("refresh_interval", None)
    return {"scrape_configs": jobs}


def credentials_files(config: Mapping[str, Any]) -> List[str]:
    """Every `authorization.credentials_file` the config names (token files)."""
    found: List[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            auth = node.get("authorization")
            if isinstance(auth, dict) and "credentials_file" in auth:
                found.append(auth["credentials_file"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(config)
    return found


def rewrite_credentials(text: str, config: Mapping[str, Any], token_file: Path) -> str:
    """Point every credentials_file at a test token file."""
    for path in set(credentials_files(config)):
        text = text.replace(path, str(token_file))
    return text


def alert_rules(path: Path = RULES) -> List[Dict[str, Any]]:
    """Every alerting rule of the shipped rules file, in file order."""
    rules: List[Dict[str, Any]] = []
    for group in load_yaml(path)["groups"]:
        rules += [rule for rule in group["rules"] if "alert" in rule]
    return rules


def duration_seconds(text: str) -> float:
    """A Prometheus duration such as `1m30s` or `500ms` in seconds."""
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000}
    parts = re.findall(r"(\d+)(ms|[smhdwy])", text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ValueError(f"not a Prometheus duration: {text!r}")
    return sum(int(n) * units[u] for n, u in parts)


def default_flags(default_file: Path) -> Dict[str, str]:
    """Every `--flag=value` of a Debian /etc/default ARGS file, by flag name."""
    return dict(re.findall(r"(?:^|[\s\"])--?([\w.-]+)=([^\s\"]+)", default_file.read_text()))


def flag_value(default_file: Path, flag: str) -> str:
    """The value of `-flag=value` or `--flag=value` in a Debian /etc/default ARGS file."""
    match = re.search(rf"(?:^|[\s\"])--?{re.escape(flag)}=(\S+)", default_file.read_text())
    if match is None:
        raise AssertionError(f"{flag} is not set in {default_file}")
    return match.group(1).rstrip('"')


RELAY_ADDRESSES = ("192.0.2.31:8060", "192.0.2.32:8060")  # the shipped upstream's placeholders


def nginx_test_config(directory: Path, relays: Tuple[str, str], listen: str) -> Path:
    """The shipped server block pointed at test relays and a test port, all under `directory`.

    A test nginx must not touch /var/log/nginx or /run; the relays' placeholder addresses
    become the test's relays.
    """
    directory.mkdir(parents=True, exist_ok=True)
    text = replace_hosts(
        NGINX.read_text(),
        {
            RELAY_ADDRESSES[0]: relays[0],
            RELAY_ADDRESSES[1]: relays[1],
            "listen 127.0.0.1:8080;": f"listen {listen};",
            "/var/log/nginx/": f"{directory}/",
        },
    )
    (directory / "alert-relays.conf").write_text(text)
    return nginx_main(directory, directory / "alert-relays.conf")


def nginx_main(directory: Path, snippet: Path) -> Path:
    """A main nginx.conf under `directory` whose `http` block includes `snippet`.

    The shipped file is an `http`-context snippet for /etc/nginx/conf.d/; nginx -t and a test
    nginx need a main file. Its own pid, logs and temp paths stay under `directory`.
    """
    directory.mkdir(parents=True, exist_ok=True)
    temp = "\n".join(
        f"  {kind}_temp_path {directory / kind};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    main = directory / "nginx.conf"
    main.write_text(
        f"pid {directory / 'nginx.pid'};\n"
        f"error_log {directory / 'error.log'} info;\n"
        "daemon off;\n"
        "worker_processes 1;\n"
        "events { worker_connections 64; }\n"
        "http {\n"
        f"  access_log {directory / 'access.log'};\n"
        f"{temp}\n"
        f"  include {snippet};\n"
        "}\n"
    )
    return main


def nginx_command(main: Path, *extra: str) -> List[str]:
    """nginx with every default path (prefix, error log before the config is read) redirected."""
    assert NGINX_BIN is not None
    return [
        NGINX_BIN,
        "-p",
        str(main.parent),
        "-e",
        str(main.parent / "error.log"),
        "-c",
        str(main),
        *extra,
    ]


# --- running the stack on loopback -------------------------------------------------------


@dataclass(frozen=True)
class Post:
    """One webhook notification as a relay received it."""

    receiver: str
    path: str
    body: Dict[str, Any]
    at: float  # time.time() when the relay received it

    @property
    def sender(self) -> str:
        """The Alertmanager that sent it (its --web.external-url, which every webhook carries)."""
        return str(self.body.get("externalURL", "?"))

    def alerts(self, status: str, **labels: str) -> List[Dict[str, Any]]:
        """The alerts of this notification in `status` whose labels include `labels`."""
        return [
            alert
            for alert in self.body.get("alerts", [])
            if alert.get("status") == status
            and all(alert["labels"].get(k, "") == v for k, v in labels.items())
        ]


class _RelayHandler(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length) or b"{}")
        relay: Relay = self.server.relay  # type: ignore[attr-defined]
        with relay.lock:
            relay.posts.append(Post(relay.name, self.path, body, time.time()))
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the test reads `posts`, not a log."""


class Relay:
    """A stand-in for a webhook relay (e.g. prometheus-webhook-dingtalk): records every POST."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.posts: List[Post] = []
        self.lock = threading.Lock()
        self._server = ThreadingHTTPServer((LOOPBACK, 0), _RelayHandler)
        self._server.relay = self  # type: ignore[attr-defined]
        self.address = f"{LOOPBACK}:{self._server.server_address[1]}"
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True
        )
        self._thread.start()
        self.running = True

    def stop(self) -> None:
        """Close the port: nginx then gets `connection refused`, as from a dead relay."""
        if self.running:
            self._server.shutdown()
            self._server.server_close()
            self.running = False

    def received(self) -> List[Post]:
        with self.lock:
            return list(self.posts)


def notifications(relays: Iterable[Relay], path: str, status: str, **labels: str) -> List[Post]:
    """Notifications to `path` (a receiver) that carry an alert in `status` with `labels`."""
    return [
        post
        for relay in relays
        for post in relay.received()
        if post.path == path and post.body.get("status") == status and post.alerts(status, **labels)
    ]


def http_json(url: str, data: Optional[bytes] = None) -> Any:
    """GET (or POST `data` as JSON) and decode the JSON answer."""
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=5) as resp:
        return json.loads(resp.read() or b"null")


def instant_query(api: str, query: str) -> List[Dict[str, Any]]:
    """The result vector of a PromQL instant query (Prometheus or VictoriaMetrics)."""
    url = f"{api}/api/v1/query?" + urllib.parse.urlencode({"query": query})
    result: List[Dict[str, Any]] = http_json(url)["data"]["result"]
    return result


def ready(url: str) -> bool:
    """True once `url` answers 200 (a readiness endpoint)."""
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return bool(resp.status == 200)
    except (OSError, ValueError):
        return False


def ready_tcp(address: str) -> bool:
    """True once something accepts TCP connections on `address`."""
    host, port = address.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=1):
        return True


def cluster_peers(api: str) -> List[Dict[str, Any]]:
    """The members an Alertmanager sees in its cluster (itself included)."""
    peers: List[Dict[str, Any]] = http_json(f"{api}/api/v2/status")["cluster"].get("peers") or []
    return peers


def groups_holding(api: str, alertname: str) -> int:
    """How many alert groups of an Alertmanager may hold `alertname`, resolved copies included.

    The API lists only groups with unresolved alerts, while a group lives until its resolved
    alerts are flushed and the dispatcher's cleanup (every 30s) drops it empty; the metric
    `alertmanager_dispatcher_aggregation_groups` counts every group. Groups by alert name, as
    the shipped route is: all groups minus those the API shows holding other alerts. (The API
    is read first: a group dropped between the two reads then errs on the side of "held".)
    """
    others = [
        group
        for group in http_json(f"{api}/api/v2/alerts/groups")
        if all(a["labels"].get("alertname") != alertname for a in group["alerts"])
    ]
    with urllib.request.urlopen(f"{api}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    match = re.search(r"^alertmanager_dispatcher_aggregation_groups (\S+)$", text, re.MULTILINE)
    if match is None:
        raise AssertionError(f"{api}/metrics has no alertmanager_dispatcher_aggregation_groups")
    return int(float(match.group(1))) - len(others)


def alertmanager_config(directory: Path, nginx: str, timing: Mapping[str, str]) -> Path:
    """The shipped alertmanager.yml posting to a test nginx, with shorter route timers."""
    directory.mkdir(parents=True, exist_ok=True)
    config = yaml.safe_load(replace_hosts(ALERTMANAGER.read_text(), {"127.0.0.1:8080": nginx}))
    config["route"].update(timing)
    return dump_yaml(config, directory / "alertmanager.yml")


def alertmanager_command(
    binary: str,
    config: Path,
    directory: Path,
    *,
    web: str,
    cluster: str,
    peer: str,
    peer_timeout: str,
) -> List[str]:
    """One cluster member on loopback: the flags of deploy/alertmanager/default-*, test ports."""
    return [
        binary,
        f"--config.file={config}",
        f"--storage.path={directory / 'data'}",
        f"--web.listen-address={web}",
        f"--web.external-url=http://{web}/",
        f"--cluster.listen-address={cluster}",
        f"--cluster.advertise-address={cluster}",
        f"--cluster.peer={peer}",
        f"--cluster.peer-timeout={peer_timeout}",
        "--log.level=debug",
    ]


_HCL_RULE = re.compile(
    r'(node|service|agent|session)(_prefix)?\s+"([^"]*)"\s*\{\s*policy\s*=\s*"(\w+)"\s*\}'
)


def hcl_policy_rules(path: Path) -> Dict[str, Dict[str, str]]:
    """A Consul ACL policy file as the emulator's rules (`{"node_prefix": {"": "write"}}`).

    Reads the subset of HCL the shipped policies use, strictly: anything else left in the
    file after the rules and the comments are removed is an error, never silently ignored.
    """
    text = "\n".join(line.split("#", 1)[0] for line in path.read_text().splitlines())
    rules: Dict[str, Dict[str, str]] = {}
    for resource, prefix, name, level in _HCL_RULE.findall(text):
        rules.setdefault(resource + prefix, {})[name] = level
    leftover = _HCL_RULE.sub("", text).strip()
    if leftover:
        raise ValueError(f"{path}: not understood: {leftover[:80]!r}")
    return rules
