#!/usr/bin/env python3
"""Strict schema validation of rendered Kubernetes manifests, without a cluster.

Built-in kinds go through `kubernetes-validate --strict` (the package ships the OpenAPI schemas of every
Kubernetes version, so nothing is downloaded) against each pinned version; an unknown field, a wrong
type, a missing required field or a kind/apiVersion the version does not serve is an error. Custom
resources, which those schemas do not know, go through the hand-written JSON schemas of
k8s_crd_schemas/ (named <group>_<version>_<Kind>.json). An object that neither covers fails.

Usage: k8s_validate.py [--k8s-version V]... FILE...   (FILE: the output of `kubectl kustomize`)
Exit status 0 when every object of every file passed, 1 otherwise. scripts/check-k8s.sh runs it on
each overlay; tests/deploy/test_k8s.py imports it for the negative cases.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

import jsonschema
import yaml

SCHEMA_DIR = Path(__file__).resolve().parent / "k8s_crd_schemas"
DEFAULT_VERSIONS = ("1.30.0", "1.33.0")


def crd_schemas() -> dict[tuple[str, str], dict]:
    """(apiVersion, kind) -> JSON schema, from k8s_crd_schemas/<group>_<version>_<Kind>.json."""
    out = {}
    for path in sorted(SCHEMA_DIR.glob("*.json")):
        group, version, kind = path.stem.split("_")
        schema = json.loads(path.read_text())
        jsonschema.Draft202012Validator.check_schema(schema)
        out[(f"{group}/{version}", kind)] = schema
    return out


def describe(obj: dict) -> str:
    meta = obj.get("metadata") or {}
    return f"{obj.get('kind')}/{meta.get('name')} ({obj.get('apiVersion')})"


def kubernetes_validate_cli() -> str:
    """The CLI of the interpreter's own environment (the venv), else the one on PATH."""
    beside = Path(sys.executable).parent / "kubernetes-validate"
    if beside.exists():
        return str(beside)
    found = shutil.which("kubernetes-validate")
    if not found:
        raise SystemExit("k8s_validate: kubernetes-validate not found (pip install kubernetes-validate)")
    return found


def validate_documents(docs: list[dict], versions=DEFAULT_VERSIONS) -> tuple[list[str], dict]:
    """Validates every object; returns (errors, summary). Errors are one line each."""
    errors: list[str] = []
    schemas = crd_schemas()
    builtin, custom = [], []
    for obj in docs:
        if not isinstance(obj, dict) or "apiVersion" not in obj or "kind" not in obj:
            errors.append(f"not a Kubernetes object: {str(obj)[:80]}")
        elif (obj["apiVersion"], obj["kind"]) in schemas:
            custom.append(obj)
        else:
            builtin.append(obj)

    for obj in custom:
        validator = jsonschema.Draft202012Validator(schemas[(obj["apiVersion"], obj["kind"])])
        for err in sorted(validator.iter_errors(obj), key=lambda e: list(e.absolute_path)):
            path = ".".join(str(p) for p in err.absolute_path) or "(root)"
            errors.append(f"{describe(obj)}: {path}: {err.message} (hand-written schema)")

    passed = 0
    if builtin:
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "objects.yaml")
            with open(path, "w") as f:
                yaml.safe_dump_all(builtin, f, sort_keys=False)
            cmd = [kubernetes_validate_cli(), "--strict"]
            for v in versions:
                cmd += ["-k", v]
            proc = subprocess.run(cmd + [path], capture_output=True, text=True)
        lines = (proc.stdout + proc.stderr).splitlines()
        for line in lines:
            if line.startswith("INFO") and " passed for resource " in line:
                passed += 1
            elif line.strip():
                # WARN (no schema for the kind: an unknown apiVersion or a custom resource without a
                # hand-written schema) counts as a failure, like ERROR.
                errors.append(line.replace(path, "rendered"))
        expected = len(builtin) * len(versions)
        if proc.returncode != 0 and not any(not l.startswith("INFO") for l in lines if l.strip()):
            errors.append(f"kubernetes-validate exited {proc.returncode} without a message")
        if passed != expected and not errors:
            errors.append(f"kubernetes-validate reported {passed} passes for {expected} object-versions")

    summary = {
        "builtin": len(builtin),
        "builtin_passes": passed,
        "custom": dict(Counter(o["kind"] for o in custom)),
        "versions": list(versions),
    }
    return errors, summary


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--k8s-version", action="append", help=f"default: {' '.join(DEFAULT_VERSIONS)}")
    parser.add_argument("--label", help="name printed for the file (default: the path)")
    parser.add_argument("files", nargs="+")
    args = parser.parse_args()
    versions = tuple(args.k8s_version or DEFAULT_VERSIONS)
    rc = 0
    for name in args.files:
        with open(name) as f:
            docs = [d for d in yaml.safe_load_all(f) if d is not None]
        errors, s = validate_documents(docs, versions)
        label = args.label or name
        for e in errors:
            print(f"{label}: {e}")
        custom = ", ".join(f"{k} x{n}" for k, n in sorted(s["custom"].items())) or "none"
        status = "FAILED" if errors else "ok"
        print(
            f"{label}: {status}: {s['builtin']} built-in objects, kubernetes-validate --strict against "
            f"{' and '.join(versions)} ({s['builtin_passes']} passes); custom resources against the "
            f"hand-written schemas: {custom}"
        )
        rc |= 1 if errors else 0
    return rc


if __name__ == "__main__":
    sys.exit(main())
