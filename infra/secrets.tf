# Secret Manager: the invoice API's token. Terraform creates the secret, never a version, so the token is
# not in the Terraform state. Add the value once (and again to rotate it):
#   printf '%s' "$INVOICE_API_TOKEN" | gcloud secrets versions add invoice-api-token --data-file=-
# Only the ingest service account may read it (iam.tf); on GKE, External Secrets reads it as that
# account, on Cloud Run the service injects it as INVOICE_API_TOKEN.

resource "google_secret_manager_secret" "api_token" {
  secret_id = var.api_token_secret

  replication {
    user_managed {
      replicas {
        location = var.region
      }
    }
  }

  depends_on = [google_project_service.apis]
}
