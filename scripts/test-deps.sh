#!/usr/bin/env bash
# Real components the test suite starts or uses. Each step is idempotent and
# prints what it did; under SANDBOX_TEST_STRICT=1 a failure here fails `make test`.
set -uo pipefail
cd "$(dirname "$0")/.."
status=0
for step in scripts/install-postgres.sh scripts/install-opencode.sh scripts/docker-setup.sh scripts/terraform-setup.sh; do
  [ -x "$step" ] || continue
  if ! "$step"; then
    echo "test-deps: $step failed" >&2
    status=1
  fi
done
if [ "$status" != 0 ] && [ "${SANDBOX_TEST_STRICT:-}" = 1 ]; then
  exit 1
fi
exit 0
