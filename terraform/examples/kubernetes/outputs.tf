output "service_url" {
  description = "The API inside the cluster (point an Ingress with TLS at it)."
  value       = module.sandbox_control.service_url
}
