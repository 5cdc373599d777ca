#!/usr/bin/env bash
# Starts the local services the tests talk to when one is down (the machine normally has them
# running): PostgreSQL, Redis, NATS with JetStream, RabbitMQ. Then makes PostgreSQL ready for
# change data capture (scripts/postgres-logical.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
up() { timeout 1 bash -c "exec 3<>/dev/tcp/127.0.0.1/$1" 2>/dev/null; }
wait_up() {
  for _ in $(seq 1 120); do up "$1" && return 0; sleep 0.5; done
  echo "services: nothing answers on 127.0.0.1:$1 after starting $2" >&2
  return 1
}
if ! up 5432; then
  echo "services: starting PostgreSQL"
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | sort -V | tail -1)" main start
  wait_up 5432 PostgreSQL
fi
if ! up 6379; then
  echo "services: starting Redis"
  redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
    --dir /var/lib/redis --logfile /var/log/redis/ci.log
  wait_up 6379 Redis
fi
if ! up 4222; then
  echo "services: starting NATS"
  start-stop-daemon --start --oknodo --background --exec /usr/sbin/nats-server -- \
    -a 127.0.0.1 -p 4222 -js -sd /var/lib/nats-server -l /var/log/nats-server.log
  wait_up 4222 NATS
fi
if ! up 5672; then
  echo "services: starting RabbitMQ"
  rabbitmq-server -detached
  wait_up 5672 RabbitMQ
fi
./scripts/postgres-logical.sh
