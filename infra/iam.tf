# Service accounts and their roles: each role on the one resource the calls need, never on the project.
# infra/README.md has the table "binary -> API call -> permission -> role -> resource";
# tests/deploy/test_infra.py derives the same from the Rust sources and fails when they differ.

resource "google_service_account" "invoices" {
  account_id   = "invoices"
  display_name = "invoices pipeline workers (GKE)"
  description  = "Pulls invoices-pipeline; writes Bigtable, BigQuery, the archive bucket and dead letters."

  depends_on = [google_project_service.apis]
}

resource "google_service_account" "ingest" {
  account_id   = "ingest"
  display_name = "ingest (GKE CronJob or Cloud Run)"
  description  = "Polls the invoice API and publishes to Pub/Sub; keeps its checkpoint in Bigtable."

  depends_on = [google_project_service.apis]
}

locals {
  invoices_member = "serviceAccount:${google_service_account.invoices.email}"
  ingest_member   = "serviceAccount:${google_service_account.ingest.email}"

  # Pub/Sub's service agent forwards messages to the dead-letter topic for the subscription.
  pubsub_service_agent = "serviceAccount:service-${data.google_project.this.number}@gcp-sa-pubsub.iam.gserviceaccount.com"
}

# --- Pub/Sub service agent: the dead-letter policy of invoices-pipeline ---

resource "google_pubsub_topic_iam_member" "dead_letter_forwarding" {
  topic  = google_pubsub_topic.dead_letter.name
  role   = "roles/pubsub.publisher"
  member = local.pubsub_service_agent
}

resource "google_pubsub_subscription_iam_member" "dead_letter_forwarding" {
  subscription = google_pubsub_subscription.pipeline.name
  role         = "roles/pubsub.subscriber"
  member       = local.pubsub_service_agent
}

# --- invoices (`invoices run`, `invoices replay`) ---

# Pull, Acknowledge, ModifyAckDeadline.
resource "google_pubsub_subscription_iam_member" "invoices_subscriber" {
  subscription = google_pubsub_subscription.pipeline.name
  role         = "roles/pubsub.subscriber"
  member       = local.invoices_member
}

# GetSubscription: the source's startup check (and its ack deadline).
resource "google_pubsub_subscription_iam_member" "invoices_subscription_viewer" {
  subscription = google_pubsub_subscription.pipeline.name
  role         = "roles/pubsub.viewer"
  member       = local.invoices_member
}

# Publish: dead letters.
resource "google_pubsub_topic_iam_member" "invoices_dead_letter_publisher" {
  topic  = google_pubsub_topic.dead_letter.name
  role   = "roles/pubsub.publisher"
  member = local.invoices_member
}

# GetTopic: the dead-letter sink's startup check.
resource "google_pubsub_topic_iam_member" "invoices_dead_letter_viewer" {
  topic  = google_pubsub_topic.dead_letter.name
  role   = "roles/pubsub.viewer"
  member = local.invoices_member
}

# MutateRows; GetTable (schema view) at start to check the families. Table-level: bigtable.user
# covers bigtable.tables.get on the table itself.
resource "google_bigtable_table_iam_member" "invoices_table_user" {
  instance = google_bigtable_instance.nfe.name
  table    = google_bigtable_table.invoices.name
  role     = "roles/bigtable.user"
  member   = local.invoices_member
}

# datasets.get: the sink's startup check that the dataset exists.
resource "google_bigquery_dataset_iam_member" "invoices_dataset_metadata" {
  dataset_id = google_bigquery_dataset.nfe.dataset_id
  role       = "roles/bigquery.metadataViewer"
  member     = local.invoices_member
}

# tables.get (schema) and tables.updateData (Storage Write API: CreateWriteStream, AppendRows), on
# the two tables only: the worker cannot change the views or create tables.
resource "google_bigquery_table_iam_member" "invoices_table_editor" {
  dataset_id = google_bigquery_dataset.nfe.dataset_id
  table_id   = google_bigquery_table.invoices.table_id
  role       = "roles/bigquery.dataEditor"
  member     = local.invoices_member
}

resource "google_bigquery_table_iam_member" "invoice_items_table_editor" {
  dataset_id = google_bigquery_dataset.nfe.dataset_id
  table_id   = google_bigquery_table.invoice_items.table_id
  role       = "roles/bigquery.dataEditor"
  member     = local.invoices_member
}

# objects.create and objects.delete (a retried write replaces its object), objects.list and
# objects.get (replay).
resource "google_storage_bucket_iam_member" "invoices_objects" {
  bucket = google_storage_bucket.archive.name
  role   = "roles/storage.objectUser"
  member = local.invoices_member
}

# buckets.get: the sinks' and the replay source's startup check.
resource "google_storage_bucket_iam_member" "invoices_bucket_reader" {
  bucket = google_storage_bucket.archive.name
  role   = "roles/storage.legacyBucketReader"
  member = local.invoices_member
}

# --- ingest (`ingest run` on GKE, `ingest serve` on Cloud Run) ---

resource "google_pubsub_topic_iam_member" "ingest_invoices_publisher" {
  topic  = google_pubsub_topic.invoices.name
  role   = "roles/pubsub.publisher"
  member = local.ingest_member
}

resource "google_pubsub_topic_iam_member" "ingest_invoices_viewer" {
  topic  = google_pubsub_topic.invoices.name
  role   = "roles/pubsub.viewer"
  member = local.ingest_member
}

resource "google_pubsub_topic_iam_member" "ingest_dead_letter_publisher" {
  topic  = google_pubsub_topic.dead_letter.name
  role   = "roles/pubsub.publisher"
  member = local.ingest_member
}

resource "google_pubsub_topic_iam_member" "ingest_dead_letter_viewer" {
  topic  = google_pubsub_topic.dead_letter.name
  role   = "roles/pubsub.viewer"
  member = local.ingest_member
}

# ReadRows and CheckAndMutateRow on the checkpoint row.
resource "google_bigtable_table_iam_member" "ingest_checkpoints_user" {
  instance = google_bigtable_instance.nfe.name
  table    = google_bigtable_table.checkpoints.name
  role     = "roles/bigtable.user"
  member   = local.ingest_member
}

# The API token (INVOICE_API_TOKEN): read by External Secrets on GKE and by Cloud Run, both as ingest.
resource "google_secret_manager_secret_iam_member" "ingest_token_accessor" {
  secret_id = google_secret_manager_secret.api_token.secret_id
  role      = "roles/secretmanager.secretAccessor"
  member    = local.ingest_member
}

# --- Workload Identity: Kubernetes service accounts invoices and ingest act as these accounts ---
# The pool <project>.svc.id.goog exists once a GKE cluster with Workload Identity exists.

resource "google_service_account_iam_member" "invoices_workload_identity" {
  service_account_id = google_service_account.invoices.name
  role               = "roles/iam.workloadIdentityUser"
  member             = "serviceAccount:${var.project_id}.svc.id.goog[${var.k8s_namespace}/invoices]"
}

resource "google_service_account_iam_member" "ingest_workload_identity" {
  service_account_id = google_service_account.ingest.name
  role               = "roles/iam.workloadIdentityUser"
  member             = "serviceAccount:${var.project_id}.svc.id.goog[${var.k8s_namespace}/ingest]"
}
