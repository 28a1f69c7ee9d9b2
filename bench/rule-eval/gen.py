"""Three days of the series the shop's SLOs read, as OpenMetrics, for
`promtool tsdb create-blocks-from openmetrics`: what a Prometheus that has
scraped a busy checkout for days holds, so that the SLO rules' long windows
(1d, 3d, 30d) read real volumes when their evaluation time is measured.

It also writes the 5-minute SLO series the rules record themselves
(slo:requests:rate5m, slo:sli_errors:rate5m), as a Prometheus that has run
the rules for those days has them, so that rules reading recorded series
are measured on the same history.

    python3 gen.py OUT_FILE [DAYS] [STEP_SECONDS]
"""

import sys
import time

out_path = sys.argv[1]
days = float(sys.argv[2]) if len(sys.argv) > 2 else 3
step = int(sys.argv[3]) if len(sys.argv) > 3 else 60
end = int(time.time()) // step * step - 3600
start = end - int(days * 86400)
KEEP = 'cluster="a",namespace="shop",job="shop"'
INSTANCES = [f"10.0.0.{i}:7100" for i in range(8)]
CHANNELS = ["alipay", "wxpay", "stripe", "unionpay"]
BUCKETS = ["0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "0.5", "1", "2.5", "5", "10",
           "30", "60", "120", "300", "+Inf"]

# (name, labels, increase per second) of every raw counter.
series = []
for inst in INSTANCES:
    for code, share in (("200", 0.995), ("500", 0.003), ("502", 0.002)):
        series.append(("http_server_request_duration_seconds_count",
                       f'{KEEP},instance="{inst}",service_name="gateway",http_route="/checkout",'
                       f'http_request_method="POST",http_response_status_code="{code}"', 20 * share))
for inst in INSTANCES[:2]:
    for ch in CHANNELS:
        labels = f'{KEEP},instance="{inst}",flow="checkout",payment_method="{ch}",payment_channel="{ch}",outcome="ok"'
        for i, le in enumerate(BUCKETS):
            series.append(("paytrace_flow_duration_seconds_bucket", f'{labels},le="{le}"', 10 * min(1.0, 0.1 + 0.08 * i)))
        series.append(("paytrace_flow_duration_seconds_count", labels, 10.0))
for inst in INSTANCES[:4]:
    for ch in CHANNELS:
        for outcome, share in (("ok", 0.99), ("error", 0.007), ("timeout", 0.003)):
            labels = (f'{KEEP},instance="{inst}",service_name="payment",flow="checkout",stage="channel.request",'
                      f'payment_method="{ch}",payment_channel="{ch}",outcome="{outcome}"')
            for i, le in enumerate(BUCKETS):
                series.append(("paytrace_stage_duration_seconds_bucket", f'{labels},le="{le}"',
                               5 * share * min(1.0, 0.1 + 0.08 * i)))
            series.append(("paytrace_stage_duration_seconds_count", labels, 5 * share))

# The recorded 5m series of each SLO: (labels, requests/s, errors/s).
recorded = [
    (f'{KEEP},slo="checkout_availability"', 160.0, 0.8),
    (f'{KEEP},slo="checkout_latency"', 80.0, 0.4),
]
for ch in CHANNELS:
    recorded.append((f'{KEEP},payment_channel="{ch}",slo="payment_success"', 20.0, 0.2))
    recorded.append((f'{KEEP},payment_channel="{ch}",slo="channel_latency"', 20.0, 0.1))

with open(out_path, "w") as out:
    by_name = {}
    for name, labels, per_second in series:
        by_name.setdefault(name, []).append((labels, per_second))
    for name, items in by_name.items():
        family = name.rsplit("_", 1)[0] if name.endswith(("_bucket", "_count")) else name
        out.write(f"# TYPE {name} counter\n")
        for labels, per_second in items:
            for t in range(start, end + 1, step):
                out.write(f"{name}{{{labels}}} {per_second * (t - start):.3f} {t}\n")
    for name, pick in (("slo:requests:rate5m", 1), ("slo:sli_errors:rate5m", 2)):
        out.write(f"# TYPE {name} gauge\n")
        for row in recorded:
            for t in range(start, end + 1, step):
                out.write(f"{name}{{{row[0]}}} {row[pick]} {t}\n")
    out.write("# EOF\n")
print(f"{len(series)} raw series, {len(recorded) * 2} recorded, {days} days at {step}s")
