#!/usr/bin/env bash
# Bring up a Docker Engine and the images the test suite needs. Idempotent.
#
#   1. install docker.io, docker-compose (+ debootstrap) when root and missing;
#   2. start dockerd (--bridge=none --iptables=false) when no engine answers;
#   3. make debian:bookworm-slim locally (debootstrap + docker import) when missing,
#      because no image can be pulled from a registry here; the rootfs tarball is
#      cached so a second run after `docker image rm` is fast;
#   4. build our two images (control service, sandbox) with the layer cache.
#
# Never pulls from a registry. Exits non-zero with a reason when the engine
# cannot be had. Environment knobs (all optional):
#   SANDBOX_TEST_CACHE        cache dir (default <repo>/.test-cache)
#   SANDBOX_DOCKER_DATA_ROOT  data-root of a dockerd we start (default: the
#                             engine's own, /var/lib/docker, so images survive
#                             a fresh clone of the work tree)
#   SANDBOX_DOCKER_BUILD      0 = skip step 4 (only engine + base image)
#   SANDBOX_API_IMAGE / SANDBOX_SANDBOX_IMAGE  tags of our images
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CACHE=${SANDBOX_TEST_CACHE:-$ROOT/.test-cache}/docker
BASE_IMAGE=debian:bookworm-slim
API_IMAGE=${SANDBOX_API_IMAGE:-sandbox-control:dev}
SANDBOX_IMAGE=${SANDBOX_SANDBOX_IMAGE:-sandbox-control-sandbox:dev}
ENGINE_WAIT_SECONDS=60
# The docker CLI may be newer than the engine and lack the buildx plugin:
# the classic builder is what works everywhere (and supports --network host).
export DOCKER_BUILDKIT=0

say() { printf 'docker-setup: %s\n' "$*"; }
die() { printf 'docker-setup: ERROR: %s\n' "$*" >&2; exit 1; }
is_root() { [ "$(id -u)" -eq 0 ]; }
engine_answers() { timeout 10 docker info >/dev/null 2>&1; }

mkdir -p "$CACHE"
# Serialise concurrent runs (several `make test` at once must not race dockerd).
exec 9>"$CACHE/setup.lock"
flock -w 900 9 || die "another docker-setup run holds $CACHE/setup.lock"

apt_install() {
    is_root || die "missing $* and not root: install them (apt-get install $*) or start an engine"
    command -v apt-get >/dev/null || die "missing $* and no apt-get on this system"
    say "installing $* (apt-get)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q --no-install-recommends "$@" >"$CACHE/apt.log" 2>&1 || {
        apt-get update -q >>"$CACHE/apt.log" 2>&1
        apt-get install -y -q --no-install-recommends "$@" >>"$CACHE/apt.log" 2>&1
    } || die "apt-get install $* failed; see $CACHE/apt.log"
}

# --- 1. binaries -------------------------------------------------------------
if ! command -v docker >/dev/null || { [ -z "${DOCKER_HOST:-}" ] && ! command -v dockerd >/dev/null; }; then
    apt_install docker.io
else
    say "docker binaries present ($(docker --version))"
fi

# The compose tests validate docker-compose.yml with the real tool.
if ! docker compose version >/dev/null 2>&1 && ! command -v docker-compose >/dev/null; then
    if is_root && command -v apt-get >/dev/null; then
        apt_install docker-compose
    else
        say "docker compose is missing (apt-get install docker-compose): the compose tests will skip"
    fi
fi

# --- 2. engine ---------------------------------------------------------------
if engine_answers; then
    say "engine answers ($(docker version --format '{{.Server.Version}}' 2>/dev/null || echo '?'))"
else
    if [ -n "${DOCKER_HOST:-}" ]; then
        die "DOCKER_HOST=$DOCKER_HOST does not answer; start that engine or unset DOCKER_HOST"
    fi
    is_root || die "no Docker Engine answers and only root can start dockerd here"
    pidfile=$CACHE/dockerd.pid
    log=$CACHE/dockerd.log
    args=(--bridge=none --iptables=false --ip-masq=false --pidfile "$pidfile")
    if [ -n "${SANDBOX_DOCKER_DATA_ROOT:-}" ]; then
        mkdir -p "$SANDBOX_DOCKER_DATA_ROOT"
        args+=(--data-root "$SANDBOX_DOCKER_DATA_ROOT")
    fi
    if [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
        say "dockerd pid $(cat "$pidfile") is running but not answering yet; waiting"
    else
        rm -f "$pidfile"
        say "starting dockerd ${args[*]} (log $log)"
        # setsid: the engine outlives this script and its terminal; 9>&-: it must not
        # inherit (and so hold forever) the setup lock.
        setsid dockerd "${args[@]}" >>"$log" 2>&1 </dev/null 9>&- &
    fi
    deadline=$((SECONDS + ENGINE_WAIT_SECONDS))
    until engine_answers; do
        if [ "$SECONDS" -ge "$deadline" ]; then
            tail -n 20 "$log" >&2 2>/dev/null || true
            die "dockerd did not answer within ${ENGINE_WAIT_SECONDS}s; see $log"
        fi
        if [ -f "$pidfile" ] && ! kill -0 "$(cat "$pidfile")" 2>/dev/null; then
            tail -n 20 "$log" >&2 2>/dev/null || true
            die "dockerd exited during start; see $log"
        fi
        sleep 0.5
    done
    say "dockerd pid $(cat "$pidfile" 2>/dev/null || echo '?') answers (log $log)"
fi

# --- 3. base image -----------------------------------------------------------
# The first apt mirror this host uses, so the rootfs fetches from where apt does.
host_mirror() {
    local uri=""
    if [ -f /etc/apt/sources.list.d/debian.sources ]; then
        uri=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources)
    fi
    if [ -z "$uri" ] && [ -f /etc/apt/sources.list ]; then
        uri=$(awk '$1 == "deb" && $0 !~ /security/ {for (i = 2; i <= NF; i++) if ($i ~ /:\/\//) {print $i; exit}}' \
            /etc/apt/sources.list)
    fi
    printf '%s' "$uri"
}

make_rootfs_tarball() {
    local tarball=$1 dir=$CACHE/rootfs mirror
    command -v debootstrap >/dev/null || apt_install debootstrap
    is_root || die "debootstrap needs root"
    mirror=$(host_mirror)
    rm -rf "$dir"
    say "debootstrap --variant=minbase bookworm ${mirror:-<default mirror>} (a few minutes, once)"
    # shellcheck disable=SC2086  # an empty mirror means debootstrap's default
    debootstrap --variant=minbase bookworm "$dir" $mirror >"$CACHE/debootstrap.log" 2>&1 \
        || die "debootstrap failed; see $CACHE/debootstrap.log"
    # Keep the host's apt sources and fetch settings so `apt-get` in our Dockerfiles
    # reaches the same mirror (e.g. a snapshot whose Release files look expired).
    if [ -f /etc/apt/sources.list.d/debian.sources ]; then
        cp /etc/apt/sources.list.d/debian.sources "$dir/etc/apt/sources.list.d/"
        : >"$dir/etc/apt/sources.list"
    fi
    grep -lsE '^Acquire::Check-(Valid-Until|Date)' /etc/apt/apt.conf.d/* | while read -r f; do
        grep -E '^Acquire::Check-(Valid-Until|Date)' "$f" >>"$dir/etc/apt/apt.conf.d/99host-fetch"
    done
    # "slim": what the official image drops (docs, man pages, locales, caches).
    cat >"$dir/etc/dpkg/dpkg.cfg.d/docker-slim" <<'EOF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-include /usr/share/locale/locale.alias
EOF
    printf 'APT::Install-Recommends "false";\n' >"$dir/etc/apt/apt.conf.d/docker-no-recommends"
    find "$dir/usr/share/doc" -mindepth 2 ! -name copyright ! -type d -delete 2>/dev/null || true
    rm -rf "$dir/usr/share/man"/* "$dir/usr/share/info"/* "$dir/var/cache/apt"/*.bin \
        "$dir/var/cache/apt/archives"/*.deb "$dir/var/lib/apt/lists"/* "$dir/var/log"/*.log
    find "$dir/usr/share/locale" -mindepth 1 -maxdepth 1 ! -name locale.alias -exec rm -rf {} +
    tar --numeric-owner -C "$dir" -cf "$tarball.tmp" .
    mv "$tarball.tmp" "$tarball"
    rm -rf "$dir"
}

if docker image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
    say "$BASE_IMAGE present"
else
    tarball=$CACHE/bookworm-minbase.tar
    if [ -s "$tarball" ]; then
        say "using cached rootfs $tarball"
    else
        make_rootfs_tarball "$tarball"
    fi
    say "docker import $BASE_IMAGE"
    docker import --change 'CMD ["bash"]' --message "debootstrap --variant=minbase bookworm" \
        "$tarball" "$BASE_IMAGE" >/dev/null
fi

# --- 4. our images -----------------------------------------------------------
if [ "${SANDBOX_DOCKER_BUILD:-1}" = "0" ]; then
    say "SANDBOX_DOCKER_BUILD=0: not building $API_IMAGE / $SANDBOX_IMAGE"
    exit 0
fi

# An egress proxy that intercepts TLS needs its CA inside the build steps that
# fetch from package registries; passed as a build arg, never left in the image.
extra_ca=""
for f in /usr/local/share/ca-certificates/*.crt; do
    [ -f "$f" ] && extra_ca+=$(cat "$f")$'\n'
done

build() {
    local tag=$1 dockerfile=$2 started=$SECONDS
    say "docker build -t $tag -f $dockerfile (log $CACHE/build-${dockerfile}.log)"
    docker build --network host --pull=false -t "$tag" -f "$ROOT/$dockerfile" \
        --build-arg "EXTRA_CA_CERTS=$extra_ca" "$ROOT" >"$CACHE/build-${dockerfile}.log" 2>&1 || {
        tail -n 30 "$CACHE/build-${dockerfile}.log" >&2
        die "building $tag failed; see $CACHE/build-${dockerfile}.log"
    }
    say "built $tag in $((SECONDS - started))s ($(docker image inspect -f '{{.Size}}' "$tag" | awk '{printf "%.0f MB", $1/1e6}'))"
}
build "$API_IMAGE" Dockerfile
build "$SANDBOX_IMAGE" Dockerfile.sandbox
# Superseded builds of our images only (their label), never anyone else's.
docker image prune -f --filter label=sandbox-control.image >/dev/null 2>&1 || true
say "ready"
