terraform {
  # terraform_data is built in from 1.4; no provider is needed (the docker CLI does the work).
  required_version = ">= 1.4.0"
}
