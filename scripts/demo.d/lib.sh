# shellcheck shell=bash
# Functions of scripts/demo (sourced). They use the globals scripts/demo sets: repo, state,
# bin_dir, keep, host, public_ip, private_ip, etcd_local, etcd_bridge, web_count, db_port.

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
    stop_procs lb-sync
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
    stop_procs clb-sim
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
      step "Tear down (lb-sync, announcers, containers, simulator, etcd, volume, $state)"
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
  note "LB:       the simulator at http://127.0.0.1:$sim_port/v2.0 (user u, key k), load balancer 1 in ORD"
  note "lb-sync:  curl http://127.0.0.1:$lb_port/healthz"
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

# ---- what the walkthrough showed -------------------------------------------------------

unit_line() { printf '   %-20s %-26s %-8s %-9s %s\n' "$@"; }

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

# Stops web-K and prints, as they happen, its record leaving etcd and its node leaving
# the load balancer (ENABLED -> DRAINING -> deleted).
watch_removal() {
  local n=$1 t0 rec node last_rec=present last_node port=$((18000 + 10#$1)) round=0
  last_node=$(lb_node_condition "$private_ip" "$port")
  node=$last_node
  t0=$(date +%s%N)
  docker stop -t 10 "web-$n" >/dev/null || die "docker stop web-$n failed"
  note "+$(secs "$(ms_since "$t0")")  docker stop web-$n: exited"
  local deadline=$((SECONDS + 90))
  while :; do
    if etcd_has "/services/web/web$n/"; then rec=present; else rec=gone; fi
    # The load balancer every other round (0.4 s): the API's rate limit is shared with lb-sync.
    if ((round++ % 2 == 0)); then node=$(lb_node_condition "$private_ip" "$port" || echo "$last_node"); fi
    if [ "$rec" != "$last_rec" ]; then
      note "+$(secs "$(ms_since "$t0")")  etcd: /services/web/web$n/* $rec (the announcer withdrew the record when the container died)"
      last_rec=$rec
    fi
    if [ "$node" != "$last_node" ]; then
      case "$node" in
        gone) note "+$(secs "$(ms_since "$t0")")  load balancer: node $private_ip:$port deleted (after the 3 s drain)" ;;
        *) note "+$(secs "$(ms_since "$t0")")  load balancer: node $private_ip:$port $last_node -> $node" ;;
      esac
      last_node=$node
    fi
    [ "$rec" = gone ] && [ "$node" = gone ] && break
    check_alive
    ((SECONDS < deadline)) || die "timed out after 90s: record $rec, load balancer node $node"
    sleep 0.2
  done
  wait_until 30 "the load balancer to be ACTIVE with $((web_count - 1)) nodes" lb_converged "$((web_count - 1))"
  note "web-$n's record and node are gone; the other $((web_count - 1)) stay in service"
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
