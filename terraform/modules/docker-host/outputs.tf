output "project_name" {
  description = "The compose project deployed; its containers carry the label com.docker.compose.project=<this>."
  value       = var.project_name
}

output "deployment_id" {
  description = "Changes whenever the stack is redeployed (new files)."
  value       = terraform_data.stack.id
}
