#!/usr/bin/env bash
# The capacity load scenario (BENCHMARKS.md, "Capacity under overload"): 30 clients with 2
# requests each in flight and one light client against ml_api's heavy model (GPU_UNITS=4,
# HEAVY_MS=200) for SECONDS (default 15), with the adaptive capacity, a fixed limit of 60
# and none. Prints the table and writes the chart to CHART (default docs/capacity-load.svg).
# Exits non-zero when the adaptive run misses a bound of issue 14.
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_RUN="${1:-15}"
CHART="${2:-docs/capacity-load.svg}"
cargo build --release --example capacity_load
exec target/release/examples/capacity_load "$SECONDS_RUN" "$CHART"
