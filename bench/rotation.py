"""What watching the credential files costs per cycle, next to what taking a new one in costs.

Makes a test PKI (tests/tls_pki.py, the openssl command) and a token file in a temporary
directory, builds `regagent.consul.credentials.Credentials` for HTTPS with a client certificate
(four files: token, CA, certificate, key), and prints the median time of:
  - `refresh()` with nothing changed: what every sync cycle pays (four `stat` calls);
  - `refresh()` after the token file was replaced: read, check, hand to the clients;
  - `refresh()` after the certificate and key were replaced: both read and checked, the TLS
    context rebuilt (what a SIGHUP paid for the same change, and more);
with the ratios of the last two to the first.

    PYTHONPATH=agent:tests python bench/rotation.py [--repeat 200]
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, List

import structlog

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from regagent.config.model import ConsulConfig, TLSConfig
from regagent.consul.credentials import Credentials
from tls_pki import issue_client_certificate, make_tls_files


def _replace(path: Path, data: str) -> None:
    new = path.with_name(f".{path.name}.new")
    new.write_text(data)
    os.replace(new, path)


def _median(repeat: int, prepare: Callable[[int], None], run: Callable[[], object]) -> float:
    times: List[float] = []
    for i in range(repeat):
        prepare(i)
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=200)
    args = parser.parse_args()
    # One credential_rotated line per rotation is the point in the daemon, noise here.
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    with tempfile.TemporaryDirectory(prefix="regagent-bench-rotation-") as tmp:
        files = make_tls_files(Path(tmp) / "pki")
        pairs = [
            tuple(p.read_text() for p in issue_client_certificate(files, Path(tmp), f"c{i}"))
            for i in range(2)
        ]
        token, cert, key = Path(tmp) / "token", Path(tmp) / "client.pem", Path(tmp) / "key.pem"
        _replace(token, "token-0\n")
        _replace(cert, pairs[0][0])
        _replace(key, pairs[0][1])
        tls = TLSConfig(ca_file=str(files.ca), cert_file=str(cert), key_file=str(key))
        credentials = Credentials(ConsulConfig(token_file=str(token), scheme="https", tls=tls))

        def nothing(_: int) -> None:
            pass

        def new_token(i: int) -> None:
            _replace(token, f"token-{i + 1}\n")

        def new_certificate(i: int) -> None:
            certificate, private_key = pairs[(i + 1) % 2]
            _replace(key, private_key)
            _replace(cert, certificate)

        unchanged = _median(args.repeat, nothing, credentials.refresh)
        rotated = _median(args.repeat, new_token, credentials.refresh)
        renewed = _median(args.repeat, new_certificate, credentials.refresh)
    rows = [
        ("refresh, nothing changed (every cycle)", unchanged),
        ("refresh, token rotated", rotated),
        ("refresh, certificate renewed", renewed),
    ]
    for label, seconds in rows:
        print(f"{label:40} {seconds * 1e6:9.1f} us  x{seconds / unchanged:.0f}")


if __name__ == "__main__":
    main()
