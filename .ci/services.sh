# Checks the loopback services the tests use and starts any that is down, the same way the
# machine started them. Sourced by .ci/run.

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_port() {
  local name=$1 port=$2
  for _ in $(seq 1 60); do
    port_open "$port" && { echo "$name is up on :$port"; return 0; }
    sleep 0.5
  done
  echo "$name did not come up on :$port" >&2
  return 1
}

ensure_redis() {
  port_open 6379 && { echo "redis is up"; return 0; }
  echo "starting redis"
  mkdir -p /var/lib/redis /var/log/redis
  redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
    --dir /var/lib/redis --logfile /var/log/redis/ci.log
  wait_port redis 6379
}

ensure_postgres() {
  port_open 5432 && { echo "postgres is up"; return 0; }
  echo "starting postgres"
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql)" main start
  wait_port postgres 5432
}

ensure_nats() {
  port_open 4222 && { echo "nats is up"; return 0; }
  echo "starting nats"
  start-stop-daemon --start --oknodo --background --exec /usr/sbin/nats-server -- \
    -a 127.0.0.1 -p 4222 -js -sd /var/lib/nats-server -l /var/log/nats-server.log
  wait_port nats 4222
}

ensure_services() {
  ensure_redis
  ensure_postgres
  ensure_nats
}
