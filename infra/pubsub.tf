# Pub/Sub: the invoices topic ingest publishes to, the subscription the workers share, and the
# dead-letter topic with its own subscription. `invoices provision` (emulators only) creates the same
# names with the same ack deadline and dead-letter policy; retention, retry and expiry are set here.

resource "google_pubsub_topic" "invoices" {
  #checkov:skip=CKV_GCP_83:Google-managed encryption keys by choice: a customer-managed Cloud KMS key would add a key ring in the region, its rotation and grants to every service agent, and no requirement of this project asks for it
  name                       = var.topic
  message_retention_duration = var.topic_message_retention

  depends_on = [google_project_service.apis]
}

resource "google_pubsub_topic" "dead_letter" {
  #checkov:skip=CKV_GCP_83:Google-managed encryption keys by choice: a customer-managed Cloud KMS key would add a key ring in the region, its rotation and grants to every service agent, and no requirement of this project asks for it
  name = var.dead_letter_topic

  depends_on = [google_project_service.apis]
}

resource "google_pubsub_subscription" "pipeline" {
  name  = var.subscription
  topic = google_pubsub_topic.invoices.id

  # The workers extend the lease of every message in flight; this is the lease after a crash.
  ack_deadline_seconds       = var.ack_deadline_seconds
  message_retention_duration = var.subscription_message_retention
  retain_acked_messages      = false

  dead_letter_policy {
    dead_letter_topic     = google_pubsub_topic.dead_letter.id
    max_delivery_attempts = var.max_delivery_attempts
  }

  # A nacked message (a sink that failed) comes back after a growing backoff, not at once.
  retry_policy {
    minimum_backoff = var.retry_minimum_backoff
    maximum_backoff = var.retry_maximum_backoff
  }

  # Never deleted for inactivity (the default would delete it after 31 idle days).
  expiration_policy {
    ttl = ""
  }

  # Forwarding to the dead-letter topic needs the service agent's roles (iam.tf).
  depends_on = [
    google_pubsub_topic_iam_member.dead_letter_forwarding,
  ]
}

resource "google_pubsub_subscription" "dead_letter" {
  name  = var.dead_letter_subscription
  topic = google_pubsub_topic.dead_letter.id

  ack_deadline_seconds       = 60
  message_retention_duration = "604800s"
  retain_acked_messages      = false

  expiration_policy {
    ttl = ""
  }
}
