"""Prints bench/run.sh's table from its raw lines.

Each raw line: case target round rps p50_ms p99_ms cpu_us fsyncs_per_s non2xx requests rss_kib.
The figure of each (case, target) is the median over the rounds; tokengate's ratios compare it with
nginx on the same case (put+fsync and bare+fsync with nginx's plain put and bare, which have no trail to write).
"""

import statistics
import sys

raw, conns = sys.argv[1], sys.argv[2]
rows = {}
bad = 0
for line in open(raw):
    case, target, _round, rps, p50, p99, cpu, fsyncs, non2xx, _requests, _rss = line.split()
    rows.setdefault((case, target), []).append(
        (float(rps), float(p50), float(p99), float(cpu), float(fsyncs))
    )
    bad += int(non2xx)


def median(case, target, column):
    values = [r[column] for r in rows.get((case, target), [])]
    return statistics.median(values) if values else float("nan")


cases = list(dict.fromkeys(case for case, _ in rows))
print()
print(f"{conns} connections; medians of the rounds; CPU of the proxy (of the upstream itself, direct)")
print(f"| case | via | requests/s | p50 ms | p99 ms | CPU µs/request | fsyncs/s |")
print("|---|---|---:|---:|---:|---:|---:|")
for case in cases:
    for target in ("direct", "nginx", "tokengate"):
        if (case, target) not in rows:
            continue
        rps, p50, p99, cpu, fsyncs = (median(case, target, i) for i in range(5))
        cpu_text = f"({cpu:.1f})" if target == "direct" else f"{cpu:.1f}"
        fsync_text = f"{fsyncs:,.0f}" if target == "tokengate" and fsyncs else ""
        print(f"| {case} | {target} | {rps:,.0f} | {p50:.2f} | {p99:.2f} | {cpu_text} | {fsync_text} |")

print()
print("| case | tokengate / nginx: requests/s | p99 | CPU per request |")
print("|---|---:|---:|---:|")
for case in cases:
    peer = case.removesuffix("+fsync")
    if (peer, "nginx") not in rows:
        print(f"| {case} | (no nginx run of {peer}: add it to CASES) | | |")
        continue
    ratio = [
        median(case, "tokengate", i) / median(peer, "nginx", i) for i in (0, 2, 3)
    ]
    print(f"| {case} | {ratio[0]:.2f} | {ratio[1]:.2f} | {ratio[2]:.2f} |")
if bad:
    print(f"\nWARNING: {bad} answers were not 2xx or failed at the socket: the figures above are suspect")
    sys.exit(1)
