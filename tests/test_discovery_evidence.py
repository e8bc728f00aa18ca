"""The evidence that names an exporter, strongest first (issue 24, design decision 15): pure rules
over an answer, a process and the exporter table."""

from __future__ import annotations

from typing import Dict, Optional

import pytest

from regagent.discovery.evidence import (
    BUILD_INFO,
    FINGERPRINT,
    PORT,
    PROCESS,
    Naming,
    build_info_programs,
    by_answer,
    by_port,
    by_process,
    name_listener,
)
from regagent.discovery.exporters import load_exporter_table, parse_exporter_table
from regagent.discovery.probe import Exposition, parse_exposition, prometheus_content_type
from regagent.discovery.processes import ProcessInfo, system_uid_max

TABLE = load_exporter_table()
HELP = "A metric with a constant '1' value labeled by version, revision, branch and goversion"


def answer(body: str) -> Exposition:
    parsed = parse_exposition(body, allow_empty=True)
    assert parsed.valid, parsed.problem
    return parsed


def named(body: str, hints: tuple[str, ...] = ()) -> Optional[Naming]:
    return by_answer(answer(body), TABLE, [TABLE.by_name[h] for h in hints])[0]


def process(
    exe: str, uid: int, *, trusted: bool = True, system: Optional[bool] = None, name: str = ""
) -> ProcessInfo:
    """A process as describe_process would see it (`system`: uid <= 999 unless given)."""
    return ProcessInfo(
        pid=4242,
        name=name or exe.rsplit("/", 1)[-1][:15],
        exe=exe,
        cmdline=(exe,),
        user="someone",
        uid=uid,
        exe_trusted=trusted,
        system_user=uid <= 999 if system is None else system,
    )


MONGODB = "/usr/bin/prometheus-mongodb-exporter"

# -- rule 1: a build_info names its program ------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "exporter", "version"),
    [
        ('node_exporter_build_info{version="1.5.0"} 1\nnode_load1 0.1\n', "node_exporter", "1.5.0"),
        # a program the table does not know, called like an exporter, is named by itself
        ('acme_exporter_build_info{version="2.3.4"} 1\n', "acme_exporter", "2.3.4"),
        ('acme_prober_build_info{version="2.3.4"} 1\n', "acme_prober", "2.3.4"),
        # an older program name the table lists as a fingerprint
        ('pg_exporter_build_info{version="0.8.0"} 1\n', "postgres_exporter", "0.8.0"),
        # Debian's builds: an empty version is no version; a Debian revision is kept as served
        ('process_exporter_build_info{version=""} 1\n', "process_exporter", None),
        ('redis_exporter_build_info{version="1.45.0-2+b4"} 1\n', "redis_exporter", "1.45.0-2+b4"),
        # cloudwatch_exporter labels its version build_version
        (
            'cloudwatch_exporter_build_info{build_version="0.15.5",release_date="x"} 1\n',
            "cloudwatch_exporter",
            "0.15.5",
        ),
    ],
)
def test_a_build_info_names_its_program(body: str, exporter: str, version: Optional[str]) -> None:
    assert named(body) == Naming(exporter, BUILD_INFO, body.split("{", maxsplit=1)[0], version)


def test_an_off_table_program_not_called_an_exporter_needs_a_confirmation() -> None:
    # Any user can bind a free default port of the table and answer `vault_build_info`: a
    # name an ordinary service has is taken only when the port range or a trusted process
    # name confirms it.
    vault = 'vault_build_info{version="1.0"} 1\n'
    naming, why = name_listener(9290, answer(vault), None, TABLE)
    assert naming is None
    assert why.startswith("vault_build_info names vault, which the exporter table does not know")
    assert named(vault) is None
    expected = Naming("vault", BUILD_INFO, "vault_build_info", "1.0")
    assert name_listener(9290, answer(vault), None, TABLE, in_port_range=True)[0] == expected
    # a process root started as `vault`, or a root-owned executable called so, confirms it
    assert name_listener(9290, answer(vault), process("/usr/bin/vault", 0), TABLE)[0] == expected
    users = process("/usr/bin/vault", 4242)  # root's executable, run by a user
    assert name_listener(9290, answer(vault), users, TABLE)[0] == expected
    # a user's own executable, or a name the user gave (argv[0], comm), confirms nothing
    own = process("/home/u/vault", 4242, trusted=False)
    assert name_listener(9290, answer(vault), own, TABLE)[0] is None
    renamed = process("/usr/bin/python3", 4242, name="vault")
    assert name_listener(9290, answer(vault), renamed, TABLE)[0] is None


def test_an_unprefixed_build_info_is_named_by_its_help_text_only() -> None:
    body = (
        f"# HELP build_info {HELP} from which exporter_exporter was built.\n"
        "# TYPE build_info gauge\n"
        'build_info{branch="debian/sid",version="0.4.0"} 1\n'
        "go_goroutines 6\n"
    )
    assert named(body) == Naming(
        "exporter_exporter", BUILD_INFO, "build_info whose HELP names exporter_exporter", "0.4.0"
    )
    assert named('build_info{version="0.4.0"} 1\n') is None  # the bare name says nothing
    assert named(f'# HELP build_info {HELP}\nbuild_info{{version="1"}} 1\n') is None
    odd = f'# HELP build_info {HELP} from which Evil/Name was built.\nbuild_info{{version="1"}} 1\n'
    assert named(odd) is None
    # exporter_exporter's fingerprint never matches the bare name either
    assert TABLE.match_fingerprint({"build_info", "build_info_total"}) is None


def test_go_build_info_and_the_monitored_things_versions_are_not_the_exporters() -> None:
    assert named('go_build_info{path="x",version="(devel)"} 1\ngo_goroutines 1\n') is None
    varnish = named('varnish_version{version="7.1.1"} 1\nvarnish_up 0\n')
    assert varnish == Naming("varnish_exporter", FINGERPRINT, "varnish_", None)
    node = named('node_exporter_build_info{version="1.5.0"} 1\nnode_os_version{id="d"} 12\n')
    assert node is not None and node.version == "1.5.0"


@pytest.mark.parametrize(
    "metric",
    [
        "Acme_build_info",  # a service name is lowercase
        "regagent_build_info",  # regagent's own endpoint's name
        "a__b_build_info",
        "x_" * 40 + "build_info",  # more than one DNS label
        "_build_info",
    ],
)
def test_a_build_info_that_cannot_be_a_service_name_names_nothing(metric: str) -> None:
    assert named(f'{metric}{{version="1"}} 1\n') is None


def test_several_programs_build_info_need_the_port_or_process_to_pick_one() -> None:
    pushed = (
        'pushgateway_build_info{version="1.5.1"} 1\n'
        'node_exporter_build_info{version="1.5.0",job="pushed"} 1\n'
    )
    assert sorted(build_info_programs(answer(pushed))) == ["node_exporter", "pushgateway"]
    naming, why = by_answer(answer(pushed), TABLE)
    assert naming is None
    assert why.startswith("build_info of several programs (node_exporter, pushgateway)")
    assert named(pushed, ("pushgateway",)) == Naming(
        "pushgateway", BUILD_INFO, "pushgateway_build_info", "1.5.1"
    )
    # on pushgateway's default port, name_listener takes the port's hint by itself
    assert name_listener(9091, answer(pushed), None, TABLE)[0] == named(pushed, ("pushgateway",))


# -- rule 2: the table's fingerprints --------------------------------------------------------


@pytest.mark.parametrize(
    ("names", "exporter", "version"),
    [
        ("ipmi_up 0\nipmi_scrape_duration_seconds 0.1\n", "ipmi_exporter", None),
        ("libvirt_up 0\n", "libvirt_exporter", None),
        (
            'nextcloud_exporter_info{version="0.6.2"} 1\nnextcloud_up 0\n',
            "nextcloud_exporter",
            "0.6.2",
        ),
    ],
)
def test_a_fingerprint_names_an_exporter_without_build_info(
    names: str, exporter: str, version: Optional[str]
) -> None:
    naming = named(names)
    assert naming is not None
    assert (naming.exporter, naming.identified_by, naming.version) == (
        exporter,
        FINGERPRINT,
        version,
    )


# -- rule 3: the process ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("info", "exporter"),
    [
        (process(MONGODB, 102), "mongodb_exporter"),  # Debian's unit: User=prometheus
        (process(MONGODB, 0, trusted=False), "mongodb_exporter"),  # root's choice of name
        # Debian's naming names an exporter the table does not know
        (process("/usr/bin/prometheus-foo-bar-exporter", 104), "foo_bar_exporter"),
        (process("/opt/smokeping/smokeping_prober", 0), "smokeping_prober"),
        (process("/usr/bin/prometheus-exporter-exporter", 102), "exporter_exporter"),
        # a regular user running the root-owned executable: a candidate, not vouched for
        (process(MONGODB, 1000), None),
        (process(MONGODB, 65534), None),  # nobody is not a system account
        # a system account running an executable it could have written: nothing
        (process("/home/svc/prometheus-mongodb-exporter", 102, trusted=False), None),
        # an unknown uid (not permitted to look) is not a system account
        (process(MONGODB, 102, system=False), None),
        (process("/usr/bin/python3", 0), None),
    ],
)
def test_a_process_names_only_a_known_exporter_only_root_could_start(
    info: ProcessInfo, exporter: Optional[str]
) -> None:
    naming = by_process(info, TABLE)
    assert (naming.exporter if naming else None) == exporter
    if naming is not None:
        assert naming.identified_by == PROCESS


def test_names_a_user_gives_a_process_are_never_vouched_for() -> None:
    # comm and argv[0] say node_exporter; the executable is root's python3; uid is a user's
    claimed = ProcessInfo(
        7, "node_exporter", "/usr/bin/python3", ("node_exporter",), "u", 1000, True, False
    )
    assert by_process(claimed, TABLE) is None
    # the same names from root count
    assert by_process(ProcessInfo(7, "node_exporter", "/usr/bin/python3", uid=0), TABLE)


# -- rule 4: the port ------------------------------------------------------------------------


def test_a_port_names_only_an_answer_with_nothing_of_its_own_for_an_entry_that_says_so() -> None:
    empty = answer("")
    runtime = answer(
        "go_goroutines 6\nprocess_open_fds 9\npromhttp_metric_handler_requests_total 1\n"
    )
    assert by_port(9324, empty, TABLE) == Naming(
        "bird_exporter", PORT, "default port of bird_exporter, serving an empty page"
    )
    naming = by_port(9233, runtime, TABLE)
    assert naming is not None and naming.exporter == "tplink_plug_exporter"
    assert by_port(9233, answer("mgmt_graph_start 1\ngo_goroutines 6\n"), TABLE) is None
    assert by_port(9324, None, TABLE) is None  # no valid answer: the port says nothing
    assert by_port(9100, empty, TABLE) is None  # node_exporter always serves its own
    shared = parse_exporter_table(
        "exporters:\n"
        "  - {name: a_exporter, port: 9999, fingerprint: [a_], identify_by_port: true}\n"
        "  - {name: b_exporter, port: 9999, fingerprint: [b_]}\n"
    )
    assert by_port(9999, empty, shared) is None  # two entries on one port: neither


# -- the order -------------------------------------------------------------------------------


def test_the_strongest_evidence_wins() -> None:
    own = answer('acme_exporter_build_info{version="1"} 1\n')
    vouched = process(MONGODB, 102)
    assert name_listener(9001, own, vouched, TABLE)[0] == Naming(
        "acme_exporter", BUILD_INFO, "acme_exporter_build_info", "1"
    )
    # a build_info that names nothing by itself leaves the process to name it
    unconfirmed = answer('acme_build_info{version="1"} 1\n')
    assert name_listener(9001, unconfirmed, vouched, TABLE)[0] == by_process(vouched, TABLE)
    bird = process("/usr/bin/prometheus-bird-exporter", 104)
    assert name_listener(9324, answer(""), bird, TABLE)[0] == by_process(bird, TABLE)
    assert name_listener(9324, answer(""), None, TABLE)[0] == by_port(9324, answer(""), TABLE)
    assert name_listener(9001, None, vouched, TABLE)[0] == by_process(vouched, TABLE)
    assert name_listener(9001, None, None, TABLE) == (None, "")


# -- the pieces ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("UID_MIN 1000\nUID_MAX 60000\n#SYS_UID_MAX 999\n", 999),
        ("UID_MIN\t\t\t 500\n", 499),
        ("SYS_UID_MAX 200\nUID_MIN 1000\n", 200),
        ("", 999),
    ],
)
def test_system_accounts_follow_login_defs(text: str, expected: int) -> None:
    assert system_uid_max(text) == expected


@pytest.mark.parametrize(
    ("binary", "exporter"),
    [
        ("prometheus-node-exporter", "node_exporter"),  # the table's
        ("prometheus-tplink-plug-exporter", "tplink_plug_exporter"),
        ("prometheus-smokeping-prober", "smokeping_prober"),
        ("ha_cluster_exporter", "ha_cluster_exporter"),
        ("prometheus-foo-exporter", "foo_exporter"),  # by Debian's naming
        ("acme-exporter", "acme_exporter"),
        ("python3", None),
        ("exporter", None),
        ("prometheus", "prometheus"),  # the table's: Prometheus serves its own metrics
        ("Foo_exporter", None),
    ],
)
def test_executable_names_of_exporters(binary: str, exporter: Optional[str]) -> None:
    spec = TABLE.exporter_for_binary(binary)
    assert (spec.name if spec else None) == exporter


@pytest.mark.parametrize(
    ("content_type", "prometheus"),
    [
        ("text/plain; version=0.0.4; charset=utf-8", True),
        ("application/openmetrics-text; version=1.0.0; charset=utf-8", True),
        ("text/plain", False),
        ("text/plain; version=1.0.0", False),
        ("", False),
        ("text/html", False),
    ],
)
def test_only_a_prometheus_content_type_makes_an_empty_page_metrics(
    content_type: str, prometheus: bool
) -> None:
    assert prometheus_content_type(content_type) is prometheus


def test_the_parser_keeps_build_info_helps_and_info_labels() -> None:
    parsed = parse_exposition(
        f"# HELP build_info {HELP} from which x was built.\n"
        'build_info{version="1"} 1\n'
        'node_uname_info{release="6.1"} 1\n'
        'node_uname_info{release="other"} 1\n'
        "odd_info{not labels} 1\n"
    )
    assert parsed.valid and parsed.samples == 4
    assert parsed.helps == {"build_info": f"{HELP} from which x was built."}
    expected: Dict[str, Dict[str, str]] = {"node_uname_info": {"release": "6.1"}, "odd_info": {}}
    assert parsed.info == expected
    assert not parse_exposition("").valid  # without the content type's word, empty is nothing
