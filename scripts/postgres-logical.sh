#!/usr/bin/env bash
# Makes the local PostgreSQL ready for change data capture: wal_level = logical (a restart when
# it has to change) and room for replication slots. Used by scripts/test.sh and bench/cdc; safe
# to run again. PGHOST/PGPORT/PGUSER pick the server (default 127.0.0.1:5432, user postgres).
set -euo pipefail
export PGHOST="${PGHOST:-127.0.0.1}" PGPORT="${PGPORT:-5432}" PGUSER="${PGUSER:-postgres}"
psql_() { psql -X -q -t -A -d postgres -c "$1"; }

if ! psql_ "SELECT 1" >/dev/null 2>&1; then
  echo "postgres-logical: no PostgreSQL at $PGHOST:$PGPORT (user $PGUSER)" >&2
  exit 1
fi
level=$(psql_ "SHOW wal_level")
slots=$(psql_ "SHOW max_replication_slots")
senders=$(psql_ "SHOW max_wal_senders")
if [ "$level" = logical ] && [ "$slots" -ge 10 ] && [ "$senders" -ge 10 ]; then
  exit 0
fi
echo "postgres-logical: wal_level=$level max_replication_slots=$slots max_wal_senders=$senders; setting wal_level=logical and restarting PostgreSQL"
psql_ "ALTER SYSTEM SET wal_level = logical"
[ "$slots" -ge 10 ] || psql_ "ALTER SYSTEM SET max_replication_slots = 10"
[ "$senders" -ge 10 ] || psql_ "ALTER SYSTEM SET max_wal_senders = 10"
version=$(psql_ "SHOW server_version_num")
major=$((version / 10000))
if command -v pg_ctlcluster >/dev/null; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO pg_ctlcluster --skip-systemctl-redirect "$major" main restart
else
  data=$(psql_ "SHOW data_directory")
  sudo -u postgres pg_ctl -D "$data" restart -w
fi
for _ in $(seq 1 60); do
  psql_ "SELECT 1" >/dev/null 2>&1 && break
  sleep 0.5
done
level=$(psql_ "SHOW wal_level")
[ "$level" = logical ] || { echo "postgres-logical: wal_level is still $level after the restart" >&2; exit 1; }
echo "postgres-logical: wal_level=logical"
