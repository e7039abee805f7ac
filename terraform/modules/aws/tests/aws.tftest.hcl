# What the aws module creates, against a mock of the aws provider (the provider's
# real schema, no AWS account): the bucket is private, encrypted, versioned and
# aborts incomplete uploads; the security group opens only the API port; the role
# reaches only the bucket; secrets stay sensitive. `terraform test` from the
# module's directory, with the provider installed (a filesystem mirror works).

mock_provider "aws" {
  mock_resource "aws_s3_bucket" {
    defaults = {
      id  = "unit-snapshots-0001"
      arn = "arn:aws:s3:::unit-snapshots-0001"
    }
  }

  mock_resource "aws_security_group" {
    defaults = {
      id = "sg-0123456789abcdef0"
    }
  }

  # AWS reports no public address as "".
  mock_resource "aws_instance" {
    defaults = {
      private_ip = "192.0.2.10"
      public_ip  = ""
    }
  }

  mock_resource "aws_db_instance" {
    defaults = {
      address  = "unit-state.abcdefghijkl.eu-west-1.rds.amazonaws.com"
      port     = 5432
      endpoint = "unit-state.abcdefghijkl.eu-west-1.rds.amazonaws.com:5432"
    }
  }

  mock_data "aws_region" {
    defaults = {
      name = "eu-west-1"
    }
  }

  mock_data "aws_partition" {
    defaults = {
      partition = "aws"
    }
  }

  mock_data "aws_ami" {
    defaults = {
      id = "ami-0123456789abcdef0"
    }
  }
}

variables {
  name          = "unit"
  vpc_id        = "vpc-0123456789abcdef0"
  subnet_id     = "subnet-0123456789abcdef0"
  allowed_cidrs = ["203.0.113.0/24", "2001:db8::/32"]
  api_port      = 8443
  api_image     = "registry.example.com/sandbox-control:1.2.3"
  sandbox_image = "registry.example.com/sandbox-control-sandbox:1.2.3"
  api_secrets   = ["unit-api-secret-0123456789abcdef0123456789"]
}

run "bucket_is_private_encrypted_versioned_and_cleans_up_uploads" {
  assert {
    condition = alltrue([
      aws_s3_bucket_public_access_block.snapshots.block_public_acls,
      aws_s3_bucket_public_access_block.snapshots.block_public_policy,
      aws_s3_bucket_public_access_block.snapshots.ignore_public_acls,
      aws_s3_bucket_public_access_block.snapshots.restrict_public_buckets,
      aws_s3_bucket_public_access_block.snapshots.bucket == "unit-snapshots-0001",
    ])
    error_message = "Every public access of the bucket must be blocked."
  }

  assert {
    # Private: the policy allows nobody anything, and refuses plain HTTP to everyone.
    condition = (
      alltrue([for s in jsondecode(aws_s3_bucket_policy.snapshots.policy).Statement : s.Effect == "Deny"])
      && anytrue([for s in jsondecode(aws_s3_bucket_policy.snapshots.policy).Statement :
      s.Principal == "*" && s.Action == "s3:*" && s.Condition.Bool["aws:SecureTransport"] == "false"])
    )
    error_message = "The bucket policy must only deny (plain HTTP included), never allow."
  }

  assert {
    condition = (
      aws_s3_bucket.snapshots.versioning[0].enabled
      && aws_s3_bucket.snapshots.server_side_encryption_configuration[0].rule[0].apply_server_side_encryption_by_default[0].sse_algorithm == "AES256"
      && aws_s3_bucket.snapshots.force_destroy == false
    )
    error_message = "The bucket must be versioned and encrypted, and kept on destroy while it holds snapshots."
  }

  assert {
    condition = (
      aws_s3_bucket.snapshots.lifecycle_rule[0].enabled
      && aws_s3_bucket.snapshots.lifecycle_rule[0].abort_incomplete_multipart_upload_days == 1
      && aws_s3_bucket.snapshots.lifecycle_rule[0].noncurrent_version_expiration[0].days == 30
    )
    error_message = "Incomplete multipart uploads must be aborted and old versions expired."
  }
}

run "security_group_opens_only_the_api_port" {
  assert {
    condition = (
      aws_security_group_rule.api_in.type == "ingress"
      && aws_security_group_rule.api_in.protocol == "tcp"
      && aws_security_group_rule.api_in.from_port == 8443
      && aws_security_group_rule.api_in.to_port == 8443
      && aws_security_group_rule.api_in.cidr_blocks == tolist(["203.0.113.0/24"])
      && aws_security_group_rule.api_in.ipv6_cidr_blocks == tolist(["2001:db8::/32"])
      && aws_security_group_rule.api_in.security_group_id == aws_security_group.host.id
    )
    error_message = "The one ingress rule must open the API port, TCP, to the given CIDRs."
  }

  assert {
    condition     = aws_security_group_rule.all_out.type == "egress" && length(aws_security_group.host.ingress) == 0
    error_message = "Everything but the API rule must be egress; the group has no inline ingress."
  }

  assert {
    condition     = aws_instance.host.vpc_security_group_ids == toset([aws_security_group.host.id]) && length(aws_security_group.db) == 0
    error_message = "The host has exactly its own security group; no database group without a database."
  }
}

run "host_role_reaches_only_the_bucket" {
  assert {
    condition = alltrue(flatten([for s in jsondecode(aws_iam_role_policy.snapshots.policy).Statement : [
      for r in s.Resource : s.Effect == "Allow" && contains(["arn:aws:s3:::unit-snapshots-0001", "arn:aws:s3:::unit-snapshots-0001/*"], r)
    ]]))
    error_message = "The host's policy may name only the snapshot bucket and its objects."
  }

  assert {
    condition     = aws_iam_instance_profile.host.role == aws_iam_role.host.name && aws_instance.host.iam_instance_profile == aws_iam_instance_profile.host.name
    error_message = "The instance must carry the role through its instance profile."
  }

  assert {
    condition     = !contains(keys(output.service_settings), "S3_ACCESS_KEY") && !strcontains(aws_instance.host.user_data, "S3_ACCESS_KEY")
    error_message = "No static S3 keys on the host: the role's credentials are used."
  }
}

run "host_runs_the_stack_with_imdsv2_and_an_encrypted_disk" {
  assert {
    condition = (
      aws_instance.host.metadata_options[0].http_tokens == "required"
      && aws_instance.host.metadata_options[0].http_put_response_hop_limit == 1
      && aws_instance.host.root_block_device[0].encrypted
      && aws_instance.host.ami == "ami-0123456789abcdef0"
      && aws_instance.host.associate_public_ip_address == false
    )
    error_message = "IMDSv2 with one hop (containers cannot reach it), an encrypted root volume, Debian's AMI, no public IP by default."
  }

  assert {
    condition = alltrue([for line in [
      "S3_BUCKET='unit-snapshots-0001'", "S3_REGION='eu-west-1'", "S3_CREATE_BUCKET='false'", "S3_PATH_STYLE='false'",
      "SANDBOX_PROVIDER='docker'", "SANDBOX_API_SECRET='unit-api-secret-0123456789abcdef0123456789'",
    ] : strcontains(aws_instance.host.user_data, line)])
    error_message = "user_data must carry the service's settings for this bucket."
  }

  assert {
    condition     = issensitive(aws_instance.host.user_data) && !strcontains(jsonencode(output.service_settings), "unit-api-secret")
    error_message = "user_data holds secrets: it must be sensitive, and the plain settings must not hold them."
  }

  assert {
    condition     = output.api_url == "http://192.0.2.10:8443"
    error_message = "Without a public IP the API is named by the private address."
  }
}

run "optional_database_is_private_encrypted_and_used_for_state" {
  variables {
    database          = { enabled = true, subnet_ids = ["subnet-0aaaaaaaaaaaaaaaa", "subnet-0bbbbbbbbbbbbbbbb"] }
    database_password = "unit-db-password-0123456789"
  }

  assert {
    condition = (
      aws_db_instance.state[0].storage_encrypted
      && aws_db_instance.state[0].publicly_accessible == false
      && aws_db_instance.state[0].engine == "postgres"
      && aws_security_group_rule.db_in[0].source_security_group_id == aws_security_group.host.id
      && aws_security_group_rule.db_in[0].from_port == 5432
      && aws_security_group_rule.db_in[0].cidr_blocks == null
    )
    error_message = "The database must be encrypted, private, and reachable from the host's group only."
  }

  assert {
    condition     = strcontains(aws_instance.host.user_data, "SANDBOX_STATE_URL='postgresql+asyncpg://sandbox_control:unit-db-password-0123456789@unit-state.abcdefghijkl.eu-west-1.rds.amazonaws.com:5432/postgres?ssl=require'")
    error_message = "The host must use the database as its state store, over TLS."
  }

  assert {
    condition     = issensitive(aws_db_instance.state[0].password) && output.database_endpoint == "unit-state.abcdefghijkl.eu-west-1.rds.amazonaws.com:5432"
    error_message = "The password stays sensitive; the endpoint is an output."
  }
}

run "refuses_sandboxes_on_the_host_network" {
  command = plan

  variables {
    sandbox_docker_network = "host"
  }

  expect_failures = [var.sandbox_docker_network]
}

run "refuses_a_database_without_a_password" {
  command = plan

  variables {
    database = { enabled = true, subnet_ids = ["subnet-0aaaaaaaaaaaaaaaa", "subnet-0bbbbbbbbbbbbbbbb"] }
  }

  expect_failures = [aws_db_instance.state]
}
