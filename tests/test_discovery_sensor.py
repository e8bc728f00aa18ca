"""The sensor over a fake host: what a look names, what a pass reads and probes afresh."""

from __future__ import annotations

import socket
from typing import List

from helpers.fakes import FakeHost, FakeResolver
from regagent.config.model import Config, DiscoveryConfig, TelemetryConfig
from regagent.discovery.listeners import Listener, Listing
from regagent.discovery.processes import ProcessInfo
from regagent.discovery.sensor import Sensor

NODE_EXPORTER = ProcessInfo(
    4242, "prometheus-node-e", "/usr/bin/prometheus-node-exporter", exe_trusted=True
)


class CountedHost(FakeHost):
    """A fake host that counts how often its listeners are read."""

    def __init__(self) -> None:
        super().__init__()
        self.readings = 0

    def reading(self) -> Listing:
        self.readings += 1
        return super().reading()


def sensor_for(host: FakeHost, config: Config, resolver: FakeResolver) -> Sensor:
    return Sensor(config, read=host.reading, prober=host.prober, resolver=resolver)


def test_a_look_names_only_the_changed_ports_that_can_matter() -> None:
    config = Config(
        discovery=DiscoveryConfig(port_ranges=((9500, 9599),), exclude_ports=(9104,)),
        telemetry=TelemetryConfig(listen=":9900"),
    )
    host = FakeHost()
    sensor = sensor_for(host, config, FakeResolver())
    host.listen(9100)  # node_exporter's default port
    host.listen(9550)  # in a configured range
    host.listen(41000)  # only a process name could make it a candidate: the full cycle's
    host.listen(9104)  # excluded
    host.listen(9900)  # regagent's own endpoint
    first = sensor.look()
    assert first.ports == {9100, 9550}
    assert {port for port, _inode in first.keys} == {9100, 9550, 41000, 9104, 9900}
    unchanged = sensor.look()
    assert unchanged.ports == frozenset() and unchanged.keys == first.keys
    host.listening[9550] = [Listener("0.0.0.0", 9550, socket.AF_INET, 1)]  # restarted: new socket
    host.close(41000)
    assert sensor.look().ports == {9550}


def test_a_quick_pass_identifies_the_looks_reading_and_says_what_is_fresh() -> None:
    host = CountedHost()
    host.listen(9100)
    config = Config(discovery=DiscoveryConfig(port_ranges=((9100, 9300),)))
    sensor = sensor_for(host, config, FakeResolver())
    full = sensor.identify({9100})  # a cycle's pass: a fresh reading, known ports probed in it
    assert full is not None and [f.port for f in full.exporters] == [9100]
    assert host.readings == 1 and host.probes == 1 and full.fresh == {9100}

    host.listen(9200)
    change = sensor.look()
    assert change.ports == {9200} and host.readings == 2
    quick = sensor.identify({9100}, change)
    assert quick is not None and host.readings == 2, "the look's reading, not another"
    # 9100 answered from the cache; 9200, unconfirmed, identified in the background.
    assert host.probes == 2 and quick.fresh == {9200}
    assert sensor.look().ports == frozenset(), "the pass's reading is the next look's base"


def test_a_port_discovery_keeps_matters_even_when_only_its_process_named_it() -> None:
    host = FakeHost()
    host.listen(41000)  # no default port, no range: a candidate by its (trusted) name only
    owners = {listener.inode: NODE_EXPORTER for listener in host.listening[41000]}
    sensor = sensor_for(host, Config(), FakeResolver(owners))
    assert sensor.look().ports == frozenset(), "not yet known: waits for the full cycle"
    result = sensor.identify()
    assert result is not None and [f.port for f in result.exporters] == [41000]
    host.close(41000)
    assert sensor.look().ports == {41000}, "a known exporter's death is the watch's to see"


def test_a_reading_that_fails_is_an_incomplete_pass_and_no_look() -> None:
    def broken() -> Listing:
        raise OSError("no netlink, no /proc")

    sensor = Sensor(Config(), read=broken)
    result = sensor.identify()
    assert result is not None and not result.complete and "no netlink" in result.error
    try:
        sensor.look()
    except OSError:
        pass
    else:
        raise AssertionError("a look that cannot read says so")


def test_disabled_discovery_reads_nothing() -> None:
    readings: List[int] = []

    def read() -> Listing:
        readings.append(1)
        return Listing.of([Listener("0.0.0.0", 9100, socket.AF_INET, 1)])

    sensor = Sensor(Config(discovery=DiscoveryConfig(enabled=False)), read=read)
    assert sensor.identify() is None and readings == []
