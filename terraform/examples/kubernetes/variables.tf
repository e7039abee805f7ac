variable "kubeconfig" {
  type        = string
  description = "Kubeconfig of the cluster."
  default     = "~/.kube/config"
}

variable "api_image" {
  type        = string
  description = "The service's image, pullable by the cluster."
}

variable "sandbox_image" {
  type        = string
  description = "The sandbox image, pullable by the cluster."
}

variable "api_secrets" {
  type        = list(string)
  description = "API secrets, 32+ bytes each (TF_VAR_api_secrets)."
  sensitive   = true
}

variable "state_url" {
  type        = string
  description = "PostgreSQL URL of the shared state store (TF_VAR_state_url)."
  sensitive   = true
}

variable "s3_bucket" {
  type        = string
  description = "Snapshot bucket (created by the service when missing, if its keys may)."
  default     = "sandbox-control"
}

variable "s3_endpoint" {
  type        = string
  description = "S3 endpoint (MinIO, R2, ...); null = AWS S3."
  default     = null
}

variable "s3_credentials" {
  type = object({
    access_key = string
    secret_key = string
  })
  description = "S3 keys (TF_VAR_s3_credentials); null = the pods' workload identity."
  default     = null
  sensitive   = true
}
