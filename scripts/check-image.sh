#!/usr/bin/env bash
# The container check: builds the `invoices` and `ingest` images (scripts/image.sh --local-base: the
# release binaries of this checkout on a Debian 12 base made from Debian packages), then runs them as
# production does, against the local emulators on a backlog of CHECK_INVOICES invoices (default 10,000,
# 2% malformed):
#   1. the invoices image provisions the emulators' resources; the ingest image publishes the API's feed;
#   2. worker A (invoices image) starts on the backlog and gets `docker stop` (SIGTERM) as soon as it has
#      acknowledged its first messages: it must drain and exit 0 within the grace period;
#   3. worker B takes the rest (what A never received, and whatever A left unacknowledged) until every
#      store holds every invoice, then is stopped the same way;
#   4. the stores are compared with totals computed by Python from the API (scripts/expected_totals.py):
#      Bigtable rows and exact net, the BigQuery views' count and net, the dead letters in Cloud Storage.
# Every container runs with --network host (traffic stays on loopback; nothing is published on other
# interfaces), --read-only, --user 65532:65532, no capabilities, no new privileges.
# Needs a Docker engine (scripts/docker-engine.sh starts one on Debian as root).
# Usage: scripts/check-image.sh      Env: CHECK_INVOICES, CHECK_GRACE_SECS (default 35, as in k8s/)
set -euo pipefail
cd "$(dirname "$0")/.."

count="${CHECK_INVOICES:-10000}"
grace="${CHECK_GRACE_SECS:-35}"
scripts/docker-engine.sh
# shellcheck source=scripts/stack.sh
source scripts/stack.sh
fail() { echo "check-image: FAILED: $*" >&2; exit 1; }
containers=()
refs=()
remove_containers() {
  for c in "${containers[@]}"; do docker rm -f "$c" >/dev/null 2>&1 || true; done
  for r in "${refs[@]}"; do docker rmi "$r" >/dev/null 2>&1 || true; done
}
trap 'remove_containers; cleanup' EXIT INT TERM

build_release
step "building the images"
mapfile -t refs < <(scripts/image.sh --local-base --tag "check-$$")
invoices_image="${refs[0]}" ingest_image="${refs[1]}"
for ref in "${refs[@]}"; do
  user="$(docker image inspect -f '{{.Config.User}}' "$ref")"
  [[ "$user" == "65532:65532" ]] || fail "$ref runs as '$user', not 65532:65532"
  echo "$ref: $(docker image inspect -f '{{.Size}}' "$ref" | awk '{printf "%.1f MB", $1/1e6}'), user $user"
done

start_emulators
start_api "$count"
python3 scripts/expected_totals.py "$api_url/invoices/feed" "$work/expected.json"

# Runs an image like production: read-only root, non-root, no capabilities, host loopback network.
run_flags=(--network host --read-only --user 65532:65532 --cap-drop ALL --security-opt no-new-privileges
  -e PUBSUB_EMULATOR_HOST -e BIGTABLE_EMULATOR_HOST -e STORAGE_EMULATOR_HOST -e BIGQUERY_EMULATOR_HOST
  -e BIGQUERY_EMULATOR_GRPC_HOST -e RUST_LOG=info)
name_prefix="fluxo-check-$$"

step "invoices image: provision (the subscription must exist before ingest publishes)"
docker run --rm "${run_flags[@]}" "$invoices_image" --profile local provision 2>"$work/provision.log" ||
  { cat "$work/provision.log" >&2; fail "provisioning from the container failed"; }

step "ingest image: API -> Pub/Sub"
docker run --rm "${run_flags[@]}" -e INVOICE_API_TOKEN "$ingest_image" \
  run --provision --api-url "$api_url/invoices/feed" --page-size 500 >"$work/ingest.json" 2>"$work/ingest.log" ||
  { cat "$work/ingest.log" >&2; fail "the ingest container failed"; }
published="$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["published"])' "$work/ingest.json")"
echo "published $published messages"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
acked_of() {  # $1 = metrics port: messages acknowledged so far (0 while the server is not up)
  curl -fsS "http://127.0.0.1:$1/metrics" 2>/dev/null |
    awk '/^fluxo_source_acked_elements_total/ {s += $NF} END {printf "%d\n", s}'
}
# The workers read a configuration file mounted read-only, as on Kubernetes (a ConfigMap): the local
# profile with a flow-control window of 1,000 messages, so that SIGTERM finds worker A mid-backlog and
# worker B has work left.
cp config/invoices.toml "$work/invoices.toml"
printf '\n[profiles.local.tuning]\nmax_outstanding_messages = 1000\n' >>"$work/invoices.toml"
chmod 0644 "$work/invoices.toml"
start_worker() {  # $1 = name, $2 = metrics port
  containers+=("$1")
  docker run -d --name "$1" "${run_flags[@]}" -e POD_NAME="$1" \
    -v "$work/invoices.toml:/etc/invoices/invoices.toml:ro" "$invoices_image" \
    --config /etc/invoices/invoices.toml --profile local \
    run --metrics-addr "127.0.0.1:$2" --drain-timeout-secs 25 >/dev/null
}
stop_worker() {  # $1 = name; SIGTERM, then SIGKILL after the grace period, as Kubernetes does
  local t0 t1 code
  t0="$(date +%s.%N)"
  docker stop -t "$grace" "$1" >/dev/null
  t1="$(date +%s.%N)"
  code="$(docker inspect -f '{{.State.ExitCode}}' "$1")"
  docker logs "$1" >"$work/$1.report.json" 2>"$work/$1.log"
  stopped_in="$(python3 -c "print(f'{$t1 - $t0:.1f}')")"
  echo "$1: SIGTERM -> exit $code in $stopped_in s (grace $grace s)"
  [[ "$code" == 0 ]] || { tail -20 "$work/$1.log" >&2; fail "$1 exited $code after SIGTERM"; }
  python3 -c "import sys; sys.exit(0 if $t1 - $t0 < $grace else 1)" || fail "$1 did not drain within $grace s"
  python3 - "$work/$1.report.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
print(f"  report: received {r['received']:,}, acked {r['acked']:,}, nacked {r['nacked']:,}, "
      f"invoices {r['invoices']:,}, dead letters {r['dead_letters']:,}")
PY
}

step "worker A: SIGTERM under load"
port_a="$(free_port)"
start_worker "$name_prefix-a" "$port_a"
for _ in $(seq 1 600); do
  [[ "$(acked_of "$port_a")" -gt 0 ]] && break
  sleep 0.1
done
[[ "$(acked_of "$port_a")" -gt 0 ]] || { docker logs "$name_prefix-a" 2>&1 | tail -20 >&2; fail "worker A acknowledged nothing in 60 s"; }
echo "worker A acknowledged $(acked_of "$port_a") of $published messages; sending SIGTERM"
stop_worker "$name_prefix-a"

step "worker B: the rest of the backlog"
port_b="$(free_port)"
start_worker "$name_prefix-b" "$port_b"
inventory() { docker run --rm "${run_flags[@]}" -e RUST_LOG=warn "$invoices_image" --profile local inventory; }
done_yet() {
  python3 - "$work/expected.json" "$work/inventory.json" <<'PY'
import json, sys
e, i = (json.load(open(p)) for p in sys.argv[1:])
sys.exit(0 if i["bigtable_invoice_rows"] >= e["invoices"]
         and i["objects"].get("dead-letter", 0) >= e["invalid"] else 1)
PY
}
for _ in $(seq 1 120); do
  inventory >"$work/inventory.json" && done_yet && break
  sleep 1
done
stop_worker "$name_prefix-b"

step "every store against the expected totals"
inventory >"$work/inventory.json"
python3 - "$work/expected.json" "$work/inventory.json" <<'PY'
import json, sys
from decimal import Decimal
e, i = (json.load(open(p)) for p in sys.argv[1:])
rows = [
    ("Bigtable invoice rows", e["invoices"], i["bigtable_invoice_rows"]),
    ("Bigtable net", Decimal(e["net"]), Decimal(i["bigtable_net"])),
    ("Bigtable lines", e["lines"], i["bigtable_items"]),
    ("BigQuery invoices_current", e["invoices"], i["bigquery_invoices_current"]),
    ("BigQuery net (views)", Decimal(e["net"]), Decimal(i["bigquery_net_current"])),
    ("BigQuery lines (views)", e["lines"], i["bigquery_items_current"]),
    ("dead letters in Cloud Storage", e["invalid"], i["objects"].get("dead-letter", 0)),
]
bad = 0
for what, want, got in rows:
    ok = want == got
    bad += not ok
    print(f"  {what:<32}{'ok' if ok else 'DIFFERENT':>10}   expected {want:,}   stored {got:,}")
sys.exit(1 if bad else 0)
PY
echo "check-image: every invoice landed; both workers drained on SIGTERM and exited 0"
