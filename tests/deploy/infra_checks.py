"""What tests/deploy/test_infra.py checks, as functions of a Terraform directory.

Each ``check_*`` function takes a ``Module`` (infra_hcl.py) and returns a list of problems (empty when
the Terraform agrees with the code), so the same checks run on infra/ and on mutated copies of it
(the negative tests). The "expected" side is always read from the repository: config/invoices.toml,
the Rust sources (through infra_rust.py) and the Kubernetes overlays, never from the Terraform.
"""

from __future__ import annotations

import difflib
import re
import shutil
import subprocess
import tomllib
from dataclasses import dataclass
from pathlib import Path

import infra_rust as rs
from infra_hcl import Module, strings

ROOT = Path(__file__).resolve().parents[2]

INVOICES_LIB = "pipelines/invoices/src/lib.rs"
INVOICES_CONFIG = "pipelines/invoices/src/config.rs"
INVOICES_GRAPH = "pipelines/invoices/src/graph.rs"
INVOICES_MAIN = "pipelines/invoices/src/main.rs"
INGEST_LIB = "pipelines/ingest/src/lib.rs"
INGEST_MAIN = "pipelines/ingest/src/main.rs"
INGEST_CHECKPOINT = "pipelines/ingest/src/checkpoint.rs"
NFE_BIGTABLE = "crates/nfe/src/bigtable.rs"
NFE_BIGQUERY = "crates/nfe/src/bigquery.rs"
NFE_STORAGE = "crates/nfe/src/storage.rs"
GCP = "crates/fluxo-gcp/src"

# The project the Terraform is read for: var.project_id has no default.
PROJECT = "<var.project_id>"


def gcp_profile() -> dict:
    with open(ROOT / "config" / "invoices.toml", "rb") as f:
        return tomllib.load(f)["profiles"]["gcp"]


def _raw(body: dict, key: str):
    return body.get(key)


def _norm(text) -> str:
    return re.sub(r"\s+", "", str(text))


# ------------------------------------------------------------------------------------------------
# (1) Names and Pub/Sub settings against config/invoices.toml's gcp profile and the code's defaults
# ------------------------------------------------------------------------------------------------

# Profile key -> Terraform variable of the same name.
PROFILE_NAMES = (
    "topic",
    "subscription",
    "dead_letter_topic",
    "dead_letter_subscription",
    "bigtable_instance",
    "bigtable_table",
    "bigquery_dataset",
    "max_delivery_attempts",
)

# Resource -> (name attribute, variable it must be set from).
NAMED_RESOURCES = {
    ("google_pubsub_topic", "invoices"): ("name", "topic"),
    ("google_pubsub_topic", "dead_letter"): ("name", "dead_letter_topic"),
    ("google_pubsub_subscription", "pipeline"): ("name", "subscription"),
    ("google_pubsub_subscription", "dead_letter"): ("name", "dead_letter_subscription"),
    ("google_bigtable_instance", "nfe"): ("name", "bigtable_instance"),
    ("google_bigtable_table", "invoices"): ("name", "bigtable_table"),
    ("google_bigtable_table", "checkpoints"): ("name", "checkpoint_table"),
    ("google_bigquery_dataset", "nfe"): ("dataset_id", "bigquery_dataset"),
}


def profile_expectations() -> dict:
    """The gcp profile with the code's defaults filled in for keys it leaves out."""
    p = dict(gcp_profile())
    if "dead_letter_subscription" not in p:
        # Profile::dead_letter_subscription(): "<dead_letter_topic>-sub".
        body = rs.fn_body(INVOICES_CONFIG, "Profile::dead_letter_subscription")
        assert rs.contains(body, 'format!("{}-sub", self.dead_letter_topic)'), "dead_letter_subscription default changed"
        p["dead_letter_subscription"] = f"{p['dead_letter_topic']}-sub"
    if "max_delivery_attempts" not in p:
        p["max_delivery_attempts"] = rs.int_value(rs.fn_body(INVOICES_CONFIG, "default_attempts"))
    if "bigtable_table" not in p:
        p["bigtable_table"] = next(t.text for t in rs.fn_body(INVOICES_CONFIG, "default_table") if t.kind == "str")
    tuning_default = rs.struct_fields(rs.fn_body(INVOICES_CONFIG, "Tuning::default"))
    p["ack_deadline_secs"] = p.get("tuning", {}).get(
        "ack_deadline_secs", rs.int_value(tuning_default["ack_deadline_secs"])
    )
    m = re.fullmatch(r"gs://([^/]+)(?:/(.*?))?/?", p["archive_url"])
    assert m, f"archive_url {p['archive_url']!r} is not gs://bucket[/prefix]"
    p["archive_bucket"], prefix = m.group(1), m.group(2) or ""
    p["archive_prefix"] = f"{prefix}/" if prefix else ""
    return p


def check_names(m: Module) -> list[str]:
    problems = []
    p = profile_expectations()
    for key in PROFILE_NAMES:
        if m.default(key) != p[key]:
            problems.append(f"variable {key} defaults to {m.default(key)!r}; config/invoices.toml [profiles.gcp] has {p[key]!r}")
    # The bucket: the profile's archive_url names <project>-nfe-archive; Terraform's default must
    # give the same name for the same project.
    if p["archive_bucket"] != f"{p['project']}-nfe-archive":
        problems.append(f"the gcp profile's bucket {p['archive_bucket']!r} is not <project>-nfe-archive")
    bucket = str(m.expr("local.archive_bucket")).replace(PROJECT, p["project"])
    if bucket != p["archive_bucket"]:
        problems.append(f"the archive bucket defaults to {bucket!r} for project {p['project']!r}; archive_url has {p['archive_bucket']!r}")
    if m.default("archive_prefix") != p["archive_prefix"]:
        problems.append(f"variable archive_prefix defaults to {m.default('archive_prefix')!r}; archive_url implies {p['archive_prefix']!r}")
    if _raw(m.resource("google_storage_bucket", "archive"), "name") != "${local.archive_bucket}":
        problems.append("google_storage_bucket.archive must be named local.archive_bucket")

    for (rtype, name), (attr, var) in NAMED_RESOURCES.items():
        value = _raw(m.resource(rtype, name), attr)
        if value != f"${{var.{var}}}":
            problems.append(f"{rtype}.{name}.{attr} is {value!r}, not var.{var}")

    # ingest's checkpoint table: --checkpoint-table's default.
    flag = rs.clap_args(INGEST_MAIN)["checkpoint_table"]["default_value"]
    if m.default("checkpoint_table") != flag:
        problems.append(f"variable checkpoint_table defaults to {m.default('checkpoint_table')!r}; ingest's --checkpoint-table defaults to {flag!r}")

    # The pipeline subscription: what `invoices provision` sets, plus what only Terraform sets.
    prov = rs.fn_body(INVOICES_LIB, "provision")
    for needle in (
        "ack_deadline_secs: p.tuning.ack_deadline_secs as i32",
        "dead_letter: Some((p.dead_letter_topic.clone(), p.max_delivery_attempts))",
    ):
        if not rs.contains(prov, needle):
            problems.append(f"{INVOICES_LIB} provision no longer has `{needle}`: re-read it and update this check")
    sub = m.resource("google_pubsub_subscription", "pipeline")
    if m.default("ack_deadline_seconds") != p["ack_deadline_secs"] or sub.get("ack_deadline_seconds") != "${var.ack_deadline_seconds}":
        problems.append(
            f"pipeline subscription ack deadline: var.ack_deadline_seconds = {m.default('ack_deadline_seconds')!r}, "
            f"attribute {sub.get('ack_deadline_seconds')!r}; provision uses tuning.ack_deadline_secs = {p['ack_deadline_secs']}"
        )
    if sub.get("topic") not in ("${google_pubsub_topic.invoices.id}", "${google_pubsub_topic.invoices.name}"):
        problems.append("the pipeline subscription must be on google_pubsub_topic.invoices")
    dlp = m.block(sub, "dead_letter_policy")
    if dlp.get("dead_letter_topic") != "${google_pubsub_topic.dead_letter.id}" or dlp.get("max_delivery_attempts") != "${var.max_delivery_attempts}":
        problems.append(f"pipeline subscription dead_letter_policy is {dlp!r}")
    if not m.block(sub, "retry_policy").get("minimum_backoff") or not m.block(sub, "retry_policy").get("maximum_backoff"):
        problems.append("pipeline subscription needs retry_policy { minimum_backoff, maximum_backoff }")
    for name in ("pipeline", "dead_letter"):
        s = m.resource("google_pubsub_subscription", name)
        if m.block(s, "expiration_policy").get("ttl") != "":
            problems.append(f"subscription {name} must never expire: expiration_policy {{ ttl = \"\" }}")
        if not s.get("message_retention_duration"):
            problems.append(f"subscription {name} needs message_retention_duration")
    # The dead-letter subscription: provision creates it with an ack deadline of 60 s.
    dl = m.resource("google_pubsub_subscription", "dead_letter")
    if not rs.contains(prov, "&p.dead_letter_topic, SubscriptionOptions { ack_deadline_secs: 60,"):
        problems.append(f"{INVOICES_LIB} provision no longer creates the dead-letter subscription with ack_deadline_secs: 60")
    if dl.get("ack_deadline_seconds") != 60 or dl.get("topic") != "${google_pubsub_topic.dead_letter.id}":
        problems.append(f"dead-letter subscription: ack_deadline_seconds {dl.get('ack_deadline_seconds')!r}, topic {dl.get('topic')!r}")
    if m.resolve(dl.get("message_retention_duration")) != "604800s":
        problems.append("dead-letter subscription must keep messages 7 days (604800s)")
    # Range of max_delivery_attempts: the profile's validation.
    if not rs.contains(rs.tokens_of(INVOICES_CONFIG), "(5..=100).contains(&self.max_delivery_attempts)"):
        problems.append(f"{INVOICES_CONFIG}: the max_delivery_attempts range changed: update variables.tf's validation")
    cond = _norm(m.block(m.variables["max_delivery_attempts"], "validation").get("condition"))
    if ">=5" not in cond or "<=100" not in cond:
        problems.append(f"variable max_delivery_attempts must be validated to 5..100, is {cond!r}")
    return problems


# ------------------------------------------------------------------------------------------------
# (2) Bigtable families and GC rules; BigQuery partitioning and clustering
# ------------------------------------------------------------------------------------------------


def rust_invoices_families() -> dict[str, int]:
    """nfe::bigtable::FAMILIES as {family: max versions}; provision creates exactly these."""
    fams = {}
    for item in rs.array_items(rs.const_value(NFE_BIGTABLE, "FAMILIES")):
        f = rs.struct_fields(item)
        fams[rs.ident_value(NFE_BIGTABLE, f["name"])] = rs.int_value(f["max_versions"])
    prov = rs.fn_body(INVOICES_LIB, "provision")
    assert rs.contains(prov, "nfe::bigtable::FAMILIES"), "provision no longer iterates nfe::bigtable::FAMILIES"
    assert rs.call_args(prov, "FamilySpec::max_versions") and all(
        [t.text for t in a[1]] == ["f", ".", "max_versions"] for a in rs.call_args(prov, "FamilySpec::max_versions")
    ), "provision no longer uses each family's max_versions"
    return fams


def rust_checkpoint_families() -> dict[str, int]:
    """ingest's checkpoint table as its `provision` creates it."""
    family = rs.string_const(INGEST_CHECKPOINT, "FAMILY")
    fams = {}
    for args in rs.call_args(rs.fn_body(INGEST_MAIN, "provision"), "FamilySpec::max_versions"):
        name_toks = [t.text for t in args[0]]
        assert name_toks == ["ingest", "::", "checkpoint", "::", "FAMILY"], name_toks
        fams[family] = rs.int_value(args[1])
    assert fams, f"{INGEST_MAIN} provision creates no family"
    return fams


def terraform_families(m: Module, table: str) -> tuple[dict[str, int | None], list[str]]:
    """{family: max versions of its GC policy} of google_bigtable_table.<table>."""
    problems = []
    body = m.resource("google_bigtable_table", table)
    families: dict[str, int | None] = {}
    for cf in m.blocks(body, "column_family"):
        families[m.resolve(cf["family"])] = None
    for d in m.dynamic(body, "column_family"):
        keys = m.resolve(d["for_each"])
        if not isinstance(keys, dict) or d["content"].get("family") != "${column_family.key}":
            problems.append(f"google_bigtable_table.{table}: unreadable dynamic column_family {d!r}")
            continue
        families.update({k: None for k in keys})
    for name, policy in m.of_type("google_bigtable_gc_policy").items():
        if m.ref_target(policy.get("table")) != ("google_bigtable_table", table):
            continue
        rules = _norm(policy.get("gc_rules", ""))
        targets = {}
        if policy.get("for_each") is not None:
            each = m.resolve(policy["for_each"])
            if policy.get("column_family") != "${each.key}" or not isinstance(each, dict):
                problems.append(f"google_bigtable_gc_policy.{name}: column_family must be each.key of a map")
                continue
            if rules != "${jsonencode({rules=[{max_version=each.value}]})}":
                problems.append(f"google_bigtable_gc_policy.{name}: gc_rules must be one max_version rule, is {policy.get('gc_rules')!r}")
                continue
            targets = {k: int(v) for k, v in each.items()}
        else:
            mv = re.fullmatch(r"\$\{jsonencode\(\{rules=\[\{max_version=(\d+)\}\]\}\)\}", rules)
            if not mv:
                problems.append(f"google_bigtable_gc_policy.{name}: unreadable gc_rules {policy.get('gc_rules')!r}")
                continue
            targets = {m.resolve(policy["column_family"]): int(mv.group(1))}
        for fam, versions in targets.items():
            if families.get(fam) is not None:
                problems.append(f"family {fam} of {table} has two GC policies")
            families[fam] = versions
    return families, problems


def check_bigtable(m: Module) -> list[str]:
    problems = []
    for table, wanted in (("invoices", rust_invoices_families()), ("checkpoints", rust_checkpoint_families())):
        got, p = terraform_families(m, table)
        problems += p
        if got != wanted:
            problems.append(
                f"Bigtable table {table}: Terraform families/GC rules (max versions) {got}; the code provisions {wanted}"
            )
        t = m.resource("google_bigtable_table", table)
        if t.get("instance_name") != "${google_bigtable_instance.nfe.name}":
            problems.append(f"google_bigtable_table.{table} must be in google_bigtable_instance.nfe")
    inst = m.resource("google_bigtable_instance", "nfe")
    clusters = m.blocks(inst, "cluster")
    if len(clusters) != 1 or clusters[0].get("storage_type") != "SSD":
        problems.append("the Bigtable instance must have one SSD cluster")
    return problems


def rust_table_specs() -> dict[str, dict]:
    """nfe::bigquery::INVOICES / INVOICE_ITEMS: name, partitioning, clustering, schema file."""
    specs = {}
    for const in ("INVOICES", "INVOICE_ITEMS"):
        f = rs.struct_fields(rs.const_value(NFE_BIGQUERY, const))
        schema_const = f["schema_json"][0].text
        include = rs.const_value(NFE_BIGQUERY, schema_const)
        assert [t.text for t in include[:3]] == ["include_str", "!", "("], include
        schema = (ROOT / Path(NFE_BIGQUERY).parent / include[3].text).resolve()
        specs[rs.ident_value(NFE_BIGQUERY, f["name"])] = {
            "partition_field": rs.ident_value(NFE_BIGQUERY, f["partition_field"]),
            "partition_type": rs.ident_value(NFE_BIGQUERY, f["partition_type"]),
            "clustering": [item[-1].text for item in rs.array_items(f["clustering"][1:])],
            "schema": schema,
        }
    # provision creates them with exactly these options.
    prov = rs.fn_body(INVOICES_LIB, "provision")
    for needle in (
        "for spec in [nfe::bigquery::INVOICES, nfe::bigquery::INVOICE_ITEMS]",
        "time_partitioning: Some(TimePartitioning::day(spec.partition_field))",
        "clustering: spec.clustering.iter()",
        "bq.create_table(&p.bigquery_dataset, spec.name, spec.schema_json, &options)",
    ):
        assert rs.contains(prov, needle), f"{INVOICES_LIB} provision no longer has `{needle}`"
    return specs


def check_bigquery(m: Module) -> list[str]:
    problems = []
    specs = rust_table_specs()
    tables = {m.resolve(b["table_id"]): (n, b) for n, b in m.of_type("google_bigquery_table").items()}
    for name, spec in specs.items():
        if spec["partition_type"] != "DAY":
            problems.append(f"{name}: the code declares partition_type {spec['partition_type']!r} but provision always uses DAY")
        if name not in tables:
            problems.append(f"no google_bigquery_table with table_id {name!r}")
            continue
        res, body = tables[name]
        tp = m.block(body, "time_partitioning")
        got = (tp.get("type"), tp.get("field"), body.get("clustering"))
        want = (spec["partition_type"], spec["partition_field"], spec["clustering"])
        if got != want:
            problems.append(f"BigQuery table {name}: Terraform partitioning/clustering {got}; the code creates {want}")
        sm = re.fullmatch(r'\$\{file\("(.*)"\)\}', body.get("schema", ""))
        schema = Path(m.resolve(sm.group(1)).replace("<path.module>", str(m.dir))) if sm else None
        if schema is None or not schema.is_file() or schema.resolve() != spec["schema"]:
            problems.append(f"BigQuery table {name}: schema must be file() of {spec['schema'].relative_to(ROOT)}, is {body.get('schema')!r}")
        if body.get("dataset_id") != "${google_bigquery_dataset.nfe.dataset_id}":
            problems.append(f"BigQuery table {name} must be in google_bigquery_dataset.nfe")
    ds = m.resource("google_bigquery_dataset", "nfe")
    if ds.get("location") != "${var.region}" or m.default("region") != "southamerica-east1":
        problems.append("the BigQuery dataset must be in var.region, southamerica-east1 by default (data stays in Brazil)")
    if "default_table_expiration_ms" in ds or "default_partition_expiration_ms" in ds:
        problems.append("the BigQuery dataset must not expire tables or partitions")
    return problems


# ------------------------------------------------------------------------------------------------
# (3) The views: infra/sql/*.sql against nfe::bigquery::INVOICES_CURRENT / INVOICE_ITEMS_CURRENT
# ------------------------------------------------------------------------------------------------


def rust_views() -> list[dict]:
    order = [item[0].text for item in rs.array_items(rs.const_value(NFE_BIGQUERY, "VIEWS"))]
    views = []
    for const in order:
        f = rs.struct_fields(rs.const_value(NFE_BIGQUERY, const))
        query = rs.ident_value(NFE_BIGQUERY, f["query"])
        views.append(
            {
                "name": rs.ident_value(NFE_BIGQUERY, f["name"]),
                "description": rs.ident_value(NFE_BIGQUERY, f["description"]),
                "query": query,
                # `{project}` / `{dataset}` (ViewSpec::query_for) are `${project}` / `${dataset}` for templatefile.
                "template": query.replace("{project}", "${project}").replace("{dataset}", "${dataset}"),
                "reads": re.findall(r"`\{project\}\.\{dataset\}\.([A-Za-z0-9_]+)`", query),
            }
        )
    body = rs.fn_body(NFE_BIGQUERY, "ViewSpec::query_for")
    assert rs.contains(body, '.replace("{project}", project)') and rs.contains(body, '.replace("{dataset}", dataset)')
    return views


def check_views(m: Module) -> list[str]:
    problems = []
    tables = {m.resolve(b["table_id"]): (n, b) for n, b in m.of_type("google_bigquery_table").items()}
    view_vars = m.locals.get("view_vars")
    if view_vars != {"project": "${var.project_id}", "dataset": "${var.bigquery_dataset}"}:
        problems.append(f"local.view_vars must be {{ project = var.project_id, dataset = var.bigquery_dataset }}, is {view_vars!r}")
    for v in rust_views():
        if set(re.findall(r"\{([a-z_]+)\}", v["query"])) - {"project", "dataset"}:
            problems.append(f"view {v['name']}: the Rust query has placeholders other than {{project}} and {{dataset}}")
        path = m.dir / "sql" / f"{v['name']}.sql"
        if not path.is_file():
            problems.append(f"missing {path}")
            continue
        text = path.read_text(encoding="utf-8")
        if text.rstrip("\n") != v["template"]:
            diff = "\n".join(
                difflib.unified_diff(
                    v["template"].splitlines(), text.rstrip("\n").splitlines(), "nfe::bigquery (Rust)", str(path), lineterm=""
                )
            )
            problems.append(f"{path} differs from the Rust view query:\n{diff}")
        if re.search(r"%\{|\$\{(?!project\}|dataset\})", text):
            problems.append(f"{path} has template sequences other than ${{project}} / ${{dataset}}")
        if v["name"] not in tables:
            problems.append(f"no google_bigquery_table for view {v['name']}")
            continue
        res, body = tables[v["name"]]
        view = m.block(body, "view")
        want_query = f'${{trimspace(templatefile("${{path.module}}/sql/{v["name"]}.sql",local.view_vars))}}'
        if _norm(view.get("query")) != want_query:
            problems.append(f"google_bigquery_table.{res}: view.query must be {want_query}, is {view.get('query')!r}")
        if view.get("use_legacy_sql") is not False:
            problems.append(f"google_bigquery_table.{res}: use_legacy_sql must be false")
        if body.get("description") != v["description"]:
            problems.append(f"google_bigquery_table.{res}: description {body.get('description')!r}; the code's is {v['description']!r}")
        deps = {m.ref_target(d) for d in body.get("depends_on", [])}
        for read in v["reads"]:
            if read in tables and ("google_bigquery_table", tables[read][0]) not in deps:
                problems.append(f"view {v['name']} reads {read}: google_bigquery_table.{res} must depend_on google_bigquery_table.{tables[read][0]}")
    return problems


# ------------------------------------------------------------------------------------------------
# Cloud Storage: lifecycle per prefix the code writes
# ------------------------------------------------------------------------------------------------


def rust_prefixes() -> dict[str, str]:
    def value(path, name):
        toks = rs.const_value(path, name)
        if len(toks) == 1:
            return rs.ident_value(path, toks)
        if [t.text for t in toks[:4]] == ["nfe", "::", "storage", "::"]:
            return rs.string_const(NFE_STORAGE, toks[4].text)
        raise LookupError(f"{path}: unreadable const {name}: {toks}")

    prefixes = {n: value(INVOICES_GRAPH, n) for n in ("RAW_PREFIX", "RAW_LATE_PREFIX", "PROCESSED_PREFIX", "DEAD_LETTER_PREFIX")}
    sinks = rs.fn_body(INVOICES_LIB, "open_sinks")
    for n in ("RAW_PREFIX", "RAW_LATE_PREFIX", "PROCESSED_PREFIX"):
        assert rs.contains(sinks, f"graph::{n}"), f"open_sinks no longer writes under graph::{n}"
    assert rs.contains(sinks, "graph::dead_letter_object_name"), "open_sinks no longer names dead letters with graph::dead_letter_object_name"
    assert rs.contains(
        rs.fn_body(NFE_STORAGE, "dead_letter_object_name_by_hash"), "partition(DEAD_LETTER_PREFIX, publish_time)"
    ), "dead-letter objects are no longer named under nfe::storage::DEAD_LETTER_PREFIX"
    return prefixes


def check_storage(m: Module) -> list[str]:
    problems = []
    lifecycle = m.resolve(m.locals.get("archive_lifecycle"))
    if not isinstance(lifecycle, dict):
        return [f"local.archive_lifecycle must be a map of prefix -> rule, is {lifecycle!r}"]
    code = {n: p.rstrip("/") + "/" for n, p in rust_prefixes().items()}
    for n, p in code.items():
        covering = [k for k in lifecycle if p.startswith(k)]
        if len(covering) != 1:
            problems.append(f"objects under {p} ({n}) match lifecycle prefixes {covering}: want exactly one")
    for k, rule in lifecycle.items():
        if not any(p.startswith(k) for p in code.values()):
            problems.append(f"lifecycle prefix {k!r} matches nothing the pipeline writes ({sorted(code.values())})")
        age = rule.get("delete_age")
        if not isinstance(age, int):
            problems.append(f"lifecycle {k}: delete_age {age!r} is not a number")
            continue
        for t_age, cls in rule.get("transitions", []):
            if cls not in ("NEARLINE", "COLDLINE", "ARCHIVE"):
                problems.append(f"lifecycle {k}: unknown storage class {cls}")
    fiscal = [code["RAW_PREFIX"], code["RAW_LATE_PREFIX"]]
    for p in fiscal:
        rule = next((r for k, r in lifecycle.items() if p.startswith(k)), {})
        if not isinstance(rule.get("delete_age"), int) or rule["delete_age"] < 1827:
            problems.append(f"{p} holds fiscal documents: keep it at least 1827 days (5 years), not {rule.get('delete_age')!r}")
    dl = next((r for k, r in lifecycle.items() if code["DEAD_LETTER_PREFIX"].startswith(k)), {})
    raw = next((r for k, r in lifecycle.items() if code["RAW_PREFIX"].startswith(k)), {})
    if isinstance(dl.get("delete_age"), int) and isinstance(raw.get("delete_age"), int) and dl["delete_age"] >= raw["delete_age"]:
        problems.append("dead letters should be kept for less time than the raw archive")
    b = m.resource("google_storage_bucket", "archive")
    deletes = [
        d for d in m.dynamic(b, "lifecycle_rule") if m.block(d["content"], "action").get("type") == "Delete"
    ]
    ok = any(
        d["for_each"] == "${local.archive_lifecycle}"
        and m.block(d["content"], "condition").get("matches_prefix") == ["${var.archive_prefix}${lifecycle_rule.key}"]
        and m.block(d["content"], "condition").get("age") == "${lifecycle_rule.value.delete_age}"
        for d in deletes
    )
    if not ok:
        problems.append("google_storage_bucket.archive needs a Delete lifecycle_rule per local.archive_lifecycle entry (matches_prefix, age = delete_age)")
    if b.get("uniform_bucket_level_access") is not True or b.get("public_access_prevention") != "enforced":
        problems.append("the archive bucket needs uniform_bucket_level_access = true and public_access_prevention = \"enforced\"")
    if b.get("location") not in ("${var.region}", "${coalesce(var.archive_location, var.region)}"):
        problems.append(f"the archive bucket must be in the region, is {b.get('location')!r}")
    return problems


# ------------------------------------------------------------------------------------------------
# (4) Roles: binary -> API call -> permission -> role -> resource, derived from the Rust sources
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Site:
    """A fact about the code: ``fn`` of ``path`` (or the whole file when ``fn`` is None) contains
    the token sequence ``needle``."""

    path: str
    fn: str | None
    needle: str

    def holds(self) -> bool:
        toks = rs.tokens_of(self.path) if self.fn is None else rs.fn_body(self.path, self.fn)
        return rs.contains(toks, self.needle)

    def __str__(self) -> str:
        return f"{self.path}{'' if self.fn is None else ' ' + self.fn}: `{self.needle}`"


@dataclass(frozen=True)
class Api:
    """An API method, the permissions it needs and the kind of resource they are checked on."""

    method: str
    permissions: tuple[str, ...]
    resource: str  # subscription | topic | bigtable_table | bigquery_dataset | bigquery_table | bucket | secret | cloud_run_service
    site: Site | None  # the call in the connectors (None: made by the platform for the binary)


P = f"{GCP}/pubsub"
BT = f"{GCP}/bigtable"
BQ = f"{GCP}/bigquery"
ST = f"{GCP}/storage"

# Every Google Cloud API call of the code, where it is made. `raw_sites()` finds every such call in
# the sources; test_every_api_call_site_is_classified fails on one missing here.
APIS: dict[str, Api] = {
    # Pub/Sub
    "GetSubscription": Api("pubsub.projects.subscriptions.get", ("pubsub.subscriptions.get",), "subscription",
                           Site(f"{P}/client.rs", "PubsubClient::get_subscription", "GetSubscriptionRequest")),
    "Pull": Api("pubsub.projects.subscriptions.pull", ("pubsub.subscriptions.consume",), "subscription",
                Site(f"{P}/source/pull.rs", "unary_puller", "subscriber().pull(")),
    "StreamingPull": Api("pubsub StreamingPull", ("pubsub.subscriptions.consume",), "subscription",
                         Site(f"{P}/source/pull.rs", "streaming_puller", "subscriber().streaming_pull(")),
    "Acknowledge": Api("pubsub.projects.subscriptions.acknowledge", ("pubsub.subscriptions.consume",), "subscription",
                       Site(f"{P}/source/ack.rs", "send_ack", "subscriber().acknowledge(")),
    "ModifyAckDeadline": Api("pubsub.projects.subscriptions.modifyAckDeadline", ("pubsub.subscriptions.consume",), "subscription",
                             Site(f"{P}/source/ack.rs", "send_modack", "subscriber().modify_ack_deadline(")),
    "GetTopic": Api("pubsub.projects.topics.get", ("pubsub.topics.get",), "topic",
                    Site(f"{P}/client.rs", "PubsubClient::topic_exists", "GetTopicRequest")),
    "Publish": Api("pubsub.projects.topics.publish", ("pubsub.topics.publish",), "topic",
                   Site(f"{P}/client.rs", "PubsubClient::publish", "publisher().publish(")),
    "CreateTopic": Api("pubsub.projects.topics.create", ("pubsub.topics.create",), "project",
                       Site(f"{P}/client.rs", "PubsubClient::create_topic", "publisher().create_topic(")),
    "CreateSubscription": Api("pubsub.projects.subscriptions.create", ("pubsub.subscriptions.create", "pubsub.topics.attachSubscription"), "project",
                              Site(f"{P}/client.rs", "PubsubClient::create_subscription", "subscriber.create_subscription(")),
    "DeleteTopic": Api("pubsub.projects.topics.delete", ("pubsub.topics.delete",), "topic",
                       Site(f"{P}/client.rs", "PubsubClient::delete_topic", "publisher().delete_topic(")),
    "DeleteSubscription": Api("pubsub.projects.subscriptions.delete", ("pubsub.subscriptions.delete",), "subscription",
                              Site(f"{P}/client.rs", "PubsubClient::delete_subscription", "subscriber.delete_subscription(")),
    "PeekPull": Api("pubsub pull (dead-letters --subscription)", ("pubsub.subscriptions.consume",), "subscription",
                    Site("pipelines/invoices/src/query.rs", "peek_dead_letter_subscription", "subscriber().pull(")),
    "PeekModifyAckDeadline": Api("pubsub modifyAckDeadline 0 (dead-letters --subscription)", ("pubsub.subscriptions.consume",), "subscription",
                                 Site("pipelines/invoices/src/query.rs", "peek_dead_letter_subscription", "subscriber().modify_ack_deadline(")),
    # Bigtable
    "GetTable": Api("bigtableadmin.tables.get (SCHEMA_VIEW)", ("bigtable.tables.get",), "bigtable_table",
                    Site(f"{BT}/admin.rs", "AdminClient::get_table", "GetTableRequest")),
    "CreateTable": Api("bigtableadmin.tables.create", ("bigtable.tables.create",), "bigtable_instance",
                       Site(f"{BT}/admin.rs", "AdminClient::provision_table", "CreateTableRequest")),
    "ModifyColumnFamilies": Api("bigtableadmin.tables.modifyColumnFamilies", ("bigtable.tables.update",), "bigtable_table",
                                Site(f"{BT}/admin.rs", "AdminClient::provision_table", "ModifyColumnFamiliesRequest")),
    "DeleteTable": Api("bigtableadmin.tables.delete", ("bigtable.tables.delete",), "bigtable_table",
                       Site(f"{BT}/admin.rs", "AdminClient::delete_table", "DeleteTableRequest")),
    "MutateRows": Api("bigtable MutateRows", ("bigtable.tables.mutateRows",), "bigtable_table",
                      Site(f"{BT}/client.rs", "WriteClient::mutate_rows", '"/google.bigtable.v2.Bigtable/MutateRows"')),
    "ReadRows": Api("bigtable ReadRows", ("bigtable.tables.readRows",), "bigtable_table",
                    Site(f"{BT}/reader.rs", "BigtableReader::read", "ReadRowsRequest")),
    "CheckAndMutateRow": Api("bigtable CheckAndMutateRow", ("bigtable.tables.mutateRows", "bigtable.tables.readRows"), "bigtable_table",
                             Site(f"{BT}/reader.rs", "BigtableReader::check_and_mutate", "CheckAndMutateRowRequest")),
    # BigQuery (REST through BigQueryClient::send/call; Storage Write API over gRPC)
    "datasets.get": Api("bigquery.datasets.get", ("bigquery.datasets.get",), "bigquery_dataset",
                        Site(f"{BQ}/admin.rs", "BigQueryAdmin::dataset_exists", "self.exists(&self.dataset_url(dataset))")),
    "tables.get": Api("bigquery.tables.get", ("bigquery.tables.get",), "bigquery_table",
                      Site(f"{BQ}/admin.rs", "BigQueryAdmin::table_exists", "self.exists(&self.table_url(dataset, table))")),
    "tables.get(schema)": Api("bigquery.tables.get (schema)", ("bigquery.tables.get",), "bigquery_table",
                              Site(f"{BQ}/sink.rs", "BigQuerySink::connect", "client.call(Method::GET, &url, None)")),
    "tables.get(view)": Api("bigquery.tables.get (view query)", ("bigquery.tables.get",), "bigquery_table",
                            Site(f"{BQ}/admin.rs", "BigQueryAdmin::view_query", "self.client.send(Method::GET, &url, None)")),
    "datasets.insert": Api("bigquery.datasets.insert", ("bigquery.datasets.create",), "project",
                           Site(f"{BQ}/admin.rs", "BigQueryAdmin::create_dataset", "self.create(url, body)")),
    "tables.insert": Api("bigquery.tables.insert", ("bigquery.tables.create",), "bigquery_dataset",
                         Site(f"{BQ}/admin.rs", "BigQueryAdmin::create_table", "self.create(url, body)")),
    "jobs.query": Api("bigquery.jobs.query / getQueryResults", ("bigquery.jobs.create",), "project",
                      Site(f"{BQ}/admin.rs", "BigQueryAdmin::query", 'format!("{}/queries", self.client.project_url())')),
    "CreateWriteStream": Api("bigquerystorage CreateWriteStream (COMMITTED)", ("bigquery.tables.updateData",), "bigquery_table",
                             Site(f"{BQ}/write.rs", "Lane::create_stream", "CreateWriteStreamRequest")),
    "AppendRows": Api("bigquerystorage AppendRows", ("bigquery.tables.updateData",), "bigquery_table",
                      Site(f"{BQ}/write.rs", "Lane::attempt", "AppendRowsRequest")),
    # Cloud Storage
    "buckets.get": Api("storage.buckets.get", ("storage.buckets.get",), "bucket",
                       Site(f"{ST}/bucket.rs", "Store::check", ".get_bucket(")),
    # An upload replaces an object of the same name (a retried batch): create + delete.
    "objects.insert": Api("storage.objects.insert (replacing)", ("storage.objects.create", "storage.objects.delete"), "bucket",
                          Site(f"{ST}/upload.rs", "Store::put", ".upload_object(")),
    "objects.insert(resumable)": Api("storage.objects.insert, resumable (replacing)", ("storage.objects.create", "storage.objects.delete"), "bucket",
                                     Site(f"{ST}/upload.rs", "Store::put_gcs_resumable", ".prepare_resumable_upload(")),
    "objects.list": Api("storage.objects.list", ("storage.objects.list",), "bucket",
                        Site(f"{ST}/objects.rs", "Store::list", ".list_objects(")),
    "objects.get": Api("storage.objects.get", ("storage.objects.get",), "bucket",
                       Site(f"{ST}/objects.rs", "Store::get", ".download_object(")),
    "objects.delete": Api("storage.objects.delete", ("storage.objects.delete",), "bucket",
                          Site(f"{ST}/objects.rs", "Store::delete", ".delete_object(")),
    "buckets.insert": Api("storage.buckets.insert", ("storage.buckets.create",), "project",
                          Site(f"{ST}/bucket.rs", "Store::create_bucket", ".insert_bucket(")),
    # Made by the platform for a binary (no call in the code).
    "secret": Api("secretmanager.versions.access (Cloud Run env / External Secrets)", ("secretmanager.versions.access",), "secret", None),
    "invoke": Api("run.routes.invoke (POST /run)", ("run.routes.invoke",), "cloud_run_service", None),
}

# Helpers with a raw call whose callers are the sites above.
RAW_HELPERS = {
    (f"{BQ}/admin.rs", "BigQueryAdmin::exists"): ("datasets.get", "tables.get"),
    (f"{BQ}/admin.rs", "BigQueryAdmin::create"): ("datasets.insert", "tables.insert"),
    (f"{BQ}/write.rs", "Lane::open"): ("AppendRows",),
}

# What marks a raw API call in a function body.
RAW_MARKERS = (
    "GetSubscriptionRequest", "GetTopicRequest", "DeleteTopicRequest", "DeleteSubscriptionRequest",
    "subscriber().pull(", "subscriber().streaming_pull(", "subscriber().acknowledge(",
    "subscriber().modify_ack_deadline(", "subscriber.create_subscription(", "subscriber.delete_subscription(",
    "subscriber.get_subscription(", "publisher().publish(", "publisher().create_topic(",
    "publisher().delete_topic(", "publisher().get_topic(",
    "GetTableRequest", "CreateTableRequest", "DeleteTableRequest", "ModifyColumnFamiliesRequest",
    "ReadRowsRequest", "CheckAndMutateRowRequest", "ReadModifyWriteRowRequest", "SampleRowKeysRequest",
    "MutateRowRequest",
    "send(Method::", "call(Method::", "CreateWriteStreamRequest", "AppendRowsRequest",
    "FinalizeWriteStreamRequest", "BatchCommitWriteStreamsRequest", "FlushRowsRequest", "GetWriteStreamRequest",
    ".get_bucket(", ".insert_bucket(", ".delete_bucket(", ".upload_object(", ".prepare_resumable_upload(",
    ".download_object(", ".list_objects(", ".delete_object(", ".get_object(", ".copy_object(",
    ".rewrite_object(", ".patch_object(",
)


def raw_sites() -> set[tuple[str, str]]:
    """(file, function) of every raw Google Cloud API call in the connectors and the pipelines."""
    files = sorted(
        str(p.relative_to(ROOT))
        for pattern in ("crates/fluxo-gcp/src/**/*.rs", "pipelines/*/src/**/*.rs")
        for p in ROOT.glob(pattern)
    )
    found = set()
    for path in files:
        for name, body in rs.functions(path):
            if any(rs.contains(body, marker) for marker in RAW_MARKERS) or any(
                t.kind == "str" and t.text.startswith("/google.bigtable.v2.Bigtable/") for t in body
            ):
                found.add((path, name))
    return found


@dataclass(frozen=True)
class Use:
    """A binary makes API call ``api`` on the resource named by Terraform variable ``var`` (the same
    name as the configuration key), as the chain of ``evidence`` in the sources shows."""

    api: str
    var: str
    evidence: tuple[Site, ...]


def _chain(*links: tuple[str, str | None, str]) -> tuple[Site, ...]:
    return tuple(Site(*link) for link in links)


IL = INVOICES_LIB
# The invoices workers: `invoices run` (Deployment) and `invoices replay` (a Job), service account
# `invoices`.
_SOURCE = ((IL, "run_stream", "PubsubSource::connect(&PubsubSourceConfig"), (IL, "run_stream", "subscription: p.subscription.clone()"))
_DL_TOPIC = ((IL, "open_sinks", "PubsubSink::<PubsubOut>::connect(&PubsubSinkConfig"), (IL, "open_sinks", "topic: p.dead_letter_topic.clone()"))
_BT = ((IL, "open_sinks", "BigtableSink::connect(&bigtable_settings(p))"), (IL, "bigtable_settings", "table: p.bigtable_table.clone()"))
_BQ = ((IL, "open_sinks", "BigQuerySink::connect(&bigquery_config(p))"), (IL, "bigquery_config", "dataset: p.bigquery_dataset.clone()"))
_BQ_TABLES = (IL, "bigquery_config", "tables: vec![nfe::bigquery::INVOICES.name.to_string(), nfe::bigquery::INVOICE_ITEMS.name.to_string(),]")
_GCS = ((IL, "archive_sink_config", "StorageSinkConfig::new(p.archive_url.clone())"), (f"{ST}/sink.rs", "StorageSinkBuilder::open", "store.check(true)"))
_REPLAY = ((IL, "run_replay", "StorageSource::raw(&source_config)?.open()"), (IL, "run_replay", "StorageSourceConfig::new(p.archive_url.clone())"))

INVOICES_USES = (
    Use("GetSubscription", "subscription", _chain(*_SOURCE, (f"{P}/source/mod.rs", "PubsubSource::connect", "client.check_subscription("),
                                                    (f"{P}/client.rs", "PubsubClient::check_subscription", "self.get_subscription("))),
    Use("Pull", "subscription", _chain(*_SOURCE, (f"{P}/source/mod.rs", "PubsubSource::run", "unary_puller(shared, tx)"))),
    Use("StreamingPull", "subscription", _chain(*_SOURCE, (f"{P}/source/mod.rs", "PubsubSource::run", "streaming_puller(shared, tx)"))),
    Use("Acknowledge", "subscription", _chain(*_SOURCE, (f"{P}/source/mod.rs", "PubsubSource::run", "acker(Arc::clone(&shared), ack_rx)"),
                                                (f"{P}/source/ack.rs", "acker", "send_ack(&shared, ids)"))),
    Use("ModifyAckDeadline", "subscription", _chain(*_SOURCE, (f"{P}/source/mod.rs", "PubsubSource::run", "lease_extender(Arc::clone(&shared), period)"),
                                                      (f"{P}/source/ack.rs", "lease_extender", "send_modack(&shared, ids, seconds)"))),
    Use("GetTopic", "dead_letter_topic", _chain(*_DL_TOPIC, (f"{P}/sink.rs", "PubsubSink::connect", "client.check_topic(&settings.topic)"),
                                                  (f"{P}/client.rs", "PubsubClient::check_topic", "self.topic_exists(&path)"))),
    Use("Publish", "dead_letter_topic", _chain(*_DL_TOPIC, (f"{P}/sink.rs", "PubsubSink::publish_once", "self.client.publish(req)"))),
    Use("GetTable", "bigtable_table", _chain(*_BT, (f"{BT}/sink.rs", "BigtableSink::connect", "admin.get_table(&cfg.table, cfg.connect_timeout)"))),
    Use("MutateRows", "bigtable_table", _chain(*_BT, (f"{BT}/sink.rs", None, "self.client.mutate_rows(body, self.cfg.timeout)"))),
    Use("datasets.get", "bigquery_dataset", _chain(*_BQ, (f"{BQ}/sink.rs", "BigQuerySink::connect", "check(&client, &settings)"),
                                                     (f"{BQ}/sink.rs", "check", "admin.dataset_exists(&s.dataset)"))),
    Use("tables.get", "bigquery_tables", _chain(*_BQ, _BQ_TABLES, (f"{BQ}/sink.rs", "check", "admin.table_exists(&s.dataset, t)"))),
    Use("tables.get(schema)", "bigquery_tables", _chain(*_BQ, _BQ_TABLES)),
    Use("CreateWriteStream", "bigquery_tables", _chain(*_BQ, _BQ_TABLES, (f"{BQ}/sink.rs", "BigQuerySink::send", "lane.append("),
                                                         (f"{BQ}/write.rs", "Lane::append", "append_chunk("),
                                                         (f"{BQ}/write.rs", "Lane::append_chunk", ".attempt("),
                                                         (f"{BQ}/write.rs", "Lane::attempt", "self.create_stream(client, s)"))),
    Use("AppendRows", "bigquery_tables", _chain(*_BQ, _BQ_TABLES, (f"{BQ}/sink.rs", "BigQuerySink::send", "lane.append("))),
    Use("buckets.get", "archive_bucket", _chain(*_GCS, (f"{ST}/bucket.rs", "Store::check", ".get_bucket("))),
    Use("objects.insert", "archive_bucket", _chain(*_GCS, (f"{ST}/sink.rs", "StorageSink::write_group", ".put(&name, body, self.format.content_type())"))),
    Use("objects.insert(resumable)", "archive_bucket", _chain(*_GCS, (f"{ST}/upload.rs", "Store::put", "self.put_gcs_resumable("))),
    # replay: raw/ and raw-late/ through the same sinks
    Use("buckets.get", "archive_bucket", _chain(*_REPLAY, (f"{ST}/source.rs", "StorageSource::open", "store.check(false)"))),
    Use("objects.list", "archive_bucket", _chain(*_REPLAY, (f"{ST}/source.rs", None, "store.list(&prefix)"))),
    Use("objects.get", "archive_bucket", _chain(*_REPLAY, (f"{ST}/source.rs", None, "store.get(&object.name)"))),
)

INGEST_USES = tuple(
    Use(api, var, _chain((INGEST_LIB, "run_registered", f"PubsubSink::<PubsubOut>::connect(&cfg.{field})"),
                         (INGEST_MAIN, "Opts::to_config", f"{field}: topic(&self.{field})"), *extra))
    for field, var in (("topic", "topic"), ("dead_letter_topic", "dead_letter_topic"))
    for api, extra in (
        ("GetTopic", ((f"{P}/sink.rs", "PubsubSink::connect", "client.check_topic(&settings.topic)"),)),
        ("Publish", ((f"{P}/sink.rs", "PubsubSink::publish_once", "self.client.publish(req)"),)),
    )
) + (
    Use("ReadRows", "checkpoint_table", _chain((INGEST_LIB, "run_registered", "BigtableCheckpointStore::connect(&cfg.checkpoint"),
                                               (INGEST_MAIN, "Opts::to_config", "table: self.checkpoint_table.clone()"),
                                               (INGEST_CHECKPOINT, "BigtableCheckpointStore::row", ".read_row(self.key.clone())"),
                                               (f"{BT}/reader.rs", "BigtableReader::read_row", "self.read(rows, 1)"))),
    Use("CheckAndMutateRow", "checkpoint_table", _chain((INGEST_LIB, "run_registered", "BigtableCheckpointStore::connect(&cfg.checkpoint"),
                                                        (INGEST_CHECKPOINT, "BigtableCheckpointStore::cas", ".compare_and_set(self.key.clone()"),
                                                        (f"{BT}/reader.rs", "BigtableReader::compare_and_set", "self.check_and_mutate("))),
    # The token: INVOICE_API_TOKEN (--token-env's default), injected from Secret Manager by the
    # platform (Cloud Run's secret env var, External Secrets on GKE) with ingest's identity.
    Use("secret", "api_token_secret", _chain((INGEST_MAIN, None, 'token_env: String'),
                                             (INGEST_MAIN, None, '#[arg(long, default_value = "INVOICE_API_TOKEN")]'))),
)

SCHEDULER_USES = (
    Use("invoke", "ingest_service", _chain((INGEST_MAIN, "serve", '.route("/run", post(trigger))'))),
)

# Pub/Sub's service agent, for the subscription's dead-letter policy: it publishes the messages it
# gives up on to the dead-letter topic and acknowledges them on the subscription.
AGENT_USES = (
    Use("Publish", "dead_letter_topic", _chain((IL, "provision", "dead_letter: Some((p.dead_letter_topic.clone(), p.max_delivery_attempts))"))),
    Use("Acknowledge", "subscription", _chain((IL, "provision", "dead_letter: Some((p.dead_letter_topic.clone(), p.max_delivery_attempts))"))),
)

PRINCIPALS = {
    "invoices": INVOICES_USES,
    "ingest": INGEST_USES,
    "ingest-scheduler": SCHEDULER_USES,
    "pubsub-service-agent": AGENT_USES,
}

# What the workers' code must never reach: the calls of `invoices provision`, `ingest --provision`
# and the operator tools (inventory, views, dead-letters). Their permissions are not granted.
WORKER_CODE = {
    "invoices": [(IL, "run_stream"), (IL, "run_replay"), (IL, "open_sinks"), (INVOICES_GRAPH, None),
                 (f"{BQ}/sink.rs", None), (f"{BQ}/write.rs", None), (f"{BT}/sink.rs", None),
                 (f"{P}/source/mod.rs", None), (f"{P}/source/pull.rs", None), (f"{P}/source/ack.rs", None),
                 (f"{P}/source/flow.rs", None), (f"{P}/sink.rs", None), (f"{ST}/sink.rs", None), (f"{ST}/source.rs", None)],
    "ingest": [(INGEST_LIB, "run"), (INGEST_LIB, "run_in"), (INGEST_LIB, "run_registered"), (INGEST_CHECKPOINT, None)],
}
OPERATOR_ONLY = ("provision(", "provision_table(", "create_topic(", "create_subscription(", "delete_topic(",
                 "delete_subscription(", "create_dataset(", "create_table(", ".query(", "view_query(",
                 "create_bucket(", "delete_table(", "peek_dead_letter_subscription(", "store.delete(")

# permission -> the narrowest predefined role that grants it on the resource.
PERMISSION_ROLE = {
    "pubsub.subscriptions.get": "roles/pubsub.viewer",
    "pubsub.topics.get": "roles/pubsub.viewer",
    "pubsub.subscriptions.consume": "roles/pubsub.subscriber",
    "pubsub.topics.publish": "roles/pubsub.publisher",
    "bigtable.tables.get": "roles/bigtable.reader",
    "bigtable.tables.readRows": "roles/bigtable.reader",
    "bigtable.tables.mutateRows": "roles/bigtable.user",
    "bigquery.datasets.get": "roles/bigquery.metadataViewer",
    "bigquery.tables.get": "roles/bigquery.metadataViewer",
    "bigquery.tables.updateData": "roles/bigquery.dataEditor",
    "storage.buckets.get": "roles/storage.legacyBucketReader",
    "storage.objects.create": "roles/storage.objectCreator",
    "storage.objects.delete": "roles/storage.objectUser",
    "storage.objects.list": "roles/storage.objectViewer",
    "storage.objects.get": "roles/storage.objectViewer",
    "secretmanager.versions.access": "roles/secretmanager.secretAccessor",
    "run.routes.invoke": "roles/run.invoker",
}
# role -> roles whose permissions (those above) it also grants.
ROLE_INCLUDES = {
    "roles/bigtable.user": {"roles/bigtable.reader"},
    "roles/bigquery.dataEditor": {"roles/bigquery.metadataViewer"},
    "roles/storage.objectUser": {"roles/storage.objectCreator", "roles/storage.objectViewer"},
}


def expected_resources(m: Module) -> dict[str, list[tuple[str, str]]]:
    """Terraform variable (configuration key) -> [(resource kind, resource name)] it names."""
    tables = list(rust_table_specs())
    return {
        "subscription": [("subscription", m.default("subscription"))],
        "topic": [("topic", m.default("topic"))],
        "dead_letter_topic": [("topic", m.default("dead_letter_topic"))],
        "bigtable_table": [("bigtable_table", m.default("bigtable_table"))],
        "checkpoint_table": [("bigtable_table", m.default("checkpoint_table"))],
        "bigquery_dataset": [("bigquery_dataset", m.default("bigquery_dataset"))],
        "bigquery_tables": [("bigquery_table", t) for t in tables],
        "archive_bucket": [("bucket", str(m.expr("local.archive_bucket")))],
        "api_token_secret": [("secret", m.default("api_token_secret"))],
        "ingest_service": [("cloud_run_service", "ingest")],
    }


def expected_grants(m: Module) -> tuple[set[tuple[str, str, str, str]], dict, list[str]]:
    """{(principal, role, kind, name)} the code needs, the rows of the role table, and problems with
    the evidence (a fact that no longer holds)."""
    problems = []
    resources = expected_resources(m)
    needed: dict[tuple[str, str, str], set[str]] = {}
    why: dict[tuple[str, str, str], list[str]] = {}
    for principal, uses in PRINCIPALS.items():
        for use in uses:
            api = APIS[use.api]
            for site in use.evidence + ((api.site,) if api.site else ()):
                if site.needle and not site.holds():
                    problems.append(f"{principal} / {use.api}: {site} no longer holds: re-read the code and update infra_checks.py")
            for kind, name in resources[use.var]:
                if kind != api.resource:
                    problems.append(f"{use.api} acts on a {api.resource}, but {use.var} names a {kind}")
                key = (principal, kind, name)
                needed.setdefault(key, set()).update(api.permissions)
                why.setdefault(key, []).append((api.method, api.permissions))
    grants = set()
    rows = {}
    for (principal, kind, name), perms in needed.items():
        roles = {PERMISSION_ROLE[perm] for perm in perms}
        roles -= {r for role in roles for r in ROLE_INCLUDES.get(role, ())}
        for role in roles:
            grants.add((principal, role, kind, name))
            grants_it = {role} | ROLE_INCLUDES.get(role, set())
            covered = sorted(p for p in perms if PERMISSION_ROLE[p] in grants_it)
            methods = sorted({meth for meth, ps in why[(principal, kind, name)] if any(PERMISSION_ROLE[p] in grants_it for p in ps)})
            rows[(principal, role, kind, name)] = (methods, covered)
    # The workers never reach what only operators run.
    for principal, places in WORKER_CODE.items():
        for path, fn in places:
            toks = rs.tokens_of(path) if fn is None else rs.fn_body(path, fn)
            for call in OPERATOR_ONLY:
                if rs.contains(toks, call):
                    problems.append(f"{path}{' ' + fn if fn else ''} ({principal}'s code) calls `{call}`: its permissions are not granted")
    return grants, rows, problems


# Terraform IAM member resources: type -> (attribute naming the resource, kind).
IAM_MEMBER_TYPES = {
    "google_pubsub_subscription_iam_member": ("subscription", "subscription"),
    "google_pubsub_topic_iam_member": ("topic", "topic"),
    "google_bigtable_table_iam_member": ("table", "bigtable_table"),
    "google_bigtable_instance_iam_member": ("instance", "bigtable_instance"),
    "google_bigquery_dataset_iam_member": ("dataset_id", "bigquery_dataset"),
    "google_bigquery_table_iam_member": ("table_id", "bigquery_table"),
    "google_storage_bucket_iam_member": ("bucket", "bucket"),
    "google_secret_manager_secret_iam_member": ("secret_id", "secret"),
    "google_cloud_run_v2_service_iam_member": ("name", "cloud_run_service"),
    "google_project_iam_member": ("project", "project"),
    "google_service_account_iam_member": ("service_account_id", "service_account"),
}


def principal_of(member: str) -> str:
    m = re.fullmatch(rf"serviceAccount:([a-z0-9-]+)@{re.escape(PROJECT)}\.iam\.gserviceaccount\.com", member)
    if m:
        return m.group(1)
    if re.fullmatch(r"serviceAccount:service-<data\.google_project\.this\.number>@gcp-sa-pubsub\.iam\.gserviceaccount\.com", member):
        return "pubsub-service-agent"
    return member


def actual_grants(m: Module) -> tuple[set[tuple[str, str, str, str]], list[str]]:
    """{(principal, role, kind, name)} the Terraform grants (Workload Identity aside)."""
    grants, problems = set(), []
    for (rtype, name), body in m.resources.items():
        if not rtype.endswith(("_iam_member", "_iam_binding", "_iam_policy")):
            continue
        if rtype not in IAM_MEMBER_TYPES:
            problems.append(f"{rtype}.{name}: only *_iam_member resources of known types are expected")
            continue
        attr, kind = IAM_MEMBER_TYPES[rtype]
        role = body.get("role")
        if role == "roles/iam.workloadIdentityUser":
            continue  # check_workload_identity
        principal = principal_of(str(m.resolve(body.get("member"))))
        grants.add((principal, role, kind, str(m.resolve(body.get(attr)))))
    return grants, problems


def check_roles(m: Module) -> list[str]:
    want, _, problems = expected_grants(m)
    got, p = actual_grants(m)
    problems += p
    for g in sorted(want - got):
        problems.append(f"missing grant: {g[0]} needs {g[1]} on {g[2]} {g[3]}")
    for g in sorted(got - want):
        problems.append(f"grant no API call needs: {g[0]} has {g[1]} on {g[2]} {g[3]}")
    return problems


def check_role_table_in_readme(m: Module) -> list[str]:
    """infra/README.md's role table lists exactly the expected grants."""
    want, _, _ = expected_grants(m)
    readme = m.dir / "README.md"
    if not readme.is_file():
        return [f"missing {readme}"]
    rows = set()
    for line in readme.read_text(encoding="utf-8").splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 5:
            continue
        principal = re.match(r"`([^`]+)`", cells[0])
        role = re.match(r"`(roles/[^`]+)`", cells[3])
        resource = re.fullmatch(r"([a-z_]+) `([^`]+)`", cells[4])
        if principal and role and resource and principal.group(1) in PRINCIPALS:
            rows.add((principal.group(1), role.group(1), resource.group(1), resource.group(2)))
    wanted = {(p, r, k, n.replace(PROJECT, "<project>")) for p, r, k, n in want}
    problems = []
    for g in sorted(wanted - rows):
        problems.append(f"infra/README.md role table lacks | {g[0]} | ... | {g[1]} | {g[2]} {g[3]} |")
    for g in sorted(rows - wanted):
        problems.append(f"infra/README.md role table has a row the code does not need: {g}")
    return problems


# ------------------------------------------------------------------------------------------------
# (5) No public members, nothing project-wide
# ------------------------------------------------------------------------------------------------


def check_security(m: Module) -> list[str]:
    problems = []
    for (rtype, name), body in m.resources.items():
        for s in strings(body):
            if "allUsers" in s or "allAuthenticatedUsers" in s:
                problems.append(f"{rtype}.{name} grants to {s!r}")
        if re.match(r"google_(project|folder|organization)_iam_", rtype):
            problems.append(f"{rtype}.{name}: no project-, folder- or organization-level IAM (grant on the resource)")
        if rtype.endswith(("_iam_binding", "_iam_policy")):
            problems.append(f"{rtype}.{name}: authoritative IAM would remove grants made elsewhere; use *_iam_member")
        if body.get("role") in ("roles/owner", "roles/editor") or any(
            r in ("roles/owner", "roles/editor") for r in body.get("members", []) if isinstance(r, str)
        ):
            problems.append(f"{rtype}.{name} grants {body.get('role')}")
    return problems


# ------------------------------------------------------------------------------------------------
# (6) Workload Identity, and the Kubernetes overlays' service accounts
# ------------------------------------------------------------------------------------------------

KSAS = ("invoices", "ingest")


def check_workload_identity(m: Module) -> list[str]:
    problems = []
    found = {}
    for name, body in m.of_type("google_service_account_iam_member").items():
        if body.get("role") != "roles/iam.workloadIdentityUser":
            continue
        target = m.ref_target(body.get("service_account_id"))
        account = m.resolve(m.resource(*target)["account_id"]) if target else None
        found[account] = body.get("member")
    for ksa in KSAS:
        want = f"serviceAccount:${{var.project_id}}.svc.id.goog[${{var.k8s_namespace}}/{ksa}]"
        if found.get(ksa) != want:
            problems.append(f"Workload Identity: {ksa}@ needs roles/iam.workloadIdentityUser for {want}, has {found.get(ksa)!r}")
    extra = set(found) - set(KSAS)
    if extra:
        problems.append(f"Workload Identity bindings for unexpected accounts: {sorted(extra)}")
    if m.default("k8s_namespace") != "fluxo":
        problems.append(f"variable k8s_namespace must default to the prod overlay's namespace fluxo, is {m.default('k8s_namespace')!r}")
    for ksa in KSAS:
        sa = m.resources.get(("google_service_account", ksa))
        if not sa or sa.get("account_id") != ksa:
            problems.append(f"google_service_account.{ksa} must have account_id {ksa!r}")
    return problems


OVERLAY_NAMESPACES = {"prod": None, "dev": "fluxo-dev"}  # prod: var.k8s_namespace's default


def overlays() -> list[Path]:
    return sorted(p.parent for p in (ROOT / "k8s" / "overlays").glob("*/kustomization.yaml"))


def check_overlays(m: Module) -> tuple[list[str], str | None]:
    """(problems, reason the check was skipped or None)."""
    found = overlays()
    if not found:
        return [], "no k8s/overlays/*/kustomization.yaml yet"
    kubectl = shutil.which("kubectl")
    if not kubectl:
        return [], "kubectl is not installed"
    import yaml

    problems = []
    names = {p.name for p in found}
    for required in OVERLAY_NAMESPACES:
        if required not in names:
            problems.append(f"k8s/overlays/{required} is missing")
    for overlay in found:
        r = subprocess.run([kubectl, "kustomize", str(overlay)], capture_output=True, text=True, timeout=120)
        if r.returncode != 0:
            problems.append(f"kubectl kustomize {overlay.relative_to(ROOT)} failed: {r.stderr.strip()}")
            continue
        docs = [d for d in yaml.safe_load_all(r.stdout) if d]
        sas = {d["metadata"]["name"]: d for d in docs if d.get("kind") == "ServiceAccount"}
        want_ns = OVERLAY_NAMESPACES.get(overlay.name, None)
        if overlay.name == "prod":
            want_ns = m.default("k8s_namespace")
        projects = set()
        for ksa in KSAS:
            sa = sas.get(ksa)
            if sa is None:
                problems.append(f"{overlay.name}: no ServiceAccount {ksa}")
                continue
            annotation = sa["metadata"].get("annotations", {}).get("iam.gke.io/gcp-service-account", "")
            mm = re.fullmatch(rf"{ksa}@([a-z][a-z0-9-]{{4,28}}[a-z0-9])\.iam\.gserviceaccount\.com", annotation)
            if not mm:
                problems.append(f"{overlay.name}: ServiceAccount {ksa} has iam.gke.io/gcp-service-account={annotation!r}, want {ksa}@<project>.iam.gserviceaccount.com")
            else:
                projects.add(mm.group(1))
            ns = sa["metadata"].get("namespace")
            if want_ns is not None and ns != want_ns:
                problems.append(f"{overlay.name}: ServiceAccount {ksa} is in namespace {ns!r}; the Workload Identity binding names {want_ns!r}")
        if len(projects) > 1:
            problems.append(f"{overlay.name}: the service accounts name different projects {sorted(projects)}")
        # Workers never provision: their service account holds no admin role.
        for d in docs:
            if d.get("kind") in ("Deployment", "CronJob", "Job"):
                text = yaml.safe_dump(d)
                if "--provision" in text or re.search(r"- provision\b", text):
                    problems.append(f"{overlay.name}: {d['kind']} {d['metadata']['name']} runs provisioning; its service account has no admin role")
    return problems, None


# ------------------------------------------------------------------------------------------------
# Cloud Run and Cloud Scheduler; the APIs
# ------------------------------------------------------------------------------------------------


def check_cloud_run(m: Module) -> list[str]:
    problems = []
    args = rs.clap_args(INGEST_MAIN)
    env_vars = {a["env"] for a in args.values() if "env" in a} | {args["token_env"]["default_value"]}
    svc = m.resource("google_cloud_run_v2_service", "ingest")
    if svc.get("count") != "${var.ingest_on_cloud_run ? 1 : 0}" or m.default("ingest_on_cloud_run") is not False:
        problems.append("the Cloud Run service must be optional: count = var.ingest_on_cloud_run ? 1 : 0, default false")
    tpl = m.block(svc, "template")
    if tpl.get("service_account") != "${google_service_account.ingest.email}":
        problems.append("the Cloud Run service must run as google_service_account.ingest")
    if m.block(tpl, "scaling").get("max_instance_count") != 1:
        problems.append("the Cloud Run service must have at most one instance (one run at a time)")
    if tpl.get("timeout") != "1800s":
        problems.append("the Cloud Run request timeout must be 1800s")
    deadline = int(args["deadline_secs"]["default_value_t"].replace("_", ""))
    if deadline >= 1800:
        problems.append(f"ingest's --deadline-secs default {deadline} does not leave time to drain within 1800 s")
    container = m.block(tpl, "containers")
    cargs = container.get("args", [])
    if not cargs or cargs[0] != "serve" or not rs.contains(rs.tokens_of(INGEST_MAIN), "Serve {"):
        problems.append(f"the container must run `ingest serve`, args {cargs!r}")
    for flag in [a for a in cargs[1:] if str(a).startswith("--")]:
        field = flag[2:].replace("-", "_")
        if field not in args or "long" not in args[field]:
            problems.append(f"ingest has no flag {flag}")
    env = {e["name"]: e for e in m.blocks(container, "env")}
    for name in env:
        if name not in env_vars:
            problems.append(f"the Cloud Run service sets {name}, which ingest does not read ({sorted(env_vars)})")
    for name in ("GOOGLE_CLOUD_PROJECT", "INGEST_API_URL", "BIGTABLE_INSTANCE", "INGEST_TOPIC", "INGEST_DEAD_LETTER_TOPIC", "INVOICE_API_TOKEN"):
        if name not in env:
            problems.append(f"the Cloud Run service must set {name}")
    wanted_values = {
        "GOOGLE_CLOUD_PROJECT": "${var.project_id}",
        "INGEST_API_URL": "${var.invoice_api_url}",
        "BIGTABLE_INSTANCE": "${google_bigtable_instance.nfe.name}",
        "INGEST_TOPIC": "${google_pubsub_topic.invoices.name}",
        "INGEST_DEAD_LETTER_TOPIC": "${google_pubsub_topic.dead_letter.name}",
    }
    for name, value in wanted_values.items():
        if name in env and env[name].get("value") != value:
            problems.append(f"{name} must be {value}, is {env[name].get('value')!r}")
    token = m.block(m.block(env.get("INVOICE_API_TOKEN", {}), "value_source"), "secret_key_ref")
    if token.get("secret") != "${google_secret_manager_secret.api_token.secret_id}" or "value" in env.get("INVOICE_API_TOKEN", {}):
        problems.append("INVOICE_API_TOKEN must come from google_secret_manager_secret.api_token (value_source.secret_key_ref)")
    job = m.resource("google_cloud_scheduler_job", "ingest")
    target = m.block(job, "http_target")
    oidc = m.block(target, "oidc_token")
    route = rs.contains(rs.fn_body(INGEST_MAIN, "serve"), '.route("/run", post(trigger))')
    if target.get("uri") != "${google_cloud_run_v2_service.ingest[0].uri}/run" or target.get("http_method") != "POST" or not route:
        problems.append(f"Cloud Scheduler must POST <service uri>/run (ingest serves POST /run: {route}), has {target.get('http_method')} {target.get('uri')}")
    if oidc.get("audience") != "${google_cloud_run_v2_service.ingest[0].uri}" or oidc.get("service_account_email") != "${google_service_account.ingest_scheduler[0].email}":
        problems.append(f"Cloud Scheduler's oidc_token must be ingest-scheduler's with the service URI as audience, is {oidc!r}")
    if job.get("attempt_deadline") != "1800s" or not m.block(job, "retry_config"):
        problems.append("Cloud Scheduler needs attempt_deadline = 1800s and a retry_config")
    if m.default("ingest_schedule") != "*/5 * * * *":
        problems.append("ingest runs every 5 minutes by default")
    return problems


REQUIRED_APIS = {
    "pubsub.googleapis.com", "bigtableadmin.googleapis.com", "bigtable.googleapis.com", "bigquery.googleapis.com",
    "bigquerystorage.googleapis.com", "storage.googleapis.com", "run.googleapis.com", "cloudscheduler.googleapis.com",
    "artifactregistry.googleapis.com", "secretmanager.googleapis.com", "iam.googleapis.com",
}


def check_apis(m: Module) -> list[str]:
    problems = []
    apis = set(re.findall(r'"([a-z0-9.-]+\.googleapis\.com)"', str(m.locals.get("apis", ""))))
    if REQUIRED_APIS - apis:
        problems.append(f"APIs not enabled: {sorted(REQUIRED_APIS - apis)}")
    svc = m.resource("google_project_service", "apis")
    if svc.get("disable_on_destroy") is not False:
        problems.append("google_project_service.apis must have disable_on_destroy = false")
    return problems
