# Destroy step of the docker-host module, run by `sh -c` from a destroy-time
# local-exec provisioner. Removes, by label, what the stack's compose project created
# on the engine DOCKER_HOST names: its containers and networks, its volumes only when
# REMOVE_VOLUMES=true, and the sandboxes the service started when REMOVE_SANDBOXES=true.
# Labels, not a compose file: this works whatever compose version deployed it, and
# needs none of the (secret) files.
# Input, from the environment: PROJECT, SCOPE, REMOVE_VOLUMES, REMOVE_SANDBOXES.
set -eu

remove() {
    # $1: docker object kind; the rest: ids (none is fine).
    kind=$1
    shift
    [ "$#" -gt 0 ] || return 0
    case "$kind" in
    container) docker rm -f "$@" >/dev/null ;;
    network) docker network rm "$@" >/dev/null ;;
    volume) docker volume rm -f "$@" >/dev/null ;;
    esac
    echo "removed $# ${kind}(s)"
}

project="label=com.docker.compose.project=$PROJECT"
# The service first, so it cannot start new sandboxes (pool refills) meanwhile.
# shellcheck disable=SC2046  # word splitting of ids is intended
remove container $(docker ps -aq --filter "$project")
if [ "$REMOVE_SANDBOXES" = true ]; then
    # shellcheck disable=SC2046
    remove container $(docker ps -aq --filter "label=sandbox-control.docker.scope=$SCOPE")
fi
# shellcheck disable=SC2046
remove network $(docker network ls -q --filter "$project")
if [ "$REMOVE_VOLUMES" = true ]; then
    # shellcheck disable=SC2046
    remove volume $(docker volume ls -q --filter "$project")
fi
