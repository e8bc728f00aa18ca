"""The ACL token: consul.token_file, else consul.token, else CONSUL_HTTP_TOKEN. Never logged.

A token travels in the `X-Consul-Token` request header. Anything but one line of printable
ASCII there makes the HTTP library refuse the request with an error that quotes the header
(token included), so such a token is a configuration error, found by `check-config`, that
names where the token came from and never shows it.
"""

from __future__ import annotations

import os
from typing import Optional

from regagent.config.model import ConsulConfig
from regagent.errors import ConfigError
from regagent.rules import token_problem, token_text

TOKEN_ENV = "CONSUL_HTTP_TOKEN"
TOKEN_FILE_MAX = 64 * 1024  # a token is 36 characters; anything this large is not one


def token_file_text(path: str) -> str:
    """The text of the token file (bounded read); OSError when it cannot be read."""
    with open(path, "rb") as handle:
        raw = handle.read(TOKEN_FILE_MAX + 1)
    # Undecodable bytes become U+FFFD, which token_problem reports as non-ASCII.
    return raw.decode("utf-8", errors="replace")


def token_file_problem_text(text: str) -> Optional[str]:
    """Why the token file's text is not a usable token (without quoting it), or None."""
    if len(text) > TOKEN_FILE_MAX:
        return f"is larger than {TOKEN_FILE_MAX // 1024} KiB; it must hold one token"
    return token_problem(text)


def read_token_file(path: str) -> str:
    """The token in `path` (one trailing newline removed); ConfigError naming the file."""
    try:
        text = token_file_text(path)
    except OSError as exc:
        raise ConfigError(
            [f"consul.token_file: cannot read {path}: {exc.strerror or exc}"]
        ) from None
    problem = token_file_problem_text(text)
    if problem:
        raise ConfigError([f"consul.token_file: token file {path} {problem}"])
    return token_text(text)


def load_token(config: ConsulConfig) -> Optional[str]:
    """The ACL token to send: token_file, else consul.token, else CONSUL_HTTP_TOKEN, or None.

    What the configuration names wins over an operator's shell variable (decision 6). A token
    that could not be sent as a header is refused here too, naming its source, not its value.
    """
    if config.token_file:
        return read_token_file(config.token_file)
    if config.token:
        problem = token_problem(config.token)
        if problem:
            raise ConfigError([f"consul.token: the inline token {problem}"])
        return token_text(config.token)
    env = os.environ.get(TOKEN_ENV)
    if env:
        problem = token_problem(env)
        if problem:
            raise ConfigError([f"environment variable {TOKEN_ENV}: the token {problem}"])
        return token_text(env)
    return None
