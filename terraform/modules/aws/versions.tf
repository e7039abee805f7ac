terraform {
  required_version = ">= 1.3.0"

  required_providers {
    aws = {
      source = "hashicorp/aws"
      # Written for 3.39 through 5.x. 4.0.0-4.8.0 made the inline versioning,
      # server_side_encryption_configuration and lifecycle_rule of aws_s3_bucket
      # read-only (4.9.0 restored them), so those releases are excluded; 6.0 is not
      # claimed until it is tried.
      version = ">= 3.39.0, != 4.0.0, != 4.1.0, != 4.2.0, != 4.3.0, != 4.4.0, != 4.5.0, != 4.6.0, != 4.7.0, != 4.8.0, < 6.0.0"
    }
  }
}
