"""What Debian 12's exporters serve with their defaults, and what `regagent discover` makes of them.

Starts every `prometheus-*-exporter` package the way its unit does, inside a network namespace
(tests/real_exporters.py), then for each listener prints: port, the process as regagent sees it
(comm, exe, owner, whether the executable is root's alone), what a GET of /metrics returns
(status, content type, seconds, bytes, every `*build_info`/`*version*` sample, the first metric
families that are not Go/process/promhttp runtime), and what `regagent discover --format json`
says of it (probe_timeout 10s, max_new_per_cycle 100). Ends with the count identified / with a
version / listening, and the time of that one `discover` with all of them running.

With `--before REF` (a git revision of this repository, e.g. the main branch before a change),
the same exporters are also discovered by that revision's regagent (its `agent/` run through
PYTHONPATH), side by side in the same run: each code with the configuration above and with the
default discovery settings (probe_timeout 2s, identify_timeout 10s where it exists), alternated,
each `discover` timed.

The GETs run concurrently inside the namespace, each bounded by --get-timeout seconds; the
`discover` runs are bounded too. Everything started is stopped by pid; the namespace is deleted.

    python3 bench/real_exporters.py [--json FILE] [--get-timeout 30] [--before REF]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

from real_exporters import (  # noqa: E402
    Namespace,
    Running,
    exporters_running,
    regagent,
    skip_reason,
    write_config,
)
from regagent.discovery.processes import describe_process  # noqa: E402

RUNTIME_PREFIXES = ("go_", "process_", "promhttp_", "python_", "http_", "net_conntrack_")

# Run inside the namespace: one GET per port, all at once, each timed on its own.
GETTER = r"""
import json, sys, time, urllib.error, urllib.request
from concurrent.futures import ThreadPoolExecutor
timeout = float(sys.argv[1])
def get(port):
    start = time.monotonic()
    request = urllib.request.Request(f"http://127.0.0.1:{port}/metrics",
                                     headers={"User-Agent": "regagent-research"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as answer:
            body = answer.read(8 << 20)
            status, ctype = answer.status, answer.headers.get("Content-Type", "")
    except urllib.error.HTTPError as exc:
        body, status, ctype = exc.read(65536), exc.code, exc.headers.get("Content-Type", "")
    except Exception as exc:
        return port, {"error": f"{type(exc).__name__}: {exc}",
                      "seconds": round(time.monotonic() - start, 2)}
    return port, {"status": status, "content_type": ctype, "bytes": len(body),
                  "seconds": round(time.monotonic() - start, 2),
                  "body": body.decode("utf-8", "replace")}
ports = [int(p) for p in sys.argv[2:]]
with ThreadPoolExecutor(max_workers=max(1, len(ports))) as pool:
    print(json.dumps(dict(pool.map(get, ports))))
"""


def families(body: str) -> Dict[str, List[str]]:
    """Version-looking samples and the first non-runtime metric families of a body."""
    versions: List[str] = []
    names: List[str] = []
    for line in body.splitlines():
        if not line or line.startswith("#"):
            continue
        name = line.split("{", 1)[0].split(" ", 1)[0]
        if ("build_info" in name or "version" in name) and len(versions) < 6:
            versions.append(line[:200])
        if not name.startswith(RUNTIME_PREFIXES) and name not in names:
            names.append(name)
    return {"version_samples": versions, "families": names[:8], "family_count": [len(names)]}


def get_all(namespace: Namespace, ports: List[int], timeout: float) -> Dict[str, Any]:
    argv = namespace.argv(sys.executable, "-c", GETTER, str(timeout), *map(str, ports))
    done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout + 30, check=True)
    answers: Dict[str, Any] = json.loads(done.stdout)
    return answers


def discover(
    namespace: Namespace,
    workdir: Path,
    *,
    defaults: bool = False,
    pythonpath: Optional[str] = None,
) -> Dict[str, Any]:
    """One `regagent discover --format json` inside the namespace, timed: with the harness's
    discovery settings (probe_timeout 10s), or the defaults (`defaults`), by this checkout's
    regagent or by the one at `pythonpath`."""
    sections: Dict[str, Any] = {"discovery": {"max_new_per_cycle": 100}} if defaults else {}
    config = write_config(workdir / "regagent.yaml", [f"{namespace.host_ip}:8500"], **sections)
    start = time.monotonic()
    done = regagent(
        namespace, config, "discover", "--format", "json", timeout=300, pythonpath=pythonpath
    )
    seconds = time.monotonic() - start
    if done.returncode != 0:
        raise SystemExit(f"discover failed ({done.returncode}): {done.stderr.strip()}")
    report: Dict[str, Any] = json.loads(done.stdout)
    report["seconds"] = round(seconds, 2)
    return report


def counts(report: Dict[str, Any], ports: List[int]) -> Dict[str, Any]:
    """Identified / with a version / registered among `ports`, and the discover's time."""
    found = [item for item in report["listeners"] if item["port"] in ports]
    identified = [item for item in found if item["outcome"] == "identified"]
    return {
        "listening": len(ports),
        "identified": len(identified),
        "with_version": sum(1 for item in identified if item["version"]),
        "registered": sum(1 for item in found if item["service_id"]),
        "seconds": report["seconds"],
    }


@contextlib.contextmanager
def revision(ref: str) -> Iterator[str]:
    """The `agent/` tree of git revision `ref` in a temporary directory (its PYTHONPATH)."""
    with tempfile.TemporaryDirectory(prefix="regagent-before-") as tmp:
        archive = subprocess.run(
            ["git", "-C", str(HERE.parent), "archive", ref, "agent"],
            capture_output=True,
            check=True,
            timeout=60,
        )
        subprocess.run(["tar", "-x", "-C", tmp], input=archive.stdout, check=True, timeout=60)
        yield str(Path(tmp) / "agent")


def compare(namespace: Namespace, ports: List[int], before: str) -> List[Dict[str, Any]]:
    """Both codes, both settings, alternated, in this one run."""
    rows = []
    with revision(before) as old, tempfile.TemporaryDirectory(prefix="regagent-cmp-") as tmp:
        for defaults in (False, True):
            for code, path in ((f"before ({before})", old), ("after (this checkout)", None)):
                report = discover(namespace, Path(tmp), defaults=defaults, pythonpath=path)
                settings = "defaults" if defaults else "probe_timeout 10s"
                rows.append({"code": code, "settings": settings, **counts(report, ports)})
    return rows


def survey(running: List[Running], namespace: Namespace, timeout: float) -> Dict[str, Any]:
    ports = sorted({port for r in running for port in r.ports})
    with tempfile.TemporaryDirectory(prefix="regagent-exporters-") as workdir:
        report = discover(namespace, Path(workdir))
    answers = get_all(namespace, ports, timeout)  # after discover: its timing stays undisturbed
    listeners = {item["port"]: item for item in report["listeners"]}
    rows = []
    for r in running:
        for port in r.ports:
            info = describe_process(r.pid)
            answer = answers.get(str(port), {})
            found = listeners.get(port, {})
            rows.append(
                {
                    "package": r.launch.package,
                    "port": port,
                    "process": {
                        "name": info.name,
                        "exe": info.exe,
                        "user": info.user,
                        "exe_trusted": info.exe_trusted,
                    },
                    "get": {k: v for k, v in answer.items() if k != "body"},
                    **families(answer.get("body", "")),
                    "discover": {
                        key: found.get(key)
                        for key in (
                            "address_kind",
                            "candidate_reasons",
                            "outcome",
                            "reason",
                            "exporter",
                            "version",
                            "service_id",
                            "not_registered",
                        )
                    },
                }
            )
    identified = [row for row in rows if row["discover"]["outcome"] == "identified"]
    return {
        "rows": rows,
        "listening": len(rows),
        "identified": len(identified),
        "with_version": sum(1 for row in identified if row["discover"]["version"]),
        "registered": sum(1 for row in rows if row["discover"]["service_id"]),
        "discover_seconds": report["seconds"],
        "node_address": report["node_address"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", help="also write the whole survey to this file")
    parser.add_argument("--get-timeout", type=float, default=30.0)
    parser.add_argument("--before", help="also discover with this git revision's regagent")
    args = parser.parse_args()
    reason = skip_reason()
    if reason:
        raise SystemExit(reason)
    with exporters_running() as (namespace, started, not_started):
        listening = [r for r in started if r.ports]
        silent = {
            r.launch.package: (
                f"exited {r.proc.returncode}" if r.proc.poll() is not None else "runs, no listen"
            )
            + ": "
            + r.log_tail(160).replace("\n", " | ")
            for r in started
            if not r.ports
        }
        result = survey(listening, namespace, args.get_timeout)
        if args.before:
            ports = sorted({port for r in listening for port in r.ports})
            result["compared"] = compare(namespace, ports, args.before)
    result["not_listening"] = {**silent, **not_started}
    for row in result["rows"]:
        d, g = row["discover"], row["get"]
        print(
            f"{row['package']:36} {row['port']:5} {row['process']['name']:16} "
            f"{row['process']['user']:10} {g.get('status', g.get('error', ''))!s:>4} "
            f"{g.get('seconds', ''):>6}s {g.get('bytes', ''):>7}B  "
            f"{d['outcome'] or '-':16} {d['exporter'] or '-':22} {d['version'] or '-'}"
        )
    for package, why in result["not_listening"].items():
        print(f"{package:36} does not listen: {why[:150]}")
    print(
        f"identified {result['identified']} / listening {result['listening']}, "
        f"with version {result['with_version']}, registered {result['registered']}; "
        f"one discover: {result['discover_seconds']} s"
    )
    for row in result.get("compared", []):
        print(
            f"{row['code']:28} {row['settings']:18} identified {row['identified']} / "
            f"listening {row['listening']}, with version {row['with_version']}, "
            f"registered {row['registered']}; one discover: {row['seconds']} s"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
