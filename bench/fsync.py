#!/usr/bin/env python3
"""What an operator can do about the trail's slow syncs (issue 21, the PATCH p99).

tokengate appends each group commit (one `write` of the batch's records) to the trail and then
calls `fdatasync` (`audit.fsync = "always"`). This measures, on the file system holding DIR, the
latency of that step against what an operator could change:

  append+fdatasync   what tokengate does
  append, O_DSYNC    the file opened with O_DSYNC: write and sync in one system call
  keep-size+fdatasync space reserved past the end (fallocate FALLOC_FL_KEEP_SIZE), appended to:
                     the file stays plain JSON Lines, its size still grows
  prealloc+fdatasync the file's space allocated and zeroed beforehand, batches written in place,
                     so a sync has no file size or extent change to journal (the file then
                     holds zeros past its last record)
  append+fsync       fsync instead of fdatasync (inode times flushed too), for reference

Each mode writes BATCH-byte batches (six 640-byte records by default) one after another for
SECONDS, in ROUNDS rounds with the modes interleaved (a shared disk drifts, and a mode run after
another sees what that one left: the order alone moved figures 10x); it prints syncs/s and the
p50, p99, p99.9 and largest latency in ms over all rounds.

    python3 bench/fsync.py DIR [SECONDS] [ROUNDS] [BATCH]
"""
import ctypes
import os
import sys
import time

FALLOC_FL_KEEP_SIZE = 1


def reserve(fd, size):
    """fallocate(fd, FALLOC_FL_KEEP_SIZE, 0, size): blocks reserved, the size unchanged."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_long, ctypes.c_long]
    if libc.fallocate(fd, FALLOC_FL_KEEP_SIZE, 0, size) != 0:
        raise OSError(ctypes.get_errno(), "fallocate")


def percentile(sorted_values, p):
    return sorted_values[min(len(sorted_values) - 1, int(len(sorted_values) * p))]


def run(path, seconds, batch, mode):
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
    if mode == "append, O_DSYNC":
        flags |= os.O_DSYNC
    if mode != "prealloc+fdatasync":
        flags |= os.O_APPEND
    fd = os.open(path, flags, 0o600)
    size = 256 << 20
    if mode == "prealloc+fdatasync":
        os.posix_fallocate(fd, 0, size)
        zero = b"\0" * (1 << 20)
        for offset in range(0, size, len(zero)):
            os.pwrite(fd, zero, offset)
        os.fsync(fd)
    if mode == "keep-size+fdatasync":
        reserve(fd, 256 << 20)
        os.fsync(fd)
    data = (b"x" * (batch - 1)) + b"\n"
    latencies = []
    offset = 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        start = time.perf_counter()
        if mode == "prealloc+fdatasync":
            if offset + len(data) > size:
                # Back to the start: still in place, never past the allocated space.
                offset = 0
            os.pwrite(fd, data, offset)
            offset += len(data)
            os.fdatasync(fd)
        else:
            os.write(fd, data)
            if mode in ("append+fdatasync", "keep-size+fdatasync"):
                os.fdatasync(fd)
            elif mode == "append+fsync":
                os.fsync(fd)
        latencies.append((time.perf_counter() - start) * 1000)
    os.close(fd)
    os.unlink(path)
    return latencies


def main():
    if len(sys.argv) < 2:
        print(__doc__.strip().splitlines()[-1].strip(), file=sys.stderr)
        sys.exit(2)
    directory = sys.argv[1]
    seconds = float(sys.argv[2]) if len(sys.argv) > 2 else 5
    rounds = int(sys.argv[3]) if len(sys.argv) > 3 else 3
    batch = int(sys.argv[4]) if len(sys.argv) > 4 else 6 * 640
    path = os.path.join(directory, "fsync-study.bin")
    modes = (
        "append+fdatasync",
        "append, O_DSYNC",
        "keep-size+fdatasync",
        "prealloc+fdatasync",
        "append+fsync",
    )
    seen = {mode: [] for mode in modes}
    for round in range(rounds):
        # Each round starts from another mode, so that none always follows the same one.
        for mode in modes[round % len(modes):] + modes[:round % len(modes)]:
            seen[mode] += run(path, seconds, batch, mode)
    print(f"{batch}-byte batches, {rounds} rounds of {seconds:g} s per mode, in {directory}")
    print("| mode | syncs/s | p50 ms | p99 ms | p99.9 ms | max ms |")
    print("|---|---:|---:|---:|---:|---:|")
    for mode in modes:
        latencies = sorted(seen[mode])
        rate = len(latencies) / (seconds * rounds)
        p50, p99, p999 = (percentile(latencies, p) for p in (0.50, 0.99, 0.999))
        print(f"| {mode} | {rate:,.0f} | {p50:.3f} | {p99:.3f} | {p999:.3f} | {latencies[-1]:.3f} |")


if __name__ == "__main__":
    main()
