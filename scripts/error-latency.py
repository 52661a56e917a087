#!/usr/bin/env python3
"""How soon a server error stops an upload, directly vs through tokengate.

The shape of asyncpg's `test_executemany_server_failure_during_writes`, without the driver's
pacing: Parse, 128 x (Bind, Execute) with row 2 violating the primary key (rows 3.. carry 32 KiB),
Sync, written non-blocking as fast as the socket takes them. For each run it records the bytes
the socket had accepted, and the time, when the ErrorResponse arrived.

Usage: scripts/error-latency.py PORT [RUNS]   (trust auth as `postgres`, database `postgres`)
"""
import select
import socket
import struct
import sys
import time

READY = b"Z\0\0\0\x05I"


def msg(tag, body):
    return tag + struct.pack("!I", len(body) + 4) + body


def until_ready(s):
    buf = b""
    while not buf.endswith(READY):
        chunk = s.recv(65536)
        if not chunk:
            raise SystemExit("connection closed")
        buf += chunk


def one_run(port):
    s = socket.create_connection(("127.0.0.1", port))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    body = struct.pack("!I", 196608) + b"user\0postgres\0database\0postgres\0\0"
    s.sendall(struct.pack("!I", len(body) + 4) + body)
    until_ready(s)
    s.sendall(msg(b"Q", b"DROP TABLE IF EXISTS exraw; CREATE TABLE exraw(a text, b int PRIMARY KEY)\0"))
    until_ready(s)
    out = [msg(b"P", b"\0INSERT INTO exraw VALUES($1, $2)\0\0\0")]
    for pos in range(1, 129):
        a, b = (b"a", b"0") if pos < 3 else (b"a" * 32768, str(pos).encode())
        params = struct.pack("!H", 2) + struct.pack("!I", len(a)) + a + struct.pack("!I", len(b)) + b
        out.append(msg(b"B", b"\0\0\0\0" + params + b"\0\0"))
        out.append(msg(b"E", b"\0\0\0\0\0"))
    out.append(msg(b"S", b""))
    data = b"".join(out)
    s.setblocking(False)
    sent, seen, recv = 0, None, b""
    t0 = time.perf_counter()
    while True:
        r, w, _ = select.select([s], [s] if sent < len(data) else [], [], 10)
        if not r and not w:
            raise SystemExit("no progress for 10 s")
        if r:
            chunk = s.recv(65536)
            if not chunk:
                break
            recv += chunk
            if seen is None and b"23505" in recv:
                seen = (sent, (time.perf_counter() - t0) * 1000)
            if recv.endswith(READY):
                break
        if w and sent < len(data):
            try:
                sent += s.send(data[sent : sent + 131072])
            except BlockingIOError:
                pass
    s.close()
    return seen


def main():
    port = int(sys.argv[1])
    runs = int(sys.argv[2]) if len(sys.argv) > 2 else 20
    seen = [r for r in (one_run(port) for _ in range(runs)) if r]
    kib = sorted(r[0] // 1024 for r in seen)
    ms = sorted(r[1] for r in seen)
    n = len(seen)
    print(
        f"port {port}: error seen after {kib[n // 2]} KiB written (median, p90 {kib[int(n * 0.9)]}),"
        f" {ms[n // 2]:.2f} ms (median, p90 {ms[int(n * 0.9)]:.2f}), {n} runs"
    )


main()
