# BigQuery: the dataset in the region (Brazilian data stays in Brazil), the raw tables `invoices` and
# `invoice_items` with the schema files the pipeline embeds, and the two views that are the query
# surface (docs/bigquery.md). Partitioning and clustering are those of nfe::bigquery::INVOICES and
# INVOICE_ITEMS; the views' SQL (infra/sql/) is nfe::bigquery::INVOICES_CURRENT and
# INVOICE_ITEMS_CURRENT with ${project} / ${dataset} placeholders. `invoices provision` leaves views
# whose query already matches untouched.

locals {
  bigquery_schemas = "${path.module}/../crates/nfe/schemas/bigquery"
  view_vars = {
    project = var.project_id
    dataset = var.bigquery_dataset
  }
}

resource "google_bigquery_dataset" "nfe" {
  #checkov:skip=CKV_GCP_81:Google-managed encryption keys by choice: a customer-managed Cloud KMS key would add a key ring in the region, its rotation and grants to every service agent, and no requirement of this project asks for it
  dataset_id  = var.bigquery_dataset
  location    = var.region
  description = "NF-e invoices: raw tables (every delivered copy) and the *_current views (one row per invoice and line)."

  # No default table expiration: invoices are kept.
  delete_contents_on_destroy = false

  depends_on = [google_project_service.apis]
}

resource "google_bigquery_table" "invoices" {
  #checkov:skip=CKV_GCP_80:Google-managed encryption keys by choice: a customer-managed Cloud KMS key would add a key ring in the region, its rotation and grants to every service agent, and no requirement of this project asks for it
  dataset_id          = google_bigquery_dataset.nfe.dataset_id
  table_id            = "invoices"
  description         = "One row per delivered copy of an invoice version. Query invoices_current instead."
  schema              = file("${local.bigquery_schemas}/invoices.json")
  deletion_protection = var.deletion_protection

  time_partitioning {
    type  = "DAY"
    field = "emission_date"
  }
  clustering = ["nfe_id"]

  # Left off: it would refuse every query on the views, whose window reads all partitions.
  require_partition_filter = false
}

resource "google_bigquery_table" "invoice_items" {
  #checkov:skip=CKV_GCP_80:Google-managed encryption keys by choice: a customer-managed Cloud KMS key would add a key ring in the region, its rotation and grants to every service agent, and no requirement of this project asks for it
  dataset_id          = google_bigquery_dataset.nfe.dataset_id
  table_id            = "invoice_items"
  description         = "One row per delivered copy of an invoice line. Query invoice_items_current instead."
  schema              = file("${local.bigquery_schemas}/invoice_items.json")
  deletion_protection = var.deletion_protection

  time_partitioning {
    type  = "DAY"
    field = "emission_date"
  }
  clustering = ["product_key", "nfe_id"]

  require_partition_filter = false
}

resource "google_bigquery_table" "invoices_current" {
  #checkov:skip=CKV_GCP_80:a view stores no data: its query reads the encrypted tables
  dataset_id          = google_bigquery_dataset.nfe.dataset_id
  table_id            = "invoices_current"
  description         = "One row per invoice (nfe_id): its current version, duplicates removed. See docs/bigquery.md."
  deletion_protection = var.deletion_protection

  view {
    query          = trimspace(templatefile("${path.module}/sql/invoices_current.sql", local.view_vars))
    use_legacy_sql = false
  }

  depends_on = [google_bigquery_table.invoices]
}

resource "google_bigquery_table" "invoice_items_current" {
  #checkov:skip=CKV_GCP_80:a view stores no data: its query reads the encrypted tables
  dataset_id          = google_bigquery_dataset.nfe.dataset_id
  table_id            = "invoice_items_current"
  description         = "One row per line (nfe_id, line_number) of each invoice's current version, duplicates removed. See docs/bigquery.md."
  deletion_protection = var.deletion_protection

  view {
    query          = trimspace(templatefile("${path.module}/sql/invoice_items_current.sql", local.view_vars))
    use_legacy_sql = false
  }

  # It reads invoices_current.
  depends_on = [google_bigquery_table.invoice_items, google_bigquery_table.invoices_current]
}
