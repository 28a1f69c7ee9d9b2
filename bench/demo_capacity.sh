#!/usr/bin/env bash
# The demo's capacity: how many checkouts a second its build keeps up with,
# for the tests that drive it (BENCHMARKS.md, "The demo's capacity").
#
#   bench/demo_capacity.sh [--release] [--busy] RPS...
#
# Runs the demo for 25 s at each rate (debug build unless --release; with
# --busy, a busy loop holds one of the two cores meanwhile, as another test
# does in the suite) and prints, per rate: the payment-confirmation
# consumer's time per message (payment.confirm), the mean wait in its queue
# (async:payment.confirm), the consumer's utilisation (rate x time per
# message), and what the demo's report says saturated. The consumer is one
# task, so it is the first part to saturate; its capacity is about
# 1 / (time per message) at the rate where the time was measured.
set -euo pipefail
cd "$(dirname "$0")/.."

profile=debug
busy=0
while [ $# -gt 0 ]; do
    case $1 in
    --release) profile=release; shift ;;
    --busy) busy=1; shift ;;
    *) break ;;
    esac
done
[ $# -gt 0 ] || { echo "usage: bench/demo_capacity.sh [--release] [--busy] RPS..." >&2; exit 2; }

if [ "$profile" = release ]; then
    cargo build --quiet --release -p paytrace-demo
else
    cargo build --quiet -p paytrace-demo
fi
demo=target/$profile/paytrace-demo
out=$(mktemp -d)
hog=
cleanup() {
    [ -n "$hog" ] && kill "$hog" 2>/dev/null
    rm -rf "$out"
}
trap cleanup EXIT
if [ "$busy" = 1 ]; then
    (while :; do :; done) &
    hog=$!
fi

printf '%-5s %-22s %-22s %-12s %s\n' rps "confirm per message" "mean wait in queue" utilisation saturated
for rps in "$@"; do
    "$demo" --duration 25s --rps "$rps" --port-base 9100 --report "$out/$rps.json" >"$out/$rps.log" 2>&1
    python3 - "$out/$rps.json" "$rps" <<'EOF'
import json, sys
report, rps = json.load(open(sys.argv[1])), float(sys.argv[2])
checkout = next(f for f in report["flows"] if f["flow"] == "checkout" and f.get("payment_method") is None)
stage = {s["stage"]: s for s in checkout["stages"]}
confirm = stage["payment.confirm"]["duration"]["mean"]
wait = stage["async:payment.confirm"]["critical_path"]["mean"]
saturated = "; ".join(s["what"] for s in report["saturation"]) or "nothing"
print(f"{rps:<5g} {confirm * 1000:>8.1f} ms{'':<11} {wait * 1000:>8.1f} ms{'':<11} {rps * confirm:<12.2f} {saturated}")
EOF
done
