#!/usr/bin/env bash
# Scans tokengate's TLS listener with testssl.sh: protocols, cipher categories, forward secrecy
# and server defaults. The gateway runs with a certificate made here (ECDSA P-256, signed by a CA
# made here) in front of the built-in emulator. testssl.sh is installed from Debian when missing.
#
#   bash bench/tls-scan.sh            (prints testssl.sh's report; the README quotes a run)
set -euo pipefail
cd "$(dirname "$0")/.."

command -v testssl >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq testssl.sh; }
command -v openssl >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openssl; }
cargo build --locked --quiet
bin=target/debug/tokengate

work=$(mktemp -d "$PWD/target/tls-scan.XXXXXX")
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT

# A CA and a server certificate for 127.0.0.1.
openssl ecparam -name prime256v1 -genkey -noout -out "$work/ca-key.pem" 2>/dev/null
openssl req -x509 -new -key "$work/ca-key.pem" -subj "/CN=tls-scan CA" -days 2 -out "$work/ca.pem" 2>/dev/null
openssl ecparam -name prime256v1 -genkey -noout -out "$work/server-key.pem" 2>/dev/null
openssl req -new -key "$work/server-key.pem" -subj "/CN=127.0.0.1" -out "$work/server.csr" 2>/dev/null
printf 'subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n' > "$work/ext"
openssl x509 -req -in "$work/server.csr" -CA "$work/ca.pem" -CAkey "$work/ca-key.pem" -CAcreateserial \
  -days 2 -extfile "$work/ext" -out "$work/server.pem" 2>/dev/null

up=127.0.0.1:39201; gw=127.0.0.1:39202; admin=127.0.0.1:39203
"$bin" emulator --listen "$up" --access-token scan-upstream-token --user-id 1 2>/dev/null &
pids+=($!)
printf 'scan-upstream-token' > "$work/upstream-token"
head -c 48 /dev/urandom | base64 > "$work/audit-key"
cat > "$work/tokengate.toml" <<TOML
[server]
listen = "$gw"
admin_listen = "$admin"
[server.tls]
cert_file = "$work/server.pem"
key_file = "$work/server-key.pem"
[upstream]
url = "http://$up"
access_token_file = "$work/upstream-token"
[audit]
path = "$work/audit.jsonl"
hmac_key_file = "$work/audit-key"
[[clients]]
name = "scan"
key_sha256 = "$(printf %s tg_scan | sha256sum | cut -d' ' -f1)"
allow = ["list"]
TOML
"$bin" serve --config "$work/tokengate.toml" 2>"$work/gateway.log" &
pids+=($!)
for _ in $(seq 200); do grep -q "tokengate listening" "$work/gateway.log" && break; sleep 0.1; done

grep -q "tokengate listening" "$work/gateway.log" || { cat "$work/gateway.log"; exit 1; }
testssl --quiet --color 0 --warnings off --protocols --std --fs --server-defaults "$gw"
