# What the core module renders: the env file holds the given settings, secrets stay
# out of the compose file and the non-sensitive outputs, and the outputs that hold
# secrets are marked sensitive. `terraform test` from the module's directory.

variables {
  name                        = "unit"
  api_secrets                 = ["first-secret-0123456789abcdef0123456789", "second-secret-0123456789abcdef012345678"]
  internal_callback_secret    = "callback-secret-0123456789abcdef01234567"
  allowed_control_plane_hosts = ["cp.example.com", "cp2.example.com:8443"]
  api_image                   = "registry.example.com/sandbox-control:1.2.3"
  sandbox_image               = "registry.example.com/sandbox-control-sandbox:1.2.3"
  s3 = {
    bucket   = "unit-snapshots"
    endpoint = "https://s3.example.com"
    region   = "eu-west-1"
  }
  s3_credentials = {
    access_key = "unit-access-key"
    secret_key = "unit-secret-key-0123456789"
  }
  state_url = "postgresql://svc:db-password-0123456789@db.example.com:5432/sandbox"
  extra_env = { SANDBOX_DEFAULT_TTL_SECONDS = "3600" }
}

run "env_file_holds_the_given_settings" {
  command = plan

  assert {
    condition = alltrue([for line in [
      "SANDBOX_PROVIDER='docker'",
      "SANDBOX_API_SECRET='first-secret-0123456789abcdef0123456789,second-secret-0123456789abcdef012345678'",
      "INTERNAL_CALLBACK_SECRET='callback-secret-0123456789abcdef01234567'",
      "ALLOWED_CONTROL_PLANE_HOSTS='cp.example.com,cp2.example.com:8443'",
      "SANDBOX_BASE_IMAGE='registry.example.com/sandbox-control-sandbox:1.2.3'",
      "SANDBOX_INSTANCE_SCOPE='unit'",
      "SANDBOX_DATA_DIR='/data'",
      "SANDBOX_STATE_URL='postgresql://svc:db-password-0123456789@db.example.com:5432/sandbox'",
      "S3_BUCKET='unit-snapshots'",
      "S3_ENDPOINT='https://s3.example.com'",
      "S3_REGION='eu-west-1'",
      "S3_ACCESS_KEY='unit-access-key'",
      "S3_SECRET_KEY='unit-secret-key-0123456789'",
      "SANDBOX_DEFAULT_TTL_SECONDS='3600'",
    ] : contains(split("\n", output.secret_files["sandbox-control.env"]), line)])
    error_message = "The env file lacks a given setting."
  }

  assert {
    condition     = !contains(keys(output.secret_files), "minio.env")
    error_message = "No MinIO env file without MinIO."
  }
}

run "secrets_are_sensitive_and_kept_out_of_plain_outputs" {
  command = plan

  assert {
    condition     = issensitive(output.secret_files) && issensitive(output.environment) && issensitive(output.secret_environment) && issensitive(output.user_data)
    error_message = "An output holding secrets is not marked sensitive."
  }

  assert {
    condition     = !issensitive(output.compose_yaml) && !issensitive(output.files) && !issensitive(output.plain_environment) && !issensitive(output.start_script)
    error_message = "An output without secrets is marked sensitive (it would hide the stack from plans)."
  }

  assert {
    condition = alltrue([for secret in [
      "first-secret-0123456789abcdef0123456789", "callback-secret-0123456789abcdef01234567",
      "unit-secret-key-0123456789", "db-password-0123456789",
      ] : !strcontains(join("\n", values(output.files)), secret) && !strcontains(jsonencode(output.plain_environment), secret)
    ])
    error_message = "A secret appears in the compose file, start.sh or the plain settings."
  }

  assert {
    condition = (
      output.secret_environment_names == tolist(["INTERNAL_CALLBACK_SECRET", "S3_ACCESS_KEY", "S3_SECRET_KEY", "SANDBOX_API_SECRET", "SANDBOX_STATE_URL"])
      && length(setintersection(keys(output.plain_environment), output.secret_environment_names)) == 0
    )
    error_message = "The secret settings are not exactly the secret variables."
  }
}

run "compose_stack_runs_the_service_with_the_docker_provider" {
  command = plan

  variables {
    replicas = 2
    listen   = { bind_address = "0.0.0.0", port = 9000 }
  }

  assert {
    condition     = keys(yamldecode(output.compose_yaml).services) == ["api", "api-2"]
    error_message = "Two replicas are two api services."
  }

  assert {
    condition = alltrue([for svc, port in { api = 9000, "api-2" = 9001 } : (
      yamldecode(output.compose_yaml).services[svc].image == "registry.example.com/sandbox-control:1.2.3"
      && yamldecode(output.compose_yaml).services[svc].ports == ["0.0.0.0:${port}:8080"]
      && contains(yamldecode(output.compose_yaml).services[svc].volumes, "/var/run/docker.sock:/var/run/docker.sock")
      && contains(yamldecode(output.compose_yaml).services[svc].volumes, "${svc}-data:/data")
      && yamldecode(output.compose_yaml).services[svc].env_file == ["./sandbox-control.env"]
      && yamldecode(output.compose_yaml).services[svc].read_only
      && yamldecode(output.compose_yaml).services[svc].group_add == ["$${DOCKER_GID:?the start script sets DOCKER_GID}"]
    )])
    error_message = "A replica is not wired as expected (image, port, socket, data volume, env file, read-only root, socket group)."
  }

  assert {
    condition     = output.api_urls == ["http://127.0.0.1:9000", "http://127.0.0.1:9001"]
    error_message = "api_urls must name each replica's port."
  }
}

run "host_network_binds_the_given_address" {
  command = plan

  variables {
    listen = { bind_address = "127.0.0.1", port = 18080, network_mode = "host" }
  }

  assert {
    condition = (
      yamldecode(output.compose_yaml).services.api.network_mode == "host"
      && !contains(keys(yamldecode(output.compose_yaml).services.api), "ports")
      && yamldecode(output.compose_yaml).services.api.environment == { SANDBOX_HOST = "127.0.0.1", SANDBOX_PORT = "18080" }
    )
    error_message = "On the host network the service itself must bind listen.bind_address:listen.port."
  }
}

run "minio_in_the_stack_gets_its_own_env_file" {
  command = plan

  variables {
    s3    = { bucket = "unit-snapshots" }
    minio = { enabled = true }
  }

  assert {
    condition = (
      contains(split("\n", output.secret_files["sandbox-control.env"]), "S3_ENDPOINT='http://minio:9000'")
      && output.secret_files["minio.env"] == "MINIO_ROOT_USER='unit-access-key'\nMINIO_ROOT_PASSWORD='unit-secret-key-0123456789'\nS3_BUCKET='unit-snapshots'\n"
      && yamldecode(output.compose_yaml).services.minio.env_file == ["./minio.env"]
      && yamldecode(output.compose_yaml).services.api.depends_on["bucket-init"].condition == "service_completed_successfully"
    )
    error_message = "MinIO must be the S3 endpoint, with the S3 keys as its root credentials in minio.env only."
  }
}

run "user_data_installs_docker_and_starts_the_stack" {
  command = plan

  assert {
    condition = (
      startswith(output.user_data, "#cloud-config\n")
      && contains(yamldecode(output.user_data).packages, "docker.io")
      && yamldecode(output.user_data).runcmd[length(yamldecode(output.user_data).runcmd) - 1] == ["/opt/sandbox-control/start.sh"]
    )
    error_message = "user_data must install Docker and end by running start.sh."
  }

  assert {
    condition = alltrue([for f in yamldecode(output.user_data).write_files : (
      f.permissions == (endswith(f.path, ".env") ? "0600" : (endswith(f.path, ".sh") ? "0755" : "0644"))
    )])
    error_message = "Env files must be readable by root only."
  }

  assert {
    condition     = contains([for f in yamldecode(output.user_data).write_files : f.content if f.path == "/opt/sandbox-control/sandbox-control.env"], output.secret_files["sandbox-control.env"])
    error_message = "user_data must carry the rendered env file."
  }
}

run "refuses_a_short_api_secret" {
  command = plan

  variables {
    api_secrets = ["too-short"]
  }

  expect_failures = [var.api_secrets]
}

run "refuses_a_placeholder_api_secret" {
  command = plan

  variables {
    api_secrets = ["0123456789abcdef0123456789abcdef", "changeme"]
  }

  expect_failures = [var.api_secrets]
}

run "refuses_replicas_without_a_shared_state_store" {
  command = plan

  variables {
    replicas  = 2
    state_url = null
  }

  expect_failures = [output.secret_files]
}

run "refuses_minio_on_the_host_network" {
  command = plan

  variables {
    s3     = { bucket = "unit-snapshots" }
    minio  = { enabled = true }
    listen = { network_mode = "host" }
  }

  expect_failures = [output.compose_yaml]
}
