"""Exporters that come and go, for the watch's tests and bench/latency.py; each is its own process.

    watch_exporters.py serve PORT [--load S]          node_exporter-like /metrics on 0.0.0.0:PORT;
                                                     with --load, listens S seconds before serving
                                                     (bind, then load: connections wait in backlog)
    watch_exporters.py flap PORT --up S --down S     binds, serves for --up, closes for --down,
                                                     again and again

Both print `listening <unix time>` right after the first listen(), then run until killed, or
exit by themselves after --lifetime seconds (default 300) in case a test dies badly.
Standard library only (the exposition is fixed text).
"""

from __future__ import annotations

import argparse
import http.server
import os
import socket
import socketserver
import threading
import time

BODY = (
    b"# HELP node_exporter_build_info A metric with a constant '1' value.\n"
    b"# TYPE node_exporter_build_info gauge\n"
    b'node_exporter_build_info{version="1.5.0",revision="watch-test"} 1\n'
    b"# TYPE node_load1 gauge\n"
    b"node_load1 0.25\n"
)
RESPONSE = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\n"
    b"Content-Length: " + str(len(BODY)).encode() + b"\r\nConnection: close\r\n\r\n" + BODY
)


class _Metrics(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; version=0.0.4")
        self.send_header("Content-Length", str(len(BODY)))
        self.end_headers()
        self.wfile.write(BODY)

    def log_message(self, *args: object) -> None:
        pass


class _Server(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True


def serve(port: int, load: float) -> None:
    server = _Server(("0.0.0.0", port), _Metrics, bind_and_activate=False)
    server.server_bind()
    server.server_activate()  # listen(): from here the port shows in the LISTEN dump
    print(f"listening {time.time():.6f}", flush=True)
    time.sleep(load)  # "loading": the kernel queues connections, nobody answers them
    threading.Thread(target=server.serve_forever, daemon=True).start()


def flap(port: int, up: float, down: float, lifetime: float) -> None:
    first = True
    end = time.monotonic() + lifetime
    while time.monotonic() < end:
        with socket.socket() as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(("0.0.0.0", port))
            sock.listen(16)
            if first:
                print(f"listening {time.time():.6f}", flush=True)
                first = False
            closes = time.monotonic() + up
            while time.monotonic() < closes:
                sock.settimeout(max(0.001, closes - time.monotonic()))
                try:
                    conn, _ = sock.accept()
                except OSError:
                    break
                with conn:
                    conn.settimeout(0.2)
                    try:
                        conn.recv(4096)
                        conn.sendall(RESPONSE)
                    except OSError:
                        pass
        time.sleep(down)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=("serve", "flap"))
    parser.add_argument("port", type=int)
    parser.add_argument("--load", type=float, default=0.0)
    parser.add_argument("--up", type=float, default=0.15)
    parser.add_argument("--down", type=float, default=0.1)
    parser.add_argument("--lifetime", type=float, default=300.0)
    args = parser.parse_args()
    if args.mode == "serve":
        serve(args.port, args.load)
        time.sleep(args.lifetime)
    else:
        flap(args.port, args.up, args.down, args.lifetime)
    os._exit(0)


if __name__ == "__main__":
    main()
