#!/usr/bin/env bash
# Checks the Kubernetes manifests of k8s/ without a cluster (there is no API server here, so no
# `kubectl apply --dry-run=server`):
#   1. each overlay (k8s/overlays/*) renders with `kubectl kustomize`;
#   2. every rendered object validates strictly: built-in kinds with `kubernetes-validate --strict`
#      against the pinned Kubernetes versions (the schemas ship with the package, offline); the custom
#      resources (PodMonitoring, SecretStore, ExternalSecret) against the hand-written JSON schemas of
#      tests/deploy/k8s_crd_schemas/ (tests/deploy/k8s_validate.py);
#   3. tests/deploy/test_k8s.py (pytest): restricted security context, no token mounted, namespaces,
#      no placeholder left, the hashed ConfigMap, images, names against config/invoices.toml, network
#      policies, and every flag and environment variable against the binaries' --help.
# Prints one line per step and exits non-zero when any step failed (all steps run).
#
# The Python tools (kubernetes-validate, PyYAML, jsonschema, pytest) come from the shared deployment
# environment .venv/deploy, set up by `scripts/check-infra.sh --setup-only`. The release binaries of invoices
# and ingest are built with cargo when missing (minutes the first time).
#
# Usage: scripts/check-k8s.sh [--bin-dir DIR] [--venv DIR] [--out DIR]
#   --bin-dir DIR  where the invoices and ingest binaries are (default: target/release, built if missing)
#   --venv DIR     use this ready Python environment instead of setting up the shared one
#   --out DIR      keep the rendered overlays there (<overlay>.yaml)
# Env:   K8S_VERSIONS  Kubernetes versions to validate against (default: "1.30.0 1.33.0")
#        DEPLOY_VENV   the shared environment's directory (default: <repo>/.venv/deploy)
#        KUBECTL       kubectl to use (default: kubectl)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
K8S_VERSIONS="${K8S_VERSIONS:-1.30.0 1.33.0}"
KUBECTL="${KUBECTL:-kubectl}"
BIN_DIR=""
VENV=""
OUT=""

die() {
    echo "check-k8s: error: $*" >&2
    exit 1
}
log() { echo "check-k8s: $*" >&2; }

while (($#)); do
    case "$1" in
    --bin-dir) BIN_DIR="${2:?--bin-dir needs a directory}"; shift ;;
    --bin-dir=*) BIN_DIR="${1#*=}" ;;
    --venv) VENV="${2:?--venv needs a directory}"; shift ;;
    --venv=*) VENV="${1#*=}" ;;
    --out) OUT="${2:?--out needs a directory}"; shift ;;
    --out=*) OUT="${1#*=}" ;;
    -h | --help)
        sed -n '2,24p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
        exit 0
        ;;
    *) die "unknown argument '$1' (usage: scripts/check-k8s.sh [--bin-dir DIR] [--venv DIR] [--out DIR])" ;;
    esac
    shift
done

command -v "$KUBECTL" >/dev/null 2>&1 ||
    die "kubectl not found: install it (https://kubernetes.io/docs/tasks/tools/) or set KUBECTL; it renders the overlays (kubectl kustomize)"

# --- the Python environment -------------------------------------------------------------------

if [[ -z "$VENV" ]]; then
    VENV="${DEPLOY_VENV:-$ROOT/.venv/deploy}"
    SETUP="$ROOT/scripts/check-infra.sh"
    [[ -f "$SETUP" ]] || die "scripts/check-infra.sh not found: its --setup-only sets up $VENV (or pass --venv DIR with kubernetes-validate, PyYAML, jsonschema and pytest installed)"
    DEPLOY_VENV="$VENV" bash "$SETUP" --setup-only >&2 || die "scripts/check-infra.sh --setup-only failed (see above)"
fi
PY="$VENV/bin/python"
[[ -x "$PY" ]] || die "no Python environment at $VENV (scripts/check-infra.sh --setup-only creates it)"
"$PY" -c 'import kubernetes_validate, yaml, jsonschema, pytest' 2>/dev/null ||
    die "$VENV lacks kubernetes-validate, PyYAML, jsonschema or pytest (scripts/check-infra.sh --setup-only installs them)"
[[ -x "$VENV/bin/kubernetes-validate" ]] || die "$VENV/bin/kubernetes-validate missing"

# --- the binaries -----------------------------------------------------------------------------

if [[ -z "$BIN_DIR" ]]; then
    BIN_DIR="$ROOT/target/release"
    if [[ ! -x "$BIN_DIR/invoices" || ! -x "$BIN_DIR/ingest" ]]; then
        command -v cargo >/dev/null 2>&1 || die "cargo not found and $BIN_DIR/{invoices,ingest} missing: install Rust or pass --bin-dir"
        log "building the release binaries (cargo build --release --locked -p invoices -p ingest)"
        (cd "$ROOT" && cargo build --release --locked -p invoices -p ingest) >&2 ||
            die "cargo build --release -p invoices -p ingest failed"
    fi
fi
[[ -d "$BIN_DIR" ]] || die "--bin-dir $BIN_DIR is not a directory"
BIN_DIR="$(cd "$BIN_DIR" && pwd)"
for b in invoices ingest; do
    [[ -x "$BIN_DIR/$b" ]] || die "$BIN_DIR/$b missing (cargo build --release --locked -p invoices -p ingest)"
done

# --- the checks --------------------------------------------------------------------------------

cd "$ROOT"
export PYTHONDONTWRITEBYTECODE=1
TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT
if [[ -n "$OUT" ]]; then
    mkdir -p "$OUT"
else
    OUT="$TMP"
fi
versions=()
for v in $K8S_VERSIONS; do versions+=(--k8s-version "$v"); done
failed=()
summary=()

overlays=()
for dir in k8s/overlays/*/; do
    [[ -f "$dir/kustomization.yaml" ]] && overlays+=("$(basename "$dir")")
done
((${#overlays[@]})) || die "no overlay under k8s/overlays"

for name in "${overlays[@]}"; do
    rendered="$OUT/$name.yaml"
    # 1. Render.
    if "$KUBECTL" kustomize "k8s/overlays/$name" >"$rendered" 2>"$TMP/$name.err"; then
        count="$(grep -c '^kind: ' "$rendered" || true)"
        summary+=("render $name: ok ($count objects)")
    else
        cat "$TMP/$name.err" >&2
        summary+=("render $name: FAILED (kubectl kustomize k8s/overlays/$name: $(tail -n 1 "$TMP/$name.err"))")
        failed+=("render $name")
        continue
    fi
    # 2. Validate every object.
    if "$PY" tests/deploy/k8s_validate.py "${versions[@]}" --label "$name" "$rendered" >"$TMP/$name.val" 2>&1; then
        summary+=("validate $(tail -n 1 "$TMP/$name.val")")
    else
        cat "$TMP/$name.val" >&2
        summary+=("validate $(tail -n 1 "$TMP/$name.val")")
        failed+=("validate $name")
    fi
done

# 3. The overlays against the code and configuration.
if BIN_DIR="$BIN_DIR" KUBECTL="$KUBECTL" "$PY" -m pytest -p no:cacheprovider tests/deploy/test_k8s.py -v \
    >"$TMP/pytest" 2>&1; then
    cat "$TMP/pytest"
    summary+=("test_k8s.py: ok ($(tail -n 1 "$TMP/pytest" | tr -d '=' | sed 's/^ *//; s/ *$//'))")
else
    cat "$TMP/pytest"
    summary+=("test_k8s.py: FAILED ($(tail -n 1 "$TMP/pytest" | tr -d '=' | sed 's/^ *//; s/ *$//'))")
    failed+=("test_k8s.py")
fi

for line in "${summary[@]}"; do
    echo "check-k8s: $line"
done
if ((${#failed[@]})); then
    echo "check-k8s: FAILED: ${failed[*]}" >&2
    exit 1
fi
echo "check-k8s: all checks passed"
