# The host: Debian (by default) with Docker, the stack started by cloud-init from
# the core module's user_data.

data "aws_ami" "debian" {
  count       = var.ami_id == null ? 1 : 0
  most_recent = true
  owners      = ["136693071363"] # Debian's own AWS account

  filter {
    name   = "name"
    values = ["debian-12-amd64-*"]
  }

  filter {
    name   = "architecture"
    values = ["x86_64"]
  }
}

resource "aws_instance" "host" {
  ami                         = coalesce(var.ami_id, try(data.aws_ami.debian[0].id, null))
  instance_type               = var.instance_type
  subnet_id                   = var.subnet_id
  vpc_security_group_ids      = [aws_security_group.host.id]
  iam_instance_profile        = aws_iam_instance_profile.host.name
  associate_public_ip_address = var.associate_public_ip
  key_name                    = var.key_name
  monitoring                  = true
  ebs_optimized               = true
  # Holds the env file, so it is sensitive. On aws 3.x a change replaces the
  # instance; keep the state in RDS (database.enabled) when that matters.
  user_data = module.config.user_data
  tags      = merge(local.tags, { Name = var.name })

  # IMDSv2 only, one hop: the service (on the host network) gets the role's
  # credentials; containers on a Docker bridge (the sandboxes) are one hop too far.
  metadata_options {
    http_endpoint               = "enabled"
    http_tokens                 = "required"
    http_put_response_hop_limit = 1
  }

  root_block_device {
    volume_type           = "gp3"
    volume_size           = var.root_volume_size_gb
    encrypted             = true
    delete_on_termination = true
  }

  lifecycle {
    # A newer Debian AMI must not replace a running host; a new host picks it up.
    ignore_changes = [ami]
  }
}
