#!/usr/bin/env bash
# Rule evaluation time of SLO rule files on a real Prometheus holding days
# of history (see gen.py): `bench/rule-eval/run.sh RULES.yml [RULES2.yml ...]`
# prints, per file, the mean evaluation time of its groups over a minute.
# Needs prometheus and promtool (apt-get install prometheus).
set -euo pipefail
cd "$(dirname "$0")"
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT
python3 gen.py "$work/history.om" "${DAYS:-3}" "${STEP:-60}"
promtool tsdb create-blocks-from openmetrics "$work/history.om" "$work/data" >/dev/null
rm "$work/history.om"
port=19090
for rules in "$@"; do
  cp -r "$work/data" "$work/run"
  cat > "$work/prometheus.yml" <<CFG
global:
  evaluation_interval: 5s
rule_files: ["$(realpath "$rules")"]
CFG
  prometheus --config.file="$work/prometheus.yml" --storage.tsdb.path="$work/run" \
    --storage.tsdb.retention.time=90d --web.listen-address=127.0.0.1:$port >/dev/null 2>&1 &
  pid=$!
  # Evaluations happen every 5 s: sample the groups' last evaluation time 12 times.
  total=0; n=0
  for _ in $(seq 1 40); do
    sleep 5
    t=$(curl -s "http://127.0.0.1:$port/api/v1/rules" | python3 -c '
import json,sys
d=json.load(sys.stdin)["data"]["groups"]
print(sum(g["evaluationTime"] for g in d if g["name"].startswith("slo:")))' 2>/dev/null || echo "")
    if [ -n "$t" ] && [ "$t" != "0" ] && [ "$t" != "0.0" ]; then
      total=$(python3 -c "print($total + $t)"); n=$((n + 1))
    fi
    [ $n -ge 12 ] && break
  done
  kill $pid; wait $pid 2>/dev/null || true
  rm -rf "$work/run"
  python3 -c "print(f'$rules: {($total / max($n, 1)) * 1000:.1f} ms per evaluation of its SLO groups ({$n} samples)')"
done
