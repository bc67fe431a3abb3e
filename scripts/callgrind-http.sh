#!/usr/bin/env bash
# Instructions per request of bench_server, counted by callgrind: deterministic to about 1%,
# where throughput on these shared cores swings by 15%. For each (mode, path): the server
# runs under `valgrind --tool=callgrind`, takes WARMUP requests, has its counters zeroed
# (`callgrind_control -z`), serves N keep-alive requests from one connection, dumps
# (`callgrind_control -d`), and the total is divided by N. ROUNDS rounds, the cases in turn
# in each, and the median per case: how the kernel splits reads moves a single figure by up
# to 3%.
#   scripts/callgrind-http.sh                 (N=2000 WARMUP=200 ROUNDS=3 by default; CASES;
#                                              BODY_BYTES pads the JSON body with spaces;
#                                              BEFORE=path/to/an/older/bench_server measures
#                                              each case on it too, interleaved, as "before:";
#                                              WORKERS=1 by default: the server's runtime on one
#                                              worker thread, see below)
# One worker thread: callgrind runs one thread at a time anyway, and with two workers a figure
# moved by ±300 instructions from one server to the next with how the requests and their
# allocations fell between the threads (malloc's per-thread caches, wake-ups); with one it
# repeats to within ten. (bench_server built before 2026-12-06 ignores WORKERS.)
set -euo pipefail
cd "$(dirname "$0")/.."
N=${N:-2000}
WARMUP=${WARMUP:-200}
ROUNDS=${ROUNDS:-3}
PORT=${PORT:-18282}
command -v valgrind >/dev/null || { apt-get update -qq && apt-get install -y -qq valgrind >/dev/null; }
cargo build -q --release --example bench_server
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

# Sends `count` POSTs of the benchmark body over one keep-alive connection (a new one when
# the server closes it: hyper may, after a 429 whose body it did not read in time).
send() {
  python3 - "$PORT" "$1" "$2" "${BODY_BYTES:-0}" <<'PY'
import http.client, sys
port, path, count, size = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
conn = http.client.HTTPConnection("127.0.0.1", port)
body = b'{"data": [1,2,3]}'
body += b' ' * max(0, size - len(body))
reconnects = 0
for _ in range(count):
    try:
        conn.request("POST", path, body, {"Content-Type": "application/json"})
        conn.getresponse().read()
    except (http.client.HTTPException, OSError):
        reconnects += 1
        conn = http.client.HTTPConnection("127.0.0.1", port)
if reconnects:
    print(f"({reconnects} reconnections)", file=sys.stderr)
PY
}

measure() {
  local mode=$1 path=$2 binary=${3:-./target/release/examples/bench_server}
  PORT=$((PORT + 1)) # a fresh port: the previous server may still be letting go of its own
  MODE=$mode PORT=$PORT WORKERS=${WORKERS:-1} valgrind --tool=callgrind --callgrind-out-file="$out/callgrind.out.%p" \
    "$binary" >/dev/null 2>&1 &
  local server=$!
  for _ in $(seq 200); do curl -s -o /dev/null "localhost:$PORT" && break; sleep 0.1; done
  send "$path" "$WARMUP" || { echo "$mode $path: the warm-up failed" >&2; kill "$server"; return 1; }
  callgrind_control -z "$server" >/dev/null 2>&1
  send "$path" "$N"
  callgrind_control -d "$server" >/dev/null 2>&1
  # The dump made after zeroing: part 1 of this server's profile.
  local dump="$out/callgrind.out.$server.1"
  for _ in $(seq 100); do [ -s "$dump" ] && break; sleep 0.1; done
  kill "$server"; wait "$server" 2>/dev/null || true
  local total
  total=$(awk '/^summary:/ {print $2}' "$dump")
  echo "$mode $path $(( total / N ))"
}

# CASES="bare:/plain layer:/limited metrics:/limited" measures those alone.
if [ -n "${CASES:-}" ]; then
  read -r -a cases <<<"$CASES"
else
  cases=(bare:/plain noop:/plain layer:/plain no-headers:/limited layer:/limited legacy:/limited
    both:/limited no-headers:/blocked layer:/blocked layer:/plain-headers metrics:/limited
    metrics:/blocked)
fi
declare -A results
for round in $(seq "$ROUNDS"); do
  for case in "${cases[@]}"; do
    line=$(measure "${case%%:*}" "${case#*:}")
    echo "round $round: $line"
    results[$case]+="${line##* } "
    if [ -n "${BEFORE:-}" ]; then
      line=$(measure "${case%%:*}" "${case#*:}" "$BEFORE")
      echo "round $round: before $line"
      results[before:$case]+="${line##* } "
    fi
  done
done
if [ -n "${BEFORE:-}" ]; then
  for case in "${cases[@]}"; do cases+=("before:$case"); done
fi
median() { tr ' ' '\n' | grep -v '^$' | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
bare=$(echo "${results[bare:/plain]}" | median)
echo "== instructions per request, medians of $ROUNDS rounds (N=$N after $WARMUP warm-up)"
for case in "${cases[@]}"; do
  m=$(echo "${results[$case]}" | median)
  echo "$case: $m (rounds: ${results[$case]}), bare/case $(awk -v a="$bare" -v b="$m" 'BEGIN {printf "%.3f", a / b}')"
done
