#!/usr/bin/env bash
# The monitoring, checked for real: the alert and recording rules, their unit tests, the Grafana
# dashboard and the GKE `Rules` objects, then a real Prometheus scraping a running stack.
#
#   1. `promtool check rules` and `promtool test rules` (every alert firing and not firing);
#   2. k8s/base/monitoring-rules.yaml is what `scripts/monitoring.py render-gmp` makes of the rules;
#      the dashboard JSON is well formed (panels, grid, queries, datasource variable); every alert has
#      its section in docs/runbook.md;
#   3. the emulators, the reference API, `ingest serve` and two `invoices run` workers, and a real
#      Prometheus (Debian's package) scraping the three every second and evaluating the rules; after
#      the backlog is processed, every rule and every dashboard query must return at least one series
#      (a panel with no data is a bug); the output lists each with its series count;
#   4. the dead-letter alert is made to fire for real (a feed where 90% of the records are malformed),
#      then the no-progress alert (the Cloud Storage emulator, where the raw archive goes, frozen with
#      SIGSTOP under a backlog: ingest itself needs only Pub/Sub and Bigtable); each is
#      seen firing in Prometheus's own /api/v1/alerts; the emulator is thawed, everything is acked and
#      both workers drain and exit 0 on SIGTERM.
#
# Step 3 and 4 run the rules with their windows compressed (`for:` 5 s, ranges 30 s, evaluation every
# second: `scripts/monitoring.py compress-rules`), the same expressions otherwise; the production
# windows are what step 1's unit tests cover.
#
# Usage: ./scripts/check-monitoring.sh        (installs Debian's prometheus package when missing, as root)
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/stack.sh
source scripts/stack.sh
fail() { echo "check-monitoring: FAILED: $*" >&2; exit 1; }

if ! command -v prometheus >/dev/null || ! command -v promtool >/dev/null; then
  [ "$(id -u)" = 0 ] || fail "prometheus and promtool are missing: install Debian's prometheus package (apt-get install prometheus)"
  step "installing Debian's prometheus package (prometheus, promtool)"
  # Retried after `apt-get update` when the package lists are missing or stale.
  apt_install_prometheus() { DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends prometheus; }
  apt_install_prometheus >"$work/apt.log" 2>&1 || { apt-get update -q && apt_install_prometheus; } >>"$work/apt.log" 2>&1 ||
    { tail -20 "$work/apt.log" >&2; fail "apt-get install prometheus failed"; }
fi
echo "$(prometheus --version 2>&1 | head -1)"
./scripts/check-infra.sh --setup-only >/dev/null
py=.venv/deploy/bin/python

step "promtool check rules"
promtool check rules deploy/monitoring/rules/*.rules.yml
step "promtool test rules (every alert firing and not firing)"
promtool test rules deploy/monitoring/tests/*.test.yml
step "GKE Rules objects, the dashboard and the runbook"
"$py" scripts/monitoring.py check-gmp
"$py" scripts/monitoring.py check-dashboard
"$py" scripts/monitoring.py check-runbook

build_release
start_emulators
start_api 5000
bin=target/release

step "provisioning the emulators' resources"
"$bin/invoices" --profile local provision >/dev/null 2>"$work/provision.log" ||
  { cat "$work/provision.log" >&2; fail "invoices provision failed"; }

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
port_a=$(free_port) port_b=$(free_port) port_ingest=$(free_port) port_prom=$(free_port)
prom="http://127.0.0.1:$port_prom"

step "two invoices workers (metrics on :$port_a and :$port_b) and ingest serve (:$port_ingest)"
worker_pids=()
for w in a b; do
  port_var="port_$w"
  "$bin/invoices" --profile local run --worker "$w" --metrics-addr "127.0.0.1:${!port_var}" \
    >"$work/worker-$w.json" 2>"$work/worker-$w.log" &
  worker_pids+=($!)
  pids+=($!)
done
"$bin/ingest" serve --listen "127.0.0.1:$port_ingest" --api-url "$api_url/invoices/feed" --page-size 500 \
  --source-name main-feed --provision >/dev/null 2>"$work/ingest.log" &
pids+=($!)

step "Prometheus on $prom (scrape and evaluation every second, rules compressed)"
"$py" scripts/monitoring.py compress-rules "$work/rules"
cat >"$work/prometheus.yml" <<EOF
global:
  scrape_interval: 1s
  evaluation_interval: 1s
rule_files:
  - $work/rules/*.rules.yml
scrape_configs:
  - job_name: invoices
    static_configs:
      - targets: ["127.0.0.1:$port_a", "127.0.0.1:$port_b"]
  - job_name: ingest
    static_configs:
      - targets: ["127.0.0.1:$port_ingest"]
EOF
promtool check config "$work/prometheus.yml" >/dev/null
prometheus --config.file="$work/prometheus.yml" --storage.tsdb.path="$work/tsdb" \
  --web.listen-address="127.0.0.1:$port_prom" --log.level=warn >"$work/prometheus.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 100); do curl -fsS "$prom/-/ready" >/dev/null 2>&1 && break; sleep 0.2; done
curl -fsS "$prom/-/ready" >/dev/null || { cat "$work/prometheus.log" >&2; fail "Prometheus did not start"; }
for _ in $(seq 1 100); do curl -fsS "http://127.0.0.1:$port_ingest/healthz" >/dev/null 2>&1 && break; sleep 0.2; done

# Sum of a counter over both workers, read from their /metrics.
acked() {
  for p in "$port_a" "$port_b"; do curl -fsS "http://127.0.0.1:$p/metrics" 2>/dev/null || true; done |
    awk '/^fluxo_source_acked_elements_total/ {s += $NF} END {printf "%d\n", s}'
}
published_total=0
# Runs ingest once (as Cloud Scheduler would POST /run, or a second feed with `ingest run`); adds what
# it published to published_total.
ingest_run() {  # $1 = label; the rest: the command
  local label=$1; shift
  "$@" >"$work/ingest-$label.json" 2>>"$work/ingest-$label.log" ||
    { cat "$work/ingest-$label.log" "$work/ingest-$label.json" >&2; fail "ingest ($label) failed"; }
  local n
  n=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["published"])' "$work/ingest-$label.json")
  published_total=$((published_total + n))
  echo "ingest ($label): published $n messages"
}
wait_acked() {  # $1 = seconds
  local deadline=$((SECONDS + $1))
  while [ "$(acked)" -lt "$published_total" ]; do
    [ $SECONDS -lt $deadline ] || fail "only $(acked) of $published_total messages acked within $1 s"
    sleep 1
  done
  echo "all $published_total messages acked"
}

step "ingest: POST /run on the feed of 5,000 invoices"
ingest_run main curl -fsS -X POST "http://127.0.0.1:$port_ingest/run"
wait_acked 180

# A second reference API with its own data (`invoice-api` flags after the name), ingested once by
# `ingest run` under its own source name (its own checkpoint), as a CronJob would.
feed_token="local-$RANDOM$RANDOM"
feed() {  # $1 = name; the rest: invoice-api flags
  local name=$1; shift
  "$bin/invoice-api" --listen 127.0.0.1:0 --token "$feed_token" "$@" >"$work/$name-api.out" 2>"$work/$name-api.log" &
  pids+=($!)
  for _ in $(seq 1 50); do grep -q 'serving' "$work/$name-api.out" 2>/dev/null && break; sleep 0.1; done
  local url
  url="$(sed -n 's/.* on \(http:[^ ]*\)$/\1/p' "$work/$name-api.out")"
  ingest_run "$name" env INVOICE_API_TOKEN="$feed_token" "$bin/ingest" run --api-url "$url/invoices/feed" \
    --page-size 500 --source-name "$name-feed"
}

step "every rule and dashboard expression, queried on Prometheus"
"$py" scripts/monitoring.py query "$prom" --within 90

step "dead letters: a feed of 2,000 records, 90% malformed"
feed bad --count 2000 --seed 7 --malformed-share 0.9
"$py" scripts/monitoring.py wait-alert "$prom" InvoicesDeadLetterRate --within 120
wait_acked 120

step "no progress: the Cloud Storage emulator frozen (SIGSTOP) under a backlog of 5,000 more"
mapfile -t frozen < <(pgrep -f fake-gcs-server || true)
[ "${#frozen[@]}" -gt 0 ] || fail "no fake-gcs-server process to freeze"
thaw() { kill -CONT "${frozen[@]}" 2>/dev/null || true; }
trap 'thaw; cleanup' EXIT INT TERM
kill -STOP "${frozen[@]}"
feed more --count 5000 --seed 9
"$py" scripts/monitoring.py wait-alert "$prom" InvoicesNoProgress --within 120
thaw
step "thawed: the backlog drains"
wait_acked 240

step "SIGTERM: both workers drain and exit 0"
kill -TERM "${worker_pids[@]}"
for i in "${!worker_pids[@]}"; do
  code=0
  wait "${worker_pids[$i]}" || code=$?
  [ "$code" = 0 ] || { tail -20 "$work/worker-a.log" "$work/worker-b.log" >&2; fail "worker $i exited $code"; }
done
echo "check-monitoring: all checks passed"
