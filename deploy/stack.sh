#!/usr/bin/env bash
# The local stack that codeb's integration tests run against: a Podman API service, Caddy (admin API
# only), PowerDNS (gsqlite3 + HTTP API), PostgreSQL 15 and Redis 7, each a plain process whose config,
# data, log and pid file live under one state directory. Nothing under /etc is changed, and stacks (one per state dir) share
# no store, lock or config with each other or with the machine's own Podman. Two things rootful
# Podman 4.3 shares machine-wide whatever the config: netavark's IPAM db and aardvark-dns under
# /run/containers/networks (on purpose: network namespaces are shared), and the default network's
# bridge name podman0; give each stack its own CODEB_STACK_SUBNET if two must run side by side.
#
# Usage: deploy/stack.sh up | down [--purge] | env | status | restart-caddy | stop SERVICE | images | reap
#
#   up             install missing Debian packages, start whatever is not running and healthy, then
#                  wait (bounded) until all answer. PostgreSQL and Redis start after the network
#                  codeb-main exists, since they also listen on its gateway address (for containers).
#                  A second `up` is a no-op in about a second.
#   down           stop the five services; containers they started keep running. `--purge` also
#                  removes every container, image and network of this stack and the state directory.
#   env            print `export` lines for the tests: eval "$(deploy/stack.sh env)"
#   status         print each service and whether it answers; exit 1 if one does not.
#   restart-caddy  kill Caddy and start it again from the base config (which has no routes), so tests
#                  can prove that codeb notices and pushes its routes again.
#   stop SERVICE   stop one service (podman, caddy, pdns, postgres or redis) and leave the others running, so tests can
#                  prove that codeb carries on without it and recovers; `up` starts it again.
#   images         build the test images into this stack's Podman store (no registry is reachable).
#   reap           (run by `up` for other stacks) if this stack's Podman is not running, remove its
#                  containers and their networking, which would catch the next stack's traffic.
#
# State dir: $CODEB_STACK_DIR, default <repo root>/.codeb-stack. Ports (defaults): Caddy admin 12019,
# codeb's HTTP server 18080, PowerDNS DNS 15353 and API 18081, PostgreSQL 15432, Redis 16379; override
# with CODEB_STACK_CADDY_ADMIN_PORT, CODEB_STACK_HTTP_PORT, CODEB_STACK_PDNS_DNS_PORT,
# CODEB_STACK_PDNS_API_PORT, CODEB_STACK_PG_PORT, CODEB_STACK_REDIS_PORT (and the Podman subnets
# with CODEB_STACK_SUBNET, CODEB_STACK_SUBNET_POOL) on the first `up`; the state dir remembers them.
# Exit status: 0 success, 1 failure, 2 bad usage. Progress goes to stderr, so `env` can be evaluated.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
readonly ROOT
STACK_DIR="${CODEB_STACK_DIR:-$ROOT/.codeb-stack}"
# Pid files and health checks compare against this path, so it must be absolute and unique: a
# symlink to a stack's dir (a git worktree's .codeb-stack pointing at the main checkout's) names
# that same stack, not a stopped one beside it.
[[ $STACK_DIR == /* ]] || STACK_DIR="$PWD/$STACK_DIR"
STACK_DIR="$(realpath -m -- "$STACK_DIR")"
readonly STACK_DIR="${STACK_DIR%/}"

# Addresses and subnets. Only loopback may be targeted on the test machines. CODEB_STACK_HTTP_PORT is
# where codeb's own Caddy server will listen; this script never creates that server. Each can be
# overridden from the environment (CODEB_STACK_<KEY>); whatever a command writes into the configs is
# kept in $SETTINGS_FILE, so later commands (env, status, down) agree with it without the override.
# The Podman subnets are away from Podman's own defaults (10.88.0.0/16, pools from 10.89.0.0/24) so
# this stack does not meet a stock Podman on the machine; SUBNET is the default bridge network's,
# SUBNET_POOL is where networks that codeb creates get their /24s.
readonly SETTINGS_FILE="$STACK_DIR/settings.env"
declare -A SETTINGS=([CADDY_ADMIN_PORT]=12019 [HTTP_PORT]=18080 [PDNS_DNS_PORT]=15353
  [PDNS_API_PORT]=18081 [PG_PORT]=15432 [REDIS_PORT]=16379 [SUBNET]=10.89.50.0/24
  [SUBNET_POOL]=10.89.56.0/21)
load_settings() {
  local key value env
  if [[ -f $SETTINGS_FILE ]]; then
    while IFS='=' read -r key value; do
      [[ -n ${SETTINGS[$key]+set} ]] && SETTINGS[$key]=$value
    done <"$SETTINGS_FILE"
  fi
  for key in "${!SETTINGS[@]}"; do
    env="CODEB_STACK_$key"
    [[ -z ${!env-} ]] || SETTINGS[$key]=${!env}
    case $key in
    *PORT) [[ ${SETTINGS[$key]} =~ ^[0-9]{4,5}$ ]] ;;
    *) [[ ${SETTINGS[$key]} =~ ^[0-9]{1,3}(\.[0-9]{1,3}){3}/[0-9]{1,2}$ ]] ;;
    esac || {
      printf 'stack: ERROR: bad %s: %q\n' "$env" "${SETTINGS[$key]}" >&2
      exit 2
    }
  done
}
load_settings
readonly CADDY_ADMIN_ADDR="127.0.0.1:${SETTINGS[CADDY_ADMIN_PORT]}"
readonly CODEB_HTTP_ADDR="127.0.0.1:${SETTINGS[HTTP_PORT]}"
readonly PDNS_DNS_PORT=${SETTINGS[PDNS_DNS_PORT]}
readonly PDNS_API_PORT=${SETTINGS[PDNS_API_PORT]}
readonly PG_PORT=${SETTINGS[PG_PORT]}
readonly REDIS_PORT=${SETTINGS[REDIS_PORT]}
readonly PODMAN_SUBNET=${SETTINGS[SUBNET]}
readonly PODMAN_SUBNET_POOL=${SETTINGS[SUBNET_POOL]}
# How long `up` waits for a started service to answer. Cold start measured at 0.2-0.3 s; 20 s is the bound
# that turns "slow" into "failed" instead of hanging a CI run.
readonly START_TIMEOUT_S=20
# How long `down` waits after SIGTERM before SIGKILL.
readonly STOP_TIMEOUT_S=10

# runc is listed explicitly: otherwise apt satisfies podman's `crun | runc` with crun, which cannot
# start containers on these machines.
# postgresql-15 brings psql, pg_dump and pg_restore; redis-server brings redis-cli (redis-tools).
readonly PACKAGES=(podman runc netavark aardvark-dns catatonit iptables nftables busybox-static caddy
  pdns-server pdns-backend-sqlite3 sqlite3 dnsutils curl hey wrk strace postgresql-15 redis-server
  redis-tools)
# In start order. The data services come last and start in a second round, once codeb-main (whose
# gateway address they listen on) exists: see cmd_up.
readonly SERVICES=(podman caddy pdns postgres redis)
readonly DATA_SERVICES=(postgres redis)
PDNS_API_KEY=""         # read from $PDNS_KEY_FILE by ensure_api_key
PG_ADMIN_PASSWORD=""    # read from $PG_PASSWORD_FILE by load_data_secrets
REDIS_ADMIN_PASSWORD="" # read from $REDIS_PASSWORD_FILE by load_data_secrets

readonly PODMAN_DIR="$STACK_DIR/podman"
readonly PODMAN_SOCK="$PODMAN_DIR/podman.sock"
readonly CONTAINERS_CONF_FILE="$PODMAN_DIR/containers.conf"
readonly STORAGE_CONF_FILE="$PODMAN_DIR/storage.conf"
readonly CADDY_DIR="$STACK_DIR/caddy"
readonly CADDY_CONFIG="$CADDY_DIR/base.json"
readonly PDNS_DIR="$STACK_DIR/pdns"
readonly PDNS_DB="$PDNS_DIR/pdns.sqlite3"
readonly PDNS_KEY_FILE="$PDNS_DIR/api-key"
readonly PDNS_SCHEMA=/usr/share/pdns-backend-sqlite3/schema/schema.sqlite3.sql
# PostgreSQL: the configs (root's, readable) beside the cluster (the postgres user's, 0700), which
# initdb creates once. The admin is the superuser codeb_admin; its password is generated once.
readonly PG_BIN=/usr/lib/postgresql/15/bin
readonly PG_DIR="$STACK_DIR/postgres"
readonly PG_DATA="$PG_DIR/data"
readonly PG_CONF="$PG_DIR/postgresql.conf"
readonly PG_HBA="$PG_DIR/pg_hba.conf"
readonly PG_ADMIN=codeb_admin
readonly SECRETS_DIR="$STACK_DIR/secrets"
readonly PG_PASSWORD_FILE="$SECRETS_DIR/pg-admin-password"
# Redis: runs as the redis user; its data dir (append-only file) and ACL file are the redis user's.
readonly REDIS_DIR="$STACK_DIR/redis"
readonly REDIS_CONF="$REDIS_DIR/redis.conf"
# The ACL file sits in the data dir: `ACL SAVE` writes a temporary file beside it.
readonly REDIS_ACL="$REDIS_DIR/data/users.acl"
readonly REDIS_PASSWORD_FILE="$SECRETS_DIR/redis-admin-password"
# A container that stays on codeb-main, so that its bridge (and the gateway address the data services
# listen on) exists while no app runs: netavark creates the bridge with the first container on the
# network and deletes it with the last one, and a server cannot bind an address that is not there.
readonly ANCHOR=codeb-stack-bridge
readonly ANCHOR_IMAGE=localhost/codeb-stack-bridge:v1
readonly LOG_DIR="$STACK_DIR/logs"
readonly RUN_DIR="$STACK_DIR/run"
# Marks a directory as a stack dir: `down --purge` refuses to delete a directory without it.
readonly MARKER="$STACK_DIR/.codeb-stack-dir"

# Podman, pdns and iptables live in sbin directories, which a non-login shell (CI) may lack; netavark
# runs iptables through PATH.
export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"

say() { printf 'stack: %s\n' "$*" >&2; }
die() {
  printf '\nstack: ERROR: %s\n' "$*" >&2
  exit 1
}
usage() {
  # The header comment above is the manual.
  sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | grep '^#' | sed 's/^# \{0,1\}//' >&2
  exit 2
}
no_args() { (($# == 0)) || usage; }

# Microseconds since the epoch, for deadlines and timings without spawning `date`.
now_us() { printf '%s' "${EPOCHREALTIME/./}"; }

cleanup_actions=()
cleanup() {
  local action
  for action in "${cleanup_actions[@]}"; do eval "$action" || true; done
}
trap cleanup EXIT

# One command at a time per stack dir: two concurrent `up`s would otherwise both start a service.
# The lock fd (9) must not leak into the services (see start_service), or they would hold it forever.
take_lock() {
  mkdir -p "$STACK_DIR"
  exec 9>"$STACK_DIR/.lock"
  flock -w 120 9 || die "another stack.sh holds $STACK_DIR/.lock for more than 120 s"
}

# ---------------------------------------------------------------------------------------------------
# Packages

ensure_packages() {
  local installed missing=() p
  # dpkg-query exits 1 when a package is unknown to dpkg (never installed); that is not an error here.
  installed=$(dpkg-query -W -f='${db:Status-Abbrev} ${Package}\n' "${PACKAGES[@]}" 2>/dev/null |
    awk '$1 == "ii" { print $2 }' || true)
  for p in "${PACKAGES[@]}"; do
    [[ $'\n'$installed$'\n' == *$'\n'$p$'\n'* ]] || missing+=("$p")
  done
  ((${#missing[@]} == 0)) && return 0

  [[ $EUID -eq 0 ]] || die "missing packages (${missing[*]}) and not root: cannot install them"
  say "installing missing packages: ${missing[*]}"
  # Post-install scripts of caddy and pdns-server would start the system-wide services on the ports
  # and paths of a stock install. A policy-rc.d that exits 101 ("action forbidden") stops that; it is
  # removed afterwards, even on failure. An existing one (as in container images) is left alone.
  if [[ ! -e /usr/sbin/policy-rc.d ]]; then
    printf '#!/bin/sh\n# temporary, written by codeb deploy/stack.sh during apt-get\nexit 101\n' \
      >/usr/sbin/policy-rc.d
    chmod 755 /usr/sbin/policy-rc.d
    cleanup_actions+=("rm -f /usr/sbin/policy-rc.d")
  fi
  # --no-install-recommends: podman recommends crun-adjacent and rootless helpers (buildah,
  # dbus-user-session, ...) that this rootful, runc-only stack does not use.
  DEBIAN_FRONTEND=noninteractive apt-get update -qq || die "apt-get update failed (see above)"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" ||
    die "apt-get install ${missing[*]} failed (see above)"
  rm -f /usr/sbin/policy-rc.d
}

# ---------------------------------------------------------------------------------------------------
# Configuration (rewritten only when its content changes)

write_file() { # path mode content
  local path=$1 mode=$2 content=$3
  if [[ -f $path && "$(<"$path")" == "$content" ]]; then return 0; fi
  (
    umask 077
    printf '%s\n' "$content" >"$path.tmp"
  )
  chmod "$mode" "$path.tmp"
  mv -f "$path.tmp" "$path"
}

# A random secret (48 hex digits, so it needs no quoting in a URL or a config), generated once into
# <file>, mode 0600.
ensure_secret() { # file
  local file=$1
  [[ -s $file ]] && return 0
  mkdir -p "$(dirname "$file")"
  (
    umask 077
    od -An -N24 -tx1 /dev/urandom | tr -d ' \n' >"$file.tmp"
  )
  mv -f "$file.tmp" "$file"
}

ensure_api_key() {
  ensure_secret "$PDNS_KEY_FILE"
  PDNS_API_KEY=$(<"$PDNS_KEY_FILE")
}

load_data_secrets() {
  [[ ! -s $PG_PASSWORD_FILE ]] || PG_ADMIN_PASSWORD=$(<"$PG_PASSWORD_FILE")
  [[ ! -s $REDIS_PASSWORD_FILE ]] || REDIS_ADMIN_PASSWORD=$(<"$REDIS_PASSWORD_FILE")
}

write_configs() {
  # The paths go into TOML and JSON strings unescaped.
  [[ $STACK_DIR != *[\"\\\'[:space:]]* ]] ||
    die "state dir '$STACK_DIR' contains quotes, backslashes or spaces; choose another CODEB_STACK_DIR"
  # Unix socket paths are limited to 107 bytes.
  ((${#PODMAN_SOCK} < 100)) || die "socket path $PODMAN_SOCK is too long; choose a shorter CODEB_STACK_DIR"

  mkdir -p "$PODMAN_DIR" "$CADDY_DIR"/{data,config,home} "$PDNS_DIR/run" "$LOG_DIR" "$RUN_DIR" \
    "$STACK_DIR/tmp"
  touch "$MARKER"
  ensure_api_key
  mkdir -p -m 700 "$SECRETS_DIR"
  ensure_secret "$PG_PASSWORD_FILE"
  ensure_secret "$REDIS_PASSWORD_FILE"
  load_data_secrets
  local key settings=""
  for key in "${!SETTINGS[@]}"; do settings+="$key=${SETTINGS[$key]}"$'\n'; done
  write_file "$SETTINGS_FILE" 644 "$(sort <<<"${settings%$'\n'}")"

  # Measured: containers start only with runc, cgroupfs and lowered ulimits. Every path Podman would
  # otherwise share machine-wide (events log, tmp, volumes, locks in /dev/shm, network configs in
  # /etc/containers/networks) points into the state dir. k8s-file logs: journald needs systemd.
  write_file "$CONTAINERS_CONF_FILE" 644 "$(
    cat <<EOF
# Written by deploy/stack.sh; edits are overwritten.
[containers]
default_ulimits = ["nofile=1024:1024", "nproc=1024:1024"]
log_driver = "k8s-file"

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
events_logfile_path = "$PODMAN_DIR/events/events.log"
tmp_dir = "$PODMAN_DIR/tmp"
volume_path = "$PODMAN_DIR/volumes"
lock_type = "file"

[network]
network_backend = "netavark"
network_config_dir = "$PODMAN_DIR/networks"
default_subnet = "$PODMAN_SUBNET"
default_subnet_pools = [{"base" = "$PODMAN_SUBNET_POOL", "size" = 24}]
EOF
  )"
  write_file "$STORAGE_CONF_FILE" 644 "$(
    cat <<EOF
# Written by deploy/stack.sh; edits are overwritten.
[storage]
driver = "overlay"
graphroot = "$PODMAN_DIR/storage"
runroot = "$PODMAN_DIR/run"
EOF
  )"

  # No apps: codeb creates its own server. persist=false: after a restart Caddy has only this file,
  # which is what restart-caddy relies on. Storage (certificates, locks) under the state dir.
  write_file "$CADDY_CONFIG" 644 "$(
    cat <<EOF
{
  "admin": {"listen": "$CADDY_ADMIN_ADDR", "config": {"persist": false}},
  "storage": {"module": "file_system", "root": "$CADDY_DIR/data"}
}
EOF
  )"

  # --config-dir makes pdns read only this file, never /etc/powerdns. It holds the API key: mode 600.
  write_file "$PDNS_DIR/pdns.conf" 600 "$(
    cat <<EOF
# Written by deploy/stack.sh; edits are overwritten.
launch=gsqlite3
gsqlite3-database=$PDNS_DB
local-address=127.0.0.1
local-port=$PDNS_DNS_PORT
socket-dir=$PDNS_DIR/run
daemon=no
guardian=no
disable-syslog=yes
security-poll-suffix=
api=yes
api-key=$PDNS_API_KEY
webserver=yes
webserver-address=127.0.0.1
webserver-port=$PDNS_API_PORT
webserver-allow-from=127.0.0.1,::1
default-soa-content=ns1.codeb.test. hostmaster.@ 0 10800 3600 604800 3600
EOF
  )"
  if [[ ! -s $PDNS_DB ]]; then
    # Built aside and renamed, so an interrupted run never leaves a half-created database.
    rm -f "$PDNS_DB.tmp"
    sqlite3 "$PDNS_DB.tmp" <"$PDNS_SCHEMA"
    mv -f "$PDNS_DB.tmp" "$PDNS_DB"
  fi
}

# The gateway address and the subnet of codeb-main ("10.89.56.1 10.89.56.0/24"), from Podman's
# network config (the CLI reads it without the service); fails when the network does not exist.
codeb_network() {
  local line
  while read -r line; do
    if [[ $line =~ ^[0-9]+(\.[0-9]+){3}\ [0-9]+(\.[0-9]+){3}/[0-9]+$ ]]; then
      printf '%s' "$line"
      return 0
    fi
  done < <(podman_cli network inspect codeb-main \
    --format '{{range .Subnets}}{{.Gateway}} {{.Subnet}}{{"\n"}}{{end}}' 2>/dev/null)
  return 1
}

# The configs of PostgreSQL and Redis, which name codeb-main's gateway: written once the network
# exists (cmd_up), and the cluster initialised on the first run.
#
# Both listen on 127.0.0.1 (codeb, the tests) and on the gateway (containers on codeb-main), nowhere
# else; PostgreSQL accepts scram-sha-256 logins from loopback and that subnet only, and no Unix socket
# (the machine's /var/run/postgresql is not this stack's). Redis persists with an append-only file in
# its data dir (keys survive a restart, as PostgreSQL's rows do) and no RDB snapshots (`save ""`),
# and keeps its users in an ACL file, so that `ACL SAVE` persists the users codeb creates; the
# default user is the admin, its password stored there as a SHA-256.
write_data_configs() {
  local net gw subnet
  net=$(codeb_network) || die "the network codeb-main does not exist; PostgreSQL and Redis listen on its gateway"
  read -r gw subnet <<<"$net"
  mkdir -p "$PG_DIR" "$REDIS_DIR"
  # The postgres and redis users reach their dirs through the state dir's parents.
  local user dir
  for user in postgres redis; do
    dir=$PG_DIR
    [[ $user == redis ]] && dir=$REDIS_DIR
    runuser -u "$user" -- test -x "$dir" ||
      die "the $user user cannot reach $dir: every parent directory must be searchable (o+x)"
  done

  write_file "$PG_CONF" 644 "$(
    cat <<EOF
# Written by deploy/stack.sh; edits are overwritten. The cluster's own postgresql.conf is not read.
data_directory = '$PG_DATA'
hba_file = '$PG_HBA'
ident_file = '$PG_DATA/pg_ident.conf'
listen_addresses = '127.0.0.1,$gw'
port = $PG_PORT
unix_socket_directories = ''
max_connections = 200
shared_buffers = 32MB
dynamic_shared_memory_type = posix
password_encryption = scram-sha-256
logging_collector = off
log_line_prefix = '%m [%p] %q%u@%d '
timezone = 'UTC'
log_timezone = 'UTC'
EOF
  )"
  write_file "$PG_HBA" 644 "$(
    cat <<EOF
# Written by deploy/stack.sh; edits are overwritten. Password logins from loopback and codeb-main only.
# TYPE  DATABASE  USER  ADDRESS        METHOD
host    all       all   127.0.0.1/32   scram-sha-256
host    all       all   $subnet  scram-sha-256
EOF
  )"
  if [[ ! -s $PG_DATA/PG_VERSION ]]; then
    # initdb into an empty directory aside, renamed when complete: an interrupted run never leaves a
    # half-made cluster. --pwfile must be readable by postgres: a copy of its own, removed after.
    local tmp="$PG_DIR/data.new" log="$LOG_DIR/postgres.log"
    rm -rf "$tmp" "$PG_DIR/initdb.pw"
    install -d -o postgres -g postgres -m 700 "$tmp"
    install -o postgres -g postgres -m 600 "$PG_PASSWORD_FILE" "$PG_DIR/initdb.pw"
    say "initialising the PostgreSQL cluster in $PG_DATA"
    if ! runuser -u postgres -- "$PG_BIN/initdb" -D "$tmp" -U "$PG_ADMIN" --pwfile="$PG_DIR/initdb.pw" \
      --auth=scram-sha-256 -E UTF8 --locale=C.UTF-8 >>"$log" 2>&1 9>&-; then
      rm -f "$PG_DIR/initdb.pw"
      fail_service postgres "initdb failed"
      die "cannot initialise PostgreSQL (log: $log)"
    fi
    rm -f "$PG_DIR/initdb.pw"
    mv "$tmp" "$PG_DATA"
  fi

  install -d -o redis -g redis -m 700 "$REDIS_DIR/data"
  write_file "$REDIS_CONF" 644 "$(
    cat <<EOF
# Written by deploy/stack.sh; edits are overwritten. No secret here: the users are in the ACL file.
bind 127.0.0.1 $gw
port $REDIS_PORT
protected-mode yes
daemonize no
# Keeps the command line naming this file, which is how the stack recognises its process.
set-proc-title no
logfile ""
dir $REDIS_DIR/data
aclfile $REDIS_ACL
save ""
appendonly yes
appendfsync everysec
EOF
  )"
  if [[ ! -s $REDIS_ACL ]]; then
    local hash
    hash=$(printf '%s' "$REDIS_ADMIN_PASSWORD" | sha256sum | cut -c1-64)
    (
      umask 077
      printf 'user default on #%s ~* &* +@all\n' "$hash" >"$REDIS_ACL.tmp"
    )
    chown redis:redis "$REDIS_ACL.tmp"
    mv -f "$REDIS_ACL.tmp" "$REDIS_ACL"
  fi
}

config_files() {
  case $1 in
  podman) echo "$CONTAINERS_CONF_FILE $STORAGE_CONF_FILE" ;;
  caddy) echo "$CADDY_CONFIG" ;;
  pdns) echo "$PDNS_DIR/pdns.conf" ;;
  postgres) echo "$PG_CONF $PG_HBA" ;;
  redis) echo "$REDIS_CONF" ;;
  esac
}

# A hash of the config a service was started with is kept beside its pid, so `up` restarts a service
# whose config this script now writes differently (an edited port, say) instead of keeping it stale.
config_hash() {
  local files
  read -ra files <<<"$(config_files "$1")"
  cat "${files[@]}" | sha256sum | cut -c1-64
}

# ---------------------------------------------------------------------------------------------------
# Processes

# Prints the pid of the service if it is alive and is ours. The command line must name a file in the
# state dir (with the slash, so /tmp/s does not match /tmp/s2), so a recycled pid is never mistaken
# for the service. A zombie (PID 1 here does not reap
# orphans) has an empty command line and so counts as stopped.
service_pid() {
  local pidfile="$RUN_DIR/$1.pid" pid cmdline
  [[ -s $pidfile ]] || return 1
  pid=$(<"$pidfile")
  [[ $pid =~ ^[0-9]+$ ]] || return 1
  cmdline=$(tr '\0' ' ' 2>/dev/null <"/proc/$pid/cmdline") || return 1
  [[ $cmdline == *"$STACK_DIR/"* ]] || return 1
  printf '%s' "$pid"
}

probe() { # name: succeeds when the service answers its API
  case $1 in
  podman)
    [[ -S $PODMAN_SOCK ]] &&
      [[ "$(curl -sf --max-time 2 --unix-socket "$PODMAN_SOCK" http://d/_ping 2>/dev/null)" == OK ]]
    ;;
  caddy) curl -sf -o /dev/null --max-time 2 "http://$CADDY_ADMIN_ADDR/config/" ;;
  pdns)
    curl -sf -o /dev/null --max-time 2 -H "X-API-Key: $PDNS_API_KEY" \
      "http://127.0.0.1:$PDNS_API_PORT/api/v1/servers/localhost"
    ;;
  # The admin logs in (a wrong password is a failed probe, not a healthy server).
  postgres)
    [[ "$(PGPASSWORD=$PG_ADMIN_PASSWORD PGCONNECT_TIMEOUT=2 psql -X -w -At -h 127.0.0.1 -p "$PG_PORT" \
      -U "$PG_ADMIN" -d postgres -c 'select 1' 2>/dev/null)" == 1 ]]
    ;;
  redis)
    [[ "$(REDISCLI_AUTH=$REDIS_ADMIN_PASSWORD timeout 3 redis-cli -h 127.0.0.1 -p "$REDIS_PORT" \
      ping 2>/dev/null)" == PONG ]]
    ;;
  esac
}

start_service() {
  local name=$1 log="$LOG_DIR/$1.log" pid
  printf '==== %s: stack.sh starting %s ====\n' "$(date -Is)" "$name" >>"$log"
  # setsid: the service gets its own session, so it survives this script and the terminal or CI step
  # that ran it, and no signal sent to our process group reaches it. Run as a background job of a
  # non-interactive shell, setsid is not a group leader, so it execs without forking and $! is the
  # service's own pid. stdin/stdout/stderr are detached from ours (a caller reading our output through
  # a pipe would otherwise wait for the service to exit), and the lock fd 9 is closed.
  case $name in
  podman)
    rm -f "$PODMAN_SOCK"
    CONTAINERS_CONF="$CONTAINERS_CONF_FILE" CONTAINERS_STORAGE_CONF="$STORAGE_CONF_FILE" \
      setsid podman system service --time=0 "unix://$PODMAN_SOCK" </dev/null >>"$log" 2>&1 9>&- &
    ;;
  caddy)
    # Caddy keeps certificates and autosaves under XDG dirs / HOME when not told otherwise.
    XDG_DATA_HOME="$CADDY_DIR/data" XDG_CONFIG_HOME="$CADDY_DIR/config" HOME="$CADDY_DIR/home" \
      setsid caddy run --config "$CADDY_CONFIG" </dev/null >>"$log" 2>&1 9>&- &
    ;;
  pdns)
    setsid pdns_server --config-dir="$PDNS_DIR" </dev/null >>"$log" 2>&1 9>&- &
    ;;
  # pg_ctl starts the postmaster in a session of its own and waits (bounded) until it accepts
  # connections; its pid is the first line of postmaster.pid. A failed start leaves no pid, which
  # wait_healthy reports with the log's tail. The log is appended to by the postgres user.
  postgres)
    chown postgres "$log"
    runuser -u postgres -- "$PG_BIN/pg_ctl" -D "$PG_DATA" -o "-c config_file=$PG_CONF" -l "$log" \
      -w -t "$START_TIMEOUT_S" start </dev/null >>"$log" 2>&1 9>&- || true
    pid=$(head -n1 "$PG_DATA/postmaster.pid" 2>/dev/null || true)
    printf '%s\n' "$pid" >"$RUN_DIR/$name.pid"
    config_hash "$name" >"$RUN_DIR/$name.config-hash"
    return 0
    ;;
  # As the redis user; setpriv execs (no fork), so $! is redis-server's pid.
  redis)
    setsid setpriv --reuid=redis --regid=redis --init-groups redis-server "$REDIS_CONF" \
      </dev/null >>"$log" 2>&1 9>&- &
    ;;
  esac
  pid=$!
  printf '%s\n' "$pid" >"$RUN_DIR/$name.pid"
  config_hash "$name" >"$RUN_DIR/$name.config-hash"
}

stop_service() {
  local name=$1 pid deadline killed=0
  # PostgreSQL's SIGTERM is a smart shutdown, which waits for every client to leave; SIGINT is the
  # fast one (pg_ctl stop -m fast): clients are disconnected and the cluster shuts down cleanly.
  local signal=TERM
  [[ $name == postgres ]] && signal=INT
  if pid=$(service_pid "$name"); then
    say "stopping $name (pid $pid)"
    kill -"$signal" "$pid" 2>/dev/null || true
    deadline=$(($(now_us) + STOP_TIMEOUT_S * 1000000))
    while service_pid "$name" >/dev/null; do
      if (($(now_us) > deadline)); then
        ((killed == 0)) || die "$name (pid $pid) survived SIGKILL for 5 s"
        say "$name did not exit ${STOP_TIMEOUT_S}s after SIG$signal; sending SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
        killed=1
        deadline=$(($(now_us) + 5000000))
      fi
      sleep 0.05
    done
  fi
  rm -f "$RUN_DIR/$name.pid" "$RUN_DIR/$name.config-hash"
}

fail_service() { # name reason: print the log tail loudly; the caller exits
  local name=$1 reason=$2 log="$LOG_DIR/$1.log"
  {
    printf '\n################################################################################\n'
    printf '### stack: %s FAILED: %s\n' "$name" "$reason"
    printf '### last 30 lines of %s:\n' "$log"
    tail -n 30 "$log" 2>/dev/null | sed 's/^/    /'
    printf '################################################################################\n'
  } >&2
}

# Polls every pending service until all answer, one exits, or the deadline passes.
wait_healthy() {
  local pending=("$@") still name failed=0 deadline
  deadline=$(($(now_us) + START_TIMEOUT_S * 1000000))
  while ((${#pending[@]} > 0)); do
    still=()
    for name in "${pending[@]}"; do
      if probe "$name"; then
        say "$name is up"
      elif ! service_pid "$name" >/dev/null; then
        fail_service "$name" "the process exited during start-up"
        failed=1
      elif (($(now_us) > deadline)); then
        fail_service "$name" "no answer within ${START_TIMEOUT_S}s"
        failed=1
      else
        still+=("$name")
      fi
    done
    pending=("${still[@]+"${still[@]}"}")
    ((${#pending[@]} == 0)) || sleep 0.05
  done
  ((failed == 0)) || die "the stack is not up (logs in $LOG_DIR)"
}

# Something other than our process answering on our port (another stack, a system-wide service)
# would make the tests talk to the wrong server: refuse instead.
check_port_free() {
  local name=$1
  [[ $name == podman ]] && return 0 # the socket is inside our own state dir
  # PostgreSQL and Redis do not speak HTTP: any accepted TCP connection means the port is taken.
  if [[ $name == postgres || $name == redis ]]; then
    local port=$PG_PORT
    [[ $name == redis ]] && port=$REDIS_PORT
    if timeout 1 bash -c ": </dev/tcp/127.0.0.1/$port" 2>/dev/null; then
      die "$name: 127.0.0.1:$port is already served by a process that is not this stack's" \
        "(state dir $STACK_DIR). Stop it, or run 'down' in the stack dir that owns it."
    fi
    return 0
  fi
  # Any HTTP answer at all (curl exits 0) means the port is taken.
  if curl -s -o /dev/null --max-time 1 "$(service_url "$name")"; then
    die "$name: $(service_url "$name") is already served by a process that is not this stack's" \
      "(state dir $STACK_DIR). Stop it, or run 'down' in the stack dir that owns it."
  fi
}

service_url() {
  case $1 in
  podman) echo "unix://$PODMAN_SOCK" ;;
  caddy) echo "http://$CADDY_ADMIN_ADDR" ;;
  pdns) echo "http://127.0.0.1:$PDNS_API_PORT" ;;
  postgres) echo "postgres://$PG_ADMIN@127.0.0.1:$PG_PORT/postgres" ;;
  redis) echo "redis://127.0.0.1:$REDIS_PORT" ;;
  esac
}

# ---------------------------------------------------------------------------------------------------
# Subcommands

cmd_up() {
  local name base=() started=0
  [[ $EUID -eq 0 ]] || die "up needs root (rootful Podman, apt)"
  take_lock
  ensure_packages
  write_configs
  register_stack
  reap_dead_stacks
  for name in "${SERVICES[@]}"; do
    [[ " ${DATA_SERVICES[*]} " == *" $name "* ]] || base+=("$name")
  done
  # All port conflicts first (the data services' too, when not running), so a refused start leaves
  # nothing half started.
  for name in "${DATA_SERVICES[@]}"; do
    service_pid "$name" >/dev/null || check_port_free "$name"
  done
  up_services "${base[@]}"
  # PostgreSQL and Redis listen on codeb-main's gateway: the network, its bridge and their configs
  # (which name the gateway) come first.
  ensure_codeb_network
  ensure_bridge_anchor
  write_data_configs
  up_services "${DATA_SERVICES[@]}"
  if ((started == 0)); then
    say "stack is up, nothing to do (state dir $STACK_DIR)"
  else
    say "stack is up (state dir $STACK_DIR)"
  fi
}

# Starts those of the named services that are not running and answering with their current config,
# and waits until they answer. Counts the services it started in the caller's `started`.
up_services() {
  local name to_start=() recorded
  for name in "$@"; do
    if service_pid "$name" >/dev/null; then
      recorded=$(cat "$RUN_DIR/$name.config-hash" 2>/dev/null || true)
      if [[ $recorded != "$(config_hash "$name")" ]]; then
        say "$name: its config changed since it started; restarting it"
        stop_service "$name"
      elif probe "$name"; then
        continue
      else
        # We hold the lock, so no other `up` is starting it: it is hung, or failed a previous start.
        say "$name is running but does not answer; restarting it"
        stop_service "$name"
      fi
    fi
    to_start+=("$name")
  done
  ((${#to_start[@]} > 0)) || return 0
  for name in "${to_start[@]}"; do check_port_free "$name"; done
  for name in "${to_start[@]}"; do
    say "starting $name"
    start_service "$name"
  done
  wait_healthy "${to_start[@]}"
  started=$((started + ${#to_start[@]}))
}

# Keeps one container (an unlabelled busybox sleeping, so codeb sees it as foreign and never touches
# it) on codeb-main, so that its bridge and gateway address exist while no app runs: netavark creates
# the bridge with the first container on a network and deletes it with the last, and PostgreSQL and
# Redis cannot bind an address that is not there (nor get it back when it returns after they
# started). Waits (bounded) until the bridge carries the gateway address.
ensure_bridge_anchor() {
  local state gw bridge deadline
  state=$(podman_cli container inspect --format '{{.State.Status}}' "$ANCHOR" 2>/dev/null || true)
  case $state in
  running) ;;
  "")
    if ! podman_cli image exists "$ANCHOR_IMAGE"; then
      local dir
      dir=$(mktemp -d "$STACK_DIR/tmp/anchor.XXXXXX")
      cleanup_actions+=("rm -rf '$dir'")
      make_rootfs "$dir/rootfs"
      import_image "$ANCHOR_IMAGE" "$dir/rootfs" 'CMD ["/bin/sleep", "2147483647"]' 'ENV PATH=/bin'
    fi
    podman_cli run -d --name "$ANCHOR" --network codeb-main --init --restart always \
      "$ANCHOR_IMAGE" >>"$LOG_DIR/podman.log" 2>&1 9>&- ||
      die "cannot start the container $ANCHOR on codeb-main (see $LOG_DIR/podman.log)"
    say "started $ANCHOR, which keeps codeb-main's bridge up"
    ;;
  *)
    podman_cli start "$ANCHOR" >>"$LOG_DIR/podman.log" 2>&1 9>&- ||
      die "cannot start the container $ANCHOR (see $LOG_DIR/podman.log)"
    ;;
  esac
  gw=$(codeb_network) || die "the network codeb-main has no IPv4 subnet"
  gw=${gw%% *}
  bridge=$(podman_cli network inspect codeb-main --format '{{.NetworkInterface}}')
  deadline=$(($(now_us) + 5000000))
  until ip -4 -o addr show dev "$bridge" 2>/dev/null | grep -q " inet $gw/"; do
    (($(now_us) < deadline)) || die "the bridge $bridge of codeb-main has no address $gw"
    sleep 0.05
  done
  # A Linux bridge takes the lowest MAC address of its ports unless one was set on it: every
  # container joining or leaving could change the gateway's MAC under the other containers' ARP
  # caches, and their new connections to the gateway (PostgreSQL, Redis) stalled for seconds
  # (measured: one psql connect in ~60 timed out at 5 s while containers came and went). Setting
  # the address it has now pins it (addr_assign_type 3: set by the user).
  if [[ $(cat "/sys/class/net/$bridge/addr_assign_type" 2>/dev/null) != 3 ]]; then
    ip link set dev "$bridge" address "$(cat "/sys/class/net/$bridge/address")" ||
      die "cannot pin the MAC address of the bridge $bridge"
    say "pinned the MAC address of $bridge"
  fi
}

# codeb creates its network `codeb-main` when missing, and Podman would name its bridge podman1 in
# every stack: two stacks running at once would share one bridge, and one stack's teardown could
# remove it under the other. So the stack creates the network with a bridge named after its HTTP
# port; codeb finds it and uses it. Podman 4.3's CLI has no --interface-name, but its
# Docker-compatible API maps this option to the bridge name.
ensure_codeb_network() {
  podman_cli network exists codeb-main && return 0
  curl -fsS --unix-socket "$PODMAN_SOCK" -H 'Content-Type: application/json' \
    -d "{\"Name\":\"codeb-main\",\"Driver\":\"bridge\",\"Options\":{\"com.docker.network.bridge.name\":\"cb${SETTINGS[HTTP_PORT]}\"}}" \
    http://d/v1.41/networks/create >/dev/null || die "cannot create the network codeb-main"
  say "created network codeb-main (bridge cb${SETTINGS[HTTP_PORT]})"
}

# codeb's NAT chains for this stack's network (named after its gateway, see src/backend/netfilter.rs)
# and their rule in the base chain of codeb's nf_tables table `ip codeb` outlive the projects that
# used them; they go with the network. Only chains named CODEB-<this gateway in hex> and the rules
# jumping to them are touched; the table and its base chain stay (another stack may share them).
remove_codeb_chains() {
  local gw hex line chains=() lines=()
  gw=$(podman_cli network inspect codeb-main --format '{{range .Subnets}}{{.Gateway}}{{end}}' 2>/dev/null) ||
    return 0
  [[ $gw =~ ^[0-9]+(\.[0-9]+){3}$ ]] || return 0
  command -v nft >/dev/null || return 0
  # shellcheck disable=SC2086 # the dots split the address into its four bytes
  hex=$(IFS=. && printf '%02x' $gw)
  while IFS= read -r line; do
    case $line in
    *"jump CODEB-$hex "*"# handle "*) lines+=("delete rule ip codeb output handle ${line##* }") ;;
    esac
  done < <(nft -a list chain ip codeb output 2>/dev/null)
  # The bridge's loopback rules (masquerade, guard), named by its interface.
  local bridge="cb${SETTINGS[HTTP_PORT]}" chain
  for chain in postrouting input; do
    while IFS= read -r line; do
      case $line in
      *"ifname \"$bridge\" "*"# handle "*) lines+=("delete rule ip codeb $chain handle ${line##* }") ;;
      esac
    done < <(nft -a list chain ip codeb "$chain" 2>/dev/null)
  done
  # Chains of this gateway, and slot ports published on 127.0.0.1 (CODEB-7f000001-PORT) whose
  # DNAT leads into this network (its /24), with their dispatch rules.
  local prefix=${gw%.*}. current="" published=()
  while IFS= read -r line; do
    line=${line#"${line%%[![:space:]]*}"}
    case $line in
    "chain CODEB-$hex {" | "chain CODEB-$hex-"*) line=${line#chain } && chains+=("${line%% *}") ;;
    "chain CODEB-7f000001-"*) line=${line#chain } && current=${line%% *} ;;
    "dnat to $prefix"*) [[ -z $current ]] || published+=("$current") ;;
    "}") current="" ;;
    esac
  done < <(nft list table ip codeb 2>/dev/null)
  for chain in "${published[@]}"; do
    chains+=("$chain")
    while IFS= read -r line; do
      case $line in
      *"jump $chain # handle "*) lines+=("delete rule ip codeb CODEB-7f000001 handle ${line##* }") ;;
      esac
    done < <(nft -a list chain ip codeb CODEB-7f000001 2>/dev/null)
  done
  ((${#chains[@]} + ${#lines[@]} > 0)) || return 0
  # One transaction: the jumps go, every chain is flushed (a chain with rules cannot be deleted),
  # then deleted, service chains before the dispatch chain (reverse order: its name is a prefix).
  for line in "${chains[@]}"; do lines+=("flush chain ip codeb $line"); done
  while IFS= read -r line; do lines+=("delete chain ip codeb $line"); done < <(printf '%s\n' "${chains[@]}" | sort -r)
  if printf '%s\n' "${lines[@]}" | nft -f -; then
    say "removed codeb's NAT chains for $gw (CODEB-$hex)"
  else
    say "could not remove codeb's NAT chains for $gw (CODEB-$hex)"
  fi
}

# Stacks on this machine, one file each (named by a hash of the state dir, holding its path), so
# that `up` can clean up after a stack that died.
readonly REGISTRY_DIR=/var/lib/codeb-stacks

registry_entry() { printf '%s/%s' "$REGISTRY_DIR" "$(printf '%s' "$STACK_DIR" | sha256sum | cut -c1-16)"; }

register_stack() {
  local entry
  mkdir -p "$REGISTRY_DIR"
  entry=$(registry_entry)
  [[ -f $entry && "$(<"$entry")" == "$STACK_DIR" ]] || printf '%s\n' "$STACK_DIR" >"$entry"
}

# A stack whose Podman service is gone (its session ended and its processes were killed, or it was
# only stopped) leaves its containers' networking in the kernel, outside its state dir: their bridge,
# netavark's port forwarding and codeb's NAT rules for the slot ports. A new stack on the same ports
# then has its first health probes caught by those rules and refused (seen in a CI run that followed
# a session whose stack was still up). So `up` first removes the containers of every registered
# stack that is not running, through that stack's own Podman (which tears their networks down), with
# codeb's NAT chains for its network; their images and state dirs stay.
reap_dead_stacks() {
  local entry dir
  [[ -d $REGISTRY_DIR ]] || return 0
  for entry in "$REGISTRY_DIR"/*; do
    [[ -f $entry ]] || continue
    dir=$(<"$entry")
    [[ $dir != "$STACK_DIR" ]] || continue
    if [[ ! -e $dir/.codeb-stack-dir ]]; then
      rm -f "$entry"
      continue
    fi
    CODEB_STACK_DIR=$dir "${BASH_SOURCE[0]}" reap || say "could not clean up after the stack at $dir"
  done
}

# Internal (see reap_dead_stacks): when this stack's Podman service is not running, remove its
# containers and their network state.
cmd_reap() {
  take_lock
  service_pid podman >/dev/null && return 0
  [[ -f $CONTAINERS_CONF_FILE && -d $PODMAN_DIR/storage ]] || return 0
  [[ -n $(podman_cli ps -aq 2>/dev/null) ]] || podman_cli network exists codeb-main || return 0
  say "the stack at $STACK_DIR is not running: removing its containers and their networks"
  remove_codeb_chains
  podman_cli rm -af -t 0 >>"$LOG_DIR/podman.log" 2>&1 || say "podman rm failed; see $LOG_DIR/podman.log"
  podman_cli network rm -f codeb-main >>"$LOG_DIR/podman.log" 2>&1 || true
}

cmd_down() {
  local purge=0 name
  case ${1-} in
  "") ;;
  --purge) purge=1 ;;
  *) usage ;;
  esac
  [[ -d $STACK_DIR ]] || {
    say "no stack at $STACK_DIR"
    return 0
  }
  take_lock
  for name in "${SERVICES[@]}"; do stop_service "$name"; done
  ((purge)) || return 0

  [[ -e $MARKER ]] || die "$STACK_DIR has no $MARKER; refusing to delete it"
  # Containers hold overlay mounts, network namespaces and iptables rules outside the state dir:
  # let Podman tear all of that down before the directory goes.
  if [[ -f $CONTAINERS_CONF_FILE && -d $PODMAN_DIR/storage ]]; then
    remove_codeb_chains
    say "removing this stack's containers, images and networks"
    podman_cli system reset --force >>"$LOG_DIR/podman.log" 2>&1 ||
      die "podman system reset failed; see $LOG_DIR/podman.log"
  fi
  local mnt
  # Any mount left under the dir (it should be none) would make rm -rf delete through it.
  while read -r mnt; do
    umount -l "$mnt" || die "cannot unmount $mnt"
  done < <(awk -v d="$STACK_DIR/" 'index($5, d) == 1 { print $5 }' /proc/self/mountinfo | sort -r)
  exec 9>&-
  rm -rf "$STACK_DIR"
  rm -f "$(registry_entry)"
  say "purged $STACK_DIR"
}

# CODEB_INSTANCE: every state directory that tests and benches make is the one owner of this stack's
# host (codeb marks a host with its owner and refuses a host another owner marked). The *_APP_HOST
# variables (where containers on codeb-main reach PostgreSQL and Redis: the gateway) are printed once
# the network exists (after the first `up`).
cmd_env() {
  take_lock
  write_configs
  local var gw app=()
  if gw=$(codeb_network); then
    gw=${gw%% *}
    app=("CODEB_TEST_PG_APP_HOST=$gw:$PG_PORT" "CODEB_TEST_REDIS_APP_HOST=$gw:$REDIS_PORT")
  fi
  for var in \
    "CODEB_STACK_DIR=$STACK_DIR" \
    "CODEB_INSTANCE=codeb-stack" \
    "CODEB_TEST_PODMAN=unix://$PODMAN_SOCK" \
    "CODEB_TEST_CADDY_ADMIN=http://$CADDY_ADMIN_ADDR" \
    "CODEB_TEST_HTTP=$CODEB_HTTP_ADDR" \
    "CODEB_TEST_PDNS_API=http://127.0.0.1:$PDNS_API_PORT" \
    "CODEB_TEST_PDNS_DNS=127.0.0.1:$PDNS_DNS_PORT" \
    "PDNS_API_KEY=$PDNS_API_KEY" \
    "CONTAINERS_CONF=$CONTAINERS_CONF_FILE" \
    "CONTAINERS_STORAGE_CONF=$STORAGE_CONF_FILE" \
    "CODEB_TEST_PG_URL=$(service_url postgres)" \
    "PG_ADMIN_PASSWORD=$PG_ADMIN_PASSWORD" \
    "CODEB_TEST_REDIS_URL=$(service_url redis)" \
    "REDIS_ADMIN_PASSWORD=$REDIS_ADMIN_PASSWORD" \
    "${app[@]}"; do
    printf 'export %s=%q\n' "${var%%=*}" "${var#*=}"
  done
}

cmd_status() {
  local name pid all=0
  [[ -s $PDNS_KEY_FILE ]] && PDNS_API_KEY=$(<"$PDNS_KEY_FILE")
  load_data_secrets
  for name in "${SERVICES[@]}"; do
    if pid=$(service_pid "$name"); then
      if probe "$name"; then
        printf '%-8s healthy    pid %-8s %s\n' "$name" "$pid" "$(service_url "$name")"
      else
        printf '%-8s UNHEALTHY  pid %-8s %s (log: %s)\n' "$name" "$pid" "$(service_url "$name")" \
          "$LOG_DIR/$name.log"
        all=1
      fi
    else
      printf '%-8s STOPPED    %-12s %s\n' "$name" "" "$(service_url "$name")"
      all=1
    fi
  done
  return "$all"
}

cmd_restart_caddy() {
  take_lock
  write_configs
  stop_service caddy
  check_port_free caddy
  start_service caddy
  wait_healthy caddy
}

cmd_stop() { # service
  local name=$1
  [[ " ${SERVICES[*]} " == *" $name "* ]] || usage
  take_lock
  stop_service "$name"
}

# ---------------------------------------------------------------------------------------------------
# Test images

# The CLI works on the store directly (not through the service), with the same configs.
podman_cli() {
  CONTAINERS_CONF="$CONTAINERS_CONF_FILE" CONTAINERS_STORAGE_CONF="$STORAGE_CONF_FILE" podman "$@"
}

# A minimal rootfs: the static busybox and a symlink per applet in /bin, /etc/passwd for tools that
# look up uid 0, and an empty /tmp. Its content is deterministic, so its tarball hash names the build
# inputs. `busybox --install -s` makes all the links in one process (a loop of `ln` took ~0.3 s per
# image); they point at busybox's real path on this host (/usr/bin/busybox on a merged-/usr system),
# so the binary goes to that same path in the image.
make_rootfs() { # dir
  local root=$1 busybox
  busybox=$(readlink -f /bin/busybox)
  mkdir -p "$root"/{bin,etc,tmp,www/cgi-bin,app} "$root$(dirname "$busybox")"
  chmod 1777 "$root/tmp"
  cp "$busybox" "$root$busybox"
  "$busybox" --install -s "$root/bin"
  printf 'root:x:0:0:root:/:/bin/sh\n' >"$root/etc/passwd"
  printf 'root:x:0:\n' >"$root/etc/group"
}

# Imports <dir> as <ref> unless <ref> already exists with the same inputs (tarball + image config),
# recorded in the label codeb.test.inputs.
import_image() { # ref dir change...
  local ref=$1 dir=$2 tarball have want old_id new_id
  shift 2
  local changes=("$@")
  tarball="$dir.tar"
  # Fixed order, owners and times: the same inputs give the same bytes, hence the same hash.
  tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -C "$dir" -cf "$tarball" .
  want=$({
    cat "$tarball"
    printf '%s\n' "${changes[@]}"
  } | sha256sum | cut -c1-64)
  have=$(podman_cli image inspect --format '{{index .Labels "codeb.test.inputs"}}' "$ref" 2>/dev/null || true)
  if [[ $have == "$want" ]]; then
    say "image $ref is up to date"
    return 0
  fi
  old_id=$(podman_cli image inspect --format '{{.Id}}' "$ref" 2>/dev/null || true)
  local args=() c
  for c in "${changes[@]}" "LABEL codeb.test.inputs=$want"; do args+=(--change "$c"); done
  new_id=$(podman_cli import --quiet "${args[@]}" "$tarball" "$ref")
  new_id=${new_id#sha256:}
  say "built image $ref (${new_id:0:12})"
  # The replaced image is now untagged; drop it unless a container still uses it.
  if [[ -n $old_id && $old_id != "$new_id" ]]; then
    podman_cli rmi "$old_id" >/dev/null 2>&1 || say "kept the old $ref (${old_id:0:12}): still in use"
  fi
}

cmd_images() {
  take_lock
  ensure_packages
  write_configs
  local work version dir
  work=$(mktemp -d "$STACK_DIR/tmp/images.XXXXXX")
  cleanup_actions+=("rm -rf '$work'")

  # The app: busybox httpd on :8080 serving its version on /, "ok" on /health, and two CGIs. Bodies
  # carry no trailing newline, so tests can compare them exactly. httpd runs in the foreground as the
  # main process: busybox as PID 1 ignores SIGTERM, so run it with --init (HostConfig.Init) for a
  # prompt stop.
  for version in v1 v2 v3; do
    dir="$work/app-$version"
    make_rootfs "$dir"
    printf '%s' "$version" >"$dir/www/index.html"
    printf 'ok' >"$dir/www/health"
    cat >"$dir/www/cgi-bin/slow" <<'EOF'
#!/bin/sh
# A request that takes 2 s: lets tests prove that a switch or a stop drains in-flight requests.
sleep 2
printf 'Content-Type: text/plain\r\n\r\n'
printf 'slow-%s' "$(cat /www/index.html)"
EOF
    cat >"$dir/www/cgi-bin/version" <<'EOF'
#!/bin/sh
printf 'Content-Type: text/plain\r\n\r\n'
cat /www/index.html
EOF
    cat >"$dir/app/run" <<'EOF'
#!/bin/sh
echo "codeb-test-app $(cat /www/index.html) listening on :8080"
exec httpd -f -p 8080 -h /www
EOF
    chmod 755 "$dir/www/cgi-bin/slow" "$dir/www/cgi-bin/version" "$dir/app/run"
    import_image "localhost/codeb-test-app:$version" "$dir" \
      'CMD ["/app/run"]' 'EXPOSE 8080' 'ENV PATH=/bin' "LABEL codeb.test.version=$version"
  done

  # The unhealthy app: it runs and listens, so it fails fast and cleanly (an immediate 404 on
  # /health rather than a refused or hanging connection), and it logs a recognizable line on stdout
  # and one on stderr for tests of log tails.
  dir="$work/unhealthy"
  make_rootfs "$dir"
  printf 'unhealthy' >"$dir/www/index.html"
  cat >"$dir/app/run" <<'EOF'
#!/bin/sh
echo "unhealthy app starting"
echo "unhealthy app: /health answers 404 on purpose" >&2
exec httpd -f -p 8080 -h /www
EOF
  chmod 755 "$dir/app/run"
  import_image localhost/codeb-test-unhealthy:v1 "$dir" \
    'CMD ["/app/run"]' 'EXPOSE 8080' 'ENV PATH=/bin' 'LABEL codeb.test.version=v1'

  # The data app (issue #17's tests): the same httpd, plus the host's psql and redis-cli with the
  # shared libraries they load (from ldd, at the same paths), and two CGIs that use what codeb hands
  # an app. /cgi-bin/db creates its table if missing, inserts a row and prints the row count
  # (DATABASE_URL); /cgi-bin/cache INCRs ${REDIS_PREFIX}hits and prints it (REDIS_URL). Errors are
  # printed in the body (status 200 still), so a test sees what the client said.
  dir="$work/data"
  make_rootfs "$dir"
  local bin lib
  for bin in "$PG_BIN/psql" "$(command -v redis-cli)"; do
    cp -L "$bin" "$dir/bin/"
    while read -r lib; do
      mkdir -p "$dir$(dirname "$lib")"
      cp -L "$lib" "$dir$lib"
    done < <(ldd "$bin" | awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }')
  done
  printf 'data' >"$dir/www/index.html"
  printf 'ok' >"$dir/www/health"
  cat >"$dir/www/cgi-bin/db" <<'EOF'
#!/bin/sh
printf 'Content-Type: text/plain\r\n\r\n'
PGCONNECT_TIMEOUT=5 PGOPTIONS='-c client_min_messages=warning' psql "$DATABASE_URL" -X -q -At -v ON_ERROR_STOP=1 \
  -c 'CREATE TABLE IF NOT EXISTS hits (id serial PRIMARY KEY, at timestamptz NOT NULL DEFAULT now())' \
  -c 'INSERT INTO hits DEFAULT VALUES' -c 'SELECT count(*) FROM hits' 2>&1 | tr -d '\n'
EOF
  cat >"$dir/www/cgi-bin/cache" <<'EOF'
#!/bin/sh
printf 'Content-Type: text/plain\r\n\r\n'
timeout 5 redis-cli -u "$REDIS_URL" --no-auth-warning INCR "${REDIS_PREFIX}hits" 2>&1 | tr -d '\n'
EOF
  cat >"$dir/app/run" <<'EOF'
#!/bin/sh
echo "codeb-test-data listening on :8080"
exec httpd -f -p 8080 -h /www
EOF
  chmod 755 "$dir/www/cgi-bin/db" "$dir/www/cgi-bin/cache" "$dir/app/run"
  import_image localhost/codeb-test-data:v1 "$dir" \
    'CMD ["/app/run"]' 'EXPOSE 8080' 'ENV PATH=/bin' 'LABEL codeb.test.version=v1'
}

main() {
  local cmd=${1-}
  [[ $# -gt 0 ]] && shift
  case $cmd in
  up) no_args "$@" && cmd_up ;;
  down) cmd_down "$@" ;;
  reap) no_args "$@" && cmd_reap ;;
  env) no_args "$@" && cmd_env ;;
  status) no_args "$@" && cmd_status ;;
  restart-caddy) no_args "$@" && cmd_restart_caddy ;;
  stop)
    (($# == 1)) || usage
    cmd_stop "$1"
    ;;
  images) no_args "$@" && cmd_images ;;
  *) usage ;;
  esac
}

main "$@"
