# Inputs. Only project_id is required; the resource names default to those of the `gcp` profile of
# config/invoices.toml (tests/deploy/test_infra.py fails when the two disagree).

variable "project_id" {
  description = "Google Cloud project that holds every resource."
  type        = string

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{4,28}[a-z0-9]$", var.project_id))
    error_message = "project_id must be a project ID (6-30 characters: lowercase letters, digits, hyphens)."
  }
}

variable "region" {
  description = "Region of every regional resource. Brazilian fiscal data stays in Brazil: southamerica-east1 (Sao Paulo)."
  type        = string
  default     = "southamerica-east1"
}

# --- Pub/Sub (names: config/invoices.toml [profiles.gcp]) ---

variable "topic" {
  description = "Topic ingest publishes the invoices to."
  type        = string
  default     = "invoices"
}

variable "subscription" {
  description = "Subscription the invoices workers share."
  type        = string
  default     = "invoices-pipeline"
}

variable "dead_letter_topic" {
  description = "Topic of the dead letters (ingest's and the pipeline's) and of the messages Pub/Sub gave up on."
  type        = string
  default     = "invoices-dead-letter"
}

variable "dead_letter_subscription" {
  description = "Subscription on the dead-letter topic, so nothing published there is dropped."
  type        = string
  default     = "invoices-dead-letter-sub"
}

variable "max_delivery_attempts" {
  description = "Deliveries before Pub/Sub forwards a message to the dead-letter topic (profile key max_delivery_attempts). The pipeline dead-letters it itself one delivery earlier (max_failed_deliveries)."
  type        = number
  default     = 10

  validation {
    condition     = var.max_delivery_attempts >= 5 && var.max_delivery_attempts <= 100
    error_message = "max_delivery_attempts must be 5..100 (Pub/Sub's range, and the pipeline's)."
  }
}

variable "ack_deadline_seconds" {
  description = "Ack deadline of the pipeline subscription: the profile's tuning.ack_deadline_secs (default 60). The workers extend leases while a message is in flight; after a crash, redelivery comes this long after the last extension."
  type        = number
  default     = 60

  validation {
    condition     = var.ack_deadline_seconds >= 10 && var.ack_deadline_seconds <= 600
    error_message = "ack_deadline_seconds must be 10..600."
  }
}

variable "subscription_message_retention" {
  description = "How long the subscriptions keep unacknowledged messages (at most 7 days)."
  type        = string
  default     = "604800s"
}

variable "topic_message_retention" {
  description = "Message retention on the invoices topic (e.g. \"604800s\"), which lets a new subscription or a seek replay recent messages. Null: none (the raw archive in Cloud Storage is the replay source)."
  type        = string
  default     = null
}

variable "retry_minimum_backoff" {
  description = "Shortest wait before Pub/Sub redelivers a nacked or expired message."
  type        = string
  default     = "10s"
}

variable "retry_maximum_backoff" {
  description = "Longest wait before Pub/Sub redelivers a nacked or expired message (at most 600s)."
  type        = string
  default     = "600s"
}

# --- Bigtable ---

variable "bigtable_instance" {
  description = "Bigtable instance of the invoices table and of ingest's checkpoint table."
  type        = string
  default     = "nfe-prod"
}

variable "bigtable_table" {
  description = "Table of invoice rows and the emission-date index (docs/bigtable.md)."
  type        = string
  default     = "invoices"
}

variable "checkpoint_table" {
  description = "ingest's checkpoint and lease table (its --checkpoint-table, default ingest_checkpoints)."
  type        = string
  default     = "ingest_checkpoints"
}

variable "bigtable_zone" {
  description = "Zone of the Bigtable cluster. Null: <region>-a."
  type        = string
  default     = null
}

variable "bigtable_autoscaling" {
  description = "Autoscaling of the Bigtable cluster. Null: a fixed bigtable_num_nodes."
  type = object({
    min_nodes  = number
    max_nodes  = number
    cpu_target = number
  })
  default = {
    min_nodes  = 1
    max_nodes  = 3
    cpu_target = 60
  }
}

variable "bigtable_num_nodes" {
  description = "Nodes of the Bigtable cluster when bigtable_autoscaling is null."
  type        = number
  default     = 1
}

# --- BigQuery ---

variable "bigquery_dataset" {
  description = "Dataset of the invoices and invoice_items tables and their views."
  type        = string
  default     = "nfe"
}

# --- Cloud Storage ---

variable "archive_bucket" {
  description = "Bucket of the archives (raw/, raw-late/, processed/, dead-letter/). Null: <project_id>-nfe-archive, as the profile's archive_url."
  type        = string
  default     = null
}

variable "archive_prefix" {
  description = "Path inside the bucket where the archives start, with a trailing slash, when archive_url is gs://bucket/prefix. Empty: the bucket's root."
  type        = string
  default     = ""

  validation {
    condition     = var.archive_prefix == "" || endswith(var.archive_prefix, "/")
    error_message = "archive_prefix must be empty or end with a slash."
  }
}

variable "archive_location" {
  description = "Location of the bucket. Null: the region."
  type        = string
  default     = null
}

variable "raw_retention_days" {
  description = "Days raw/ and raw-late/ objects are kept. Brazilian fiscal documents must be kept 5 years counted from the first day of the year after their issue, so an invoice of early January needs almost 6 years: 2192 days covers every date."
  type        = number
  default     = 2192

  validation {
    condition     = var.raw_retention_days >= 1827
    error_message = "raw_retention_days must be at least 1827 (5 years): fiscal documents must be kept."
  }
}

variable "processed_retention_days" {
  description = "Days processed/ (Parquet) objects are kept. The replay does not rewrite them, so by default they are kept as long as the raw archive."
  type        = number
  default     = 2192

  validation {
    condition     = var.processed_retention_days >= 30
    error_message = "processed_retention_days must be at least 30."
  }
}

variable "dead_letter_retention_days" {
  description = "Days dead-letter/ objects are kept. Every dead letter's message is also in raw/, which is kept for the fiscal period."
  type        = number
  default     = 90

  validation {
    condition     = var.dead_letter_retention_days >= 7
    error_message = "dead_letter_retention_days must be at least 7."
  }
}

variable "soft_delete_retention_days" {
  description = "Days a deleted or overwritten object stays recoverable (Cloud Storage soft delete; 0 turns it off, at most 90)."
  type        = number
  default     = 7

  validation {
    condition     = var.soft_delete_retention_days == 0 || (var.soft_delete_retention_days >= 7 && var.soft_delete_retention_days <= 90)
    error_message = "soft_delete_retention_days must be 0 or 7..90."
  }
}

# --- Artifact Registry, Secret Manager ---

variable "artifact_repository" {
  description = "Docker repository of the images (<region>-docker.pkg.dev/<project>/<repository>/{invoices,ingest}:TAG)."
  type        = string
  default     = "fluxo"
}

variable "api_token_secret" {
  description = "Secret Manager secret that holds the invoice API's token (its value is added with gcloud, never by Terraform)."
  type        = string
  default     = "invoice-api-token"
}

# --- Kubernetes (Workload Identity) ---

variable "k8s_namespace" {
  description = "Namespace of the Kubernetes service accounts invoices and ingest (the prod overlay's)."
  type        = string
  default     = "fluxo"
}

# --- ingest on Cloud Run (optional) ---

variable "ingest_on_cloud_run" {
  description = "Run ingest as a Cloud Run service called by Cloud Scheduler instead of the GKE CronJob."
  type        = bool
  default     = false
}

variable "image_tag" {
  description = "Tag of the ingest image in the Artifact Registry repository, for Cloud Run."
  type        = string
  default     = null
}

variable "ingest_image" {
  description = "Full ingest image reference for Cloud Run. Null: <region>-docker.pkg.dev/<project>/<artifact_repository>/ingest:<image_tag>."
  type        = string
  default     = null
}

variable "invoice_api_url" {
  description = "URL of the invoice API's first page (ingest's INGEST_API_URL), for Cloud Run."
  type        = string
  default     = null
}

variable "ingest_schedule" {
  description = "Cloud Scheduler schedule of POST /run (cron syntax)."
  type        = string
  default     = "*/5 * * * *"
}

variable "ingest_ingress" {
  description = "Ingress of the Cloud Run service. Internal only: Cloud Scheduler of the same project counts as internal; every request also needs roles/run.invoker."
  type        = string
  default     = "INGRESS_TRAFFIC_INTERNAL_ONLY"

  validation {
    condition     = contains(["INGRESS_TRAFFIC_INTERNAL_ONLY", "INGRESS_TRAFFIC_ALL"], var.ingest_ingress)
    error_message = "ingest_ingress must be INGRESS_TRAFFIC_INTERNAL_ONLY or INGRESS_TRAFFIC_ALL."
  }
}

# --- Safety ---

variable "deletion_protection" {
  description = "Refuse to destroy the Bigtable instance and tables, the BigQuery tables and views, and the Cloud Run service."
  type        = bool
  default     = true
}
