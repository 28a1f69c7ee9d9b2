#!/usr/bin/env python3
"""Issue 30's three wall-clock goals, read from one run of the benches.

Run by bench/goals.sh after `cargo bench` wrote criterion's estimates; each
ratio is of medians from that one run, as the issue's "done when" asks.
"""

import json
import sys
from pathlib import Path

CRITERION = Path(sys.argv[1] if len(sys.argv) > 1 else "target/criterion")
# Spans in one iteration of the aggregator's steps (`SPANS` in
# bench/benches/aggregator.rs: 100 traces of 10 spans per request).
SPANS_PER_ITERATION = 1000


def spans_per_second(ns_per_iteration: float) -> str:
    """An aggregator step's median as millions of spans per second."""
    return f"{SPANS_PER_ITERATION * 1e9 / ns_per_iteration / 1e6:.2f} M"


def median_ns(group: str, name: str) -> float:
    """Criterion's median time per iteration of `group/name`, in ns."""
    path = CRITERION / group / name / "new" / "estimates.json"
    try:
        return json.loads(path.read_text())["median"]["point_estimate"]
    except FileNotFoundError:
        sys.exit(f"no estimate at {path}: run bench/goals.sh, which runs the benches first")


def main() -> None:
    bare = median_ns("request", "bare")
    ours = median_ns("request", "paytrace") - bare
    peer = median_ns("request", "axum_tracing_opentelemetry+axum_prometheus") - bare
    decode = median_ns("aggregator", "decode_only")
    pipeline = median_ns("aggregator", "full_pipeline")
    grpc = median_ns("aggregator", "grpc_loopback")
    # (measure, ratio, goal, True when the goal is an upper bound)
    goals = [
        ("HTTP layer's added cost / closest peer's", ours / peer, 0.5, True),
        ("whole pipeline / prost decode floor (spans/s)", decode / pipeline, 0.7, False),
        ("OTLP/gRPC ingest / in-process pipeline (spans/s)", pipeline / grpc, 0.6, False),
    ]
    print(f"{'measure':<52} {'ratio':>6}  goal")
    for measure, ratio, goal, at_most in goals:
        met = ratio <= goal if at_most else ratio >= goal
        bound = "<=" if at_most else ">="
        print(f"{measure:<52} {ratio:>5.2f}x  {bound} {goal}x  {'met' if met else 'MISSED'}")
    print(
        f"(HTTP: paytrace +{ours / 1000:.2f} us, peer +{peer / 1000:.2f} us over bare "
        f"{bare / 1000:.2f} us; aggregator: decode {spans_per_second(decode)}, pipeline "
        f"{spans_per_second(pipeline)}, gRPC {spans_per_second(grpc)} spans/s)"
    )


if __name__ == "__main__":
    main()
