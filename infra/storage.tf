# Cloud Storage: the archive bucket (docs/storage-layout.md). Four prefixes, each with its own life:
#   raw/, raw-late/   every message as received: the fiscal record, kept raw_retention_days
#   processed/        Parquet lines derived from it, kept processed_retention_days
#   dead-letter/      one object per rejected record, kept dead_letter_retention_days
# Objects move to colder classes as they age (replays read recent hours; old ones are rarely read).
#
# Versioning is off on purpose: object names are deterministic and a sink's retry rewrites the same
# name with the same bytes, so noncurrent versions would only be duplicates. Soft delete keeps any
# deleted or overwritten object recoverable for soft_delete_retention_days. Do not add a retention
# policy (bucket lock): it would forbid those overwrites and the sinks' retries would fail.

locals {
  archive_bucket = coalesce(var.archive_bucket, "${var.project_id}-nfe-archive")

  # prefix => [ [age in days, storage class], ... ] and the age at which objects are deleted.
  archive_lifecycle = {
    "raw/" = {
      transitions = [[30, "NEARLINE"], [90, "COLDLINE"], [365, "ARCHIVE"]]
      delete_age  = var.raw_retention_days
    }
    "raw-late/" = {
      transitions = [[30, "NEARLINE"], [90, "COLDLINE"], [365, "ARCHIVE"]]
      delete_age  = var.raw_retention_days
    }
    "processed/" = {
      transitions = [[30, "NEARLINE"], [365, "COLDLINE"]]
      delete_age  = var.processed_retention_days
    }
    "dead-letter/" = {
      transitions = [[30, "NEARLINE"]]
      delete_age  = var.dead_letter_retention_days
    }
  }

  # A transition applies only to objects in a warmer class (never back to a warmer one).
  warmer_classes = {
    NEARLINE = ["STANDARD"]
    COLDLINE = ["STANDARD", "NEARLINE"]
    ARCHIVE  = ["STANDARD", "NEARLINE", "COLDLINE"]
  }

  archive_transitions = flatten([
    for prefix, rule in local.archive_lifecycle : [
      for t in rule.transitions : {
        prefix        = "${var.archive_prefix}${prefix}"
        age           = t[0]
        storage_class = t[1]
        from_classes  = local.warmer_classes[t[1]]
      } if t[0] < rule.delete_age
    ]
  ])
}

resource "google_storage_bucket" "archive" {
  #checkov:skip=CKV_GCP_62:Access logs: Cloud Audit Logs (Data Access for Cloud Storage) are the supported record of who read or wrote; usage-log buckets are a legacy mechanism.
  #checkov:skip=CKV_GCP_78:Versioning off on purpose (see the comment above): object names are deterministic and retries rewrite identical bytes; soft delete covers recovery.
  name     = local.archive_bucket
  location = coalesce(var.archive_location, var.region)

  storage_class               = "STANDARD"
  uniform_bucket_level_access = true
  public_access_prevention    = "enforced"
  force_destroy               = false

  versioning {
    enabled = false
  }

  soft_delete_policy {
    retention_duration_seconds = var.soft_delete_retention_days * 86400
  }

  dynamic "lifecycle_rule" {
    for_each = local.archive_transitions
    content {
      condition {
        age                   = lifecycle_rule.value.age
        matches_prefix        = [lifecycle_rule.value.prefix]
        matches_storage_class = lifecycle_rule.value.from_classes
      }
      action {
        type          = "SetStorageClass"
        storage_class = lifecycle_rule.value.storage_class
      }
    }
  }

  dynamic "lifecycle_rule" {
    for_each = local.archive_lifecycle
    content {
      condition {
        age            = lifecycle_rule.value.delete_age
        matches_prefix = ["${var.archive_prefix}${lifecycle_rule.key}"]
      }
      action {
        type = "Delete"
      }
    }
  }

  depends_on = [google_project_service.apis]
}
