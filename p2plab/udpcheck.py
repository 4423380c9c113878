"""UDP datagrams through a tunnel, checked byte for byte: what the UDP offload tests send.

``python -m p2plab.udpcheck sink ADDR PORT`` binds, prints ``ready``, counts datagrams until 3 s
pass without one, then prints ``{"datagrams": N, "bad": M}``: N distinct sequence numbers,
M datagrams whose bytes are not the pattern of their sequence number.

``python -m p2plab.udpcheck source DST PORT COUNT SIZE GSO`` sends COUNT datagrams of SIZE
bytes: a 4-byte sequence number, then bytes derived from it. With GSO > 0 it sends GSO of them
per ``sendto`` with ``UDP_SEGMENT`` (the kernel, or a TUN device with USO, cuts them). It pauses
10 ms after every 64 datagrams: the tests are about correctness, not rate.
"""

from __future__ import annotations

import hashlib
import json
import socket
import sys
import time

UDP_SEGMENT = 103  # <linux/udp.h>
QUIET_S = 3.0


def pattern(head: bytes, n: int) -> bytes:
    """``n`` bytes that follow from the sequence number ``head``."""
    return (hashlib.sha256(head).digest() * (n // 32 + 1))[:n]


def datagram(seq: int, size: int) -> bytes:
    head = seq.to_bytes(4, "big")
    return head + pattern(head, size - 4)


def sink(addr: str, port: int) -> dict[str, int]:
    family = socket.AF_INET6 if ":" in addr else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        s.bind((addr, port))
        s.settimeout(QUIET_S)
        print("ready", flush=True)
        seen: set[int] = set()
        bad = 0
        try:
            while True:
                data = s.recv(65535)
                if len(data) < 4 or data[4:] != pattern(data[:4], len(data) - 4):
                    bad += 1
                    continue
                seen.add(int.from_bytes(data[:4], "big"))
        except TimeoutError:
            pass
    return {"datagrams": len(seen), "bad": bad}


def source(dst: str, port: int, count: int, size: int, gso: int) -> None:
    family = socket.AF_INET6 if ":" in dst else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        if gso:
            s.setsockopt(socket.SOL_UDP, UDP_SEGMENT, size)
        seq = 0
        while seq < count:
            n = min(gso or 1, count - seq)
            s.sendto(b"".join(datagram(seq + k, size) for k in range(n)), (dst, port))
            seq += n
            if seq % 64 < n:
                time.sleep(0.01)


def main(argv: list[str]) -> int:
    if argv[:1] == ["sink"] and len(argv) == 3:
        print(json.dumps(sink(argv[1], int(argv[2]))), flush=True)
        return 0
    if argv[:1] == ["source"] and len(argv) == 6:
        port, count, size, gso = (int(a) for a in argv[2:6])
        source(argv[1], port, count, size, gso)
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
