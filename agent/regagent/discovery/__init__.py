"""Finds this host's listening sockets and identifies the Prometheus exporters behind them.

Public surface:
- `listening_sockets()` and `Listener` (regagent.discovery.listeners): LISTEN sockets, O(listeners)
- `discover(config)`, `DiscoveryResult`, `Finding` (regagent.discovery.identify)
- `DiscoveryRunner` (regagent.discovery.runner): a cycle with state file, caches and logs
- `discover_command(...)` (regagent.render.discover): the `regagent discover` report
"""

from __future__ import annotations

from regagent.discovery.identify import DiscoveryResult, Finding, discover
from regagent.discovery.listeners import Listener, listening_sockets

__all__ = ["DiscoveryResult", "Finding", "Listener", "discover", "listening_sockets"]
