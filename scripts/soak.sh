#!/usr/bin/env bash
# Soak: SOAK_INVOICES invoices (default 200,000) through the whole pipeline on the local emulators with
# one `invoices` worker: the reference API -> ingest -> Pub/Sub -> invoices -> Bigtable, BigQuery (Storage
# Write API) and Cloud Storage. Every SOAK_SAMPLE_SECS seconds it samples the resident memory (RSS) of the
# worker and of each emulator. It passes (exit 0) when every message is acknowledged, the worker exits 0,
# the worker's RSS stays within SOAK_BUDGET_WORKER MiB (default 256, the memory request of the
# Kubernetes Deployment: the worker's memory follows its in-flight window, `max_outstanding_messages`,
# not the volume, so the same bound holds for any number of invoices) and every emulator stays within its
# budget (MiB; override with SOAK_BUDGET_<SERVICE>; the emulators keep everything in memory, so their
# budgets are for 200,000 invoices). Samples go to $SOAK_OUT (default target/soak/samples.csv), the
# verdict to stdout.
# Usage: ./scripts/soak.sh        (SOAK_INVOICES=50000 ./scripts/soak.sh for a shorter one)
set -euo pipefail
cd "$(dirname "$0")/.."

count="${SOAK_INVOICES:-200000}"
every="${SOAK_SAMPLE_SECS:-5}"
out="${SOAK_OUT:-target/soak/samples.csv}"
mkdir -p "$(dirname "$out")"
# Budgets in MiB: measured peaks with headroom (docs/benchmarks.md, "Soak"). The Pub/Sub emulator holds the
# whole published backlog in its Java heap (about 15 KiB per waiting message).
export SOAK_BUDGET_WORKER="${SOAK_BUDGET_WORKER:-256}"
export SOAK_BUDGET_PUBSUB="${SOAK_BUDGET_PUBSUB:-4096}"
export SOAK_BUDGET_BIGTABLE="${SOAK_BUDGET_BIGTABLE:-3072}"
export SOAK_BUDGET_STORAGE="${SOAK_BUDGET_STORAGE:-2048}"
export SOAK_BUDGET_BIGQUERY="${SOAK_BUDGET_BIGQUERY:-4096}"

# shellcheck source=scripts/stack.sh
source scripts/stack.sh
build_release
start_emulators
start_api "$count"

inv=(target/release/invoices --profile local)
"${inv[@]}" provision

step "ingest: API -> Pub/Sub"
start=$(date +%s)
target/release/ingest run --provision --api-url "$api_url/invoices/feed" --page-size 1000 \
  2>>"$work/ingest.log" >"$work/ingest.json"
published="$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["published"])' "$work/ingest.json")"
echo "published $published messages in $(( $(date +%s) - start )) s"

step "invoices: one worker until all $published are acknowledged (RSS sampled every ${every}s)"
RUST_LOG="${RUST_LOG:-info}" "${inv[@]}" run --stop-after "$published" --exit-when-idle 120 \
  2> >(grep --line-buffered -E 'progress|draining|ERROR|WARN' >&2) >"$work/run.json" &
worker=$!
pids+=("$worker")

# Samples: seconds, then RSS in KiB of the worker and of each emulator (all processes of its group).
python3 - "$emu_pid" "$worker" "$every" "$out" <<'PY' &
import os, sys, time
emu, worker, every, out = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
def children():
    kids = {}
    for p in os.listdir("/proc"):
        if p.isdigit():
            try:
                stat = open(f"/proc/{p}/stat").read()
                ppid = int(stat.rsplit(")", 1)[1].split()[1])
                kids.setdefault(ppid, []).append(int(p))
            except OSError:
                pass
    return kids
def rss(pid):
    try:
        for line in open(f"/proc/{pid}/status"):
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0
def service(pid):
    try:
        cmd = open(f"/proc/{pid}/cmdline", "rb").read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return None
    for key, name in (("pubsub", "pubsub"), ("cbtemulator", "bigtable"), ("fake-gcs", "storage"),
                      ("bqemulator", "bigquery"), ("import asyncio", "bigquery")):
        if key in cmd:
            return name
    return None
t0 = time.time()
with open(out, "w") as f:
    f.write("seconds,worker_kib,pubsub_kib,bigtable_kib,storage_kib,bigquery_kib\n")
    while os.path.exists(f"/proc/{worker}"):
        kids, totals, stack = children(), {}, list(children().get(emu, []))
        seen = set()
        while stack:
            p = stack.pop()
            if p in seen:
                continue
            seen.add(p)
            stack += kids.get(p, [])
        for p in seen:
            s = service(p)
            if s:
                totals[s] = totals.get(s, 0) + rss(p)
        f.write(f"{time.time() - t0:.0f},{rss(worker)},{totals.get('pubsub', 0)},{totals.get('bigtable', 0)},"
                f"{totals.get('storage', 0)},{totals.get('bigquery', 0)}\n")
        f.flush()
        time.sleep(every)
PY
sampler=$!
pids+=("$sampler")
status=0
wait "$worker" || status=$?
wait "$sampler" 2>/dev/null || true
elapsed=$(( $(date +%s) - start ))

step "verdict"
python3 - "$work/run.json" "$out" "$published" "$status" "$elapsed" <<'PY'
import json, os, sys
run_path, samples, published, status, elapsed = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
run = json.load(open(run_path)) if os.path.getsize(run_path) else {}
rows = [list(map(int, l.split(","))) for l in open(samples).read().splitlines()[1:] if l]
ok = True
def check(cond, text):
    global ok
    print(("ok    " if cond else "FAIL  ") + text)
    ok = ok and cond
acked = run.get("acked", 0)
check(status == 0, f"worker exit status {status}")
check(acked == published, f"acknowledged {acked:,} of {published:,} messages "
      f"({run.get('invoices', 0):,} invoices, {run.get('dead_letters', 0):,} dead letters) in {elapsed} s")
if len(rows) >= 4:
    peak = max(r[1] for r in rows) / 1024
    q = len(rows) // 4
    means = [sum(r[1] for r in rows[k * q:(k + 1) * q]) / q / 1024 for k in range(4)]
    budget = int(os.environ["SOAK_BUDGET_WORKER"])
    check(peak <= budget, f"worker peak RSS {peak:.0f} MiB (budget {budget} MiB); mean per quarter "
          + " / ".join(f"{m:.0f}" for m in means) + " MiB")
else:
    check(False, f"only {len(rows)} samples: too short to judge the worker's RSS")
for i, name in enumerate(["pubsub", "bigtable", "storage", "bigquery"], start=2):
    peak = max((r[i] for r in rows), default=0) / 1024
    budget = int(os.environ[f"SOAK_BUDGET_{name.upper()}"])
    check(peak <= budget, f"{name:<9} emulator peak RSS {peak:,.0f} MiB (budget {budget:,} MiB)")
print(f"samples: {samples}")
sys.exit(0 if ok else 1)
PY
