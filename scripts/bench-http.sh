#!/usr/bin/env bash
# Requests per second of bench_server's /plain, /plain-headers, /limited and /blocked under wrk,
# in one run:
# ROUNDS rounds, each endpoint once per round in turn, medians and ratios to /plain at the end.
# The server runs on core 0 (one tokio worker), wrk on core 1.
#   scripts/bench-http.sh            (ROUNDS=5 DURATION=8s CONNECTIONS=32 by default)
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-5}
DURATION=${DURATION:-8s}
CONNECTIONS=${CONNECTIONS:-32}
PORT=${PORT:-18181}
command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk >/dev/null; }
cargo build -q --release --example bench_server
# Server and load generator on a core each: far steadier than letting them share both.
PORT=$PORT taskset -c 0 ./target/release/examples/bench_server &
server=$!
trap 'kill $server' EXIT
for _ in $(seq 50); do curl -s -o /dev/null "localhost:$PORT" && break; sleep 0.1; done

declare -A results
# (plain-headers: /plain plus five static headers the size of /limited's rate limit fields)
for round in $(seq "$ROUNDS"); do
  for path in plain plain-headers limited blocked; do
    rps=$(taskset -c 1 wrk -t1 -c"$CONNECTIONS" -d"$DURATION" -s scripts/post.lua "http://127.0.0.1:$PORT/$path" |
      awk '/Requests\/sec/ {print $2}')
    results[$path]+="$rps "
    echo "round $round /$path: $rps req/s"
  done
done
median() { tr ' ' '\n' | grep -v '^$' | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
plain=$(echo "${results[plain]}" | median)
echo "== medians over $ROUNDS rounds (wrk -t1 -c$CONNECTIONS -d$DURATION)"
for path in plain plain-headers limited blocked; do
  m=$(echo "${results[$path]}" | median)
  echo "/$path: $m req/s, ratio to /plain $(awk -v a="$m" -v b="$plain" 'BEGIN {printf "%.3f", a / b}')"
done
