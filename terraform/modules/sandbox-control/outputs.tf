# Only what holds no secret is non-sensitive; Terraform itself refuses a
# non-sensitive output derived from a sensitive variable.

output "project_name" {
  description = "The compose project name (also the sandboxes' instance scope)."
  value       = var.name
}

output "compose_yaml" {
  description = "The compose file of the stack (no secrets: they are in the env files)."
  value       = local.compose_yaml

  precondition {
    condition     = !(var.minio.enabled && var.listen.network_mode == "host")
    error_message = "minio.enabled needs listen.network_mode = \"bridge\" (the service reaches MinIO by its service name)."
  }

  precondition {
    condition     = var.replicas == 1 || var.s3 != null
    error_message = "More than one replica needs S3 (s3): replicas share the snapshot bucket."
  }
}

output "files" {
  description = "The stack's files without secrets, by file name (compose.yaml, start.sh)."
  value       = local.files
}

output "secret_files" {
  description = "The stack's env files, by file name (sandbox-control.env, and minio.env with MinIO)."
  value       = local.secret_files
  sensitive   = true

  precondition {
    condition     = !var.minio.enabled || (var.s3 != null && try(var.s3.endpoint, null) == null)
    error_message = "minio.enabled needs s3 with a bucket and no endpoint (the endpoint is the stack's MinIO)."
  }

  precondition {
    condition     = !var.minio.enabled || nonsensitive(var.s3_credentials != null)
    error_message = "minio.enabled needs s3_credentials (they become MinIO's root credentials)."
  }

  precondition {
    condition     = var.replicas == 1 || nonsensitive(var.state_url != null)
    error_message = "More than one replica needs a shared state store (state_url, PostgreSQL)."
  }
}

output "start_script" {
  description = "start.sh: starts or updates the stack from the files beside it (docker compose or docker-compose)."
  value       = local.start_script
}

output "environment" {
  description = "Every setting of the service, secrets included (for platforms that take a map, e.g. a Kubernetes Secret)."
  value       = local.environment
  sensitive   = true
}

output "secret_environment" {
  description = "Only the secret settings (for a Secret beside a Deployment's plain env)."
  value       = local.secret_env
  sensitive   = true
}

output "plain_environment" {
  description = "The settings that are not secret."
  value       = local.plain_env
}

output "secret_environment_names" {
  description = "Names of the secret settings (their values are only in the sensitive outputs)."
  value       = nonsensitive(sort(keys(local.secret_env)))
}

output "user_data" {
  description = "cloud-init user_data that installs Docker on a fresh Debian or Ubuntu host and starts the stack from deploy_dir."
  value       = local.user_data
  sensitive   = true
}

output "api_urls" {
  description = "Where each replica answers on the host (http; put a TLS proxy in front to expose it)."
  value       = local.api_urls
}
