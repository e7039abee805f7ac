variable "region" {
  type        = string
  description = "AWS region."
  default     = "us-east-1"
}

variable "vpc_id" {
  type        = string
  description = "VPC to deploy into."
}

variable "subnet_id" {
  type        = string
  description = "Subnet of the host (with a route out, for image pulls)."
}

variable "database_subnet_ids" {
  type        = list(string)
  description = "Two or more private subnets (different AZs) for the database."
}

variable "allowed_cidrs" {
  type        = list(string)
  description = "Who may reach the API port."
}

variable "api_image" {
  type        = string
  description = "The service's image in your registry."
}

variable "sandbox_image" {
  type        = string
  description = "The sandbox image in your registry."
}

variable "api_secrets" {
  type        = list(string)
  description = "API secrets, 32+ bytes each (TF_VAR_api_secrets)."
  sensitive   = true
}

variable "database_password" {
  type        = string
  description = "Database master password, 16+ URL-safe characters (TF_VAR_database_password)."
  sensitive   = true
}
