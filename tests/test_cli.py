"""The `regagent` command as a user runs it: a real subprocess, its exit code, stdout and stderr.

The bad-configuration corpus lives in tests/data/config/bad/ (see the README there): one
directory per case, each holding the configuration and the exact problem lines expected.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import List

import pytest
import yaml

import regagent
from helpers.cli import (
    assert_no_traceback,
    log_records,
    problem_lines,
    run_regagent,
    write,
)
from regagent.config import Config
from regagent.config.show import MASK, effective_config

REPO = Path(__file__).resolve().parent.parent
BAD_CORPUS = REPO / "tests" / "data" / "config" / "bad"
SHIPPED_CONF_D = REPO / "conf.d"

SECRET_TOKEN = "7f3c2d1e-secret-acl-token-5b9a"
COMMAND_OPTIONS = {
    "check-config": ["--format"],
    "sync": ["--dry-run", "--format", "--detailed-exitcode"],
    "discover": ["--format"],
    "status": ["--format"],
    "deregister": ["--yes"],
    "maint": ["start", "stop", "status"],
    "run": ["sync.interval"],
}


@pytest.fixture
def token_file(tmp_path: Path) -> Path:
    """A token file as it should be: owner-only (mode 600), holding SECRET_TOKEN."""
    return write(tmp_path / "consul.token", SECRET_TOKEN + "\n", mode=0o600)


@pytest.fixture
def site_config(tmp_path: Path, token_file: Path) -> Path:
    """A realistic single-file configuration with a static service and a token file."""
    return write(
        tmp_path / "regagent.yaml",
        f"""
consul:
  servers: ["10.0.0.1:8500", "10.0.0.2:8500", "[fd00::3]:8500"]
  token_file: {token_file}
  read_timeout: 250ms
node:
  name: web01
  address: 10.0.0.5
  meta: {{rack: r12}}
sync:
  interval: 1m
  deregister_after: 1d
discovery:
  port_ranges: ["9100-9199", 9256]
services:
  - name: billing-api
    port: 8080
    tags: [java]
    meta: {{team: billing}}
""",
    )


# -- the bad-configuration corpus ---------------------------------------------------------------


def bad_cases() -> List[Path]:
    return sorted(p for p in BAD_CORPUS.iterdir() if p.is_dir())


def prepare_case(case: Path, workdir: Path) -> Path:
    """Copies a case to `workdir`, fills in {dir}, creates its setup files; returns the -c PATH."""
    shutil.copytree(case, workdir)
    for file in workdir.rglob("*.y*ml"):
        # Bytes, not text: one case is deliberately not UTF-8.
        file.write_bytes(file.read_bytes().replace(b"{dir}", str(workdir).encode()))
    setup = workdir / "setup.yaml"
    if setup.exists():
        for spec in yaml.safe_load(setup.read_text())["files"]:
            write(workdir / spec["path"], spec["content"], mode=int(spec["mode"], 8))
        setup.unlink()
    conf_d = workdir / "conf.d"
    return conf_d if conf_d.is_dir() else workdir / "regagent.yaml"


def test_corpus_has_a_case_for_each_documented_error() -> None:
    cases = bad_cases()
    assert len(cases) >= 24
    for case in cases:
        assert (case / "expected.txt").read_text().strip(), case.name
        has_file = (case / "regagent.yaml").is_file()
        has_dir = (case / "conf.d").is_dir()
        assert has_file != has_dir, f"{case.name}: needs regagent.yaml or conf.d/, not both"


@pytest.mark.parametrize("case", bad_cases(), ids=lambda case: case.name)
def test_bad_config_is_reported_with_file_and_key(case: Path, tmp_path: Path) -> None:
    workdir = tmp_path / case.name
    config_path = prepare_case(case, workdir)
    expected = (case / "expected.txt").read_text().replace("{dir}", str(workdir)).splitlines()

    result = run_regagent(["-c", str(config_path), "check-config"], cwd=tmp_path)

    assert_no_traceback(result)
    assert result.returncode == 2, result.stderr
    assert result.stdout == ""
    # Exactly the expected problems: none missing, none spurious, all in one run.
    assert sorted(problem_lines(result.stderr)) == sorted(line for line in expected if line)


def test_world_readable_token_is_never_printed(tmp_path: Path) -> None:
    workdir = tmp_path / "case"
    config = prepare_case(BAD_CORPUS / "token-file-world-readable", workdir)
    secret = (workdir / "consul.token").read_text()

    result = run_regagent(["--log-level", "debug", "-c", str(config), "check-config"], tmp_path)

    assert result.returncode == 2
    assert secret not in result.stdout + result.stderr


# -- check-config on a good configuration -------------------------------------------------------


def test_check_config_prints_effective_config_as_yaml(site_config: Path, tmp_path: Path) -> None:
    result = run_regagent(["-c", str(site_config), "check-config"], tmp_path)

    assert_no_traceback(result)
    assert result.returncode == 0, result.stderr
    shown = yaml.safe_load(result.stdout)
    assert shown["consul"]["servers"] == ["10.0.0.1:8500", "10.0.0.2:8500", "[fd00::3]:8500"]
    assert shown["consul"]["read_timeout"] == "250ms"
    assert shown["sync"]["interval"] == "1m"
    assert shown["sync"]["deregister_after"] == "1d"
    assert shown["sync"]["jitter"] == "5s"  # a default, filled in
    assert shown["node"] == {"name": "web01", "address": "10.0.0.5", "meta": {"rack": "r12"}}
    assert shown["discovery"]["port_ranges"] == ["9100-9199", "9256-9256"]
    assert shown["services"][0]["name"] == "billing-api"
    assert shown["services"][0]["check"]["type"] == "http"


def test_check_config_json_matches_yaml(site_config: Path, tmp_path: Path) -> None:
    as_yaml = run_regagent(["-c", str(site_config), "check-config"], tmp_path)
    as_json = run_regagent(["-c", str(site_config), "check-config", "--format", "json"], tmp_path)

    assert as_json.returncode == 0, as_json.stderr
    assert json.loads(as_json.stdout) == yaml.safe_load(as_yaml.stdout)


@pytest.mark.parametrize("fmt", ["yaml", "json"])
def test_check_config_masks_token_from_file(
    fmt: str, site_config: Path, token_file: Path, tmp_path: Path
) -> None:
    result = run_regagent(
        ["--log-level", "debug", "-c", str(site_config), "check-config", "--format", fmt],
        tmp_path,
    )

    assert result.returncode == 0, result.stderr
    assert SECRET_TOKEN not in result.stdout + result.stderr
    shown = yaml.safe_load(result.stdout)  # JSON is YAML too
    assert shown["consul"]["token"] == f"{MASK} (from {token_file})"
    assert shown["consul"]["token_file"] == str(token_file)


def test_check_config_masks_inline_token(tmp_path: Path) -> None:
    config = write(tmp_path / "regagent.yaml", f"consul:\n  token: {SECRET_TOKEN}\n")
    config.chmod(0o600)

    result = run_regagent(["-c", str(config), "check-config"], tmp_path)

    assert result.returncode == 0, result.stderr
    assert SECRET_TOKEN not in result.stdout + result.stderr
    assert yaml.safe_load(result.stdout)["consul"]["token"] == MASK


def test_inline_token_in_a_world_readable_file_is_refused(tmp_path: Path) -> None:
    config = write(tmp_path / "regagent.yaml", f"consul:\n  token: {SECRET_TOKEN}\n")
    config.chmod(0o644)

    result = run_regagent(["-c", str(config), "check-config"], tmp_path)

    assert result.returncode == 2
    assert f"{config}: consul.token: holds a token but {config} is world-readable" in result.stderr
    assert SECRET_TOKEN not in result.stdout + result.stderr


def test_combined_defaults_and_service_meta_over_consul_limit_is_refused(tmp_path: Path) -> None:
    defaults = "\n".join(f"    d{i}: v" for i in range(40))
    service_meta = "\n".join(f"        s{i}: v" for i in range(30))
    config = write(
        tmp_path / "regagent.yaml",
        f"defaults:\n  meta:\n{defaults}\nservices:\n  - name: app\n    port: 8080\n"
        f"    meta:\n{service_meta}\n",
    )

    result = run_regagent(["-c", str(config), "check-config"], tmp_path)

    assert result.returncode == 2
    assert (
        "services[0].meta: with defaults.meta and the 5 keys regagent adds this makes 75 pairs"
        in (result.stderr)
    )


def test_check_config_never_prints_consul_http_token(site_config: Path, tmp_path: Path) -> None:
    env_secret = "env-only-secret-0c1d2e3f"
    for fmt in ("yaml", "json"):
        result = run_regagent(
            ["--log-level", "debug", "-c", str(site_config), "check-config", "--format", fmt],
            tmp_path,
            env={"CONSUL_HTTP_TOKEN": env_secret},
        )
        assert result.returncode == 0, result.stderr
        assert env_secret not in result.stdout + result.stderr


def test_empty_file_gives_built_in_defaults(tmp_path: Path) -> None:
    config = write(tmp_path / "regagent.yaml", "# nothing set yet\n")

    result = run_regagent(["-c", str(config), "check-config", "--format", "json"], tmp_path)

    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == effective_config(Config())


def test_effective_config_is_itself_a_valid_config(tmp_path: Path) -> None:
    original = write(
        tmp_path / "in.yaml",
        "services: [{name: app, port: 8080, check: {type: tcp, timeout: 1500ms}}]\n"
        "discovery: {port_ranges: ['9100-9110'], exclude_ports: [9101]}\n",
    )
    first = run_regagent(["-c", str(original), "check-config"], tmp_path)
    assert first.returncode == 0, first.stderr
    again = write(tmp_path / "again.yaml", first.stdout)

    second = run_regagent(["-c", str(again), "check-config"], tmp_path)

    assert second.returncode == 0, second.stderr
    assert second.stdout == first.stdout


def test_shipped_conf_d_is_valid(tmp_path: Path) -> None:
    result = run_regagent(["-c", str(SHIPPED_CONF_D), "check-config"], tmp_path)

    assert_no_traceback(result)
    assert result.returncode == 0, result.stderr


# -- where the configuration comes from ---------------------------------------------------------


def test_regagent_config_env_is_used_without_c(tmp_path: Path) -> None:
    from_env = write(tmp_path / "env.yaml", "node: {name: from-env}\n")

    result = run_regagent(["check-config"], tmp_path, env={"REGAGENT_CONFIG": str(from_env)})

    assert result.returncode == 0, result.stderr
    assert yaml.safe_load(result.stdout)["node"]["name"] == "from-env"


def test_c_option_wins_over_regagent_config_env(tmp_path: Path) -> None:
    from_env = write(tmp_path / "env.yaml", "node: {name: from-env}\n")
    from_option = write(tmp_path / "opt.yaml", "node: {name: from-option}\n")

    result = run_regagent(
        ["-c", str(from_option), "check-config"], tmp_path, env={"REGAGENT_CONFIG": str(from_env)}
    )

    assert result.returncode == 0, result.stderr
    assert yaml.safe_load(result.stdout)["node"]["name"] == "from-option"


def test_default_path_is_etc_regagent_conf_d(tmp_path: Path) -> None:
    if Path("/etc/regagent/conf.d").exists():
        pytest.skip("this machine has a real /etc/regagent/conf.d")

    result = run_regagent(["check-config"], tmp_path)

    assert result.returncode == 2
    assert problem_lines(result.stderr) == ["/etc/regagent/conf.d: no such file or directory"]


def test_missing_config_path_is_a_config_error(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"

    result = run_regagent(["-c", str(missing), "check-config"], tmp_path)

    assert_no_traceback(result)
    assert result.returncode == 2
    assert problem_lines(result.stderr) == [f"{missing}: no such file or directory"]


# -- arguments, help and exit codes -------------------------------------------------------------


def test_version(tmp_path: Path) -> None:
    result = run_regagent(["--version"], tmp_path)

    assert result.returncode == 0
    assert result.stdout.strip() == f"regagent {regagent.__version__}"


def test_top_level_help_lists_global_options_and_commands(tmp_path: Path) -> None:
    result = run_regagent(["--help"], tmp_path)

    assert result.returncode == 0
    for word in ("-c PATH", "--log-level", "--version", "REGAGENT_CONFIG", *COMMAND_OPTIONS):
        assert word in result.stdout


@pytest.mark.parametrize("command", sorted(COMMAND_OPTIONS))
def test_each_command_has_help(command: str, tmp_path: Path) -> None:
    result = run_regagent([command, "--help"], tmp_path)

    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"usage: regagent {command}")
    for option in COMMAND_OPTIONS[command]:
        assert option in result.stdout


@pytest.mark.parametrize(
    ("args", "complaint"),
    [
        (["frobnicate"], "invalid choice: 'frobnicate'"),
        ([], "the following arguments are required: COMMAND"),
        (["--log-level", "loud", "check-config"], "invalid choice: 'loud'"),
        (["check-config", "--format", "xml"], "invalid choice: 'xml'"),
        (["check-config", "--no-such-option"], "unrecognized arguments: --no-such-option"),
    ],
    ids=["unknown-command", "no-command", "bad-log-level", "bad-format", "unknown-option"],
)
def test_usage_errors_exit_2(args: List[str], complaint: str, tmp_path: Path) -> None:
    result = run_regagent(args, tmp_path)

    assert_no_traceback(result)
    assert result.returncode == 2
    assert complaint in result.stderr
    assert result.stderr.startswith("usage: regagent")


def test_deregister_without_yes_and_without_terminal_refuses(
    site_config: Path, tmp_path: Path
) -> None:
    result = run_regagent(["-c", str(site_config), "deregister"], tmp_path)

    assert_no_traceback(result)
    assert result.returncode == 2
    assert "refusing to deregister without --yes" in result.stderr


# -- logging ------------------------------------------------------------------------------------


def test_logs_are_json_lines_when_stderr_is_not_a_terminal(tmp_path: Path) -> None:
    empty_dir = tmp_path / "conf.d"
    empty_dir.mkdir()

    result = run_regagent(["-c", str(empty_dir), "check-config"], tmp_path)

    assert result.returncode == 0, result.stderr
    records = log_records(result.stderr)
    assert [r["event"] for r in records] == ["config_directory_empty"]
    assert records[0]["level"] == "warning"
    assert records[0]["directory"] == str(empty_dir)
    # Nothing on stderr that is not a JSON log line.
    assert len(records) == len(result.stderr.splitlines())


def test_log_level_option_hides_lower_levels(tmp_path: Path) -> None:
    empty_dir = tmp_path / "conf.d"
    empty_dir.mkdir()

    result = run_regagent(["--log-level", "error", "-c", str(empty_dir), "check-config"], tmp_path)

    assert result.returncode == 0, result.stderr
    assert result.stderr == ""


def test_log_level_debug_shows_which_files_were_merged(tmp_path: Path) -> None:
    conf_d = tmp_path / "conf.d"
    first = write(conf_d / "00-base.yaml", "node: {name: a}\n")
    second = write(conf_d / "10-site.yaml", "node: {name: b}\n")
    write(conf_d / "README", "not configuration\n")

    quiet = run_regagent(["-c", str(conf_d), "check-config"], tmp_path)
    verbose = run_regagent(["--log-level", "debug", "-c", str(conf_d), "check-config"], tmp_path)

    assert quiet.returncode == verbose.returncode == 0
    assert log_records(quiet.stderr) == []
    by_event = {r["event"]: r for r in log_records(verbose.stderr)}
    assert by_event["config_loaded"]["level"] == "debug"
    assert by_event["config_loaded"]["files"] == [str(first), str(second)]
    assert by_event["config_files_ignored"]["names"] == ["README"]


def test_config_option_also_accepted_after_the_command() -> None:
    shipped = str(Path(__file__).resolve().parent.parent / "conf.d")
    before = subprocess.run(
        [sys.executable, "-m", "regagent", "-c", shipped, "check-config", "--format", "json"],
        capture_output=True,
        text=True,
        check=False,
    )
    after = subprocess.run(
        [sys.executable, "-m", "regagent", "check-config", "-c", shipped, "--format", "json"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert before.returncode == after.returncode == 0, after.stderr
    assert json.loads(before.stdout) == json.loads(after.stdout)


def test_check_config_names_the_environment_token_source_masked(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("consul:\n  servers: ['127.0.0.1:8500']\n")
    env = {**os.environ, "CONSUL_HTTP_TOKEN": "env-secret-123"}
    result = subprocess.run(
        [sys.executable, "-m", "regagent", "-c", str(config), "check-config", "--format", "json"],
        capture_output=True,
        text=True,
        check=False,
        env=env,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["consul"]["token"] == "******** (from CONSUL_HTTP_TOKEN)"
    assert "env-secret-123" not in result.stdout + result.stderr


def test_discover_builds_no_consul_client_and_loads_none(tmp_path: Path) -> None:
    """`discover` needs the node identity and discovery only: not the Consul client, the
    server pool or the metrics, nor the modules they need (it is a person's command)."""
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    config = write(
        tmp_path / "regagent.yaml",
        "consul: {servers: ['127.0.0.1:1']}\n"
        "node: {name: cli-host, address: 192.0.2.10}\n"
        f"sync: {{state_dir: '{state}'}}\n"
        "discovery: {port_ranges: ['1-1']}\n",
    )
    program = (
        "import json, sys\n"
        "from regagent.cli import main\n"
        f"code = main(['-c', {str(config)!r}, 'discover', '--format', 'json'])\n"
        "loaded = [m for m in ('regagent.app', 'regagent.consul', 'consul', 'requests',\n"
        "          'prometheus_client') if m in sys.modules]\n"
        "print(json.dumps({'code': code, 'loaded': loaded}))\n"
    )
    shown = subprocess.run(
        [sys.executable, "-c", program],
        cwd=tmp_path,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert shown.returncode == 0, shown.stderr
    last = json.loads(shown.stdout.splitlines()[-1])
    assert last == {"code": 0, "loaded": []}
    report = json.loads("\n".join(shown.stdout.splitlines()[:-1]))
    assert report["node_address"] == "192.0.2.10" and report["discovery_enabled"]
