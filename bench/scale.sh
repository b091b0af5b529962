#!/usr/bin/env bash
# How tokengate's cost grows with the work (issue 8), on the same fixed-answer upstream as
# bench/run.sh. Each study prints a table; nginx is measured beside tokengate where it does the
# same work (connections, bodies).
#
#   bash bench/scale.sh [STUDY...] (default: callers connections bodies batch trail memory)
#   SECONDS_PER_RUN=5 bash bench/scale.sh …        (wrk run length, default 8)
#   SOAK_SECONDS=600 bash bench/scale.sh soak      (the soak is only run when named)
#   TOKENGATE_BIN=path/to/tokengate bash bench/scale.sh …   (another build)
#
# Studies:
#   callers      1 → 10 000 configured clients: start-up, idle memory, GET throughput
#   connections  1 → 1 000 connections: GET through nginx and tokengate, memory under load
#   bodies       300 B → 64 KiB full updates (allow_ips padded): PUT through nginx and tokengate
#   batch        fan-out batch updates of 1 → 100 ids, audited with fsync = "always"
#   trail        an audit trail of 1 → 10 000 000 records: start-up (resuming the chain) and PUT
#                throughput with fsync = "always" on top of it
#   memory       resident size idle and under 1 000 connections
#   idle         resident size per idle keep-alive connection (IDLE_CONNECTIONS, default 2 000,
#                each after one GET), tokengate and nginx
#   soak         steady audited PUT load for SOAK_SECONDS; resident size every 30 s
#   identities   pass-through mode, every request a new token (IDENTITIES of them, default
#                1 000 000): identities tracked and resident size stay flat past max_identities
#   cluster      shared state in Redis against one process (GET, PATCH), three replicas against
#                one (installs redis-server when missing)
#   window       the read-to-write window of a PATCH (tokengate_patch_window_seconds) at 1, 16
#                and 64 connections
#   addresses    refusals before authentication from ADDRESSES source addresses (default
#                100 000) over 127.0.0.0/8: addresses tracked and resident size stay bounded
#   before       full updates with audit.capture_before on and off: the before-read's cost in
#                CPU per request and upstream requests per change (two rounds, alternating)
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${SECONDS_PER_RUN:-8}
studies=("$@")
[ ${#studies[@]} -gt 0 ] || studies=(callers connections bodies batch trail memory)

source bench/lib.sh
setup_bench scale

start_upstream
start_nginx_proxy
write_scripts
echo "machine: $(machine)"

field() { cut -d' ' -f"$1" <<<"$2"; }
row() { # label, then a measure line: | label | rps | p50 | p99 | CPU µs/request |
  printf '| %s | %s | %s | %s | %s |\n' "$1" "$(field 1 "$2")" "$(field 2 "$2")" "$(field 3 "$2")" "$(field 4 "$2")"
}
mib() { awk -v k="$1" 'BEGIN { printf "%.1f", k / 1024 }'; }

# Starts tokengate on $work/$1; sets startup_ms, the milliseconds until /healthz answers.
timed_start() {
  local t0 t1
  t0=$(date +%s%N)
  start_tokengate "$1"
  t1=$(date +%s%N)
  startup_ms=$(( (t1 - t0) / 1000000 ))
}

study_callers() {
  echo; echo "### Configured callers (GET, 64 connections; the caller is the last client)"
  echo "| clients | start-up ms | idle RSS MiB | requests/s | p50 ms | p99 ms | CPU µs/request |"
  echo "|---:|---:|---:|---:|---:|---:|---:|"
  for n in 1 100 1000 10000; do
    local extra
    extra=$(python3 - "$n" <<'PY'
import hashlib, sys
for i in range(int(sys.argv[1]) - 1):
    digest = hashlib.sha256(f"tg_bench_caller_{i:06d}_not_secret".encode()).hexdigest()
    print(f'[[clients]]\nname = "caller-{i}"\nkey_sha256 = "{digest}"\nallow = ["list", "get"]\n')
PY
)
    tokengate_config "callers-$n" - always "$extra"
    local ms rss r
    timed_start "callers-$n"; ms=$startup_ms
    rss=$(rss_kib "$tg_pid")
    r=$(measure "http://127.0.0.1:$tg_port" 64 "$secs" "$work/get.lua" "$tg_pid")
    printf '| %s | %s | %s | %s | %s | %s | %s |\n' "$n" "$ms" "$(mib "$rss")" \
      "$(field 1 "$r")" "$(field 2 "$r")" "$(field 3 "$r")" "$(field 4 "$r")"
    stop_pid "$tg_pid"
  done
}

study_connections() {
  echo; echo "### Connections (GET pass-through)"
  tokengate_config conns - always
  start_tokengate conns
  echo "| via | connections | requests/s | p50 ms | p99 ms | CPU µs/request | RSS MiB under load |"
  echo "|---|---:|---:|---:|---:|---:|---:|"
  for c in 1 10 100 1000; do
    for t in nginx tokengate; do
      local port pid r
      if [ "$t" = nginx ]; then port=$nginx_port pid=$nginx_pid; else port=$tg_port pid=$tg_pid; fi
      r=$(measure "http://127.0.0.1:$port" "$c" "$secs" "$work/get.lua" "$pid")
      printf '| %s | %s | %s | %s | %s | %s | %s |\n' "$t" "$c" "$(field 1 "$r")" "$(field 2 "$r")" \
        "$(field 3 "$r")" "$(field 4 "$r")" "$(mib "$(field 8 "$r")")"
    done
  done
  stop_pid "$tg_pid"
}

# A full update of about $1 bytes: the 300-byte body with allow_ips padded by /32 entries.
padded_body() {
  python3 - "$1" <<'PY'
import sys
size = int(sys.argv[1])
head = '{"id":%d,"name":"bench-token-0001","remain_quota":500000,"expired_time":-1,"unlimited_quota":false,"model_limits_enabled":true,"model_limits":"gpt-4o,gpt-4o-mini,claude-3-5-sonnet","allow_ips":"10.0.0.0/8'
tail = '","group":"default","cross_group_retry":false,"status":1,"key":"HvS2**********S4fb"}'
ips, i = [], 0
while len(head) + len(tail) + sum(len(x) + 2 for x in ips) < size - 20:
    ips.append(f"10.{i // 65536 % 256}.{i // 256 % 256}.{i % 256}/32")
    i += 1
print(head + "".join("\\n" + ip for ip in ips) + tail)
PY
}

study_bodies() {
  echo; echo "### Body size (PUT full update, 64 connections; tokengate's trail to /dev/null)"
  tokengate_config bodies - always
  start_tokengate bodies
  echo "| via | body bytes | requests/s | p50 ms | p99 ms | CPU µs/request |"
  echo "|---|---:|---:|---:|---:|---:|"
  for size in 300 4096 16384 65536; do
    body_script "body-$size" "$(padded_body "$size")"
    for t in nginx tokengate; do
      local port pid r
      if [ "$t" = nginx ]; then port=$nginx_port pid=$nginx_pid; else port=$tg_port pid=$tg_pid; fi
      r=$(measure "http://127.0.0.1:$port" 64 "$secs" "$work/body-$size.lua" "$pid")
      [ "$(field 6 "$r")" = 0 ] || echo "  ($(field 6 "$r") answers were not 2xx)"
      printf '| %s | %s | %s | %s | %s | %s |\n' "$t" "$size" "$(field 1 "$r")" "$(field 2 "$r")" \
        "$(field 3 "$r")" "$(field 4 "$r")"
    done
  done
  stop_pid "$tg_pid"
}

study_batch() {
  echo; echo "### Fan-out batch update (16 connections, limits.batch_concurrency = 16, fsync = \"always\")"
  tokengate_config batch "$work/batch/trail.jsonl" always
  start_tokengate batch
  echo "| ids per batch | batches/s | ids/s | p50 ms | p99 ms | CPU µs/id | fsyncs/s |"
  echo "|---:|---:|---:|---:|---:|---:|---:|"
  for n in 1 10 100; do
    local ids
    ids=$(seq -s, $(( n * 7 )) 7 $(( n * 14 - 7 )))
    cat > "$work/batch-$n.lua" <<LUA
wrk.method = "PUT"
wrk.path = "/api/token/batch"
wrk.body = '{"ids":[$ids],"update_fields":["remain_quota"],"remain_quota":400000}'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer $bench_key"
LUA
    local r rps
    r=$(measure "http://127.0.0.1:$tg_port" 16 "$secs" "$work/batch-$n.lua" "$tg_pid" "$tg_admin")
    [ "$(field 6 "$r")" = 0 ] || echo "  ($(field 6 "$r") answers were not 2xx)"
    rps=$(field 1 "$r")
    printf '| %s | %s | %s | %s | %s | %s | %s |\n' "$n" "$rps" "$(( rps * n ))" "$(field 2 "$r")" \
      "$(field 3 "$r")" "$(awk -v c="$(field 4 "$r")" -v n="$n" 'BEGIN { printf "%.1f", c / n }')" "$(field 5 "$r")"
  done
  stop_pid "$tg_pid"
}

study_trail() {
  echo; echo "### Audit trail size (start-up resumes the chain from the last record; PUT, 64 connections, fsync = \"always\")"
  echo "| records on disk | file MiB | start-up ms | requests/s | p99 ms | fsyncs/s |"
  echo "|---:|---:|---:|---:|---:|---:|"
  local verified=""
  for n in 1 100000 1000000 10000000; do
    tokengate_config "trail-$n" "$work/trail-$n/trail.jsonl" always
    python3 bench/trail.py "$n" "$work/trail-$n/trail.jsonl" "$work/audit-key"
    if [ -z "$verified" ]; then # the generator's chain must verify, or the study means nothing
      "$bin" audit verify --config "$work/trail-$n/tokengate.toml" >/dev/null
      verified=1
    fi
    local size ms r
    size=$(stat -c %s "$work/trail-$n/trail.jsonl")
    timed_start "trail-$n"; ms=$startup_ms
    r=$(measure "http://127.0.0.1:$tg_port" 64 "$secs" "$work/put.lua" "$tg_pid" "$tg_admin")
    printf '| %s | %s | %s | %s | %s | %s |\n' "$n" "$(mib $(( size / 1024 )))" "$ms" "$(field 1 "$r")" \
      "$(field 3 "$r")" "$(field 5 "$r")"
    stop_pid "$tg_pid"
    rm -rf "$work/trail-$n"
  done
}

study_memory() {
  echo; echo "### Memory (resident set)"
  tokengate_config memory "$work/memory/trail.jsonl" always
  start_tokengate memory
  sleep 1
  local idle r put
  idle=$(rss_kib "$tg_pid")
  r=$(measure "http://127.0.0.1:$tg_port" 1000 "$secs" "$work/get.lua" "$tg_pid")
  put=$(measure "http://127.0.0.1:$tg_port" 1000 "$secs" "$work/put.lua" "$tg_pid")
  sleep 2
  echo "| state | tokengate RSS MiB | nginx RSS MiB (master + workers) |"
  echo "|---|---:|---:|"
  echo "| idle, after start | $(mib "$idle") | $(mib "$(rss_kib "$nginx_pid")") |"
  echo "| 1 000 connections, GET (halfway) | $(mib "$(field 8 "$r")") | |"
  echo "| 1 000 connections, audited PUT (halfway) | $(mib "$(field 8 "$put")") | |"
  echo "| idle again, 2 s after | $(mib "$(rss_kib "$tg_pid")") | |"
  stop_pid "$tg_pid"
}

# Opens $2 keep-alive connections to port $1, sends one GET on each and reads its answer (with $3
# "silent": sends nothing), then holds them all open (idle) until its standard input closes. Prints
# "ready" once all are idle.
idle_clients() {
  python3 - "$1" "$2" "$bench_key" "${3:-get}" <<'PY'
import socket, sys
port, n, key, mode = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
request = ("GET /api/token/?p=1&size=10 HTTP/1.1\r\nHost: 127.0.0.1\r\n"
           f"Authorization: Bearer {key}\r\n\r\n").encode()
held = []
for _ in range(n):
    s = socket.create_connection(("127.0.0.1", port))
    if mode == "silent":
        held.append(s)
        continue
    s.sendall(request)
    answer = b""
    while b"\r\n\r\n" not in answer:
        answer += s.recv(65536)
    head, _, body = answer.partition(b"\r\n\r\n")
    length = int(next(l.split(b":")[1] for l in head.split(b"\r\n") if l.lower().startswith(b"content-length")))
    while len(body) < length:
        body += s.recv(65536)
    assert head.startswith(b"HTTP/1.1 200"), head[:40]
    held.append(s)
print("ready", flush=True)
sys.stdin.read()
PY
}

# Resident KiB per idle connection of process $1 behind port $2: RSS with IDLE_CONNECTIONS idle
# keep-alive connections minus RSS before, divided by their number. $3 as idle_clients's.
idle_per_connection() {
  local pid=$1 port=$2 n=${IDLE_CONNECTIONS:-2000} before after fifo
  before=$(rss_kib "$pid")
  fifo="$work/idle.$port.${3:-get}"
  mkfifo "$fifo"
  idle_clients "$port" "$n" "${3:-get}" < "$fifo" > "$fifo.out" &
  local client=$!
  exec 9> "$fifo"
  until grep -q ready "$fifo.out" 2>/dev/null; do sleep 0.1; done
  sleep 1
  after=$(rss_kib "$pid")
  exec 9>&-
  wait "$client"
  awk -v a="$after" -v b="$before" -v n="$n" 'BEGIN { printf "%.1f %.1f %.1f", b / 1024, a / 1024, (a - b) / n }'
}

study_idle() {
  local n=${IDLE_CONNECTIONS:-2000} r
  echo; echo "### Idle keep-alive connections ($n, each after one GET)"
  tokengate_config idle - always
  start_tokengate idle
  echo "| via | RSS before MiB | RSS with $n idle MiB | KiB per idle connection |"
  echo "|---|---:|---:|---:|"
  r=$(idle_per_connection "$nginx_pid" "$nginx_port")
  printf '| nginx | %s | %s | %s |\n' $r
  r=$(idle_per_connection "$tg_pid" "$tg_port")
  printf '| tokengate | %s | %s | %s |\n' $r
  stop_pid "$tg_pid"
  # Accepted but silent (inside the header-read timeout): what a connection costs before hyper.
  start_tokengate idle
  r=$(idle_per_connection "$tg_pid" "$tg_port" silent)
  printf '| tokengate, connected, nothing sent | %s | %s | %s |\n' $r
  stop_pid "$tg_pid"
}

study_soak() {
  local total=${SOAK_SECONDS:-600} step=30
  echo; echo "### Soak: audited PUT (fsync = \"always\"), 64 connections, ${total} s"
  tokengate_config soak "$work/soak/trail.jsonl" always
  start_tokengate soak
  echo "| elapsed s | requests/s | p99 ms | RSS MiB |"
  echo "|---:|---:|---:|---:|"
  local t=0 r
  while [ "$t" -lt "$total" ]; do
    r=$(measure "http://127.0.0.1:$tg_port" 64 "$step" "$work/put.lua" "$tg_pid")
    t=$(( t + step ))
    printf '| %s | %s | %s | %s |\n' "$t" "$(field 1 "$r")" "$(field 3 "$r")" "$(mib "$(rss_kib "$tg_pid")")"
  done
  stop_pid "$tg_pid"
  "$bin" audit verify --config "$work/soak/tokengate.toml" | tail -2
}

study_identities() {
  local total=${IDENTITIES:-1000000} bound=100000 step=10
  echo; echo "### Pass-through identities: GET, each request a new upstream token, max_identities = $bound"
  echo "(reads_per_minute = 1: every identity's bucket takes a minute to refill, so none is dropped"
  echo "as full within the run and the table fills to its bound: the worst case for memory)"
  tokengate_config ids - always
  # Pass-through mode: no held credential; every caller token is an identity with its own buckets.
  sed -i -e '/^access_token_file/d' -e 's/^url = .*/&\nmode = "passthrough"/' \
    -e 's/^reads_per_minute = .*/reads_per_minute = 1/' \
    -e "s/^upstream_requests_per_second = .*/&\nmax_identities = $bound/" "$work/ids/tokengate.toml"
  start_tokengate ids
  echo "| distinct tokens seen | identities tracked | RSS MiB | requests/s |"
  echo "|---:|---:|---:|---:|"
  printf '| 0 | 0 | %s | |\n' "$(mib "$(rss_kib "$tg_pid")")"
  local seen=0 segment=0 r buckets
  while [ "$seen" -lt "$total" ]; do
    segment=$(( segment + 1 ))
    # Every request of every thread and segment carries a token no other request used.
    cat > "$work/ids.lua" <<LUA
$(thread_offsets)
request = function()
  n = n + 1
  return wrk.format("GET", "/api/token/", { ["Authorization"] = "Bearer bench-token-$segment-" .. offset .. "-" .. n })
end
LUA
    r=$(measure "http://127.0.0.1:$tg_port" 64 "$step" "$work/ids.lua" "$tg_pid")
    seen=$(( seen + $(field 7 "$r") ))
    buckets=$(metric "$tg_admin" tokengate_rate_limit_buckets)
    printf '| %s | %s | %s | %s |\n' "$seen" "$(( (buckets - 1) / 2 ))" "$(mib "$(rss_kib "$tg_pid")")" "$(field 1 "$r")"
  done
  stop_pid "$tg_pid"
}

study_addresses() {
  local total=${ADDRESSES:-100000} bound=${ADDRESS_BOUND:-100000} step=20000
  echo; echo "### Refusals before authentication from $total source addresses (127.0.0.0/8), max_identities = $bound"
  echo "(each address sends 25 requests with an unknown key: 20 are recorded, 5 are 429s counted in"
  echo "the address's summary; the trail goes to standard output, read by nothing)"
  tokengate_config addrs - always
  sed -i -e "s/^upstream_requests_per_second = .*/&\nmax_identities = $bound/" "$work/addrs/tokengate.toml"
  start_tokengate addrs
  echo "| addresses seen | addresses tracked | RSS MiB | requests/s |"
  echo "|---:|---:|---:|---:|"
  printf '| 0 | 0 | %s | |\n' "$(mib "$(rss_kib "$tg_pid")")"
  local from=0 t0 t1 tracked
  while [ "$from" -lt "$total" ]; do
    t0=$(date +%s%N)
    python3 - "$tg_port" "$from" "$step" <<'PY'
import asyncio, sys
port, start, count = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
request = b"DELETE /api/token/1 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer tg_unknown\r\n\r\n"
async def address(n):
    ip = f"127.{(n >> 16) & 255}.{(n >> 8) & 255}.{n & 255}"
    reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(ip, 0))
    for _ in range(25):
        writer.write(request)
        await writer.drain()
        head = await reader.readuntil(b"\r\n\r\n")
        length = int(next(l.split(b":")[1] for l in head.split(b"\r\n") if l.lower().startswith(b"content-length")))
        await reader.readexactly(length)
    writer.close()
async def main():
    queue = asyncio.Queue()
    for n in range(start + 1, start + count + 1):
        queue.put_nowait(n)
    async def worker():
        while not queue.empty():
            await address(queue.get_nowait())
    await asyncio.gather(*(worker() for _ in range(32)))
asyncio.run(main())
PY
    t1=$(date +%s%N)
    from=$(( from + step ))
    tracked=$(metric "$tg_admin" tokengate_unauthenticated_addresses)
    printf '| %s | %s | %s | %s |\n' "$from" "$tracked" "$(mib "$(rss_kib "$tg_pid")")" \
      "$(( step * 25 * 1000000000 / (t1 - t0) ))"
  done
  stop_pid "$tg_pid"
}

study_window() {
  echo; echo "### PATCH read-to-write window (tokengate_patch_window_seconds), trail on disk, fsync = \"always\""
  echo "(from the read of the token being answered to the full PUT being sent: the merge, the"
  echo "policy check and the intent record; usage of the token in that window is undone by the PUT)"
  tokengate_config window "$work/window/trail.jsonl" always
  start_tokengate window
  echo "| connections | requests/s | p50 window µs | p99 window µs | windows measured |"
  echo "|---:|---:|---:|---:|---:|"
  local c r before after
  for c in 1 16 64; do
    before=$(curl -sf "http://127.0.0.1:$tg_admin/metrics")
    r=$(measure "http://127.0.0.1:$tg_port" "$c" "$secs" "$work/patch.lua" "$tg_pid")
    after=$(curl -sf "http://127.0.0.1:$tg_admin/metrics")
    printf '| %s | %s | %s |\n' "$c" "$(field 1 "$r")" "$(BEFORE="$before" AFTER="$after" python3 - <<'PY'
import os, re
def buckets(text):
    out = {}
    for le, n in re.findall(r'^tokengate_patch_window_seconds_bucket\{le="([^"]+)"\} (\d+)', text, re.M):
        out[float("inf") if le == "+Inf" else float(le)] = int(n)
    return out
b, a = buckets(os.environ["BEFORE"]), buckets(os.environ["AFTER"])
counts = sorted((le, a[le] - b.get(le, 0)) for le in a)
total = counts[-1][1] if counts else 0
def quantile(q):
    for le, n in counts:
        if n >= q * total:
            return "≤ %.0f" % (le * 1e6) if le != float("inf") else "> last bucket"
    return "?"
print(f"{quantile(0.5)} | {quantile(0.99)} | {total}")
PY
)"
  done
  stop_pid "$tg_pid"
}

study_cluster() {
  need redis-server redis-server
  local redis_port c=64 r
  redis_port=$(free_port)
  mkdir -p "$work/redis"
  redis-server --port "$redis_port" --bind 127.0.0.1 --save '' --appendonly no --dir "$work/redis" \
    > /dev/null 2>&1 &
  local redis_pid=$!
  pids+=("$redis_pid")
  sleep 0.5
  local cluster="[cluster]
url = \"redis://127.0.0.1:$redis_port/0\"
instance = \"bench\""
  echo; echo "### Shared state in Redis against one process (SPEC §11), $c connections"
  echo "(trail to standard output; CPU of tokengate, and of redis-server, per request)"
  echo "| case | state | requests/s | p50 ms | p99 ms | tokengate CPU µs/request | redis CPU µs/request |"
  echo "|---|---|---:|---:|---:|---:|---:|"
  tokengate_config local - always
  tokengate_config shared - always "$cluster"
  local case state r0 r1
  for case in get patch; do
    for state in local shared; do
      start_tokengate "$state"
      r0=$(cpu_ticks "$redis_pid")
      r=$(measure "http://127.0.0.1:$tg_port" "$c" "$secs" "$work/$case.lua" "$tg_pid")
      r1=$(cpu_ticks "$redis_pid")
      printf '| %s | %s | %s | %s | %s | %s | %s |\n' "$case" "$state" "$(field 1 "$r")" "$(field 2 "$r")" \
        "$(field 3 "$r")" "$(field 4 "$r")" \
        "$(awk -v t=$(( r1 - r0 )) -v hz="$(getconf CLK_TCK)" -v n="$(field 7 "$r")" 'BEGIN { printf "%.1f", n ? t / hz * 1e6 / n : 0 }')"
      stop_pid "$tg_pid"
    done
  done

  echo; echo "### Three replicas against one (GET, $c connections in all, shared state)"
  local i ports=() rps=0
  for i in 1 2 3; do
    tokengate_config "replica-$i" - always "$cluster"
    sed -i "s/instance = \"bench\"/instance = \"replica-$i\"/" "$work/replica-$i/tokengate.toml"
    start_tokengate "replica-$i"
    ports+=("$tg_port")
  done
  r=$(measure "http://127.0.0.1:${ports[0]}" "$c" "$secs" "$work/get.lua")
  echo "| replicas | requests/s in all | p99 ms (worst) |"
  echo "|---:|---:|---:|"
  printf '| 1 | %s | %s |\n' "$(field 1 "$r")" "$(field 3 "$r")"
  local outs=() worst=0
  for i in 0 1 2; do
    ( measure "http://127.0.0.1:${ports[$i]}" $(( c / 3 )) "$secs" "$work/get.lua" > "$work/three-$i.out" ) &
    outs+=($!)
  done
  wait "${outs[@]}"
  for i in 0 1 2; do
    r=$(cat "$work/three-$i.out")
    rps=$(awk -v a="$rps" -v b="$(field 1 "$r")" 'BEGIN { print a + b }')
    worst=$(awk -v a="$worst" -v b="$(field 3 "$r")" 'BEGIN { print (b > a) ? b : a }')
  done
  printf '| 3 | %s | %s |\n' "$rps" "$worst"
}

# Upstream requests sent so far: every exchange, of every operation, is timed once.
upstream_requests() {
  curl -sf "http://127.0.0.1:$1/metrics" |
    awk '$1 ~ /^tokengate_upstream_duration_seconds_count/ { n += $2 } END { print n + 0 }'
}

study_before() {
  local c=64 r u0 u1 round state body
  echo; echo "### The before-read of a full update (SPEC §6.1), $c connections, fsync = \"always\""
  echo "put: the token as clients send it back (with \`status\` and the masked \`key\`, which the stored"
  echo "token must confirm, so it is read anyway); put_bare: the same fields without them."
  echo
  echo "| round | body | audit.capture_before | requests/s | p50 ms | p99 ms | CPU µs/request | upstream requests per change |"
  echo "|---:|---|---|---:|---:|---:|---:|---:|"
  for state in true false; do
    tokengate_config "before-$state" "$work/before-$state/trail.jsonl" always
    sed -i "s/^\[audit\]\$/[audit]\ncapture_before = $state/" "$work/before-$state/tokengate.toml"
  done
  for round in 1 2; do
    for body in put put_bare; do
      for state in true false; do
        start_tokengate "before-$state"
        u0=$(upstream_requests "$tg_admin")
        r=$(measure "http://127.0.0.1:$tg_port" "$c" "$secs" "$work/$body.lua" "$tg_pid")
        u1=$(upstream_requests "$tg_admin")
        [ "$(field 6 "$r")" = 0 ] || echo "  ($(field 6 "$r") answers were not 2xx)"
        printf '| %s | %s | %s | %s | %s | %s | %s | %s |\n' "$round" "$body" "$state" "$(field 1 "$r")" \
          "$(field 2 "$r")" "$(field 3 "$r")" "$(field 4 "$r")" \
          "$(awk -v u=$(( u1 - u0 )) -v n="$(field 7 "$r")" 'BEGIN { printf "%.2f", n ? u / n : 0 }')"
        stop_pid "$tg_pid"
      done
    done
  done
}

for study in "${studies[@]}"; do
  "study_$study"
done
