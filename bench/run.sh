#!/usr/bin/env bash
# tokengate side by side with nginx (SPEC: issue 8). One fixed-answer upstream (nginx, one worker),
# and in front of it: nothing (direct), nginx proxy_pass, and tokengate. Each case is driven by the
# same wrk load at fixed concurrency, the targets interleaved and the whole round repeated; the
# table gives the median of the rounds for requests/s, p50, p99 and the CPU microseconds per
# request of the proxy process (all its threads or workers; for "direct", of the upstream itself),
# and tokengate's ratios to nginx.
#
#   bash bench/run.sh [SECONDS] [ROUNDS] [CONNECTIONS]      (defaults: 10 s, 3 rounds, 64)
#   CASES="get put" bash bench/run.sh …                      (a subset of the cases below)
#   TOKENGATE_BIN=path/to/tokengate bash bench/run.sh …      (another build, for before/after)
#   CAPTURE_BEFORE=false bash bench/run.sh …                 (audit.capture_before = false: writes
#                                                             without the before-read of SPEC §6.1)
#
# Cases:
#   get        GET /api/token/?p=1&size=10, passed through (reads are not audited by default)
#   put        a valid 300-byte full update, checked (SPEC §4) and audited to /dev/null
#   put+fsync  the same, audited to disk with fsync = "always" (intent and outcome durable)
#   patch      PATCH /api/token/1: tokengate reads the token, merges, checks, writes (2 upstream
#              requests, audited with fsync = "always"); nginx passes the PATCH on as is
#   bare, bare+fsync   put and put+fsync with a full update that carries neither `status` nor the
#              masked `key`: nothing for tokengate to confirm on the stored token, so with
#              CAPTURE_BEFORE=false one upstream request, as nginx sends (issue 21's put targets).
#              Not in the default CASES.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-10}
rounds=${2:-3}
conns=${3:-64}

source bench/lib.sh
setup_bench run

start_upstream
start_nginx_proxy
tokengate_config memory - always
start_tokengate memory
mem_port=$tg_port mem_pid=$tg_pid
tokengate_config disk "$work/disk/trail.jsonl" always
start_tokengate disk
disk_port=$tg_port disk_pid=$tg_pid disk_admin=$tg_admin
write_scripts

# Each (case, target): URL, script, pid whose CPU counts, admin port for fsyncs.
declare -A url script pid admin
add() { url[$1/$2]=$3; script[$1/$2]=$work/$4.lua; pid[$1/$2]=${5:-}; admin[$1/$2]=${6:-}; }
for c in get put put+fsync patch bare bare+fsync; do
  s=${c%+fsync}
  [ "$s" = bare ] && s=put_bare
  add "$c" direct "http://127.0.0.1:$up_port" "$s" "$up_pid"
  add "$c" nginx "http://127.0.0.1:$nginx_port" "$s" "$nginx_pid"
done
add get tokengate "http://127.0.0.1:$mem_port" get "$mem_pid"
add put tokengate "http://127.0.0.1:$mem_port" put "$mem_pid"
add put+fsync tokengate "http://127.0.0.1:$disk_port" put "$disk_pid" "$disk_admin"
add patch tokengate "http://127.0.0.1:$disk_port" patch "$disk_pid" "$disk_admin"
add bare tokengate "http://127.0.0.1:$mem_port" put_bare "$mem_pid"
add bare+fsync tokengate "http://127.0.0.1:$disk_port" put_bare "$disk_pid" "$disk_admin"
read -r -a cases <<< "${CASES:-get put put+fsync patch}"
targets=(direct nginx tokengate)

# Every answer must be a success, or the figures measure refusals.
for c in "${cases[@]}"; do
  for t in "${targets[@]}"; do
    r=$(measure "${url[$c/$t]}" 1 1 "${script[$c/$t]}")
    [ "$(cut -d' ' -f6 <<<"$r")" = 0 ] || { echo "$c via $t: answers that are not 2xx: $r" >&2; exit 1; }
  done
done

echo "machine: $(machine)"
echo "load: wrk, $conns connections, ${seconds} s per run, $rounds rounds, targets interleaved"
raw=$work/raw.txt
for round in $(seq "$rounds"); do
  for c in "${cases[@]}"; do
    for t in "${targets[@]}"; do
      # put+fsync and bare+fsync through direct and nginx repeat the put and bare runs: skip them.
      if [[ $c == *+fsync ]] && [ "$t" != tokengate ]; then continue; fi
      r=$(measure "${url[$c/$t]}" "$conns" "$seconds" "${script[$c/$t]}" "${pid[$c/$t]}" "${admin[$c/$t]}")
      echo "$c $t $round $r" >> "$raw"
      echo "  round $round  $c  $t: $r" >&2
    done
  done
done

python3 bench/table.py "$raw" "$conns"
