#!/usr/bin/env python3
"""How much an fdatasync of one file stalls direct writes to another, on this disk.

    benches/fsync-interference.py DIR [RATE_MB_S] [SECONDS] [SYNC_EVERY_S] [RESERVE]

The baseline for Spate's segment rolls, without Spate: a writer appends 256 KiB direct
(O_DIRECT) writes at RATE_MB_S (default 50) to a file whose space is reserved ahead with
fallocate in 32 MiB steps, as Spate's DMA backend does, and every SYNC_EVERY_S seconds
(default 2) switches to a new file and fdatasyncs the old one from another thread, as a roll's
finish does. RESERVE `none` writes without reserving (each write extends the file), `zeros`
reserves by writing zeros (no unwritten extents to convert). Prints the writer's latency percentiles per write (from when each write was due,
so stalls are not hidden) and the fdatasync times.
"""

import mmap
import os
import sys
import threading
import time

WRITE_BYTES = 256 << 10
RESERVE_BYTES = 32 << 20


def percentile(sorted_values, fraction):
    return sorted_values[min(len(sorted_values) - 1, int(len(sorted_values) * fraction))]


def main():
    directory = sys.argv[1]
    rate_mb_s = float(sys.argv[2]) if len(sys.argv) > 2 else 50.0
    seconds = float(sys.argv[3]) if len(sys.argv) > 3 else 10.0
    sync_every_s = float(sys.argv[4]) if len(sys.argv) > 4 else 2.0
    reserve = sys.argv[5] if len(sys.argv) > 5 else "fallocate"
    zeros = mmap.mmap(-1, RESERVE_BYTES)
    os.makedirs(directory, exist_ok=True)
    buffer = mmap.mmap(-1, WRITE_BYTES)
    buffer.write(b"x" * WRITE_BYTES)
    interval_s = WRITE_BYTES / (rate_mb_s * 1e6)
    total = int(seconds / interval_s)
    latencies_ms = []
    sync_ms = []
    syncers = []

    def open_segment(number):
        path = os.path.join(directory, f"segment-{number}")
        return os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_DIRECT, 0o644)

    def sync(fd):
        began = time.monotonic()
        os.fdatasync(fd)
        sync_ms.append((time.monotonic() - began) * 1000)
        os.close(fd)

    segment = 0
    fd = open_segment(segment)
    position = reserved = 0
    start = time.monotonic()
    next_switch = start + sync_every_s
    for index in range(total):
        due = start + index * interval_s
        now = time.monotonic()
        if now < due:
            time.sleep(due - now)
        if time.monotonic() >= next_switch:
            syncer = threading.Thread(target=sync, args=(fd,))
            syncer.start()
            syncers.append(syncer)
            segment += 1
            fd = open_segment(segment)
            position = reserved = 0
            next_switch += sync_every_s
        if position + WRITE_BYTES > reserved and reserve != "none":
            if reserve == "zeros":
                os.pwrite(fd, zeros, reserved)
            else:
                os.posix_fallocate(fd, 0, reserved + RESERVE_BYTES)
            reserved += RESERVE_BYTES
        os.pwrite(fd, buffer, position)
        position += WRITE_BYTES
        latencies_ms.append((time.monotonic() - due) * 1000)
    for syncer in syncers:
        syncer.join()
    os.close(fd)
    for number in range(segment + 1):
        os.remove(os.path.join(directory, f"segment-{number}"))
    latencies_ms.sort()
    print(
        f'{{"rate_mb_s": {rate_mb_s}, "reserve": "{reserve}", "writes": {total}, '
        f'"p50_ms": {percentile(latencies_ms, 0.5):.3f}, '
        f'"p99_ms": {percentile(latencies_ms, 0.99):.3f}, '
        f'"max_ms": {latencies_ms[-1]:.3f}, '
        f'"fdatasync_ms": [{", ".join(f"{ms:.1f}" for ms in sync_ms)}]}}'
    )


if __name__ == "__main__":
    main()
