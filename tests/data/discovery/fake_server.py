"""Test listeners for discovery, each run as its own process so tests can stop it by pid.

    fake_server.py exporter ADDR PORT METRIC VERSION   prometheus_client posing as an exporter
                                                       (METRIC is its *_build_info gauge name)
    fake_server.py html ADDR PORT                      a web server that is not an exporter
    fake_server.py banner ADDR PORT                    a TCP server that speaks no HTTP
    fake_server.py silent ADDR PORT                    accepts and never answers
    fake_server.py drip ADDR PORT                      answers one byte per 0.2 s, forever

Every mode exits by itself after --lifetime seconds (default 300), in case a test dies badly.
"""

from __future__ import annotations

import argparse
import http.server
import os
import socket
import socketserver
import sys
import threading
import time


class _DualStackTCPServer(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True

    def __init__(self, addr: str, port: int, handler: type) -> None:
        self.address_family = socket.AF_INET6 if ":" in addr else socket.AF_INET
        super().__init__((addr, port), handler)


class _Html(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = b"<!doctype html><html><body>hello, not metrics</body></html>"
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


class _Banner(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        self.request.sendall(b"SSH-2.0-OpenSSH_9.2 not-http\r\n")
        time.sleep(0.2)


class _Silent(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        time.sleep(30)


class _Drip(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        self.request.recv(4096)
        for _ in range(1000):
            try:
                self.request.sendall(b"H")
            except OSError:
                return
            time.sleep(0.2)


def _exporter(addr: str, port: int, metric: str, version: str) -> None:
    from prometheus_client import CollectorRegistry, Gauge, start_http_server

    registry = CollectorRegistry()
    info = Gauge(metric, "Build information", ["version", "revision"], registry=registry)
    info.labels(version=version, revision="test").set(1)
    Gauge("fake_up", "Always 1", registry=registry).set(1)
    start_http_server(port, addr=addr, registry=registry)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=("exporter", "html", "banner", "silent", "drip"))
    parser.add_argument("addr")
    parser.add_argument("port", type=int)
    parser.add_argument("extra", nargs="*")
    parser.add_argument("--lifetime", type=float, default=300.0)
    args = parser.parse_args()
    if args.mode == "exporter":
        _exporter(args.addr, args.port, args.extra[0], args.extra[1])
    else:
        handler = {"html": _Html, "banner": _Banner, "silent": _Silent, "drip": _Drip}[args.mode]
        server = _DualStackTCPServer(args.addr, args.port, handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
    print("ready", flush=True)
    time.sleep(args.lifetime)
    sys.stdout.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
