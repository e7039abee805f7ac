# The service's environment, split into what may be shown (plain) and what may not
# (secret). Keeping them apart is what lets the compose file and most outputs stay
# non-sensitive: Terraform refuses a non-sensitive output that is derived from a
# sensitive value, so a secret cannot leak into them by accident.

locals {
  docker   = var.sandbox_provider == "docker"
  minio    = var.minio.enabled
  host_net = var.listen.network_mode == "host"

  # S3 endpoint: the stack's MinIO when it runs one, else what was given.
  s3_endpoint = local.minio ? "http://minio:9000" : try(var.s3.endpoint, null)

  plain_env = merge(
    var.extra_env,
    {
      SANDBOX_PROVIDER            = var.sandbox_provider
      SANDBOX_AUTH_MODE           = var.auth_mode
      SANDBOX_LOG_LEVEL           = var.log_level
      SANDBOX_DATA_DIR            = "/data"
      SANDBOX_INSTANCE_SCOPE      = var.name
      SANDBOX_BASE_IMAGE          = var.sandbox_image
      ALLOWED_CONTROL_PLANE_HOSTS = join(",", var.allowed_control_plane_hosts)
    },
    # Images are pulled by the deployment (pull_sandbox_image), never by the service.
    local.docker ? { SANDBOX_DOCKER_PULL = "never" } : {},
    var.s3 == null ? {} : {
      S3_BUCKET        = var.s3.bucket
      S3_REGION        = var.s3.region
      S3_PATH_STYLE    = tostring(var.s3.path_style)
      S3_CREATE_BUCKET = tostring(var.s3.create_bucket)
    },
    local.s3_endpoint == null ? {} : { S3_ENDPOINT = local.s3_endpoint },
    local.docker && var.sandbox_docker_network != null ? { SANDBOX_DOCKER_NETWORK = var.sandbox_docker_network } : {},
    var.sandbox_provider == "kubernetes" ? { SANDBOX_K8S_NAMESPACE = var.kubernetes_namespace } : {},
  )

  secret_env = merge(
    var.extra_secret_env,
    { SANDBOX_API_SECRET = join(",", var.api_secrets) },
    var.internal_callback_secret == null ? {} : { INTERNAL_CALLBACK_SECRET = var.internal_callback_secret },
    var.s3_credentials == null ? {} : {
      S3_ACCESS_KEY = var.s3_credentials.access_key
      S3_SECRET_KEY = var.s3_credentials.secret_key
    },
    var.state_url == null ? {} : { SANDBOX_STATE_URL = var.state_url },
  )

  environment = merge(local.plain_env, local.secret_env)

  # docker compose and docker-compose v1 both read single-quoted values literally
  # (no ${} interpolation, no escapes); the variables refuse quotes and newlines.
  env_file = join("", [for k in sort(keys(local.environment)) : "${k}='${local.environment[k]}'\n"])
}

locals {
  # Replica i: the service "api" (then "api-2", ...) with its own data volume and port.
  replica_names = [for i in range(var.replicas) : i == 0 ? "api" : "api-${i + 1}"]
  replica_ports = [for i in range(var.replicas) : var.listen.port + i]
  listen_host   = var.listen.bind_address
  # What the health check and the outputs call: a wildcard bind answers on loopback.
  probe_host = contains(["0.0.0.0", "::"], local.listen_host) ? "127.0.0.1" : local.listen_host

  docker_gid = var.docker_gid == null ? "$${DOCKER_GID:?the start script sets DOCKER_GID}" : tostring(var.docker_gid)

  healthcheck = {
    test = ["CMD", "python", "-c", join("; ", [
      "import os, urllib.request",
      "h = os.environ.get('SANDBOX_HOST', '127.0.0.1')",
      "h = '127.0.0.1' if h in ('0.0.0.0', '::', '') else h",
      "urllib.request.urlopen('http://%s:%s/healthz' % (h, os.environ.get('SANDBOX_PORT', '8080')), timeout=4)",
    ])]
    interval     = "10s"
    timeout      = "5s"
    start_period = "20s"
    retries      = 3
  }

  # One literal per service with null for what does not apply, then the nulls
  # dropped: a conditional between two differently shaped objects is a type error.
  api_services_all = {
    for i, svc in local.replica_names : svc => {
      image = var.api_image
      # Without --host: the image's default command binds 0.0.0.0, which on the host
      # network would ignore listen.bind_address; SANDBOX_HOST decides instead.
      command  = ["sandboxctl", "serve"]
      env_file = ["./sandbox-control.env"]
      # Per replica: where it listens. Overrides the env file.
      environment = {
        SANDBOX_HOST = local.host_net ? local.listen_host : "0.0.0.0"
        SANDBOX_PORT = tostring(local.host_net ? local.replica_ports[i] : 8080)
      }
      network_mode = local.host_net ? "host" : null
      ports        = local.host_net ? null : ["${local.listen_host}:${local.replica_ports[i]}:8080"]
      volumes      = concat(["${svc}-data:/data"], local.docker ? ["${var.docker_socket}:/var/run/docker.sock"] : [])
      # SECURITY: the Docker socket grants root-equivalent control of the host; this
      # group (the socket's owner) is what lets the non-root service use it.
      group_add = local.docker ? [local.docker_gid] : null
      depends_on = local.minio ? {
        minio         = { condition = "service_healthy" }
        "bucket-init" = { condition = "service_completed_successfully" }
      } : null
      labels      = { "sandbox-control.deployment" = var.name, "sandbox-control.replica" = tostring(i + 1) }
      healthcheck = local.healthcheck
      restart     = "unless-stopped"
      # The root filesystem stays read-only: the service writes only /data and /tmp.
      read_only    = true
      tmpfs        = ["/tmp"]
      cap_drop     = ["ALL"]
      security_opt = ["no-new-privileges:true"]
    }
  }
  api_services = { for svc, spec in local.api_services_all : svc => { for k, v in spec : k => v if v != null } }

  # MinIO gets an env file of its own (its root credentials = the S3 keys), so the
  # service's secrets never reach it and no secret is written into the compose file.
  minio_services = { for svc, spec in {
    minio = {
      image    = var.minio.image
      env_file = ["./minio.env"]
      command  = ["server", "/data", "--console-address", ":9001"]
      volumes  = ["minio-data:/data"]
      labels   = { "sandbox-control.deployment" = var.name }
      healthcheck = {
        test         = ["CMD", "mc", "ready", "local"]
        interval     = "5s"
        timeout      = "5s"
        start_period = "10s"
        retries      = 10
      }
      restart = "unless-stopped"
    }
    # One-shot: create the snapshot bucket, then exit 0 (the api waits for it).
    "bucket-init" = {
      image      = var.minio.mc_image
      env_file   = ["./minio.env"]
      depends_on = { minio = { condition = "service_healthy" } }
      entrypoint = ["/bin/sh", "-c"]
      command    = ["mc alias set local http://minio:9000 \"$$MINIO_ROOT_USER\" \"$$MINIO_ROOT_PASSWORD\" && mc mb --ignore-existing \"local/$$S3_BUCKET\""]
      labels     = { "sandbox-control.deployment" = var.name }
      restart    = "no"
    }
  } : svc => spec if local.minio }

  compose = {
    services = merge(local.api_services, local.minio_services)
    volumes = merge(
      { for svc in local.replica_names : "${svc}-data" => {} },
      local.minio ? { "minio-data" = {} } : {},
    )
  }

  compose_yaml = join("", [
    "# Rendered by the sandbox-control Terraform module; secrets live in sandbox-control.env.\n",
    yamlencode(local.compose),
  ])

  api_urls = [for p in local.replica_ports : "http://${local.probe_host}:${p}"]
}

locals {
  minio_env_file = local.minio ? join("", [
    "MINIO_ROOT_USER='${try(var.s3_credentials.access_key, "")}'\n",
    "MINIO_ROOT_PASSWORD='${try(var.s3_credentials.secret_key, "")}'\n",
    "S3_BUCKET='${try(var.s3.bucket, "")}'\n",
  ]) : null

  start_script = templatefile("${path.module}/templates/start.sh.tftpl", {
    name               = var.name
    docker             = local.docker
    docker_socket      = var.docker_socket
    api_image          = var.api_image
    sandbox_image      = var.sandbox_image
    pull_sandbox_image = local.docker && var.pull_sandbox_image
  })

  # Files of the stack, by name: those that hold no secret, and those that do.
  files = {
    "compose.yaml" = local.compose_yaml
    "start.sh"     = local.start_script
  }
  secret_files = merge(
    { "sandbox-control.env" = local.env_file },
    local.minio ? { "minio.env" = local.minio_env_file } : {},
  )

  # cloud-init for a fresh Debian or Ubuntu host: Docker from the distribution,
  # the stack's files (env files readable by root only), then start.sh.
  user_data = join("", ["#cloud-config\n", yamlencode({
    package_update = true
    packages       = ["docker.io", "ca-certificates"]
    write_files = concat(
      [for f, content in local.files : {
        path        = "${var.deploy_dir}/${f}"
        content     = content
        owner       = "root:root"
        permissions = f == "start.sh" ? "0755" : "0644"
      }],
      [for f, content in local.secret_files : {
        path        = "${var.deploy_dir}/${f}"
        content     = content
        owner       = "root:root"
        permissions = "0600"
      }],
    )
    runcmd = [
      # Compose v2 where the distribution ships it (Ubuntu), else v1 (Debian 12).
      ["sh", "-c", "DEBIAN_FRONTEND=noninteractive apt-get install -y docker-compose-v2 || DEBIAN_FRONTEND=noninteractive apt-get install -y docker-compose"],
      ["systemctl", "enable", "--now", "docker"],
      ["${var.deploy_dir}/start.sh"],
    ]
  })])
}
