"""Health checks run on this host: one bounded HTTP GET, checks, and flap protection."""
