output "api_url" {
  description = "The API (plain HTTP; front it with TLS)."
  value       = module.sandbox_control.api_url
}

output "bucket_name" {
  description = "The snapshot bucket."
  value       = module.sandbox_control.bucket_name
}

output "instance_id" {
  description = "The host (aws ssm start-session --target <this>)."
  value       = module.sandbox_control.instance_id
}
