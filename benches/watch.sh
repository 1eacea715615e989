#!/usr/bin/env bash
# Benchmarks of `codeb watch` against the local stack (deploy/stack.sh, already up with its images,
# and the same CODEB_STACK_* settings in the environment as when it was started).
#
# Usage: benches/watch.sh [save|kill|scale|all]   (default: all)
#
#   save   a manifest saved -> the new release serving through Caddy: the total, and codeb's own
#          share, i.e. the total minus Podman's create+start of the container (from the adapter's
#          debug log) and the health-check wait (from deploy done to healthy done).
#   kill   an active container removed by hand (`podman rm -f`) -> serving again through Caddy,
#          and `podman kill` (the container stays; Podman's restart policy or codeb restarts it).
#   scale  RSS of codeb watch managing CODEB_BENCH_PROJECTS (default 100) projects of one tiny
#          busybox container each, and its CPU while idle and converged over CODEB_BENCH_IDLE_S
#          (default 60) seconds, read from /proc/PID/stat, at the default resync (30 s).
#
# CODEB_BENCH_DNS=1 makes the Zone `codeb.test` managed through the stack's PowerDNS (created when
# missing, deleted at the end if this run created it), so that every project also gets its three
# records and every resync also reads the zone: `scale` then reports the time until every name
# resolves, and RSS and idle CPU include DNS.
#
# Uses the release build. Prints one line per measurement; times in milliseconds. Every project it
# creates is deleted at the end, and every codeb process it starts is stopped.
set -euo pipefail
cd "$(dirname "$0")/.."

what=${1:-all}
ITER=${CODEB_BENCH_ITER:-10}
PROJECTS=${CODEB_BENCH_PROJECTS:-100}
IDLE_S=${CODEB_BENCH_IDLE_S:-60}
DNS=${CODEB_BENCH_DNS:-0}

stack_env=$(deploy/stack.sh env)
eval "$stack_env"
cargo build --release --quiet
BIN=$PWD/target/release/codeb
WORK=$(mktemp -d /tmp/codeb-bench.XXXXXX)
WATCH_PID=""
PDNS_API="$CODEB_TEST_PDNS_API/api/v1/servers/localhost"
ZONE_CREATED=0
if ((DNS)) && ! curl -sf -o /dev/null -H "X-API-Key: $PDNS_API_KEY" "$PDNS_API/zones/codeb.test."; then
  ZONE_CREATED=1 # codeb creates it; this script deletes it at the end
fi

cleanup() {
  if [[ -n $WATCH_PID ]]; then
    kill -TERM "$WATCH_PID" 2>/dev/null || true
    wait "$WATCH_PID" 2>/dev/null || true
  fi
  if [[ -d $WORK/m ]]; then
    "$BIN" --state-dir "$WORK/state" delete -f "$WORK/m" >/dev/null 2>&1 || true
  fi
  if ((ZONE_CREATED)); then
    curl -sf -o /dev/null -X DELETE -H "X-API-Key: $PDNS_API_KEY" "$PDNS_API/zones/codeb.test." || true
  fi
  rm -rf "$WORK"
}
trap cleanup EXIT

now() { date +%s.%N; }
ms() { echo "($2 - $1) * 1000 / 1" | bc; }

host_yaml() {
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
EOF
  if ((DNS)); then
    printf 'spec:\n  powerdns: {api: "%s", apiKeyEnv: PDNS_API_KEY}\n' "$CODEB_TEST_PDNS_API"
  fi
}

# The A record of a name, through PowerDNS's DNS port.
resolve() { dig +short +time=1 +tries=1 @127.0.0.1 -p "${CODEB_TEST_PDNS_DNS#*:}" "$1" A; }

project_yaml() { # name image env
  cat <<EOF
---
apiVersion: codeb.kr/v1
kind: Project
metadata:
  name: $1
spec:
  host: local
  zone: codeb.test
  environments:
    $3:
      image: $2
      port: 8080
      healthCheck:
        path: /health
        timeout: 15s
      promotion: auto
      gracePeriod: 1h
EOF
}

# Saves the way editors do: a temporary file renamed over the manifest.
save() { # file text
  printf '%s\n' "$2" >"$WORK/m/.tmp.swp"
  mv -f "$WORK/m/.tmp.swp" "$1"
}

start_watch() { # args...
  CODEB_LOG=codeb=debug "$BIN" --state-dir "$WORK/state" --log-format json watch -f "$WORK/m" "$@" \
    >"$WORK/watch.log" 2>&1 &
  WATCH_PID=$!
}

stop_watch() {
  kill -TERM "$WATCH_PID"
  wait "$WATCH_PID" || true
  WATCH_PID=""
}

# Stops the daemon, deletes the projects of this benchmark, and forgets its state.
finish() {
  stop_watch
  "$BIN" --state-dir "$WORK/state" delete -f "$WORK/m" >/dev/null
  rm -rf "$WORK/m" "$WORK/state"
}

# A request sent while the app is gone hangs in Caddy's dial (the service address leads to a
# container IP that answers no ARP) until curl gives up, so curl's timeout bounds how late a
# recovery is noticed: with 2 s, every kill measured 2.1-2.4 s, the timeout and not codeb. A
# request to the busybox app through Caddy takes a few ms, so 0.2 s loses no answer.
body() { curl -s -m 0.2 -H "Host: $1" "http://$CODEB_TEST_HTTP/" || true; }

# Polls (no sleep: ~5 ms per curl) until host serves body; fails after 30 s (or timeout_s).
until_serves() { # host body [timeout_s]
  local deadline=$(($(date +%s) + ${3:-30}))
  until [[ $(body "$1") == "$2" ]]; do
    (($(date +%s) < deadline)) || {
      cp "$WORK/watch.log" /tmp/codeb-bench-failed.log
      echo "timeout waiting for $1 to serve $2 (daemon log: /tmp/codeb-bench-failed.log)" >&2
      return 1
    }
  done
}

# Seconds since the epoch of a JSON log line's timestamp.
JQ_TIME='(.timestamp | capture("(?<s>[^.]+)\\.(?<f>[0-9]+)Z") | (.s + "Z" | fromdateiso8601) + ("0." + .f | tonumber))'

bench_save() {
  mkdir -p "$WORK/m"
  local name=bsave host v=v1 next total notice create start removed health own
  name=bsave$$
  host=$name.codeb.test
  save "$WORK/m/all.yaml" "$(host_yaml; project_yaml "$name" localhost/codeb-test-app:v1 production)"
  start_watch --resync 30s
  until_serves "$host" v1
  echo "save -> serving (ms): total; notice (inotify + 200 ms debounce + load); Podman: create+start of the new container, removal of the grace slot's old one; health-check wait; codeb's own = total - Podman - health (includes notice)"
  for i in $(seq 1 "$ITER"); do
    # Three releases in turn: the next one is never the one in the grace slot (which would be a
    # switch back, with no container to start).
    case $v in v1) next=v2 ;; v2) next=v3 ;; *) next=v1 ;; esac
    sleep 1 # let the previous rollout's events settle; not part of any measurement
    local t0 t1
    t0=$(now)
    save "$WORK/m/all.yaml" "$(host_yaml; project_yaml "$name" "localhost/codeb-test-app:$next" production)"
    until_serves "$host" "$next"
    t1=$(now)
    v=$next
    # The log lines of this rollout.
    local lines
    lines=$(jq -c --argjson t0 "$t0" "select($JQ_TIME > \$t0) | {t: $JQ_TIME, m: .fields.message, step: .fields.step, ms: .fields.elapsed_ms}" "$WORK/watch.log")
    local t_reload t_deploy t_healthy
    t_reload=$(jq -s '[.[] | select(.m == "manifests changed")][0].t' <<<"$lines")
    t_deploy=$(jq -s '[.[] | select(.m == "done" and (.step | test(": deploy ")))][0].t' <<<"$lines")
    t_healthy=$(jq -s '[.[] | select(.m == "done" and (.step | test(": wait until ")))][0].t' <<<"$lines")
    create=$(jq -s '[.[] | select(.m == "created")][0].ms' <<<"$lines")
    start=$(jq -s '[.[] | select(.m == "started")][0].ms' <<<"$lines")
    # The grace slot's old container, removed to make room (a stop of its app, then the removal).
    removed=$(jq -s '[.[] | select(.m == "removed")][0].ms // 0' <<<"$lines")
    if [[ $create == null || $start == null || $t_deploy == null || $t_healthy == null || $t_reload == null ]]; then
      echo "save $i: incomplete log, skipped" >&2
      continue
    fi
    total=$(ms "$t0" "$t1")
    notice=$(ms "$t0" "$t_reload")
    health=$(ms "$t_deploy" "$t_healthy")
    own=$((total - create - start - removed - health))
    printf 'save %2d: total %4d  notice %4d  podman create+start %4d  remove-old %4d  health %4d  codeb-own %4d\n' \
      "$i" "$total" "$notice" $((create + start)) "$removed" "$health" "$own"
  done
  finish
}

bench_kill() {
  mkdir -p "$WORK/m"
  local name host
  name=bkill$$
  host=$name.codeb.test
  save "$WORK/m/all.yaml" "$(host_yaml; project_yaml "$name" localhost/codeb-test-app:v1 production)"
  # A resync far away: what brings the app back is the Podman event.
  start_watch --resync 10m
  until_serves "$host" v1
  echo "container removed or killed by hand -> serving again through Caddy (ms, from the podman command's start)"
  for how in "rm -f" kill; do
    for i in $(seq 1 "$ITER"); do
      sleep 1
      local active t0 t1
      active=$("$BIN" --state-dir "$WORK/state" get projects -o json | jq -r --arg n "$name" '.[] | select(.project == $n) | .activeSlot')
      t0=$(now)
      # shellcheck disable=SC2086
      podman $how "$name-production-$active" >/dev/null
      until_serves "$host" v1
      t1=$(now)
      printf 'podman %-5s %2d: %4d\n' "$how" "$i" "$(ms "$t0" "$t1")"
    done
  done
  finish
}

bench_scale() {
  mkdir -p "$WORK/m"
  local text i
  text=$(host_yaml)
  for i in $(seq 1 "$PROJECTS"); do
    # Environment `bench` takes ports 5000-5499, away from the tests' production range.
    text+=$'\n'$(project_yaml "bscale$i" localhost/codeb-test-app:v1 bench)
  done
  save "$WORK/m/all.yaml" "$text"
  local t0 t1
  t0=$(now)
  start_watch
  for i in $(seq 1 "$PROJECTS"); do
    # Not 30 s each: a reconcile that fails (a Caddy admin call reset under load) is retried after
    # its backoff, behind every key scheduled earlier, i.e. after the rest of the initial deploys.
    until_serves "bscale$i-bench.codeb.test" v1 300
  done
  t1=$(now)
  echo "scale: $PROJECTS projects deployed from an empty host in $(ms "$t0" "$t1") ms; Podman's share, summed over the deploys:"
  if ((DNS)); then
    local t_zone
    for i in $(seq 1 "$PROJECTS"); do
      for n in "" blue. green.; do
        [[ $(resolve "${n}bscale$i-bench.codeb.test") == 127.0.0.1 ]] || {
          echo "scale: ${n}bscale$i-bench.codeb.test does not resolve" >&2
          return 1
        }
      done
    done
    # The zone's reconcile runs at start beside the hosts' and writes every record at once.
    t_zone=$(jq -s "[.[] | select(.fields.message == \"done\" and (.fields.step | test(\"^zone codeb.test: change\"))) | $JQ_TIME] | max" "$WORK/watch.log")
    echo "scale: all $((PROJECTS * 3)) names resolve; the zone's last write was done $(ms "$t0" "$t_zone") ms after the start, zone writes: $(jq -s '[.[] | select(.fields.message == "done" and (.fields.step | test("^zone ")))] | length' "$WORK/watch.log")"
  fi
  jq -s '[.[] | select(.fields.message == "created" or .fields.message == "started") | {m: .fields.message, ms: .fields.elapsed_ms}]
    | group_by(.m)[] | "  \(.[0].m): \(length) calls, \(map(.ms) | add) ms in all, \(map(.ms) | sort | .[length / 2 | floor]) ms median, \(map(.ms) | max) ms max"' \
    -r "$WORK/watch.log"
  jq -s '[.[] | select(.fields.message == "reconciled" and .fields.result == "converged" and .fields.actions > 0) | .fields.duration_ms] | sort
    | "  environment reconciles that deployed: \(length), \(.[length / 2 | floor]) ms median, \(max) ms max"' -r "$WORK/watch.log"
  jq -s '[.[] | select(.fields.result == "error") | .fields.error] | "  reconciles that failed (retried on backoff): \(length)", (.[:5][] | "    \(.[:300])")' \
    -r "$WORK/watch.log"
  sleep 5 # let the last reconciles and the first sweep finish before measuring idle
  local clk rss hwm a b
  clk=$(getconf CLK_TCK)
  a=$(awk '{print $14 + $15}' "/proc/$WATCH_PID/stat")
  sleep "$IDLE_S"
  b=$(awk '{print $14 + $15}' "/proc/$WATCH_PID/stat")
  rss=$(awk '/^VmRSS/ {print $2}' "/proc/$WATCH_PID/status")
  hwm=$(awk '/^VmHWM/ {print $2}' "/proc/$WATCH_PID/status")
  echo "scale: RSS $((rss / 1024)) MiB now, peak $((hwm / 1024)) MiB (VmHWM), managing $PROJECTS projects"
  echo "scale: idle CPU over ${IDLE_S}s at resync 30s: $((b - a)) ticks of 1/${clk} s = $(echo "scale=3; ($b - $a) * 100 / $clk / $IDLE_S" | bc)% of one core"
  echo "scale: sweeps logged: $(grep -c '"result":"swept"' "$WORK/watch.log"), zone reconciles: $(grep -c '"work":"zone ' "$WORK/watch.log" || true), writes while idle: $(jq -c --argjson t "$t1" "select($JQ_TIME > \$t + 5 and .fields.message == \"done\")" "$WORK/watch.log" | wc -l)"
  finish
}

case $what in
save) bench_save ;;
kill) bench_kill ;;
scale) bench_scale ;;
all)
  bench_save
  bench_kill
  bench_scale
  ;;
*)
  sed -n '2,/^set -euo/p' "$0" | grep '^#' | sed 's/^# \{0,1\}//' >&2
  exit 2
  ;;
esac
