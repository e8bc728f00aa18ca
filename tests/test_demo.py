"""The README's first command keeps working and shows the main job: it starts an exporter of its
own, which `discover` names with its version, `sync` registers, a second `sync` leaves alone, and
the `sync` after the demo stopped it turns critical; everything it started is stopped.

As root the demo runs in a network namespace of its own (`unshare --net`, with a veth pair both
ends inside, one with a TEST-NET-2 address and the default route), so it sees none of this
host's exporters and its exporter listens on an address nothing outside can reach; otherwise
on the host.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import List

ROOT = Path(__file__).resolve().parent.parent
ADDRESS = "198.51.100.10"  # TEST-NET-2, on one end of the namespace's veth pair
NAMESPACE = (
    "ip link set lo up && ip link add demo0 type veth peer name demo1 && "
    f"ip addr add {ADDRESS}/24 dev demo0 && ip link set demo1 up && ip link set demo0 up && "
    'ip route add default dev demo0 && exec "$0" -m tests.demo'
)


def demo_command() -> List[str]:
    if os.geteuid() == 0 and shutil.which("unshare") and shutil.which("ip"):
        return ["unshare", "--net", "sh", "-c", NAMESPACE, sys.executable]
    return [sys.executable, "-m", "tests.demo"]


def test_demo_registers_this_host_and_second_sync_is_a_no_op() -> None:
    result = subprocess.run(
        demo_command(),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    assert "Applied:" in out
    assert "In sync" in out
    assert '"managed-by": "regagent"' in out
    assert "Emulator stopped." in out

    started = re.search(r"Demo exporter: demo_exporter 1\.0\.0 on (\S+):(\d+) \(pid (\d+)\)", out)
    assert started is not None, out
    address, port, pid = started.group(1), started.group(2), int(started.group(3))
    if demo_command()[0] == "unshare":
        assert address == ADDRESS
    sid = f"demo-exporter-{port}"
    # discover names it by its build_info, with its version
    assert re.search(rf"demo_exporter 1\.0\.0 \(by build_info: .*\)\s+{sid}\n", out), out
    # sync registers it, at the address it listens on, with how it was identified
    assert f"+ register {sid}: demo-exporter at {address}:{port} tags=[demo_exporter]" in out
    assert f"{sid} {address}:{port} [passing: demo_exporter 1.0.0 serving /metrics" in out
    assert '"identified_by": "build_info"' in out
    assert '"exporter_version": "1.0.0"' in out
    # stopped, it stays registered and turns critical
    assert f"! status {sid}: passing -> critical (not listening on :{port} since" in out
    assert re.search(rf"{sid} \S+ \[critical: not listening on :{port} since ", out), out
    # and nothing it started outlives it (its pid is reaped: gone)
    assert not Path(f"/proc/{pid}").exists() or "python" not in _cmdline(pid)


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_text(errors="replace")
    except OSError:
        return ""
