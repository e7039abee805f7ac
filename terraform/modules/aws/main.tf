# An EC2 host running the service's compose stack (docker provider), snapshots in
# a dedicated S3 bucket reached through the host's IAM role, and optionally RDS
# PostgreSQL for the state store. The service's configuration comes from the core
# module, so every deployment renders it the same way.

data "aws_partition" "current" {}
data "aws_region" "current" {}

locals {
  tags = merge(var.tags, { "sandbox-control.deployment" = var.name })

  # asyncpg negotiates TLS (the parameter group refuses plain connections);
  # ssl=require makes a downgrade impossible.
  state_url = local.db_enabled ? join("", [
    "postgresql+asyncpg://${var.database.username}:${coalesce(var.database_password, "unset")}",
    "@${aws_db_instance.state[0].address}:${aws_db_instance.state[0].port}/postgres?ssl=require",
  ]) : null
}

module "config" {
  source = "../sandbox-control"

  name                        = var.name
  sandbox_provider            = "docker"
  api_secrets                 = var.api_secrets
  internal_callback_secret    = var.internal_callback_secret
  allowed_control_plane_hosts = var.allowed_control_plane_hosts
  api_image                   = var.api_image
  sandbox_image               = var.sandbox_image
  pull_sandbox_image          = true
  sandbox_docker_network      = var.sandbox_docker_network
  extra_env                   = var.extra_env
  extra_secret_env            = var.extra_secret_env
  state_url                   = local.state_url

  # The host network: the service reaches the metadata service in one hop (see
  # ec2.tf) and the security group decides who reaches the port.
  listen = {
    bind_address = "0.0.0.0"
    port         = var.api_port
    network_mode = "host"
  }

  # No keys: the SDK's default chain finds the instance role. The bucket exists.
  s3 = {
    bucket        = aws_s3_bucket.snapshots.id
    region        = data.aws_region.current.name
    path_style    = false
    create_bucket = false
  }
}
