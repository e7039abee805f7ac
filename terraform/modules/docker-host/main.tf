# Deploys the stack with the docker CLI through two terraform_data resources:
#
# - `project` is the deployment's identity (engine + project name). Its destroy-time
#   provisioner removes the stack by label, so only destroying the deployment (or
#   moving it) takes it down.
# - `stack` carries the files. Any change replaces it, and its create-time
#   provisioner runs start.sh again: `compose up -d` recreates only the containers
#   whose configuration changed. It has no destroy step, so an update never takes
#   the stack down first.

locals {
  file_names = concat(sort(keys(var.files)), sort(keys(var.secret_files)))
  # Positional, because file names (compose.yaml) are not valid variable names.
  file_env = merge(
    { for i, f in sort(keys(var.files)) : "STACK_FILE_${i}" => var.files[f] },
    { for i, f in sort(keys(var.secret_files)) : "STACK_FILE_${i + length(var.files)}" => var.secret_files[f] },
  )
  engine_env = var.docker_host == null ? {} : { DOCKER_HOST = var.docker_host }
}

resource "terraform_data" "project" {
  triggers_replace = [var.docker_host, var.project_name]

  # In input (not triggers) so that changing a flag updates it in place.
  input = {
    docker_host      = var.docker_host == null ? "" : var.docker_host
    project          = var.project_name
    scope            = coalesce(var.sandbox_scope, var.project_name)
    remove_volumes   = var.remove_volumes
    remove_sandboxes = var.remove_sandboxes
  }

  provisioner "local-exec" {
    when        = destroy
    interpreter = ["/bin/sh", "-c"]
    # The script travels in the environment, so the log shows one line, not its text.
    command = "exec /bin/sh -c \"$STEP_SCRIPT\" down.sh"
    environment = merge(
      self.input.docker_host == "" ? {} : { DOCKER_HOST = self.input.docker_host },
      {
        STEP_SCRIPT      = file("${path.module}/scripts/down.sh")
        PROJECT          = self.input.project
        SCOPE            = self.input.scope
        REMOVE_VOLUMES   = tostring(self.input.remove_volumes)
        REMOVE_SANDBOXES = tostring(self.input.remove_sandboxes)
      },
    )
  }
}

resource "terraform_data" "stack" {
  # A digest, so the plan shows that the files changed without showing them.
  triggers_replace = [
    sha256(jsonencode(var.files)),
    sha256(jsonencode(var.secret_files)),
    terraform_data.project.id,
  ]

  provisioner "local-exec" {
    interpreter = ["/bin/sh", "-c"]
    command     = "exec /bin/sh -c \"$STEP_SCRIPT\" up.sh"
    # Secret content here makes Terraform suppress the provisioner's output.
    environment = merge(local.engine_env, local.file_env, {
      STEP_SCRIPT      = file("${path.module}/scripts/up.sh")
      STACK_FILE_NAMES = join(" ", local.file_names)
    })
  }
}
