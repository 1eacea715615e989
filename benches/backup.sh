#!/usr/bin/env bash
# Backup and restore throughput (MB/s) of a 100 MB database through codeb's backup code
# (benches/backup.rs, built with the bench profile): pg_dump with the snapshot's row counts,
# SHA-256 and a verified rename; restore into a new database with pg_restore and the row counts
# compared. Needs a PostgreSQL 15 whose superuser URL is CODEB_TEST_PG_URL (password in
# PG_ADMIN_PASSWORD): the stack's (`eval "$(deploy/stack.sh env)"`). MB=100 RUNS=3 by default.
# Touches only its own roles and databases (codeb-bench-backup*).
set -euo pipefail
: "${CODEB_TEST_PG_URL:?load the stack env first: eval \"\$(deploy/stack.sh env)\"}"
: "${PG_ADMIN_PASSWORD:?PG_ADMIN_PASSWORD is not set}"
cd "$(dirname "$0")/.."
echo "commit $(git rev-parse --short HEAD), $(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores, $(pg_dump --version)"
exec cargo bench --bench backup
