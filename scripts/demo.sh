#!/usr/bin/env bash
# The main job on the local emulator stack. It builds the workspace (release), starts the four emulators
# (Pub/Sub, Bigtable, fake-gcs-server, bqemulator; the Python virtual environment of the last two is
# created on first use), starts the reference invoice API, provisions every topic, subscription, table and
# bucket, runs `ingest` (API -> Pub/Sub) and the `invoices` pipeline (Pub/Sub -> Bigtable, BigQuery, Cloud
# Storage) over DEMO_INVOICES invoices (default 10,000, 2% malformed), prints a summary counted from the
# emulators themselves, shows the access patterns, then runs everything again to show it is idempotent.
# Usage: ./scripts/demo.sh            (DEMO_INVOICES=50000 ./scripts/demo.sh for more;
#                                      DEMO_KEEP=1 keeps the stack up at the end until Ctrl-C)
set -euo pipefail
cd "$(dirname "$0")/.."

count="${DEMO_INVOICES:-10000}"
work="$(mktemp -d)"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT INT TERM

step() { printf '\n==> %s\n' "$*"; }

step "building (release)"
cargo build --release --locked -p emulators -p invoice-api -p ingest -p invoices

step "starting the emulators (Pub/Sub, Bigtable, Cloud Storage, BigQuery)"
target/release/emulators --all --project local-project --env-file "$work/emulators.env" >/dev/null 2>"$work/emulators.log" &
pids+=($!)
for _ in $(seq 1 600); do [ -s "$work/emulators.env" ] && break; sleep 0.5; done
if [ ! -s "$work/emulators.env" ]; then
  echo "the emulators did not start; their log:" >&2; cat "$work/emulators.log" >&2; exit 1
fi
# shellcheck disable=SC1091
source "$work/emulators.env"
echo "PUBSUB_EMULATOR_HOST=$PUBSUB_EMULATOR_HOST BIGTABLE_EMULATOR_HOST=$BIGTABLE_EMULATOR_HOST"
echo "STORAGE_EMULATOR_HOST=$STORAGE_EMULATOR_HOST BIGQUERY_EMULATOR_HOST=$BIGQUERY_EMULATOR_HOST"

step "starting the reference invoice API ($count invoices)"
export INVOICE_API_TOKEN="demo-$RANDOM$RANDOM"
target/release/invoice-api --listen 127.0.0.1:0 --count "$count" >"$work/api.out" 2>"$work/api.log" &
pids+=($!)
for _ in $(seq 1 50); do grep -q 'serving' "$work/api.out" 2>/dev/null && break; sleep 0.1; done
api_url="$(sed -n 's/.* on \(http:[^ ]*\)$/\1/p' "$work/api.out")"
echo "invoice API at $api_url"

inv=(target/release/invoices --profile local)

step "provisioning (topics, subscription, Bigtable table, BigQuery dataset and tables, bucket)"
"${inv[@]}" provision

run_once() {  # $1 = label of the round
  step "$1: ingest (API -> Pub/Sub, checkpoint in Bigtable)"
  target/release/ingest run --provision --api-url "$api_url/invoices/feed" --page-size 500 \
    2>>"$work/ingest.log" >"$work/ingest-$1.json"
  step "$1: invoices pipeline (Pub/Sub -> Bigtable, BigQuery, Cloud Storage); stops when idle for 3 s"
  RUST_LOG="${RUST_LOG:-info}" "${inv[@]}" run --exit-when-idle 3 2> >(grep --line-buffered -E 'progress|draining|error|WARN' >&2) \
    >"$work/run-$1.json"
  "${inv[@]}" inventory >"$work/inventory-$1.json"
  python3 - "$work/ingest-$1.json" "$work/run-$1.json" "$work/inventory-$1.json" <<'PY2'
import json, sys
ing, run, inv = (json.load(open(p)) for p in sys.argv[1:4])
lat = run["publish_to_bigtable"]
fmt = lambda v: "n/a" if v is None else f"{v:,.1f} ms"
print(f"published by ingest      {ing['published']:>8,} messages ({ing['dead_letters']} undelimitable pages)")
print(f"received by the pipeline {run['received']:>8,} in {run['seconds']:.2f} s "
      f"({run['messages_per_sec']:,.0f} messages/s); acked {run['acked']:,}, nacked {run['nacked']:,}")
print(f"valid invoices           {run['invoices']:>8,}   dead letters {run['dead_letters']:,}")
print(f"publish -> Bigtable      p50 {fmt(lat['p50_ms'])}, p99 {fmt(lat['p99_ms'])} over {lat['count']:,} rows")
print("counted in the emulators:")
print(f"  Bigtable   invoice rows {inv['bigtable_invoice_rows']:,}, emission-index rows {inv['bigtable_index_rows']:,}")
print(f"  BigQuery   invoices {inv['bigquery_invoices']:,} rows ({inv['bigquery_invoices_distinct']:,} distinct), "
      f"invoice_items {inv['bigquery_items']:,} rows ({inv['bigquery_items_distinct']:,} distinct)")
print("  Storage    " + ", ".join(f"{k}/ {v:,} objects" for k, v in inv["objects"].items())
      + f"; raw records {inv['raw_records']:,}")
print("  dead letters by code: " + (", ".join(f"{k} {v}" for k, v in inv["dead_letters_by_code"].items()) or "none"))
PY2
}

run_once first

step "access patterns"
echo "\$ invoices list --from 2000-01-01 --to 2100-01-01 --limit 3   # emission-date range: one scan per index bucket"
"${inv[@]}" list --from 2000-01-01 --to 2100-01-01 --limit 3 2>/dev/null | tee "$work/list.txt"
id="$(python3 -c 'import json,sys; print(json.loads(open(sys.argv[1]).readline())["nfe_id"])' "$work/list.txt")"
echo "\$ invoices get $id   # one Bigtable row read by NFeID"
"${inv[@]}" get "$id"
echo "\$ cbt -project local-project -instance local-instance read invoices prefix=e# count=2"
cbt -project local-project -instance local-instance read invoices prefix='e#' count=2 2>&1 | head -20 || true
echo "\$ curl \$BIGQUERY_EMULATOR_HOST/bigquery/v2/projects/local-project/queries -d '{\"query\": \"SELECT COUNT(*) ...\"}'"
curl -s "http://$BIGQUERY_EMULATOR_HOST/bigquery/v2/projects/local-project/queries" \
  -H 'Content-Type: application/json' \
  -d '{"useLegacySql": false, "query": "SELECT emission_date, COUNT(*) AS invoices, SUM(net) AS net FROM `local-project.nfe.invoices` GROUP BY emission_date ORDER BY emission_date LIMIT 3"}' \
  | python3 -c 'import json,sys; r=json.load(sys.stdin); [print([c["v"] for c in row["f"]]) for row in r.get("rows", [])] or print(r)'

echo "\$ invoices dead-letters --limit 2   # dead letters in Cloud Storage: counts by code and stage, newest first"
"${inv[@]}" dead-letters --limit 2 2>/dev/null | python3 -c 'import json,sys; d=json.load(sys.stdin)["stored"]; print("objects", d["objects"], "by stage", d["by_stage"]); [print(" ", e["object"], e["first_issue"]) for e in d["newest"]]'

run_once second
python3 - "$work/inventory-first.json" "$work/inventory-second.json" <<'PY2'
import json, sys
a, b = (json.load(open(p)) for p in sys.argv[1:3])
same = {k: (a[k] == b[k]) for k in ("bigtable_invoice_rows", "bigtable_index_rows", "bigquery_invoices_distinct",
                                      "bigquery_items_distinct", "dead_letters_by_code")}
if all(same.values()):
    print("second round: nothing new, every store holds what it held after the first round (idempotent)")
else:
    print("second round changed the stores:", same); sys.exit(1)
PY2

if [ -n "${DEMO_KEEP:-}" ]; then
  step "the stack stays up (Ctrl-C to stop); in another shell: source $work/emulators.env"
  wait
fi
step "done"
