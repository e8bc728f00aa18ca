"""Finds this host's listening sockets and identifies the Prometheus exporters behind them.

Public surface:
- `listening_sockets()`, `Listener`, `ListenerReader` (regagent.discovery.listeners): LISTEN
  sockets, O(listeners)
- `discover(config)`, `DiscoveryResult`, `Finding` (regagent.discovery.identify)
- `Sensor` (regagent.discovery.sensor): the listener reader, probe caches and background
  identification of one process; `look()` for the watch, `identify()` for a pass
- `build_intents`, `IntentSet` (regagent.discovery.intents): pure, from findings to intents
- `Discovery` (regagent.discovery.service): the engine's intent source, with the state file
  and once-only reports
- the `regagent discover` report: `regagent.cli.discover_command`, rendered by
  `regagent.render.discover`
"""

from __future__ import annotations

from regagent.discovery.identify import DiscoveryResult, Finding, discover
from regagent.discovery.listeners import Listener, listening_sockets

__all__ = ["DiscoveryResult", "Finding", "Listener", "discover", "listening_sockets"]
