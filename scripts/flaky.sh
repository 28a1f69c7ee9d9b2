#!/usr/bin/env bash
# Runs tests N times each and prints how often each passed: the check for
# flaky tests to run before stopping.
#
#   scripts/flaky.sh N [FILTERSET]
#
# FILTERSET is a nextest filterset; the default, `kind(test)`, is every
# integration-test binary: the tests that start processes (aggregators,
# demos, Prometheus, Alertmanager, Redis, Chromium, the SDK drivers), sleep
# or drive load. The unit tests are pure and are not repeated. Examples:
#
#   scripts/flaky.sh 10 'test(/overlap_from_millisecond_clocks/)'
#   scripts/flaky.sh 3 'package(paytrace-demo) & kind(test)'
#
# Each round runs the selected tests as the suite does (nextest, two at a
# time on two cores); a round's failures do not stop the next round. Exits
# non-zero when any test failed in any round. Every round ends with the
# check that no process a test started is still running.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ $# -lt 1 ] || ! [[ $1 =~ ^[1-9][0-9]*$ ]]; then
    echo "usage: scripts/flaky.sh N [FILTERSET]" >&2
    exit 2
fi
rounds=$1
filter=${2:-kind(test)}
cargo nextest --version >/dev/null 2>&1 || {
    echo "error: cargo-nextest is required: cargo install --locked cargo-nextest" >&2
    exit 1
}

echo "==> building the tests"
cargo nextest run --workspace --locked --no-run

log_dir=$(mktemp -d)
trap 'rm -rf "$log_dir"' EXIT
for round in $(seq 1 "$rounds"); do
    echo "==> round $round of $rounds"
    export PAYTRACE_TEST_RUN="flaky-$$-$round"
    cargo nextest run --workspace --locked --no-fail-fast -E "$filter" \
        >"$log_dir/round-$round.log" 2>&1 || true
    python3 scripts/leftovers.py "$PAYTRACE_TEST_RUN" \
        >>"$log_dir/round-$round.log" 2>&1 ||
        echo "    LEFTOVER processes after round $round" | tee -a "$log_dir/leftovers.log"
    grep -E '^ +(PASS|FAIL|TIMEOUT|SIGSEGV|SIGABRT|ABORT) ' "$log_dir/round-$round.log" |
        sed -E 's/^ +([A-Z]+) +\[[^]]*\]( +\([^)]*\))? +/\1 /' |
        sort -u >"$log_dir/round-$round.results" || true  # a failure is listed twice
    passed=$(grep -c '^PASS ' "$log_dir/round-$round.results" || true)
    total=$(wc -l <"$log_dir/round-$round.results")
    echo "    $passed of $total passed"
done

echo "==> passes per test, of $rounds rounds"
python3 - "$log_dir" "$rounds" <<'EOF'
import collections, glob, os, sys
log_dir, rounds = sys.argv[1], int(sys.argv[2])
passes, seen = collections.Counter(), collections.Counter()
for path in glob.glob(os.path.join(log_dir, "round-*.results")):
    for line in open(path):
        status, _, test = line.strip().partition(" ")
        seen[test] += 1
        passes[test] += status == "PASS"
flaky = 0
for test in sorted(seen, key=lambda t: (passes[t] - seen[t], t)):
    mark = "" if passes[test] == rounds else "   <-- "
    flaky += passes[test] != rounds
    print(f"{passes[test]:>3}/{rounds}  {test}{mark}")
print(f"{len(seen) - flaky} of {len(seen)} tests passed every round")
sys.exit(1 if flaky or os.path.exists(os.path.join(log_dir, "leftovers.log")) else 0)
EOF
