terraform {
  required_version = ">= 1.3.0"

  required_providers {
    kubernetes = {
      source = "hashicorp/kubernetes"
      # The *_v1 resources used here exist from 2.16 on.
      version = ">= 2.16.0, < 3.0.0"
    }
  }
}
