"""A Consul HTTP API emulator for tests: N servers sharing one replicated catalog.

Run it with ``python -m tests.consulsim`` or through ``SimCluster``; see README.md for the
command-line flags, the control API and what is (and is not) emulated.
"""

from .cluster import SimCluster, SimClusterError

__all__ = ["SimCluster", "SimClusterError"]
