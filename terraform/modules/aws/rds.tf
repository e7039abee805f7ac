# Optional RDS PostgreSQL for the state store, reachable from the host's security
# group only, encrypted, TLS enforced.
#
# Written so that aws 3.39 and 5.x both accept it: no database name argument (3.x
# calls it `name`, 5.x `db_name`); the service uses the `postgres` database that
# every RDS PostgreSQL instance has. storage_type is left to the default, since
# 3.39 does not know gp3 for RDS.

locals {
  db_enabled = var.database.enabled
  db_family  = "postgres${split(".", var.database.engine_version)[0]}"
}

resource "aws_db_subnet_group" "state" {
  count       = local.db_enabled ? 1 : 0
  name_prefix = "${var.name}-state-"
  description = "sandbox-control ${var.name} state store"
  subnet_ids  = var.database.subnet_ids
  tags        = local.tags
}

resource "aws_security_group" "db" {
  count       = local.db_enabled ? 1 : 0
  name_prefix = "${var.name}-db-"
  description = "sandbox-control ${var.name} state store: PostgreSQL from the host only"
  vpc_id      = var.vpc_id
  tags        = local.tags

  lifecycle {
    create_before_destroy = true
  }
}

resource "aws_security_group_rule" "db_in" {
  count                    = local.db_enabled ? 1 : 0
  type                     = "ingress"
  description              = "PostgreSQL from the sandbox-control host"
  security_group_id        = aws_security_group.db[0].id
  protocol                 = "tcp"
  from_port                = 5432
  to_port                  = 5432
  source_security_group_id = aws_security_group.host.id
}

resource "aws_db_parameter_group" "state" {
  count       = local.db_enabled ? 1 : 0
  name_prefix = "${var.name}-state-"
  family      = local.db_family
  description = "sandbox-control ${var.name}: TLS only, statement logging for DDL"
  tags        = local.tags

  parameter {
    name  = "rds.force_ssl"
    value = "1"
  }

  parameter {
    name  = "log_statement"
    value = "ddl"
  }

  parameter {
    name  = "log_min_duration_statement"
    value = "1000"
  }

  lifecycle {
    create_before_destroy = true
  }
}

resource "aws_db_instance" "state" {
  # checkov:skip=CKV_AWS_118:Enhanced monitoring needs a monitoring role this module would have to own; Performance Insights and CloudWatch logs are on.
  # checkov:skip=CKV_AWS_157:Multi-AZ doubles the cost; it is database.multi_az, off by default (the state is small and backed up daily).
  # checkov:skip=CKV_AWS_293:deletion_protection is database.deletion_protection, true by default; checkov does not evaluate optional() attribute defaults.
  # checkov:skip=CKV_AWS_133:backup_retention_period is database.backup_retention_days, 7 by default; checkov does not evaluate optional() attribute defaults.
  # checkov:skip=CKV_AWS_353:performance_insights_enabled is database.performance_insights, true by default; checkov does not evaluate optional() attribute defaults.
  # checkov:skip=CKV_AWS_354:Performance Insights data uses the AWS managed key; a customer key would be another input most deployments do not need.
  count                               = local.db_enabled ? 1 : 0
  identifier_prefix                   = "${var.name}-state-"
  engine                              = "postgres"
  engine_version                      = var.database.engine_version
  instance_class                      = var.database.instance_class
  allocated_storage                   = var.database.allocated_storage_gb
  max_allocated_storage               = var.database.max_storage_gb
  storage_encrypted                   = true
  username                            = var.database.username
  password                            = var.database_password
  db_subnet_group_name                = aws_db_subnet_group.state[0].name
  vpc_security_group_ids              = [aws_security_group.db[0].id]
  parameter_group_name                = aws_db_parameter_group.state[0].name
  publicly_accessible                 = false
  multi_az                            = var.database.multi_az
  backup_retention_period             = var.database.backup_retention_days
  deletion_protection                 = var.database.deletion_protection
  skip_final_snapshot                 = false
  final_snapshot_identifier           = "${var.name}-state-final"
  copy_tags_to_snapshot               = true
  auto_minor_version_upgrade          = true
  iam_database_authentication_enabled = true
  performance_insights_enabled        = var.database.performance_insights
  enabled_cloudwatch_logs_exports     = ["postgresql", "upgrade"]
  tags                                = local.tags

  lifecycle {
    precondition {
      condition     = nonsensitive(var.database_password != null)
      error_message = "database.enabled needs database_password."
    }
  }
}
