variable "name" {
  type        = string
  description = "Deployment name (compose project and sandbox scope)."
  default     = "sandbox-control"
}

variable "api_secrets" {
  type        = list(string)
  description = "API secrets, 32+ bytes each (`openssl rand -hex 32`); pass them as TF_VAR_api_secrets, not on the command line."
  sensitive   = true
}

variable "internal_callback_secret" {
  type        = string
  description = "Signs build callbacks (32+ bytes); null = no callbacks."
  default     = null
  sensitive   = true
}

variable "allowed_control_plane_hosts" {
  type        = list(string)
  description = "Hosts control_plane_url and callback_url may name."
  default     = []
}

variable "api_image" {
  type        = string
  description = "Image of the service (`docker compose --profile images build` makes sandbox-control:dev)."
  default     = "sandbox-control:dev"
}

variable "sandbox_image" {
  type        = string
  description = "Image sandboxes start from."
  default     = "sandbox-control-sandbox:dev"
}

variable "listen" {
  type = object({
    bind_address = optional(string, "127.0.0.1")
    port         = optional(number, 8080)
    network_mode = optional(string, "bridge")
  })
  description = "Where the API listens on the host (see the sandbox-control module)."
  default     = {}
}

variable "s3" {
  type = object({
    bucket        = string
    endpoint      = optional(string)
    region        = optional(string, "us-east-1")
    path_style    = optional(bool, true)
    create_bucket = optional(bool, true)
  })
  description = "Snapshot bucket; endpoint null runs MinIO in the stack, else that S3 server is used."
  default     = { bucket = "sandbox-control" }
}

variable "s3_credentials" {
  type = object({
    access_key = string
    secret_key = string
  })
  description = "S3 keys (MinIO's root credentials when it runs in the stack)."
  sensitive   = true
}

variable "sandbox_docker_network" {
  type        = string
  description = "Network of sandbox containers: host, none or a network name; null = the engine's default bridge."
  default     = null
}

variable "docker_host" {
  type        = string
  description = "DOCKER_HOST of the engine (unix://, ssh://, tcp://); null = the CLI's default."
  default     = null
}

variable "remove_volumes" {
  type        = bool
  description = "terraform destroy also removes the volumes (state database, MinIO data)."
  default     = false
}

variable "remove_sandboxes" {
  type        = bool
  description = "terraform destroy also removes the sandboxes the service started."
  default     = false
}
