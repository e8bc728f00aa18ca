"""Maintenance windows (`regagent maint`): a host declared in maintenance for a while, because
of a reason, marked in Consul the way Consul's own `consul maint` marks a node, and ended by
regagent when the window is over, across restarts of the daemon.

`window` is the pure core (the record, its rules, the check it becomes), `store` the file in
the state directory, `metric` the window's end time on the metrics endpoint.
"""
