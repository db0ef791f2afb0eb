#!/usr/bin/env bash
# Checks the Terraform of infra/ without Google Cloud and without downloading providers:
#   1. terraform fmt -check -recursive infra
#   2. checkov (static analysis; every finding fixed or skipped inline with its reason)
#   3. tests/deploy/test_infra.py (pytest): the HCL against config/invoices.toml, the Rust sources
#      (Bigtable families, BigQuery partitioning and clustering, the views' SQL, the API calls each
#      binary makes and so the roles its service account needs) and the Kubernetes overlays.
# Prints one line per step and exits non-zero when any step failed (all steps run).
#
# The Python tools live in .venv/deploy, created from the pinned scripts/deploy-requirements.txt
# (a few minutes the first time; a stamp keyed on the requirements and this script makes later runs
# skip it; a lock serialises concurrent runs).
#
# Usage: scripts/check-infra.sh [--setup-only] [--force-setup]
#   --setup-only   create or update .venv/deploy and exit (other checks share the environment)
#   --force-setup  reinstall the environment even when up to date
# Env:   DEPLOY_VENV  venv directory (default: <repo>/.venv/deploy)
#        PYTHON       interpreter that creates the venv (default: python3, 3.11 or newer)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${DEPLOY_VENV:-$ROOT/.venv/deploy}"
REQ="$ROOT/scripts/deploy-requirements.txt"
PYTHON="${PYTHON:-python3}"
STAMP="$VENV/.setup-stamp"
HCL2_DIR="$VENV/python-hcl2"
SETUP_ONLY=0
FORCE=0

die() {
    echo "check-infra: error: $*" >&2
    exit 1
}
log() { echo "check-infra: $*" >&2; }

for arg in "$@"; do
    case "$arg" in
    --setup-only) SETUP_ONLY=1 ;;
    --force-setup) FORCE=1 ;;
    -h | --help)
        sed -n '2,20p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
        exit 0
        ;;
    *) die "unknown argument '$arg' (usage: scripts/check-infra.sh [--setup-only] [--force-setup])" ;;
    esac
done

if [[ $SETUP_ONLY == 0 ]]; then
    command -v terraform >/dev/null 2>&1 ||
        die "terraform not found: install Terraform >= 1.5 (https://developer.hashicorp.com/terraform/install) and put it on PATH"
fi
[[ -f "$REQ" ]] || die "missing $REQ"
command -v sha256sum >/dev/null 2>&1 || die "sha256sum not found: install coreutils"

# --- the Python environment -------------------------------------------------------------------

HCL2_PIN="$(grep -E '^python-hcl2==' "$REQ" || true)"
[[ -n "$HCL2_PIN" ]] || die "$REQ has no python-hcl2==VERSION line"
BC_HCL2_PIN="$(grep -E '^bc-python-hcl2==' "$REQ" || true)"
KEY="$(cat "$REQ" "${BASH_SOURCE[0]}" | sha256sum | cut -d' ' -f1)"

env_ready() {
    # python-hcl2 in site-packages (a plain `pip install -r` of the file) would shadow checkov's fork.
    [[ -f "$STAMP" && "$(cat "$STAMP")" == "$KEY" && -x "$VENV/bin/checkov" && -x "$VENV/bin/pytest" &&
        -f "$HCL2_DIR/hcl2/__init__.py" ]] &&
        ! compgen -G "$VENV/lib/python3*/site-packages/python_hcl2-*.dist-info" >/dev/null &&
        "$VENV/bin/python" -c '' >/dev/null 2>&1
}

setup() {
    mkdir -p "$(dirname "$VENV")"
    # Serialise concurrent runs (the Kubernetes checks may set up the same environment).
    if command -v flock >/dev/null 2>&1; then
        exec 9>"$VENV.lock"
        flock 9
    fi
    if [[ $FORCE == 0 ]] && env_ready; then
        exec 9>&- || true
        return 0
    fi
    command -v "$PYTHON" >/dev/null 2>&1 ||
        die "$PYTHON not found: install Python 3.11+ (apt-get install -y python3 python3-venv) or set PYTHON=/path/to/python3"
    local version
    version="$("$PYTHON" -c 'import sys; print("%d.%d.%d" % sys.version_info[:3]); sys.exit(0 if sys.version_info >= (3, 11) else 3)' 2>/dev/null)" || {
        [[ -n "${version:-}" ]] && die "Python $version is too old: the checks need Python 3.11+ (set PYTHON=/path/to/python3.11)"
        die "$PYTHON does not run"
    }
    local start
    start=$(date +%s)
    if [[ ! -x "$VENV/bin/python" ]] || ! "$VENV/bin/python" -c 'import sys' >/dev/null 2>&1; then
        log "creating virtual environment $VENV (Python $version)"
        rm -rf "$VENV"
        "$PYTHON" -m venv "$VENV" ||
            die "'$PYTHON -m venv' failed: install the venv module (apt-get install -y python3-venv)"
    fi
    log "installing pinned packages from scripts/deploy-requirements.txt (first run: a few minutes)"
    local filtered="$VENV/.requirements-without-python-hcl2.txt"
    grep -vE '^python-hcl2==' "$REQ" >"$filtered"
    "$VENV/bin/python" -m pip install --disable-pip-version-check --no-input --quiet -r "$filtered" ||
        die "pip install -r $REQ failed (is PyPI reachable? see the pip output above)"
    # A plain `pip install -r` of the file (by hand, or an older script) puts python-hcl2 next to
    # checkov's fork and one overwrites the other's `hcl2`: undo that.
    if "$VENV/bin/python" -m pip show --quiet python-hcl2 >/dev/null 2>&1; then
        log "removing python-hcl2 from the venv's site-packages (it goes to $HCL2_DIR)"
        "$VENV/bin/python" -m pip uninstall --disable-pip-version-check --yes --quiet python-hcl2
        if [[ -n "$BC_HCL2_PIN" ]]; then
            "$VENV/bin/python" -m pip install --disable-pip-version-check --no-input --quiet \
                --force-reinstall --no-deps "$BC_HCL2_PIN" || die "reinstalling $BC_HCL2_PIN failed"
        fi
    fi
    rm -rf "$HCL2_DIR"
    # Its dependencies (lark, regex) are pinned in the file and already in the venv.
    "$VENV/bin/python" -m pip install --disable-pip-version-check --no-input --quiet --no-deps \
        --target "$HCL2_DIR" "$HCL2_PIN" || die "pip install --target $HCL2_DIR $HCL2_PIN failed"
    "$VENV/bin/checkov" --version >/dev/null || die "checkov does not run (see above)"
    PYTHONPATH="$HCL2_DIR" "$VENV/bin/python" -c '
import sys, hcl2
from importlib.metadata import version
assert hcl2.__file__.startswith(sys.argv[1]), hcl2.__file__
print("check-infra: python-hcl2", version("python-hcl2"), "in", sys.argv[1], file=sys.stderr)
' "$HCL2_DIR" || die "python-hcl2 does not import from $HCL2_DIR"
    echo "$KEY" >"$STAMP"
    log "environment ready in $(($(date +%s) - start)) s ($VENV)"
    exec 9>&- || true
}

setup
if [[ $SETUP_ONLY == 1 ]]; then
    log "environment up to date ($VENV)"
    exit 0
fi

# --- the checks --------------------------------------------------------------------------------

cd "$ROOT"
# A TF_CLI_CONFIG_FILE naming a missing file only makes terraform warn on every command.
if [[ -n "${TF_CLI_CONFIG_FILE:-}" && ! -f "$TF_CLI_CONFIG_FILE" ]]; then
    unset TF_CLI_CONFIG_FILE
fi
OUT="$(mktemp -d)"
trap 'rm -rf "$OUT"' EXIT
failed=()
summary=()

# 1. Formatting.
if terraform fmt -check -recursive -list=true infra >"$OUT/fmt" 2>&1; then
    summary+=("terraform fmt: ok")
else
    cat "$OUT/fmt" >&2
    summary+=("terraform fmt: FAILED (run: terraform fmt -recursive infra): $(tr '\n' ' ' <"$OUT/fmt")")
    failed+=("terraform fmt")
fi

# 2. Static analysis. --skip-download: no network besides PyPI (guideline links are omitted).
if "$VENV/bin/checkov" --directory infra --framework terraform --quiet --compact --skip-download \
    --output cli >"$OUT/checkov" 2>&1; then
    counts="$(grep -oE 'Passed checks: [0-9]+, Failed checks: [0-9]+, Skipped checks: [0-9]+' "$OUT/checkov" | head -1)"
    summary+=("checkov: ok (${counts:-no findings})")
else
    cat "$OUT/checkov" >&2
    counts="$(grep -oE 'Passed checks: [0-9]+, Failed checks: [0-9]+, Skipped checks: [0-9]+' "$OUT/checkov" | head -1)"
    summary+=("checkov: FAILED (${counts:-see the output above}): fix each finding or skip it inline with #checkov:skip=ID:reason")
    failed+=("checkov")
fi

# 3. Consistency of the HCL with the code and the configuration.
if PYTHONDONTWRITEBYTECODE=1 PYTHONPATH="$HCL2_DIR${PYTHONPATH:+:$PYTHONPATH}" "$VENV/bin/python" -m pytest -p no:cacheprovider \
    tests/deploy/test_infra.py -v >"$OUT/pytest" 2>&1; then
    cat "$OUT/pytest"
    summary+=("test_infra.py: ok ($(tail -n 1 "$OUT/pytest" | tr -d '=' | sed 's/^ *//; s/ *$//'))")
else
    cat "$OUT/pytest"
    summary+=("test_infra.py: FAILED ($(tail -n 1 "$OUT/pytest" | tr -d '=' | sed 's/^ *//; s/ *$//'))")
    failed+=("test_infra.py")
fi

for line in "${summary[@]}"; do
    echo "check-infra: $line"
done
if ((${#failed[@]})); then
    echo "check-infra: FAILED: ${failed[*]}" >&2
    exit 1
fi
echo "check-infra: all checks passed"
