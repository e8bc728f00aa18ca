"""deploy/ validated by the real tools, the way CI must check what operators copy.

Debian 12's Prometheus 2.42 and promtool are built without Consul discovery, so the scrape part
goes through `vmagent -promscrape.config.dryRun` (its own strict parser of the same format) and
the rest through `promtool check config` on a copy without the consul_sd_configs blocks.
The properties the design relies on (replicas differ only in one label, every critical alert
escalates, dedup interval = scrape interval) are checked here too, so a drift fails CI.
"""

from __future__ import annotations

import ipaddress
import os
import re
import shutil
import subprocess
import urllib.parse
from pathlib import Path
from typing import List, Optional

import pytest

from deploy_stack import (
    ALERTMANAGER,
    ALERTMANAGER_DEFAULTS,
    AMTOOL,
    DEPLOY,
    DOT,
    NGINX,
    NGINX_BIN,
    PROMETHEUS_CONFIGS,
    PROMTOOL,
    RULE_TESTS,
    RULES,
    VICTORIA_DEFAULT,
    alert_rules,
    alertmanager_command,
    credentials_files,
    default_flags,
    dump_yaml,
    duration_seconds,
    flag_value,
    load_yaml,
    nginx_command,
    nginx_main,
    nginx_test_config,
    rewrite_credentials,
    scrape_part_for_vmagent,
    without_consul_sd,
)
from helpers.vmagent import VMAGENT

UNSHARE = shutil.which("unshare")
needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason="promtool (Debian prometheus) missing")


def run(args: List[str], cwd: Optional[Path] = None) -> subprocess.CompletedProcess[str]:
    """Run a checker; the test asserts on its exit code and shows its output on failure."""
    return subprocess.run(
        args,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=cwd,
        stdin=subprocess.DEVNULL,
    )


@pytest.fixture(params=PROMETHEUS_CONFIGS, ids=lambda p: p.name)
def prometheus_config(request: pytest.FixtureRequest) -> Path:
    path: Path = request.param
    return path


def test_replicas_differ_only_in_the_replica_label() -> None:
    first, second = (load_yaml(path) for path in PROMETHEUS_CONFIGS)
    labels = [c["global"]["external_labels"]["replica"] for c in (first, second)]
    assert labels[0] != labels[1]
    second["global"]["external_labels"]["replica"] = labels[0]
    assert first == second
    # ... and that label is what both strip before alerting and before writing to the store.
    for config in (first, second):
        strip = {"action": "labeldrop", "regex": "replica"}
        assert strip in config["alerting"]["alert_relabel_configs"]
        for target in config["remote_write"]:
            assert strip in target["write_relabel_configs"]


def test_discovery_asks_every_server_stale_and_throttled(prometheus_config: Path) -> None:
    jobs = {job["job_name"]: job for job in load_yaml(prometheus_config)["scrape_configs"]}
    blocks = jobs["consul-services"]["consul_sd_configs"]
    assert len({block["server"] for block in blocks}) == 3
    for block in blocks:
        assert block["allow_stale"] is True
        assert duration_seconds(block["refresh_interval"]) >= 30
    # the same three servers are scraped directly, not through the catalog they serve
    targets = jobs["consul-server"]["static_configs"][0]["targets"]
    assert sorted(targets) == sorted(block["server"] for block in blocks)


def test_store_dedup_interval_is_the_scrape_interval(prometheus_config: Path) -> None:
    interval = load_yaml(prometheus_config)["global"]["scrape_interval"]
    dedup = flag_value(VICTORIA_DEFAULT, "dedup.minScrapeInterval")
    assert duration_seconds(dedup) == duration_seconds(interval)


@pytest.mark.skipif(VMAGENT is None, reason="vmagent (Debian victoria-metrics) missing")
def test_scrape_configs_pass_vmagent_dry_run(prometheus_config: Path, tmp_path: Path) -> None:
    assert VMAGENT is not None
    scrape = dump_yaml(scrape_part_for_vmagent(load_yaml(prometheus_config)), tmp_path / "s.yml")
    checked = run([VMAGENT, f"-promscrape.config={scrape}", "-promscrape.config.dryRun"])
    assert checked.returncode == 0, checked.stderr
    # the dry run does catch mistakes (strict parsing): a misspelt key fails it
    broken = load_yaml(scrape)
    broken["scrape_configs"][0]["consul_sd_configs"][0]["allow_stael"] = True
    dump_yaml(broken, scrape)
    failed = run([VMAGENT, f"-promscrape.config={scrape}", "-promscrape.config.dryRun"])
    assert failed.returncode != 0
    assert "allow_stael" in failed.stderr + failed.stdout


@needs_promtool
def test_rest_of_prometheus_config_passes_promtool(prometheus_config: Path, tmp_path: Path) -> None:
    assert PROMTOOL is not None
    shipped = load_yaml(prometheus_config)
    assert credentials_files(shipped), "the token files are part of what is checked"
    token = tmp_path / "consul.token"
    token.write_text("00000000-0000-0000-0000-000000000000\n")
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / RULES.name).write_text(RULES.read_text())
    stripped = dump_yaml(without_consul_sd(shipped), tmp_path / "prometheus.yml")
    stripped.write_text(rewrite_credentials(stripped.read_text(), shipped, token))
    checked = run([PROMTOOL, "check", "config", str(stripped)])
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "1 rule files found" in checked.stdout


@needs_promtool
def test_rules_pass_promtool_check() -> None:
    assert PROMTOOL is not None
    checked = run([PROMTOOL, "check", "rules", str(RULES)])
    assert checked.returncode == 0, checked.stdout + checked.stderr


@needs_promtool
def test_rule_unit_tests_pass_and_cover_every_alert() -> None:
    assert PROMTOOL is not None
    checked = run([PROMTOOL, "test", "rules", RULE_TESTS.name], cwd=RULE_TESTS.parent)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    tested = set()
    for case in load_yaml(RULE_TESTS)["tests"]:
        for check in case.get("alert_rule_test", []):
            for alert in check["exp_alerts"]:
                labels = alert["exp_labels"]
                tested.add((check["alertname"], labels.get("escalate", "")))
    rules = {(rule["alert"], rule.get("labels", {}).get("escalate", "")) for rule in alert_rules()}
    assert rules - tested == set(), "alert rules without a firing unit test"


def test_every_critical_alert_escalates_with_the_same_expression() -> None:
    rules = alert_rules()
    escalations = [r for r in rules if r.get("labels", {}).get("escalate") == "true"]
    base = {r["alert"]: r for r in rules if "escalate" not in r.get("labels", {})}
    critical = {name for name, r in base.items() if r["labels"]["severity"] == "critical"}
    assert {r["alert"] for r in escalations} == critical
    for escalated in escalations:
        original = base[escalated["alert"]]
        assert escalated["expr"] == original["expr"]
        assert escalated["labels"]["severity"] == "critical"
        assert duration_seconds(escalated["for"]) > duration_seconds(original["for"])
    # the trap the rules file warns about: an alias would be read as a metric name
    assert not any(line.lstrip().startswith("expr: *") for line in RULES.read_text().splitlines())


@pytest.mark.skipif(AMTOOL is None, reason="amtool (Debian prometheus-alertmanager) missing")
def test_alertmanager_config_passes_amtool_and_routes_by_severity() -> None:
    assert AMTOOL is not None
    checked = run([AMTOOL, "check-config", str(ALERTMANAGER)])
    assert checked.returncode == 0, checked.stdout + checked.stderr
    routes = {
        "oncall": ["severity=critical", "alertname=HostDown"],
        "escalation": ["severity=critical", "escalate=true", "alertname=HostDown"],
        "ops-chat": ["severity=warning", "alertname=TargetDown"],
    }
    for receiver, labels in routes.items():
        routed = run(
            [
                AMTOOL,
                "config",
                "routes",
                "test",
                f"--config.file={ALERTMANAGER}",
                f"--verify.receivers={receiver}",
                *labels,
            ]
        )
        assert routed.returncode == 0, (receiver, routed.stdout, routed.stderr)
    # every receiver posts to the nginx of deploy/nginx on the same host
    listen = next(
        line.split()[1].rstrip(";")
        for line in NGINX.read_text().splitlines()
        if line.strip().startswith("listen ")
    )
    for receiver in load_yaml(ALERTMANAGER)["receivers"]:
        for hook in receiver["webhook_configs"]:
            assert hook["url"].startswith(f"http://{listen}/"), hook


def test_alertmanager_members_peer_each_other_and_the_tests_run_their_flags(
    tmp_path: Path,
) -> None:
    first, second = (default_flags(path) for path in ALERTMANAGER_DEFAULTS)
    assert first.keys() == second.keys()
    hosts = [urllib.parse.urlsplit(f["web.external-url"]).hostname for f in (first, second)]
    assert first["cluster.peer"] == f"{hosts[1]}:9094"
    assert second["cluster.peer"] == f"{hosts[0]}:9094"
    assert first["cluster.listen-address"].endswith(":9094")
    # the end-to-end tests start each member with these same flags (test values, and debug logs)
    command = alertmanager_command(
        "alertmanager",
        tmp_path / "am.yml",
        tmp_path,
        web="127.0.0.1:1",
        cluster="127.0.0.1:2",
        peer="127.0.0.1:3",
        peer_timeout="2s",
    )
    used = {arg[2:].split("=", 1)[0] for arg in command[1:]}
    assert used - {"log.level"} == set(first)


@pytest.mark.skipif(NGINX_BIN is None, reason="nginx missing")
def test_nginx_config_passes_nginx_t(tmp_path: Path) -> None:
    main = nginx_test_config(tmp_path / "nginx", ("127.0.0.1:9", "127.0.0.1:10"), "127.0.0.1:8080")
    checked = run(nginx_command(main, "-t"))
    assert checked.returncode == 0, checked.stderr
    assert "test is successful" in checked.stderr
    # the failover settings are what the README promises
    text = NGINX.read_text()
    assert text.count("max_fails=1 fail_timeout=30s;") == 2
    next_upstream = next(
        line for line in text.splitlines() if line.strip().startswith("proxy_next_upstream ")
    )
    assert "non_idempotent" in next_upstream and "error" in next_upstream


def private_namespaces() -> bool:
    """True where this process may make a mount and a network namespace of its own (root)."""
    if UNSHARE is None or os.geteuid() != 0:
        return False
    probe = run([UNSHARE, "--mount", "--net", "true"])
    return probe.returncode == 0


@pytest.mark.skipif(NGINX_BIN is None, reason="nginx missing")
@pytest.mark.skipif(
    not private_namespaces(),
    reason="needs root and unshare (util-linux) for a private mount and network namespace",
)
def test_shipped_nginx_file_passes_nginx_t_unchanged(tmp_path: Path) -> None:
    """`nginx -t` on deploy/nginx/alert-relays.conf as shipped, included from where it lies.

    nginx resolves an upstream's host names once, at start, and one that does not resolve
    stops nginx from starting: the whole alert path. The check runs in a network namespace of
    its own, with no network and so no DNS, where any name would fail; and in a mount namespace
    whose fresh /var/log takes the shipped log files, so the host's /var/log/nginx is untouched.
    """
    main = nginx_main(tmp_path, NGINX)
    checked = run(
        [
            str(UNSHARE),
            "--mount",
            "--net",
            "--",
            "sh",
            "-c",
            'mount -t tmpfs tmpfs /var/log && mkdir /var/log/nginx && exec "$@"',
            "nginx-t",
            *nginx_command(main, "-t"),
        ]
    )
    assert checked.returncode == 0, checked.stderr
    assert "test is successful" in checked.stderr
    # and the reason it passes: every relay is an address (a placeholder to replace)
    servers = re.findall(r"^\s*server\s+(\S+):\d+\s", NGINX.read_text(), re.MULTILINE)
    assert len(servers) == 2
    for host in servers:
        assert ipaddress.ip_address(host) in ipaddress.ip_network("192.0.2.0/24"), host


def nginx_directive(name: str) -> str:
    """The value of a directive that occurs once in the shipped nginx file."""
    values = re.findall(rf"^\s*{re.escape(name)}\s+([^;]+);", NGINX.read_text(), re.MULTILINE)
    assert len(values) == 1, (name, values)
    return str(values[0])


def test_nginx_gives_up_before_the_second_alertmanager_stops_waiting() -> None:
    """nginx's timeouts for one notification, all tries together, fit in --cluster.peer-timeout.

    The second Alertmanager sends unless the first one's notification is in the gossiped log
    when its peer timeout is over, and the first logs it only once nginx has answered: a
    notification still being tried through nginx then would be sent by both members.
    """
    per_try = sum(
        duration_seconds(nginx_directive(f"proxy_{kind}_timeout"))
        for kind in ("connect", "send", "read")
    )
    tries = int(nginx_directive("proxy_next_upstream_tries"))
    all_tries = duration_seconds(nginx_directive("proxy_next_upstream_timeout"))
    for path in ALERTMANAGER_DEFAULTS:
        peer_timeout = duration_seconds(flag_value(path, "cluster.peer-timeout"))
        assert tries * per_try < peer_timeout, (path, tries, per_try)
        assert all_tries < peer_timeout, path


@pytest.mark.skipif(DOT is None, reason="graphviz (dot) missing")
def test_architecture_diagram_renders(tmp_path: Path) -> None:
    assert DOT is not None
    out = tmp_path / "architecture.svg"
    rendered = run([DOT, "-Tsvg", str(DEPLOY / "architecture.dot"), "-o", str(out)])
    assert rendered.returncode == 0, rendered.stderr
    assert "<svg" in out.read_text()
