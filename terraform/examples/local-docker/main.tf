# The service on this machine's Docker engine (or any engine DOCKER_HOST reaches),
# with snapshots in MinIO inside the stack, or in an S3 server you name.
#
#   terraform init
#   export TF_VAR_api_secrets='["'"$(openssl rand -hex 32)"'"]'
#   export TF_VAR_s3_credentials='{access_key="sandbox-control",secret_key="'"$(openssl rand -hex 20)"'"}'
#   terraform apply
#   curl -s "$(terraform output -raw api_url)/readyz"

module "config" {
  source = "../../modules/sandbox-control"

  name                        = var.name
  api_secrets                 = var.api_secrets
  internal_callback_secret    = var.internal_callback_secret
  allowed_control_plane_hosts = var.allowed_control_plane_hosts
  api_image                   = var.api_image
  sandbox_image               = var.sandbox_image
  listen                      = var.listen
  s3                          = var.s3
  s3_credentials              = var.s3_credentials
  minio                       = { enabled = var.s3.endpoint == null }
  sandbox_docker_network      = var.sandbox_docker_network
}

module "docker" {
  source = "../../modules/docker-host"

  project_name     = module.config.project_name
  files            = module.config.files
  secret_files     = module.config.secret_files
  docker_host      = var.docker_host
  remove_volumes   = var.remove_volumes
  remove_sandboxes = var.remove_sandboxes
}
