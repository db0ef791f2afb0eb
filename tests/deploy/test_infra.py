"""The Terraform of infra/ against the code and the configuration, without Google Cloud or providers.

Run with scripts/check-infra.sh (which also runs `terraform fmt -check` and checkov), or directly:

    .venv/deploy/bin/python -m pytest tests/deploy/test_infra.py -v

INFRA_DIR=<dir> runs the checks on another copy of the module (the negative tests below do that on
mutated copies, to show that each check catches what it is meant to).

What is compared (the "expected" side always comes from the repository, never from the Terraform):
1. resource names and Pub/Sub settings <- config/invoices.toml's [profiles.gcp] and the code's defaults;
2. Bigtable families and GC rules, BigQuery partitioning and clustering <- what `invoices provision` and
   `ingest --provision` create (crates/nfe, pipelines/*);
3. infra/sql/*.sql <- nfe::bigquery::INVOICES_CURRENT / INVOICE_ITEMS_CURRENT;
4. every service account's roles <- the API calls its binary makes (infra_checks.APIS, each call site
   checked in the sources) through the permission each needs to the narrowest role granting it;
5. no allUsers / allAuthenticatedUsers, nothing granted project-wide;
6. Workload Identity members, and the Kubernetes overlays' service accounts (when k8s/overlays exist).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

import infra_checks as checks
from infra_hcl import Module

ROOT = checks.ROOT
INFRA = Path(os.environ.get("INFRA_DIR", ROOT / "infra")).resolve()


@pytest.fixture(scope="module")
def module() -> Module:
    return Module(INFRA)


def _ok(problems: list[str]) -> None:
    assert not problems, "\n".join(problems)


def test_the_module_parses(module):
    expected = {
        "versions.tf", "variables.tf", "apis.tf", "pubsub.tf", "bigtable.tf", "bigquery.tf", "storage.tf",
        "iam.tf", "run.tf", "artifact_registry.tf", "secrets.tf", "outputs.tf",
    }
    assert expected <= set(module.files), f"missing: {sorted(expected - set(module.files))}"
    assert module.resources, "no resources parsed"
    assert "project_id" in module.variables and "default" not in module.variables["project_id"], "project_id must be required"


# (1)
def test_names_and_pubsub_settings_match_the_gcp_profile(module):
    _ok(checks.check_names(module))


# (2)
def test_bigtable_families_and_gc_rules_match_what_the_code_provisions(module):
    _ok(checks.check_bigtable(module))


def test_bigquery_tables_match_what_the_code_creates(module):
    _ok(checks.check_bigquery(module))


# (3)
def test_the_views_sql_equals_the_rust_constants(module):
    _ok(checks.check_views(module))


def test_the_archive_lifecycle_covers_every_prefix_the_pipeline_writes(module):
    _ok(checks.check_storage(module))


# (4)
def test_every_api_call_site_in_the_code_is_classified():
    """A new Google Cloud call anywhere in the connectors or pipelines must be added to
    infra_checks.APIS (with its permission) before the role check can be trusted."""
    known = {(a.site.path, a.site.fn) for a in checks.APIS.values() if a.site} | set(checks.RAW_HELPERS)
    found = checks.raw_sites()
    unclassified = sorted(found - known)
    stale = sorted(set(checks.RAW_HELPERS) - found)
    assert not unclassified, f"API calls not in infra_checks.APIS: {unclassified}"
    assert not stale, f"infra_checks.RAW_HELPERS names functions without a raw call: {stale}"
    for key, api in checks.APIS.items():
        if api.site:
            assert api.site.holds(), f"{key}: {api.site} no longer holds"


def test_each_service_account_has_exactly_the_roles_its_api_calls_need(module):
    _ok(checks.check_roles(module))


def test_the_readme_role_table_lists_exactly_those_grants(module):
    _ok(checks.check_role_table_in_readme(module))


# (5)
def test_nothing_is_public_or_project_wide(module):
    _ok(checks.check_security(module))


# (6)
def test_workload_identity_binds_the_kubernetes_service_accounts(module):
    _ok(checks.check_workload_identity(module))


def test_the_kubernetes_overlays_name_these_service_accounts(module):
    problems, skipped = checks.check_overlays(module)
    if skipped:
        pytest.skip(f"Kubernetes overlays not checked: {skipped}")
    _ok(problems)


def test_cloud_run_and_scheduler_run_ingest_serve(module):
    _ok(checks.check_cloud_run(module))


def test_the_apis_are_enabled(module):
    _ok(checks.check_apis(module))


# --- negative tests: each check catches a broken copy of infra/ --------------------------------


def _replace(path: str, old: str, new: str):
    def mutate(d: Path):
        f = d / path
        text = f.read_text(encoding="utf-8")
        assert old in text, f"mutation target not found in {path}: {old!r}"
        f.write_text(text.replace(old, new, 1), encoding="utf-8")

    return mutate


def _remove_block(path: str, header: str):
    def mutate(d: Path):
        f = d / path
        text = f.read_text(encoding="utf-8")
        start = text.index(header)
        end = text.index("\n}\n", start) + 3
        f.write_text(text[:start] + text[end:], encoding="utf-8")

    return mutate


def _append(path: str, extra: str):
    def mutate(d: Path):
        with open(d / path, "a", encoding="utf-8") as f:
            f.write("\n" + extra)

    return mutate


MUTATIONS = {
    "a role removed": (
        _remove_block("iam.tf", 'resource "google_pubsub_subscription_iam_member" "invoices_subscriber"'),
        checks.check_roles,
        "missing grant: invoices needs roles/pubsub.subscriber on subscription invoices-pipeline",
    ),
    "a role no call needs": (
        _append(
            "iam.tf",
            'resource "google_pubsub_subscription_iam_member" "ingest_pulls" {\n'
            "  subscription = google_pubsub_subscription.pipeline.name\n"
            '  role         = "roles/pubsub.subscriber"\n'
            "  member       = local.ingest_member\n}\n",
        ),
        checks.check_roles,
        "grant no API call needs: ingest has roles/pubsub.subscriber on subscription invoices-pipeline",
    ),
    "a broader role": (
        _replace("iam.tf", 'role       = "roles/bigquery.dataEditor"', 'role       = "roles/bigquery.admin"'),
        checks.check_roles,
        "grant no API call needs: invoices has roles/bigquery.admin on bigquery_table invoices",
    ),
    "a grant on the whole bucket to the wrong account": (
        _replace("iam.tf", 'role   = "roles/storage.objectUser"\n  member = local.invoices_member', 'role   = "roles/storage.objectUser"\n  member = local.ingest_member'),
        checks.check_roles,
        "missing grant: invoices needs roles/storage.objectUser on bucket <var.project_id>-nfe-archive",
    ),
    "owner on the project": (
        _append(
            "iam.tf",
            'resource "google_project_iam_member" "too_much" {\n  project = var.project_id\n'
            '  role    = "roles/owner"\n  member  = local.invoices_member\n}\n',
        ),
        checks.check_security,
        "no project-, folder- or organization-level IAM",
    ),
    "a public invoker": (
        _append(
            "run.tf",
            'resource "google_cloud_run_v2_service_iam_member" "public" {\n  count    = var.ingest_on_cloud_run ? 1 : 0\n'
            "  location = google_cloud_run_v2_service.ingest[0].location\n  name     = google_cloud_run_v2_service.ingest[0].name\n"
            '  role     = "roles/run.invoker"\n  member   = "allUsers"\n}\n',
        ),
        checks.check_security,
        "grants to 'allUsers'",
    ),
    "a Bigtable GC rule": (
        _replace("bigtable.tf", "invoices_families   = { h = 1, l = 1, x = 1 }", "invoices_families   = { h = 1, l = 2, x = 1 }"),
        checks.check_bigtable,
        "Bigtable table invoices: Terraform families/GC rules",
    ),
    "a Bigtable family missing": (
        _replace("bigtable.tf", "checkpoint_families = { c = 1 }", "checkpoint_families = { d = 1 }"),
        checks.check_bigtable,
        "Bigtable table checkpoints",
    ),
    "BigQuery clustering": (
        _replace("bigquery.tf", 'clustering = ["product_key", "nfe_id"]', 'clustering = ["nfe_id", "product_key"]'),
        checks.check_bigquery,
        "BigQuery table invoice_items: Terraform partitioning/clustering",
    ),
    "the views' SQL": (
        _replace("sql/invoices_current.sql", "DESC, content_hash DESC", "DESC"),
        checks.check_views,
        "differs from the Rust view query",
    ),
    "a view without its dependency": (
        _replace("bigquery.tf", "depends_on = [google_bigquery_table.invoice_items, google_bigquery_table.invoices_current]", "depends_on = [google_bigquery_table.invoice_items]"),
        checks.check_views,
        "must depend_on google_bigquery_table.invoices_current",
    ),
    "a resource name": (
        _replace("variables.tf", 'default     = "invoices-pipeline"', 'default     = "invoices-sub"'),
        checks.check_names,
        "variable subscription defaults to 'invoices-sub'",
    ),
    "the ack deadline": (
        _replace("variables.tf", "default     = 60\n", "default     = 30\n"),
        checks.check_names,
        "pipeline subscription ack deadline",
    ),
    "the raw retention": (
        _replace("variables.tf", "default     = 2192\n\n  validation {\n    condition     = var.raw_retention_days", "default     = 365\n\n  validation {\n    condition     = var.raw_retention_days"),
        checks.check_storage,
        "keep it at least 1827 days",
    ),
    "a lifecycle prefix": (
        _replace("storage.tf", '"dead-letter/" = {', '"deadletter/" = {'),
        checks.check_storage,
        "objects under dead-letter/",
    ),
    "the Workload Identity namespace": (
        _replace("iam.tf", "[${var.k8s_namespace}/ingest]", "[fluxo-dev/ingest]"),
        checks.check_workload_identity,
        "Workload Identity: ingest@",
    ),
    "an environment variable ingest does not read": (
        _replace("run.tf", 'name  = "INGEST_TOPIC"', 'name  = "INGEST_TOPICS"'),
        checks.check_cloud_run,
        "sets INGEST_TOPICS, which ingest does not read",
    ),
}


@pytest.fixture
def copy_of_infra(tmp_path) -> Path:
    """infra/ copied next to a link to crates/, so relative schema paths still resolve."""
    shutil.copytree(ROOT / "infra", tmp_path / "infra", ignore=shutil.ignore_patterns(".terraform*", "*.tfstate*"))
    (tmp_path / "crates").symlink_to(ROOT / "crates", target_is_directory=True)
    return tmp_path / "infra"


@pytest.mark.parametrize("name", sorted(MUTATIONS))
def test_the_checks_catch_a_broken_copy(name, copy_of_infra):
    mutate, check, expected = MUTATIONS[name]
    assert check(Module(copy_of_infra)) == [], f"{check.__name__} fails on an unchanged copy"
    mutate(copy_of_infra)
    problems = check(Module(copy_of_infra))
    assert any(expected in p for p in problems), f"{check.__name__} did not report {expected!r} after {name}; it said {problems}"
