"""The ACL token: consul.token_file, else CONSUL_HTTP_TOKEN, else consul.token. Never logged."""

from __future__ import annotations

import os
from typing import Optional

from regagent.config.model import ConsulConfig
from regagent.errors import ConfigError


def load_token(config: ConsulConfig) -> Optional[str]:
    """The ACL token to send: token_file, else consul.token, else CONSUL_HTTP_TOKEN, or None.

    What the configuration names wins over an operator's shell variable (decision 6)."""
    if config.token_file:
        try:
            with open(config.token_file, encoding="utf-8") as handle:
                token = handle.read().strip()
        except OSError as exc:
            raise ConfigError(
                [f"consul.token_file: cannot read {config.token_file}: {exc.strerror or exc}"]
            ) from None
        if not token:
            raise ConfigError([f"consul.token_file: {config.token_file} is empty"])
        return token
    return config.token or os.environ.get("CONSUL_HTTP_TOKEN")
