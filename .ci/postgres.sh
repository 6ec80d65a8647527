#!/usr/bin/env bash
# Installs (if needed) and starts a PostgreSQL server on loopback for the multi-worker search tests,
# then prints the URL the tests read from NNCODEC_TEST_POSTGRES_URL. Needs root (CI runs as root).
set -euo pipefail
if ! ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1; then
  apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
fi
version=$(ls /usr/lib/postgresql | sort -n | tail -n 1)
if ! pg_lsclusters -h | awk '{print $1" "$2}' | grep -q "^$version main$"; then
  pg_createcluster "$version" main >/dev/null
fi
pg_ctlcluster "$version" main start >/dev/null 2>&1 || true
for _ in $(seq 1 30); do
  su postgres -c "pg_isready -q -h 127.0.0.1" && break
  sleep 1
done
su postgres -c "psql -qtAc \"SELECT 1 FROM pg_roles WHERE rolname='nncodec'\"" | grep -q 1 || \
  su postgres -c "psql -qc \"CREATE ROLE nncodec LOGIN PASSWORD 'nncodec'\""
su postgres -c "psql -qtAc \"SELECT 1 FROM pg_database WHERE datname='nncodec_test'\"" | grep -q 1 || \
  su postgres -c "createdb -O nncodec nncodec_test"
echo "postgresql://nncodec:nncodec@127.0.0.1:5432/nncodec_test"
