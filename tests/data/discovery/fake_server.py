"""Test listeners for discovery, each run as its own process so tests can stop it by pid.

    fake_server.py exporter ADDR PORT METRIC VERSION   prometheus_client posing as an exporter
                                                       (METRIC is its *_build_info gauge name)
    fake_server.py html ADDR PORT                      a web server that is not an exporter
    fake_server.py banner ADDR PORT                    a TCP server that speaks no HTTP
    fake_server.py silent ADDR PORT                    accepts and never answers
    fake_server.py drip ADDR PORT                      answers one byte per 0.2 s, forever
    fake_server.py bodydrip ADDR PORT                  complete headers (Connection: close),
                                                       then the body one byte per 0.2 s
    fake_server.py headerdrip ADDR PORT                a status line, then header bytes slowly
    fake_server.py endless ADDR PORT                   a 200 metrics answer that never ends

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


class _BodyDrip(socketserver.BaseRequestHandler):
    """Headers at once, then the body a byte at a time: http.client hands the socket over to
    the response when it reads `Connection: close`."""

    def handle(self) -> None:
        self.request.recv(4096)
        head = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\n"
        _drip(self.request, head, b"m")


class _HeaderDrip(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        self.request.recv(4096)
        _drip(self.request, b"HTTP/1.1 200 OK\r\nX-Slow: ", b"x")


class _Endless(socketserver.BaseRequestHandler):
    """A well-formed metrics answer that never ends, as fast as the client reads it."""

    def handle(self) -> None:
        self.request.recv(4096)
        head = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\n"
        line = b"fake_metric 1\n" * 4096
        try:
            self.request.sendall(head)
            for _ in range(1_000_000):
                self.request.sendall(line)
        except OSError:
            return


def _drip(sock: socket.socket, first: bytes, byte: bytes) -> None:
    try:
        sock.sendall(first)
        for _ in range(1000):
            sock.sendall(byte)
            time.sleep(0.2)
    except OSError:
        return


def _exporter(addr: str, port: int, metric: str, version: str) -> None:
    from prometheus_client import CollectorRegistry, Gauge, start_http_server

    registry = CollectorRegistry()
    info = Gauge(metric, "Build information", ["version", "revision"], registry=registry)
    info.labels(version=version, revision="test").set(1)
    Gauge("fake_up", "Always 1", registry=registry).set(1)
    start_http_server(port, addr=addr, registry=registry)


def main() -> None:
    parser = argparse.ArgumentParser()
    modes = ("exporter", "html", "banner", "silent", "drip", "bodydrip", "headerdrip", "endless")
    parser.add_argument("mode", choices=modes)
    parser.add_argument("addr")
    parser.add_argument("port", type=int)
    parser.add_argument("extra", nargs="*")
    parser.add_argument("--lifetime", type=float, default=300.0)
    args = parser.parse_args()
    if args.mode == "exporter":
        _exporter(args.addr, args.port, args.extra[0], args.extra[1])
    else:
        handler = {
            "html": _Html,
            "banner": _Banner,
            "silent": _Silent,
            "drip": _Drip,
            "bodydrip": _BodyDrip,
            "headerdrip": _HeaderDrip,
            "endless": _Endless,
        }[args.mode]
        server = _DualStackTCPServer(args.addr, args.port, handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
    print("ready", flush=True)
    time.sleep(args.lifetime)
    sys.stdout.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
