# Deploy step of the docker-host module, run by `sh -c` from a local-exec
# provisioner. Writes the stack's files into a private temporary directory, runs
# their start.sh against the engine DOCKER_HOST names, and removes the files again
# (the env files hold secrets; the engine keeps what the containers need).
# Input, from the environment: STACK_FILE_NAMES (space separated) and, for the
# file at position i in that list, its content in STACK_FILE_<i>.
set -eu
umask 077
dir=$(mktemp -d "${TMPDIR:-/tmp}/sandbox-control-deploy.XXXXXX")
trap 'rm -rf "$dir"' EXIT INT TERM

i=0
for name in $STACK_FILE_NAMES; do
    case "$name" in
    */* | .*) echo "up.sh: refusing file name '$name'" >&2; exit 1 ;;
    esac
    # $i is a number we count: the eval only picks the variable STACK_FILE_<i>.
    eval "content=\${STACK_FILE_$i}"
    printf '%s' "$content" >"$dir/$name"
    i=$((i + 1))
done
chmod 700 "$dir/start.sh"
"$dir/start.sh"
