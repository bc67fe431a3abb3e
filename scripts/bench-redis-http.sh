#!/usr/bin/env bash
# The `redis` example under wrk beside the `in_memory` example: POST /predict, whose limit
# (20 and 10 per minute per client) wrk's one address spends at once, so this measures what
# an abusive client costs each server: refusals, which the Redis store answers from its
# blocked-key cache. A redis-server of its own on a free port; servers on core 0, wrk on core 1;
# cases interleaved round by round, medians.
#   scripts/bench-redis-http.sh          (ROUNDS=5 DURATION=5s CONNECTIONS=32 by default)
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-5}
DURATION=${DURATION:-5s}
CONNECTIONS=${CONNECTIONS:-32}
command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk >/dev/null; }
command -v redis-server >/dev/null || { apt-get update -qq && apt-get install -y -qq redis-server >/dev/null; }
cargo build -q --release --features redis --example redis --example in_memory
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
redis_port=$(free_port)
redis-server --port "$redis_port" --bind 127.0.0.1 --save "" --appendonly no >/dev/null &
pids=($!)
trap 'kill "${pids[@]}" 2>/dev/null' EXIT
memory_port=$(free_port)
PORT=$memory_port taskset -c 0 ./target/release/examples/in_memory >/dev/null 2>&1 &
pids+=($!)
sleep 0.5
redis_app_port=$(free_port)
REDIS_URL="redis://127.0.0.1:$redis_port" PORT=$redis_app_port taskset -c 0 ./target/release/examples/redis >/dev/null 2>&1 &
pids+=($!)
for port in "$memory_port" "$redis_app_port"; do
  for _ in $(seq 50); do curl -s -o /dev/null "localhost:$port" && break; sleep 0.1; done
done
declare -A results
for round in $(seq "$ROUNDS"); do
  for case in in_memory redis; do
    if [ "$case" = in_memory ]; then port=$memory_port script=scripts/post.lua; else port=$redis_app_port script=scripts/post-features.lua; fi
    rps=$(taskset -c 1 wrk -t1 -c"$CONNECTIONS" -d"$DURATION" -s "$script" "http://127.0.0.1:$port/predict" |
      awk '/Requests\/sec/ {print $2}')
    results[$case]+="$rps "
    echo "round $round $case: $rps req/s"
  done
done
median() { tr ' ' '\n' | grep -v '^$' | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
memory=$(echo "${results[in_memory]}" | median)
redis=$(echo "${results[redis]}" | median)
echo "== medians over $ROUNDS rounds (wrk -t1 -c$CONNECTIONS -d$DURATION), POST /predict"
echo "in_memory: $memory req/s"
echo "redis: $redis req/s, ratio to in_memory $(awk -v a="$redis" -v b="$memory" 'BEGIN {printf "%.3f", a / b}')"
