"""A token that cannot be sent as a header is a configuration error that never shows the token.

Before: a token file with a comment line made every request fail with the HTTP library's
invalid-header error, whose text (token included) reached the log, stderr and `status`; a
non-latin-1 character raised a traceback every cycle. Now each source (token file, inline
token, CONSUL_HTTP_TOKEN) is checked by `check-config` (exit 2) and refused by `load_token`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Tuple

import pytest

from helpers.cli import assert_no_traceback, problem_lines, run_regagent, write
from regagent.config.model import ConsulConfig
from regagent.config.token import load_token
from regagent.errors import ConfigError

SECRET = "b1946ac9-2f4c-4e1d-9c55-0d4f2a1c7e3a"

# (description, token text as it would be read) - each one unusable as a header value.
BAD_TOKENS: List[Tuple[str, str, str]] = [
    ("comment-line", f"# prod token\n{SECRET}\n", "holds 2 lines"),
    ("blank-line", f"{SECRET}\n\n", "holds 2 lines"),
    ("non-latin-1", f"{SECRET}\u2014x", "a non-ASCII character at column 37"),
    ("latin-1", f"{SECRET}\u00e9", "a non-ASCII character at column 37"),
    ("ansi-escape", f"{SECRET}\x1b[31m", "a control character at column 37"),
    ("inner-space", f"{SECRET} x", "a space or tab at column 37"),
    ("crlf", f"{SECRET}\r\n", "a carriage return"),
]
COMMANDS = (["check-config"], ["sync", "--dry-run"], ["status"], ["discover"])


def _config(tmp_path: Path, source: str, token: str) -> Tuple[Path, Dict[str, str]]:
    """A configuration whose token comes from `source`, and the environment to run it with."""
    servers = "consul:\n  servers: ['127.0.0.1:1']\n"
    if source == "file":
        (tmp_path / "consul.token").write_bytes(token.encode("utf-8"))
        (tmp_path / "consul.token").chmod(0o600)
        return write(
            tmp_path / "regagent.yaml", f"{servers}  token_file: {tmp_path}/consul.token\n", 0o600
        ), {}
    if source == "inline":
        quoted = token.encode("unicode_escape").decode("ascii").replace('"', '\\"')
        return write(tmp_path / "regagent.yaml", f'{servers}  token: "{quoted}"\n', 0o600), {}
    return write(tmp_path / "regagent.yaml", servers, 0o600), {"CONSUL_HTTP_TOKEN": token}


@pytest.mark.parametrize("source", ["file", "inline", "env"])
@pytest.mark.parametrize(("kind", "token", "complaint"), BAD_TOKENS, ids=[b[0] for b in BAD_TOKENS])
def test_bad_token_is_a_config_error_naming_its_source(
    source: str, kind: str, token: str, complaint: str, tmp_path: Path
) -> None:
    config, env = _config(tmp_path, source, token)
    where = {
        "file": f"consul.token_file: token file {tmp_path}/consul.token",
        "inline": "consul.token: the inline token",
        "env": "environment variable CONSUL_HTTP_TOKEN: the token",
    }[source]

    result = run_regagent(["-c", str(config), "check-config"], tmp_path, env=env)

    assert_no_traceback(result)
    assert result.returncode == 2, result.stderr
    (line,) = problem_lines(result.stderr)
    assert where in line
    assert complaint in line
    assert SECRET not in result.stdout + result.stderr


@pytest.mark.parametrize("source", ["file", "inline", "env"])
@pytest.mark.parametrize("command", COMMANDS, ids=[c[0] for c in COMMANDS])
def test_no_command_prints_a_bad_token(source: str, command: List[str], tmp_path: Path) -> None:
    config, env = _config(tmp_path, source, f"# note\n{SECRET}\u2014\n")

    result = run_regagent(["--log-level", "debug", "-c", str(config), *command], tmp_path, env=env)

    assert_no_traceback(result)
    assert result.returncode == 2, result.stderr
    assert SECRET not in result.stdout + result.stderr


@pytest.mark.parametrize(("kind", "token", "complaint"), BAD_TOKENS, ids=[b[0] for b in BAD_TOKENS])
def test_load_token_refuses_what_validation_would(
    kind: str, token: str, complaint: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # load_token is also the last guard for a config built in code, without check-config.
    token_file = tmp_path / "consul.token"
    token_file.write_bytes(token.encode("utf-8"))
    monkeypatch.setenv("CONSUL_HTTP_TOKEN", token)
    for consul in (
        ConsulConfig(token_file=str(token_file)),
        ConsulConfig(token=token),
        ConsulConfig(),
    ):
        with pytest.raises(ConfigError) as raised:
            load_token(consul)
        assert complaint in str(raised.value)
        assert SECRET not in str(raised.value)


@pytest.mark.parametrize("token", [SECRET, SECRET + "\n"])
def test_good_token_passes_without_its_newline(
    token: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    token_file = tmp_path / "consul.token"
    token_file.write_text(token)
    monkeypatch.setenv("CONSUL_HTTP_TOKEN", token)

    assert load_token(ConsulConfig(token_file=str(token_file))) == SECRET
    assert load_token(ConsulConfig(token=token)) == SECRET
    assert load_token(ConsulConfig()) == SECRET


def test_undecodable_token_file_is_refused(tmp_path: Path) -> None:
    token_file = tmp_path / "consul.token"
    token_file.write_bytes(SECRET.encode() + b"\xff\n")
    token_file.chmod(0o600)
    config = write(tmp_path / "regagent.yaml", f"consul:\n  token_file: {token_file}\n", 0o600)

    result = run_regagent(["-c", str(config), "check-config"], tmp_path)

    assert result.returncode == 2
    assert problem_lines(result.stderr) == [
        f"{config}: consul.token_file: token file {token_file} contains a non-ASCII character "
        "at column 37; it must be one line of printable ASCII"
    ]
    assert SECRET not in result.stdout + result.stderr
