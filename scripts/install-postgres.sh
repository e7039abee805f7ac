#!/usr/bin/env bash
# PostgreSQL server binaries for the state store tests (the tests start their
# own throwaway cluster on 127.0.0.1; nothing is configured system-wide).
set -euo pipefail
if ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1; then
  exit 0
fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "install-postgres: installing postgresql"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql >/dev/null
  # The package starts a system cluster; the tests do not use it.
  if command -v pg_ctlcluster >/dev/null 2>&1; then
    for cluster in $(pg_lsclusters -h 2>/dev/null | awk '{print $1"/"$2}'); do
      pg_ctlcluster "${cluster%/*}" "${cluster#*/}" stop >/dev/null 2>&1 || true
    done
  fi
else
  echo "install-postgres: PostgreSQL server binaries missing and not root; install postgresql" >&2
  exit 1
fi
