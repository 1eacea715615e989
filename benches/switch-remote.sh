#!/usr/bin/env bash
# Promote/rollback on a remote Host (issue #18): host N of deploy/hosts.sh (default 4) switched in
# its own kernel by its agent, each switch requested over HTTP from a running `codeb serve` (its
# ssh session to the agent kept), as benches/switch.sh's api mode does locally, and timed from the root namespace through host N's
# Caddy (examples/switch_poller.rs: fresh connections one after another to 10.250.N.2:PORT).
#
# Usage: benches/switch-remote.sh [SWITCHES]   (default 40, idle; then as many under `hey -c 8`
#        through host N's Caddy). Needs the stack and `deploy/hosts.sh up N` running; starts
#        neither (CODEB_BENCH_STACK_UP=0 is implied). BENCH_HOST=N picks the host.
#
# Per phase it reports p50, p95 and max of:
#   command  from the request's sending until `codeb serve` answered (converged);
#   switch   from the request's sending until the sending of the first request that the new slot
#            answered through host N's Caddy;
#   answered the same until that request's answer came;
#   rule     the agent's round trip for the rule alone (`service address set through the agent`:
#            the op over the kept ssh session and its nf_tables transaction on the host);
# and hey's requests, non-2xx and errors under load. Exit status 1 when any request failed.
export CODEB_BENCH_STACK_UP=0
source "$(dirname "$0")/lib.sh"

SWITCHES=${1:-40}
[[ $SWITCHES =~ ^[0-9]+$ ]] || {
  echo "usage: benches/switch-remote.sh [SWITCHES]" >&2
  exit 2
}
N=${BENCH_HOST:-4}
if [[ -z $(printenv "CODEB_HOST_${N}_ADDRESS" || true) ]]; then
  hosts_env=$(./deploy/hosts.sh env)
  eval "$hosts_env"
fi
var() { printenv "CODEB_HOST_${N}_$1" || { echo "CODEB_HOST_${N}_$1 is not set: deploy/hosts.sh up $N" >&2 && exit 2; }; }
ADDR=$(var ADDRESS)
KEY=$(var SSH_KEY)
KNOWN=$(var KNOWN_HOSTS)
SOCK=$(var PODMAN_SOCK)
ADMIN=$(var CADDY_ADMIN)
readonly PORT=8089 WORKERS=8 POLL_TIMEOUT_US=5000000 PAUSE=0.1
readonly listen=127.0.0.1:19103
SSH=(ssh -F /dev/null -i "$KEY" -o "UserKnownHostsFile=$KNOWN" -o StrictHostKeyChecking=yes -o BatchMode=yes "root@$ADDR")

POLLER="${CARGO_TARGET_DIR:-$ROOT/target}/release/examples/switch_poller"
[[ -x $POLLER ]] || cargo build --release --quiet --example switch_poller

hey_pid="" serve_pid=""
name="rk-bench-$$"
host="$name.codeb.test"
# shellcheck disable=SC2317 # called by the EXIT trap
cleanup() {
  [[ -z $hey_pid ]] || kill "$hey_pid" 2>/dev/null || true
  [[ -z $serve_pid ]] || { kill -TERM "$serve_pid" 2>/dev/null && wait "$serve_pid"; } || true
  "$CODEB" --state-dir "$STATE" delete project "$name" >/dev/null 2>&1 || true
  if [[ -n ${BENCH_KEEP-} ]]; then echo "kept $WORK" >&2; else rm -rf "$WORK"; fi
}
trap cleanup EXIT

# The test image v2 on the host (the harness loads v1 only).
enc=localhost%2Fcodeb-test-app:v2
if ! "${SSH[@]}" "curl -sf --unix-socket $SOCK http://d/v4.0.0/libpod/images/$enc/json" >/dev/null; then
  curl -sf --max-time 60 --unix-socket "${CODEB_TEST_PODMAN#unix://}" \
    "http://d/v4.0.0/libpod/images/$enc/get?format=docker-archive" |
    "${SSH[@]}" "curl -sf --max-time 60 -X POST -H 'Content-Type: application/x-tar' --data-binary @- --unix-socket $SOCK http://d/v4.0.0/libpod/images/load" >/dev/null
fi

mkdir -m 700 -p "$STATE"
printf 'endpoints:\n  ssh: ["root@%s"]\n' "$ADDR" >"$STATE/config.yaml"
chmod 600 "$STATE/config.yaml"
manifest() { # image
  cat <<YAML
apiVersion: codeb.kr/v1
kind: Host
metadata: {name: local}
spec:
  address: "$ADDR"
  podman: unix://$SOCK
  ssh: {target: "root@$ADDR", identityFile: "$KEY", knownHosts: "$KNOWN", agent: "$CODEB"}
  caddy: {admin: "$ADMIN", listen: ["$ADDR:$PORT"], tls: "off", accessLog: false}
  publishAddress: "127.0.0.1"
---
apiVersion: codeb.kr/v1
kind: Zone
metadata: {name: codeb.test}
YAML
  project_yaml "$name" "$1" manual
}
manifest localhost/codeb-test-app:v1 >"$WORK/m.yaml"
"$CODEB" --state-dir "$STATE" apply -f "$WORK/m.yaml" >/dev/null
manifest localhost/codeb-test-app:v2 >"$WORK/m.yaml"
"$CODEB" --state-dir "$STATE" apply -f "$WORK/m.yaml" >/dev/null
"$CODEB" --state-dir "$STATE" get hosts

CODEB_LOG=codeb=debug "$CODEB" --log-format json --state-dir "$STATE" serve -f "$WORK/m.yaml" \
  --listen "$listen" --rate-limit 0 2>"$WORK/serve.log" &
serve_pid=$!
for _ in $(seq 100); do
  curl -sf "http://$listen/health" >/dev/null && break
  sleep 0.1
done
key=$("$CODEB" --state-dir "$STATE" key create --role developer --name bench | head -n 1)

stats() { # p50, p95, max of ms on stdin
  sort -n | awk '{ v[NR] = $1 } END {
    if (NR == 0) { print "n/a"; exit }
    printf "p50 %.2f ms  p95 %.2f ms  max %.2f ms  (n=%d)", v[int((NR - 1) * 0.5) + 1],
      v[int((NR - 1) * 0.95) + 1], v[NR], NR }'
}

promoted=0 serving=v1 failed=0
switches() { # count phase
  local count=$1 phase=$2 i verb want t0 t1 out seen answered errors
  : >"$WORK/$phase.command" && : >"$WORK/$phase.switch" && : >"$WORK/$phase.answered"
  for ((i = 0; i < count; i++)); do
    if ((promoted)); then verb=rollback; else verb=promote; fi
    if [[ $serving == v1 ]]; then want=v2; else want=v1; fi
    "$POLLER" "$ADDR:$PORT" "$host" "$want" "$POLL_TIMEOUT_US" >"$WORK/seen" &
    exec 4<>"/dev/tcp/${listen%:*}/${listen##*:}"
    t0=${EPOCHREALTIME/./}
    printf 'POST /api/v1/projects/%s/environments/production/%s HTTP/1.1\r\nHost: %s\r\nX-API-Key: %s\r\nContent-Length: 0\r\nConnection: close\r\n\r\n' \
      "$name" "$verb" "$listen" "$key" >&4
    out=""
    IFS= read -r -d '' -t 10 out <&4 || true
    t1=${EPOCHREALTIME/./}
    exec 4>&-
    if [[ $out != *'"converged":true'* ]]; then
      printf '%s switch %d (%s) failed: %s\n' "$phase" "$i" "$verb" "${out:0:300}" >&2
      failed=1
      kill $! 2>/dev/null || true
      wait $! || true
      continue
    fi
    wait $! || true
    read -r seen answered errors <"$WORK/seen"
    awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f\n", (b - a) / 1000 }' >>"$WORK/$phase.command"
    if [[ $seen == timeout ]]; then
      printf '%s switch %d: %s not seen within 5 s\n' "$phase" "$i" "$want" >&2
      failed=1
    else
      awk -v a="$t0" -v b="$seen" 'BEGIN { printf "%.3f\n", (b - a) / 1000 }' >>"$WORK/$phase.switch"
      awk -v a="$t0" -v b="$answered" 'BEGIN { printf "%.3f\n", (b - a) / 1000 }' >>"$WORK/$phase.answered"
    fi
    ((errors == 0)) || { printf '%s switch %d: %d poll errors\n' "$phase" "$i" "$errors" >&2 && failed=1; }
    promoted=1 serving=$want
    sleep "$PAUSE"
  done
}

report() { # phase
  printf '    command:  %s\n' "$(stats <"$WORK/$1.command")"
  printf '    switch:   %s\n' "$(stats <"$WORK/$1.switch")"
  printf '    answered: %s\n' "$(stats <"$WORK/$1.answered")"
}

# Two switches first, not counted: the daemon's first requests open the session.
switches 2 warmup
lines_before=$(wc -l <"$WORK/serve.log")
switches "$SWITCHES" idle
lines_idle=$(wc -l <"$WORK/serve.log")
hey -z 3600s -c "$WORKERS" -host "$host" "http://$ADDR:$PORT/" >"$WORK/hey.txt" 2>&1 &
hey_pid=$!
sleep 1
switches "$SWITCHES" load
kill -INT "$hey_pid"
wait "$hey_pid" || true
hey_pid=""
rule() { # from to: the agent's rule round trips logged between these lines of serve.log
  sed -n "$(($1 + 1)),$2p" "$WORK/serve.log" | grep -F '"service address set through the agent"' |
    grep -o '"elapsed_ms":[0-9.]*' | cut -d: -f2 | stats
}

printf '\n== remote host %d (%s), kernel mode through its agent, %d switches per phase through codeb serve\n' "$N" "$ADDR" "$SWITCHES"
printf '  idle:\n'
report idle
printf '    rule:     %s\n' "$(rule "$lines_before" "$lines_idle")"
printf '  under hey -c %d through host %d'"'"'s Caddy:\n' "$WORKERS" "$N"
report load
printf '    rule:     %s\n' "$(rule "$lines_idle" "$(wc -l <"$WORK/serve.log")")"
hey_line=$(awk '
    /^Error distribution:/ { in_err = 1; next }
    !in_err && /^  \[[0-9]+\]/ { code = substr($1, 2, 3); n = $2; total += n; if (code !~ /^2/) bad += n }
    in_err && /^  \[[0-9]+\]/ { errors += substr($1, 2, length($1) - 2) }
    END { printf "%d requests, %d non-2xx, %d errors", total, bad, errors }' "$WORK/hey.txt")
printf '    load: %s\n' "$hey_line"
[[ $hey_line == *' 0 non-2xx, 0 errors' ]] || failed=1
exit "$failed"
