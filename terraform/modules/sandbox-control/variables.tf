# Inputs of the core module: the service's configuration (names in .env.example).
# Secrets are sensitive variables; everything else may appear in plans and outputs.

variable "name" {
  type        = string
  description = "Deployment name: the compose project, the sandboxes' instance scope (SANDBOX_INSTANCE_SCOPE) and the prefix of the volumes."
  default     = "sandbox-control"

  validation {
    condition     = can(regex("^[a-z0-9][a-z0-9_-]{0,62}$", var.name))
    error_message = "The name must be 1-63 characters: lowercase letters, digits, '-' or '_', starting with a letter or digit."
  }
}

variable "sandbox_provider" {
  type        = string
  description = "Where sandboxes run (SANDBOX_PROVIDER): docker (containers beside the service), daytona, modal, or kubernetes (used by the kubernetes module)."
  default     = "docker"

  validation {
    condition     = contains(["docker", "daytona", "modal", "kubernetes"], var.sandbox_provider)
    error_message = "The sandbox provider must be one of docker, daytona, modal, kubernetes (the local bubblewrap provider does not run in a container)."
  }
}

variable "api_secrets" {
  type        = list(string)
  description = "Shared HMAC secrets of the API (SANDBOX_API_SECRET); the first signs, every one verifies. 32+ bytes each, e.g. `openssl rand -hex 32`."
  sensitive   = true

  validation {
    condition     = length(var.api_secrets) > 0 && alltrue([for s in var.api_secrets : length(s) >= 32])
    error_message = "Give at least one API secret, each at least 32 bytes long."
  }

  validation {
    condition     = alltrue([for s in var.api_secrets : can(regex("^[^,'\\s]+$", s))])
    error_message = "API secrets may not contain commas (the separator), single quotes or whitespace."
  }

  validation {
    condition     = alltrue([for s in var.api_secrets : !contains(["changeme", "change-me", "secret", "your-secret-here", "replace-me", "xxx"], lower(s))])
    error_message = "An API secret is a placeholder; generate a random one."
  }
}

variable "internal_callback_secret" {
  type        = string
  description = "Signs build callbacks (INTERNAL_CALLBACK_SECRET), 32+ bytes; null = builds without callbacks only."
  default     = null
  sensitive   = true

  validation {
    condition     = var.internal_callback_secret == null || can(regex("^[^'\\s]{32,}$", var.internal_callback_secret))
    error_message = "The callback secret must be at least 32 bytes, without single quotes or whitespace."
  }
}

variable "allowed_control_plane_hosts" {
  type        = list(string)
  description = "Hosts that control_plane_url and callback_url may name (ALLOWED_CONTROL_PLANE_HOSTS)."
  default     = []

  validation {
    condition     = alltrue([for h in var.allowed_control_plane_hosts : can(regex("^[A-Za-z0-9.*:_\\[\\]-]+$", h))])
    error_message = "Each allowed control-plane host is a host name or address (optionally with a port), without scheme or path."
  }
}

variable "api_image" {
  type        = string
  description = "Image of the service (built from Dockerfile)."
  default     = "sandbox-control:dev"

  validation {
    condition     = can(regex("^[A-Za-z0-9][A-Za-z0-9._/:@-]*$", var.api_image))
    error_message = "The API image must be an image reference (name[:tag][@digest])."
  }
}

variable "sandbox_image" {
  type        = string
  description = "Image sandboxes start from (SANDBOX_BASE_IMAGE, built from Dockerfile.sandbox)."
  default     = "sandbox-control-sandbox:dev"

  validation {
    condition     = can(regex("^[A-Za-z0-9][A-Za-z0-9._/:@-]*$", var.sandbox_image))
    error_message = "The sandbox image must be an image reference (name[:tag][@digest])."
  }
}

variable "replicas" {
  type        = number
  description = "Service replicas. More than one needs a shared state store (state_url) and S3; in the compose stack replica i listens on listen.port + i."
  default     = 1

  validation {
    condition     = var.replicas >= 1 && var.replicas <= 16 && floor(var.replicas) == var.replicas
    error_message = "Replicas must be a whole number from 1 to 16."
  }
}

variable "listen" {
  type = object({
    bind_address = optional(string, "127.0.0.1")
    port         = optional(number, 8080)
    network_mode = optional(string, "bridge")
  })
  description = "Where the API listens on the host. network_mode bridge publishes bind_address:port; host shares the host's network (the service binds bind_address:port itself)."
  default     = {}

  validation {
    condition     = contains(["bridge", "host"], var.listen.network_mode)
    error_message = "listen.network_mode must be bridge or host."
  }

  validation {
    condition     = var.listen.port >= 1 && var.listen.port <= 65535 && floor(var.listen.port) == var.listen.port
    error_message = "listen.port must be a TCP port (1-65535)."
  }

  validation {
    condition     = can(cidrhost("${var.listen.bind_address}/32", 0)) || can(cidrhost("${var.listen.bind_address}/128", 0))
    error_message = "listen.bind_address must be an IP address (0.0.0.0 for every interface)."
  }
}

variable "s3" {
  type = object({
    bucket        = string
    endpoint      = optional(string)
    region        = optional(string, "us-east-1")
    path_style    = optional(bool, true)
    create_bucket = optional(bool, true)
  })
  description = "Snapshot storage (S3_*). endpoint null = AWS S3 (or MinIO in this stack when minio.enabled). null = blobs in the data volume (one replica only)."
  default     = null

  validation {
    condition     = var.s3 == null || can(regex("^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$", var.s3.bucket))
    error_message = "s3.bucket must be a valid S3 bucket name (3-63 lowercase letters, digits, '.' or '-')."
  }

  validation {
    condition     = var.s3 == null || try(var.s3.endpoint == null || can(regex("^https?://[^\\s'$]+$", var.s3.endpoint)), false)
    error_message = "s3.endpoint must be an http(s) URL."
  }
}

variable "s3_credentials" {
  type = object({
    access_key = string
    secret_key = string
  })
  description = "Static S3 keys (S3_ACCESS_KEY, S3_SECRET_KEY); null = the SDK's default chain (an instance role on AWS). Required with minio.enabled (they become MinIO's root credentials)."
  default     = null
  sensitive   = true

  validation {
    condition     = var.s3_credentials == null || try(can(regex("^[^'\\s]+$", var.s3_credentials.access_key)) && can(regex("^[^'\\s]{8,}$", var.s3_credentials.secret_key)), false)
    error_message = "S3 keys may not contain single quotes or whitespace; the secret key has at least 8 characters."
  }
}

variable "minio" {
  type = object({
    enabled  = optional(bool, false)
    image    = optional(string, "minio/minio:RELEASE.2025-04-22T22-12-26Z")
    mc_image = optional(string, "minio/mc:RELEASE.2025-04-16T18-13-26Z")
  })
  description = "Run MinIO in the stack for snapshots (needs s3 with a null endpoint, s3_credentials, and bridge networking)."
  default     = {}
}

variable "state_url" {
  type        = string
  description = "SQLAlchemy URL of the state store (SANDBOX_STATE_URL), e.g. postgresql+asyncpg://user:pass@host:5432/db; null = SQLite in the data volume."
  default     = null
  sensitive   = true

  validation {
    condition     = var.state_url == null || can(regex("^(postgresql(\\+asyncpg)?|sqlite(\\+aiosqlite)?)://[^'\\s]+$", var.state_url))
    error_message = "state_url must be a postgresql:// (or sqlite://) URL without single quotes or whitespace."
  }
}

variable "sandbox_docker_network" {
  type        = string
  description = "Network of sandbox containers (SANDBOX_DOCKER_NETWORK): host, none, or an existing network's name; null = the engine's default bridge."
  default     = null

  validation {
    condition     = var.sandbox_docker_network == null || can(regex("^[A-Za-z0-9][A-Za-z0-9_.-]*$", var.sandbox_docker_network))
    error_message = "sandbox_docker_network must be host, none or a Docker network name."
  }
}

variable "docker_socket" {
  type        = string
  description = "Path of the Docker socket on the host, mounted into the service for the docker provider."
  default     = "/var/run/docker.sock"

  validation {
    condition     = can(regex("^/[A-Za-z0-9_./-]+$", var.docker_socket))
    error_message = "docker_socket must be an absolute path."
  }
}

variable "docker_gid" {
  type        = number
  description = "Group owning the Docker socket on the host (lets the non-root service use it); null = found at deploy time by the start script."
  default     = null
}

variable "pull_sandbox_image" {
  type        = bool
  description = "Pull sandbox_image on the host before starting (for images in a registry; the local images of a dev machine need false)."
  default     = false
}

variable "log_level" {
  type        = string
  description = "SANDBOX_LOG_LEVEL."
  default     = "info"

  validation {
    condition     = contains(["debug", "info", "warning", "error"], var.log_level)
    error_message = "log_level must be debug, info, warning or error."
  }
}

variable "auth_mode" {
  type        = string
  description = "SANDBOX_AUTH_MODE: token accepts bearer tokens; signed requires X-Sandbox-Signature."
  default     = "token"

  validation {
    condition     = contains(["token", "signed"], var.auth_mode)
    error_message = "auth_mode must be token or signed."
  }
}

variable "kubernetes_namespace" {
  type        = string
  description = "Namespace of sandbox pods (SANDBOX_K8S_NAMESPACE) when sandbox_provider is kubernetes."
  default     = "sandbox-control"

  validation {
    condition     = can(regex("^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$", var.kubernetes_namespace))
    error_message = "kubernetes_namespace must be a DNS-1123 label."
  }
}

variable "extra_env" {
  type        = map(string)
  description = "More settings, not secret (any name from .env.example, e.g. SANDBOX_DEFAULT_TTL_SECONDS); cannot override the ones this module sets."
  default     = {}

  validation {
    condition     = alltrue([for k, v in var.extra_env : can(regex("^[A-Z][A-Z0-9_]*$", k)) && can(regex("^[^'\\n]*$", v))])
    error_message = "extra_env names are upper-case identifiers; values are one line without single quotes."
  }
}

variable "extra_secret_env" {
  type        = map(string)
  description = "More secret settings (e.g. SANDBOX_VCS_CLONE_TOKEN, DAYTONA_API_KEY, MODAL_TOKEN_SECRET); cannot override the ones this module sets."
  default     = {}
  sensitive   = true

  validation {
    condition     = alltrue([for k, v in var.extra_secret_env : can(regex("^[A-Z][A-Z0-9_]*$", k)) && can(regex("^[^'\\n]*$", v))])
    error_message = "extra_secret_env names are upper-case identifiers; values are one line without single quotes."
  }
}

variable "deploy_dir" {
  type        = string
  description = "Directory on the host where user_data puts the compose stack."
  default     = "/opt/sandbox-control"

  validation {
    condition     = can(regex("^/[A-Za-z0-9_./-]+$", var.deploy_dir))
    error_message = "deploy_dir must be an absolute path."
  }
}
