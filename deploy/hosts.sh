#!/usr/bin/env bash
# Simulated remote hosts for codeb's multi-host tests (issue #18): N hosts that are really separate,
# on this one machine. Host N is
#   - a named network namespace ${PREFIX}N with a veth pair: root end ${PREFIX}N-r 10.250.N.1/24,
#     host end ${PREFIX}N-h 10.250.N.2/24 (its own loopback, links and nf_tables; no default route,
#     only a route to 10.250.0.0/16 via the root end, so the hosts reach each other's addresses
#     through the root namespace as servers on one network do, and nothing beyond it);
#   - one long-lived init process (`sleep infinity`) in that netns and in a private mount namespace
#     with a tmpfs on /run and a sysfs of its own links; every service below is entered into both;
#   - its own rootful Podman API service on /run/podman/podman.sock (in the private /run), with its
#     own store, configs and events under the state dir, and its own netavark/aardvark-dns state;
#   - Caddy with its admin API on 127.0.0.1:2019 inside the netns and a server `harness` on :80;
#   - sshd on 10.250.N.2:22 with its own host key, root login by the client key this script makes.
# The operator (tests, codeb) in the root namespace reaches a host only through its sshd: Caddy's
# admin and the Podman socket are not reachable from outside it.
#
# Usage: deploy/hosts.sh up N | down [--purge] | env | status
#
#   up N          make hosts 1..N (1 <= N <= 9) and start whatever is not running, wait (bounded) until
#                 every service answers (ssh included), then load the test images into each host's
#                 Podman (from the root stack's Podman, see below). Hosts above N are removed. A second
#                 `up N` is a no-op apart from the health checks and ensuring the host-to-host routes.
#   down          remove every host: its containers (through its Podman), its processes (every process
#                 of its mount namespace and their descendants, so also after a crash of Podman), its
#                 netns and veth, the `unreachable 10.250.0.0/16` route. `--purge` also removes the state
#                 directory (keys, stores, logs) and its registration.
#   env           print `export` lines: CODEB_HOSTS_DIR, CODEB_HOSTS_COUNT, and per host N
#                 CODEB_HOST_N_{NAME,ADDRESS,SSH_PORT,SSH_USER,SSH_KEY,KNOWN_HOSTS,PODMAN_SOCK,CADDY_ADMIN,PID}
#                 (PODMAN_SOCK and CADDY_ADMIN are as seen inside the host).
#   status        print each host's services and whether they answer; exit 1 if one does not.
#
# Client options that reach host N: ssh -F /dev/null -i "$CODEB_HOST_N_SSH_KEY" -o BatchMode=yes \
#   -o UserKnownHostsFile="$CODEB_HOST_N_KNOWN_HOSTS" -o StrictHostKeyChecking=yes root@10.250.N.2
# Nothing in /root/.ssh or /etc/ssh is read or written (the package's install writes /etc/ssh host keys
# once; this script's sshd never uses them).
#
# State dir: $CODEB_HOSTS_DIR, default <repo root>/.codeb-hosts, registered in /var/lib/codeb-hosts/
# so that a crashed run can still be found and removed. Netns names: $CODEB_HOSTS_PREFIX (default cbh).
# Images: $CODEB_HOSTS_IMAGES (space separated, default localhost/codeb-test-app:v1 and :v2), saved from the
# Podman at $CODEB_TEST_PODMAN (the root stack's: eval "$(deploy/stack.sh env)" first; without it this
# script asks deploy/stack.sh env). Saving only reads that store; nothing of the root stack changes.
# Exit status: 0 success, 1 failure, 2 bad usage. Progress goes to stderr, so `env` can be evaluated.
#
# Why not `ip netns exec`: it mounts a fresh sysfs on /sys without the /sys/fs/cgroup mounts that runc
# with cgroupfs needs. Why a private /run: rootful Podman keeps netavark's ipam.db, aardvark-dns and
# container netns files under /run whatever its config, so with a shared /run a host would meet the
# root stack's aardvark-dns. (Measured in ../shared/ENVIRONMENT.md, "hosts in network namespaces".)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
readonly ROOT
HOSTS_DIR="${CODEB_HOSTS_DIR:-$ROOT/.codeb-hosts}"
[[ $HOSTS_DIR == /* ]] || HOSTS_DIR="$PWD/$HOSTS_DIR"
HOSTS_DIR="$(realpath -m -- "$HOSTS_DIR")"
readonly HOSTS_DIR="${HOSTS_DIR%/}"
readonly PREFIX="${CODEB_HOSTS_PREFIX:-cbh}"
readonly IMAGES="${CODEB_HOSTS_IMAGES:-localhost/codeb-test-app:v1 localhost/codeb-test-app:v2}"
readonly MARKER="$HOSTS_DIR/.codeb-hosts-dir"
readonly REGISTRY_DIR=/var/lib/codeb-hosts
readonly CLIENT_KEY="$HOSTS_DIR/client/id_ed25519"
readonly AUTHORIZED_KEYS="$HOSTS_DIR/client/authorized_keys"
readonly IMAGE_DIR="$HOSTS_DIR/images"
# Every host's address lies in this /16; an unreachable route for it (metric above any connected
# route) keeps a packet for a host that is down, or for an address inside one, from leaving by eth0.
readonly HOSTS_NET=10.250.0.0/16
readonly UNREACHABLE_METRIC=4000
# Inside every host (its private /run, its own loopback): the same paths and ports on each.
readonly HOST_PODMAN_SOCK=/run/podman/podman.sock
readonly HOST_CADDY_ADMIN=127.0.0.1:2019
# Measured: a host's services answer 0.26-0.41 s after start; 20 s turns "slow" into "failed".
readonly START_TIMEOUT_S=20
readonly STOP_TIMEOUT_S=5
readonly SERVICES=(podman caddy sshd)
readonly SSH_OPTS=(-F /dev/null -i "$CLIENT_KEY" -o BatchMode=yes -o StrictHostKeyChecking=yes
  -o ConnectTimeout=5 -o LogLevel=ERROR)

export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"

say() { printf 'hosts: %s\n' "$*" >&2; }
die() {
  printf '\nhosts: ERROR: %s\n' "$*" >&2
  exit 1
}
usage() {
  sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | grep '^#' | sed 's/^# \{0,1\}//' >&2
  exit 2
}
now_us() { printf '%s' "${EPOCHREALTIME/./}"; }

[[ $PREFIX =~ ^[a-z][a-z0-9]{0,7}$ ]] || {
  printf 'hosts: ERROR: bad CODEB_HOSTS_PREFIX %q (a-z0-9, at most 8)\n' "$PREFIX" >&2
  exit 2
}
[[ $HOSTS_DIR != *[\"\\\'[:space:]]* ]] || {
  printf 'hosts: ERROR: state dir %q has quotes, backslashes or spaces\n' "$HOSTS_DIR" >&2
  exit 2
}

take_lock() {
  mkdir -p "$HOSTS_DIR"
  exec 9>"$HOSTS_DIR/.lock"
  flock -w 120 9 || die "another hosts.sh holds $HOSTS_DIR/.lock for more than 120 s"
}

registry_entry() { printf '%s/%s' "$REGISTRY_DIR" "$(printf '%s' "$HOSTS_DIR" | sha256sum | cut -c1-16)"; }

# ---------------------------------------------------------------------------------------------------
# Names and paths of host N

host_name() { printf '%s%s' "$PREFIX" "$1"; }
host_dir() { printf '%s/h%s' "$HOSTS_DIR" "$1"; }
host_addr() { printf '10.250.%s.2' "$1"; }
root_addr() { printf '10.250.%s.1' "$1"; }

# The hosts this state dir has made (a dir hN is written before any of host N's resources).
known_hosts_numbers() {
  local d
  for d in "$HOSTS_DIR"/h[0-9]*; do
    [[ -d $d ]] && printf '%s\n' "${d##*/h}"
  done | sort -n
}

# ---------------------------------------------------------------------------------------------------
# Packages

ensure_packages() {
  local missing=() p
  for p in openssh-server openssh-client podman caddy curl util-linux iproute2; do
    dpkg-query -W -f='${db:Status-Abbrev}' "$p" 2>/dev/null | grep -q '^ii' || missing+=("$p")
  done
  ((${#missing[@]} == 0)) && return 0
  say "installing missing packages: ${missing[*]}"
  # policy-rc.d 101 keeps the package's own sshd from starting on :22 of the root namespace.
  local own_policy=0
  if [[ ! -e /usr/sbin/policy-rc.d ]]; then
    printf '#!/bin/sh\n# temporary, written by codeb deploy/hosts.sh during apt-get\nexit 101\n' \
      >/usr/sbin/policy-rc.d
    chmod 755 /usr/sbin/policy-rc.d
    own_policy=1
  fi
  local rc=0
  { DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=120 update -qq &&
    DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=120 install -y -qq --no-install-recommends "${missing[@]}"; } ||
    rc=$?
  ((own_policy == 0)) || rm -f /usr/sbin/policy-rc.d
  ((rc == 0)) || die "apt-get install ${missing[*]} failed (see above)"
}

# ---------------------------------------------------------------------------------------------------
# Processes: a pid is recorded with its start time (field 22 of /proc/PID/stat), so a recycled pid is
# never taken for ours.

proc_start() { # pid
  local stat
  stat=$(<"/proc/$1/stat") 2>/dev/null || return 1
  stat=${stat##*) }
  # After the command name: state is field 3, start time field 22, so the 1st and 20th words here.
  # A zombie (state Z, X) has exited: PID 1 on these machines does not reap orphans, so a killed
  # service would otherwise look alive forever.
  # shellcheck disable=SC2086 # split into words on purpose
  set -- $stat
  [[ $1 != [ZX] ]] || return 1
  printf '%s' "${20}"
}

record_pid() { # file pid
  local start
  start=$(proc_start "$2") || return 1
  printf '%s %s\n' "$2" "$start" >"$1"
}

# Prints the recorded pid if that process still runs.
live_pid() { # file
  local pid start
  [[ -s $1 ]] || return 1
  read -r pid start <"$1"
  [[ $pid =~ ^[0-9]+$ ]] || return 1
  [[ "$(proc_start "$pid" 2>/dev/null)" == "$start" ]] || return 1
  printf '%s' "$pid"
}

init_pid() { live_pid "$(host_dir "$1")/run/init.pid"; }
service_pid() { live_pid "$(host_dir "$1")/run/$2.pid"; }

# Runs a command inside host N (its mount and network namespaces), from /.
in_host() { # n cmd...
  local n=$1 pid
  shift
  pid=$(init_pid "$n") || return 1
  nsenter -t "$pid" -m -n -- "$@"
}

podman_env() { # n
  local d
  d=$(host_dir "$1")
  printf 'CONTAINERS_CONF=%s/podman/containers.conf CONTAINERS_STORAGE_CONF=%s/podman/storage.conf' "$d" "$d"
}

fail_service() { # n name reason
  local log
  log="$(host_dir "$1")/logs/$2.log"
  {
    printf '\n################################################################################\n'
    printf '### hosts: %s of host %s FAILED: %s\n' "$2" "$1" "$3"
    printf '### last 30 lines of %s:\n' "$log"
    tail -n 30 "$log" 2>/dev/null | sed 's/^/    /'
    printf '################################################################################\n'
  } >&2
}

# ---------------------------------------------------------------------------------------------------
# Keys and configs (written once; rewritten only when their content changes)

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

ensure_client_key() {
  mkdir -p "$HOSTS_DIR/client"
  chmod 700 "$HOSTS_DIR/client"
  [[ -s $CLIENT_KEY ]] || ssh-keygen -q -t ed25519 -N '' -C "codeb-hosts@$HOSTS_DIR" -f "$CLIENT_KEY"
  write_file "$AUTHORIZED_KEYS" 600 "$(<"$CLIENT_KEY.pub")"
}

write_host_configs() { # n
  local n=$1 d addr
  d=$(host_dir "$n")
  addr=$(host_addr "$n")
  mkdir -p "$d"/{run,logs,podman,caddy/data,caddy/config,caddy/home}
  [[ -s $d/ssh_host_ed25519_key ]] ||
    ssh-keygen -q -t ed25519 -N '' -C "$(host_name "$n")" -f "$d/ssh_host_ed25519_key"
  # The client trusts exactly this key for this address: no first-use prompt, no other file read.
  write_file "$d/known_hosts" 644 "$addr $(cut -d' ' -f1,2 <"$d/ssh_host_ed25519_key.pub")"

  # As the root stack's (runc, cgroupfs, file locks, every shared path in the state dir); runroot in
  # the host's private /run. Subnets may repeat across hosts: each netns has its own bridge.
  write_file "$d/podman/containers.conf" 644 "$(
    cat <<EOF
# Written by deploy/hosts.sh; edits are overwritten.
[containers]
default_ulimits = ["nofile=1024:1024", "nproc=1024:1024"]
log_driver = "k8s-file"

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
events_logfile_path = "$d/podman/events/events.log"
# In the private /run, as a real host's /run/libpod: a host started again after a crash is a reboot
# to Podman, which then resets its containers' states instead of looking for their old netns.
tmp_dir = "/run/libpod"
volume_path = "$d/podman/volumes"
lock_type = "file"

[network]
network_backend = "netavark"
network_config_dir = "$d/podman/networks"
EOF
  )"
  write_file "$d/podman/storage.conf" 644 "$(
    cat <<EOF
# Written by deploy/hosts.sh; edits are overwritten.
[storage]
driver = "overlay"
graphroot = "$d/podman/storage"
runroot = "/run/containers/storage"
EOF
  )"
  write_file "$d/caddy.json" 644 "$(
    cat <<EOF
{
  "admin": {"listen": "$HOST_CADDY_ADMIN", "config": {"persist": false}},
  "storage": {"module": "file_system", "root": "$d/caddy/data"},
  "apps": {"http": {"servers": {"harness": {"listen": [":80"], "automatic_https": {"disable": true}, "routes": []}}}}
}
EOF
  )"
  # SetEnv: a session's podman CLI uses this host's store, never the machine's default one.
  write_file "$d/sshd_config" 644 "$(
    cat <<EOF
# Written by deploy/hosts.sh; edits are overwritten.
ListenAddress $addr:22
HostKey $d/ssh_host_ed25519_key
PidFile /run/sshd.pid
AuthorizedKeysFile $AUTHORIZED_KEYS
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
AllowTcpForwarding yes
AllowStreamLocalForwarding yes
StreamLocalBindUnlink yes
X11Forwarding no
PrintMotd no
SetEnv $(podman_env "$n")
EOF
  )"
}

# ---------------------------------------------------------------------------------------------------
# Network and the init process

ensure_unreachable_route() {
  ip route show type unreachable "$HOSTS_NET" | grep -q . && return 0
  ip route add unreachable "$HOSTS_NET" metric "$UNREACHABLE_METRIC"
  touch "$HOSTS_DIR/unreachable-route"
}

# Host to host: each host routes the hosts' /16 via its root end, and the root namespace forwards
# between the veths (a migration's source Caddy dials the target's; issue #18). The root namespace
# must forward IPv4; where its FORWARD policy is not ACCEPT, one rule accepts the /16 to the /16.
# Nothing else of the root namespace's firewall is touched.
readonly FORWARD_COMMENT=codeb-hosts-forward
ensure_host_forwarding() {
  if [[ $(sysctl -n net.ipv4.ip_forward) != 1 ]]; then
    sysctl -qw net.ipv4.ip_forward=1
    touch "$HOSTS_DIR/ip-forward-set"
  fi
  if command -v iptables >/dev/null && ! iptables -S FORWARD 2>/dev/null | grep -qx -- '-P FORWARD ACCEPT'; then
    iptables -C FORWARD -s "$HOSTS_NET" -d "$HOSTS_NET" -m comment --comment "$FORWARD_COMMENT" -j ACCEPT 2>/dev/null ||
      iptables -I FORWARD -s "$HOSTS_NET" -d "$HOSTS_NET" -m comment --comment "$FORWARD_COMMENT" -j ACCEPT
  fi
}

remove_host_forwarding() {
  while command -v iptables >/dev/null && iptables -D FORWARD -s "$HOSTS_NET" -d "$HOSTS_NET" -m comment --comment "$FORWARD_COMMENT" -j ACCEPT 2>/dev/null; do :; done
  if [[ -e $HOSTS_DIR/ip-forward-set ]]; then
    sysctl -qw net.ipv4.ip_forward=0 || true
    rm -f "$HOSTS_DIR/ip-forward-set"
  fi
}

ensure_netns() { # n
  local n=$1 name
  name=$(host_name "$n")
  if ! ip netns list | grep -qx "$name\( (id: [0-9]*)\)\?"; then
    ip netns add "$name"
  fi
  if ! ip link show "$name-r" >/dev/null 2>&1; then
    ip link add "$name-r" type veth peer name "$name-h" netns "$name"
  fi
  ip addr replace "$(root_addr "$n")/24" dev "$name-r"
  ip link set "$name-r" up
  ip -n "$name" addr replace "$(host_addr "$n")/24" dev "$name-h"
  ip -n "$name" link set "$name-h" up
  ip -n "$name" link set lo up
  ip -n "$name" route replace "$HOSTS_NET" via "$(root_addr "$n")" dev "$name-h"
}

# The init: entered into the netns, unshares a private mount namespace, mounts a tmpfs on /run (and
# the dirs services need there) and a sysfs of the netns's own links with the machine's cgroup tree
# moved back under it (runc with cgroupfs needs /sys/fs/cgroup), writes its pid and sleeps forever.
# Every service is then entered into its namespaces (nsenter -t PID -m -n).
start_init() { # n
  local n=$1 d name log pid deadline
  d=$(host_dir "$n")
  name=$(host_name "$n")
  log="$d/logs/init.log"
  rm -f "$d/run/init.pid" "$d/run/init.pid.tmp"
  printf '==== %s: hosts.sh starting the init of %s ====\n' "$(date -Is)" "$name" >>"$log"
  # shellcheck disable=SC2016 # expanded by the init's shell
  setsid nsenter --net="/run/netns/$name" -- unshare -m --propagation private -- /bin/sh -euc '
    mkdir -p /tmp/.codeb-hosts-cg.$$
    mount --rbind /sys/fs/cgroup /tmp/.codeb-hosts-cg.$$
    mount -t sysfs sysfs /sys
    mount --move /tmp/.codeb-hosts-cg.$$ /sys/fs/cgroup
    rmdir /tmp/.codeb-hosts-cg.$$
    mount -t tmpfs -o mode=755 tmpfs /run
    mkdir -p /run/sshd /run/podman /run/netns /run/lock
    echo $$ >"$1.tmp" && mv "$1.tmp" "$1"
    exec sleep infinity
  ' init "$d/run/init.pid.raw" </dev/null >>"$log" 2>&1 9>&- &
  deadline=$(($(now_us) + START_TIMEOUT_S * 1000000))
  until [[ -s $d/run/init.pid.raw ]]; do
    if ! kill -0 $! 2>/dev/null || (($(now_us) > deadline)); then
      fail_service "$n" init "the init did not start"
      die "host $n is not up"
    fi
    sleep 0.02
  done
  pid=$(<"$d/run/init.pid.raw")
  rm -f "$d/run/init.pid.raw"
  record_pid "$d/run/init.pid" "$pid"
  readlink "/proc/$pid/ns/mnt" >"$d/run/init.mntns"
}

# ---------------------------------------------------------------------------------------------------
# Services

start_service() { # n name
  local n=$1 name=$2 d pid log
  d=$(host_dir "$n")
  log="$d/logs/$name.log"
  pid=$(init_pid "$n")
  printf '==== %s: hosts.sh starting %s ====\n' "$(date -Is)" "$name" >>"$log"
  # As deploy/stack.sh: setsid in a background job of a non-interactive shell execs without forking,
  # and so do nsenter (no pid namespace) and env, so $! is the service's own pid.
  case $name in
  podman)
    # shellcheck disable=SC2046 # podman_env is two words on purpose
    setsid nsenter -t "$pid" -m -n -- env $(podman_env "$n") \
      /usr/bin/podman system service --time=0 "unix://$HOST_PODMAN_SOCK" </dev/null >>"$log" 2>&1 9>&- &
    ;;
  caddy)
    setsid nsenter -t "$pid" -m -n -- env XDG_DATA_HOME="$d/caddy/data" XDG_CONFIG_HOME="$d/caddy/config" \
      HOME="$d/caddy/home" /usr/bin/caddy run --config "$d/caddy.json" </dev/null >>"$log" 2>&1 9>&- &
    ;;
  sshd)
    setsid nsenter -t "$pid" -m -n -- /usr/sbin/sshd -D -e -f "$d/sshd_config" </dev/null >>"$log" 2>&1 9>&- &
    ;;
  esac
  record_pid "$d/run/$name.pid" $! || {
    fail_service "$n" "$name" "the process exited at once"
    die "host $n is not up"
  }
}

probe() { # n name
  local n=$1
  case $2 in
  podman) [[ "$(in_host "$n" curl -sf --max-time 2 --unix-socket "$HOST_PODMAN_SOCK" http://d/_ping 2>/dev/null)" == OK ]] ;;
  caddy) in_host "$n" curl -sf -o /dev/null --max-time 2 "http://$HOST_CADDY_ADMIN/config/" ;;
  sshd) host_ssh "$n" true 2>/dev/null ;;
  esac
}

host_ssh() { # n cmd...
  local n=$1
  shift
  ssh "${SSH_OPTS[@]}" -o UserKnownHostsFile="$(host_dir "$n")/known_hosts" "root@$(host_addr "$n")" "$@"
}

stop_pid_file() { # file label
  local pid deadline
  pid=$(live_pid "$1") || {
    rm -f "$1"
    return 0
  }
  kill -TERM "$pid" 2>/dev/null || true
  deadline=$(($(now_us) + STOP_TIMEOUT_S * 1000000))
  while live_pid "$1" >/dev/null; do
    if (($(now_us) > deadline)); then
      say "$2 (pid $pid) did not exit ${STOP_TIMEOUT_S}s after SIGTERM; sending SIGKILL"
      kill -KILL "$pid" 2>/dev/null || true
      break
    fi
    sleep 0.05
  done
  rm -f "$1"
}

# ---------------------------------------------------------------------------------------------------
# Images: saved once from the root stack's Podman (read only there), loaded into each host's.

source_podman_sock() {
  local url=${CODEB_TEST_PODMAN-}
  if [[ -z $url ]]; then
    url=$("$ROOT/deploy/stack.sh" env | sed -n 's/^export CODEB_TEST_PODMAN=//p')
  fi
  [[ $url == unix://* ]] || die "no Podman to take the test images from: eval \"\$(deploy/stack.sh env)\" first"
  printf '%s' "${url#unix://}"
}

# Prints the archive of <ref>, saved again only when the image id in the source changed.
image_archive() { # ref
  local ref=$1 sock enc id file
  sock=$(source_podman_sock)
  enc=${ref//\//%2F}
  id=$(curl -sf --max-time 10 --unix-socket "$sock" "http://d/v4.0.0/libpod/images/$enc/json" |
    sed -n 's/^{"Id":"\([0-9a-f]\{64\}\)".*/\1/p') ||
    die "the root stack's Podman ($sock) has no image $ref: run deploy/stack.sh images"
  [[ -n $id ]] || die "cannot read the id of $ref from $sock"
  mkdir -p "$IMAGE_DIR"
  file="$IMAGE_DIR/${ref//[^a-zA-Z0-9._-]/_}.tar"
  if [[ ! -s $file || "$(cat "$file.id" 2>/dev/null)" != "$id" ]]; then
    curl -sf --max-time 60 --unix-socket "$sock" -o "$file.tmp" \
      "http://d/v4.0.0/libpod/images/$enc/get?format=docker-archive" ||
      die "cannot save $ref from $sock"
    mv -f "$file.tmp" "$file"
    printf '%s\n' "$id" >"$file.id"
    say "saved $ref (${id:0:12}) from the root stack"
  fi
  printf '%s %s' "$file" "$id"
}

ensure_images() { # n
  local n=$1 ref file id have
  for ref in $IMAGES; do
    read -r file id <<<"$(image_archive "$ref")"
    have=$(in_host "$n" curl -sf --max-time 5 --unix-socket "$HOST_PODMAN_SOCK" \
      "http://d/v4.0.0/libpod/images/${ref//\//%2F}/json" | sed -n 's/^{"Id":"\([0-9a-f]\{64\}\)".*/\1/p' || true)
    [[ $have == "$id" ]] && continue
    in_host "$n" curl -sf --max-time 60 --unix-socket "$HOST_PODMAN_SOCK" -X POST \
      -H 'Content-Type: application/x-tar' --data-binary "@$file" \
      "http://d/v4.0.0/libpod/images/load" >/dev/null ||
      die "cannot load $ref into host $n (log: $(host_dir "$n")/logs/podman.log)"
    say "host $n: loaded $ref"
  done
}

# ---------------------------------------------------------------------------------------------------
# Teardown

# Every process of host N: those in its private mount namespace (its init, services, sessions,
# Podman's conmons) and all their descendants (containers live in mount namespaces of their own under
# conmon). Found from /proc, so a host whose Podman or init crashed is still found whole.
host_processes() { # n
  local mntns
  mntns=$(cat "$(host_dir "$1")/run/init.mntns" 2>/dev/null) || return 0
  mntns=${mntns#mnt:[}
  mntns=${mntns%]}
  [[ $mntns =~ ^[0-9]+$ ]] || return 0
  # One ps for the whole table (a loop over /proc in bash took ~1 s). Zombies are skipped: they have
  # exited already (PID 1 here does not reap them) and cannot be killed again. Descendants are added
  # until none joins (the tree is shallow: conmon → container init → app).
  ps -e -o pid=,ppid=,stat=,mntns= | awk -v ns="$mntns" '
    $3 ~ /^Z/ { next }
    { parent[$1] = $2; if ($4 == ns) ours[$1] = 1 }
    END {
      do {
        grew = 0
        for (p in parent) if (!(p in ours) && (parent[p] in ours)) { ours[p] = 1; grew = 1 }
      } while (grew)
      for (p in ours) print p
    }'
}

teardown_host() { # n
  local n=$1 d name pids=() pid deadline
  d=$(host_dir "$n")
  name=$(host_name "$n")
  say "removing host $n ($name)"
  # Orderly first: Podman stops and removes its containers, networks and their mounts.
  if init_pid "$n" >/dev/null; then
    # shellcheck disable=SC2046
    in_host "$n" env $(podman_env "$n") /usr/bin/podman rm -af -t 0 >>"$d/logs/podman.log" 2>&1 ||
      say "host $n: podman rm failed (log: $d/logs/podman.log); its processes are killed below"
  fi
  for svc in sshd caddy podman; do stop_pid_file "$d/run/$svc.pid" "$svc of host $n"; done
  # Whatever is left (the init, a conmon or container after a crash, an ssh session): killed.
  mapfile -t pids < <(host_processes "$n")
  if ((${#pids[@]} > 0)); then
    kill -KILL "${pids[@]}" 2>/dev/null || true
    deadline=$(($(now_us) + STOP_TIMEOUT_S * 1000000))
    while [[ -n $(host_processes "$n") ]]; do
      (($(now_us) < deadline)) || die "host $n: processes survive SIGKILL: $(host_processes "$n" | tr '\n' ' ')"
      sleep 0.05
    done
  fi
  rm -f "$d/run/init.pid" "$d/run/init.mntns"
  # Containers killed above leave their empty cgroups (cgroupfs, shared libpod_parent): remove ours,
  # named by the container ids in this host's store.
  local id cg
  for id in "$d"/podman/storage/overlay-containers/*/; do
    id=${id%/}
    id=${id##*/}
    [[ $id =~ ^[0-9a-f]{64}$ ]] || continue
    for cg in /sys/fs/cgroup/libpod_parent/libpod-"$id" /sys/fs/cgroup/libpod_parent/conmon-"$id" \
      /sys/fs/cgroup/*/libpod_parent/libpod-"$id"; do
      if [[ -d $cg ]]; then rmdir "$cg" 2>/dev/null || true; fi
    done
  done
  # Deleting the netns (no process holds it any more) destroys both ends of the veth.
  if ip netns list | grep -qx "$name\( (id: [0-9]*)\)\?"; then ip netns del "$name"; fi
  # The netns's deletion takes the veth with it a moment later: gone either way is done.
  if ip link show "$name-r" >/dev/null 2>&1; then
    ip link del "$name-r" 2>/dev/null || ! ip link show "$name-r" >/dev/null 2>&1
  fi
}

# ---------------------------------------------------------------------------------------------------
# Commands

cmd_up() { # n
  local count=$1 n svc pending=() t0
  [[ $count =~ ^[1-9]$ ]] || usage
  t0=$(now_us)
  [[ $EUID -eq 0 ]] || die "must run as root (network namespaces, mounts, rootful Podman)"
  ensure_packages
  take_lock
  touch "$MARKER"
  mkdir -p "$REGISTRY_DIR"
  [[ -f "$(registry_entry)" ]] || printf '%s\n' "$HOSTS_DIR" >"$(registry_entry)"
  ensure_client_key
  # A netns of our name that this state dir did not make belongs to someone else: refuse.
  for ((n = 1; n <= count; n++)); do
    if [[ ! -d $(host_dir "$n") ]] && ip netns list | grep -qx "$(host_name "$n")\( (id: [0-9]*)\)\?"; then
      die "netns $(host_name "$n") exists but is not this state dir's ($HOSTS_DIR): set CODEB_HOSTS_PREFIX"
    fi
  done
  for n in $(known_hosts_numbers); do
    ((n <= count)) || {
      teardown_host "$n"
      rm -rf "$(host_dir "$n")"
    }
  done
  ensure_unreachable_route
  ensure_host_forwarding
  for ((n = 1; n <= count; n++)); do
    write_host_configs "$n"
    ensure_netns "$n"
    if ! init_pid "$n" >/dev/null; then
      # A host whose init died has lost its /run: start it over from nothing.
      [[ ! -s $(host_dir "$n")/run/init.mntns ]] || teardown_host "$n"
      ensure_netns "$n"
      start_init "$n"
    fi
    for svc in "${SERVICES[@]}"; do
      if ! service_pid "$n" "$svc" >/dev/null; then
        [[ $svc != podman ]] || in_host "$n" rm -f "$HOST_PODMAN_SOCK"
        start_service "$n" "$svc"
      fi
      pending+=("$n:$svc")
    done
  done
  # Poll every pending service of every host until all answer, one exits, or the deadline passes.
  local deadline still item failed=0
  deadline=$(($(now_us) + START_TIMEOUT_S * 1000000))
  while ((${#pending[@]} > 0)); do
    still=()
    for item in "${pending[@]}"; do
      n=${item%%:*}
      svc=${item#*:}
      if probe "$n" "$svc"; then
        :
      elif ! service_pid "$n" "$svc" >/dev/null; then
        fail_service "$n" "$svc" "the process exited during start-up"
        failed=1
      elif (($(now_us) > deadline)); then
        fail_service "$n" "$svc" "no answer within ${START_TIMEOUT_S}s"
        failed=1
      else
        still+=("$item")
      fi
    done
    pending=("${still[@]+"${still[@]}"}")
    ((${#pending[@]} == 0)) || sleep 0.05
  done
  ((failed == 0)) || die "the hosts are not up (logs in $HOSTS_DIR/h*/logs)"
  for ((n = 1; n <= count; n++)); do ensure_images "$n"; done
  say "$count host(s) up in $((($(now_us) - t0) / 1000)) ms"
}

cmd_down() {
  local purge=0 n
  case ${1-} in
  "") ;;
  --purge) purge=1 ;;
  *) usage ;;
  esac
  [[ -d $HOSTS_DIR ]] || {
    say "no hosts at $HOSTS_DIR"
    rm -f "$(registry_entry)"
    return 0
  }
  take_lock
  for n in $(known_hosts_numbers); do teardown_host "$n"; done
  if [[ -e $HOSTS_DIR/unreachable-route ]]; then
    ip route del unreachable "$HOSTS_NET" metric "$UNREACHABLE_METRIC" 2>/dev/null || true
    rm -f "$HOSTS_DIR/unreachable-route"
  fi
  remove_host_forwarding
  ((purge)) || return 0
  [[ -e $MARKER ]] || die "$HOSTS_DIR has no $MARKER; refusing to delete it"
  local mnt
  while read -r mnt; do
    umount -l "$mnt" || die "cannot unmount $mnt"
  done < <(awk -v d="$HOSTS_DIR/" 'index($5, d) == 1 { print $5 }' /proc/self/mountinfo | sort -r)
  exec 9>&-
  rm -rf "$HOSTS_DIR"
  rm -f "$(registry_entry)"
  say "purged $HOSTS_DIR"
}

cmd_env() {
  local n d count=0 var
  for n in $(known_hosts_numbers); do count=$n; done
  printf 'export CODEB_HOSTS_DIR=%q\nexport CODEB_HOSTS_COUNT=%q\n' "$HOSTS_DIR" "$count"
  for n in $(known_hosts_numbers); do
    d=$(host_dir "$n")
    for var in \
      "NAME=$(host_name "$n")" \
      "ADDRESS=$(host_addr "$n")" \
      "SSH_PORT=22" \
      "SSH_USER=root" \
      "SSH_KEY=$CLIENT_KEY" \
      "KNOWN_HOSTS=$d/known_hosts" \
      "PODMAN_SOCK=$HOST_PODMAN_SOCK" \
      "CADDY_ADMIN=http://$HOST_CADDY_ADMIN" \
      "PID=$(init_pid "$n" || true)"; do
      printf 'export CODEB_HOST_%s_%s=%q\n' "$n" "${var%%=*}" "${var#*=}"
    done
  done
}

cmd_status() {
  local n svc pid all=0
  for n in $(known_hosts_numbers); do
    if ! pid=$(init_pid "$n"); then
      printf 'host %s %-6s STOPPED (no init)\n' "$n" "$(host_name "$n")"
      all=1
      continue
    fi
    for svc in "${SERVICES[@]}"; do
      if pid=$(service_pid "$n" "$svc") && probe "$n" "$svc"; then
        printf 'host %s %-6s %-7s healthy   pid %s\n' "$n" "$(host_name "$n")" "$svc" "$pid"
      else
        printf 'host %s %-6s %-7s DOWN      (log: %s)\n' "$n" "$(host_name "$n")" "$svc" \
          "$(host_dir "$n")/logs/$svc.log"
        all=1
      fi
    done
  done
  return "$all"
}

main() {
  local cmd=${1-}
  [[ $# -gt 0 ]] && shift
  case $cmd in
  up)
    (($# == 1)) || usage
    cmd_up "$1"
    ;;
  down) cmd_down "$@" ;;
  env)
    (($# == 0)) || usage
    cmd_env
    ;;
  status)
    (($# == 0)) || usage
    cmd_status
    ;;
  *) usage ;;
  esac
}

main "$@"
