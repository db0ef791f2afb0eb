# Bigtable: one SSD instance in the region, the invoices table (docs/bigtable.md) and ingest's
# checkpoint table. Families and garbage-collection rules are exactly those the code provisions:
# nfe::bigtable::FAMILIES (h, l, x: max versions 1) and ingest::checkpoint::FAMILY (c: max versions 1).

locals {
  bigtable_zone = coalesce(var.bigtable_zone, "${var.region}-a")

  # family => versions kept per column (the GC rule). No age rule: invoices are a permanent store,
  # and the checkpoint row holds one current value per column.
  invoices_families   = { h = 1, l = 1, x = 1 }
  checkpoint_families = { c = 1 }
}

resource "google_bigtable_instance" "nfe" {
  #checkov:skip=CKV_GCP_85:Google-managed encryption keys by choice: a customer-managed Cloud KMS key would add a key ring in the region, its rotation and grants to every service agent, and no requirement of this project asks for it
  name                = var.bigtable_instance
  display_name        = "NF-e invoices"
  deletion_protection = var.deletion_protection

  cluster {
    cluster_id   = "${var.bigtable_instance}-c1"
    zone         = local.bigtable_zone
    storage_type = "SSD"
    num_nodes    = var.bigtable_autoscaling == null ? var.bigtable_num_nodes : null

    dynamic "autoscaling_config" {
      for_each = var.bigtable_autoscaling == null ? [] : [var.bigtable_autoscaling]
      content {
        min_nodes  = autoscaling_config.value.min_nodes
        max_nodes  = autoscaling_config.value.max_nodes
        cpu_target = autoscaling_config.value.cpu_target
      }
    }
  }

  depends_on = [google_project_service.apis]
}

resource "google_bigtable_table" "invoices" {
  name                = var.bigtable_table
  instance_name       = google_bigtable_instance.nfe.name
  deletion_protection = var.deletion_protection ? "PROTECTED" : "UNPROTECTED"

  dynamic "column_family" {
    for_each = local.invoices_families
    content {
      family = column_family.key
    }
  }
}

resource "google_bigtable_gc_policy" "invoices" {
  for_each = local.invoices_families

  instance_name = google_bigtable_instance.nfe.name
  table         = google_bigtable_table.invoices.name
  column_family = each.key
  gc_rules      = jsonencode({ rules = [{ max_version = each.value }] })

  # A GC policy cannot be removed from a replicated table; leave it with the table.
  deletion_policy = "ABANDON"
}

resource "google_bigtable_table" "checkpoints" {
  name                = var.checkpoint_table
  instance_name       = google_bigtable_instance.nfe.name
  deletion_protection = var.deletion_protection ? "PROTECTED" : "UNPROTECTED"

  dynamic "column_family" {
    for_each = local.checkpoint_families
    content {
      family = column_family.key
    }
  }
}

resource "google_bigtable_gc_policy" "checkpoints" {
  for_each = local.checkpoint_families

  instance_name = google_bigtable_instance.nfe.name
  table         = google_bigtable_table.checkpoints.name
  column_family = each.key
  gc_rules      = jsonencode({ rules = [{ max_version = each.value }] })

  deletion_policy = "ABANDON"
}
