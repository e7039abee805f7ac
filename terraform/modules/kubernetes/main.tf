# The service on a cluster: a Deployment of replicas sharing one PostgreSQL and
# one bucket, sandboxes as pods in the same namespace (the kubernetes provider),
# a Service, and the Secret holding the settings that are secret. The settings
# themselves come from the core module, so every deployment renders them alike.

module "config" {
  source = "../sandbox-control"

  name                        = var.name
  sandbox_provider            = "kubernetes"
  kubernetes_namespace        = var.namespace
  api_secrets                 = var.api_secrets
  internal_callback_secret    = var.internal_callback_secret
  allowed_control_plane_hosts = var.allowed_control_plane_hosts
  api_image                   = var.api_image
  sandbox_image               = var.sandbox_image
  replicas                    = var.replicas
  state_url                   = var.state_url
  s3                          = var.s3
  s3_credentials              = var.s3_credentials
  extra_env                   = var.extra_env
  extra_secret_env            = var.extra_secret_env
}

locals {
  namespace = var.create_namespace ? kubernetes_namespace_v1.this[0].metadata[0].name : var.namespace
  selector = {
    "app.kubernetes.io/name"     = "sandbox-control"
    "app.kubernetes.io/instance" = var.name
  }
  labels = merge(local.selector, {
    "app.kubernetes.io/component"  = "api"
    "app.kubernetes.io/managed-by" = "terraform"
  })

  plain_env = merge(module.config.plain_environment, {
    SANDBOX_HOST           = "0.0.0.0"
    SANDBOX_PORT           = "8080"
    SANDBOX_K8S_IN_CLUSTER = "true"
  })

  # Rolls the pods when a secret setting changes (the Secret alone would not).
  # A digest of random 32-byte secrets reveals nothing about them.
  secret_digest = nonsensitive(sha256(jsonencode(module.config.secret_environment)))
}

resource "kubernetes_namespace_v1" "this" {
  count = var.create_namespace ? 1 : 0

  metadata {
    name   = var.namespace
    labels = { "app.kubernetes.io/managed-by" = "terraform" }
  }
}

resource "kubernetes_secret_v1" "settings" {
  metadata {
    name      = "${var.name}-settings"
    namespace = local.namespace
    labels    = local.labels
  }

  data = module.config.secret_environment
}

resource "kubernetes_deployment_v1" "api" {
  # checkov:skip=CKV_K8S_14:The image is var.api_image, whose validation refuses references without a fixed tag and :latest; static analysis cannot see the value.
  # checkov:skip=CKV_K8S_43:A fixed tag is accepted (validated); pass api_image with @sha256: to pin a digest, as the README advises.
  # checkov:skip=CKV_K8S_35:The service reads its settings (pydantic-settings) from environment variables only; the values come from a Secret through envFrom, never from the pod spec.
  metadata {
    name      = var.name
    namespace = local.namespace
    labels    = local.labels
  }

  spec {
    replicas = var.replicas

    selector {
      match_labels = local.selector
    }

    strategy {
      type = "RollingUpdate"
      rolling_update {
        max_unavailable = "0"
        max_surge       = "1"
      }
    }

    template {
      metadata {
        labels      = local.labels
        annotations = { "sandbox-control/settings-digest" = local.secret_digest }
      }

      spec {
        service_account_name = kubernetes_service_account_v1.api.metadata[0].name
        # The service talks to the Kubernetes API with this account's token.
        automount_service_account_token = true
        node_selector                   = var.node_selector

        security_context {
          run_as_non_root = true
          run_as_user     = 10001
          run_as_group    = 10001
          fs_group        = 10001
          seccomp_profile {
            type = "RuntimeDefault"
          }
        }

        affinity {
          pod_anti_affinity {
            preferred_during_scheduling_ignored_during_execution {
              weight = 100
              pod_affinity_term {
                topology_key = "kubernetes.io/hostname"
                label_selector {
                  match_labels = local.selector
                }
              }
            }
          }
        }

        container {
          name              = "api"
          image             = var.api_image
          image_pull_policy = var.image_pull_policy
          args              = ["sandboxctl", "serve"]

          port {
            name           = "http"
            container_port = 8080
            protocol       = "TCP"
          }

          dynamic "env" {
            for_each = local.plain_env
            content {
              name  = env.key
              value = env.value
            }
          }

          env_from {
            secret_ref {
              name = kubernetes_secret_v1.settings.metadata[0].name
            }
          }

          liveness_probe {
            http_get {
              path = "/healthz"
              port = "http"
            }
            initial_delay_seconds = 10
            period_seconds        = 10
            timeout_seconds       = 5
            failure_threshold     = 3
          }

          # Ready only when the state store, the bucket and the cluster API answer.
          readiness_probe {
            http_get {
              path = "/readyz"
              port = "http"
            }
            period_seconds    = 5
            timeout_seconds   = 5
            failure_threshold = 2
          }

          resources {
            requests = {
              cpu    = var.resources.requests.cpu
              memory = var.resources.requests.memory
            }
            limits = {
              cpu    = var.resources.limits.cpu
              memory = var.resources.limits.memory
            }
          }

          security_context {
            run_as_non_root            = true
            run_as_user                = 10001
            allow_privilege_escalation = false
            read_only_root_filesystem  = true
            privileged                 = false
            capabilities {
              drop = ["ALL"]
            }
          }

          volume_mount {
            name       = "data"
            mount_path = "/data"
          }

          volume_mount {
            name       = "tmp"
            mount_path = "/tmp"
          }
        }

        # Scratch only: state and snapshots live in PostgreSQL and the bucket.
        volume {
          name = "data"
          empty_dir {}
        }

        volume {
          name = "tmp"
          empty_dir {}
        }
      }
    }
  }
}

resource "kubernetes_service_v1" "api" {
  metadata {
    name      = var.name
    namespace = local.namespace
    labels    = local.labels
  }

  spec {
    type     = var.service.type
    selector = local.selector

    port {
      name        = "http"
      port        = var.service.port
      target_port = "http"
      protocol    = "TCP"
    }
  }
}

resource "kubernetes_pod_disruption_budget_v1" "api" {
  count = var.replicas > 1 ? 1 : 0

  metadata {
    name      = var.name
    namespace = local.namespace
    labels    = local.labels
  }

  spec {
    max_unavailable = "1"
    selector {
      match_labels = local.selector
    }
  }
}
