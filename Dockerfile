# The control service image: `sandboxctl serve` as a non-root user.
# Build: docker build --network host -t sandbox-control:dev .   (see scripts/docker-setup.sh)
FROM debian:bookworm-slim

ENV LANG=C.UTF-8 \
    DEBIAN_FRONTEND=noninteractive \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1

RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates python3 python3-venv tini \
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin

RUN useradd --system --create-home --uid 10001 --user-group --shell /usr/sbin/nologin sandboxctl \
 && install -d -o sandboxctl -g sandboxctl /data

# TLS-intercepting egress proxies: their CA is trusted only inside this RUN step
# (see scripts/docker-setup.sh); it is removed before the layer is committed.
ARG EXTRA_CA_CERTS=""

# Dependencies first, from pyproject alone, so a code change does not reinstall them.
COPY pyproject.toml /src/
RUN set -eu; \
    if [ -n "$EXTRA_CA_CERTS" ]; then \
        printf '%s\n' "$EXTRA_CA_CERTS" > /usr/local/share/ca-certificates/build-extra.crt; \
        update-ca-certificates >/dev/null; \
    fi; \
    export PIP_CERT=/etc/ssl/certs/ca-certificates.crt; \
    python3 -m venv /opt/venv; \
    python3 -c 'import tomllib; p = tomllib.load(open("/src/pyproject.toml", "rb"))["project"]; \
extras = p.get("optional-dependencies", {}); \
print("\n".join(p["dependencies"] + extras.get("docker", []) + extras.get("postgres", []) + extras.get("kubernetes", [])))' > /tmp/requirements.txt; \
    /opt/venv/bin/pip install --no-compile 'setuptools>=68' wheel -r /tmp/requirements.txt; \
    rm -f /tmp/requirements.txt /usr/local/share/ca-certificates/build-extra.crt; \
    update-ca-certificates --fresh >/dev/null

# The code. README.m[d]: copied when present (pyproject names it as the readme).
COPY pyproject.toml README.m[d] /src/
COPY app /src/app
COPY sandbox_runtime /src/sandbox_runtime
RUN /opt/venv/bin/pip install --no-deps --no-build-isolation --no-compile /src \
 && rm -rf /src/build /src/*.egg-info

ENV PATH=/opt/venv/bin:$PATH \
    SANDBOX_DATA_DIR=/data \
    SANDBOX_HOST=0.0.0.0 \
    SANDBOX_PORT=8080
USER sandboxctl
WORKDIR /data
VOLUME ["/data"]
EXPOSE 8080

HEALTHCHECK --interval=10s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('SANDBOX_PORT', '8080'), timeout=4)"]

ENTRYPOINT ["tini", "--"]
# Lets scripts/docker-setup.sh prune only its own superseded builds.
LABEL sandbox-control.image="api"
CMD ["sandboxctl", "serve", "--host", "0.0.0.0"]
