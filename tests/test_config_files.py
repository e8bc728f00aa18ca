"""Which entries of a conf.d directory are configuration, and what happens when one is broken.

Only `*.yaml` names not starting with a dot are read (as documented). Such an entry that is not
a readable regular file is an error (exit 2, file named), never silently skipped: the
configuration it was meant to hold would be missing. A FIFO must not hang the command.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Iterator, List

import pytest

from helpers.cli import assert_no_traceback, log_records, problem_lines, run_regagent, write


@pytest.fixture
def conf_d(tmp_path: Path) -> Path:
    """A conf.d with one good file."""
    directory = tmp_path / "conf.d"
    write(directory / "00-base.yaml", "node: {name: web01}\n")
    return directory


def check_config(conf_d: Path) -> subprocess.CompletedProcess[str]:
    result = run_regagent(["-c", str(conf_d), "check-config"], conf_d.parent)
    assert_no_traceback(result)
    return result


def test_dangling_symlink_is_an_error(conf_d: Path) -> None:
    (conf_d / "10-site.yaml").symlink_to("/etc/regagent/gone.yaml")

    result = check_config(conf_d)

    assert result.returncode == 2
    assert problem_lines(result.stderr) == [
        f"{conf_d}/10-site.yaml: symlink to /etc/regagent/gone.yaml, which does not exist; "
        "fix or remove the link"
    ]


def test_symlink_loop_is_an_error(conf_d: Path) -> None:
    (conf_d / "10-a.yaml").symlink_to("10-b.yaml")
    (conf_d / "10-b.yaml").symlink_to("10-a.yaml")

    result = check_config(conf_d)

    assert result.returncode == 2
    assert problem_lines(result.stderr) == [
        f"{conf_d}/10-a.yaml: symlink loop (via 10-b.yaml); fix or remove the link",
        f"{conf_d}/10-b.yaml: symlink loop (via 10-a.yaml); fix or remove the link",
    ]


def test_directory_named_yaml_is_an_error(conf_d: Path) -> None:
    (conf_d / "20-mysql.yaml").mkdir()

    result = check_config(conf_d)

    assert result.returncode == 2
    assert problem_lines(result.stderr) == [
        f"{conf_d}/20-mysql.yaml: is a directory, not a configuration file; rename or remove it"
    ]


def test_fifo_is_an_error_not_a_hang(conf_d: Path) -> None:
    os.mkfifo(conf_d / "30-pipe.yaml")

    result = check_config(conf_d)  # run_regagent has a 60 s timeout; this takes well under 1 s

    assert result.returncode == 2
    assert problem_lines(result.stderr) == [
        f"{conf_d}/30-pipe.yaml: is not a regular file; remove it or rename it (not *.yaml)"
    ]


def test_fifo_given_with_c_is_an_error_not_a_hang(tmp_path: Path) -> None:
    fifo = tmp_path / "regagent.yaml"
    os.mkfifo(fifo)

    result = run_regagent(["-c", str(fifo), "check-config"], tmp_path)

    assert result.returncode == 2
    assert problem_lines(result.stderr) == [
        f"{fifo}: is not a regular file; remove it or rename it (not *.yaml)"
    ]


def test_symlink_to_a_regular_file_is_read(conf_d: Path, tmp_path: Path) -> None:
    target = write(tmp_path / "site.yaml", "node: {name: from-link}\n")
    (conf_d / "10-site.yaml").symlink_to(target)

    result = check_config(conf_d)

    assert result.returncode == 0, result.stderr
    assert "name: from-link" in result.stdout


def test_dot_files_are_not_read(conf_d: Path) -> None:
    # An editor's lock file (a dangling symlink) and a hidden copy that would not even parse.
    (conf_d / ".#10-site.yaml").symlink_to("root@host.1234:1700000000")
    write(conf_d / ".10-site.yaml", "consul: [not: valid\n")

    result = check_config(conf_d)

    assert result.returncode == 0, result.stderr
    assert "name: web01" in result.stdout


def test_yml_files_are_not_read_and_say_so(conf_d: Path) -> None:
    write(conf_d / "10-site.yml", "node: {name: from-yml}\n")

    result = check_config(conf_d)

    assert result.returncode == 0, result.stderr
    assert "name: web01" in result.stdout
    (record,) = [r for r in log_records(result.stderr) if r["event"] == "config_files_not_read"]
    assert record["level"] == "warning"
    assert record["names"] == ["10-site.yml"]


def _as_nobody(args: List[str]) -> subprocess.CompletedProcess[str]:
    """`python3 -m regagent ARGS` as user nobody (Debian's python3 has regagent's packages)."""
    setpriv = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]
    return subprocess.run(
        [*setpriv, "/usr/bin/python3", "-m", "regagent", *args],
        env={"PYTHONPATH": str(Path(__file__).resolve().parent.parent / "agent")},
        cwd="/",
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A directory user nobody can enter (pytest's tmp_path is private to root)."""
    directory = Path(tempfile.mkdtemp(prefix="regagent-test-"))
    directory.chmod(0o755)
    try:
        yield directory
    finally:
        shutil.rmtree(directory)


needs_root = pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("setpriv"), reason="needs root and setpriv"
)


@needs_root
def test_unreadable_file_is_an_error_for_an_unprivileged_run(open_dir: Path) -> None:
    conf_d = open_dir / "conf.d"
    write(conf_d / "00-base.yaml", "node: {name: web01}\n")
    secret = write(conf_d / "10-secret.yaml", "node: {name: hidden}\n", mode=0o600)
    conf_d.chmod(0o755)

    result = _as_nobody(["-c", str(conf_d), "check-config"])

    assert "Traceback" not in result.stderr
    assert result.returncode == 2
    assert problem_lines(result.stderr) == [f"{secret}: cannot read: Permission denied"]


@needs_root
def test_config_path_in_a_private_directory_is_an_error(tmp_path: Path) -> None:
    conf_d = tmp_path / "conf.d"  # tmp_path's parents are root-only (mode 700)
    write(conf_d / "00-base.yaml", "node: {name: web01}\n")

    result = _as_nobody(["-c", str(conf_d), "check-config"])

    assert "Traceback" not in result.stderr
    assert result.returncode == 2
    assert problem_lines(result.stderr) == [f"{conf_d}: cannot read: Permission denied"]
