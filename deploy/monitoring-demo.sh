#!/usr/bin/env bash
# A real monitoring demo on one machine: `synthfleet serve` on 127.0.0.1, a local Prometheus (Debian
# package `prometheus`) scraping it with deploy/prometheus/prometheus.yml and evaluating the alert
# rules, and examples/quickstart.yaml submitted through the HTTP API. Prints some dashboard queries.
#   deploy/monitoring-demo.sh          # then browse http://127.0.0.1:9090 (Ctrl-C stops everything)
#   deploy/monitoring-demo.sh --once   # stop after the job and the queries
# Point a Grafana at the Prometheus to see the dashboard (README, "Monitor in Grafana").
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
API_PORT=${API_PORT:-8000}
PROM_PORT=${PROM_PORT:-9090}
RUN=$(mktemp -d "${TMPDIR:-/tmp}/synthfleet-monitoring.XXXXXX")
export SYNTHFLEET_URL="http://127.0.0.1:$API_PORT"
export SYNTHFLEET_API_TOKEN="${SYNTHFLEET_API_TOKEN:-$("$PY" -c 'import secrets; print(secrets.token_hex(16))')}"

command -v prometheus >/dev/null || { echo "needs Prometheus: apt-get install prometheus" >&2; exit 2; }
[ -f models/tiny/config.json ] || "$PY" -m orchestrator.cli make-tiny-model models/tiny

# The shipped scrape config (every 2 s here, on this run's port) and the PrometheusRule's rules.
"$PY" deploy/prometheus/rules_file.py "$RUN/synthfleet.rules.yml"
"$PY" - "$RUN/prometheus.yml" "$API_PORT" <<'PY'
import sys, yaml
config = yaml.safe_load(open("deploy/prometheus/prometheus.yml"))
config["global"] = {"scrape_interval": "2s", "evaluation_interval": "2s"}
for scrape in config["scrape_configs"]:
    if scrape["job_name"] == "synthfleet":
        scrape["static_configs"] = [{"targets": [f"127.0.0.1:{sys.argv[2]}"]}]
yaml.safe_dump(config, open(sys.argv[1], "w"))
PY

pids=()
cleanup() { for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT
"$PY" -m orchestrator.cli serve --port "$API_PORT" --state "$RUN/state" >"$RUN/serve.log" 2>&1 &
pids+=($!)
prometheus --config.file="$RUN/prometheus.yml" --storage.tsdb.path="$RUN/tsdb" \
  --web.listen-address="127.0.0.1:$PROM_PORT" >"$RUN/prometheus.log" 2>&1 &
pids+=($!)
echo "coordinator $SYNTHFLEET_URL, Prometheus http://127.0.0.1:$PROM_PORT, files and logs in $RUN"

"$PY" - <<'PY'
import os, time, httpx
deadline = time.monotonic() + 120
while True:
    try:
        if httpx.get(os.environ["SYNTHFLEET_URL"] + "/healthz").status_code == 200:
            break
    except httpx.HTTPError:
        pass
    if time.monotonic() > deadline:
        raise SystemExit("the coordinator did not start: see serve.log")
    time.sleep(1)
PY
"$PY" -m orchestrator.cli submit examples/quickstart.yaml --output "$RUN/out" --wait
sleep 5  # two scrapes after the last commit

"$PY" - "http://127.0.0.1:$PROM_PORT" <<'PY'
import sys, httpx
url = sys.argv[1]
queries = {  # title: (PromQL, the labels to show)
    "scrape targets up": ("up", ["job"]),
    "completion tokens per job": ("sum by (job) (synthfleet_generated_tokens_total)", ["job"]),
    "rows by outcome": ("sum by (job, outcome) (synthfleet_rows_total)", ["job", "outcome"]),
    "progress": ("synthfleet_job_progress_ratio", ["job"]),
    "mean shard time (s)": ("sum(synthfleet_shard_duration_seconds_sum) "
                            "/ sum(synthfleet_shard_duration_seconds_count)", []),
    "workers": ("sum by (state) (synthfleet_workers)", ["state"]),
    "jobs by state": ("sum by (state) (synthfleet_jobs) > 0", ["state"]),
}
for title, (promql, labels) in queries.items():
    result = httpx.get(f"{url}/api/v1/query", params={"query": promql}).json()["data"]["result"]
    values = ", ".join(f"{' '.join(r['metric'].get(k, '') for k in labels) or 'all'}: "
                       f"{float(r['value'][1]):.4g}" for r in result) or "(none)"
    print(f"{title:28} {values}")
rules = httpx.get(f"{url}/api/v1/rules").json()["data"]["groups"]
print(f"{'alert rules loaded':28} {sum(len(g['rules']) for g in rules)}, firing: "
      f"{[r['name'] for g in rules for r in g['rules'] if r.get('state') == 'firing'] or 'none'}")
PY

if [ "${1:-}" != "--once" ]; then
  echo "Ctrl-C to stop the coordinator and Prometheus"
  wait
fi
