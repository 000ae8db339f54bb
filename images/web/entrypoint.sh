#!/bin/sh
# Starts php-fpm and nginx and supervises both: when either exits the other is stopped, and
# SIGTERM/SIGINT (docker stop) stops both, gracefully. Exits 0 after a requested stop, 1
# when a server died on its own (so a restart policy notices).
#
# A graceful stop, in two parts:
# 1. Keep serving for STOP_GRACE seconds (default 2). The announcer withdraws this
#    container's record as soon as Docker reports the stop signal, and lb-sync drains it
#    from the load balancer within its debounce; requests the load balancer sent before
#    that are still answered.
# 2. Then nginx's graceful quit (SIGQUIT: stop accepting, finish what is in flight, close
#    idle keep-alive connections) and php-fpm's (SIGQUIT).
# `docker stop -t` must allow STOP_GRACE plus the longest request (Docker's default 10 s does).
set -eu

port="${PORT:-80}"
case "$port" in
  '' | *[!0-9]*) echo "entrypoint: PORT must be a port number, not '$port'" >&2; exit 2 ;;
esac
if [ "$port" -lt 1 ] || [ "$port" -gt 65535 ]; then
  echo "entrypoint: PORT must be between 1 and 65535, not '$port'" >&2; exit 2
fi
grace="${STOP_GRACE:-2}"
case "$grace" in
  '' | *[!0-9.]* | *.*.* | .* | *.) echo "entrypoint: STOP_GRACE must be a number of seconds (2, 0.5), not '$grace'" >&2; exit 2 ;;
esac

mkdir -p /tmp/nginx
sed "s/@PORT@/$port/" /etc/nginx/nginx.conf.in >/tmp/nginx.conf
rm -f /tmp/php-fpm.sock

# The trap is set before anything starts: as PID 1 this shell would otherwise ignore
# SIGTERM, and docker stop would have to wait for its SIGKILL.
fpm=""
nginx=""
stopping=""
# The signal only marks the stop; the main loop below does the graceful part (a trap
# cannot wait while the servers keep serving).
stop() {
  stopping=1
}
# Graceful quit of both servers (SIGQUIT: in-flight requests finish).
quit() {
  for pid in $nginx $fpm; do kill -QUIT "$pid" 2>/dev/null || true; done
}
trap stop TERM INT

php-fpm8.2 --nodaemonize --fpm-config /etc/php/8.2/fpm/php-fpm.conf &
fpm=$!
# nginx starts once php-fpm listens, so the first requests do not meet a 502 (up to 10 s).
tries=0
while [ -z "$stopping" ] && [ ! -S /tmp/php-fpm.sock ] && [ "$tries" -lt 100 ] && kill -0 "$fpm" 2>/dev/null; do
  sleep 0.1
  tries=$((tries + 1))
done
if [ -z "$stopping" ]; then
  nginx -e stderr -c /tmp/nginx.conf -g 'daemon off;' &
  nginx=$!
  echo "entrypoint: php-fpm (pid $fpm) and nginx (pid $nginx) started, listening on port $port" >&2
fi

# busybox sh has no `wait -n`: poll both every second. Waiting on the sleep lets a signal
# interrupt at once, and reaps a server that died so that `kill -0` sees it gone.
while [ -z "$stopping" ] && kill -0 "$nginx" 2>/dev/null && kill -0 "$fpm" 2>/dev/null; do
  sleep 1 &
  wait $! || true
done
requested="$stopping"
if [ -z "$requested" ]; then
  echo "entrypoint: a server exited on its own; stopping the other" >&2
  quit
else
  echo "entrypoint: stop requested: serving ${grace}s more while the load balancer drains, then a graceful quit" >&2
  # A second signal during the grace is taken as "now".
  stopping=""
  sleep "$grace" &
  wait $! || true
  if [ -n "$stopping" ]; then kill "$!" 2>/dev/null || true; fi
  quit
fi
set +e
nginx_status=-
fpm_status=-
if [ -n "$nginx" ]; then wait "$nginx"; nginx_status=$?; fi
wait "$fpm"; fpm_status=$?
echo "entrypoint: stopped (nginx exit $nginx_status, php-fpm exit $fpm_status)" >&2
[ -n "$requested" ] && exit 0
exit 1
