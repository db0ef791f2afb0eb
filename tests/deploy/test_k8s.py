"""The Kubernetes overlays of k8s/, rendered with `kubectl kustomize`, against the code and configuration.

Run by scripts/check-k8s.sh (which also validates every object against the Kubernetes schemas), or
alone: `.venv/deploy/bin/python -m pytest tests/deploy/test_k8s.py`. Needs kubectl and the release
binaries (BIN_DIR, default target/release: `cargo build --release --locked -p invoices -p ingest`).
"""

from __future__ import annotations

import copy
import functools
import ipaddress
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(HERE))

import k8s_validate  # noqa: E402

KUBECTL = os.environ.get("KUBECTL", "kubectl")
BIN_DIR = Path(os.environ.get("BIN_DIR") or ROOT / "target" / "release")
OVERLAYS = {"dev": "fluxo-dev", "prod": "fluxo"}  # overlay -> namespace
BINARIES = ("invoices", "ingest")
# Keys every overlay's settings.env must have (k8s/base/replacements/deploy-settings.yaml reads them;
# region goes into the image names).
SETTINGS_KEYS = {
    "project",
    "region",
    "invoices_service_account",
    "ingest_service_account",
    "archive_url",
    "api_url",
}
# Strings of the base that the overlays must replace; none may survive a render.
PLACEHOLDER = re.compile(r"(?<![A-Za-z0-9_])(PROJECT|REGION|VERSION|API_URL)(?![A-Za-z0-9_])")
# Environment variables a container may set that are not clap-declared (no `[env: NAME=` in --help),
# each with where the binary reads it.
ENV_READ_OUTSIDE_CLAP = {
    "RUST_LOG": "the log filter: tracing_subscriber::EnvFilter::try_from_default_env() in init_logs "
    "(pipelines/*/src/main.rs)",
    "KUBERNETES_SERVICE_HOST": "init_logs switches to JSON logs when it is set (Kubernetes sets it)",
}
# Pod Security Standards, restricted: volume types a pod may use.
RESTRICTED_VOLUME_TYPES = {
    "configMap",
    "csi",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "persistentVolumeClaim",
    "projected",
    "secret",
}
WORKLOAD_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job", "CronJob", "Pod"}
CLUSTER_SCOPED_KINDS = {"Namespace", "ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition"}


# --- rendering and helpers ---------------------------------------------------------------------


@functools.lru_cache(maxsize=None)
def render_text(path: str) -> str:
    try:
        proc = subprocess.run(
            [KUBECTL, "kustomize", str(ROOT / path)], capture_output=True, text=True, timeout=120
        )
    except FileNotFoundError:
        pytest.fail(f"{KUBECTL} not found: install kubectl (it renders the overlays)")
    if proc.returncode != 0:
        pytest.fail(f"kubectl kustomize {path} failed:\n{proc.stderr}")
    return proc.stdout


def render(path: str) -> list[dict]:
    return copy.deepcopy([d for d in yaml.safe_load_all(render_text(path)) if d is not None])


def find(docs, kind, name=None):
    found = [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    assert found, f"no {kind} {name or ''} in the render"
    return found


def one(docs, kind, name=None):
    found = find(docs, kind, name)
    assert len(found) == 1, f"{len(found)} objects {kind} {name or ''}"
    return found[0]


def pod_spec(obj: dict) -> dict | None:
    kind = obj["kind"]
    if kind == "Pod":
        return obj["spec"]
    if kind == "CronJob":
        return obj["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    if kind in WORKLOAD_KINDS:
        return obj["spec"]["template"]["spec"]
    return None


def pod_labels(obj: dict) -> dict:
    if obj["kind"] == "CronJob":
        return obj["spec"]["jobTemplate"]["spec"]["template"]["metadata"]["labels"]
    return obj["spec"]["template"]["metadata"]["labels"]


def workloads(docs):
    return [d for d in docs if d["kind"] in WORKLOAD_KINDS]


def containers(spec: dict) -> list[dict]:
    return spec.get("initContainers", []) + spec["containers"]


def env_of(container: dict) -> dict[str, dict]:
    return {e["name"]: e for e in container.get("env", [])}


def env_value(container: dict, name: str) -> str:
    entry = env_of(container).get(name)
    assert entry is not None, f"container {container['name']} has no {name}"
    assert "value" in entry, f"{name} of {container['name']} is not a literal value: {entry}"
    return entry["value"]


def flag_value(args: list[str], flag: str) -> str | None:
    for a in args:
        if a.startswith(flag + "="):
            return a.split("=", 1)[1]
    return None


def read_settings(overlay: str) -> dict[str, str]:
    out = {}
    for line in (ROOT / "k8s" / "overlays" / overlay / "settings.env").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        assert sep, f"settings.env of {overlay}: not key=value: {line!r}"
        out[key.strip()] = value
    return out


def read_kustomization(path: str) -> dict:
    return yaml.safe_load((ROOT / path / "kustomization.yaml").read_text())


@functools.lru_cache(maxsize=None)
def gcp_profile() -> dict:
    with open(ROOT / "config" / "invoices.toml", "rb") as f:
        return tomllib.load(f)["profiles"]["gcp"]


def placeholders(text: str) -> list[str]:
    return sorted({m.group(0) for m in PLACEHOLDER.finditer(text)})


def main_container(docs, kind, name):
    spec = pod_spec(one(docs, kind, name))
    return next(c for c in spec["containers"] if c["name"] == name)


# --- the binaries' command-line interface --------------------------------------------------------


def binary(name: str) -> Path:
    path = BIN_DIR / name
    if not os.access(path, os.X_OK):
        pytest.fail(
            f"{path} is missing: build it with `cargo build --release --locked -p invoices -p ingest` "
            "(or set BIN_DIR; scripts/check-k8s.sh builds it when missing)"
        )
    return path


@functools.lru_cache(maxsize=None)
def help_text(name: str, *subcommand: str) -> str:
    proc = subprocess.run(
        [str(binary(name)), *subcommand, "--help"], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, f"{name} {' '.join(subcommand)} --help failed: {proc.stderr}"
    return proc.stdout


def help_flags(text: str) -> set[str]:
    return set(re.findall(r"^\s+(?:-[A-Za-z], )?(--[a-z0-9][a-z0-9-]*)", text, re.M))


def help_env(text: str) -> set[str]:
    return set(re.findall(r"\[env: ([A-Za-z0-9_]+)=", text))


def help_subcommands(text: str) -> set[str]:
    section = text.split("Commands:", 1)
    if len(section) < 2:
        return set()
    names = set()
    for line in section[1].splitlines()[1:]:
        if not line.strip():
            break
        m = re.match(r"^\s{2}([a-z][a-z0-9-]*)\s", line)
        if m:
            names.add(m.group(1))
    return names - {"help"}


def help_default(text: str, flag: str) -> str | None:
    """The `[default: X]` of a flag in a subcommand's help."""
    m = re.search(rf"^\s+{re.escape(flag)}[ =<](.*?)(?=^\s+-)", text, re.M | re.S)
    if not m:
        return None
    d = re.search(r"\[default: ([^\]]+)\]", m.group(1))
    return d.group(1) if d else None


def cli_problems(container: dict, help_fn=help_text) -> list[str]:
    """Every flag and environment variable the container passes must exist in its binary's --help."""
    where = f"container {container['name']}"
    problems = []
    if "command" in container:
        problems.append(f"{where}: sets `command`; the image's entrypoint is the binary, pass `args` only")
    image = container["image"]
    name = re.split(r"[:@]", image.rsplit("/", 1)[-1])[0]
    if name not in BINARIES:
        return problems + [f"{where}: image {image} is not one of {BINARIES}"]
    top = help_fn(name)
    commands = help_subcommands(top)

    args = container.get("args", [])
    global_args, sub, sub_args = [], None, []
    for a in args:
        if sub is None and not a.startswith("-"):
            sub = a
        elif sub is None:
            global_args.append(a)
        else:
            sub_args.append(a)
    if sub is None:
        return problems + [f"{where}: no subcommand in args {args} (one of {sorted(commands)})"]
    if sub not in commands:
        return problems + [f"{where}: `{name} {sub}` is not a subcommand (one of {sorted(commands)})"]
    sub_help = help_fn(name, sub)

    def check_flags(flags, text, context):
        for a in flags:
            if not a.startswith("--"):
                problems.append(f"{where}: positional argument {a!r} after `{sub}` ({name} {sub} takes none)")
                continue
            flag = a.split("=", 1)[0]
            if flag not in help_flags(text):
                problems.append(f"{where}: {flag} is not a flag of `{context} --help`")

    check_flags(global_args, top, name)
    check_flags(sub_args, sub_help, f"{name} {sub}")

    declared = help_env(top) | help_env(sub_help)
    token_env = flag_value(sub_args, "--token-env") or help_default(sub_help, "--token-env")
    for var in env_of(container):
        if var in declared or var in ENV_READ_OUTSIDE_CLAP:
            continue
        if token_env and var == token_env:
            continue  # read through --token-env (the credential's variable name), never logged
        problems.append(
            f"{where}: environment variable {var} is not read by `{name} {sub}` "
            f"(no [env: {var}=] in its --help)"
        )
    return problems


# --- the overlays --------------------------------------------------------------------------------


@pytest.fixture(params=sorted(OVERLAYS), scope="module")
def overlay(request) -> str:
    return request.param


@pytest.fixture
def docs(overlay) -> list[dict]:
    return render(f"k8s/overlays/{overlay}")


def test_renders_the_expected_objects(overlay, docs):
    def key(d):
        name = d["metadata"]["name"]
        if d["kind"] == "ConfigMap":
            name = name.rsplit("-", 1)[0]  # invoices-config-<hash>
        return (d["kind"], name)

    assert sorted(map(key, docs)) == sorted(
        [
            ("Namespace", OVERLAYS[overlay]),
            ("ServiceAccount", "invoices"),
            ("ServiceAccount", "ingest"),
            ("ConfigMap", "invoices-config"),
            ("Deployment", "invoices"),
            ("HorizontalPodAutoscaler", "invoices"),
            ("PodDisruptionBudget", "invoices"),
            ("NetworkPolicy", "invoices"),
            ("PodMonitoring", "invoices"),
            ("CronJob", "ingest"),
            ("SecretStore", "gcp-secret-manager"),
            ("ExternalSecret", "invoice-api"),
            ("NetworkPolicy", "ingest"),
            ("PodMonitoring", "ingest"),
            ("Rules", "fluxo-rules"),
        ]
    )
    # deploy-settings is local configuration: read by the replacements, never applied.
    assert not [d for d in docs if d["metadata"]["name"].startswith("deploy-settings")]


def test_namespace_and_pod_security_admission(overlay, docs):
    ns = OVERLAYS[overlay]
    namespace = one(docs, "Namespace")
    assert namespace["metadata"]["name"] == ns
    labels = namespace["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "restricted"
    for d in docs:
        if d["kind"] in CLUSTER_SCOPED_KINDS:
            continue
        assert d["metadata"].get("namespace") == ns, f"{d['kind']}/{d['metadata']['name']} not in {ns}"


def test_common_labels(docs):
    for d in docs:
        assert d["metadata"]["labels"]["app.kubernetes.io/part-of"] == "fluxo-invoices", d["kind"]
    for w in workloads(docs):
        assert pod_labels(w)["app.kubernetes.io/part-of"] == "fluxo-invoices"
    # Selectors stay as they are (immutable on a Deployment): only app.kubernetes.io/name.
    assert one(docs, "Deployment")["spec"]["selector"] == {
        "matchLabels": {"app.kubernetes.io/name": "invoices"}
    }


def pod_security_problems(obj: dict) -> list[str]:
    """The `restricted` Pod Security Standard, and what this repository adds to it."""
    where = f"{obj['kind']}/{obj['metadata']['name']}"
    spec = pod_spec(obj)
    p = []
    sc = spec.get("securityContext", {})
    if sc.get("runAsNonRoot") is not True:
        p.append(f"{where}: pod securityContext.runAsNonRoot is not true")
    if sc.get("runAsUser") != 65532 or sc.get("runAsGroup") != 65532:
        p.append(f"{where}: pod runAsUser/runAsGroup are not 65532 (the image's user)")
    if sc.get("seccompProfile", {}).get("type") != "RuntimeDefault":
        p.append(f"{where}: pod seccompProfile is not RuntimeDefault")
    for host in ("hostNetwork", "hostPID", "hostIPC", "hostUsers"):
        if spec.get(host) is True:
            p.append(f"{where}: {host} is set")
    if spec.get("automountServiceAccountToken") is not False:
        p.append(f"{where}: automountServiceAccountToken is not false")
    for v in spec.get("volumes", []):
        kinds = set(v) - {"name"}
        if not kinds <= RESTRICTED_VOLUME_TYPES:
            p.append(f"{where}: volume {v['name']} of type {sorted(kinds)} is not allowed by `restricted`")
    for c in containers(spec):
        csc = c.get("securityContext", {})
        cw = f"{where} container {c['name']}"
        if csc.get("allowPrivilegeEscalation") is not False:
            p.append(f"{cw}: allowPrivilegeEscalation is not false")
        if csc.get("readOnlyRootFilesystem") is not True:
            p.append(f"{cw}: readOnlyRootFilesystem is not true")
        if csc.get("capabilities", {}).get("drop") != ["ALL"]:
            p.append(f"{cw}: capabilities.drop is not [ALL]")
        if csc.get("capabilities", {}).get("add"):
            p.append(f"{cw}: adds capabilities")
        if csc.get("privileged"):
            p.append(f"{cw}: privileged")
        for key in ("runAsNonRoot", "runAsUser", "runAsGroup"):
            if key in csc and csc[key] != sc.get(key):
                p.append(f"{cw}: overrides {key}")
        if csc.get("runAsUser") == 0:
            p.append(f"{cw}: runs as root")
        for port in c.get("ports", []):
            if "hostPort" in port:
                p.append(f"{cw}: hostPort")
        if not c.get("resources", {}).get("limits", {}).get("memory"):
            p.append(f"{cw}: no memory limit")
    return p


def test_every_pod_is_restricted(docs):
    found = workloads(docs)
    assert {w["kind"] for w in found} == {"Deployment", "CronJob"}
    problems = [p for w in found for p in pod_security_problems(w)]
    assert not problems, "\n".join(problems)


def test_a_pod_that_is_not_restricted_is_reported():
    docs = render("k8s/overlays/prod")
    dep = one(docs, "Deployment", "invoices")
    c = pod_spec(dep)["containers"][0]
    del c["securityContext"]["readOnlyRootFilesystem"]
    c["securityContext"]["capabilities"] = {"add": ["NET_ADMIN"]}
    pod_spec(dep)["automountServiceAccountToken"] = True
    pod_spec(dep)["volumes"].append({"name": "host", "hostPath": {"path": "/"}})
    problems = "\n".join(pod_security_problems(dep))
    for expected in ("readOnlyRootFilesystem", "capabilities.drop", "adds capabilities",
                     "automountServiceAccountToken", "hostPath"):
        assert expected in problems


def test_service_accounts_and_workload_identity(overlay, docs):
    settings = read_settings(overlay)
    for name in BINARIES:
        sa = one(docs, "ServiceAccount", name)
        assert sa["automountServiceAccountToken"] is False
        email = sa["metadata"]["annotations"]["iam.gke.io/gcp-service-account"]
        assert email == settings[f"{name}_service_account"]
        assert email == f"{name}@{settings['project']}.iam.gserviceaccount.com", (
            f"the Google service account Terraform creates for {name} is {name}@<project>"
        )
    for w in workloads(docs):
        name = w["metadata"]["name"]
        assert pod_spec(w)["serviceAccountName"] == name
        one(docs, "ServiceAccount", pod_spec(w)["serviceAccountName"])


def test_settings_files_are_complete_and_distinct():
    all_settings = {o: read_settings(o) for o in OVERLAYS}
    for overlay, s in all_settings.items():
        assert set(s) == SETTINGS_KEYS, f"{overlay}/settings.env keys: {sorted(s)}"
        assert re.fullmatch(r"[a-z][a-z0-9-]{4,28}[a-z0-9]", s["project"]), s["project"]
        assert s["archive_url"].startswith("gs://"), s["archive_url"]
        assert s["api_url"].startswith("https://"), s["api_url"]
        left = placeholders("\n".join(s.values()))
        assert not left, f"{overlay}/settings.env still has {left}"
    # dev must never point at prod's project, accounts or bucket.
    for key in ("project", "invoices_service_account", "ingest_service_account", "archive_url"):
        assert all_settings["dev"][key] != all_settings["prod"][key], key


def test_no_placeholder_survives(docs, overlay):
    left = placeholders(render_text(f"k8s/overlays/{overlay}"))
    assert not left, f"placeholders left in the {overlay} render: {left}"


def test_the_placeholder_check_sees_the_bases_placeholders():
    # The base alone still has them: the check above would see one an overlay forgot.
    assert {"PROJECT", "API_URL"} <= set(placeholders(render_text("k8s/base")))


def test_settings_reach_the_manifests(overlay, docs):
    s = read_settings(overlay)
    invoices = main_container(docs, "Deployment", "invoices")
    assert env_value(invoices, "INVOICES_PROJECT") == s["project"]
    assert env_value(invoices, "INVOICES_ARCHIVE_URL") == s["archive_url"]
    ingest = main_container(docs, "CronJob", "ingest")
    assert env_value(ingest, "GOOGLE_CLOUD_PROJECT") == s["project"]
    assert env_value(ingest, "INGEST_API_URL") == s["api_url"]
    assert one(docs, "SecretStore")["spec"]["provider"]["gcpsm"]["projectID"] == s["project"]


def test_config_map_is_generated_from_the_file_and_hashed(docs):
    cm = one(docs, "ConfigMap")
    name = cm["metadata"]["name"]
    assert re.fullmatch(r"invoices-config-[a-z0-9]{10}", name), name
    assert cm["data"] == {"invoices.toml": (ROOT / "config" / "invoices.toml").read_text()}
    dep = one(docs, "Deployment", "invoices")
    spec = pod_spec(dep)
    volumes = {v["name"]: v for v in spec["volumes"]}
    container = main_container(docs, "Deployment", "invoices")
    mount = next(m for m in container["volumeMounts"] if m["name"] == "config")
    assert volumes["config"]["configMap"]["name"] == name
    config_path = flag_value(container["args"], "--config")
    assert config_path == mount["mountPath"].rstrip("/") + "/invoices.toml"
    with open(ROOT / "config" / "invoices.toml", "rb") as f:
        profiles = tomllib.load(f)["profiles"]
    assert flag_value(container["args"], "--profile") in profiles


def test_images_per_overlay(overlay, docs):
    s = read_settings(overlay)
    images = {i["name"]: i for i in read_kustomization(f"k8s/overlays/{overlay}")["images"]}
    assert set(images) == set(BINARIES)
    rendered = {c["name"]: c["image"] for w in workloads(docs) for c in containers(pod_spec(w))}
    assert set(rendered) == set(BINARIES)
    for name, entry in images.items():
        repo = f"{s['region']}-docker.pkg.dev/{s['project']}/fluxo/{name}"
        assert entry["newName"] == repo
        if "digest" in entry:
            assert re.fullmatch(r"sha256:[0-9a-f]{64}", entry["digest"])
            assert rendered[name] == f"{repo}@{entry['digest']}"
        else:
            assert rendered[name] == f"{repo}:{entry['newTag']}"


def test_hpa_scales_on_the_profiles_subscription(docs):
    hpa = one(docs, "HorizontalPodAutoscaler", "invoices")
    target = hpa["spec"]["scaleTargetRef"]
    assert target == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "invoices"}
    (metric,) = hpa["spec"]["metrics"]
    assert metric["type"] == "External"
    name = metric["external"]["metric"]["name"]
    assert name == "pubsub.googleapis.com|subscription|num_undelivered_messages"
    selector = metric["external"]["metric"]["selector"]["matchLabels"]
    assert selector == {"resource.labels.subscription_id": gcp_profile()["subscription"]}


def test_ingest_uses_the_profiles_resources(docs):
    ingest = main_container(docs, "CronJob", "ingest")
    profile = gcp_profile()
    assert env_value(ingest, "BIGTABLE_INSTANCE") == profile["bigtable_instance"]
    assert env_value(ingest, "INGEST_TOPIC") == profile["topic"]
    assert env_value(ingest, "INGEST_DEAD_LETTER_TOPIC") == profile["dead_letter_topic"]


def test_ingest_token_comes_from_secret_manager_through_external_secrets(docs):
    ingest = main_container(docs, "CronJob", "ingest")
    ref = env_of(ingest)["INVOICE_API_TOKEN"]["valueFrom"]["secretKeyRef"]
    assert ref == {"name": "invoice-api", "key": "token"}
    es = one(docs, "ExternalSecret", "invoice-api")
    assert es["spec"]["target"]["name"] == ref["name"]
    assert [d["secretKey"] for d in es["spec"]["data"]] == [ref["key"]]
    assert es["spec"]["data"][0]["remoteRef"]["key"] == "invoice-api-token"  # infra: api_token_secret
    store = one(docs, es["spec"]["secretStoreRef"]["kind"], es["spec"]["secretStoreRef"]["name"])
    auth = store["spec"]["provider"]["gcpsm"]["auth"]["workloadIdentity"]
    assert auth["serviceAccountRef"]["name"] == "ingest"


def test_cronjob_schedule_and_deadlines(overlay, docs):
    cj = one(docs, "CronJob", "ingest")
    spec = cj["spec"]
    assert spec["schedule"] == "*/5 * * * *"
    assert spec["concurrencyPolicy"] == "Forbid"
    job = spec["jobTemplate"]["spec"]
    deadline = int(flag_value(main_container(docs, "CronJob", "ingest")["args"], "--deadline-secs"))
    assert deadline < job["activeDeadlineSeconds"], "the run's own deadline must come before the hard stop"
    assert pod_spec(cj)["restartPolicy"] == "Never"
    assert spec.get("suspend", False) is (overlay == "dev")


def test_deployment_drains_within_its_grace_period(docs):
    dep = one(docs, "Deployment", "invoices")
    c = main_container(docs, "Deployment", "invoices")
    drain = int(flag_value(c["args"], "--drain-timeout-secs"))
    assert drain + 5 <= pod_spec(dep)["terminationGracePeriodSeconds"]
    assert "replicas" not in dep["spec"], "the HorizontalPodAutoscaler owns the replica count"
    assert env_of(c)["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    probes = {k: c[k]["httpGet"] for k in ("startupProbe", "livenessProbe", "readinessProbe")}
    assert probes["livenessProbe"]["path"] == "/healthz"
    assert probes["readinessProbe"]["path"] == "/readyz"


def test_metrics_port_is_consistent(docs):
    for w in workloads(docs):
        name = w["metadata"]["name"]
        c = main_container(docs, w["kind"], name)
        ports = {p["name"]: p["containerPort"] for p in c["ports"]}
        addr = flag_value(c["args"], "--metrics-addr") or env_value(c, "INGEST_METRICS_ADDR")
        port = int(addr.rsplit(":", 1)[1])
        assert ports["metrics"] == port
        spec = w["spec"]["jobTemplate"]["spec"] if w["kind"] == "CronJob" else w["spec"]
        template = spec["template"]
        assert template["metadata"]["annotations"]["prometheus.io/port"] == str(port)
        for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
            if probe in c:
                assert c[probe]["httpGet"]["port"] in ("metrics", port)
        pm = one(docs, "PodMonitoring", name)
        assert selects(pm["spec"]["selector"], pod_labels(w))
        assert {e["port"] for e in pm["spec"]["endpoints"]} <= {"metrics", port}


def selects(selector: dict, labels: dict) -> bool:
    if not all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for e in selector.get("matchExpressions", []):
        if e["operator"] == "In" and labels.get(e["key"]) not in e["values"]:
            return False
        if e["operator"] == "NotIn" and labels.get(e["key"]) in e["values"]:
            return False
        if e["operator"] == "Exists" and e["key"] not in labels:
            return False
        if e["operator"] == "DoesNotExist" and e["key"] in labels:
            return False
    return True


def test_pdb_selects_the_workers(docs):
    pdb = one(docs, "PodDisruptionBudget", "invoices")
    assert selects(pdb["spec"]["selector"], pod_labels(one(docs, "Deployment", "invoices")))


def test_network_policies(docs):
    for w in workloads(docs):
        labels = pod_labels(w)
        policies = [p for p in find(docs, "NetworkPolicy") if selects(p["spec"]["podSelector"], labels)]
        assert len(policies) == 1, f"{w['metadata']['name']}: {len(policies)} NetworkPolicies select it"
        spec = policies[0]["spec"]
        assert sorted(spec["policyTypes"]) == ["Egress", "Ingress"]
        # Ingress: only the metrics port, only from the managed Prometheus collectors.
        for rule in spec["ingress"]:
            assert [(p["protocol"], p["port"]) for p in rule["ports"]] == [("TCP", 9464)]
            for peer in rule["from"]:
                assert set(peer) == {"namespaceSelector"}
                assert selects(peer["namespaceSelector"], {"kubernetes.io/metadata.name": "gmp-system"})
                assert selects(peer["namespaceSelector"], {"kubernetes.io/metadata.name": "gke-gmp-system"})
                assert not selects(peer["namespaceSelector"], {"kubernetes.io/metadata.name": "default"})
        # Egress: exactly DNS, HTTPS, the metadata server.
        allowed = set()
        for rule in spec["egress"]:
            peers = rule.get("to")
            for p in rule["ports"]:
                allowed.add((p["protocol"], p["port"], "any" if not peers else "restricted"))
            if peers:
                for peer in peers:
                    if "ipBlock" in peer:
                        net = ipaddress.ip_network(peer["ipBlock"]["cidr"])
                        assert net.subnet_of(ipaddress.ip_network("169.254.0.0/16")), net
        assert allowed == {
            ("UDP", 53, "restricted"),
            ("TCP", 53, "restricted"),
            ("TCP", 443, "any"),
            ("TCP", 80, "restricted"),
            ("TCP", 988, "restricted"),
        }, allowed
        metadata_rule = next(r for r in spec["egress"] if any(p["port"] == 988 for p in r["ports"]))
        cidrs = {peer["ipBlock"]["cidr"] for peer in metadata_rule["to"]}
        assert "169.254.169.254/32" in cidrs


def test_overlay_differences(overlay, docs):
    base = render("k8s/base")
    hpa = one(docs, "HorizontalPodAutoscaler", "invoices")
    invoices = main_container(docs, "Deployment", "invoices")
    ingest = main_container(docs, "CronJob", "ingest")
    if overlay == "prod":
        assert hpa["spec"] == one(base, "HorizontalPodAutoscaler", "invoices")["spec"]
        assert invoices["resources"] == main_container(base, "Deployment", "invoices")["resources"]
        assert ingest["resources"] == main_container(base, "CronJob", "ingest")["resources"]
        assert "RUST_LOG" not in env_of(invoices)
        assert env_value(ingest, "RUST_LOG") == "info"
    else:
        assert hpa["spec"]["maxReplicas"] == 2
        assert "debug" in env_value(invoices, "RUST_LOG")
        assert "debug" in env_value(ingest, "RUST_LOG")


# --- flags and environment variables against the binaries ----------------------------------------


def test_every_flag_and_variable_exists_in_the_binaries_help(docs):
    problems = []
    for w in workloads(docs):
        for c in containers(pod_spec(w)):
            problems += cli_problems(c)
    assert not problems, "\n".join(problems)


def test_the_allowlisted_variables_are_read_by_the_code():
    # Both binaries set up their logs with fluxo_gcp::logging::init, which reads RUST_LOG (through
    # EnvFilter) and KUBERNETES_SERVICE_HOST (JSON lines for Cloud Logging on Kubernetes).
    logging = (ROOT / "crates" / "fluxo-gcp" / "src" / "logging.rs").read_text()
    assert "EnvFilter::try_from_default_env" in logging, "the logging set-up no longer reads RUST_LOG"
    assert '"KUBERNETES_SERVICE_HOST"' in logging, "the logging set-up no longer reads KUBERNETES_SERVICE_HOST"
    for name in BINARIES:
        source = (ROOT / "pipelines" / name / "src" / "main.rs").read_text()
        assert "fluxo_gcp::logging::init(" in source, f"{name} no longer sets up its logs with fluxo_gcp::logging::init"


def test_the_help_parser_reads_what_the_binaries_declare():
    top = help_text("invoices")
    assert {"--config", "--profile", "--project", "--archive-url"} <= help_flags(top)
    declared = {"INVOICES_CONFIG", "INVOICES_PROFILE", "INVOICES_PROJECT", "INVOICES_ARCHIVE_URL"}
    assert declared <= help_env(top)
    assert "run" in help_subcommands(top) and "run" in help_subcommands(help_text("ingest"))
    assert "POD_NAME" in help_env(help_text("invoices", "run"))
    assert help_default(help_text("ingest", "run"), "--token-env") == "INVOICE_API_TOKEN"


def test_an_unknown_flag_or_variable_is_reported():
    docs = render("k8s/overlays/prod")
    invoices = main_container(docs, "Deployment", "invoices")
    invoices["args"].insert(0, "--no-such-global=1")
    invoices["args"].append("--no-such-flag=1")
    invoices["env"].append({"name": "INVOICES_NO_SUCH_SETTING", "value": "x"})
    problems = "\n".join(cli_problems(invoices))
    assert "--no-such-global is not a flag of `invoices --help`" in problems
    assert "--no-such-flag is not a flag of `invoices run --help`" in problems
    assert "INVOICES_NO_SUCH_SETTING is not read" in problems

    ingest = main_container(docs, "CronJob", "ingest")
    ingest["args"][0] = "runn"
    assert "`ingest runn` is not a subcommand" in "\n".join(cli_problems(ingest))

    # A run-only flag placed before the subcommand is not a global flag.
    invoices = main_container(render("k8s/overlays/prod"), "Deployment", "invoices")
    invoices["args"] = ["--drain-timeout-secs=25", "run"]
    assert "--drain-timeout-secs is not a flag of `invoices --help`" in "\n".join(cli_problems(invoices))


# --- schema validation (scripts/check-k8s.sh runs it on every overlay; here the negative cases) -----


def test_schema_validation_passes_and_rejects_mistakes():
    docs = render("k8s/overlays/prod")
    errors, summary = k8s_validate.validate_documents(docs, ("1.30.0",))
    assert not errors, errors
    assert summary["custom"] == {"PodMonitoring": 2, "SecretStore": 1, "ExternalSecret": 1, "Rules": 1}

    bad = copy.deepcopy(docs)
    pod_spec(one(bad, "Deployment"))["containers"][0]["securityContext"]["readOnlyRootFileSystem"] = True
    one(bad, "ExternalSecret")["spec"]["target"]["creationPolicy"] = "Owned"
    one(bad, "PodMonitoring", "invoices")["spec"]["endpoints"][0]["intervall"] = "30s"
    one(bad, "Rules")["spec"]["groups"][0]["rules"][-2]["for"] = "five minutes"
    bad.append({"apiVersion": "example.com/v1", "kind": "Unknown", "metadata": {"name": "x"}})
    errors, _ = k8s_validate.validate_documents(bad, ("1.30.0",))
    text = "\n".join(errors)
    assert "readOnlyRootFileSystem" in text
    assert "'Owned' is not one of" in text
    assert "intervall" in text
    assert "'five minutes' does not match" in text
    assert "Couldn't find schema for kind Unknown" in text
