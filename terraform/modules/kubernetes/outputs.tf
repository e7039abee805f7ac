output "namespace" {
  description = "Namespace of the service and its sandboxes."
  value       = local.namespace
}

output "service_name" {
  description = "The Service in front of the replicas."
  value       = kubernetes_service_v1.api.metadata[0].name
}

output "service_url" {
  description = "The API inside the cluster."
  value       = "http://${kubernetes_service_v1.api.metadata[0].name}.${local.namespace}.svc:${var.service.port}"
}

output "service_account_name" {
  description = "The service's ServiceAccount (bound to the sandbox Role)."
  value       = kubernetes_service_account_v1.api.metadata[0].name
}

output "settings" {
  description = "The service's settings that are not secret, as the pods get them."
  value       = local.plain_env
}
