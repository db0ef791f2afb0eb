#!/usr/bin/env bash
# The whole test suite: formatting, lints, every test of the workspace (unit, integration, doc tests),
# a bounded fuzzing run of every fuzz target (FUZZ_SECONDS per target, default 60), then the deployment
# checks: Terraform (scripts/check-infra.sh), both container images run against the emulators
# (scripts/check-image.sh; it starts a Docker engine when none runs), the Kubernetes overlays
# (scripts/check-k8s.sh, with the release binaries the image check built) and the monitoring
# (scripts/check-monitoring.sh: rules and their unit tests, the dashboard, a real Prometheus).
# Usage: ./scripts/test.sh
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }

# A cold run writes about need_gb GB (target/ with debug and release builds, fuzz/target, the Python
# environments, Docker images); say so up front rather than fail later with "No space left on device".
need_gb=9
avail_gb=$(df -Pk . | awk 'NR == 2 { printf "%d", $4 / 1048576 }')
step "disk: ${avail_gb} GB free in $(pwd); a cold run needs about ${need_gb} GB"
if [ "${avail_gb}" -lt "${need_gb}" ]; then
  echo "test.sh: warning: less free disk than a cold run needs; free space (e.g. cargo clean) if a step fails with ENOSPC" >&2
fi

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy (all targets, warnings are errors)"
cargo clippy --workspace --all-targets --locked -- -D warnings

if cargo nextest --version >/dev/null 2>&1; then
  step "cargo nextest run (unit and integration tests)"
  cargo nextest run --workspace --locked --no-fail-fast
else
  step "cargo test (cargo-nextest not installed)"
  cargo test --workspace --locked --no-fail-fast --lib --bins --tests
fi

step "cargo test --doc (documentation examples)"
cargo test --workspace --locked --doc

step "fuzzing: every cargo-fuzz target for ${FUZZ_SECONDS:-60} s from the checked-in seeds"
./scripts/fuzz.sh

step "deployment: Terraform (terraform fmt -check, checkov, tests/deploy/test_infra.py)"
./scripts/check-infra.sh

step "deployment: container images, built and run against the emulators (scripts/check-image.sh)"
./scripts/check-image.sh

step "deployment: Kubernetes overlays (kubectl kustomize, strict schemas, tests/deploy/test_k8s.py)"
./scripts/check-k8s.sh --bin-dir target/release

step "monitoring: promtool check/test rules, dashboard, a real Prometheus on the running stack (scripts/check-monitoring.sh)"
./scripts/check-monitoring.sh
