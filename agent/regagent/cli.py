"""Command line: parses arguments, runs one command, turns errors into one line + exit code.

Exit codes: 0 success (or in sync); 1 runtime error (Consul unreachable or refused);
2 invalid configuration or usage; `sync --dry-run --detailed-exitcode` also exits 2 when the
plan has changes.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import asdict, replace
from typing import TYPE_CHECKING, Any, Callable, Dict, Optional, Sequence, TextIO

import structlog
import yaml

from regagent import __version__
from regagent.config import CONFIG_ENV, DEFAULT_CONFIG_PATH, Config, load_config
from regagent.config import resolve_config_path as _resolve_path
from regagent.config.show import MASK, effective_config
from regagent.consul.pool import ServerPool
from regagent.credentials import load_token
from regagent.errors import ConfigError, RegagentError
from regagent.logs import configure_logging

if TYPE_CHECKING:
    from regagent.engine import IntentSource

log = structlog.get_logger(__name__)

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_CHANGES = 0, 1, 2, 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="regagent",
        description="Registers this host's Prometheus exporters in Consul and keeps them true.",
        epilog=f"Configuration: -c PATH, else ${CONFIG_ENV}, else {DEFAULT_CONFIG_PATH}. "
        "Exit codes: 0 ok, 1 runtime error, 2 bad configuration or usage.",
    )
    parser.add_argument("--version", action="version", version=f"regagent {__version__}")
    _add_common_options(parser, argparse.SUPPRESS)
    # The same options after the command too: `regagent sync -c x` works like `regagent -c x sync`.
    common = argparse.ArgumentParser(add_help=False)
    _add_common_options(common, argparse.SUPPRESS)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True

    check = commands.add_parser(
        parents=[common],
        name="check-config",
        help="validate and print the effective config",
        description="Validates the configuration and prints the merged, "
        "effective result with secrets masked. Exit 2 if invalid.",
    )
    check.add_argument("--format", choices=("yaml", "json"), default="yaml")

    sync = commands.add_parser(
        parents=[common],
        name="sync",
        help="run one sync cycle (or plan it with --dry-run)",
        description="Discovers services, reads this node's registrations "
        "from Consul, and writes only what differs.",
    )
    sync.add_argument("--dry-run", action="store_true", help="print the plan, write nothing")
    sync.add_argument("--format", choices=("text", "json"), default="text")
    sync.add_argument(
        "--detailed-exitcode",
        action="store_true",
        help="with --dry-run: exit 2 when there are changes to make",
    )

    discover = commands.add_parser(
        parents=[common],
        name="discover",
        help="show the exporters found on this host",
        description="Lists listening sockets, how each was identified "
        "and what would be registered. Needs no Consul.",
    )
    discover.add_argument("--format", choices=("text", "json"), default="text")

    status = commands.add_parser(
        parents=[common],
        name="status",
        help="what Consul holds for this node, per server",
        description="Shows this node's registrations and check states "
        "as Consul sees them, and the state of each configured server.",
    )
    status.add_argument("--format", choices=("text", "json"), default="text")

    dereg = commands.add_parser(
        parents=[common],
        name="deregister",
        help="remove this node's regagent registrations",
        description="Removes every regagent-owned service of this node, "
        "and the node itself when nothing else is registered on it.",
    )
    dereg.add_argument("--yes", action="store_true", help="do not ask for confirmation")

    commands.add_parser(
        parents=[common],
        name="run",
        help="run the daemon loop until SIGTERM/SIGINT",
        description="Syncs every sync.interval (+/- sync.jitter). Errors are "
        "logged and retried; the daemon keeps running with every server down.",
    )
    return parser


def _add_common_options(parser: argparse.ArgumentParser, default: Any) -> None:
    parser.add_argument(
        "-c",
        "--config",
        metavar="PATH",
        default=default,
        help="YAML file, or directory whose *.yaml files merge in name order",
    )
    parser.add_argument(
        "--log-level",
        choices=("debug", "info", "warning", "error"),
        default=default,
        help="log level (default: log.level for run, warning for other commands)",
    )


def intent_source(config: Config) -> IntentSource:
    """Discovery plus static services, as the sync engine consumes them."""
    from regagent.discovery.runner import desired_intents

    return lambda address, actual, persist: desired_intents(
        config, address, actual=actual, persist=persist
    )


def _pool(config: Config) -> ServerPool:
    """The servers, or in agent mode only the local agent (which forwards to them)."""
    consul = config.consul
    if consul.mode == "agent":
        consul = replace(consul, servers=(consul.agent_address,))
    return ServerPool(consul, load_token(config.consul))


def cmd_check_config(config: Config, args: argparse.Namespace, out: TextIO) -> int:
    plain = effective_config(config)
    if config.consul.token_file:
        plain["consul"]["token"] = f"{MASK} (from {config.consul.token_file})"
    elif not config.consul.token and os.environ.get("CONSUL_HTTP_TOKEN"):
        plain["consul"]["token"] = f"{MASK} (from CONSUL_HTTP_TOKEN)"
    if args.format == "json":
        out.write(json.dumps(plain, indent=2) + "\n")
    else:
        out.write(yaml.safe_dump(plain, sort_keys=False, default_flow_style=False))
    return EXIT_OK


def cmd_sync(config: Config, args: argparse.Namespace, out: TextIO) -> int:
    from regagent.engine import SyncEngine
    from regagent.render.sync import cycle_json, cycle_text

    engine = SyncEngine(config, _pool(config), intent_source(config))
    result = engine.cycle(dry_run=args.dry_run)
    if args.format == "json":
        out.write(json.dumps(cycle_json(result, args.dry_run), indent=2) + "\n")
    else:
        out.write("".join(line + "\n" for line in cycle_text(result, args.dry_run)))
    if result.error is not None:
        print(f"regagent: {result.error}", file=sys.stderr)
        return EXIT_ERROR
    if args.dry_run and args.detailed_exitcode and result.plan and not result.plan.empty:
        return EXIT_CHANGES
    return EXIT_OK


def cmd_discover(config: Config, args: argparse.Namespace, out: TextIO) -> int:
    from regagent.engine import resolve_node_address
    from regagent.render.discover import discover_command

    try:
        address = resolve_node_address(config, config.consul.servers[0])
    except RegagentError as exc:  # discover needs no Consul: say so, and carry on
        print(f"regagent: {exc}; showing addresses as 127.0.0.1", file=sys.stderr)
        address = "127.0.0.1"
    return discover_command(config, address, args.format, out)


def cmd_status(config: Config, args: argparse.Namespace, out: TextIO) -> int:
    from regagent.consul.agent import read_agent_actual
    from regagent.consul.catalog import read_actual
    from regagent.engine import node_name
    from regagent.model import service_json

    pool = _pool(config)
    servers = [asdict(report) for report in pool.survey()]
    report: Dict[str, Any] = {
        "node": node_name(config),
        "servers": servers,
        "registered": None,
        "error": None,
    }
    try:
        if config.consul.mode == "agent":
            actual = read_agent_actual(pool)
            report["node"] = actual.node.name if actual.node else report["node"]
        else:
            actual = read_actual(pool, node_name(config))
    except RegagentError as exc:
        report["error"] = str(exc)
    else:
        checks = {c.service_id: c for c in actual.checks}
        report["registered"] = actual.node is not None
        report["services"] = [
            {
                **service_json(s),
                "managed": s.managed,
                "check": None
                if s.id not in checks
                else {"status": checks[s.id].status, "output": checks[s.id].output},
            }
            for s in actual.services
        ]
    if args.format == "json":
        out.write(json.dumps(report, indent=2) + "\n")
    else:
        out.write(_status_text(report))
    return EXIT_ERROR if report["error"] else EXIT_OK


def _status_text(report: Dict[str, Any]) -> str:
    lines = ["Servers:"]
    for s in report["servers"]:
        if s["reachable"]:
            leader = f"leader {s['leader']}" if s["leader"] else "NO LEADER"
            lines.append(f"  {s['server']}: reachable, {leader} ({s['latency_ms']} ms)")
        else:
            lines.append(f"  {s['server']}: unreachable ({s['error']})")
    if report["error"]:
        lines.append(f"Node {report['node']}: unknown ({report['error']})")
    elif not report["registered"]:
        lines.append(f"Node {report['node']}: not registered")
    else:
        lines.append(f"Node {report['node']}: {len(report['services'])} service(s)")
        for s in report["services"]:
            owner = "" if s["managed"] else " (not managed by regagent)"
            check = s["check"]
            state = f"{check['status']}: {check['output']}" if check else "no check"
            lines.append(f"  {s['id']} {s['address']}:{s['port']} [{state}]{owner}")
    return "".join(line + "\n" for line in lines)


def cmd_deregister(config: Config, args: argparse.Namespace, out: TextIO) -> int:
    from regagent.engine import deregister_owned, node_name

    if not args.yes:
        if not sys.stdin.isatty():
            print(
                "regagent: refusing to deregister without --yes (no terminal to confirm on)",
                file=sys.stderr,
            )
            return EXIT_USAGE
        try:
            answer = input(
                f"Remove every regagent registration of node {node_name(config)}? [y/N] "
            )
        except EOFError:  # Ctrl-D: no
            answer = ""
        if answer.strip().lower() not in ("y", "yes"):
            print("Nothing removed.", file=out)
            return EXIT_OK
    removed = deregister_owned(config, _pool(config))
    for item in removed:
        out.write(f"- deregistered {item}\n")
    if not removed:
        out.write(f"Nothing registered by regagent for node {node_name(config)}.\n")
    return EXIT_OK


def cmd_run(config: Config, args: argparse.Namespace, out: TextIO) -> int:
    from regagent.daemon import Daemon
    from regagent.engine import SyncEngine

    daemon = Daemon(config, SyncEngine(config, _pool(config), intent_source(config)))
    daemon.install_signal_handlers()
    return daemon.run()


COMMANDS: Dict[str, Callable[[Config, argparse.Namespace, TextIO], int]] = {
    "check-config": cmd_check_config,
    "sync": cmd_sync,
    "discover": cmd_discover,
    "status": cmd_status,
    "deregister": cmd_deregister,
    "run": cmd_run,
}


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    args.config = getattr(args, "config", None)
    args.log_level = getattr(args, "log_level", None)
    configure_logging(args.log_level or "info")
    try:
        config = load_config(_resolve_path(args.config))
        # One-shot commands print their own summary and show only warnings besides (a listener
        # left out, a skipped service); the daemon logs at log.level.
        default_level = config.log.level if args.command == "run" else "warning"
        configure_logging(args.log_level or default_level, config.log.format)
        return COMMANDS[args.command](config, args, sys.stdout)
    except ConfigError as exc:
        print("regagent: invalid configuration:", file=sys.stderr)
        for problem in exc.problems:
            print(f"  {problem}", file=sys.stderr)
        return EXIT_USAGE
    except RegagentError as exc:
        print(f"regagent: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
