terraform {
  required_version = ">= 1.5"

  required_providers {
    google = {
      source  = "hashicorp/google"
      version = "~> 6.0"
    }
  }
}

provider "google" {
  project = var.project_id
  region  = var.region

  default_labels = {
    app        = "fluxo"
    managed-by = "terraform"
  }
}

# The project number names the Pub/Sub service agent (dead-letter forwarding, iam.tf).
data "google_project" "this" {
  project_id = var.project_id
}
