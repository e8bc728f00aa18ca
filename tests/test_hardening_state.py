"""The discovery state file is trusted only if regagent wrote it, and read with bounds.

Before: a FIFO at `<state_dir>/discovered.json` hung regagent, `/dev/zero` ended in
MemoryError, a deeply nested file crashed every cycle, and a planted entry registered any
address and metrics path (which Prometheus then scraped). Now: a state directory or file
owned by another user or writable by group/others is not read (one warning); the file is
opened without following symlinks and without blocking, must be a regular file of at most
4 MiB, and every entry is checked as strictly as configuration. Anything else is "corrupt":
one warning, start empty, rewrite it. Real files, real modes, a real unprivileged writer.
"""

from __future__ import annotations

import json
import os
import pwd
import random
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Dict, Iterator

import pytest
from structlog.testing import capture_logs

from helpers.discovery import finding, seen_entry
from helpers.fakes import FakeHost, full_pass
from regagent.config.model import Config, DiscoveryConfig, SyncConfig
from regagent.discovery.identify import DiscoveryResult
from regagent.discovery.intents import build_intents
from regagent.discovery.seen import (
    MAX_STATE_BYTES,
    SeenService,
    encode_state,
    load_state,
    save_state,
    state_path,
)
from regagent.statedir import Warnings

T0 = 1_800_000_000.0  # 2027-01-15T08:00:00Z
NODE = "192.0.2.10"
PORT = 9100
SID = f"node-exporter-{PORT}"
needs_root = pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("setpriv"), reason="needs root and setpriv"
)


def good_document() -> Dict[str, Any]:
    doc: Dict[str, Any] = json.loads(encode_state({SID: seen_entry()}))
    return doc


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "state"
    directory.mkdir(mode=0o750)
    return directory


def load_with_logs(path: Path) -> tuple[Dict[str, SeenService], list[Dict[str, Any]]]:
    with capture_logs() as logs:
        entries = load_state(str(path))
    return entries, logs


def events(logs: list[Dict[str, Any]]) -> list[str]:
    return [f"{e['log_level']}:{e['event']}" for e in logs]


# -- trust ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", [0o770, 0o757, 0o1777])
def test_directory_writable_by_others_is_neither_read_nor_written(
    state_dir: Path, mode: int
) -> None:
    path = state_dir / "discovered.json"
    assert save_state(str(path), {SID: seen_entry()})
    before = path.read_bytes()
    state_dir.chmod(mode)

    warnings = Warnings()  # one Discovery's, for its life
    with capture_logs() as logs:
        assert load_state(str(path), warnings) == {}
        assert load_state(str(path), warnings) == {}  # warned once, not every cycle
        assert not save_state(str(path), {}, warnings)

    assert events(logs) == ["warning:discovery_state_untrusted"]
    assert f"run: chmod go-w {state_dir}" in logs[0]["error"]
    assert path.read_bytes() == before  # not rewritten into a directory others control


@pytest.mark.parametrize("mode", [0o620, 0o602, 0o666])
def test_file_writable_by_others_is_not_read_and_is_replaced(state_dir: Path, mode: int) -> None:
    path = state_dir / "discovered.json"
    assert save_state(str(path), {SID: seen_entry()})
    path.chmod(mode)

    entries, logs = load_with_logs(path)

    assert entries == {}
    assert events(logs) == ["warning:discovery_state_untrusted"]
    assert "run: chmod go-w" in logs[0]["error"]
    assert save_state(str(path), {SID: seen_entry()})  # the rewrite is regagent's own again
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert list(load_state(str(path))) == [SID]


@needs_root
def test_file_owned_by_another_user_is_not_read(state_dir: Path) -> None:
    path = state_dir / "discovered.json"
    assert save_state(str(path), {SID: seen_entry()})
    nobody = pwd.getpwnam("nobody")
    os.chown(path, nobody.pw_uid, nobody.pw_gid)

    entries, logs = load_with_logs(path)

    assert entries == {}
    assert events(logs) == ["warning:discovery_state_untrusted"]
    assert f"is owned by uid {nobody.pw_uid}" in logs[0]["error"]


@pytest.fixture
def nobody_dir() -> Iterator[Path]:
    """A state directory that belongs to user nobody, reachable by nobody (not under tmp_path,
    whose parents are private to root)."""
    top = Path(tempfile.mkdtemp(prefix="regagent-state-"))
    top.chmod(0o755)
    directory = top / "state"
    directory.mkdir()
    nobody = pwd.getpwnam("nobody")
    os.chown(directory, nobody.pw_uid, nobody.pw_gid)
    try:
        yield directory
    finally:
        shutil.rmtree(top)


@needs_root
def test_state_planted_by_an_unprivileged_user_is_refused(nobody_dir: Path) -> None:
    # The planted entry points Prometheus at a host of the attacker's choosing.
    doc = good_document()
    doc["services"][SID]["address"] = "203.0.113.66"
    doc["services"][SID]["meta"]["metrics_path"] = "/steal"
    path = nobody_dir / "discovered.json"
    setpriv = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]
    subprocess.run(
        [*setpriv, "/bin/sh", "-c", 'umask 077; cat > "$1"', "sh", str(path)],
        input=json.dumps(doc).encode(),
        check=True,
        timeout=30,
    )
    assert path.stat().st_uid == pwd.getpwnam("nobody").pw_uid

    entries, logs = load_with_logs(path)

    assert entries == {}
    assert events(logs) == ["warning:discovery_state_untrusted"]
    assert "state directory is owned by uid" in logs[0]["error"]
    assert not save_state(str(path), {SID: seen_entry()})


@pytest.fixture
def system_account_dir() -> Iterator[Path]:
    """A state directory as the package leaves it: owned by a system account (Debian's
    `daemon`, uid 1, stands in for `regagent`), mode 750, under a root-owned parent."""
    top = Path(tempfile.mkdtemp(prefix="regagent-state-"))
    top.chmod(0o755)
    directory = top / "state"
    directory.mkdir(mode=0o750)
    account = pwd.getpwnam("daemon")
    os.chown(directory, account.pw_uid, account.pw_gid)
    try:
        yield directory
    finally:
        shutil.rmtree(top)


@needs_root
def test_root_reads_the_daemons_state_as_the_daemons_and_hands_back_what_it_writes(
    system_account_dir: Path,
) -> None:
    # `regagent sync --dry-run` run by root on an installed host: the daemon's files are the
    # daemon's, not "owned by another user" (whose advice, chown 0, would break the daemon).
    account = pwd.getpwnam("daemon")
    path = system_account_dir / "discovered.json"
    setpriv = ["setpriv", f"--reuid={account.pw_uid}", f"--regid={account.pw_gid}"]
    subprocess.run(
        [*setpriv, "--clear-groups", "/bin/sh", "-c", 'umask 077; cat > "$1"', "sh", str(path)],
        input=encode_state({SID: seen_entry()}).encode(),
        check=True,
        timeout=30,
    )

    entries, logs = load_with_logs(path)

    assert set(entries) == {SID}
    assert logs == []
    assert save_state(str(path), {SID: replace(seen_entry(), last_seen=T0 + 7200)})
    assert path.stat().st_uid == account.pw_uid  # still the daemon's file after root's save
    assert load_with_logs(path)[0][SID].last_seen == T0 + 7200


def test_daemon_keeps_registering_with_an_untrusted_state_dir(state_dir: Path) -> None:
    state_dir.chmod(0o777)
    host = FakeHost()
    host.listen(PORT)
    config = Config(
        discovery=DiscoveryConfig(port_ranges=((PORT, PORT),)),
        sync=SyncConfig(state_dir=str(state_dir)),
    )
    discovery = host.discovery(config)

    with capture_logs() as logs:
        for step in range(3):
            (intent,) = full_pass(discovery, NODE, T0 + 30 * step)
            assert intent.service.id == SID

    assert not (state_dir / "discovered.json").exists()
    assert events(logs).count("warning:discovery_state_untrusted") == 1


# -- what is at the path -------------------------------------------------------------------------


def _symlink(state_dir: Path, tmp_path: Path) -> None:
    target = tmp_path / "elsewhere.json"
    target.write_text(json.dumps(good_document()))
    (state_dir / "discovered.json").symlink_to(target)


def _fifo(state_dir: Path, tmp_path: Path) -> None:
    os.mkfifo(state_dir / "discovered.json", 0o600)


def _dev_zero(state_dir: Path, tmp_path: Path) -> None:
    # A real character device node, as /dev/zero is: reading it never ends.
    zero = os.stat("/dev/zero").st_rdev
    os.mknod(state_dir / "discovered.json", 0o600 | stat.S_IFCHR, zero)


def _dev_zero_link(state_dir: Path, tmp_path: Path) -> None:
    (state_dir / "discovered.json").symlink_to("/dev/zero")


def _directory(state_dir: Path, tmp_path: Path) -> None:
    (state_dir / "discovered.json").mkdir()


def _too_large(state_dir: Path, tmp_path: Path) -> None:
    path = state_dir / "discovered.json"
    with path.open("wb") as handle:
        handle.write(b'{"version": 1, "services": {}, "pad": "')
        handle.write(b"x" * MAX_STATE_BYTES)
        handle.write(b'"}')
    path.chmod(0o600)


def _deeply_nested(state_dir: Path, tmp_path: Path) -> None:
    path = state_dir / "discovered.json"
    path.write_text('{"version": 1, "services": {"x": ' + "[" * 200_000 + "]" * 200_000 + "}}")
    path.chmod(0o600)


def _not_utf8(state_dir: Path, tmp_path: Path) -> None:
    path = state_dir / "discovered.json"
    path.write_bytes(b'{"version": 1, "services": {}, "x": "\xff"}')
    path.chmod(0o600)


ODD_FILES: Dict[str, Callable[[Path, Path], None]] = {
    "symlink": _symlink,
    "fifo": _fifo,
    "dev-zero-node": _dev_zero,
    "dev-zero-symlink": _dev_zero_link,
    "too-large": _too_large,
    "deeply-nested": _deeply_nested,
    "not-utf8": _not_utf8,
}


@pytest.mark.parametrize("make", list(ODD_FILES.values()), ids=list(ODD_FILES))
def test_odd_file_is_corrupt_at_once_and_replaced(
    make: Callable[[Path, Path], None], state_dir: Path, tmp_path: Path
) -> None:
    if make is _dev_zero and os.geteuid() != 0:
        pytest.skip("mknod needs root")
    make(state_dir, tmp_path)
    path = state_dir / "discovered.json"

    started = time.monotonic()
    warnings = Warnings()
    with capture_logs() as logs:
        assert load_state(str(path), warnings) == {}
        assert load_state(str(path), warnings) == {}
    elapsed = time.monotonic() - started

    assert elapsed < 5  # a FIFO used to block here forever
    assert events(logs) == ["warning:discovery_state_corrupt"]
    assert save_state(str(path), {SID: seen_entry()})
    assert path.is_file() and not path.is_symlink()
    assert list(load_state(str(path))) == [SID]
    if make is _symlink:
        assert json.loads((tmp_path / "elsewhere.json").read_text()) == good_document()


def test_a_directory_at_the_path_is_reported_not_fatal(state_dir: Path, tmp_path: Path) -> None:
    _directory(state_dir, tmp_path)
    path = state_dir / "discovered.json"

    with capture_logs() as logs:
        assert load_state(str(path)) == {}
        assert not save_state(str(path), {SID: seen_entry()})

    assert events(logs) == [
        "warning:discovery_state_corrupt",
        "warning:discovery_state_unwritable",
    ]


# -- entries are checked as strictly as configuration -------------------------------------------


def _set(*keys: str, value: Any) -> Callable[[Dict[str, Any]], None]:
    def change(entry: Dict[str, Any]) -> None:
        target = entry
        for key in keys[:-1]:
            target = target[key]
        target[keys[-1]] = value

    return change


PLANTED: Dict[str, Callable[[Dict[str, Any]], None]] = {
    "address-host-name": _set("address", value="evil.example.com"),
    "address-wildcard": _set("address", value="0.0.0.0"),
    "address-not-text": _set("address", value=["192.0.2.10"]),
    "metrics-path-user-info": _set("meta", "metrics_path", value="@evil.example:80/metrics"),
    "metrics-path-url": _set("meta", "metrics_path", value="http://evil.example/metrics"),
    "scheme-other": _set("meta", "scheme", value="gopher"),
    "name-invalid": _set("name", value="node exporter"),
    "port-zero": _set("port", value=0),
    "port-boolean": _set("port", value=True),
    "tags-not-text": _set("tags", value=[1]),
    "tag-with-escape": _set("tags", value=["\x1b[2Jx"]),
    "meta-consul-prefix": _set("meta", "consul-x", value="y"),
    "meta-value-too-long": _set("meta", "exporter_version", value="9" * 600),
    "meta-not-owned": _set("meta", "managed-by", value="someone-else"),
    "first-seen-1970": _set("first_seen", value="1970-01-01T00:00:00Z"),
    "first-after-last": _set("first_seen", value="2027-02-01T00:00:00Z"),
    "last-seen-year-9999": _set("last_seen", value="9999-12-31T23:59:59Z"),
}


@pytest.mark.parametrize("plant", list(PLANTED.values()), ids=list(PLANTED))
def test_planted_entry_makes_the_file_corrupt(
    plant: Callable[[Dict[str, Any]], None], state_dir: Path
) -> None:
    doc = good_document()
    plant(doc["services"][SID])
    path = state_dir / "discovered.json"
    path.write_text(json.dumps(doc))
    path.chmod(0o600)

    entries, logs = load_with_logs(path)

    assert entries == {}
    assert events(logs) == ["warning:discovery_state_corrupt"]


def test_entry_under_another_id_is_refused(state_dir: Path) -> None:
    doc = good_document()
    doc["services"]["billing-api-8080"] = doc["services"].pop(SID)
    path = state_dir / "discovered.json"
    path.write_text(json.dumps(doc))
    path.chmod(0o600)

    entries, logs = load_with_logs(path)

    assert entries == {}
    assert "<name>-<port>" in logs[0]["error"]


def test_valid_file_written_by_regagent_is_read(state_dir: Path) -> None:
    path = state_path(str(state_dir))
    assert save_state(path, {SID: seen_entry()})

    assert load_state(path) == {SID: seen_entry()}


def test_seen_times_in_the_future_are_clamped_and_then_expire() -> None:
    # Within 2000..2100 but after the clock: would never expire if taken as written.
    future = replace(seen_entry(), first_seen=T0 + 10**8, last_seen=T0 + 2 * 10**8)
    config = Config(sync=SyncConfig(deregister_after=3600))
    nothing = finding(port=PORT + 1, outcome="not-exporter")

    first = build_intents(config, NODE, DiscoveryResult((nothing,)), T0, previous={SID: future})
    assert (first.seen[SID].first_seen, first.seen[SID].last_seen) == (T0, T0)
    later = build_intents(
        config, NODE, DiscoveryResult((nothing,)), T0 + 3601, previous=dict(first.seen)
    )
    assert later.expired == (SID,)


def test_fifo_does_not_hang_the_real_command(state_dir: Path, tmp_path: Path) -> None:
    os.mkfifo(state_dir / "discovered.json", 0o600)
    config = tmp_path / "regagent.yaml"
    config.write_text(
        f"consul: {{servers: ['127.0.0.1:1']}}\nsync: {{state_dir: {state_dir}}}\n"
        "discovery: {port_ranges: ['1-1']}\n"
    )

    result = subprocess.run(
        [sys.executable, "-m", "regagent", "-c", str(config), "sync", "--dry-run"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert "Traceback" not in result.stderr
    assert result.returncode in (0, 1), result.stderr  # 1: no Consul server on port 1


# -- leftovers of a writer killed mid-save ------------------------------------------------------

SAVER = """
import sys
from regagent.discovery.seen import save_state
from helpers.discovery import seen_entry
entries = {f"node-exporter-{p}": seen_entry(f"node-exporter-{p}") for p in range(9100, 9400)}
print("saving", flush=True)
for n in range(10**9):  # a new content each time: every save writes a temporary
    entries.pop(f"node-exporter-{9400 + (n + 1) % 2}", None)
    entries[f"node-exporter-{9400 + n % 2}"] = seen_entry(f"node-exporter-{9400 + n % 2}")
    save_state(sys.argv[1], entries)
"""


def test_temporaries_left_by_a_kill_during_a_save_are_removed_by_a_later_save(
    state_dir: Path,
) -> None:
    path = state_dir / "discovered.json"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    for _ in range(300):  # until a kill lands between the temporary's creation and its rename
        saver = subprocess.Popen(
            [sys.executable, "-c", SAVER, str(path)], stdout=subprocess.PIPE, env=env, text=True
        )
        try:
            assert saver.stdout is not None and saver.stdout.readline() == "saving\n"
            time.sleep(random.uniform(0.01, 0.05))
        finally:
            saver.kill()  # SIGKILL: no cleanup handler runs
            saver.wait(timeout=10)
        if list(state_dir.glob(".discovered.*.tmp")):
            break
    leftovers = sorted(p.name for p in state_dir.glob(".discovered.*.tmp"))
    assert leftovers, "no kill landed mid-save in 300 tries"
    assert list(load_state(str(path))) != []  # the file itself stayed whole

    # Someone else's file of the same shape is never touched (a link, another name).
    decoy = state_dir / ".discovered.decoy.tmp"
    decoy.symlink_to(path)
    assert save_state(str(path), {SID: seen_entry()})  # a writer in flight may own a young one
    assert sorted(p.name for p in state_dir.glob(".discovered.*.tmp")) == sorted(
        [*leftovers, decoy.name]
    )

    old = time.time() - 120  # the daemon saves again later (on change, or every 10 minutes)
    for name in leftovers:
        os.utime(state_dir / name, (old, old))
    with capture_logs() as logs:
        assert save_state(str(path), {SID: seen_entry()})

    assert sorted(p.name for p in state_dir.glob(".discovered.*.tmp")) == [decoy.name]
    assert [e["event"] for e in logs] == ["state_leftovers_removed"]
    assert list(load_state(str(path))) == [SID]
