#!/usr/bin/env bash
# Many hosts from one operator (issue #18): the no-op apply of 30 projects spread over 3 remote
# hosts (hosts 1-3 of deploy/hosts.sh, 10 each, reached over ssh through `codeb agent --stdio`)
# against the no-op apply of 30 projects on the one local stack. Median of RUNS each, alternating,
# and the ratio remote/local.
#
# Each command is a new process, so each remote no-op apply opens its three ssh sessions (one key
# exchange per host, at once) before observing: that, not the observation, is most of its time.
# The script also times `get hosts` (which reports the kept session's round trip) for context.
# Projects are removed at the end. The hosts' Caddy servers listen on HOST:8088, as the tests' do.
source "$(dirname "$0")/lib.sh"
RUNS=${RUNS:-11}
N=${N:-30}

./deploy/hosts.sh up "${CODEB_BENCH_HOSTS:-4}" >&2
hosts_env=$(./deploy/hosts.sh env)
eval "$hosts_env"

remote_state="$WORK/remote-state"
local_state="$WORK/local-state"
mkdir -m 700 -p "$remote_state" "$local_state" "$WORK/remote" "$WORK/local"
targets=""
for n in 1 2 3; do
  v="CODEB_HOST_${n}_ADDRESS"
  targets+="\"root@${!v}\", "
done
printf 'endpoints:\n  ssh: [%s]\n' "${targets%, }" >"$remote_state/config.yaml"
chmod 600 "$remote_state/config.yaml"

remote_host_yaml() { # N: Host fb-hN, host N of the harness
  local a="CODEB_HOST_$1_ADDRESS" k="CODEB_HOST_$1_SSH_KEY" kh="CODEB_HOST_$1_KNOWN_HOSTS"
  local s="CODEB_HOST_$1_PODMAN_SOCK" c="CODEB_HOST_$1_CADDY_ADMIN"
  cat <<YAML
---
apiVersion: codeb.kr/v1
kind: Host
metadata: {name: fb-h$1}
spec:
  address: "${!a}"
  podman: unix://${!s}
  ssh: {target: "root@${!a}", identityFile: ${!k}, knownHosts: ${!kh}, agent: $CODEB}
  caddy: {admin: "${!c}", listen: ["${!a}:8088"], tls: "off", accessLog: false}
  publishAddress: "${!a}"
YAML
}

{
  for n in 1 2 3; do remote_host_yaml "$n"; done
  printf -- '---\napiVersion: codeb.kr/v1\nkind: Zone\nmetadata: {name: codeb.test}\n'
  for i in $(seq 1 "$N"); do
    project_yaml "fbr-$i" localhost/codeb-test-app:v1 | sed "s/^  host: local$/  host: fb-h$((i % 3 + 1))/"
  done
} >"$WORK/remote/all.yaml"
{
  host_yaml
  for i in $(seq 1 "$N"); do project_yaml "fbl-$i" localhost/codeb-test-app:v1; done
} >"$WORK/local/all.yaml"

cleanup() {
  for i in $(seq 1 "$N"); do
    CODEB_STATE_DIR="$remote_state" "$CODEB" delete project "fbr-$i" >/dev/null 2>&1 || true
    CODEB_STATE_DIR="$local_state" "$CODEB" delete project "fbl-$i" >/dev/null 2>&1 || true
  done
  rm -rf "$WORK"
}
trap cleanup EXIT

for set in remote local; do
  state="$WORK/$set-state"
  t0=$(now_ns)
  CODEB_STATE_DIR="$state" "$CODEB" apply -f "$WORK/$set" >/dev/null || true
  echo "first apply of $N projects ($set): $(ms_since "$t0") ms" >&2
  # Converged when an apply has nothing to do (a kernel-mode switch may leave one step for the
  # next round, and the shared stack's other users may move things meanwhile).
  for try in 1 2 3 4; do
    CODEB_STATE_DIR="$state" "$CODEB" apply -f "$WORK/$set" | grep -q "nothing to do" && break
    [[ $try == 4 ]] && { echo "the $set set did not converge" >&2; exit 1; }
  done
done

noop_us() { # SET: one no-op apply, µs (it must say "nothing to do")
  local t0 out
  t0=$(now_ns)
  out=$(CODEB_STATE_DIR="$WORK/$1-state" "$CODEB" apply -f "$WORK/$1")
  local us=$((($(now_ns) - t0) / 1000))
  grep -q "nothing to do" <<<"$out" || { echo "a no-op apply of the $1 set did something: $out" >&2; exit 1; }
  echo "$us"
}
remote=""; localset=""
for i in $(seq 1 "$RUNS"); do remote+="$(noop_us remote) "; localset+="$(noop_us local) "; done
remote=$(tr ' ' '\n' <<<"$remote" | grep . | median)
localset=$(tr ' ' '\n' <<<"$localset" | grep . | median)
# The same through a running `codeb watch` per set: its kept ssh sessions (one per host, opened
# once) serve the apply, so no key exchange is paid per command.
pids=()
for set in remote local; do
  CODEB_STATE_DIR="$WORK/$set-state" "$CODEB" watch -f "$WORK/$set" --resync 600s 2>"$WORK/$set-watch.log" &
  pids+=($!)
done
for set in remote local; do
  for i in $(seq 1 100); do [[ -S "$WORK/$set-state/codeb.sock" ]] && break; sleep 0.1; done
done
sleep 3 # the watchers' first sweeps
noop_us remote >/dev/null; noop_us local >/dev/null
dremote=""; dlocal=""
for i in $(seq 1 "$RUNS"); do dremote+="$(noop_us remote) "; dlocal+="$(noop_us local) "; done
dremote=$(tr ' ' '\n' <<<"$dremote" | grep . | median)
dlocal=$(tr ' ' '\n' <<<"$dlocal" | grep . | median)
kill "${pids[@]}"; wait "${pids[@]}" 2>/dev/null || true

t0=$(now_ns)
CODEB_STATE_DIR="$remote_state" "$CODEB" get hosts
echo "get hosts (3 remote hosts, a new process: 3 ssh sessions opened at once): $(ms_since "$t0") ms"
echo "no-op apply, $N projects on 3 remote hosts: ${remote} µs (median of $RUNS)"
echo "no-op apply, $N projects on 1 local host:   ${localset} µs (median of $RUNS)"
awk -v r="$remote" -v l="$localset" 'BEGIN {printf "ratio remote/local: %.2f\n", r/l}'
echo "through codeb watch (kept sessions), $N projects on 3 remote hosts: ${dremote} µs (median of $RUNS)"
echo "through codeb watch, $N projects on 1 local host:                   ${dlocal} µs (median of $RUNS)"
awk -v r="$dremote" -v l="$dlocal" 'BEGIN {printf "ratio remote/local through the daemon: %.2f\n", r/l}'
echo "load average: $(cut -d' ' -f1-3 /proc/loadavg)"
