"""Configuration: loading and merging conf.d, typed validation, durations, the effective view.

These call the config package in-process; tests/test_cli.py runs the same paths through the
real command, including the corpus of bad configurations.
"""

from __future__ import annotations

import io
import json
import math
from pathlib import Path
from typing import Dict, Iterator, List, Union

import pytest
import structlog

from regagent.config import Config, load_config, parse_duration
from regagent.config.load import load_documents
from regagent.config.model import ConsulConfig, ServiceConfig
from regagent.config.show import MASK, effective_config
from regagent.config.token import load_token
from regagent.config.validate import service_id, validate
from regagent.errors import ConfigError
from regagent.logs import configure_logging
from regagent.rules import meta_problems


def write_files(directory: Path, files: Dict[str, str]) -> Path:
    """Writes {name: YAML text} into `directory` and returns it."""
    directory.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (directory / name).write_text(text, encoding="utf-8")
    return directory


def problems_of(path: Path) -> List[str]:
    with pytest.raises(ConfigError) as raised:
        load_config(str(path))
    return raised.value.problems


@pytest.fixture
def conf_d(tmp_path: Path) -> Path:
    """A conf.d in the shape packages install: a base file, then site files overriding it."""
    return write_files(
        tmp_path / "conf.d",
        {
            "00-regagent.yaml": """
consul:
  servers: ["10.0.0.1:8500", "10.0.0.2:8500", "10.0.0.3:8500"]
  tls: {verify: false, ca_file: /etc/ca.pem}
  read_timeout: 5s
node:
  meta: {dc: europe1}
services:
  - {name: billing-api, port: 8080}
defaults:
  tags: [base]
""",
            "10-site.yaml": """
consul:
  servers: ["10.9.0.1:8500"]
  tls: {verify: true}
node:
  meta: {rack: r12}
services:
  - {name: orders-api, port: 8081}
""",
            "20-mysql.yaml": """
services:
  - {name: mysql, port: 9104, tags: [db]}
defaults:
  tags: [mysql-host]
""",
            # Not configuration: must be ignored, even though it would not even parse.
            "README": "[this is : not yaml",
            "30-disabled.yaml.bak": "consul: {servers: []}",
            "40-editor-backup.yaml~": "consul: {servers: []}",
        },
    )


# -- merging ------------------------------------------------------------------------------------


def test_mappings_merge_deeply_and_later_files_win(conf_d: Path) -> None:
    config = load_config(str(conf_d))

    assert config.consul.tls.verify is True  # 10-site.yaml wins
    assert config.consul.tls.ca_file == "/etc/ca.pem"  # kept from 00-regagent.yaml
    assert config.consul.read_timeout == 5.0
    assert config.node.meta == {"dc": "europe1", "rack": "r12"}


def test_services_concatenate_in_file_name_order(conf_d: Path) -> None:
    config = load_config(str(conf_d))

    assert [s.name for s in config.services] == ["billing-api", "orders-api", "mysql"]


def test_other_lists_are_replaced_not_concatenated(conf_d: Path) -> None:
    config = load_config(str(conf_d))

    assert config.consul.servers == ("10.9.0.1:8500",)
    assert config.defaults.tags == ("mysql-host",)


def test_file_names_sort_as_text_not_as_numbers(tmp_path: Path) -> None:
    directory = write_files(
        tmp_path,
        {"9-last.yaml": "node: {name: nine}\n", "10-first.yaml": "node: {name: ten}\n"},
    )

    assert load_config(str(directory)).node.name == "nine"


def test_only_yaml_files_are_read(conf_d: Path) -> None:
    doc = load_documents(str(conf_d))

    assert [Path(f).name for f in doc.files] == [
        "00-regagent.yaml",
        "10-site.yaml",
        "20-mysql.yaml",
    ]


def test_section_left_empty_in_later_file_keeps_earlier_values(tmp_path: Path) -> None:
    # Every line under `consul:` commented out reads as null; it used to reset the section.
    directory = write_files(
        tmp_path,
        {
            "00-base.yaml": "consul: {servers: ['10.0.0.1:8500']}\nservices: [{name: a, port: 1}]",
            "10-site.yaml": "consul:\n  # servers: ['10.9.9.9:8500']\nservices:\n  # - name: b\n",
        },
    )

    config = load_config(str(directory))

    assert config.consul.servers == ("10.0.0.1:8500",)
    assert [s.name for s in config.services] == ["a"]


def test_empty_list_items_read_as_empty(tmp_path: Path) -> None:
    config = load_config(str(write_files(tmp_path, {"a.yaml": "defaults:\n  tags:\n"})))

    assert config.defaults.tags == ()


def test_single_file_path(tmp_path: Path) -> None:
    path = tmp_path / "regagent.yml"
    path.write_text("node: {name: web01}\n")

    assert load_config(str(path)).node.name == "web01"


@pytest.mark.parametrize("content", ["", "# only a comment\n", "---\n"])
def test_empty_file_gives_defaults(content: str, tmp_path: Path) -> None:
    path = tmp_path / "regagent.yaml"
    path.write_text(content)

    assert load_config(str(path)) == Config()


def test_built_in_defaults() -> None:
    config = Config()

    assert config.consul.servers == ("127.0.0.1:8500",)
    assert config.consul.mode == "catalog"
    assert config.sync.deregister_after == 72 * 3600
    assert config.sync.deregister_on_shutdown is False
    assert config.node.address == "auto"
    assert config.log.format == "auto"


def test_problem_names_the_file_that_set_the_value(conf_d: Path) -> None:
    (conf_d / "50-typo.yaml").write_text("services:\n  - {name: redis, port: 70000}\n")

    problems = problems_of(conf_d)

    assert problems == [
        f"{conf_d}/50-typo.yaml: services[3].port: 70000 is not a valid port (1-65535)"
    ]


def test_too_many_meta_pairs_names_the_file_that_went_over(tmp_path: Path) -> None:
    first = "\n".join(f"    a{i}: x" for i in range(60))
    second = "\n".join(f"    b{i}: x" for i in range(10))
    directory = write_files(
        tmp_path,
        {"10-a.yaml": f"node:\n  meta:\n{first}\n", "20-b.yaml": f"node:\n  meta:\n{second}\n"},
    )

    assert problems_of(directory) == [
        f"{directory}/20-b.yaml: node.meta: has 70 pairs; Consul allows at most 64"
    ]


# -- validation details not covered by the corpus ----------------------------------------------


def test_all_problems_are_collected_across_files(tmp_path: Path) -> None:
    directory = write_files(
        tmp_path,
        {"10-a.yaml": "sync: {interval: soon}\n", "20-b.yaml": "consul: {mode: foo}\n"},
    )

    assert problems_of(directory) == [
        f"{directory}/10-a.yaml: sync.interval: 'soon' is not a duration (use e.g. 30s, 5m, 72h)",
        f"{directory}/20-b.yaml: consul.mode: 'foo' is not one of: catalog, agent",
    ]


def test_malformed_files_are_all_reported(tmp_path: Path) -> None:
    directory = write_files(tmp_path, {"10-a.yaml": "a: [\n", "20-b.yaml": "- list\n"})

    problems = problems_of(directory)

    assert len(problems) == 2
    assert problems[0].startswith(f"{directory}/10-a.yaml: line 2, column 1: malformed YAML")
    assert problems[1] == f"{directory}/20-b.yaml: top level must be a mapping, got a list"


def test_explicit_id_may_reuse_a_name_port_pair(tmp_path: Path) -> None:
    directory = write_files(
        tmp_path,
        {"a.yaml": "services:\n  - {name: a, port: 1}\n  - {name: a, port: 1, id: a-second}\n"},
    )

    ids = [s.id for s in load_config(str(directory)).services]

    assert ids == [None, "a-second"]


def test_explicit_id_clashing_with_derived_id(tmp_path: Path) -> None:
    directory = write_files(
        tmp_path, {"a.yaml": "services:\n  - {name: a, port: 1}\n  - {name: b, port: 2, id: a-1}\n"}
    )

    assert problems_of(directory) == [
        f"{directory}/a.yaml: services[1].id: duplicate service ID 'a-1' (also services[0])"
    ]


def test_invalid_service_does_not_cause_a_spurious_duplicate(tmp_path: Path) -> None:
    # Two services missing their port must not both become `<name>-0` and clash.
    directory = write_files(tmp_path, {"a.yaml": "services: [{name: a}, {name: a}]\n"})

    assert problems_of(directory) == [
        f"{directory}/a.yaml: services[0].port: is required",
        f"{directory}/a.yaml: services[1].port: is required",
    ]


def test_meta_values_are_text(tmp_path: Path) -> None:
    directory = write_files(
        tmp_path, {"a.yaml": "defaults: {meta: {version: 1.5, prod: true, replicas: 3}}\n"}
    )

    meta = load_config(str(directory)).defaults.meta

    assert meta == {"version": "1.5", "prod": "true", "replicas": "3"}


def test_meta_rules_accept_what_consul_accepts() -> None:
    meta = {"a" * 128: "v" * 512, "team_name": "x", "env-1": "prod", "consulx": "y"}

    assert meta_problems(meta) == []
    assert meta_problems({f"k{i}": "v" for i in range(64)}) == []


@pytest.mark.parametrize(
    "server", ["10.0.0.1:8500", "consul.example.com:8501", "[::1]:8500", "[fd00::3]:443"]
)
def test_valid_server_addresses(server: str, tmp_path: Path) -> None:
    directory = write_files(tmp_path, {"a.yaml": f"consul: {{servers: ['{server}']}}\n"})

    assert load_config(str(directory)).consul.servers == (server,)


def test_validate_accepts_merged_document_directly(conf_d: Path) -> None:
    assert validate(load_documents(str(conf_d))) == load_config(str(conf_d))


# -- durations ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("30s", 30.0),
        ("5m", 300.0),
        ("72h", 259200.0),
        ("1d", 86400.0),
        ("250ms", 0.25),
        ("1.5h", 5400.0),
        (" 10s ", 10.0),
        (45, 45.0),
        (2.5, 2.5),
        (0, 0.0),
    ],
)
def test_parse_duration(text: Union[str, int, float], seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(
    "text",
    [
        "30",
        "5 minutes",
        "-5s",
        "1h30m",
        "30S",
        "",
        "s",
        -1,
        math.nan,
        math.inf,
        True,
        "9" * 400 + "s",  # float() of it is inf, not an error
        10**400,  # float() of it raises OverflowError
    ],
)
def test_parse_duration_rejects(text: Union[str, int, float]) -> None:
    with pytest.raises(ValueError, match="is not a duration"):
        parse_duration(text)


def test_durations_in_config_are_seconds(tmp_path: Path) -> None:
    directory = write_files(
        tmp_path,
        {"a.yaml": "sync: {interval: 2m, jitter: 1500ms, deregister_after: 7d}\n"},
    )

    sync = load_config(str(directory)).sync

    assert (sync.interval, sync.jitter, sync.deregister_after) == (120.0, 1.5, 604800.0)


# -- the effective configuration ----------------------------------------------------------------


def test_effective_config_writes_durations_and_ranges_as_in_the_files(tmp_path: Path) -> None:
    directory = write_files(
        tmp_path,
        {
            "a.yaml": "consul: {read_timeout: 250ms}\n"
            "sync: {interval: 90s, deregister_after: 72h}\n"
            "discovery: {port_ranges: ['9100-9199', 9256]}\n"
        },
    )

    plain = effective_config(load_config(str(directory)))

    assert plain["consul"]["read_timeout"] == "250ms"
    assert plain["sync"]["interval"] == "90s"
    assert plain["sync"]["deregister_after"] == "3d"
    assert plain["discovery"]["port_ranges"] == ["9100-9199", "9256-9256"]
    json.dumps(plain)  # plain data only


def test_effective_config_masks_the_token() -> None:
    with_token = Config(consul=ConsulConfig(token="s3cr3t"))

    assert effective_config(Config())["consul"]["token"] is None
    assert effective_config(with_token)["consul"]["token"] == MASK


def test_effective_config_round_trips(conf_d: Path, tmp_path: Path) -> None:
    config = load_config(str(conf_d))
    again = tmp_path / "again.json"
    again.write_text(json.dumps(effective_config(config)))  # JSON is valid YAML

    assert load_config(str(again)) == config


# -- the token ----------------------------------------------------------------------------------


def test_token_file_wins_over_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("from-file\n")
    token_file.chmod(0o600)
    monkeypatch.setenv("CONSUL_HTTP_TOKEN", "from-env")
    consul = ConsulConfig

    assert load_token(consul(token_file=str(token_file), token="inline")) == "from-file"
    assert load_token(consul(token="inline")) == "inline"  # the config wins over the shell
    assert load_token(consul()) == "from-env"
    monkeypatch.delenv("CONSUL_HTTP_TOKEN")
    assert load_token(consul()) is None


def test_token_file_read_fails_cleanly(tmp_path: Path) -> None:
    consul = ConsulConfig(token_file=str(tmp_path / "gone"))

    with pytest.raises(ConfigError, match="cannot read"):
        load_token(consul)


# -- logging set-up -----------------------------------------------------------------------------


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture
def fresh_structlog() -> Iterator[None]:
    """structlog's configuration is process-wide: put the defaults back for later tests."""
    yield
    structlog.reset_defaults()


@pytest.mark.usefixtures("fresh_structlog")
def test_logs_are_json_off_a_terminal_and_filtered_by_level() -> None:
    stream = io.StringIO()
    configure_logging("warning", "auto", stream)
    log = structlog.get_logger("test")
    log.info("hidden")
    log.warning("shown", server="10.0.0.1:8500")

    records = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [(r["event"], r["level"], r["server"]) for r in records] == [
        ("shown", "warning", "10.0.0.1:8500")
    ]
    assert "timestamp" in records[0]


@pytest.mark.usefixtures("fresh_structlog")
def test_logs_are_key_value_text_on_a_terminal() -> None:
    stream = _Terminal()
    configure_logging("info", "auto", stream)
    structlog.get_logger("test").info("sync_applied", writes=2)

    line = stream.getvalue().strip()
    assert "sync_applied" in line
    assert "writes=2" in line
    assert not line.startswith("{")


def test_service_id_defaults_to_name_and_port() -> None:
    assert service_id(ServiceConfig(name="mysql", port=9104)) == "mysql-9104"
    assert service_id(ServiceConfig(name="mysql", port=9104, id="db")) == "db"


# -- bounds: what passes check-config must work at run time -------------------------------------


@pytest.mark.parametrize(
    "path", ["/metrics", "/actuator/prometheus", "/probe?target=db1&module=mysql", "/a%20b"]
)
def test_metrics_paths_that_are_accepted(path: str, tmp_path: Path) -> None:
    directory = write_files(
        tmp_path, {"a.yaml": f"services: [{{name: a, port: 1, metrics_path: '{path}'}}]\n"}
    )

    assert load_config(str(directory)).services[0].metrics_path == path


@pytest.mark.parametrize("address", ["10.0.0.5", "fd00::5", "web01", "web01.example.com."])
def test_service_addresses_that_are_accepted(address: str, tmp_path: Path) -> None:
    directory = write_files(
        tmp_path, {"a.yaml": f"services: [{{name: a, port: 1, address: '{address}'}}]\n"}
    )

    assert load_config(str(directory)).services[0].address == address


def test_bounds_are_inclusive_where_documented(tmp_path: Path) -> None:
    directory = write_files(
        tmp_path,
        {
            "a.yaml": "consul: {read_timeout: 30s, cooldown_initial: 1s, cooldown_max: 1d}\n"
            "sync: {interval: 1s, jitter: 0s, failures_before_critical: 100}\n"
            "discovery: {probe_max_bytes: 1024, max_new_per_cycle: 1000, probe_timeout: 1ms}\n"
        },
    )

    config = load_config(str(directory))

    assert (config.sync.interval, config.discovery.probe_max_bytes) == (1.0, 1024)
    assert config.discovery.max_new_per_cycle == 1000
