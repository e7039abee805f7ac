variable "project_name" {
  type        = string
  description = "Compose project name of the stack (the sandbox-control module's project_name output)."

  validation {
    condition     = can(regex("^[a-z0-9][a-z0-9_-]{0,62}$", var.project_name))
    error_message = "project_name must be a compose project name: lowercase letters, digits, '-' or '_'."
  }
}

variable "files" {
  type        = map(string)
  description = "The stack's files without secrets, by name (the sandbox-control module's files output); must hold start.sh and compose.yaml."

  validation {
    condition     = contains(keys(var.files), "start.sh") && contains(keys(var.files), "compose.yaml")
    error_message = "files must contain start.sh and compose.yaml."
  }

  validation {
    condition     = alltrue([for f in keys(var.files) : can(regex("^[A-Za-z0-9][A-Za-z0-9_.-]*$", f))])
    error_message = "File names are plain names (no directories, not hidden)."
  }
}

variable "secret_files" {
  type        = map(string)
  description = "The stack's env files, by name (the sandbox-control module's secret_files output)."
  sensitive   = true

  validation {
    condition     = alltrue([for f in keys(var.secret_files) : can(regex("^[A-Za-z0-9][A-Za-z0-9_.-]*$", f))])
    error_message = "File names are plain names (no directories, not hidden)."
  }
}

variable "docker_host" {
  type        = string
  description = "The engine to deploy to, as DOCKER_HOST takes it (unix:///var/run/docker.sock, ssh://user@host, tcp://host:2376); null = the docker CLI's default."
  default     = null

  validation {
    condition     = var.docker_host == null || can(regex("^(unix|ssh|tcp|npipe)://[^\\s'\"]+$", var.docker_host))
    error_message = "docker_host must be a unix://, ssh://, tcp:// or npipe:// address."
  }
}

variable "sandbox_scope" {
  type        = string
  description = "SANDBOX_INSTANCE_SCOPE of the deployed service (the sandbox-control module sets it to project_name); its sandboxes carry it as a label. null = project_name."
  default     = null
}

variable "remove_volumes" {
  type        = bool
  description = "On destroy, also remove the stack's volumes (the state database and any MinIO data). Off by default: data outlives the deployment."
  default     = false
}

variable "remove_sandboxes" {
  type        = bool
  description = "On destroy, also remove the sandbox containers the service started (their workspaces are lost unless snapshotted). Off by default: a redeployment with the same state adopts them again."
  default     = false
}
