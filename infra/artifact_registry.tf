# Artifact Registry: the Docker repository of both images,
# <region>-docker.pkg.dev/<project>/fluxo/{invoices,ingest}:TAG (scripts/image.sh --repo ... --push).

resource "google_artifact_registry_repository" "fluxo" {
  #checkov:skip=CKV_GCP_84:Google-managed encryption keys by choice: a customer-managed Cloud KMS key would add a key ring in the region, its rotation and grants to every service agent, and no requirement of this project asks for it
  location      = var.region
  repository_id = var.artifact_repository
  format        = "DOCKER"
  description   = "Container images of the invoices and ingest pipelines."

  # A tag names one build forever: roll-backs redeploy a known image.
  docker_config {
    immutable_tags = true
  }

  depends_on = [google_project_service.apis]
}
