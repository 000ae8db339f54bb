# shellcheck shell=bash
# Functions of scripts/demo (sourced). They use the globals scripts/demo sets: repo, state,
# bin_dir, keep, host, public_ip, private_ip, etcd_local, etcd_bridge, web_count, db_port,
# ha_port, ha_sock.

label="sidekick-demo=1"   # on every container and volume the demo makes
step_no=0
success=0
picked_ports=" "
lb_endpoint=""
lb_token=""

# ---- output ------------------------------------------------------------------------------

step() {
  step_no=$((step_no + 1))
  printf '\n== %d. %s\n' "$step_no" "$*"
}
note() { printf '   %s\n' "$*"; }
indent() { sed 's/^/   | /'; }
die() {
  printf '\ndemo: FAILED: %s\n' "$*" >&2
  exit 1
}
ms_since() { echo $((($(date +%s%N) - $1) / 1000000)); }
secs() { printf '%d.%01ds' $(($1 / 1000)) $((($1 % 1000) / 100)); }

# ---- waiting -----------------------------------------------------------------------------

# wait_until SECONDS WHAT COMMAND...: runs COMMAND every 0.2 s (0.5 s for the load
# balancer's API) until it succeeds; dies naming WHAT when SECONDS pass.
wait_until() {
  local limit=$1 what=$2 poll=0.2
  # The simulator enforces the API's rate limits (10 GETs a second), which lb-sync shares.
  [[ "$3" == lb_* ]] && poll=0.5
  shift 2
  local deadline=$((SECONDS + limit))
  until "$@" >/dev/null 2>&1; do
    check_alive
    ((SECONDS < deadline)) || die "timed out after ${limit}s waiting for $what"
    sleep "$poll"
  done
}

# Dies at once, with the last lines of its log, when a process of the demo or the db
# container has stopped: no need to wait for a timeout then.
check_alive() {
  local f name
  for f in "$state"/pids/*.pid; do
    [ -e "$f" ] || continue
    name=$(basename "$f" .pid)
    proc_alive "$name" || die "$name exited; the end of its log:
$(tail -n 15 "$state/logs/$name.log" 2>/dev/null)"
  done
  if [ -n "$(docker ps -aq --filter name='^db$' --filter "label=$label")" ] \
    && [ "$(docker inspect -f '{{.State.Running}}' db 2>/dev/null)" != true ]; then
    die "the db container stopped; the end of its log:
$(docker logs --tail 15 db 2>&1)"
  fi
}

# ---- ports -------------------------------------------------------------------------------

port_free() { [ -z "$(ss -Htln "( sport = :$1 )" 2>/dev/null)" ]; }
port_user() { ss -Htlnp "( sport = :$1 )" 2>/dev/null | head -n 1; }

# free_port VAR: sets VAR to a port nothing listens on (and not handed out before).
free_port() {
  local _fp
  while :; do
    _fp=$((20000 + RANDOM % 12000))
    [[ "$picked_ports" == *" $_fp "* ]] && continue
    port_free "$_fp" || continue
    picked_ports+="$_fp "
    printf -v "$1" %s "$_fp"
    return 0
  done
}

# ---- processes ---------------------------------------------------------------------------

# The start time of a process (field 22 of /proc/PID/stat): a pid file records it, so a
# reused pid is never mistaken for ours.
proc_start() { { sed 's/^.*) //' "/proc/$1/stat" 2>/dev/null || true; } | cut -d' ' -f20; }

# pid_running PID: the process exists and is not a zombie waiting to be reaped.
pid_running() {
  local st
  st=$({ sed 's/^.*) //' "/proc/$1/stat" 2>/dev/null || true; } | cut -d' ' -f1)
  [ -n "$st" ] && [ "$st" != Z ]
}

# start_bg NAME COMMAND...: runs COMMAND in the background, output to logs/NAME.log,
# recorded in pids/NAME.pid.
start_bg() {
  local name=$1
  shift
  "$@" >"$state/logs/$name.log" 2>&1 </dev/null 8>&- &
  local pid=$!
  echo "$pid $(proc_start "$pid")" >"$state/pids/$name.pid"
}

# proc_alive NAME: the recorded process still runs.
proc_alive() {
  local pid start
  read -r pid start <"$state/pids/$1.pid" 2>/dev/null || return 1
  [ -n "$pid" ] && [ "$(proc_start "$pid")" = "$start" ] && pid_running "$pid"
}
proc_pid() { cut -d' ' -f1 "$state/pids/$1.pid"; }

# stop_procs GLOB...: SIGTERM to the recorded processes whose names match, then up to
# 10 s for them to exit (announcers revoke their leases, lb-sync resigns), then SIGKILL.
stop_procs() {
  local f name pid start pids=() g
  shopt -s nullglob
  for g in "$@"; do
    for f in "$state"/pids/$g.pid; do
      [ -e "$f" ] || continue
      name=$(basename "$f" .pid)
      if proc_alive "$name"; then
        read -r pid start <"$f"
        kill -TERM "$pid" 2>/dev/null || true
        pids+=("$pid")
      fi
      rm -f "$f"
    done
  done
  shopt -u nullglob
  ((${#pids[@]})) || return 0
  local deadline=$((SECONDS + 10)) left
  while :; do
    left=()
    for pid in "${pids[@]}"; do pid_running "$pid" && left+=("$pid"); done
    ((${#left[@]})) || return 0
    if ((SECONDS >= deadline)); then
      kill -KILL "${left[@]}" 2>/dev/null || true
      return 0
    fi
    sleep 0.1
  done
}

# ---- teardown ----------------------------------------------------------------------------

# Removes everything a demo made: the processes recorded under $state, the containers
# and volumes labelled sidekick-demo=1, the state directory. Also what an earlier run left.
teardown() {
  local failed=${1:-0} c
  if [ -d "$state/pids" ]; then
    stop_procs 'lb-sync*'
    stop_procs 'monweb@*' mondb
  fi
  local containers
  containers=$(docker ps -aq --filter "label=$label" 2>/dev/null || true)
  if [ -n "$containers" ]; then
    if ((failed)) && [ -d "$state/logs" ]; then
      for c in $containers; do
        docker logs "$c" >"$state/logs/container-$(docker inspect -f '{{.Name}}' "$c" | tr -d /).log" 2>&1 || true
      done
    fi
    # shellcheck disable=SC2086
    docker rm -f $containers >/dev/null 2>&1 || true
  fi
  if [ -d "$state/pids" ]; then
    stop_procs clb-sim haproxy
    # One member at a time: a leader stopped with its peers alive hands over at once; all
    # three stopped together spend seconds trying to.
    stop_procs etcd-m1
    stop_procs etcd-m2
    stop_procs '*'
  fi
  local volumes
  volumes=$(docker volume ls -q --filter "label=$label" 2>/dev/null || true)
  # shellcheck disable=SC2086
  [ -z "$volumes" ] || docker volume rm -f $volumes >/dev/null 2>&1 || true
  if ((failed)) && [ -n "$(ls -A "$state/logs" 2>/dev/null)" ]; then
    rm -rf "$state-logs"
    cp -r "$state/logs" "$state-logs"
    echo "demo: the logs are kept in $state-logs" >&2
  fi
  rm -rf "$state"
}

teardown_leftovers() {
  local what=""
  [ -d "$state" ] && what="its state directory $state"
  [ -n "$(docker ps -aq --filter "label=$label" 2>/dev/null)" ] && what="${what:+$what, }its containers"
  if [ -n "$what" ]; then
    note "removing what an earlier demo left: $what"
  fi
  teardown
}

on_exit() {
  local rc=$1
  trap - EXIT INT TERM ERR
  set +e
  if ((rc == 0 && success)); then
    if ((keep)); then
      print_keep_info
    else
      step "Tear down (both lb-syncs, announcers, containers, HAProxy, simulator, etcd, volume, $state)"
      teardown
      note "nothing is left running; the demo took $((SECONDS))s in all"
    fi
  elif ((keep)) && [ -d "$state" ]; then
    echo "demo: --keep: left running as it is for a look; logs in $state/logs; stop it with scripts/demo --stop" >&2
  else
    if ((rc == 130 || rc == 143)); then
      echo "demo: interrupted; tearing down" >&2
    else
      echo "demo: tearing down after the failure (exit $rc)" >&2
    fi
    teardown 1
  fi
  exit "$rc"
}

on_err() {
  echo "demo: FAILED: the command '$2' exited with status $1 (scripts/demo or demo.d/lib.sh, line $3)" >&2
}

print_keep_info() {
  step "Left running (--keep)"
  note "etcd:     ETCDCTL_API=3 etcdctl --endpoints=$etcd_local get --prefix /services"
  note "web:      curl http://$public_ip:18001/world.php   (web-01 .. web-$(printf %02d "$web_count"), one stopped)"
  note "db:       mariadb -h $private_ip -P $db_port -u root -p\"\$(cat $state/secrets/db_root_pw)\""
  note "LB:       curl http://127.0.0.1:$ha_port/   (HAProxy; Runtime API: echo 'show stat' | socat stdio unix-connect:$ha_sock)"
  note "CLB:      the simulator at http://127.0.0.1:$sim_port/v2.0 (user u, key k), load balancer 1 in ORD"
  note "lb-sync:  curl http://127.0.0.1:$lb_port/healthz (Rackspace), curl http://127.0.0.1:$lbh_port/healthz (HAProxy)"
  note "logs:     $state/logs"
  note "stop:     scripts/demo --stop"
}

# ---- the parts -------------------------------------------------------------------------

etcdctl_() { ETCDCTL_API=3 etcdctl --endpoints="$etcd_local" --dial-timeout=2s --command-timeout=3s "$@"; }

etcd_has() { [ -n "$(etcdctl_ get --prefix --keys-only "$1" 2>/dev/null)" ]; }

# Three members on 127.0.0.1 (peers and clients) and the Docker bridge address (clients,
# for the web containers' pages).
start_etcd_cluster() {
  local i c p cluster="" token
  local -a cports pports
  for i in 1 2 3; do
    free_port c
    free_port p
    cports[i]=$c
    pports[i]=$p
    cluster+="${cluster:+,}m$i=http://127.0.0.1:$p"
  done
  token="sidekick-demo-$$-$RANDOM"
  etcd_local=""
  etcd_bridge=""
  for i in 1 2 3; do
    start_bg "etcd-m$i" etcd --name "m$i" --data-dir "$state/etcd/m$i" \
      --listen-client-urls "http://127.0.0.1:${cports[i]},http://$private_ip:${cports[i]}" \
      --advertise-client-urls "http://127.0.0.1:${cports[i]},http://$private_ip:${cports[i]}" \
      --listen-peer-urls "http://127.0.0.1:${pports[i]}" --initial-advertise-peer-urls "http://127.0.0.1:${pports[i]}" \
      --initial-cluster "$cluster" --initial-cluster-token "$token" --initial-cluster-state new \
      --heartbeat-interval 100 --election-timeout 1000 --logger zap --log-level warn
    etcd_local+="${etcd_local:+,}http://127.0.0.1:${cports[i]}"
    etcd_bridge+="${etcd_bridge:+,}http://$private_ip:${cports[i]}"
  done
  wait_until 30 "the three etcd members to elect a leader and answer" etcdctl_ endpoint health
  note "clients: $etcd_local (and $etcd_bridge for the containers)"
}

# run_container NAME DOCKER-RUN-ARGS...: docker run -d, labelled.
run_container() {
  local name=$1 out
  shift
  out=$(docker run -d --name "$name" --label "$label" "$@" 2>&1) || die "docker run --name $name failed: $out"
}

# The sidekick beside a container, as units/fleet/mondb.service and monweb@.service run it.
start_announcer() {
  local name=$1
  shift
  start_bg "$name" env ETCD_ENDPOINTS="$etcd_local" COREOS_PUBLIC_IPV4="$public_ip" COREOS_PRIVATE_IPV4="$private_ip" \
    "$bin_dir/announcer" --ttl 10s --hostname "$host" "$@"
}

# ---- the load balancer (the simulator's API) --------------------------------------------

lb_login() {
  local answer
  answer=$(curl -fsS --max-time 5 -X POST "http://127.0.0.1:$sim_port/v2.0/tokens" -H 'Content-Type: application/json' \
    -d '{"auth":{"RAX-KSKEY:apiKeyCredentials":{"username":"u","apiKey":"k"}}}') || return 1
  lb_token=$(jq -r .access.token.id <<<"$answer")
  lb_endpoint=$(jq -r '.access.serviceCatalog[] | select(.type == "rax:load-balancer") | .endpoints[]
    | select(.region == "ORD") | .publicURL' <<<"$answer")
  [ -n "$lb_token" ] && [ -n "$lb_endpoint" ]
}

lb_get() {
  [ -n "$lb_token" ] || lb_login || return 1
  curl -fsS --max-time 5 -H "X-Auth-Token: $lb_token" "$lb_endpoint$1"
}

# lb_converged N: ACTIVE with exactly N nodes, all ENABLED.
lb_converged() {
  lb_get /loadbalancers/1 | jq -e --argjson n "$1" '.loadBalancer.status == "ACTIVE"
    and ((.loadBalancer.nodes // []) | length) == $n
    and ([(.loadBalancer.nodes // [])[] | select(.condition == "ENABLED")] | length) == $n' >/dev/null
}

# The condition of the node at ADDRESS:PORT, or "gone".
lb_node_condition() {
  lb_get /loadbalancers/1/nodes | jq -r --arg a "$1" --argjson p "$2" \
    '[.nodes[]? | select(.address == $a and .port == $p) | .condition][0] // "gone"'
}

# ---- the real load balancer (HAProxy, through its Runtime API) ---------------------------

# The configuration: a frontend on 127.0.0.1:$ha_port and an empty backend `web` that
# lb-sync fills through the Runtime API (the stats socket, `level admin`, in $state).
# `roundrobin` because `add server` needs a dynamic algorithm; `retries 0` and no
# `option redispatch`, so a request that fails is counted below, not retried away; each
# answer names the server that gave it in X-Lb-Server.
write_haproxy_cfg() {
  cat >"$1" <<EOF
global
    stats socket $ha_sock mode 600 level admin
    stats timeout 10s
    maxconn 2000

defaults
    mode http
    timeout connect 2s
    timeout client 30s
    timeout server 30s
    retries 0

frontend www
    bind 127.0.0.1:$ha_port
    default_backend web

backend web
    balance roundrobin
    http-response set-header X-Lb-Server %s
EOF
}

# ha_cmd COMMAND: one Runtime API command, its answer on stdout.
ha_cmd() { printf '%s\n' "$1" | socat -T 5 - "UNIX-CONNECT:$ha_sock"; }

# The servers of the backend, one a line: NAME ADDR:PORT STATUS (show stat's status: UP,
# DRAIN, MAINT, DOWN, "no check").
ha_servers() {
  ha_cmd "show stat web 4 -1" | awk -F, '
    NR == 1 { sub(/^# /, ""); for (i = 1; i <= NF; i++) col[$i] = i; next }
    NF > 1 { print $col["svname"], $col["addr"], $col["status"] }'
}

# ha_converged N: exactly N servers, all UP.
ha_converged() {
  local out
  out=$(ha_servers) || return 1
  [ "$(grep -c . <<<"$out")" = "$1" ] && [ "$(grep -c ' UP$' <<<"$out")" = "$1" ]
}

# The status of lb-sync's server for ADDRESS:PORT, or "gone".
ha_server_state() {
  local out
  out=$(ha_servers) || return 1
  awk -v n="lb-sync-$1:$2" '$1 == n { s = $3; for (i = 4; i <= NF; i++) s = s " " $i; print s; found = 1 }
    END { if (!found) print "gone" }' <<<"$out"
}

show_haproxy() {
  local out
  out=$(ha_servers) || die "HAProxy's Runtime API does not answer ($ha_sock)"
  note "HAProxy, backend web: $(grep -c . <<<"$out") server(s); frontend http://127.0.0.1:$ha_port/"
  { echo "SERVER ADDRESS STATUS"; cat <<<"$out"; } \
    | awk '{ s = $3; for (i = 4; i <= NF; i++) s = s " " $i; printf "%-28s %-22s %s\n", $1, $2, s }' | indent
}

# The container behind lb-sync's server name (lb-sync-ADDR:180NN -> web-NN).
server_container() {
  local port=${1##*:}
  if [[ "$port" =~ ^180[0-9][0-9]$ ]]; then printf 'web-%02d' $((10#${port:3})); else printf '%s' "${1:-none}"; fi
}

# 30 requests through HAProxy, each on a new connection (curl with `Connection: close`),
# counted by the container that answered (the page's "Served by HOST"); dies unless all
# 30 answered 200 and every running container took some.
show_spread() {
  local url="http://127.0.0.1:$ha_port/" args=() i out ok spread
  for ((i = 0; i < 30; i++)); do args+=("$url"); done
  note "for i in \$(seq 30); do curl -s $url | grep -o 'Served by [a-z0-9-]*'; done | sort | uniq -c"
  out=$(curl -s -H 'Connection: close' --max-time 10 -w '\nHTTP %{http_code}\n' "${args[@]}" || true)
  ok=$(grep -c '^HTTP 200$' <<<"$out" || true)
  grep -o 'Served by [A-Za-z0-9-]*' <<<"$out" | awk '{ print $3 }' | sort | uniq -c \
    | awk '{ printf "%s: %d requests\n", $2, $1 }' | indent
  spread=$(grep -o 'Served by [A-Za-z0-9-]*' <<<"$out" | sort -u | grep -c . || true)
  note "30 requests through HAProxy: $ok answered 200, $((30 - ok)) failed; spread over $spread containers"
  ((ok == 30)) || die "$((30 - ok)) of 30 requests through HAProxy failed"
  ((spread == web_count)) || die "the requests reached $spread containers, not all $web_count"
}

# traffic_start FILE: requests through HAProxy one after another, each on a new connection
# (20 per curl process), one line per request in FILE: "CODE SERVER" (code 000: no answer).
# Runs in the background until traffic_stop (or until a teardown removes $state).
traffic_start() {
  local url="http://127.0.0.1:$ha_port/" args=() i
  for ((i = 0; i < 20; i++)); do args+=(-o /dev/null "$url"); done
  : >"$1"
  touch "$state/traffic.run"
  (
    while [ -e "$state/traffic.run" ]; do
      curl -s -H 'Connection: close' --max-time 10 -w '%{http_code} %header{x-lb-server}\n' "${args[@]}" >>"$1" 2>/dev/null || true
    done
  ) </dev/null 8>&- &
  traffic_pid=$!
}
traffic_stop() {
  rm -f "$state/traffic.run"
  wait "$traffic_pid" 2>/dev/null || true
}

# ---- what the walkthrough showed -------------------------------------------------------

unit_line() { printf '   %-24s %-26s %-8s %-9s %s\n' "$@"; }

# Like `fleetctl list-units`: every unit, the machine it runs on, its state.
list_units() {
  local machine="$host/$private_ip" i n st
  unit_line UNIT MACHINE ACTIVE SUB WHAT
  st=$(docker inspect -f '{{.State.Status}}' db 2>/dev/null || echo missing)
  unit_line db.service "$machine" "$(active_of "$st")" "$st" "container db (sidekick/db), $private_ip:$db_port"
  unit_line dbhelper.service "$machine" active exited "dbhelper seed: done, exit 0 (Type=oneshot)"
  unit_line mondb.service "$machine" "$(proc_state mondb)" "$(proc_sub mondb)" "announcer (pid $(proc_pid mondb)) following container db"
  for ((i = 1; i <= web_count; i++)); do
    n=$(printf %02d "$i")
    st=$(docker inspect -f '{{.State.Status}}' "web-$n" 2>/dev/null || echo missing)
    unit_line "web@$n.service" "$machine" "$(active_of "$st")" "$st" "container web-$n (sidekick/web), $public_ip:180$n"
    unit_line "monweb@$n.service" "$machine" "$(proc_state "monweb@$n")" "$(proc_sub "monweb@$n")" \
      "announcer (pid $(proc_pid "monweb@$n")) following web-$n"
  done
  unit_line haproxy.service "$machine" "$(proc_state haproxy)" "$(proc_sub haproxy)" \
    "haproxy (pid $(proc_pid haproxy)), http://127.0.0.1:$ha_port/, Runtime API $ha_sock"
  unit_line lb-sync-haproxy.service "$machine" "$(proc_state lb-sync-haproxy)" "$(proc_sub lb-sync-haproxy)" \
    "lb-sync --provider haproxy (pid $(proc_pid lb-sync-haproxy)) -> HAProxy's backend web"
  unit_line lb-sync.service "$machine" "$(proc_state lb-sync)" "$(proc_sub lb-sync)" \
    "lb-sync (pid $(proc_pid lb-sync)) -> load balancer 1 in ORD (the simulator)"
}
active_of() { if [ "$1" = running ]; then echo active; else echo inactive; fi; }
proc_state() { if proc_alive "$1"; then echo active; else echo failed; fi; }
proc_sub() { if proc_alive "$1"; then echo running; else echo dead; fi; }

# The records, grouped by instance like the walkthrough's etcdctl loop.
show_records() {
  local out
  out=$(etcdctl_ get --prefix /services/web | paste - - | awk -F'\t' '
    { split($1, k, "/"); if (NR > 1 && k[4] != last) print "-----"; last = k[4]; print $1 " = " $2 }')
  if [ -n "$out" ]; then indent <<<"$out"; else note "(no records under /services/web)"; fi
  echo "-----" | indent
  etcdctl_ get --prefix /services/db | paste - - | awk -F'\t' '{ print $1 " = " $2 }' | indent
}

show_lb() {
  local lb
  lb=$(lb_get /loadbalancers/1) || die "the simulator does not answer"
  jq -r '.loadBalancer | "load balancer \(.id) \"\(.name)\": \(.status), \(.protocol) on \(.virtualIps[0].address):\(.port), \((.nodes // []) | length) node(s)"' <<<"$lb" | indent
  jq -r '(.loadBalancer.nodes // [])[] | [.id, .address, .port, .condition, .status] | @tsv' <<<"$lb" \
    | awk -F'\t' 'BEGIN { printf "%-6s %-15s %-6s %-10s %s\n", "NODE", "ADDRESS", "PORT", "CONDITION", "STATUS" }
                  { printf "%-6s %-15s %-6s %-10s %s\n", $1, $2, $3, $4, $5 }' | indent
}

# home.php, world.php and health.php of every running web container; dies if one is wrong.
show_pages() {
  local i n url home world health code body cities first bad="" want
  want=$(sed -n 's/^world\.City: \([0-9]*\) rows$/\1/p' "$state/logs/dbhelper.out")
  for ((i = 1; i <= web_count; i++)); do
    n=$(printf %02d "$i")
    url="http://$public_ip:180$n"
    home=$(curl -sS --max-time 10 "$url/home.php" 2>&1 || true)
    world=$(curl -sS --max-time 20 -w '\n%{http_code}' "$url/world.php" 2>&1 || true)
    health=$(curl -sS --max-time 10 -w ' %{http_code}' "$url/health.php" 2>&1 || true)
    code=${world##*$'\n'}
    body=${world%$'\n'*}
    cities=$(grep -c '^<tr><td>' <<<"$body" || true)
    first=$(grep -m 1 '^<tr><td>' <<<"$body" | sed 's/<\/td><td>/ /g; s/<[^>]*>//g' || true)
    printf '   web-%s  home.php: host %s, %s\n' "$n" \
      "$(sed -n 's/.*id="hostname">\([^<]*\)<.*/\1/p' <<<"$home")" "$(sed -n 's/.*id="time">\([^<]*\)<.*/\1/p' <<<"$home")"
    printf '           world.php: %s "%s", %s cities, first: %s\n' "$code" \
      "$(sed -n 's/.*<h1>\(.*\)<\/h1>.*/\1/p' <<<"$body")" "$cities" "$first"
    printf '           health.php: %s\n' "$(tr -d '\n' <<<"$health")"
    [[ "$home" == *"id=\"hostname\">web-$n<"* ]] || bad+=" web-$n/home.php"
    { [ "$code" = 200 ] && [ "$cities" = "$want" ]; } || bad+=" web-$n/world.php"
    [ "$(tr -d '\n' <<<"$health")" = "PASS 200" ] || bad+=" web-$n/health.php"
  done
  [ -z "$bad" ] || die "these pages did not answer as they should:$bad"
  note "every container answers: its own host name, the $want cities of world.City (as dbhelper counted), PASS"
}

# Stops web-K under continuous traffic through HAProxy and prints, as they happen, the
# container's stop, its record leaving etcd, its server leaving HAProxy (UP -> DRAIN ->
# deleted) and its node leaving the simulated Cloud Load Balancer (ENABLED -> DRAINING ->
# deleted); then how many requests were sent through HAProxy meanwhile and how many failed.
# Dies if one failed: with the record withdrawn at the stop signal, HAProxy draining the
# server and the image serving through its STOP_GRACE, none should.
watch_removal() {
  local n=$1 t0 rec node srv stopped=0 last_rec=present last_node last_srv port=$((18000 + 10#$1)) round=0
  local traffic="$state/traffic.txt" sent failed
  last_node=$(lb_node_condition "$private_ip" "$port")
  node=$last_node
  last_srv=$(ha_server_state "$private_ip" "$port")
  srv=$last_srv
  traffic_start "$traffic"
  sleep 1   # a second of steady traffic before the stop
  note "requests go through HAProxy one after another, each on a new connection, from 1 s before the stop to 1 s after the end"
  t0=$(date +%s%N)
  docker stop -t 10 "web-$n" >"$state/logs/docker-stop.log" 2>&1 &
  local stop_pid=$!
  note "+0.0s  docker stop web-$n (SIGTERM; the image keeps serving for its STOP_GRACE, 2 s, then quits gracefully)"
  local deadline=$((SECONDS + 90))
  while :; do
    if ((!stopped)) && ! kill -0 "$stop_pid" 2>/dev/null; then
      wait "$stop_pid" || die "docker stop web-$n failed: $(cat "$state/logs/docker-stop.log")"
      note "+$(secs "$(ms_since "$t0")")  docker stop web-$n: the container exited"
      stopped=1
    fi
    if etcd_has "/services/web/web$n/"; then rec=present; else rec=gone; fi
    srv=$(ha_server_state "$private_ip" "$port" || echo "$last_srv")
    # The simulator every other round (0.4 s): the API's rate limit is shared with lb-sync.
    if ((round++ % 2 == 0)); then node=$(lb_node_condition "$private_ip" "$port" || echo "$last_node"); fi
    if [ "$rec" != "$last_rec" ]; then
      note "+$(secs "$(ms_since "$t0")")  etcd: /services/web/web$n/* $rec (the announcer withdrew the record at the stop signal)"
      last_rec=$rec
    fi
    if [ "$srv" != "$last_srv" ]; then
      case "$srv" in
        gone) note "+$(secs "$(ms_since "$t0")")  HAProxy: server lb-sync-$private_ip:$port drained and deleted (no new request goes to it)" ;;
        *) note "+$(secs "$(ms_since "$t0")")  HAProxy: server lb-sync-$private_ip:$port $last_srv -> $srv" ;;
      esac
      last_srv=$srv
    fi
    if [ "$node" != "$last_node" ]; then
      case "$node" in
        gone) note "+$(secs "$(ms_since "$t0")")  Cloud Load Balancer: node $private_ip:$port deleted (after the 3 s drain)" ;;
        *) note "+$(secs "$(ms_since "$t0")")  Cloud Load Balancer: node $private_ip:$port $last_node -> $node" ;;
      esac
      last_node=$node
    fi
    ((stopped)) && [ "$rec" = gone ] && [ "$srv" = gone ] && [ "$node" = gone ] && break
    check_alive
    ((SECONDS < deadline)) || die "timed out after 90s: container stopped $stopped, record $rec, HAProxy server $srv, load balancer node $node"
    sleep 0.2
  done
  sleep 1
  traffic_stop
  sent=$(grep -c . "$traffic" || true)
  failed=$(grep -vc '^2[0-9][0-9] ' "$traffic" || true)
  awk '{ print $2 }' "$traffic" | sort | uniq -c | while read -r count server; do
    printf '%s: %d requests (server %s)\n' "$(server_container "$server")" "$count" "${server:-none}"
  done | indent
  note "while web-$n stopped: $sent requests sent through HAProxy, $failed failed"
  if ((failed)); then
    grep -v '^2[0-9][0-9] ' "$traffic" | sort | uniq -c | head -n 5 | indent
    die "$failed of $sent requests through HAProxy failed while web-$n stopped"
  fi
  wait_until 30 "the load balancer to be ACTIVE with $((web_count - 1)) nodes" lb_converged "$((web_count - 1))"
  wait_until 30 "HAProxy to hold $((web_count - 1)) servers UP" ha_converged "$((web_count - 1))"
  note "web-$n's record, server and node are gone; the other $((web_count - 1)) stay in service"
}

# "static" or "dynamic" for a binary.
file_kind() {
  if ldd "$1" 2>&1 | grep -q -e 'not a dynamic' -e 'statically linked'; then echo static; else echo dynamically linked; fi
}

# The address of the host on Docker's default bridge (what the containers reach the host at).
bridge_gateway() {
  local gw
  gw=$(docker network inspect bridge -f '{{range .IPAM.Config}}{{.Gateway}}{{end}}' 2>/dev/null || true)
  if [ -z "$gw" ]; then
    local dev
    dev=$(docker network inspect bridge -f '{{index .Options "com.docker.network.bridge.name"}}' 2>/dev/null || true)
    gw=$(ip -4 -o addr show "${dev:-docker0}" 2>/dev/null | awk '{ split($4, a, "/"); print a[1]; exit }')
  fi
  echo "$gw"
}
