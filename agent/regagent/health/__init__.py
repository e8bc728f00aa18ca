"""Health checks run on this host: one bounded HTTP GET, checks, and flap protection.

`Health` (the checks of this host across cycles, `regagent.health.host`) and the thread pool
its checks run on (`ProbePool`, `regagent.health.checks`) are the surface the rest of regagent
uses.
"""

from regagent.health.checks import ProbePool, run_probes
from regagent.health.host import Health, ProbeRunner

__all__ = ["Health", "ProbePool", "ProbeRunner", "run_probes"]
