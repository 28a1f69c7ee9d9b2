#!/usr/bin/env bash
# Issue 30's three wall-clock goals in one run: the HTTP layer's requests
# and the aggregator's throughput benches, then the ratios of their medians.
#   bench/goals.sh            (about 4 minutes on 2 cores, after the build)
set -euo pipefail
cd "$(dirname "$0")/.."
cargo bench -p paytrace-bench --bench overhead -- 'request/' --warm-up-time 3 --measurement-time 10
cargo bench -p paytrace-bench --bench aggregator -- --warm-up-time 3 --measurement-time 10
python3 bench/goals.py target/criterion
