output "api_url" {
  description = "The API on the host."
  value       = module.config.api_urls[0]
}

output "project_name" {
  description = "Compose project of the stack (docker ps --filter label=com.docker.compose.project=<this>)."
  value       = module.docker.project_name
}
