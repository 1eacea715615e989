#!/usr/bin/env bash
# Promote/rollback under load, in both switch modes: CYCLES (default 100) cycles of two switches
# each while `hey -c 8` (HTTP/1.1 keep-alive) runs through Caddy against the project's hostname.
#
# Usage: benches/switch.sh [CYCLES]   (needs the stack's environment, like the tests:
#          deploy/stack.sh up && deploy/stack.sh images && eval "$(deploy/stack.sh env)")
#
# Per mode it reports: requests served, hey's non-2xx and errors, hey's p50/p99 latency for the
# run (every request of the run is between two switches at most 0.1 s apart) and for a baseline
# run without switches, and per switch:
#   command  wall time of `codeb promote|rollback` (release build);
#   switch   from the command's start until a new connection gets the new slot's answer, polled
#            with fresh connections (bash's /dev/tcp, ~0.5 ms apart);
#   write    the data-path change alone as codeb logs it: the iptables-restore (kernel mode) or
#            the Caddy admin PATCH (caddy-admin mode).
# caddy-admin mode is forced with CODEB_SWITCH=caddy-admin. BENCH_KEEP=1 keeps the work directory
# (hey's output, codeb's JSON logs). Exit status: 0, or 1 when any request failed in kernel mode.
set -euo pipefail
cd "$(dirname "$0")/.."

CYCLES=${1:-100}
[[ $CYCLES =~ ^[0-9]+$ ]] || {
  echo "usage: benches/switch.sh [CYCLES]" >&2
  exit 2
}
: "${CODEB_TEST_HTTP:?run eval \"\$(deploy/stack.sh env)\" first}"
: "${CODEB_TEST_PODMAN:?} ${CODEB_TEST_CADDY_ADMIN:?}"
readonly WORKERS=8
# Every loop below is bounded: a switch that is not seen within this long counts as failed.
readonly POLL_TIMEOUT_US=5000000
readonly PAUSE=0.1

work=$(mktemp -d)
hey_pid=""
# shellcheck disable=SC2317 # called by the EXIT trap
cleanup() {
  [[ -z $hey_pid ]] || kill "$hey_pid" 2>/dev/null || true
  if [[ -n ${BENCH_KEEP-} ]]; then echo "kept $work" >&2; else rm -rf "$work"; fi
}
trap cleanup EXIT

cargo build --release --quiet
codeb=$PWD/target/release/codeb
http_port=${CODEB_TEST_HTTP##*:}

now_us() { printf '%s' "${EPOCHREALTIME/./}"; }

manifests() { # name image
  cat <<EOF
apiVersion: codeb.kr/v1
kind: Host
metadata:
  name: local
spec:
  address: 127.0.0.1
  podman: $CODEB_TEST_PODMAN
  caddy:
    admin: $CODEB_TEST_CADDY_ADMIN
    listen: ["$CODEB_TEST_HTTP"]
    tls: off
---
apiVersion: codeb.kr/v1
kind: Zone
metadata:
  name: codeb.test
---
apiVersion: codeb.kr/v1
kind: Project
metadata:
  name: $1
spec:
  host: local
  zone: codeb.test
  environments:
    production:
      image: $2
      port: 8080
      healthCheck:
        path: /health
      promotion: manual
      gracePeriod: 1h
EOF
}

# One GET on a fresh connection into the global `body` (empty on a connection error, which is
# counted in `poll_errors`). Bash builtins only: no process per request.
body=""
poll_errors=0
get() { # host
  local line=""
  body=""
  if ! exec 3<>"/dev/tcp/127.0.0.1/$http_port" 2>/dev/null; then
    poll_errors=$((poll_errors + 1))
    return
  fi
  printf 'GET / HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n' "$1" >&3
  while IFS= read -r -u 3 line 2>/dev/null || [[ -n $line ]]; do
    body=$line
    line=""
  done
  [[ $body == v* ]] || poll_errors=$((poll_errors + 1))
  exec 3>&-
}

# Polls until the hostname answers `want`; prints the time it did (µs) or "timeout", and the
# number of fresh connections that failed meanwhile.
poll_until() { # host want
  local deadline=$(($(now_us) + POLL_TIMEOUT_US))
  while (($(now_us) < deadline)); do
    get "$1"
    if [[ $body == "$2" ]]; then
      printf '%s %s\n' "$(now_us)" "$poll_errors"
      return
    fi
  done
  printf 'timeout %s\n' "$poll_errors"
}

# p50, p99 and max of the numbers on stdin (one per line, in ms).
stats() {
  sort -n | awk '{ v[NR] = $1 } END {
    if (NR == 0) { print "n/a"; exit }
    printf "p50 %.2f ms  p99 %.2f ms  max %.2f ms  (n=%d)", v[int((NR - 1) * 0.5) + 1],
      v[int((NR - 1) * 0.99) + 1], v[NR], NR }'
}

# hey's summary: requests, non-2xx, errors, p50, p99.
hey_summary() { # file
  awk '
    /^Error distribution:/ { in_err = 1; next }
    !in_err && /^  \[[0-9]+\]/ { code = substr($1, 2, 3); n = $2; total += n; if (code !~ /^2/) bad += n }
    in_err && /^  \[[0-9]+\]/ { errors += substr($1, 2, length($1) - 2) }
    / 50% in / { p50 = $3 * 1000 } / 99% in / { p99 = $3 * 1000 }
    END { printf "%d requests served, %d non-2xx, %d errors, p50 %.2f ms, p99 %.2f ms",
      total, bad, errors, p50, p99 }' "$1"
}

run_mode() { # mode
  local mode=$1 name state dir host verb want i t0 seen errors out log
  name="bench-${mode%%-*}-$$"
  state="$work/$mode/state"
  dir="$work/$mode"
  host="$name.codeb.test"
  log="$dir/codeb.log"
  mkdir -p "$dir"
  if [[ $mode == caddy-admin ]]; then export CODEB_SWITCH=caddy-admin; else unset CODEB_SWITCH; fi
  manifests "$name" localhost/codeb-test-app:v1 >"$dir/m.yaml"
  "$codeb" --state-dir "$state" apply -f "$dir/m.yaml" >/dev/null
  manifests "$name" localhost/codeb-test-app:v2 >"$dir/m.yaml"
  "$codeb" --state-dir "$state" apply -f "$dir/m.yaml" >/dev/null
  "$codeb" --state-dir "$state" get hosts | sed "s/^/[$mode] /"

  hey -z 10s -c "$WORKERS" -host "$host" "http://$CODEB_TEST_HTTP/" >"$dir/baseline.txt" 2>&1
  hey -z 3600s -c "$WORKERS" -host "$host" "http://$CODEB_TEST_HTTP/" >"$dir/hey.txt" 2>&1 &
  hey_pid=$!
  sleep 1
  : >"$dir/command.ms" && : >"$dir/switch.ms" && : >"$dir/failed" && : >"$dir/poll-errors"
  for ((i = 0; i < CYCLES * 2; i++)); do
    if ((i == 0)); then verb=promote; else verb=rollback; fi
    if ((i % 2 == 0)); then want=v2; else want=v1; fi
    poll_until "$host" "$want" >"$dir/seen" &
    t0=$(now_us)
    if ! out=$(CODEB_LOG=codeb=debug "$codeb" --log-format json --state-dir "$state" "$verb" "$name" 2>>"$log"); then
      printf 'switch %d (%s): %s %s\n' "$i" "$verb" "$out" "$(grep -v '^{' "$log" | tail -1)" >>"$dir/failed"
    fi
    awk -v a="$t0" -v b="$(now_us)" 'BEGIN { printf "%.3f\n", (b - a) / 1000 }' >>"$dir/command.ms"
    wait $!
    read -r seen errors <"$dir/seen"
    echo "$errors" >>"$dir/poll-errors"
    if [[ $seen == timeout ]]; then
      printf 'switch %d: %s not seen within %d ms\n' "$i" "$want" $((POLL_TIMEOUT_US / 1000)) >>"$dir/failed"
    else
      awk -v a="$t0" -v b="$seen" 'BEGIN { printf "%.3f\n", (b - a) / 1000 }' >>"$dir/switch.ms"
    fi
    sleep "$PAUSE"
  done
  kill -INT "$hey_pid"
  wait "$hey_pid" || true
  hey_pid=""

  local write pattern='"service address set"'
  [[ $mode == kernel ]] || pattern='"method":"PATCH"'
  write=$(grep -F "$pattern" "$log" | grep -o '"elapsed_ms":[0-9.]*' | cut -d: -f2 | stats)
  printf '\n== %s: %d promote/rollback cycles (%d switches) under hey -c %d\n' "$mode" "$CYCLES" $((CYCLES * 2)) "$WORKERS"
  printf '  load during switches: %s\n' "$(hey_summary "$dir/hey.txt")"
  printf '  baseline, no switch:  %s\n' "$(hey_summary "$dir/baseline.txt")"
  printf '  command:  %s\n' "$(stats <"$dir/command.ms")"
  printf '  switch:   %s\n' "$(stats <"$dir/switch.ms")"
  printf '  write:    %s\n' "$write"
  printf '  fresh connections of the switch-time poller that failed: %s\n' \
    "$(awk '{ n += $1 } END { print n + 0 }' "$dir/poll-errors")"
  if [[ -s $dir/failed ]]; then
    printf '  FAILED switches:\n'
    sed 's/^/    /' "$dir/failed"
  fi
  grep -A20 '^Error distribution' "$dir/hey.txt" | sed 's/^/  /' || true
  "$codeb" --state-dir "$state" delete project "$name" >/dev/null
  unset CODEB_SWITCH
  [[ $mode != kernel ]] || hey_summary "$dir/hey.txt" | grep -q ' 0 non-2xx, 0 errors'
}

status=0
run_mode kernel || status=1
run_mode caddy-admin
exit "$status"
