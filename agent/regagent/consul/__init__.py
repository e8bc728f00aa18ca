"""Talking to Consul: the server pool, answer classification, and one backend per mode."""
