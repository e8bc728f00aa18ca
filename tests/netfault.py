"""Network faults for real, without netem or iptables (these kernels have neither): two network
namespaces joined by a veth pair, an XDP program that drops a share of the IPv4 packets arriving
on one end, and a TCP proxy that delays what a server sends.

- `Link()`: namespaces `<prefix>a` and `<prefix>b`, a veth pair `<prefix>x` (in a, CLIENT) and
  `<prefix>y` (in b, SERVER and CONTROL), deleted on `close()`.
- `Link.drop(end, field, address, percent)`: loads the XDP program below with the bpf() system
  call and attaches it in generic (skb) mode with an rtnetlink request, both from a child process
  inside the namespace; `percent=100` is a one-way partition, `Link.heal()` removes it. Nothing
  is pinned and nothing is mounted.
- `entered(namespace)`: the calling thread inside a namespace for a while (setns); sockets it
  creates, threads and processes it starts, are in that namespace.
- `DelayingProxy`: forwards a loopback port to a server, holding each chunk of the answer for a
  fixed time (latency; no namespace needed).

Everything needs root; `available()` says whether this host can do it.

    python -m netfault attach NAMESPACE DEVICE src|dst ADDRESS|any PERCENT
    python -m netfault detach NAMESPACE DEVICE
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import selectors
import shutil
import socket
import struct
import subprocess
import sys
import threading
import time
from typing import Dict, Iterator, List, Optional, Tuple

CLIENT = "10.99.0.1"  # namespace a
SERVER = "10.99.0.2"  # namespace b: what the faults apply to
CONTROL = "10.99.0.3"  # namespace b: left alone (the emulator's control API)
_CLONE_NEWNET = 0x40000000
_SYS_BPF = 321  # x86_64
_BPF_PROG_LOAD = 5
_BPF_PROG_TYPE_XDP = 6
_XDP_DROP, _XDP_PASS = 1, 2
_BPF_FUNC_GET_PRANDOM_U32 = 7


# --- the XDP program --------------------------------------------------------------------------


def _insn(code: int, dst: int = 0, src: int = 0, off: int = 0, imm: int = 0) -> bytes:
    return struct.pack("<BBhi", code, (src << 4) | dst, off, imm)


def drop_program(field: str, address: str, percent: float) -> bytes:
    """eBPF bytecode: drop `percent` % of the IPv4 packets whose source (`src`) or destination
    (`dst`) is `address` (every IPv4 packet with `any`); pass everything else (ARP included).

    r2/r3 = the packet's data/data_end; the bound check lets the verifier allow reads up to the
    end of the IPv4 header; the address is compared as a 32-bit word (JMP32, so that a last
    octet of 128 or more is no negative immediate); r0 = a random number, compared with the
    share. Jumps are relative to the next instruction."""
    offset = 26 if field == "src" else 30  # 14 bytes of Ethernet header, then IPv4's
    share = int(0x7FFFFFFF * max(0.0, min(100.0, percent)) / 100.0)
    matches_address = address != "any"
    body: List[Tuple[int, int, int, str, int]] = [
        (0xBF, 6, 1, "", 0),  # r6 = r1 (the xdp_md context)
        (0x61, 2, 6, "0", 0),  # r2 = ctx->data
        (0x61, 3, 6, "4", 0),  # r3 = ctx->data_end
        (0xBF, 4, 2, "", 0),  # r4 = r2
        (0x07, 4, 0, "", 34),  # r4 += 34 (Ethernet + IPv4 header)
        (0x2D, 4, 3, "pass", 0),  # if r4 > r3: pass (too short)
        (0x69, 5, 2, "12", 0),  # r5 = ethertype (u16)
        (0x56, 5, 0, "pass", 0x0008),  # if w5 != htons(ETH_P_IP): pass
    ]
    if matches_address:
        word = struct.unpack("<i", socket.inet_aton(address))[0]
        body += [
            (0x61, 5, 2, str(offset), 0),  # r5 = the address word
            (0x56, 5, 0, "pass", word),  # if w5 != address: pass
        ]
    body += [
        (0x85, 0, 0, "", _BPF_FUNC_GET_PRANDOM_U32),  # r0 = random u32
        (0x57, 0, 0, "", 0x7FFFFFFF),  # r0 &= 0x7fffffff
        (0x25, 0, 0, "pass", share),  # if r0 > share: pass
        (0xB7, 0, 0, "", _XDP_DROP),  # r0 = XDP_DROP
        (0x95, 0, 0, "", 0),  # exit
    ]
    pass_at = len(body)
    body += [(0xB7, 0, 0, "", _XDP_PASS), (0x95, 0, 0, "", 0)]
    program = b""
    for index, (code, dst, src, off, imm) in enumerate(body):
        jump = pass_at - (index + 1) if off == "pass" else int(off or 0)
        program += _insn(code, dst, src, jump, imm)
    return program


def load_program(program: bytes) -> int:
    """A file descriptor of the loaded XDP program (bpf(BPF_PROG_LOAD)); raises OSError with the
    verifier's log."""
    libc = ctypes.CDLL(None, use_errno=True)
    insns = ctypes.create_string_buffer(program, len(program))
    license_ = ctypes.create_string_buffer(b"GPL")
    verifier_log = ctypes.create_string_buffer(65536)
    attr = struct.pack(
        "<IIQQIIQII16sII",
        _BPF_PROG_TYPE_XDP,
        len(program) // 8,
        ctypes.addressof(insns),
        ctypes.addressof(license_),
        1,
        len(verifier_log),
        ctypes.addressof(verifier_log),
        0,
        0,
        b"netfault_drop",
        0,
        0,
    )
    attr_buffer = ctypes.create_string_buffer(attr.ljust(128, b"\0"), 128)
    fd = int(libc.syscall(_SYS_BPF, _BPF_PROG_LOAD, attr_buffer, 128))
    if fd < 0:
        error = ctypes.get_errno()
        message = verifier_log.value.decode(errors="replace")
        raise OSError(error, f"BPF_PROG_LOAD: {os.strerror(error)}: {message}")
    return fd


def set_xdp(device: str, fd: int) -> None:
    """Attaches program `fd` to `device` in generic mode (-1 detaches), by an RTM_SETLINK
    request with IFLA_XDP on a netlink socket of the calling thread's namespace."""
    index = socket.if_nametoindex(device)
    xdp_fd = struct.pack("<HHi", 8, 1, fd)  # IFLA_XDP_FD
    xdp_flags = struct.pack("<HHI", 8, 3, 1 << 1)  # IFLA_XDP_FLAGS = XDP_FLAGS_SKB_MODE
    nested = xdp_fd + xdp_flags
    ifla_xdp = struct.pack("<HH", 4 + len(nested), 43 | 0x8000) + nested  # IFLA_XDP, nested
    ifinfo = struct.pack("<BxHiII", socket.AF_UNSPEC, 0, index, 0, 0)
    payload = ifinfo + ifla_xdp
    header = struct.pack("<IHHII", 16 + len(payload), 19, 0x1 | 0x4, 1, 0)  # RTM_SETLINK, ACK
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0) as nl:  # NETLINK_ROUTE
        nl.bind((0, 0))
        nl.sendall(header + payload)
        answer = nl.recv(65536)
    kind = struct.unpack_from("<H", answer, 4)[0]
    error = struct.unpack_from("<i", answer, 16)[0] if kind == 2 else 0  # NLMSG_ERROR
    if error:
        raise OSError(-error, f"RTM_SETLINK IFLA_XDP on {device}: {os.strerror(-error)}")


# --- namespaces -------------------------------------------------------------------------------


def _run(*args: str) -> None:
    subprocess.run(args, check=True, capture_output=True, timeout=30, stdin=subprocess.DEVNULL)


def available() -> Optional[str]:
    """None if this host can build a Link and drop packets on it, else why not."""
    if os.geteuid() != 0:
        return "needs root (ip netns, bpf())"
    if shutil.which("ip") is None:
        return "the ip command (iproute2) is not installed"
    if os.uname().machine != "x86_64":
        return "the bpf() system call number here is x86_64's"
    return None


@contextlib.contextmanager
def entered(namespace: str) -> Iterator[None]:
    """The calling thread in network namespace `namespace` (`ip netns` name) until the block
    ends; it is put back where it was, whatever happens."""
    libc = ctypes.CDLL(None, use_errno=True)
    with (
        open("/proc/thread-self/ns/net", "rb") as home,
        open(f"/run/netns/{namespace}", "rb") as there,
    ):
        if libc.setns(there.fileno(), _CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns into {namespace}")
        try:
            yield
        finally:
            if libc.setns(home.fileno(), _CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "setns back to the test's own namespace")


class Link:
    """Two namespaces and a veth pair between them (module docstring)."""

    def __init__(self, prefix: str = "") -> None:
        prefix = prefix or f"ra{os.getpid() % 100000}"
        self.client_ns, self.server_ns = f"{prefix}a", f"{prefix}b"
        self.client_dev, self.server_dev = f"{prefix}x", f"{prefix}y"
        self._made: List[str] = []
        try:
            for namespace in (self.client_ns, self.server_ns):
                _run("ip", "netns", "add", namespace)
                self._made.append(namespace)
            _run(
                "ip", "link", "add", self.client_dev, "netns", self.client_ns, "type", "veth",
                "peer", "name", self.server_dev, "netns", self.server_ns,
            )  # fmt: skip
            for namespace, device, addresses in (
                (self.client_ns, self.client_dev, [CLIENT]),
                (self.server_ns, self.server_dev, [SERVER, CONTROL]),
            ):
                for address in addresses:
                    _run("ip", "-n", namespace, "addr", "add", f"{address}/29", "dev", device)
                _run("ip", "-n", namespace, "link", "set", device, "up")
                _run("ip", "-n", namespace, "link", "set", "lo", "up")
        except BaseException:
            self.close()
            raise

    def drop(self, end: str, field: str, address: str, percent: float) -> None:
        """Drops `percent` % of IPv4 packets arriving at `end` ("client" or "server") whose
        `field` ("src"/"dst") is `address`; replaces what was there before."""
        namespace, device = self._end(end)
        _helper("attach", namespace, device, field, address, str(percent))

    def heal(self) -> None:
        """No drops anywhere on the link."""
        for end in ("client", "server"):
            _helper("detach", *self._end(end))

    def _end(self, end: str) -> Tuple[str, str]:
        if end == "client":
            return self.client_ns, self.client_dev
        return self.server_ns, self.server_dev

    def close(self) -> None:
        """Deletes the namespaces (and with them the veth pair and its programs)."""
        for namespace in reversed(self._made):
            subprocess.run(
                ["ip", "netns", "del", namespace], capture_output=True, timeout=30, check=False
            )
        self._made = []


def _helper(*args: str) -> None:
    """This module as a child process inside the namespace (args[1]): bpf() and rtnetlink."""
    namespace = args[1]
    subprocess.run(
        ["ip", "netns", "exec", namespace, sys.executable, os.path.abspath(__file__), *args],
        check=True,
        capture_output=True,
        timeout=30,
        stdin=subprocess.DEVNULL,
    )


# --- latency ----------------------------------------------------------------------------------


class DelayingProxy:
    """Listens on a loopback port and forwards each connection to `target`; every chunk the
    server sends reaches the client `delay` seconds after it arrived (in order). One thread."""

    def __init__(self, target: Tuple[str, int], delay: float) -> None:
        self.target = target
        self.delay = delay
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(64)
        self.listener.setblocking(False)
        self.address = f"127.0.0.1:{self.listener.getsockname()[1]}"
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="delaying-proxy", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        self.listener.close()

    def _run(self) -> None:
        selector = selectors.DefaultSelector()
        selector.register(self.listener, selectors.EVENT_READ, None)
        peers: Dict[socket.socket, socket.socket] = {}  # each end -> the other
        pending: List[Tuple[float, socket.socket, bytes]] = []  # (due, to client, data)
        try:
            while not self._stop.is_set():
                now = time.monotonic()
                while pending and pending[0][0] <= now:
                    _, client, data = pending.pop(0)
                    if data:
                        _send(client, data)
                    else:  # the server's end of the answer: both connections are done
                        self._forget(selector, peers, client)
                wait = 0.05 if not pending else max(0.0, min(0.05, pending[0][0] - now))
                for key, _ in selector.select(wait):
                    if key.data is None:
                        self._accept(selector, peers)
                        continue
                    sock = key.fileobj
                    assert isinstance(sock, socket.socket)
                    other = peers.get(sock)
                    try:
                        data = sock.recv(65536)
                    except OSError:
                        data = b""
                    if other is None:
                        continue
                    if not data:
                        selector.unregister(sock)
                    if key.data == "server":
                        pending.append((time.monotonic() + self.delay, other, data))
                    elif data:
                        _send(other, data)
                    else:
                        with contextlib.suppress(OSError):
                            other.shutdown(socket.SHUT_WR)
        finally:
            for sock in list(peers):
                with contextlib.suppress(OSError):
                    sock.close()
            selector.close()

    @staticmethod
    def _forget(
        selector: selectors.BaseSelector,
        peers: Dict[socket.socket, socket.socket],
        client: socket.socket,
    ) -> None:
        server = peers.pop(client, None)
        for sock in (client, server):
            if sock is None:
                continue
            peers.pop(sock, None)
            with contextlib.suppress(KeyError, ValueError):
                selector.unregister(sock)
            with contextlib.suppress(OSError):
                sock.close()

    def _accept(
        self, selector: selectors.BaseSelector, peers: Dict[socket.socket, socket.socket]
    ) -> None:
        try:
            client, _ = self.listener.accept()
        except OSError:
            return
        try:
            server = socket.create_connection(self.target, timeout=5)
        except OSError:
            client.close()
            return
        for sock in (client, server):
            sock.setblocking(False)
        peers[client], peers[server] = server, client
        selector.register(client, selectors.EVENT_READ, "client")
        selector.register(server, selectors.EVENT_READ, "server")


def _send(sock: socket.socket, data: bytes) -> None:
    with contextlib.suppress(OSError):
        sock.setblocking(True)
        sock.sendall(data)
        sock.setblocking(False)


def _main(argv: List[str]) -> int:
    command, _namespace, device = argv[0], argv[1], argv[2]
    if command == "detach":
        set_xdp(device, -1)
        return 0
    field, address, percent = argv[3], argv[4], float(argv[5])
    fd = load_program(drop_program(field, address, percent))
    try:
        set_xdp(device, fd)
    finally:
        os.close(fd)
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
