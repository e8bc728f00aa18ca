"""systemd/regagent.service: systemd's own checks pass, the sandbox scores at most 2.0, and the
settings the daemon and the packages rely on are there (see systemd/README.md for why)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Dict, List

import pytest

UNIT = Path(__file__).resolve().parent.parent / "systemd" / "regagent.service"

# The contract with the daemon, stated in systemd/README.md: it pings every WatchdogSec/2, a
# cycle ends within CYCLE_DEADLINE_S, and SIGTERM ends the process within STOP_BOUND_S.
CYCLE_DEADLINE_S = 50
STOP_BOUND_S = 20
MAX_EXPOSURE = 2.0


def systemd_analyze() -> str:
    """The systemd-analyze binary; its absence fails the test (CI installs systemd)."""
    path = shutil.which("systemd-analyze")
    assert path, "systemd-analyze is not installed (apt-get install systemd)"
    return path


def parse_unit(text: str) -> Dict[str, List[str]]:
    """`Section.Key` -> every value given, in order (keys may repeat, as SystemCallFilter=)."""
    settings: Dict[str, List[str]] = {}
    section = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            continue
        key, _, value = line.partition("=")
        settings.setdefault(f"{section}.{key.strip()}", []).append(value.strip())
    return settings


def seconds(value: str) -> float:
    """A systemd time span of the forms the unit uses: `90`, `90s`, `2min`, `500ms`."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*(ms|s|min|)", value)
    assert match, f"unexpected time span {value!r}"
    number, unit = float(match.group(1)), match.group(2)
    return number * {"ms": 0.001, "s": 1.0, "": 1.0, "min": 60.0}[unit]


@pytest.fixture(scope="module")
def unit() -> Dict[str, List[str]]:
    return parse_unit(UNIT.read_text(encoding="utf-8"))


def one(unit: Dict[str, List[str]], key: str) -> str:
    values = unit.get(f"Service.{key}", [])
    assert len(values) == 1, f"{key}= should be set exactly once, found {values}"
    return values[0]


def security_report(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [systemd_analyze(), "security", "--offline=true", "--no-pager", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def exposure(output: str) -> float:
    match = re.search(r"Overall exposure level for \S+: (\d+(?:\.\d+)?)", output)
    assert match, f"no overall exposure level in:\n{output}"
    return float(match.group(1))


def test_verify_passes(tmp_path: Path) -> None:
    # On a build machine /usr/bin/regagent and its man page are not installed, and verify
    # checks both: check a copy whose ExecStart names an existing binary, without the man
    # page check. tests/test_packaging.py verifies the installed unit as it is.
    text = UNIT.read_text(encoding="utf-8")
    assert "ExecStart=/usr/bin/regagent run\n" in text
    copy = tmp_path / "regagent.service"
    copy.write_text(text.replace("ExecStart=/usr/bin/regagent run", "ExecStart=/bin/true run"))
    result = subprocess.run(
        [systemd_analyze(), "verify", "--man=no", str(copy)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout + result.stderr == "", "verify printed warnings"


def test_security_exposure_at_most_2(capsys: pytest.CaptureFixture[str]) -> None:
    result = security_report(UNIT)
    assert result.returncode == 0, result.stderr
    score = exposure(result.stdout)
    with capsys.disabled():  # visible in CI output even with -q
        print(f"\nsystemd-analyze security --offline=true regagent.service: {score}")
    assert score <= MAX_EXPOSURE, result.stdout


def test_security_report_credits_the_sandbox() -> None:
    # The settings that carry the score, as systemd-analyze itself reads them.
    lines = security_report(UNIT).stdout.splitlines()
    passed = {line.split()[1] for line in lines if line.startswith("✓")}
    for name in (
        "NoNewPrivileges=",
        "User=/DynamicUser=",
        "ProtectSystem=",
        "ProtectHome=",
        "ProtectProc=",
        "PrivateTmp=",
        "PrivateDevices=",
        "ProtectKernelTunables=",
        "ProtectKernelModules=",
        "ProtectControlGroups=",
        "MemoryDenyWriteExecute=",
        "SystemCallArchitectures=",
        "CapabilityBoundingSet=~CAP_SYS_ADMIN",
        "CapabilityBoundingSet=~CAP_SYS_PTRACE",
        "RestrictAddressFamilies=~AF_PACKET",
        "UMask=",
    ):
        assert name in passed, f"{name} not credited by systemd-analyze security"


def test_notify_watchdog_and_reload(unit: Dict[str, List[str]]) -> None:
    assert one(unit, "Type") == "notify"
    assert one(unit, "NotifyAccess") == "main"
    assert one(unit, "ExecStart") == "/usr/bin/regagent run"
    # Debian 12's systemd 252 has no Type=notify-reload: reload is SIGHUP to the main process.
    assert one(unit, "ExecReload") == "/bin/kill -HUP $MAINPID"
    assert one(unit, "Restart") == "on-failure"
    # An invalid configuration (exit 2) is not retried in a loop.
    assert one(unit, "RestartPreventExitStatus") == "2"


def test_timeouts_leave_room_for_the_daemon(unit: Dict[str, List[str]]) -> None:
    watchdog = seconds(one(unit, "WatchdogSec"))
    # Pings every watchdog/2; the longest gap between two is a ping interval plus a cycle.
    assert watchdog / 2 + CYCLE_DEADLINE_S < watchdog, "a cycle could outlast the watchdog"
    # One full failover pass over three black-holed servers (connect 2 s + read 10 s each).
    assert CYCLE_DEADLINE_S >= 3 * (2 + 10)
    assert seconds(one(unit, "TimeoutStopSec")) >= STOP_BOUND_S + 10
    assert seconds(one(unit, "TimeoutStartSec")) > CYCLE_DEADLINE_S


def test_static_user_and_state_dir(unit: Dict[str, List[str]]) -> None:
    assert one(unit, "User") == "regagent"
    assert one(unit, "Group") == "regagent"
    # A static user made by the package: the state must keep one owner across restarts.
    assert "Service.DynamicUser" not in unit
    assert one(unit, "StateDirectory") == "regagent"
    assert one(unit, "StateDirectoryMode") == "0750"


def test_sandbox_keeps_what_discovery_needs(unit: Dict[str, List[str]]) -> None:
    families = one(unit, "RestrictAddressFamilies").split()
    # netlink sock_diag lists the LISTEN sockets; INET for Consul and the exporter probes.
    assert sorted(families) == ["AF_INET", "AF_INET6", "AF_NETLINK", "AF_UNIX"]
    # Exporters and Consul are on the host network and at addresses known only at run time.
    assert "Service.PrivateNetwork" not in unit
    assert "Service.IPAddressDeny" not in unit
    # psutil and prometheus-client read /proc/stat: ProcSubset=pid would break both.
    assert "Service.ProcSubset" not in unit
    # A unit with PrivateUsers=yes fails to start where user namespaces are disabled.
    assert "Service.PrivateUsers" not in unit
    assert one(unit, "ProtectProc") == "invisible"
    assert one(unit, "CapabilityBoundingSet") == ""
    assert one(unit, "NoNewPrivileges") == "yes"
    assert one(unit, "ProtectSystem") == "strict"
