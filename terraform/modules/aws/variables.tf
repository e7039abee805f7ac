# --- Placement -----------------------------------------------------------------

variable "name" {
  type        = string
  description = "Deployment name: prefix of every resource name, the compose project on the host, the Name tag."
  default     = "sandbox-control"

  validation {
    # 24 characters leave room for the suffixes AWS name prefixes allow.
    condition     = can(regex("^[a-z][a-z0-9-]{0,23}$", var.name))
    error_message = "name must be 1-24 characters: lowercase letters, digits or '-', starting with a letter."
  }
}

variable "vpc_id" {
  type        = string
  description = "VPC of the host (and of the database)."

  validation {
    condition     = can(regex("^vpc-[0-9a-f]+$", var.vpc_id))
    error_message = "vpc_id must be a VPC id (vpc-...)."
  }
}

variable "subnet_id" {
  type        = string
  description = "Subnet of the host. It needs a route to the internet (NAT or a public IP) to install Docker and pull images."

  validation {
    condition     = can(regex("^subnet-[0-9a-f]+$", var.subnet_id))
    error_message = "subnet_id must be a subnet id (subnet-...)."
  }
}

variable "allowed_cidrs" {
  type        = list(string)
  description = "CIDRs that may reach the API port (IPv4 or IPv6). Nothing else is opened: no SSH (use SSM Session Manager)."

  validation {
    condition     = length(var.allowed_cidrs) > 0 && alltrue([for c in var.allowed_cidrs : can(cidrhost(c, 0))])
    error_message = "allowed_cidrs must list at least one CIDR block."
  }
}

variable "api_port" {
  type        = number
  description = "TCP port of the API on the host (plain HTTP; put a TLS load balancer or proxy in front)."
  default     = 8080

  validation {
    condition     = var.api_port >= 1024 && var.api_port <= 65535 && floor(var.api_port) == var.api_port
    error_message = "api_port must be an unprivileged TCP port (1024-65535)."
  }
}

variable "associate_public_ip" {
  type        = bool
  description = "Give the host a public IPv4 address (in a public subnet). Off: reach it through a load balancer, VPN or peering."
  default     = false
}

variable "instance_type" {
  type        = string
  description = "EC2 instance type of the host (x86_64 unless ami_id says otherwise); sandboxes share its CPUs and memory."
  default     = "t3.large"
}

variable "ami_id" {
  type        = string
  description = "AMI of the host; null = the newest official Debian 12 (bookworm) amd64 image."
  default     = null
}

variable "key_name" {
  type        = string
  description = "EC2 key pair for SSH; null = none (the security group does not open SSH anyway)."
  default     = null
}

variable "root_volume_size_gb" {
  type        = number
  description = "Size of the host's encrypted root volume (images and sandbox filesystems live there)."
  default     = 50

  validation {
    condition     = var.root_volume_size_gb >= 20
    error_message = "root_volume_size_gb must be at least 20."
  }
}

variable "enable_ssm" {
  type        = bool
  description = "Attach AmazonSSMManagedInstanceCore to the host's role, for shell access through Session Manager."
  default     = true
}

variable "tags" {
  type        = map(string)
  description = "Tags for every resource."
  default     = {}
}

# --- Snapshot bucket -------------------------------------------------------------

variable "bucket_name" {
  type        = string
  description = "Name of the snapshot bucket; null = a unique name starting with \"<name>-snapshots-\"."
  default     = null

  validation {
    condition     = var.bucket_name == null || can(regex("^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$", var.bucket_name))
    error_message = "bucket_name must be a valid S3 bucket name."
  }
}

variable "force_destroy_bucket" {
  type        = bool
  description = "Let terraform destroy delete a bucket that still holds snapshots."
  default     = false
}

variable "kms_key_arn" {
  type        = string
  description = "KMS key for the bucket's default encryption (the host's role may use it); null = SSE-S3 (AES256)."
  default     = null

  validation {
    condition     = var.kms_key_arn == null || can(regex("^arn:aws[a-z-]*:kms:", var.kms_key_arn))
    error_message = "kms_key_arn must be a KMS key ARN."
  }
}

variable "abort_incomplete_multipart_upload_days" {
  type        = number
  description = "Days after which S3 aborts an incomplete multipart upload (a snapshot cut off mid-stream)."
  default     = 1

  validation {
    condition     = var.abort_incomplete_multipart_upload_days >= 1
    error_message = "abort_incomplete_multipart_upload_days must be at least 1."
  }
}

variable "noncurrent_version_expiration_days" {
  type        = number
  description = "Days a deleted or overwritten snapshot object's old version is kept (the bucket is versioned)."
  default     = 30

  validation {
    condition     = var.noncurrent_version_expiration_days >= 1
    error_message = "noncurrent_version_expiration_days must be at least 1."
  }
}

# --- State database (optional) ----------------------------------------------------

variable "database" {
  type = object({
    enabled               = optional(bool, false)
    subnet_ids            = optional(list(string), [])
    instance_class        = optional(string, "db.t4g.medium")
    engine_version        = optional(string, "16")
    allocated_storage_gb  = optional(number, 20)
    max_storage_gb        = optional(number, 100)
    multi_az              = optional(bool, false)
    backup_retention_days = optional(number, 7)
    deletion_protection   = optional(bool, true)
    performance_insights  = optional(bool, true)
    username              = optional(string, "sandbox_control")
  })
  description = "RDS PostgreSQL for the state store (needed for replicas; SQLite on the host otherwise). subnet_ids: two or more private subnets in different AZs."
  default     = {}

  validation {
    condition     = !var.database.enabled || length(var.database.subnet_ids) >= 2
    error_message = "database.subnet_ids needs at least two subnets (in different availability zones)."
  }

  validation {
    condition     = can(regex("^[0-9]+(\\.[0-9]+)?$", var.database.engine_version))
    error_message = "database.engine_version is a PostgreSQL version such as 16 or 16.4."
  }

  validation {
    condition     = can(regex("^[a-z][a-z0-9_]{0,62}$", var.database.username))
    error_message = "database.username must be a lowercase identifier."
  }
}

variable "database_password" {
  type        = string
  description = "Master password of the database (required with database.enabled): 16-128 letters, digits or _ . ~ - (safe in the state URL without escaping)."
  default     = null
  sensitive   = true

  validation {
    condition     = var.database_password == null || can(regex("^[A-Za-z0-9_.~-]{16,128}$", var.database_password))
    error_message = "database_password must be 16-128 letters, digits or _ . ~ -."
  }
}

# --- The service ---------------------------------------------------------------------

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

variable "api_image" {
  type        = string
  description = "Image of the service, in a registry the host can pull from."
}

variable "sandbox_image" {
  type        = string
  description = "Image sandboxes start from, in a registry the host can pull from (pulled at boot)."
}

variable "sandbox_docker_network" {
  type        = string
  description = "Network of sandbox containers: none or a Docker network name; null = the default bridge. Never host: on the host network a sandbox could reach the instance metadata service and take the host role's credentials."
  default     = null

  validation {
    condition     = var.sandbox_docker_network != "host"
    error_message = "sandbox_docker_network cannot be host on AWS (sandboxes would reach the instance role's credentials)."
  }
}

variable "extra_env" {
  type        = map(string)
  description = "More settings, not secret (names from .env.example)."
  default     = {}
}

variable "extra_secret_env" {
  type        = map(string)
  description = "More secret settings (e.g. SANDBOX_VCS_CLONE_TOKEN)."
  default     = {}
  sensitive   = true
}
