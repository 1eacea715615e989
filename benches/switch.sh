#!/usr/bin/env bash
# Promote/rollback under load, in both switch modes: CYCLES (default 100) cycles of two switches
# each while `hey -c 8` (HTTP/1.1 keep-alive) runs through Caddy against the project's hostname.
#
# Usage: benches/switch.sh [CYCLES]   (brings the local stack up through benches/lib.sh)
#        BENCH_MODES="api" benches/switch.sh 20   (some modes only: kernel, caddy-admin, api)
#
# Per mode it reports: requests served, hey's non-2xx and errors, hey's p50/p99 latency for the
# run (every request of the run is between two switches at most 0.1 s apart) and for a baseline
# run without switches, and per switch:
#   command  wall time of `codeb promote|rollback` (release build);
#   switch   from the command's start until the sending of the first request that the new slot
#            answered, polled with fresh connections one after another (examples/switch_poller.rs);
#   answered the same until that request's answer came;
#   write    the data-path change alone as codeb logs it: the nf_tables transaction (kernel mode) or
#            the Caddy admin PATCH (caddy-admin mode).
# caddy-admin mode is forced with CODEB_SWITCH=caddy-admin. The api mode is the kernel mode with each
# switch requested from a warm `codeb serve` over HTTP (POST .../promote|rollback on a connection opened
# before the clock starts): `command` is then the time until the answer. BENCH_KEEP=1 keeps the work directory
# (hey's output, codeb's JSON logs). Exit status: 0, or 1 when any request failed in kernel mode.
source "$(dirname "$0")/lib.sh"

CYCLES=${1:-100}
[[ $CYCLES =~ ^[0-9]+$ ]] || {
  echo "usage: benches/switch.sh [CYCLES]" >&2
  exit 2
}
readonly WORKERS=8
# Every loop below is bounded: a switch that is not seen within this long counts as failed.
readonly POLL_TIMEOUT_US=5000000
readonly PAUSE=0.1

hey_pid=""
serve_pid=""
# shellcheck disable=SC2317 # called by the EXIT trap
cleanup() {
  [[ -z $hey_pid ]] || kill "$hey_pid" 2>/dev/null || true
  [[ -z $serve_pid ]] || kill -TERM "$serve_pid" 2>/dev/null || true
  if [[ -n ${BENCH_KEEP-} ]]; then echo "kept $WORK" >&2; else rm -rf "$WORK"; fi
}
trap cleanup EXIT

http_port=${CODEB_TEST_HTTP##*:}

# Timestamps are ${EPOCHREALTIME/./} (µs), read in place: a `$(...)` forks a subshell (0.5-1 ms
# here), which would sit between a timestamp and what it times, and slow the poller.

# The poller (examples/switch_poller.rs): GETs through Caddy on a fresh connection each, one after
# another, until the hostname answers `want`; prints when the first request that got it was sent
# and when its answer came (µs, as $EPOCHREALTIME), or "timeout timeout", and the number of fresh
# connections that failed meanwhile. The previous request got the old slot, so the rule changed
# between the two requests' dials: the sending time is within one poll (~1 ms) of the switch. Not
# bash's /dev/tcp: bash reads a socket a byte per syscall, work that on two cores slowed the switch
# it timed.
POLLER="${CARGO_TARGET_DIR:-$ROOT/target}/release/examples/switch_poller"
[[ -n ${CODEB_BIN-} && -x $POLLER ]] || cargo build --release --quiet --example switch_poller
poll_until() { # host want
  "$POLLER" "127.0.0.1:$http_port" "$1" "$2" "$POLL_TIMEOUT_US"
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

# Runs `count` switches of the project, each to the slot that does not serve, recording per switch
# into $dir/$phase.{command,switch,write,poll-errors,failed}. The project's first switch is a
# promote, every later one a rollback to the grace slot. A switch that codeb refuses (its health
# probe failed) changes nothing and is reported; the next one tries again. Globals: `promoted`,
# `serving` (the version the hostname serves).
promoted=0
serving=v1
run_switches() { # count phase
  local count=$1 phase=$2 verb want i t0 seen answered errors out ok
  : >"$dir/$phase.command" && : >"$dir/$phase.switch" && : >"$dir/$phase.failed"
  : >"$dir/$phase.answered"
  : >"$dir/$phase.poll-errors" && : >"$dir/$phase.log"
  for ((i = 0; i < count; i++)); do
    if ((promoted)); then verb=rollback; else verb=promote; fi
    if [[ $serving == v1 ]]; then want=v2; else want=v1; fi
    poll_until "$host" "$want" >"$dir/seen" &
    # The API's connection is open before the clock starts (a client's process start and
    # connect are not the daemon's time).
    [[ $mode != api ]] || exec 4<>"/dev/tcp/${listen%:*}/${listen##*:}"
    t0=${EPOCHREALTIME/./}
    ok=1
    if [[ $mode == api ]]; then
      printf 'POST /api/v1/projects/%s/environments/production/%s HTTP/1.1\r\nHost: %s\r\nX-API-Key: %s\r\nContent-Length: 0\r\nConnection: close\r\n\r\n' \
        "$name" "$verb" "$listen" "$key" >&4
      # The answer read by a builtin: no process started while the daemon switches.
      out=""
      IFS= read -r -d '' -t 10 out <&4 || true
      exec 4>&-
      [[ $out == *'"converged":true'* ]] || {
        ok=0
        printf 'switch %d (%s): %s\n' "$i" "$verb" "$out" >>"$dir/$phase.failed"
      }
    elif ! out=$(CODEB_LOG=codeb=debug "$CODEB" --log-format json --state-dir "$state" "$verb" "$name" 2>>"$dir/$phase.log"); then
      ok=0
      printf 'switch %d (%s): %s %s\n' "$i" "$verb" "$out" "$(grep -v '^{' "$dir/$phase.log" | tail -1)" >>"$dir/$phase.failed"
    fi
    awk -v a="$t0" -v b="${EPOCHREALTIME/./}" 'BEGIN { printf "%.3f\n", (b - a) / 1000 }' >>"$dir/$phase.command"
    ((ok)) || kill $! 2>/dev/null || true
    wait $! || true
    read -r seen answered errors <"$dir/seen" || seen=refused answered=refused errors=0
    echo "$errors" >>"$dir/$phase.poll-errors"
    if ((!ok)); then
      : # refused: the old slot still serves, so the poller could only time out
    elif [[ $seen == timeout ]]; then
      printf 'switch %d: %s not seen within %d ms\n' "$i" "$want" $((POLL_TIMEOUT_US / 1000)) >>"$dir/$phase.failed"
    else
      awk -v a="$t0" -v b="$seen" 'BEGIN { printf "%.3f\n", (b - a) / 1000 }' >>"$dir/$phase.switch"
      awk -v a="$t0" -v b="$answered" 'BEGIN { printf "%.3f\n", (b - a) / 1000 }' >>"$dir/$phase.answered"
    fi
    if ((ok)); then
      promoted=1
      serving=$want
    fi
    sleep "$PAUSE"
  done
}

report_switches() { # phase
  local phase=$1 pattern='"service address set"'
  [[ $mode != caddy-admin ]] || pattern='"method":"PATCH"'
  printf '    command:  %s\n' "$(stats <"$dir/$phase.command")"
  printf '    switch:   %s\n' "$(stats <"$dir/$phase.switch")"
  printf '    answered: %s\n' "$(stats <"$dir/$phase.answered")"
  # In api mode the writes are in the daemon's log, idle and load together.
  [[ $mode == api ]] ||
    printf '    write:    %s\n' "$(grep -F "$pattern" "$dir/$phase.log" | grep -o '"elapsed_ms":[0-9.]*' | cut -d: -f2 | stats)"
  printf '    fresh connections of the switch-time poller that failed: %s\n' \
    "$(awk '{ n += $1 } END { print n + 0 }' "$dir/$phase.poll-errors")"
  if [[ -s $dir/$phase.failed ]]; then
    printf '    FAILED switches:\n'
    sed 's/^/      /' "$dir/$phase.failed"
  fi
}

run_mode() { # mode
  mode=$1
  name="bench-${mode%%-*}-$$"
  state="$WORK/$mode/state"
  dir="$WORK/$mode"
  host="$name.codeb.test"
  promoted=0
  serving=v1
  mkdir -p "$dir"
  if [[ $mode == caddy-admin ]]; then export CODEB_SWITCH=caddy-admin; else unset CODEB_SWITCH; fi
  { host_yaml; project_yaml "$name" localhost/codeb-test-app:v1 manual; } >"$dir/m.yaml"
  "$CODEB" --state-dir "$state" apply -f "$dir/m.yaml" >/dev/null
  { host_yaml; project_yaml "$name" localhost/codeb-test-app:v2 manual; } >"$dir/m.yaml"
  "$CODEB" --state-dir "$state" apply -f "$dir/m.yaml" >/dev/null
  "$CODEB" --state-dir "$state" get hosts | sed "s/^/[$mode] /"
  if [[ $mode == api ]]; then
    CODEB_LOG=codeb=debug "$CODEB" --log-format json --state-dir "$state" serve -f "$dir/m.yaml" \
      --listen "$listen" --rate-limit 0 2>"$dir/serve.log" &
    serve_pid=$!
    for _ in $(seq 100); do
      curl -sf "http://$listen/health" >/dev/null && break
      sleep 0.1
    done
    key=$("$CODEB" --state-dir "$state" key create --role developer --name bench | head -n 1)
  fi

  # Without load: the mechanism, not the CPU the load generator leaves to it.
  run_switches 20 idle
  hey -z 10s -c "$WORKERS" -host "$host" "http://$CODEB_TEST_HTTP/" >"$dir/baseline.txt" 2>&1
  hey -z 3600s -c "$WORKERS" -host "$host" "http://$CODEB_TEST_HTTP/" >"$dir/hey.txt" 2>&1 &
  hey_pid=$!
  sleep 1
  run_switches $((CYCLES * 2)) load
  kill -INT "$hey_pid"
  wait "$hey_pid" || true
  hey_pid=""

  printf '\n== %s: %d promote/rollback cycles (%d switches) under hey -c %d\n' "$mode" "$CYCLES" $((CYCLES * 2)) "$WORKERS"
  printf '  load during switches: %s\n' "$(hey_summary "$dir/hey.txt")"
  printf '  baseline, no switch:  %s\n' "$(hey_summary "$dir/baseline.txt")"
  printf '  under load:\n'
  report_switches load
  printf '  idle (20 switches, no load):\n'
  report_switches idle
  grep -A20 '^Error distribution' "$dir/hey.txt" | sed 's/^/  /' || true
  if [[ -n $serve_pid ]]; then
    kill -TERM "$serve_pid"
    wait "$serve_pid" || true
    serve_pid=""
  fi
  "$CODEB" --state-dir "$state" delete project "$name" >/dev/null
  unset CODEB_SWITCH
  [[ $mode == caddy-admin ]] || hey_summary "$dir/hey.txt" | grep -q ' 0 non-2xx, 0 errors'
}

mode="" name="" state="" dir="" host="" key=""
readonly listen=127.0.0.1:19102
status=0
for m in ${BENCH_MODES:-kernel caddy-admin api}; do
  if [[ $m == caddy-admin ]]; then run_mode "$m"; else run_mode "$m" || status=1; fi
done
exit "$status"
