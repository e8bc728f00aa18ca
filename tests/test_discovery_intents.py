"""build_intents: the pure step from discovery findings and config to service intents."""

from __future__ import annotations

import socket
import subprocess
import sys
from dataclasses import replace

import pytest

from helpers.discovery import NODE, NOW, finding, run
from regagent.config.model import (
    CheckConfig,
    Config,
    DefaultsConfig,
    DiscoveryConfig,
    ExporterOverride,
    ServiceConfig,
    SyncConfig,
)
from regagent.discovery.identify import (
    LOOPBACK,
    NOT_EXPORTER,
    SPECIFIC,
    UNKNOWN_EXPORTER,
    DiscoveryResult,
    Finding,
)
from regagent.discovery.intents import build_intents
from regagent.discovery.listeners import Listener
from regagent.discovery.seen import SeenService
from regagent.model import (
    CRITICAL,
    PASSING,
    HealthProbe,
    ServiceIntent,
    ServiceRegistration,
    canonical_service,
)


def ids(intents: tuple[ServiceIntent, ...]) -> list[str]:
    return [i.service.id for i in intents]


def test_identified_wildcard_exporter() -> None:
    result = run(Config(), finding())
    (intent,) = result.intents
    service = intent.service
    assert (service.id, service.name, service.address, service.port) == (
        "node-exporter-9100",
        "node-exporter",
        NODE,
        9100,
    )
    assert service.tags == ("node_exporter",)
    assert dict(service.meta) == {
        "exporter": "node_exporter",
        "exporter_version": "1.5.0",
        "managed-by": "regagent",
        "metrics_path": "/metrics",
        "scheme": "http",
    }
    assert list(service.meta) == sorted(service.meta)  # canonical order
    assert intent.source == "discovery"
    assert intent.status == (PASSING, "node_exporter 1.5.0 serving /metrics on :9100")
    assert intent.probe == HealthProbe("http", "http://192.0.2.10:9100/metrics", 2.0)


def test_output_is_stable_across_cycles() -> None:
    first = run(Config(), finding()).intents
    later = run(Config(), finding(), now=NOW + 3600, previous=dict(run(Config(), finding()).seen))
    assert first == later.intents


def test_specific_address_is_registered_as_is() -> None:
    (intent,) = run(Config(), finding(kind=SPECIFIC, address="198.51.100.7")).intents
    assert intent.service.address == "198.51.100.7"
    assert intent.probe is not None and intent.probe.target == "http://198.51.100.7:9100/metrics"


def test_loopback_only_is_not_registered_but_reported() -> None:
    result = run(Config(), finding(kind=LOOPBACK))
    assert result.intents == ()
    (skipped,) = result.skipped
    assert "loopback only (127.0.0.1:9100)" in skipped.reason
    assert result.seen == {}


def test_non_exporters_are_ignored() -> None:
    assert run(Config(), finding(outcome=NOT_EXPORTER, exporter=None)).intents == ()


@pytest.mark.parametrize(
    ("register_unknown", "in_range", "registered"),
    [(False, True, False), (True, False, False), (True, True, True)],
)
def test_unknown_exporters_need_register_unknown_and_a_range(
    register_unknown: bool, in_range: bool, registered: bool
) -> None:
    config = Config(discovery=DiscoveryConfig(register_unknown=register_unknown))
    unknown = finding(
        port=9400, exporter="unknown", version=None, outcome=UNKNOWN_EXPORTER, in_range=in_range
    )
    result = run(config, unknown)
    assert ids(result.intents) == (["exporter-9400"] if registered else [])
    if registered:
        (intent,) = result.intents
        assert intent.service.tags == ()
        assert intent.service.meta["exporter_version"] == "unknown"
        assert intent.status == (PASSING, "unknown exporter serving /metrics on :9400")
    else:
        assert result.skipped[0].reason.startswith("unknown exporter")


def test_defaults_and_overrides_by_name_and_port() -> None:
    config = Config(
        defaults=DefaultsConfig(tags=("prod",), meta={"dc": "europe1", "exporter": "x"}),
        discovery=DiscoveryConfig(
            overrides=(
                ExporterOverride(exporter="node_exporter", tags=("host",), meta={"team": "ops"}),
                ExporterOverride(port=9100, name="node", meta={"team": "infra"}),
                ExporterOverride(exporter="node_exporter", port=9999, ignore=True),  # port differs
                ExporterOverride(meta={"managed-by": "someone-else"}),  # matches nothing
            )
        ),
    )
    (intent,) = run(config, finding()).intents
    service = intent.service
    assert (service.id, service.name) == ("node-9100", "node")
    assert service.tags == ("host", "node_exporter", "prod")
    assert service.meta["team"] == "infra"
    assert service.meta["dc"] == "europe1"
    assert service.meta["exporter"] == "node_exporter"  # discovered facts beat defaults
    assert service.meta["managed-by"] == "regagent"


def test_override_can_ignore_an_exporter() -> None:
    config = Config(
        discovery=DiscoveryConfig(overrides=(ExporterOverride(port=9100, ignore=True),))
    )
    result = run(config, finding(), finding(port=9104, exporter="mysqld_exporter"))
    assert ids(result.intents) == ["mysqld-exporter-9104"]
    assert result.skipped[0].reason == "ignored by discovery.overrides"


def test_override_meta_cannot_take_ownership_away() -> None:
    config = Config(
        discovery=DiscoveryConfig(
            overrides=(ExporterOverride(exporter="node_exporter", meta={"managed-by": "x"}),)
        )
    )
    (intent,) = run(config, finding()).intents
    assert intent.service.meta["managed-by"] == "regagent"


def test_static_services_ids_addresses_and_probes() -> None:
    config = Config(
        defaults=DefaultsConfig(tags=("prod",), meta={"dc": "eu"}),
        services=(
            ServiceConfig(name="app", port=8080, tags=("web",), meta={"owner": "me"}),
            ServiceConfig(
                name="db",
                port=9187,
                id="pg-main",
                address="198.51.100.9",
                scheme="https",
                check=CheckConfig(type="http", path="/healthz", timeout=3.0),
            ),
            ServiceConfig(name="queue", port=5672, check=CheckConfig(type="tcp")),
            ServiceConfig(name="batch", port=9999, check=CheckConfig(type="none")),
            ServiceConfig(name="v6", port=9100, address="2001:db8::1"),
        ),
    )
    result = build_intents(config, NODE, None, NOW)
    by_id = {i.service.id: i for i in result.intents}
    assert sorted(by_id) == ["app-8080", "batch-9999", "pg-main", "queue-5672", "v6-9100"]
    app = by_id["app-8080"]
    assert app.source == "static" and app.status is None
    assert (app.service.address, app.service.tags) == (NODE, ("prod", "web"))
    assert dict(app.service.meta) == {
        "dc": "eu",
        "managed-by": "regagent",
        "metrics_path": "/metrics",
        "owner": "me",
        "scheme": "http",
    }
    assert app.probe == HealthProbe("http", "http://192.0.2.10:8080/metrics", 2.0)
    assert by_id["pg-main"].probe == HealthProbe("http", "https://198.51.100.9:9187/healthz", 3.0)
    assert by_id["queue-5672"].probe == HealthProbe("tcp", "192.0.2.10:5672", 2.0)
    assert by_id["batch-9999"].probe is None
    assert by_id["v6-9100"].probe is not None
    assert by_id["v6-9100"].probe.target == "http://[2001:db8::1]:9100/metrics"


def test_static_service_wins_over_discovery_on_the_same_port() -> None:
    config = Config(services=(ServiceConfig(name="node", port=9100),))
    result = run(config, finding())
    assert ids(result.intents) == ["node-9100"]
    assert result.intents[0].source == "static"
    assert "static service node-9100" in result.skipped[0].reason


def test_duplicate_ids_keep_the_first_listener() -> None:
    one = finding(kind=SPECIFIC, address="198.51.100.1")
    two = replace(one, listeners=(Listener("198.51.100.2", 9100, socket.AF_INET, 5),))
    result = run(Config(), one, two)
    assert ids(result.intents) == ["node-exporter-9100"]
    assert "already taken" in result.skipped[0].reason


def seen_entry(first: float, last: float, port: int = 9100) -> SeenService:
    return SeenService(
        id=f"node-exporter-{port}",
        name="node-exporter",
        port=port,
        address=NODE,
        tags=("node_exporter",),
        meta={"exporter": "node_exporter", "managed-by": "regagent", "metrics_path": "/metrics"},
        first_seen=first,
        last_seen=last,
    )


def test_first_seen_is_kept_and_last_seen_advances() -> None:
    previous = {"node-exporter-9100": seen_entry(NOW - 7200, NOW - 30)}
    result = run(Config(), finding(), previous=previous)
    entry = result.seen["node-exporter-9100"]
    assert (entry.first_seen, entry.last_seen) == (NOW - 7200, NOW)


def test_vanished_exporter_stays_critical_until_deregister_after() -> None:
    config = Config(sync=SyncConfig(deregister_after=3600.0))
    previous = {"node-exporter-9100": seen_entry(NOW - 7200, NOW - 3600)}
    result = run(config, previous=previous)
    (intent,) = result.intents
    assert intent.status == (CRITICAL, "not listening on :9100 since 2027-01-15T07:00:00Z")
    assert intent.probe is None
    assert intent.service.tags == ("node_exporter",)
    assert result.seen == previous  # times do not move while it is gone
    expired = run(config, now=NOW + 1, previous=previous)
    assert expired.intents == ()
    assert expired.expired == ("node-exporter-9100",)
    assert expired.seen == {}


def test_vanished_but_port_still_listening_says_so() -> None:
    previous = {"node-exporter-9100": seen_entry(NOW - 100, NOW - 50)}
    other = finding(outcome=NOT_EXPORTER, exporter=None)
    (intent,) = run(Config(), other, previous=previous).intents
    assert intent.status == (CRITICAL, "not serving metrics on :9100 since 2027-01-15T07:59:10Z")


def test_ignore_override_drops_a_vanished_exporter() -> None:
    config = Config(
        discovery=DiscoveryConfig(
            overrides=(ExporterOverride(exporter="node_exporter", ignore=True),)
        )
    )
    previous = {"node-exporter-9100": seen_entry(NOW - 100, NOW - 50)}
    assert run(config, previous=previous).intents == ()


def test_incomplete_discovery_keeps_known_services_for_the_probe_to_judge() -> None:
    previous = {"node-exporter-9100": seen_entry(NOW - 100, NOW - 50)}
    result = build_intents(
        Config(), NODE, DiscoveryResult((), complete=False), NOW, previous=previous
    )
    (intent,) = result.intents
    assert intent.status is None
    assert intent.probe == HealthProbe("http", "http://192.0.2.10:9100/metrics", 2.0)
    assert result.seen == previous


def test_disabled_discovery_keeps_state_untouched() -> None:
    previous = {"node-exporter-9100": seen_entry(NOW - 100, NOW - 50)}
    result = build_intents(Config(), NODE, None, NOW, previous=previous)
    assert result.intents == ()
    assert result.seen == previous


def test_pure_same_inputs_same_outputs() -> None:
    config = Config(services=(ServiceConfig(name="app", port=8080),))
    findings = (finding(), finding(port=9104, exporter="mysqld_exporter", version=None))
    first = build_intents(config, NODE, DiscoveryResult(findings), NOW)
    second = build_intents(config, NODE, DiscoveryResult(findings), NOW)
    assert first == second


def test_rename_supersedes_the_old_registration_on_the_same_port() -> None:
    previous = {"node-exporter-9100": seen_entry(NOW - 100, NOW - 50)}
    config = Config(
        discovery=DiscoveryConfig(overrides=(ExporterOverride(port=9100, name="node"),))
    )
    result = run(config, finding(), previous=previous)
    assert ids(result.intents) == ["node-9100"]
    assert list(result.seen) == ["node-9100"]


def test_canonical_service_sorts_and_marks_ownership() -> None:
    raw = ServiceRegistration(
        "app-1",
        "app",
        1,
        "192.0.2.1",
        ("b", "a", "b"),
        {"z": "1", "managed-by": "puppet", "a": "2"},
    )
    service = canonical_service(raw)
    assert service.tags == ("a", "b")
    assert list(service.meta.items()) == [("a", "2"), ("managed-by", "regagent"), ("z", "1")]
    assert (service.id, service.name, service.port, service.address) == (
        "app-1",
        "app",
        1,
        "192.0.2.1",
    )
    assert canonical_service(service) == service


def test_static_meta_cannot_take_ownership_away() -> None:
    config = Config(services=(ServiceConfig(name="app", port=8080, meta={"managed-by": "x"}),))
    (intent,) = build_intents(config, NODE, None, NOW).intents
    assert intent.service == canonical_service(intent.service)
    assert intent.service.meta["managed-by"] == "regagent"


def test_discovery_feeds_the_engine_and_the_pure_module_does_not_import_it() -> None:
    import regagent.discovery.intents
    from regagent.discovery.service import Discovery

    assert not hasattr(regagent.discovery.intents, "Discovery")  # no shell in the pure module
    config = Config(
        discovery=DiscoveryConfig(enabled=False), services=(ServiceConfig(name="a", port=1),)
    )
    wanted, _ports = Discovery(config).intents(NODE, None, persist=False, now=NOW)
    assert ids(wanted.intents) == ["a-1"]
    probe = (
        "import sys, regagent.discovery.intents; print('regagent.discovery.service' in sys.modules)"
    )
    shown = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60
    )
    assert shown.stdout.strip() == "False"


def test_new_exporters_per_cycle_are_capped_in_port_order() -> None:
    config = Config(discovery=DiscoveryConfig(max_new_per_cycle=10))
    findings = [finding(port=9100 + i) for i in range(15)]

    first = run(config, *findings)

    assert ids(first.intents) == [f"node-exporter-{9100 + i}" for i in range(10)]
    held = [s for s in first.skipped if s.reason.startswith("held back")]
    assert [s.port for s in held] == list(range(9110, 9115))
    assert all(s.warn for s in held)
    assert set(first.seen) == set(ids(first.intents))  # the held back are not remembered
    second = run(config, *findings, now=NOW + 30, previous=dict(first.seen))
    assert len(second.intents) == 15  # known ones do not count against the cap
    assert not second.skipped


def test_known_exporters_never_count_against_the_cap() -> None:
    config = Config(discovery=DiscoveryConfig(max_new_per_cycle=1))
    known = run(Config(), *[finding(port=9100 + i) for i in range(5)]).seen

    result = run(config, *[finding(port=9100 + i) for i in range(7)], previous=dict(known))

    assert len(result.intents) == 6
    (held,) = result.skipped
    assert held.port == 9106


# -- how it was identified (issue 24) -------------------------------------------------------------


def test_meta_says_how_an_exporter_was_identified_and_a_new_program_gets_its_own_name() -> None:
    named = replace(finding(exporter="acme_app", version="2.3.4"), identified_by="build_info")
    (intent,) = run(Config(), named).intents
    assert (intent.service.id, intent.service.name) == ("acme-app-9100", "acme-app")
    assert intent.service.tags == ("acme_app",)
    assert intent.service.meta["identified_by"] == "build_info"
    assert intent.status == (PASSING, "acme_app 2.3.4 serving /metrics on :9100")
    config = Config(discovery=DiscoveryConfig(register_unknown=True))
    unknown = finding(exporter="unknown", outcome=UNKNOWN_EXPORTER, in_range=True)
    (generic,) = run(config, unknown).intents
    assert generic.service.id == "exporter-9100" and "identified_by" not in generic.service.meta


def by_process(port: int = 9001, problem: str = "timed out after 10s", **extra: object) -> Finding:
    """mongodb_exporter named by its process, its answer failed (`problem`) or names nothing."""
    return replace(
        finding(port=port, exporter="mongodb_exporter", version=None),
        identified_by="process",
        problem=problem,
        **extra,  # type: ignore[arg-type]
    )


def test_an_exporter_named_by_its_process_while_its_answer_fails_is_a_critical_target() -> None:
    first = run(Config(), by_process())
    (intent,) = first.intents
    assert intent.service.id == "mongodb-exporter-9001"
    assert intent.service.meta["identified_by"] == "process"
    assert intent.service.meta["exporter_version"] == "unknown"
    output = "mongodb_exporter on :9001: no metrics from /metrics (timed out after 10s)"
    assert intent.status == (CRITICAL, output)
    assert first.not_serving == ()  # new: nothing to hold, it shows at once
    later = run(Config(), by_process(), now=NOW + 30, previous=dict(first.seen))
    assert later.intents == first.intents
    assert later.not_serving == ("mongodb-exporter-9001",)  # known: flap-held like any probe
    assert later.seen["mongodb-exporter-9001"].last_seen == NOW + 30  # present, not vanished


def test_what_an_answer_said_stays_while_only_the_process_names_it() -> None:
    answered = replace(finding(port=9001, exporter="mongodb_exporter"), identified_by="build_info")
    answered = replace(answered, scheme="https", metrics_path="/m")
    before = run(Config(), answered)
    (passing,) = before.intents
    # its backend went down: the answer times out (over http, on the default path)
    (failing,) = run(Config(), by_process(), now=NOW + 30, previous=dict(before.seen)).intents
    assert failing.service == passing.service  # no write but the check's
    assert failing.status == (
        CRITICAL,
        "mongodb_exporter on :9001: no metrics from /m (timed out after 10s)",
    )
    # an answer that names nothing (an empty page) keeps the version too, and passes
    empty = by_process(problem="")
    (served,) = run(Config(), empty, now=NOW + 60, previous=dict(before.seen)).intents
    assert served.service.meta == passing.service.meta | {
        "scheme": "http",
        "metrics_path": "/metrics",
    }
    assert served.status == (PASSING, "mongodb_exporter 1.5.0 serving /metrics on :9001")
    # a new answer with a new version is news
    upgraded = replace(answered, version="1.6.0")
    (after,) = run(Config(), upgraded, now=NOW + 90, previous=dict(before.seen)).intents
    assert after.service.meta["exporter_version"] == "1.6.0"
