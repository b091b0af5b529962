#!/usr/bin/env bash
# `tokengate audit query` over large synthetic trails: records read per second and the peak
# resident size of the process, beside `audit verify` over the same trail (the same streaming
# reader, without the pairing and printing). The trail is made by `bench/trail.py N … changes`:
# version 2 intents and outcomes of updates, four changes in flight, one request in 50 refused.
#
#   bash bench/query.sh [RECORDS...]      (default: 100000 1000000 10000000)
#
# Each size needs ~660 bytes of disk per record under target/ (6.6 GB for 10 million); the trail
# is removed once measured. TOKENGATE_BIN names a built binary instead of building one.
set -euo pipefail
cd "$(dirname "$0")/.."
sizes=("${@:-100000 1000000 10000000}"); sizes=(${sizes[@]})

command -v python3 >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3; }
[ -x /usr/bin/time ] || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq time; }
if [ -n "${TOKENGATE_BIN:-}" ]; then bin=$(realpath "$TOKENGATE_BIN"); else
  cargo build --release --locked --quiet
  bin=$PWD/target/release/tokengate
fi
mkdir -p target
work=$(mktemp -d "$PWD/target/bench-query.XXXXXX")
trap 'rm -rf "$work"' EXIT
head -c 48 /dev/urandom | base64 > "$work/audit-key"

# Runs the binary with "$@", output to /dev/null; prints "seconds peak_kib".
timed() {
  /usr/bin/time -f '%e %M' -o "$work/time" "$bin" "$@" >/dev/null 2>"$work/stderr" \
    || { cat "$work/stderr" >&2; exit 1; }
  cat "$work/time"
}

echo "| records | trail MiB | run | matches | seconds | records/s | peak RSS MiB |"
echo "|---:|---:|---|---:|---:|---:|---:|"
for n in "${sizes[@]}"; do
  trail="$work/trail-$n.jsonl"
  python3 bench/trail.py "$n" "$trail" "$work/audit-key" changes
  sync
  mib=$(( $(stat -c %s "$trail") / 1048576 ))
  # One read first so that every run finds the trail in the page cache alike (when it fits).
  cat "$trail" >/dev/null
  key=(--key-file "$work/audit-key")
  while IFS='|' read -r label args; do
    read -r -a argv <<<"$args"
    read -r secs kib < <(timed audit "${argv[@]}" "${key[@]}" "$trail")
    matches=$(grep -o '[0-9]* changes\? match' "$work/stderr" | cut -d' ' -f1 || true)
    printf '| %s | %s | %s | %s | %s | %s | %.1f |\n' "$n" "$mib" "$label" "${matches:--}" "$secs" \
      "$(awk -v n="$n" -v s="$secs" 'BEGIN { printf "%d", (s > 0 ? n / s : 0) }')" \
      "$(awk -v k="$kib" 'BEGIN { print k / 1024 }')"
  done <<'RUNS'
`audit verify`|verify
`query` (every change, text)|query
`query --format json` (every change)|query --format json
`query --token 873 --since 2026-10-23` (the README's question)|query --token 873 --since 2026-10-23
`query --failed --client ci`|query --failed --client ci
RUNS
  rm -f "$trail"
done
