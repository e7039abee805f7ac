output "instance_id" {
  description = "The host's EC2 instance id (aws ssm start-session --target <this>)."
  value       = aws_instance.host.id
}

output "private_ip" {
  description = "The host's private IPv4 address."
  value       = aws_instance.host.private_ip
}

output "public_ip" {
  description = "The host's public IPv4 address (empty without associate_public_ip)."
  value       = aws_instance.host.public_ip
}

output "api_url" {
  description = "The API (plain HTTP on api_port), by the public address when there is one."
  value       = "http://${coalesce(aws_instance.host.public_ip, aws_instance.host.private_ip)}:${var.api_port}"
}

output "bucket_name" {
  description = "The snapshot bucket."
  value       = aws_s3_bucket.snapshots.id
}

output "bucket_arn" {
  description = "ARN of the snapshot bucket."
  value       = aws_s3_bucket.snapshots.arn
}

output "role_arn" {
  description = "The host's IAM role (its only permissions: the snapshot bucket, and SSM when enabled)."
  value       = aws_iam_role.host.arn
}

output "security_group_id" {
  description = "The host's security group (add rules, e.g. from a load balancer)."
  value       = aws_security_group.host.id
}

output "database_endpoint" {
  description = "address:port of the state database; null without one."
  value       = local.db_enabled ? aws_db_instance.state[0].endpoint : null
}

output "service_settings" {
  description = "The service's settings that are not secret, as the host runs them."
  value       = module.config.plain_environment
}
