"""Command line: parses arguments, runs one command, turns errors into one line + exit code.

Components come from the composition root (`regagent.app.build`), imported by the commands
that talk to Consul: `discover` and `check-config` need none of it. Exit codes come from the
error classes in `regagent.errors` (0 success or in sync, 1 runtime error, 2 invalid
configuration or usage, and with `sync --dry-run --detailed-exitcode` also "there are changes to
make").

At module level this imports only what parsing needs: `main` sets the process policy first
(`process_policy`, which must precede the libraries it concerns), and each command imports what
it uses, so that `check-config` and `discover` load no Consul client and `run` nothing it does
not run (bench/footprint.py).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import time
import types
from dataclasses import asdict
from typing import TYPE_CHECKING, Any, Callable, Dict, Optional, Sequence, TextIO

from regagent import __version__
from regagent.errors import (
    EXIT_INTERRUPTED,
    EXIT_OK,
    ChangesPending,
    ConfigError,
    RegagentError,
    UsageError,
)

if TYPE_CHECKING:
    from regagent.app import App
    from regagent.config import Config
    from regagent.discovery.service import Discovery
    from regagent.identity import Writer
    from regagent.maintenance.store import MaintenanceStore
    from regagent.maintenance.window import Window
    from regagent.model import NodeCheck


def build_parser() -> argparse.ArgumentParser:
    from regagent.config import CONFIG_ENV, DEFAULT_CONFIG_PATH

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
        help="with --dry-run: exit 2 when there are changes to make or services are skipped",
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

    _add_maint_parser(commands, common)

    commands.add_parser(
        parents=[common],
        name="run",
        help="run the daemon loop until SIGTERM/SIGINT",
        description="Syncs every sync.interval (+/- sync.jitter). Errors are "
        "logged and retried; the daemon keeps running with every server down.",
    )
    return parser


MAINT_EPILOG = (
    "The window is kept in the state directory (sync.state_dir/maintenance.json), so it "
    "survives a restart of the daemon or of the host; the daemon ends it in Consul when it "
    "expires, also if it was down at that moment. Exit codes: 0 ok, 1 runtime error (the "
    "window is recorded but Consul could not be told, or the state directory is unusable), "
    "2 bad usage (duration, reason)."
)


def _add_maint_parser(commands: Any, common: argparse.ArgumentParser) -> None:
    """`regagent maint start|stop|status`."""
    maint = commands.add_parser(
        parents=[common],
        name="maint",
        help="declare this host in maintenance for a while (planned reboot)",
        description="Marks this node in Consul the way `consul maint` does (check "
        "_node_maintenance, critical, Notes = the reason) for a limited time, so a planned "
        "reboot pages nobody; when the window ends the mark goes and a host that is still "
        "down pages again.",
        epilog=MAINT_EPILOG,
    )
    actions = maint.add_subparsers(dest="maint_action", metavar="ACTION")
    actions.required = True
    start = actions.add_parser(
        parents=[common],
        name="start",
        help="start (or replace) a maintenance window",
        description="Records a window of --for from now with --reason, and marks the node in "
        "Consul at once (one sync cycle, as `regagent sync`).",
        epilog=MAINT_EPILOG,
    )
    start.add_argument(
        "--for",
        dest="length",
        metavar="DURATION",
        required=True,
        help="how long: 30m, 2h, 1d (at least 1s, at most 7d)",
    )
    start.add_argument(
        "--reason",
        metavar="TEXT",
        required=True,
        help="why, shown in Consul (the check's Notes) and by `maint status`; one line of "
        "printable text, at most 256 characters",
    )
    actions.add_parser(
        parents=[common],
        name="stop",
        help="end the maintenance window now",
        description="Ends the running window and removes the mark from Consul at once.",
        epilog=MAINT_EPILOG,
    )
    status = actions.add_parser(
        parents=[common],
        name="status",
        help="the window: reason, since, until, remaining; and whether Consul shows it",
        description="Prints the recorded window and whether this node holds the "
        "_node_maintenance check in Consul. Exit 1 when Consul cannot be asked.",
        epilog=MAINT_EPILOG,
    )
    status.add_argument("--format", choices=("text", "json"), default="text")


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


def cmd_check_config(config: Config, args: argparse.Namespace, out: TextIO) -> int:
    import yaml

    from regagent.config.show import MASK, effective_config

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
    from regagent.app import build
    from regagent.render.sync import cycle_json, cycle_text

    report = build(config, writer=_writer(args)).engine.cycle(dry_run=args.dry_run)
    if args.format == "json":
        out.write(json.dumps(cycle_json(report, args.dry_run), indent=2) + "\n")
    else:
        out.write("".join(line + "\n" for line in cycle_text(report, args.dry_run)))
    if report.error is not None:
        print(f"regagent: {report.error}", file=sys.stderr)
        return report.error.exit_code
    if args.dry_run and args.detailed_exitcode and report.plan and not report.plan.in_sync:
        return ChangesPending.exit_code  # changes to make, or services skipped
    return EXIT_OK


def cmd_discover(config: Config, args: argparse.Namespace, out: TextIO) -> int:
    from regagent.discovery.service import Discovery
    from regagent.identity import NodeIdentity

    # Only what discover uses: the identity (for the node address) and discovery; no Consul
    # client, nor the modules one needs.
    identity = NodeIdentity(config.node, state_dir=config.sync.state_dir, writer=_writer(args))
    discovery = Discovery(config)
    try:
        address = identity.address(config.consul.servers[0], keep=False)
    except RegagentError as exc:  # discover needs no Consul: say so, and carry on
        print(f"regagent: {exc}; showing addresses as 127.0.0.1", file=sys.stderr)
        address = "127.0.0.1"
    return discover_command(address, args.format, out, discovery=discovery)


def discover_command(
    node_address: str,
    fmt: str,
    out: TextIO,
    *,
    discovery: Discovery,
    now: Optional[float] = None,
) -> int:
    """Prints the discovery report as `text` or `json`; 1 when listeners could not be read.
    The state file is read (vanished exporters still kept are shown) but never written."""
    from regagent.render.discover import report_json, report_text

    result, wanted = discovery.examine(node_address, now)
    if fmt == "json":
        out.write(json.dumps(report_json(node_address, result, wanted), indent=2) + "\n")
    else:
        out.write("".join(line + "\n" for line in report_text(node_address, result, wanted)))
    incomplete = result is not None and not result.complete
    return RegagentError.exit_code if incomplete else EXIT_OK


def cmd_status(config: Config, args: argparse.Namespace, out: TextIO) -> int:
    from regagent.app import build
    from regagent.render.status import status_report, status_text

    app = build(config, writer=_writer(args))
    servers = [asdict(report) for report in app.pool.survey()]
    try:
        (actual, _), error = app.registrar.read(), None
    except RegagentError as exc:
        actual, error = None, str(exc)
    report = status_report(app.identity.name, servers, actual, error)
    if args.format == "json":
        out.write(json.dumps(report, indent=2) + "\n")
    else:
        out.write(status_text(report))
    return RegagentError.exit_code if error else EXIT_OK


def cmd_deregister(config: Config, args: argparse.Namespace, out: TextIO) -> int:
    from regagent.app import build

    app = build(config, writer=_writer(args))
    node = app.identity.name
    if not args.yes:
        if not sys.stdin.isatty():
            raise UsageError("refusing to deregister without --yes (no terminal to confirm on)")
        try:
            answer = input(f"Remove every regagent registration of node {node}? [y/N] ")
        except EOFError:  # Ctrl-D: no
            answer = ""
        if answer.strip().lower() not in ("y", "yes"):
            print("Nothing removed.", file=out)
            return EXIT_OK
    removed = app.engine.deregister_owned()
    if not app.identity.beside_daemon():  # the running daemon owns the state directory
        app.discovery.forget(removed)  # deregistered stays deregistered
    for item in removed:
        out.write(f"- deregistered {item}\n")
    if not removed:
        out.write(f"Nothing registered by regagent for node {node}.\n")
    return EXIT_OK


def cmd_run(config: Config, args: argparse.Namespace, out: TextIO) -> int:
    from regagent.app import build, daemon
    from regagent.config import resolve_config_path
    from regagent.logs import configure_logging

    def reconfigure_logging(new: Config) -> None:  # --log-level keeps winning after a reload
        configure_logging(args.log_level or new.log.level, new.log.format)

    app = build(config, writer=_writer(args, daemon=True))
    service = daemon(app, resolve_config_path(args.config), on_reload=reconfigure_logging)
    service.install_signal_handlers()
    return service.run()


def cmd_maint(config: Config, args: argparse.Namespace, out: TextIO) -> int:
    """`maint start|stop|status`: the window lives in the state directory; start and stop
    then run one sync cycle, which writes or removes the node's maintenance check."""
    from regagent.app import build
    from regagent.maintenance.store import MaintenanceStore
    from regagent.maintenance.window import WindowError, new_window, window_length

    now = time.time()
    store = MaintenanceStore(config.sync.state_dir)
    if args.maint_action == "start":  # usage first: nothing is built for a typo
        try:
            window = new_window(args.reason, window_length(args.length), now)
        except WindowError as exc:
            raise UsageError(str(exc)) from None
    app = build(config, writer=_writer(args))
    if args.maint_action == "status":
        return _maint_status(app, store, args.format, now, out)
    if args.maint_action == "start":
        _maint_start(app, store, window, now, out)
    else:
        _maint_stop(store, now, out)
    if config.consul.mode == "agent":  # the local agent owns its node and its checks
        print(
            "regagent: consul.mode is agent: the local Consul agent owns this node's checks, so "
            "regagent does not mark it; run `consul maint -enable -reason ...` (or `-disable`) "
            "there too. The window and its metric are kept here.",
            file=sys.stderr,
        )
        return EXIT_OK
    return _maint_sync(app, out, "marked" if args.maint_action == "start" else "cleared")


def _maint_start(
    app: App, store: MaintenanceStore, window: Window, now: float, out: TextIO
) -> None:
    from regagent.maintenance.store import MaintenanceStateError
    from regagent.render.maintenance import started_text

    try:
        previous = store.load()
    except MaintenanceStateError:  # replaced by this record
        previous = None
    store.save(window)  # before Consul: the daemon never sees the check without the file
    replaced = previous is not None and previous.active(now)
    out.write(started_text(app.identity.name, window, replaced))
    if app.config.telemetry.listen:
        out.write(
            "Prometheus learns the window at its next scrape of this agent "
            f"({app.config.telemetry.listen}): allow one scrape interval before the reboot.\n"
        )
    else:
        out.write(
            "Note: telemetry.listen is off, so Prometheus cannot see the window's end "
            "(regagent_maintenance_ends_timestamp_seconds); alert rules that read it will page.\n"
        )


def _maint_stop(store: MaintenanceStore, now: float, out: TextIO) -> None:
    from regagent.maintenance.store import MaintenanceStateError

    try:
        window = store.load()
    except MaintenanceStateError as exc:
        print(f"regagent: {exc}; removed", file=sys.stderr)
        store.remove()
        window = None
    if window is not None and window.active(now):
        store.save(window.stop(now))
        out.write("Maintenance window stopped.\n")
    else:
        out.write("No maintenance window was running.\n")


def _maint_sync(app: App, out: TextIO, done: str) -> int:
    """One sync cycle, which writes (or removes) the node's maintenance check."""
    report = app.engine.cycle()
    if report.error is not None:
        print(
            "regagent: the window is recorded on this host, but Consul was not updated: "
            f"{report.error}. The daemon (regagent run) updates it at its next cycle that "
            "reaches a server; or run this command again.",
            file=sys.stderr,
        )
        return report.error.exit_code
    out.write(f"Consul: node {app.identity.name} {done} (via {report.server}).\n")
    if not app.identity.beside_daemon():
        out.write(
            "Note: the daemon (regagent run) is not running on this host. Until it runs, "
            "nothing removes the mark from Consul when the window ends (the alert rules in "
            "deploy/ end the window on their own).\n"
        )
    return EXIT_OK


def _maint_status(app: App, store: MaintenanceStore, fmt: str, now: float, out: TextIO) -> int:
    from regagent.maintenance.window import NODE_MAINTENANCE_CHECK_ID
    from regagent.render.maintenance import window_report, window_text

    window = store.load()
    in_consul: Optional[NodeCheck] = None
    error: Optional[str] = None
    try:
        actual, _ = app.registrar.read()
        found = [c for c in actual.node_checks if c.check_id == NODE_MAINTENANCE_CHECK_ID]
        in_consul = found[0] if found else None
    except RegagentError as exc:
        error = str(exc)
    report = window_report(
        app.identity.name,
        window,
        now,
        check=in_consul,
        daemon_running=app.identity.beside_daemon(),
        error=error,
    )
    if fmt == "json":
        out.write(json.dumps(report, indent=2) + "\n")
    else:
        out.write(window_text(report))
    return RegagentError.exit_code if error else EXIT_OK


def _writer(args: argparse.Namespace, *, daemon: bool = False) -> Writer:
    """Which configuration runs, and whether as the daemon: renames are judged per writer."""
    from regagent.config import resolve_config_path
    from regagent.identity import Writer

    return Writer.of(resolve_config_path(args.config), daemon=daemon)


COMMANDS: Dict[str, Callable[[Config, argparse.Namespace, TextIO], int]] = {
    "check-config": cmd_check_config,
    "sync": cmd_sync,
    "discover": cmd_discover,
    "status": cmd_status,
    "deregister": cmd_deregister,
    "maint": cmd_maint,
    "run": cmd_run,
}


def without_created_series() -> None:
    """No `*_created` series beside each counter and histogram: they double what Prometheus
    stores for ten thousand agents and say nothing `process_start_time_seconds` would not.
    prometheus-client reads this variable when it is imported (0.16, Debian 12's, has no other
    switch; later versions also honour it), which only a command that serves metrics does,
    after this; a value already set wins."""
    os.environ.setdefault("PROMETHEUS_DISABLE_CREATED_SERIES", "true")


# structlog imports these, when installed, for what regagent never does: rich draws tracebacks
# at a terminal (4 MB, a tenth of the daemon's memory), colorama colours them (regagent's plain
# rendering has no colours: 0.5 MB with ctypes), greenlet keeps structlog's deprecated
# thread-local context per greenlet (1.1 MB with libstdc++). Measured by bench/footprint.py.
STRUCTLOG_EXTRAS = ("rich", "colorama", "greenlet")


def without_structlog_extras() -> None:
    """structlog's optional extras stay unimported: an import of one now fails as if it were
    not installed, and structlog falls back to what regagent uses anyway (tracebacks as text,
    no colours, `threading.local`)."""
    for name in STRUCTLOG_EXTRAS:
        sys.modules.setdefault(name, None)  # type: ignore[arg-type]


class _ImportedOnFirstUse(types.ModuleType):
    """A module's stand-in in `sys.modules`: the first attribute looked up on it imports the
    module itself, which takes the stand-in's place, and answers from it."""

    def __getattr__(self, name: str) -> Any:
        if sys.modules.get(self.__name__) is self:
            del sys.modules[self.__name__]
        return getattr(importlib.import_module(self.__name__), name)


def asyncio_when_used() -> None:
    """structlog imports asyncio only for its async logging methods (`ainfo`, ...), which
    regagent never calls: 1.6 MB of the daemon's RSS (bench/footprint.py). Until something uses
    it, `import asyncio` gives a stand-in that imports the real module on first use, so code
    that does use asyncio works as before."""
    if "asyncio" not in sys.modules:
        sys.modules["asyncio"] = _ImportedOnFirstUse("asyncio")


def process_policy() -> None:
    """What holds for the whole process, set once, before any library it concerns is
    imported."""
    without_created_series()
    without_structlog_extras()
    asyncio_when_used()


def main(argv: Optional[Sequence[str]] = None) -> int:
    process_policy()
    from regagent.config import load_config, resolve_config_path
    from regagent.logs import configure_logging, journal_prefix
    from regagent.stderr_guard import install as install_stderr_guard

    args = build_parser().parse_args(argv)
    args.config = getattr(args, "config", None)
    args.log_level = getattr(args, "log_level", None)
    install_stderr_guard()  # whatever Python would print to stderr becomes one log line
    configure_logging(args.log_level or "info")
    try:
        config = load_config(resolve_config_path(args.config))
        # One-shot commands print their own summary and show only warnings besides (a listener
        # left out, a skipped service); the daemon logs at log.level.
        default_level = config.log.level if args.command == "run" else "warning"
        configure_logging(args.log_level or default_level, config.log.format)
        return COMMANDS[args.command](config, args, sys.stdout)
    except ConfigError as exc:
        error = journal_prefix("error")  # under systemd: at error priority in the journal
        print(f"{error}regagent: invalid configuration:", file=sys.stderr)
        for problem in exc.problems:
            print(f"{error}  {problem}", file=sys.stderr)
        return exc.exit_code
    except RegagentError as exc:
        print(f"{journal_prefix('error')}regagent: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
