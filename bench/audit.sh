#!/usr/bin/env bash
# Audited writes per second: the same load of status-only updates through tokengate, with the audit
# trail at fsync = "always" on the disk under the repository, and with the trail written to
# /dev/null (audit.path = "-", standard output sent to /dev/null). The upstream is the built-in
# emulator. Prints requests/s, latency, audit records/s and fsyncs/s for each, at each concurrency.
#
#   bash bench/audit.sh [SECONDS] [CONNECTIONS...]      (defaults: 10 s, 1 16 64)
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-10}; shift || true
connections=("${@:-1 16 64}"); connections=(${connections[@]})

command -v wrk >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk; }
command -v bc >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq bc; }
command -v curl >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq curl; }
cargo build --release --locked --quiet
bin=target/release/tokengate

work=$(mktemp -d "$PWD/target/bench-audit.XXXXXX")
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT

up=127.0.0.1:39101; gw=127.0.0.1:39102; admin=127.0.0.1:39103
"$bin" emulator --listen "$up" --access-token bench-upstream-token --user-id 1 2>/dev/null &
pids+=($!)
sleep 0.5
curl -sf -H 'Authorization: bench-upstream-token' -H 'New-Api-User: 1' -H 'Content-Type: application/json' \
     -d '{"name":"bench"}' "http://$up/api/token/" >/dev/null

key=tg_bench_key_not_secret_0123456789abcdef0123456789abcdef
digest=$(printf %s "$key" | sha256sum | cut -d' ' -f1)
printf 'bench-upstream-token' > "$work/upstream-token"
head -c 48 /dev/urandom | base64 > "$work/audit-key"

config() { # $1 audit path, $2 fsync
  cat <<TOML
[server]
listen = "$gw"
admin_listen = "$admin"
[upstream]
url = "http://$up"
access_token_file = "$work/upstream-token"
[rate_limit]
# The benchmark measures the trail, not the limits: set them out of reach.
writes_per_minute = 1000000
burst = 100000
upstream_requests_per_second = 1000000
[audit]
path = "$1"
fsync = "$2"
hmac_key_file = "$work/audit-key"
[log]
format = "json"
[[clients]]
name = "bench"
key_sha256 = "$digest"
allow = ["update"]
TOML
}

metric() { curl -sf "http://$admin/metrics" | awk -v m="$1" '$1 == m { print $2 }'; }

run() { # $1 label, $2 audit path, $3 fsync
  config "$2" "$3" > "$work/tokengate.toml"
  RUST_LOG=warn "$bin" serve --config "$work/tokengate.toml" > /dev/null 2> "$work/serve.log" &
  local pid=$!
  pids+=("$pid")
  for _ in $(seq 50); do curl -sf "http://$admin/healthz" >/dev/null 2>&1 && break; sleep 0.1; done
  for c in "${connections[@]}"; do
    local r0 f0 r1 f1
    r0=$(metric tokengate_audit_records_total); f0=$(metric tokengate_audit_fsync_seconds_count)
    local out; out=$(wrk -t"$(( c < 2 ? c : 2 ))" -c"$c" -d"${seconds}s" --latency -s bench/put_status.lua "http://$gw" 2>&1)
    r1=$(metric tokengate_audit_records_total); f1=$(metric tokengate_audit_fsync_seconds_count)
    local rps p50 p99 non2xx
    rps=$(awk '/Requests\/sec/ { print $2 }' <<<"$out")
    p50=$(awk '$1 == "50%" { print $2 }' <<<"$out")
    p99=$(awk '$1 == "99%" { print $2 }' <<<"$out")
    non2xx=$(awk '/Non-2xx/ { print $5 }' <<<"$out")
    printf '| %-26s | %4s | %10s | %8s | %8s | %10.0f | %9.0f | %s\n' "$1" "$c" "$rps" "$p50" "$p99" \
      "$(echo "(${r1:-0} - ${r0:-0}) / $seconds" | bc -l)" "$(echo "(${f1:-0} - ${f0:-0}) / $seconds" | bc -l)" "${non2xx:-0}"
  done
  kill "$pid" 2>/dev/null || { echo "the gateway died:" >&2; cat "$work/serve.log" >&2; }; wait "$pid" 2>/dev/null || true
}

echo "machine: $(nproc) cores, $(lscpu | awk -F: '/Model name/ { gsub(/^ +/, "", $2); print $2 }'), $(uname -r); $(date -u +%FT%TZ)"
echo "| trail                      | conn | requests/s |  p50     |  p99     | records/s  | fsyncs/s  | non-2xx"
echo "|----------------------------|------|------------|----------|----------|------------|-----------|--------"
run "fsync always, on disk" "$work/trail.jsonl" always
run "to /dev/null (path \"-\")" "-" always
