#!/usr/bin/env bash
# The main job on the local emulator stack: builds the workspace, starts the Pub/Sub and Bigtable
# emulators and the reference invoice API, provisions the topics and the checkpoint table, and runs the
# ingest pipeline over DEMO_INVOICES invoices (default 10,000, 2% malformed), then runs it again to show
# that a second run resumes from its checkpoint and publishes nothing new.
# Usage: ./scripts/demo.sh            (DEMO_INVOICES=50000 ./scripts/demo.sh for more)
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
cargo build --release --locked -p emulators -p invoice-api -p ingest

step "starting the Pub/Sub and Bigtable emulators"
target/release/emulators --pubsub --bigtable --env-file "$work/emulators.env" >/dev/null 2>"$work/emulators.log" &
pids+=($!)
for _ in $(seq 1 120); do [ -s "$work/emulators.env" ] && break; sleep 0.5; done
if [ ! -s "$work/emulators.env" ]; then
  echo "the emulators did not start; their log:" >&2; cat "$work/emulators.log" >&2; exit 1
fi
# shellcheck disable=SC1091
source "$work/emulators.env"
echo "PUBSUB_EMULATOR_HOST=$PUBSUB_EMULATOR_HOST BIGTABLE_EMULATOR_HOST=$BIGTABLE_EMULATOR_HOST"

step "starting the reference invoice API ($count invoices)"
export INVOICE_API_TOKEN="demo-$RANDOM$RANDOM"
target/release/invoice-api --listen 127.0.0.1:0 --count "$count" >"$work/api.out" 2>"$work/api.log" &
pids+=($!)
for _ in $(seq 1 50); do grep -q 'serving' "$work/api.out" 2>/dev/null && break; sleep 0.1; done
api_url="$(sed -n 's/.* on \(http:[^ ]*\)$/\1/p' "$work/api.out")"
echo "invoice API at $api_url"

step "ingest: API -> Pub/Sub (checkpoint in Bigtable)"
target/release/ingest run --provision --api-url "$api_url/invoices/feed" --page-size 500 \
  2>"$work/ingest.log" | tee "$work/first.json"
python3 - "$work/first.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
p = r["poll"]
print(f"published {r['published']} invoices from {p['pages']} pages in {r['seconds']:.2f} s "
      f"({r['published'] / max(r['seconds'], 1e-9):,.0f} invoices/s); retries {p['retries']}; "
      f"dead letters {r['dead_letters']}; checkpoint {p['committed']}; outcome {p['outcome']}")
PY

step "ingest again: resumes from the checkpoint, publishes nothing new"
target/release/ingest run --api-url "$api_url/invoices/feed" 2>>"$work/ingest.log" | tee "$work/second.json"

step "done"
echo "Next stage (see pipelines/README.md): the invoices pipeline, Pub/Sub -> Bigtable, BigQuery, Cloud Storage."
