# Only the named sources reach the API port. Sandbox pods share the namespace but
# match none of the sources, so agent code cannot call the service directly.

resource "kubernetes_network_policy_v1" "api" {
  metadata {
    name      = "${var.name}-api"
    namespace = local.namespace
    labels    = local.labels
  }

  spec {
    pod_selector {
      match_labels = local.selector
    }
    policy_types = ["Ingress"]

    ingress {
      ports {
        port     = "8080"
        protocol = "TCP"
      }

      dynamic "from" {
        for_each = var.ingress_from.cidrs
        content {
          ip_block {
            cidr = from.value
          }
        }
      }

      dynamic "from" {
        for_each = var.ingress_from.namespace_labels
        content {
          namespace_selector {
            match_labels = from.value
          }
        }
      }

      dynamic "from" {
        for_each = var.ingress_from.pod_labels
        content {
          pod_selector {
            match_labels = from.value
          }
        }
      }
    }
  }
}
