#!/usr/bin/env bash
# Builds the workspace and runs the example pipeline (revenue per store and hour, with dead letters).
# Usage: ./scripts/demo.sh
set -euo pipefail
cd "$(dirname "$0")/.."
cargo run --release --locked -p fluxo --example sales
