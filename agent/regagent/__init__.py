"""regagent: keeps a host's Prometheus exporters registered in Consul."""

__version__ = "0.1.0"
