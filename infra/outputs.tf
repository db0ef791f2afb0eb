output "invoices_service_account" {
  description = "Google service account of the invoices workers (the invoices KSA's iam.gke.io/gcp-service-account)."
  value       = google_service_account.invoices.email
}

output "ingest_service_account" {
  description = "Google service account of ingest (the ingest KSA's iam.gke.io/gcp-service-account, and the Cloud Run service's)."
  value       = google_service_account.ingest.email
}

output "ingest_scheduler_service_account" {
  description = "Service account of Cloud Scheduler's OIDC token (null without ingest_on_cloud_run)."
  value       = one(google_service_account.ingest_scheduler[*].email)
}

output "archive_bucket" {
  description = "Bucket of the archives: the profile's archive_url is gs://<this>."
  value       = google_storage_bucket.archive.name
}

output "archive_url" {
  description = "The profile's archive_url (INVOICES_ARCHIVE_URL)."
  value       = "gs://${google_storage_bucket.archive.name}${var.archive_prefix == "" ? "" : "/${trimsuffix(var.archive_prefix, "/")}"}"
}

output "subscription" {
  description = "Subscription the invoices workers pull."
  value       = google_pubsub_subscription.pipeline.name
}

output "dead_letter_subscription" {
  description = "Subscription on the dead-letter topic."
  value       = google_pubsub_subscription.dead_letter.name
}

output "artifact_registry_url" {
  description = "Image repository: scripts/image.sh --repo <this>."
  value       = "${google_artifact_registry_repository.fluxo.location}-docker.pkg.dev/${var.project_id}/${google_artifact_registry_repository.fluxo.repository_id}"
}

output "ingest_cloud_run_uri" {
  description = "URI of the ingest Cloud Run service (null without ingest_on_cloud_run)."
  value       = one(google_cloud_run_v2_service.ingest[*].uri)
}

output "api_token_secret" {
  description = "Secret Manager secret of the invoice API token (add its value with gcloud secrets versions add)."
  value       = google_secret_manager_secret.api_token.secret_id
}
