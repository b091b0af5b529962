# Shared by the scripts under bench/: installs what a fresh machine lacks, starts the fixed-answer
# upstream (nginx), the peer proxy (nginx) and tokengate, and measures one wrk run against one of
# them (requests/s, latency, CPU of the serving process per request).
#
# Sourced, not run. The caller calls `setup_bench NAME` first.

set -euo pipefail

need() { # $1 command, $2 Debian package
  command -v "$1" >/dev/null && return
  if [ -z "${apt_updated:-}" ]; then apt-get update -qq; apt_updated=1; fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$2" >/dev/null
}

install_tools() {
  need wrk wrk
  need curl curl
  need python3 python3
  need pgrep procps
  # ring and mimalloc compile C through the cc crate.
  need cc gcc
  [ -e /usr/include/stdio.h ] || need __libc_headers libc6-dev
  # nginx-light: the proxy module and little else. Debian's package scripts try to start the
  # service on port 80; that refusal is harmless (no init system) and ignored.
  need nginx nginx-light
  command -v nginx >/dev/null || { echo "nginx could not be installed" >&2; exit 1; }
}

# Installs the tools, builds tokengate in release mode (or takes $TOKENGATE_BIN), makes the work
# directory target/bench-$1.* (removed on exit, with every server started, unless KEEP_WORK is set)
# and raises the open-file limit for 1 000 connections. Sets `bin` and `work`.
setup_bench() {
  install_tools
  if [ -n "${TOKENGATE_BIN:-}" ]; then bin=$(realpath "$TOKENGATE_BIN"); else
    cargo build --release --locked --quiet
    bin=$PWD/target/release/tokengate
  fi
  mkdir -p target
  work=$(mktemp -d "$PWD/target/bench-$1.XXXXXX")
  trap cleanup EXIT
  ulimit -n 20000 2>/dev/null || true
}

pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  [ -n "${KEEP_WORK:-}" ] || rm -rf "$work"
}

# A free TCP port on 127.0.0.1 (the kernel's choice; closed again at once).
free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

wait_http() { # $1 URL; any HTTP answer will do (polls every 10 ms, for up to 60 s)
  for _ in $(seq 6000); do
    curl -s -o /dev/null "$1" && return 0
    sleep 0.01
  done
  echo "nothing answers at $1" >&2
  return 1
}

# The token every fixed answer carries, as new-api's era-2 answers carry it.
token_json='{"id":1,"user_id":1,"key":"HvS2**********S4fb","status":1,"name":"bench-token-0001","created_time":1795371279,"accessed_time":1795371279,"expired_time":-1,"remain_quota":500000,"unlimited_quota":false,"model_limits_enabled":true,"model_limits":"gpt-4o,gpt-4o-mini,claude-3-5-sonnet","allow_ips":"10.0.0.0/8\\n192.168.1.0/24","used_quota":0,"group":"default","cross_group_retry":false,"DeletedAt":null}'

# The fixed-answer upstream: nginx answering every token route with a constant new-api answer
# (a page of one token for the list, the token for everything else). One worker, no logs.
start_upstream() { # sets up_port, up_pid
  up_port=$(free_port)
  mkdir -p "$work/upstream"
  cat > "$work/upstream/nginx.conf" <<NGINX
daemon off;
user root;
worker_processes 1;
pid $work/upstream/nginx.pid;
error_log $work/upstream/error.log warn;
events { worker_connections 8192; }
http {
  access_log off;
  client_body_temp_path $work/upstream/body;
  client_max_body_size 4m;
  client_body_buffer_size 4m;
  keepalive_requests 10000000;
  keepalive_timeout 300s;
  default_type application/json;
  server {
    listen 127.0.0.1:$up_port backlog=4096;
    location = /api/token/ {
      if (\$request_method = GET) {
        return 200 '{"data":{"page":1,"page_size":10,"total":1,"items":[$token_json]},"message":"","success":true}';
      }
      return 200 '{"data":$token_json,"message":"","success":true}';
    }
    location / {
      return 200 '{"data":$token_json,"message":"","success":true}';
    }
  }
}
NGINX
  nginx -p "$work/upstream" -c "$work/upstream/nginx.conf" &
  up_pid=$!
  pids+=("$up_pid")
  wait_http "http://127.0.0.1:$up_port/api/token/"
}

# The peer: nginx as the reverse proxy operators know, injecting the same two headers tokengate
# injects, with pooled keep-alive connections to the upstream. One worker per core.
start_nginx_proxy() { # sets nginx_port, nginx_pid
  nginx_port=$(free_port)
  mkdir -p "$work/proxy"
  cat > "$work/proxy/nginx.conf" <<NGINX
daemon off;
user root;
worker_processes auto;
worker_rlimit_nofile 20000;
pid $work/proxy/nginx.pid;
error_log $work/proxy/error.log warn;
events { worker_connections 8192; }
http {
  access_log off;
  client_body_temp_path $work/proxy/body;
  proxy_temp_path $work/proxy/proxy;
  client_max_body_size 4m;
  client_body_buffer_size 4m;
  keepalive_requests 10000000;
  keepalive_timeout 300s;
  upstream new_api {
    server 127.0.0.1:$up_port;
    keepalive 1024;
    keepalive_requests 10000000;
  }
  server {
    listen 127.0.0.1:$nginx_port backlog=4096;
    location /api/token/ {
      proxy_pass http://new_api;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Authorization "bench-upstream-token";
      proxy_set_header New-Api-User "1";
    }
  }
}
NGINX
  nginx -p "$work/proxy" -c "$work/proxy/nginx.conf" &
  nginx_pid=$!
  pids+=("$nginx_pid")
  wait_http "http://127.0.0.1:$nginx_port/"
}

bench_key=tg_bench_key_not_secret_0123456789abcdef0123456789abcdef

# A tokengate config: $1 name (a directory under $work), $2 audit path, $3 fsync, $4 extra clients
# (TOML appended), $5 extra [server] lines. Rate limits are set out of reach: the benchmark measures
# the work, not the limits. CAPTURE_BEFORE=false sets audit.capture_before = false (no before-read,
# one upstream request per write, as issue 21's put targets are measured).
tokengate_config() {
  local dir="$work/$1"
  mkdir -p "$dir"
  printf 'bench-upstream-token' > "$dir/upstream-token"
  [ -f "$work/audit-key" ] || head -c 48 /dev/urandom | base64 > "$work/audit-key"
  local digest
  digest=$(printf %s "$bench_key" | sha256sum | cut -d' ' -f1)
  cat > "$dir/tokengate.toml" <<TOML
[server]
listen = "127.0.0.1:$(free_port)"
admin_listen = "127.0.0.1:$(free_port)"
max_body_bytes = 1048576
${5:-}
[upstream]
url = "http://127.0.0.1:$up_port"
access_token_file = "$dir/upstream-token"
[limits]
batch_concurrency = 16
[rate_limit]
reads_per_minute = 60000000
writes_per_minute = 60000000
burst = 1000000
upstream_requests_per_second = 1000000
[audit]
path = "$2"
fsync = "$3"
hmac_key_file = "$work/audit-key"
rotate_bytes = 107374182400
${CAPTURE_BEFORE:+capture_before = $CAPTURE_BEFORE}
[log]
format = "json"
${4:-}
[[clients]]
name = "bench"
key_sha256 = "$digest"
allow = ["list", "search", "get", "create", "update", "delete", "batch_update", "batch_delete"]
TOML
}

# Starts tokengate on the config in $work/$1; sets tg_port, tg_admin, tg_pid.
start_tokengate() {
  local dir="$work/$1"
  tg_port=$(awk -F'"' '/^listen/ { split($2, a, ":"); print a[2] }' "$dir/tokengate.toml")
  tg_admin=$(awk -F'"' '/^admin_listen/ { split($2, a, ":"); print a[2] }' "$dir/tokengate.toml")
  RUST_LOG=${TOKENGATE_LOG:-warn} "$bin" serve --config "$dir/tokengate.toml" \
    > "$dir/stdout" 2> "$dir/serve.log" &
  tg_pid=$!
  pids+=("$tg_pid")
  wait_http "http://127.0.0.1:$tg_admin/healthz"
}

stop_pid() { kill "$1" 2>/dev/null || true; wait "$1" 2>/dev/null || true; }

# CPU time, in clock ticks, of a process and its children (nginx's workers).
cpu_ticks() {
  local total=0 p
  for p in "$1" $(pgrep -P "$1" || true); do
    total=$(( total + $(awk '{ print $14 + $15 }' "/proc/$p/stat" 2>/dev/null || echo 0) ))
  done
  echo "$total"
}

# Resident memory of a process and its children, in KiB.
rss_kib() {
  local total=0 p
  for p in "$1" $(pgrep -P "$1" || true); do
    total=$(( total + $(awk '/^VmRSS/ { print $2 }' "/proc/$p/status" 2>/dev/null || echo 0) ))
  done
  echo "$total"
}

metric() { # $1 admin port, $2 metric name (a plain counter or a histogram's _count)
  curl -sf "http://127.0.0.1:$1/metrics" | awk -v m="$2" '$1 == m { print $2 }'
}

# One wrk run. $1 URL, $2 connections, $3 seconds, $4 Lua script, $5 pid whose CPU and memory are
# counted (empty: none), $6 admin port for the fsync count (empty: none). Prints one line:
#   rps p50_ms p99_ms cpu_us_per_request fsyncs_per_s non2xx requests rss_kib_halfway
measure() {
  local url=$1 c=$2 s=$3 script=$4 pid=${5:-} admin=${6:-}
  local t0=0 t1=0 f0=0 f1=0 rss=0 out wrk_pid wrk_out
  # A file of its own: several measures may run at once (bench/scale.sh cluster).
  wrk_out=$(mktemp "$work/wrk.XXXXXX")
  [ -n "$pid" ] && t0=$(cpu_ticks "$pid")
  [ -n "$admin" ] && f0=$(metric "$admin" tokengate_audit_fsync_seconds_count)
  wrk -t"$(( c < 2 ? c : 2 ))" -c"$c" -d"${s}s" --timeout 10s --latency -s "$script" "$url" \
    > "$wrk_out" 2>&1 &
  wrk_pid=$!
  if [ -n "$pid" ]; then sleep "$(( s / 2 ))"; rss=$(rss_kib "$pid"); fi
  wait "$wrk_pid" || true
  out=$(cat "$wrk_out")
  [ -n "$pid" ] && t1=$(cpu_ticks "$pid")
  [ -n "$admin" ] && f1=$(metric "$admin" tokengate_audit_fsync_seconds_count)
  WRK="$out" T0=$t0 T1=$t1 F0=${f0:-0} F1=${f1:-0} S=$s RSS=$rss HZ=$(getconf CLK_TCK) python3 - <<'PY'
import os, re
out = os.environ["WRK"]
def ms(text):
    value, unit = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text).groups()
    return float(value) * {"us": 1e-3, "ms": 1, "s": 1e3, "m": 6e4}[unit]
def line(label):
    m = re.search(r"^\s*" + re.escape(label) + r"\s+(\S+)", out, re.M)
    return m.group(1) if m else None
rps = float(line("Requests/sec:") or 0)
done = re.search(r"(\d+) requests in", out)
requests = int(done.group(1)) if done else 0
non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
errors = re.search(r"Socket errors: (.*)", out)
p50 = ms(line("50%")) if line("50%") else float("nan")
p99 = ms(line("99%")) if line("99%") else float("nan")
ticks = float(os.environ["T1"]) - float(os.environ["T0"])
cpu = ticks / float(os.environ["HZ"]) * 1e6 / requests if requests else float("nan")
fsyncs = (float(os.environ["F1"]) - float(os.environ["F0"])) / float(os.environ["S"])
bad = int(non2xx.group(1)) if non2xx else 0
if errors:
    bad += sum(int(n) for n in re.findall(r"\d+", errors.group(1)))
print(f"{rps:.0f} {p50:.3f} {p99:.3f} {cpu:.1f} {fsyncs:.0f} {bad} {requests} {os.environ['RSS']}")
PY
}

# wrk scripts: one request shape each, with the caller key (nginx ignores it). Writes go to 1 000
# different tokens in turn: changes of one token take turns by design (SPEC §4.5), and a benchmark
# of one token would measure that queue, not the gateway.
write_scripts() {
  cat > "$work/get.lua" <<LUA
wrk.method = "GET"
wrk.path = "/api/token/?p=1&size=10"
wrk.headers["Authorization"] = "Bearer $bench_key"
LUA
  # A full update (SPEC §4.3: every field present), about 300 bytes.
  body_script put '{"id":%d,"name":"bench-token-0001","remain_quota":500000,"expired_time":-1,"unlimited_quota":false,"model_limits_enabled":true,"model_limits":"gpt-4o,gpt-4o-mini,claude-3-5-sonnet","allow_ips":"10.0.0.0/8\n192.168.1.0/24","group":"default","cross_group_retry":false,"status":1,"key":"HvS2**********S4fb"}'
  # The same update without `status` and the masked `key`, which only the stored token can confirm
  # (SPEC §4.2): no read is needed to check it.
  body_script put_bare '{"id":%d,"name":"bench-token-0001","remain_quota":500000,"expired_time":-1,"unlimited_quota":false,"model_limits_enabled":true,"model_limits":"gpt-4o,gpt-4o-mini,claude-3-5-sonnet","allow_ips":"10.0.0.0/8\n192.168.1.0/24","group":"default","cross_group_retry":false}'
  cat > "$work/patch.lua" <<LUA
$(thread_offsets)
local headers = { ["Content-Type"] = "application/json", ["Authorization"] = "Bearer $bench_key" }
request = function()
  n = n + 1
  return wrk.format("PATCH", "/api/token/" .. ((offset + n) % 1000 + 1), headers, '{"remain_quota":400000}')
end
LUA
}

# Lua: each wrk thread starts at its own place among the 1 000 tokens (wrk runs one copy of the
# script per thread; starting both at token 1 made them collide on the same tokens in lockstep).
thread_offsets() {
  cat <<'LUA'
local threads = 0
function setup(thread)
  thread:set("offset", threads * 500)
  threads = threads + 1
end
local n = 0
LUA
}

# $1 name, $2 a full update sent with PUT /api/token/, a Lua format string whose %d is the id.
body_script() {
  cat > "$work/$1.lua" <<LUA
$(thread_offsets)
local headers = { ["Content-Type"] = "application/json", ["Authorization"] = "Bearer $bench_key" }
local body = [[$2]]
request = function()
  n = n + 1
  return wrk.format("PUT", "/api/token/", headers, string.format(body, (offset + n) % 1000 + 1))
end
LUA
}

machine() {
  echo "$(nproc) cores, $(lscpu | awk -F: '/Model name/ { gsub(/^ +/, "", $2); print $2 }'), Linux $(uname -r), nginx $(nginx -v 2>&1 | cut -d/ -f2), $(wrk -v 2>&1 | head -1 | cut -d' ' -f1-2), tokengate $(git rev-parse --short HEAD 2>/dev/null || echo '?'); $(date -u +%FT%TZ)"
}
