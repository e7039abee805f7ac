# The host's security group opens the API port to the given CIDRs and nothing
# else inbound. Rules are separate resources (not inline blocks) so the tests and
# operators can see each one.

locals {
  allowed_ipv4 = [for c in var.allowed_cidrs : c if length(regexall(":", c)) == 0]
  allowed_ipv6 = [for c in var.allowed_cidrs : c if length(regexall(":", c)) > 0]
}

resource "aws_security_group" "host" {
  name_prefix = "${var.name}-host-"
  description = "sandbox-control host ${var.name}: the API port from the allowed CIDRs only"
  vpc_id      = var.vpc_id
  tags        = local.tags

  lifecycle {
    create_before_destroy = true
  }
}

resource "aws_security_group_rule" "api_in" {
  type              = "ingress"
  description       = "sandbox-control API"
  security_group_id = aws_security_group.host.id
  protocol          = "tcp"
  from_port         = var.api_port
  to_port           = var.api_port
  cidr_blocks       = length(local.allowed_ipv4) > 0 ? local.allowed_ipv4 : null
  ipv6_cidr_blocks  = length(local.allowed_ipv6) > 0 ? local.allowed_ipv6 : null
}

resource "aws_security_group_rule" "all_out" {
  # checkov:skip=CKV_AWS_382:Sandboxes clone repositories, install packages and reach their control plane over the internet, and the host pulls images; outbound cannot be narrowed to known addresses.
  type              = "egress"
  description       = "Outbound: image pulls, git clones, control planes, AWS APIs"
  security_group_id = aws_security_group.host.id
  protocol          = "-1"
  from_port         = 0
  to_port           = 0
  cidr_blocks       = ["0.0.0.0/0"]
  ipv6_cidr_blocks  = ["::/0"]
}
