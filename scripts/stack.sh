# The local stack for scripts/demo.sh and scripts/soak.sh (sourced, not run): a work directory cleaned
# up on exit, the release build, the four emulators and the reference invoice API. Callers use `$work`,
# `$emu_pid` and `$api_url`, and add their own background processes to `pids`.

work="$(mktemp -d)"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT INT TERM

step() { printf '\n==> %s\n' "$*"; }

build_release() {
  step "building (release)"
  cargo build --release --locked -p emulators -p invoice-api -p ingest -p invoices
}

# Starts the emulators and exports their endpoints (PUBSUB_EMULATOR_HOST, ...).
start_emulators() {
  step "starting the emulators (Pub/Sub, Bigtable, Cloud Storage, BigQuery)"
  target/release/emulators --all --project local-project --env-file "$work/emulators.env" >/dev/null 2>"$work/emulators.log" &
  emu_pid=$!
  pids+=("$emu_pid")
  for _ in $(seq 1 600); do [ -s "$work/emulators.env" ] && break; sleep 0.5; done
  if [ ! -s "$work/emulators.env" ]; then
    echo "the emulators did not start; their log:" >&2; cat "$work/emulators.log" >&2; exit 1
  fi
  set -a
  # shellcheck disable=SC1091
  source "$work/emulators.env"
  set +a
}

# Starts the reference invoice API serving $1 invoices; sets api_url and INVOICE_API_TOKEN.
start_api() {
  step "starting the reference invoice API ($1 invoices)"
  export INVOICE_API_TOKEN="local-$RANDOM$RANDOM"
  target/release/invoice-api --listen 127.0.0.1:0 --count "$1" >"$work/api.out" 2>"$work/api.log" &
  pids+=($!)
  for _ in $(seq 1 50); do grep -q 'serving' "$work/api.out" 2>/dev/null && break; sleep 0.1; done
  api_url="$(sed -n 's/.* on \(http:[^ ]*\)$/\1/p' "$work/api.out")"
  echo "invoice API at $api_url"
}
