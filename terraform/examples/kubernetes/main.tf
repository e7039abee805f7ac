# The service on a Kubernetes cluster: two replicas on an existing PostgreSQL and
# bucket, sandboxes as pods in the same namespace, reachable from the ingress
# controller's namespace only.
#
#   terraform init
#   export TF_VAR_api_secrets='["'"$(openssl rand -hex 32)"'"]'
#   export TF_VAR_state_url='postgresql://sandbox:...@postgres.db.svc:5432/sandbox_control'
#   export TF_VAR_s3_credentials='{access_key="...",secret_key="..."}'
#   terraform apply -var api_image=registry.example.com/sandbox-control:1.0 \
#     -var sandbox_image=registry.example.com/sandbox-control-sandbox:1.0 \
#     -var s3_endpoint=http://minio.storage.svc:9000

provider "kubernetes" {
  config_path = var.kubeconfig
}

module "sandbox_control" {
  source = "../../modules/kubernetes"

  namespace      = "sandbox-control"
  replicas       = 2
  api_image      = var.api_image
  sandbox_image  = var.sandbox_image
  api_secrets    = var.api_secrets
  state_url      = var.state_url
  s3             = { bucket = var.s3_bucket, endpoint = var.s3_endpoint }
  s3_credentials = var.s3_credentials
  ingress_from   = { namespace_labels = [{ "kubernetes.io/metadata.name" = "ingress-nginx" }] }
}
