#!/usr/bin/env bash
# Where tokengate's CPU goes for one case of bench/run.sh: a release build with symbols (in
# target/profiling), the same fixed-answer upstream and load, and `perf record` (software clock
# samples with call graphs) on the gateway. Prints the hottest functions, self and with children,
# and leaves perf.data in target/profiling/ for `perf report -i`.
#
#   bash bench/profile.sh [CASE] [SECONDS] [CONNECTIONS]   (CASE: get, put, put+fsync, patch;
#                                                           defaults: put, 10 s, 64)
set -euo pipefail
cd "$(dirname "$0")/.."
case=${1:-put}
seconds=${2:-10}
conns=${3:-64}

source bench/lib.sh
need perf linux-perf
RUSTFLAGS="-C force-frame-pointers=yes" CARGO_PROFILE_RELEASE_STRIP=none CARGO_PROFILE_RELEASE_DEBUG=line-tables-only \
  cargo build --release --locked --quiet --target-dir target/profiling
TOKENGATE_BIN=target/profiling/release/tokengate setup_bench profile

start_upstream
case $case in
  get | put) tokengate_config gw - always ;;
  put+fsync | patch) tokengate_config gw "$work/gw/trail.jsonl" always ;;
  *) echo "unknown case $case (get, put, put+fsync, patch)" >&2; exit 2 ;;
esac
start_tokengate gw
write_scripts
script=$work/${case%+fsync}.lua

measure "http://127.0.0.1:$tg_port" "$conns" 2 "$script" >/dev/null # warm up
data=$PWD/target/profiling/perf-${case}.data
perf record -q -e cpu-clock -F 2999 -g -p "$tg_pid" -o "$data" -- sleep "$seconds" &
recorder=$!
r=$(measure "http://127.0.0.1:$tg_port" "$conns" "$seconds" "$script" "$tg_pid")
wait "$recorder" || true
echo "$case through tokengate, $conns connections: $r  (rps p50 p99 cpu_us fsyncs non2xx requests)"
echo
echo "== self time, top 40 =="
perf report -q -i "$data" --no-children --sort symbol --percent-limit 0.5 -g none 2>/dev/null | sed "s/ *-  *-  *$//" | cut -c1-150 | head -40
echo
echo "== with children, top 60 =="
perf report -q -i "$data" --children --sort symbol --percent-limit 2 -g none 2>/dev/null | sed "s/ *-  *-  *$//" | cut -c1-150 | head -60
