#!/usr/bin/env bash
# Shipping the audit trail to PostgreSQL ([audit.postgres], SPEC §6.3), with a PostgreSQL started
# here (initdb into a temporary directory, default durability settings: fsync on).
#
# 1. Throughput: a gateway started on a pre-written synthetic trail of RECORDS records
#    (`bench/trail.py RECORDS … changes`, ~656 bytes a record) ships it into the empty table;
#    records/s from the process start to the last record in the table. Then `audit verify
#    --postgres` over the table.
# 2. The request path: status-only updates through the gateway (wrk, as bench/audit.sh: two
#    records each, fsync = "always"), with [audit.postgres] and without; the lag left at the end of
#    the run with shipping on, and how long it took to reach 0.
#
#   bash bench/ship.sh [RECORDS] [SECONDS] [CONNECTIONS...]   (defaults: 1000000 8 1 16)
#
# FSYNC=interval takes the disk's sync rate out of part 2 (what is left is CPU, which the shipper
# and PostgreSQL share with the gateway on this machine). MODES="off on off on" alternates the runs of part 2 (default "off on"), to see the noise of a
# shared disk.
#
# TOKENGATE_BIN names a built binary instead of building one. Needs the postgresql package
# (/usr/lib/postgresql/*/bin), wrk, curl and python3; as root, PostgreSQL runs as `postgres`.
set -euo pipefail
cd "$(dirname "$0")/.."
records=${1:-1000000}; seconds=${2:-8}; shift 2 || shift $#
connections=("${@:-1 16}"); connections=(${connections[@]})

for tool in wrk curl python3 bc; do
  command -v "$tool" >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$tool"; }
done
pgbin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
[ -x "$pgbin/initdb" ] || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql; pgbin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1); }
if [ -n "${TOKENGATE_BIN:-}" ]; then bin=$(realpath "$TOKENGATE_BIN"); else
  cargo build --release --locked --quiet
  bin=$PWD/target/release/tokengate
fi

mkdir -p target
work=$(mktemp -d "$PWD/target/bench-ship.XXXXXX")
pg=$(mktemp -d /tmp/bench-ship-pg.XXXXXX)
pids=()
as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  as_pg "$pgbin/pg_ctl" -D "$pg/data" -m immediate stop >/dev/null 2>&1 || true
  rm -rf "$work" "$pg"
}
trap cleanup EXIT

pgport=39110; up=127.0.0.1:39111; gw=127.0.0.1:39112; admin=127.0.0.1:39113
password=bench-pg-password
printf %s "$password" > "$pg/pw"
[ "$(id -u)" = 0 ] && chown -R postgres:postgres "$pg"
as_pg "$pgbin/initdb" -D "$pg/data" -U postgres --pwfile="$pg/pw" --auth-host=scram-sha-256 \
  --auth-local=trust -E UTF8 >/dev/null
as_pg "$pgbin/pg_ctl" -D "$pg/data" -o "-p $pgport -k $pg -c listen_addresses=127.0.0.1" \
  -l "$pg/log" -w start >/dev/null
export BENCH_PG_URL="postgres://postgres:$password@127.0.0.1:$pgport/postgres"
psql_() { PGPASSWORD=$password psql -h 127.0.0.1 -p "$pgport" -U postgres -d postgres -qAt -c "$1"; }

head -c 48 /dev/urandom | base64 > "$work/audit-key"
printf 'bench-upstream-token' > "$work/upstream-token"
key=tg_bench_key_not_secret_0123456789abcdef0123456789abcdef
digest=$(printf %s "$key" | sha256sum | cut -d' ' -f1)

config() { # $1 audit path, $2 extra lines at the end
  cat <<TOML
[server]
listen = "$gw"
admin_listen = "$admin"
[upstream]
url = "http://$up"
access_token_file = "$work/upstream-token"
[rate_limit]
writes_per_minute = 1000000
burst = 100000
upstream_requests_per_second = 1000000
[audit]
path = "$1"
fsync = "${FSYNC:-always}"
hmac_key_file = "$work/audit-key"
[log]
format = "json"
[[clients]]
name = "bench"
key_sha256 = "$digest"
allow = ["update"]
$2
TOML
}
store=$'[audit.postgres]\nurl_env = "BENCH_PG_URL"\ntable = "bench_audit"'
metric() { curl -sf "http://$admin/metrics" | awk -v m="$1" '$1 == m { print $2 }'; }
now() { date +%s.%N; }
start_gateway() { # $1 config file
  RUST_LOG=warn "$bin" serve --config "$1" > /dev/null 2> "$work/serve.log" &
  gateway=$!; pids+=("$gateway")
  for _ in $(seq 100); do curl -sf "http://$admin/healthz" >/dev/null 2>&1 && return; sleep 0.1; done
  cat "$work/serve.log" >&2; exit 1
}
stop_gateway() { kill "$gateway" 2>/dev/null || true; wait "$gateway" 2>/dev/null || true; }

echo "machine: $(nproc) cores, $(lscpu | awk -F: '/Model name/ { gsub(/^ +/, "", $2); print $2 }'), $(uname -r); PostgreSQL $("$pgbin/postgres" --version | awk '{print $3}'); $(date -u +%FT%TZ)"

# 1. Shipping a pre-written trail. `[cluster] instance` gives the gateway the trail's origin
# (bench-1) so that `audit verify --postgres` finds every row's line under its own origin; nothing
# answers at that Redis address, and nothing here needs it.
python3 bench/trail.py "$records" "$work/trail.jsonl" "$work/audit-key" changes
mib=$(( $(stat -c %s "$work/trail.jsonl") / 1048576 ))
config "$work/trail.jsonl" "$store"$'\n[cluster]\nurl = "redis://127.0.0.1:1/0"\ninstance = "bench-1"' > "$work/ship.toml"
t0=$(now)
start_gateway "$work/ship.toml"
until [ "$(metric tokengate_audit_shipped_total)" = "$records" ]; do sleep 0.2; done
t1=$(now)
stop_gateway
ship_s=$(echo "$t1 - $t0" | bc -l)
table_mib=$(psql_ "SELECT pg_total_relation_size('bench_audit') / 1048576")
t0=$(now)
"$bin" audit verify --postgres --config "$work/ship.toml" > "$work/verify.out" 2>&1 || { cat "$work/verify.out" >&2; exit 1; }
verify_s=$(echo "$(now) - $t0" | bc -l)
echo
echo "| records | trail MiB | table MiB (with indexes) | ship seconds | shipped records/s | verify --postgres seconds | verified records/s |"
echo "|---:|---:|---:|---:|---:|---:|---:|"
printf '| %d | %d | %d | %.1f | %.0f | %.1f | %.0f |\n' "$records" "$mib" "$table_mib" "$ship_s" \
  "$(echo "$records / $ship_s" | bc -l)" "$verify_s" "$(echo "$records / $verify_s" | bc -l)"

# 2. The request path, shipping on and off (a new trail each time).
"$bin" emulator --listen "$up" --access-token bench-upstream-token --user-id 1 2>/dev/null &
pids+=($!)
sleep 0.5
curl -sf -H 'Authorization: bench-upstream-token' -H 'New-Api-User: 1' -H 'Content-Type: application/json' \
     -d '{"name":"bench"}' "http://$up/api/token/" >/dev/null
echo
echo "| shipping | conn | requests/s | p50 | p99 | records/s | lag at the end | seconds to lag 0 |"
echo "|---|---:|---:|---:|---:|---:|---:|---:|"
for mode in ${MODES:-off on}; do
  for c in "${connections[@]}"; do
    rm -f "$work"/live.jsonl*
    # A new trail starts at seq 1: the rows of the last one under this host's origin go first.
    psql_ "DELETE FROM bench_audit WHERE origin <> 'bench-1'"
    extra=""; [ "$mode" = on ] && extra=$store
    config "$work/live.jsonl" "$extra" > "$work/live.toml"
    start_gateway "$work/live.toml"
    r0=$(metric tokengate_audit_records_total)
    out=$(wrk -t"$(( c < 2 ? c : 2 ))" -c"$c" -d"${seconds}s" --latency -s bench/put_status.lua "http://$gw" 2>&1)
    r1=$(metric tokengate_audit_records_total)
    lag=$(metric tokengate_audit_ship_lag_records); t0=$(now)
    if [ "$mode" = on ]; then until [ "$(metric tokengate_audit_ship_lag_records)" = 0 ]; do sleep 0.05; done; fi
    drain=$(echo "$(now) - $t0" | bc -l)
    stop_gateway
    printf '| %s | %d | %s | %s | %s | %.0f | %s | %s |\n' "$mode" "$c" \
      "$(awk '/Requests\/sec/ { print $2 }' <<<"$out")" "$(awk '$1 == "50%" { print $2 }' <<<"$out")" \
      "$(awk '$1 == "99%" { print $2 }' <<<"$out")" "$(echo "(${r1:-0} - ${r0:-0}) / $seconds" | bc -l)" \
      "$([ "$mode" = on ] && echo "$lag" || echo -)" "$([ "$mode" = on ] && printf '%.2f' "$drain" || echo -)"
  done
done
