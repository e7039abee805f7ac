variable "name" {
  type        = string
  description = "Name of the Deployment, Service, Secret, ServiceAccount and RBAC objects; also the sandboxes' instance scope."
  default     = "sandbox-control"

  validation {
    condition     = can(regex("^[a-z0-9]([a-z0-9-]{0,51}[a-z0-9])?$", var.name))
    error_message = "name must be a DNS-1123 label of at most 53 characters."
  }
}

variable "namespace" {
  type        = string
  description = "The one namespace of the service and of its sandbox pods (the Role is scoped to it)."
  default     = "sandbox-control"

  validation {
    condition     = can(regex("^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$", var.namespace))
    error_message = "namespace must be a DNS-1123 label."
  }
}

variable "create_namespace" {
  type        = bool
  description = "Create the namespace (false: it exists already)."
  default     = true
}

variable "replicas" {
  type        = number
  description = "Service replicas; they share the state store (state_url) and the bucket."
  default     = 2

  validation {
    condition     = var.replicas >= 1 && floor(var.replicas) == var.replicas
    error_message = "replicas must be a whole number of at least 1."
  }
}

variable "api_image" {
  type        = string
  description = "Image of the service, pullable by the cluster, with a fixed tag or a digest (never :latest)."

  validation {
    condition     = can(regex("^[^\\s]+(:[A-Za-z0-9_][A-Za-z0-9_.-]*|@sha256:[0-9a-f]{64})$", var.api_image)) && !endswith(var.api_image, ":latest")
    error_message = "api_image needs a fixed tag (not latest) or a digest."
  }
}

variable "sandbox_image" {
  type        = string
  description = "Image of sandbox pods (SANDBOX_BASE_IMAGE), pullable by the cluster."
}

variable "image_pull_policy" {
  type        = string
  description = "imagePullPolicy of the service's container (Always: the node checks the tag against the registry on every start)."
  default     = "Always"

  validation {
    condition     = contains(["Always", "IfNotPresent", "Never"], var.image_pull_policy)
    error_message = "image_pull_policy must be Always, IfNotPresent or Never."
  }
}

variable "api_secrets" {
  type        = list(string)
  description = "API secrets (SANDBOX_API_SECRET), 32+ bytes each."
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

variable "state_url" {
  type        = string
  description = "PostgreSQL URL of the shared state store (SANDBOX_STATE_URL); pods have no persistent disk of their own."
  sensitive   = true
}

variable "s3" {
  type = object({
    bucket        = string
    endpoint      = optional(string)
    region        = optional(string, "us-east-1")
    path_style    = optional(bool, true)
    create_bucket = optional(bool, false)
  })
  description = "The shared snapshot bucket (S3_*)."
}

variable "s3_credentials" {
  type = object({
    access_key = string
    secret_key = string
  })
  description = "Static S3 keys; null = the SDK's default chain (e.g. IRSA or workload identity through service_account_annotations)."
  default     = null
  sensitive   = true
}

variable "service_account_annotations" {
  type        = map(string)
  description = "Annotations of the service's ServiceAccount, e.g. eks.amazonaws.com/role-arn for IRSA."
  default     = {}
}

variable "resources" {
  type = object({
    requests = object({ cpu = string, memory = string })
    limits   = object({ cpu = string, memory = string })
  })
  description = "CPU and memory requests and limits of each service pod (sandboxes are pods of their own)."
  default = {
    requests = { cpu = "250m", memory = "512Mi" }
    limits   = { cpu = "2", memory = "2Gi" }
  }
}

variable "service" {
  type = object({
    type = optional(string, "ClusterIP")
    port = optional(number, 80)
  })
  description = "The Service in front of the replicas; put an Ingress with TLS in front of it to expose the API."
  default     = {}

  validation {
    condition     = contains(["ClusterIP", "NodePort", "LoadBalancer"], var.service.type)
    error_message = "service.type must be ClusterIP, NodePort or LoadBalancer."
  }
}

variable "ingress_from" {
  type = object({
    cidrs            = optional(list(string), [])
    namespace_labels = optional(list(map(string)), [])
    pod_labels       = optional(list(map(string)), [])
  })
  description = "Who may reach the API port (the NetworkPolicy): CIDRs, namespaces by label, pods of this namespace by label. Sandbox pods are never allowed."

  validation {
    condition     = length(var.ingress_from.cidrs) + length(var.ingress_from.namespace_labels) + length(var.ingress_from.pod_labels) > 0
    error_message = "ingress_from must name at least one source (a CIDR, namespace labels or pod labels)."
  }

  validation {
    condition     = alltrue([for c in var.ingress_from.cidrs : can(cidrhost(c, 0))])
    error_message = "ingress_from.cidrs must be CIDR blocks."
  }
}

variable "node_selector" {
  type        = map(string)
  description = "Node selector of the service's pods."
  default     = {}
}

variable "extra_env" {
  type        = map(string)
  description = "More settings, not secret (e.g. SANDBOX_K8S_RUNTIME_CLASS, SANDBOX_K8S_STORAGE_CLASS)."
  default     = {}
}

variable "extra_secret_env" {
  type        = map(string)
  description = "More secret settings (e.g. SANDBOX_VCS_CLONE_TOKEN)."
  default     = {}
  sensitive   = true
}
