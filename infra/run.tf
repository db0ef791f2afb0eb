# Optional: ingest on Cloud Run behind Cloud Scheduler (ingest_on_cloud_run = true), instead of the GKE
# CronJob (k8s/). `ingest serve` runs once per POST /run and answers with the run's report; it listens
# on Cloud Run's PORT. Every 5 minutes Cloud Scheduler calls it with an OIDC token of ingest-scheduler,
# the only principal allowed to invoke it. One instance at most: one run at a time (the checkpoint's
# lease in Bigtable also guarantees it across the CronJob and Cloud Run).
#
# Before enabling it: push the image (scripts/image.sh --push) and add the token's first version to
# Secret Manager (secrets.tf), which the revision needs to start.

locals {
  ingest_image = coalesce(
    var.ingest_image,
    var.image_tag == null ? null : "${var.region}-docker.pkg.dev/${var.project_id}/${var.artifact_repository}/ingest:${var.image_tag}",
    "unset",
  )
}

resource "google_service_account" "ingest_scheduler" {
  count = var.ingest_on_cloud_run ? 1 : 0

  account_id   = "ingest-scheduler"
  display_name = "Cloud Scheduler caller of ingest on Cloud Run"
  description  = "Identity of the OIDC token Cloud Scheduler sends to POST /run; may only invoke that service."

  depends_on = [google_project_service.apis]
}

resource "google_cloud_run_v2_service" "ingest" {
  count = var.ingest_on_cloud_run ? 1 : 0

  name                = "ingest"
  location            = var.region
  description         = "ingest serve: invoice API -> Pub/Sub, one run per POST /run (docs/ingest.md)."
  ingress             = var.ingest_ingress
  deletion_protection = var.deletion_protection

  template {
    service_account = google_service_account.ingest.email
    # A run stops requesting pages after --deadline-secs (1,500 s) and then drains: within this.
    timeout = "1800s"
    # A second request while a run is in progress gets ingest's own 409 at once.
    max_instance_request_concurrency = 2

    scaling {
      min_instance_count = 0
      max_instance_count = 1
    }

    containers {
      image = local.ingest_image
      args  = ["serve", "--checkpoint-table", google_bigtable_table.checkpoints.name]

      ports {
        container_port = 8080
      }

      env {
        name  = "GOOGLE_CLOUD_PROJECT"
        value = var.project_id
      }
      env {
        name  = "INGEST_API_URL"
        value = var.invoice_api_url
      }
      env {
        name  = "BIGTABLE_INSTANCE"
        value = google_bigtable_instance.nfe.name
      }
      env {
        name  = "INGEST_TOPIC"
        value = google_pubsub_topic.invoices.name
      }
      env {
        name  = "INGEST_DEAD_LETTER_TOPIC"
        value = google_pubsub_topic.dead_letter.name
      }
      env {
        name  = "LOG_JSON"
        value = "true"
      }
      env {
        name = "INVOICE_API_TOKEN"
        value_source {
          secret_key_ref {
            secret  = google_secret_manager_secret.api_token.secret_id
            version = "latest"
          }
        }
      }

      resources {
        limits = {
          cpu    = "1"
          memory = "512Mi"
        }
      }

      startup_probe {
        http_get {
          path = "/healthz"
        }
      }
    }
  }

  lifecycle {
    precondition {
      condition     = local.ingest_image != "unset"
      error_message = "ingest_on_cloud_run needs ingest_image or image_tag."
    }
    precondition {
      condition     = var.invoice_api_url != null
      error_message = "ingest_on_cloud_run needs invoice_api_url."
    }
  }

  depends_on = [google_secret_manager_secret_iam_member.ingest_token_accessor]
}

# Only ingest-scheduler may invoke the service (no allUsers, no allAuthenticatedUsers).
resource "google_cloud_run_v2_service_iam_member" "scheduler_invoker" {
  count = var.ingest_on_cloud_run ? 1 : 0

  location = google_cloud_run_v2_service.ingest[0].location
  name     = google_cloud_run_v2_service.ingest[0].name
  role     = "roles/run.invoker"
  member   = "serviceAccount:${google_service_account.ingest_scheduler[0].email}"
}

resource "google_cloud_scheduler_job" "ingest" {
  count = var.ingest_on_cloud_run ? 1 : 0

  name             = "ingest"
  region           = var.region
  description      = "POST /run on the ingest Cloud Run service."
  schedule         = var.ingest_schedule
  time_zone        = "Etc/UTC"
  attempt_deadline = "1800s"

  # A failed run is tried once more; the next schedule comes 5 minutes later anyway.
  retry_config {
    retry_count          = 1
    min_backoff_duration = "30s"
    max_backoff_duration = "300s"
    max_doublings        = 2
  }

  http_target {
    http_method = "POST"
    uri         = "${google_cloud_run_v2_service.ingest[0].uri}/run"

    oidc_token {
      service_account_email = google_service_account.ingest_scheduler[0].email
      audience              = google_cloud_run_v2_service.ingest[0].uri
    }
  }

  depends_on = [google_cloud_run_v2_service_iam_member.scheduler_invoker]
}
