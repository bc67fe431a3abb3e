#!/usr/bin/env bash
# The check beside governor's, repeated: ROUNDS (default 5) runs of `benches/check.rs`, each
# running every case in turn; per round, each case's median time over governor's median in
# the same group and round; then the median of those ratios. These shared cores drift by
# 15% within minutes, which one run cannot tell from a change.
#   scripts/bench-check.sh                  (ROUNDS=5; FILTER narrows the cases, as
#                                            criterion's own filter)
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-5}
FILTER=${FILTER:-}
results=$(mktemp)
trap 'rm -f "$results"' EXIT
cargo bench -q -p ratelimit-benches --bench check --no-run 2>/dev/null
for round in $(seq 1 "$ROUNDS"); do
  rm -rf target/criterion
  cargo bench -q -p ratelimit-benches --bench check -- --noplot $FILTER >/dev/null 2>&1
  # target/criterion/<group>/<case>/new/estimates.json: the median's point estimate (ns).
  find target/criterion -path '*/new/estimates.json' | while read -r file; do
    case=${file#target/criterion/}
    case=${case%/new/estimates.json}
    median=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["median"]["point_estimate"])' "$file")
    echo "$round $case $median" >>"$results"
  done
done
python3 - "$results" <<'PY'
import statistics, sys
from collections import defaultdict
times = defaultdict(dict)  # (group, case) -> round -> ns
for line in open(sys.argv[1]):
    rnd, case, ns = line.split()
    group, _, name = case.partition("/")
    times[(group, name)][rnd] = float(ns)
print(f"{'group/case':48} {'median ns':>10} {'÷ governor':>11}  per round")
for (group, name) in sorted(times):
    gov = times.get((group, "governor"), {})
    mine = times[(group, name)]
    ratios = [mine[r] / gov[r] for r in mine if r in gov]
    ratio = f"{statistics.median(ratios):.3f}" if ratios else "-"
    rounds = " ".join(f"{x:.2f}" for x in ratios)
    print(f"{group + '/' + name:48} {statistics.median(mine.values()):10.2f} {ratio:>11}  {rounds}")
PY
