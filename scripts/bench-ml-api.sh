#!/usr/bin/env bash
# ml_api under wrk: requests per second of its routes, each a ratio to GET /model-info (a
# route with no limit on the same server, measured in the same run). The server runs on core
# 0 (in memory, no warm-up), wrk on core 1; the cases are interleaved round by round and the
# medians quoted.
#   scripts/bench-ml-api.sh            (ROUNDS=5 DURATION=5s CONNECTIONS=32 by default)
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-5}
DURATION=${DURATION:-5s}
CONNECTIONS=${CONNECTIONS:-32}
PORT=${PORT:-18383}
command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk >/dev/null; }
cargo build -q --release --example ml_api
WARMUP_SECS=0 RUST_LOG=error PORT=$PORT taskset -c 0 ./target/release/examples/ml_api &
server=$!
trap 'kill "$server" 2>/dev/null' EXIT
for _ in $(seq 100); do curl -s -o /dev/null "localhost:$PORT/model-info" && break; sleep 0.1; done

# case = name:method-script:path
cases=(
  "model-info (no limit):get:/model-info"
  "predict, a new API key each request (admitted):scripts/ml-api-keys.lua:/predict"
  "predict, one API key (429 flood):scripts/ml-api-one-key.lua:/predict"
)
declare -A results
for round in $(seq "$ROUNDS"); do
  for case in "${cases[@]}"; do
    IFS=: read -r name script path <<<"$case"
    args=()
    [ "$script" != get ] && args=(-s "$script")
    rps=$(taskset -c 1 wrk -t1 -c"$CONNECTIONS" -d"$DURATION" "${args[@]}" "http://127.0.0.1:$PORT$path" |
      awk '/Requests\/sec/ {print $2}')
    results[$name]+="$rps "
    echo "round $round $name: $rps req/s"
  done
done
median() { tr ' ' '\n' | grep -v '^$' | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
base=$(echo "${results["model-info (no limit)"]}" | median)
echo "== medians over $ROUNDS rounds (wrk -t1 -c$CONNECTIONS -d$DURATION), ratio to model-info"
for case in "${cases[@]}"; do
  name=${case%%:*}
  m=$(echo "${results[$name]}" | median)
  echo "$name: $m req/s, ratio $(awk -v a="$m" -v b="$base" 'BEGIN {printf "%.3f", a / b}')"
done
curl -s "localhost:$PORT/metrics" | head -c 600; echo
