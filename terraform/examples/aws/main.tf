# The service on one EC2 host in an existing VPC, snapshots in a new S3 bucket,
# the state in RDS PostgreSQL.
#
#   terraform init
#   export TF_VAR_api_secrets='["'"$(openssl rand -hex 32)"'"]'
#   export TF_VAR_database_password="$(openssl rand -hex 24)"
#   terraform apply -var vpc_id=vpc-... -var subnet_id=subnet-... \
#     -var 'database_subnet_ids=["subnet-...","subnet-..."]' -var 'allowed_cidrs=["203.0.113.0/24"]' \
#     -var api_image=registry.example.com/sandbox-control:1.0 \
#     -var sandbox_image=registry.example.com/sandbox-control-sandbox:1.0

provider "aws" {
  region = var.region
}

module "sandbox_control" {
  source = "../../modules/aws"

  name          = "sandbox-control"
  vpc_id        = var.vpc_id
  subnet_id     = var.subnet_id
  allowed_cidrs = var.allowed_cidrs
  api_image     = var.api_image
  sandbox_image = var.sandbox_image
  api_secrets   = var.api_secrets

  database          = { enabled = true, subnet_ids = var.database_subnet_ids }
  database_password = var.database_password
}
