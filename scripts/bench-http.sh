#!/usr/bin/env bash
# Requests per second of bench_server under wrk, each case a ratio to a bare axum router with
# no layer at all (MODE=bare), measured in the same run. Four servers (bare, layer,
# no-headers, metrics) run on core 0 (one tokio worker each, one loaded at a time), wrk on core 1; the
# cases are interleaved round by round and the medians quoted.
#   scripts/bench-http.sh            (ROUNDS=7 DURATION=5s CONNECTIONS=32 by default)
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-7}
DURATION=${DURATION:-5s}
CONNECTIONS=${CONNECTIONS:-32}
PORT=${PORT:-18181}
command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk >/dev/null; }
cargo build -q --release --example bench_server
pids=()
trap 'kill "${pids[@]}" 2>/dev/null' EXIT
declare -A ports=([bare]=$PORT [layer]=$((PORT + 1)) [no-headers]=$((PORT + 2)) [metrics]=$((PORT + 3)))
for mode in bare layer no-headers metrics; do
  MODE=$mode PORT=${ports[$mode]} taskset -c 0 ./target/release/examples/bench_server &
  pids+=($!)
done
for mode in bare layer no-headers metrics; do
  for _ in $(seq 50); do curl -s -o /dev/null "localhost:${ports[$mode]}" && break; sleep 0.1; done
done

# case = mode:path; CASES="bare:/plain layer:/limited metrics:/limited" measures those alone.
if [ -n "${CASES:-}" ]; then
  read -r -a cases <<<"$CASES"
else
  cases=(bare:/plain layer:/plain no-headers:/limited layer:/limited no-headers:/blocked layer:/blocked
    layer:/plain-headers metrics:/limited)
fi
declare -A results
for round in $(seq "$ROUNDS"); do
  for case in "${cases[@]}"; do
    mode=${case%%:*} path=${case#*:}
    rps=$(taskset -c 1 wrk -t1 -c"$CONNECTIONS" -d"$DURATION" -s scripts/post.lua "http://127.0.0.1:${ports[$mode]}$path" |
      awk '/Requests\/sec/ {print $2}')
    results[$case]+="$rps "
    echo "round $round $case: $rps req/s"
  done
done
median() { tr ' ' '\n' | grep -v '^$' | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
bare=$(echo "${results[bare:/plain]}" | median)
echo "== medians over $ROUNDS rounds (wrk -t1 -c$CONNECTIONS -d$DURATION), ratio to bare:/plain"
for case in "${cases[@]}"; do
  m=$(echo "${results[$case]}" | median)
  echo "$case: $m req/s, ratio $(awk -v a="$m" -v b="$bare" 'BEGIN {printf "%.3f", a / b}')"
done
