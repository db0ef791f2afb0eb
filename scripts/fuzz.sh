#!/usr/bin/env bash
# Runs every cargo-fuzz target of fuzz/ for a bounded time from the checked-in seeds
# (fuzz/seeds/<target>/), and fails on any crash. Installs cargo-fuzz when it is missing; the
# toolchain is stable, so the nightly flags cargo-fuzz needs are enabled with RUSTC_BOOTSTRAP=1.
#
# Usage: ./scripts/fuzz.sh [target...]
#   FUZZ_SECONDS     seconds per target (default 60)
#   FUZZ_CORPUS_DIR  where the corpus grows, one folder per target (default fuzz/corpus, not
#                    versioned; kept between runs, so later runs start from what earlier ones found)
#   FUZZ_TIMEOUT     seconds one input may take before it counts as a crash (default 10)
#   FUZZ_SANITIZER   none (default) or address: nfe forbids unsafe code and every check is an
#                    assertion, so the default trades AddressSanitizer for 4-5x the executions
#   FUZZ_ARGS        extra libFuzzer flags (e.g. "-max_len=65536")
# Prints one summary line per target (executions, coverage, seconds); a crash leaves its input in
# fuzz/artifacts/<target>/ and the command that replays it.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

seconds=${FUZZ_SECONDS:-60}
corpus_root=${FUZZ_CORPUS_DIR:-$root/fuzz/corpus}
timeout=${FUZZ_TIMEOUT:-10}
extra=${FUZZ_ARGS:-}
sanitizer=${FUZZ_SANITIZER:-none}
export RUSTC_BOOTSTRAP=1
# Release build with debug assertions and overflow checks: an arithmetic overflow is a crash.
build_flags=(--release --debug-assertions --sanitizer "$sanitizer")

step() { printf '\n==> %s\n' "$*"; }
started=$SECONDS

export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
if ! cargo fuzz --version >/dev/null 2>&1; then
  step "cargo install cargo-fuzz --locked"
  cargo install cargo-fuzz --locked
fi
cargo fuzz --version

cd fuzz
if [ "$#" -gt 0 ]; then
  targets=("$@")
else
  mapfile -t targets < <(cargo fuzz list)
fi

step "cargo fuzz build ${build_flags[*]} (${targets[*]})"
build_started=$SECONDS
cargo fuzz build "${build_flags[@]}"
echo "built in $((SECONDS - build_started)) s"

logs=$(mktemp -d)
trap 'rm -rf "$logs"' EXIT
summaries=()
failed=0
for target in "${targets[@]}"; do
  seeds=$root/fuzz/seeds/$target
  corpus=$corpus_root/$target
  mkdir -p "$corpus"
  [ -d "$seeds" ] || { echo "no seeds for $target in $seeds" >&2; exit 1; }
  step "fuzz $target for $seconds s (corpus $corpus, seeds $seeds)"
  log=$logs/$target.log
  target_started=$SECONDS
  status=0
  # shellcheck disable=SC2086 # FUZZ_ARGS is a list of flags
  cargo fuzz run "${build_flags[@]}" "$target" "$corpus" "$seeds" -- \
    -max_total_time="$seconds" -timeout="$timeout" -print_final_stats=1 $extra \
    >"$log" 2>&1 || status=$?
  elapsed=$((SECONDS - target_started))
  grep -E '^(#[0-9]+[[:space:]]+(INITED|DONE|REDUCE|pulse)|==[0-9]+==|SUMMARY|artifact_prefix|Test unit written|stat::)' "$log" |
    tail -n 12 || true
  final_stat() { sed -n "s/^stat::$1:[[:space:]]*//p" "$log" | tail -n 1; }
  execs=$(final_stat number_of_executed_units)
  per_second=$(final_stat average_exec_per_sec)
  # The last status line: "#N DONE cov: X ft: Y corp: A/B ...".
  last=$(grep -E '^#[0-9]+[[:space:]]' "$log" | tail -n 1 || true)
  cov=$(sed -n 's/.* cov: \([0-9]*\).*/\1/p' <<<"$last")
  ft=$(sed -n 's/.* ft: \([0-9]*\).*/\1/p' <<<"$last")
  corp=$(sed -n 's/.* corp: \([0-9]*\)\/.*/\1/p' <<<"$last")
  if [ "$status" -eq 0 ]; then
    outcome="no crash"
  else
    failed=1
    outcome="CRASH (exit $status)"
    tail -n 60 "$log"
    artifact=$(sed -n 's/.*Test unit written to \(.*\)$/\1/p' "$log" | tail -n 1)
    if [ -n "$artifact" ]; then
      echo "replay: (cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run ${build_flags[*]} $target $artifact)"
    fi
  fi
  summaries+=("$target: ${execs:-?} executions (${per_second:-?}/s) in $elapsed s, coverage ${cov:-?} edges / ${ft:-?} features, corpus ${corp:-?} inputs, $outcome")
done

step "summary (total $((SECONDS - started)) s)"
printf '%s\n' "${summaries[@]}"
exit "$failed"
