#!/usr/bin/env bash
# The main job on the local emulator stack. It builds the workspace (release), starts the four emulators
# (Pub/Sub, Bigtable, fake-gcs-server, bqemulator; the Python virtual environment of the last two is
# created on first use), starts the reference invoice API, provisions every topic, subscription, table and
# bucket, runs `ingest` (API -> Pub/Sub) and the `invoices` pipeline (Pub/Sub -> Bigtable, BigQuery, Cloud
# Storage) over DEMO_INVOICES invoices (default 10,000, 2% malformed), prints a summary counted from the
# emulators themselves (plain counts and exact sums of Bigtable, the BigQuery views and the processed
# archive, against totals computed from the API with Python's decimal module), shows the access patterns,
# then delivers everything a second time (a replay of the raw archive) and checks that every store still
# holds exactly the same; exits non-zero when a count or total differs.
# Usage: ./scripts/demo.sh            (DEMO_INVOICES=50000 ./scripts/demo.sh for more;
#                                      DEMO_KEEP=1 keeps the stack up at the end until Ctrl-C)
set -euo pipefail
cd "$(dirname "$0")/.."

count="${DEMO_INVOICES:-10000}"
# shellcheck source=scripts/stack.sh
source scripts/stack.sh
build_release
start_emulators
echo "PUBSUB_EMULATOR_HOST=$PUBSUB_EMULATOR_HOST BIGTABLE_EMULATOR_HOST=$BIGTABLE_EMULATOR_HOST"
echo "STORAGE_EMULATOR_HOST=$STORAGE_EMULATOR_HOST BIGQUERY_EMULATOR_HOST=$BIGQUERY_EMULATOR_HOST"
start_api "$count"

inv=(target/release/invoices --profile local)
venv_python="${EMULATORS_VENV:-.venv/emulators}/bin/python"  # has DuckDB (bqemulator's engine)

step "expected totals: every record read from the API, checked and summed by Python's decimal module"
# An oracle independent of the pipeline: Python's own JSON parser and exact decimals (the script says how).
python3 scripts/expected_totals.py "$api_url/invoices/feed" "$work/expected.json"

step "provisioning (topics, subscription, Bigtable table, BigQuery dataset, tables and views, bucket)"
"${inv[@]}" provision

# The processed archive (Parquet, one row per invoice line), read with DuckDB: every row, and the current
# version of each invoice and line, chosen as the BigQuery views do (docs/bigquery.md).
processed_totals() {  # $1 = output JSON
  "$venv_python" - "$1" <<'PY2'
import json, os, sys, tempfile, urllib.parse, urllib.request
import duckdb
host, bucket = os.environ["STORAGE_EMULATOR_HOST"].rstrip("/"), "nfe-archive"
names, token = [], ""
while True:
    q = urllib.parse.urlencode({"prefix": "processed/invoice_lines/", "pageToken": token})
    page = json.load(urllib.request.urlopen(f"{host}/storage/v1/b/{bucket}/o?{q}"))
    names += [o["name"] for o in page.get("items", [])]
    token = page.get("nextPageToken")
    if not token:
        break
with tempfile.TemporaryDirectory() as tmp:
    for i, name in enumerate(names):
        quoted = urllib.parse.quote(name, safe="")
        with open(os.path.join(tmp, f"{i}.parquet"), "wb") as f:
            f.write(urllib.request.urlopen(f"{host}/storage/v1/b/{bucket}/o/{quoted}?alt=media").read())
    db = duckdb.connect()
    db.execute(f"CREATE VIEW raw AS SELECT * FROM read_parquet('{tmp}/*.parquet')" if names else
               "CREATE VIEW raw AS SELECT 0::BIGINT nfe_id, 0 line_number, 0::DECIMAL(38,9) net, "
               "0::DECIMAL(38,9) line_total, now()::TIMESTAMPTZ creation_time, '' content_hash WHERE false")
    db.execute("""CREATE VIEW head AS SELECT nfe_id, content_hash, net FROM (
        SELECT *, row_number() OVER (PARTITION BY nfe_id
            ORDER BY date_trunc('millisecond', creation_time) DESC, content_hash DESC) AS version_rank
        FROM raw) WHERE version_rank = 1""")
    db.execute("""CREATE VIEW line AS SELECT * FROM (
        SELECT raw.*, row_number() OVER (PARTITION BY raw.nfe_id, raw.line_number) AS line_rank
        FROM raw JOIN head USING (nfe_id, content_hash)) WHERE line_rank = 1""")
    one = lambda sql: db.execute(sql).fetchone()
    invoices, net = one("SELECT count(*), coalesce(sum(net), 0)::VARCHAR FROM head")
    lines, line_total = one("SELECT count(*), coalesce(sum(line_total), 0)::VARCHAR FROM line")
    raw_rows, raw_total = one("SELECT count(*), coalesce(sum(line_total), 0)::VARCHAR FROM raw")
json.dump({"objects": len(names), "invoices": invoices, "net": net, "lines": lines,
           "line_total": line_total, "raw_rows": raw_rows, "raw_line_total": raw_total}, open(sys.argv[1], "w"))
PY2
}

# Prints what every store holds (plain counts and exact sums) next to the expected totals; fails when a
# store differs from them, or (with a previous round's summary) from what it held then.
summary() {  # $1 = label of the round, $2 = messages it must have delivered, $3 = previous summary (optional)
  python3 - "$work/expected.json" "$work/run-$1.json" "$work/inventory-$1.json" "$work/processed-$1.json" \
    "$work/summary-$1.json" "$2" "${3:-}" <<'PY2'
import json, sys
from decimal import Decimal
exp, run, inv, proc = (json.load(open(p)) for p in sys.argv[1:5])
lat = run["publish_to_bigtable"]
fmt = lambda v: "n/a" if v is None else f"{v:,.1f} ms"
source = "Pub/Sub" if run["mode"] == "stream" else "the raw archive"
print(f"read from {source:<15}{run['received']:>8,} messages in {run['seconds']:.2f} s "
      f"({run['messages_per_sec']:,.0f} messages/s)"
      + (f"; acked {run['acked']:,}, nacked {run['nacked']:,}" if run["mode"] == "stream" else ""))
print(f"valid invoices           {run['invoices']:>8,}   dead letters {run['dead_letters']:,}")
if run["mode"] == "stream":
    print(f"publish -> Bigtable      p50 {fmt(lat['p50_ms'])}, p99 {fmt(lat['p99_ms'])} over {lat['count']:,} rows")
# Each store as (invoices, net, lines, line total); decimals compared as numbers, never as floats.
stores = {
    "expected (API + decimal)": (exp["invoices"], exp["net"], exp["lines"], exp["line_total"]),
    "Bigtable invoice rows": (inv["bigtable_invoice_rows"], inv["bigtable_net"], inv["bigtable_items"],
                              inv["bigtable_line_total"]),
    "BigQuery views": (inv["bigquery_invoices_current"], inv["bigquery_net_current"],
                       inv["bigquery_items_current"], inv["bigquery_line_total_current"]),
    "processed archive": (proc["invoices"], proc["net"], proc["lines"], proc["line_total"]),
}
stores = {k: (a, Decimal(b).normalize(), c, Decimal(d).normalize()) for k, (a, b, c, d) in stores.items()}
print("counted in the stores (current version of each invoice and line):")
print(f"  {'':<26}{'invoices':>9} {'net':>18} {'lines':>9} {'line total':>18}")
for k, (a, b, c, d) in stores.items():
    print(f"  {k:<26}{a:>9,} {b:>18,f} {c:>9,} {d:>18,f}")
print("  raw, duplicates included (at-least-once delivery; the views and the totals above remove them):")
print(f"    BigQuery table invoices       {inv['bigquery_invoices']:>9,} rows, SUM(net) {Decimal(inv['bigquery_net']):,f}")
print(f"    BigQuery table invoice_items  {inv['bigquery_items']:>9,} rows, SUM(line_total) {Decimal(inv['bigquery_line_total']):,f}")
print(f"    processed archive             {proc['raw_rows']:>9,} rows in {proc['objects']:,} objects")
print(f"    raw archive                   {inv['raw_records']:>9,} records")
print(f"  Bigtable emission-index rows {inv['bigtable_index_rows']:,}; Storage "
      + ", ".join(f"{k}/ {v:,} objects" for k, v in inv["objects"].items()))
print("  dead letters by code: " + (", ".join(f"{k} {v}" for k, v in inv["dead_letters_by_code"].items()) or "none"))
expected = stores["expected (API + decimal)"]
wrong = [k for k, v in stores.items() if v != expected]
delivered = run["acked"] if run["mode"] == "stream" else run["received"]
if delivered < int(sys.argv[6]):
    wrong.append(f"the pipeline delivered {delivered:,} of {int(sys.argv[6]):,} messages")
if inv["objects"].get("dead-letter", 0) != exp["invalid"]:
    wrong.append(f"dead letters ({inv['objects'].get('dead-letter', 0)} stored, {exp['invalid']} expected)")
if inv["bigtable_index_rows"] != exp["invoices"]:
    wrong.append("Bigtable emission index")
text = lambda x: format(x, "f") if isinstance(x, Decimal) else x
mine = {k: [text(x) for x in v] for k, v in stores.items()} | {"dead_letters_by_code": inv["dead_letters_by_code"]}
json.dump(mine, open(sys.argv[5], "w"))
if sys.argv[7]:
    before = json.load(open(sys.argv[7]))
    wrong += [f"{k} changed since the first round" for k in mine if mine[k] != before[k]]
if wrong:
    print("MISMATCH: " + "; ".join(wrong)); sys.exit(1)
print("every store holds exactly the expected invoices, lines and totals"
      + (", as after the first round" if sys.argv[7] else ""))
PY2
}

count_of() {  # $1 = JSON file, $2 = key
  python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])' "$1" "$2"
}

step "first: ingest (API -> Pub/Sub, checkpoint in Bigtable)"
target/release/ingest run --provision --api-url "$api_url/invoices/feed" --page-size 500 \
  2>>"$work/ingest.log" >"$work/ingest-first.json"
published="$(count_of "$work/ingest-first.json" published)"
echo "published $published messages ($(count_of "$work/ingest-first.json" dead_letters) undelimitable pages)"
step "first: invoices pipeline (Pub/Sub -> Bigtable, BigQuery, Cloud Storage) until all $published are acknowledged"
RUST_LOG="${RUST_LOG:-info}" "${inv[@]}" run --stop-after "$published" --exit-when-idle 30 \
  2> >(grep --line-buffered -E 'progress|draining|error|WARN' >&2) >"$work/run-first.json"
"${inv[@]}" inventory >"$work/inventory-first.json"
processed_totals "$work/processed-first.json"
summary first "$published"

step "access patterns"
echo "\$ invoices list --from 2000-01-01 --to 2100-01-01 --limit 3   # emission-date range: one scan per index bucket"
"${inv[@]}" list --from 2000-01-01 --to 2100-01-01 --limit 3 2>/dev/null | tee "$work/list.txt"
id="$(python3 -c 'import json,sys; print(json.loads(open(sys.argv[1]).readline())["nfe_id"])' "$work/list.txt")"
echo "\$ invoices get $id   # one Bigtable row read by NFeID"
"${inv[@]}" get "$id"
echo "\$ cbt -project local-project -instance local-instance read invoices prefix=e# count=2"
cbt -project local-project -instance local-instance read invoices prefix='e#' count=2 2>&1 | head -20 || true
echo "\$ curl \$BIGQUERY_EMULATOR_HOST/bigquery/v2/projects/local-project/queries -d '{\"query\": \"SELECT ... FROM nfe.invoices_current ...\"}'   # the view: each invoice once"
curl -s "http://$BIGQUERY_EMULATOR_HOST/bigquery/v2/projects/local-project/queries" \
  -H 'Content-Type: application/json' \
  -d '{"useLegacySql": false, "query": "SELECT emission_date, COUNT(*) AS invoices, SUM(net) AS net FROM `local-project.nfe.invoices_current` GROUP BY emission_date ORDER BY emission_date LIMIT 3"}' \
  | python3 -c 'import json,sys; r=json.load(sys.stdin); [print([c["v"] for c in row["f"]]) for row in r.get("rows", [])] or print(r)'

echo "\$ invoices dead-letters --limit 2   # dead letters in Cloud Storage: counts by code and stage, newest first"
"${inv[@]}" dead-letters --limit 2 2>/dev/null | python3 -c 'import json,sys; d=json.load(sys.stdin)["stored"]; print("objects", d["objects"], "by stage", d["by_stage"]); [print(" ", e["object"], e["first_issue"]) for e in d["newest"]]'

# Everything again: the raw archive holds every message the pipeline received; replaying it delivers
# every invoice a second time through the same steps. Bigtable rewrites the same cells; BigQuery's
# tables receive a second copy of every row, which the views remove.
archived="$(count_of "$work/inventory-first.json" raw_records)"
step "second: invoices replay (raw archive -> Bigtable, BigQuery) of all $archived archived messages"
RUST_LOG="${RUST_LOG:-info}" "${inv[@]}" replay 2> >(grep --line-buffered -E 'error|WARN' >&2) >"$work/run-second.json"
"${inv[@]}" inventory >"$work/inventory-second.json"
processed_totals "$work/processed-second.json"
summary second "$archived" "$work/summary-first.json"
echo "second round: every invoice delivered again; every store's counts and totals are unchanged (idempotent)"

if [ -n "${DEMO_KEEP:-}" ]; then
  step "the stack stays up (Ctrl-C to stop); in another shell: source $work/emulators.env"
  wait
fi
step "done"
