"""``python -m tests.consulsim``: run the emulator until SIGTERM/SIGINT.

Prints one JSON line when every port is listening, e.g.
``{"servers": ["127.0.0.1:18500", ...], "scheme": "http", "control": "127.0.0.1:18599",
"pid": 1234}``, so a test (or a person) can start it and read where it listens.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import ssl
import sys
import threading
from typing import List, Optional

from .control import ControlServer
from .decode import DecodeError, parse_go_duration
from .emulator import Emulator
from .listener import server_tls_context
from .sim import Settings


def _duration(text: str) -> float:
    """A Go duration (``2s``, ``500ms``) or plain seconds, as seconds."""
    try:
        return float(text)
    except ValueError:
        pass
    try:
        return parse_go_duration(text) / 1e9
    except DecodeError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m tests.consulsim",
        description="Consul HTTP API emulator: N servers sharing one replicated catalog.",
    )
    parser.add_argument("--servers", type=int, default=3, help="number of servers (default 3)")
    parser.add_argument("--bind", default="127.0.0.1", help="address every port binds to")
    parser.add_argument(
        "--base-port", type=int, default=0, help="server i listens on base+i; 0 picks free ports"
    )
    parser.add_argument(
        "--control-port", type=int, default=0, help="control API port; 0 picks a free port"
    )
    parser.add_argument("--control-bind", help="address the control API binds to (default: --bind)")
    parser.add_argument("--datacenter", default="dc1")
    parser.add_argument(
        "--acl-file", help="JSON ACL configuration (see acl.py); ACLs off without it"
    )
    parser.add_argument(
        "--wait-cap",
        type=_duration,
        default=600.0,
        help="cap on a blocking query's ?wait (Consul: 10m)",
    )
    parser.add_argument(
        "--default-wait",
        type=_duration,
        default=300.0,
        help="wait when ?index is given without ?wait (Consul: 5m)",
    )
    parser.add_argument(
        "--stagger-divisor",
        type=int,
        default=16,
        help="add up to wait/N random stagger; 0 turns it off (Consul: 16)",
    )
    parser.add_argument(
        "--election-delay",
        type=_duration,
        default=2.0,
        help="time without a leader before a new one is elected",
    )
    parser.add_argument(
        "--rpc-hold",
        type=_duration,
        default=7.0,
        help="how long a request waits for a leader (Consul rpc_hold_timeout: 7s)",
    )
    parser.add_argument(
        "--ae-interval", type=_duration, default=60.0, help="agent anti-entropy period (Consul: 1m)"
    )
    parser.add_argument(
        "--txn-max-ops",
        type=int,
        default=128,
        help="operations allowed in one /v1/txn (Consul: 128 since 1.14, 64 before)",
    )
    parser.add_argument(
        "--no-txn",
        action="store_true",
        help="answer /v1/txn with 404 and an empty body, like a Consul before 0.7",
    )
    parser.add_argument(
        "--session-ttl-min",
        type=_duration,
        default=10.0,
        help="shortest session TTL accepted (Consul's session_ttl_min: 10s); tests lower it",
    )
    parser.add_argument(
        "--no-session-checks",
        action="store_true",
        help="behave like a Consul without the 'session' check type (before PR #22227): "
        "Definition.SessionName is dropped and session checks never change",
    )
    parser.add_argument(
        "--tls-cert", metavar="FILE", help="PEM server certificate: the server ports speak HTTPS"
    )
    parser.add_argument("--tls-key", metavar="FILE", help="PEM private key of --tls-cert")
    parser.add_argument(
        "--tls-client-ca",
        metavar="FILE",
        help="PEM CA that client certificates must chain to; makes them required "
        "(Consul's verify_incoming)",
    )
    return parser


def _tls_context(args: argparse.Namespace) -> Optional[ssl.SSLContext]:
    """The server ports' TLS context from the --tls-* flags; raises ValueError if unusable."""
    if not (args.tls_cert or args.tls_key or args.tls_client_ca):
        return None
    if not (args.tls_cert and args.tls_key):
        raise ValueError("--tls-cert and --tls-key go together (and --tls-client-ca needs them)")
    try:
        return server_tls_context(args.tls_cert, args.tls_key, args.tls_client_ca)
    except (OSError, ssl.SSLError) as exc:
        raise ValueError(f"cannot load the TLS files: {exc}") from None


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    if args.servers < 1:
        print("consulsim: --servers must be >= 1", file=sys.stderr)
        return 2
    try:
        tls = _tls_context(args)
    except ValueError as exc:
        print(f"consulsim: {exc}", file=sys.stderr)
        return 2
    settings = Settings(
        servers=args.servers,
        bind=args.bind,
        datacenter=args.datacenter,
        wait_cap=args.wait_cap,
        default_wait=args.default_wait,
        stagger_divisor=args.stagger_divisor,
        election_delay=args.election_delay,
        rpc_hold=args.rpc_hold,
        ae_interval=args.ae_interval,
        txn_max_ops=args.txn_max_ops,
        session_ttl_min=args.session_ttl_min,
        session_checks=not args.no_session_checks,
    )
    if args.session_ttl_min <= 0:
        print("consulsim: --session-ttl-min must be > 0", file=sys.stderr)
        return 2
    if args.txn_max_ops < 1:
        print("consulsim: --txn-max-ops must be >= 1", file=sys.stderr)
        return 2
    emulator = Emulator(settings, base_port=args.base_port, tls=tls)
    if args.no_txn:
        emulator.set_txn(False)
    if args.acl_file:
        with open(args.acl_file, encoding="utf-8") as fh:
            emulator.set_acl(json.load(fh))
    emulator.start()
    control = ControlServer((args.control_bind or args.bind, args.control_port), emulator)
    control.start()

    done = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: done.set())
    print(
        json.dumps(
            {
                "servers": emulator.addresses,
                "scheme": emulator.scheme,
                "control": control.address,
                "pid": os.getpid(),
            }
        ),
        flush=True,
    )
    done.wait()  # a signal handler runs on this thread and sets the event
    # Nothing to flush or persist: closing the ports in turn would only slow test teardown,
    # and the serving threads are daemons that end with the process.
    emulator.sim.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
