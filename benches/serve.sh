#!/usr/bin/env bash
# Benchmarks of `codeb serve` against the local stack (deploy/stack.sh): the API's read path under
# load while deploys run, and the daemon's footprint.
#
# Usage: benches/serve.sh   (brings the local stack up through benches/lib.sh; release build)
#
# With CODEB_BENCH_PROJECTS (default 100) projects of one tiny container each, served by one
# `codeb serve` (rate limit off):
#   one     2,000 GET /api/v1/projects from one client, idle: the cost of one request.
#   read    `hey -c 16 -z 10s` on GET /api/v1/projects and on POST /api/tool {"tool":"status"},
#           each while a loop deploys a new image of one project through the API (auto promotion,
#           v2 and v3 in turn): p50, p99, requests/s, non-2xx and errors.
#   footprint  VmRSS and VmHWM of the daemon, and its CPU while idle and converged over
#           CODEB_BENCH_IDLE_S (default 60) seconds at the default resync (30 s), from /proc.
# Every project it creates is deleted at the end, and the daemon is stopped.
source "$(dirname "$0")/lib.sh"

PROJECTS=${CODEB_BENCH_PROJECTS:-100}
IDLE_S=${CODEB_BENCH_IDLE_S:-60}
readonly LISTEN=127.0.0.1:19103
SERVE_PID=""
DEPLOY_PID=""

# shellcheck disable=SC2317 # called by the EXIT trap
cleanup() {
  [[ -z $DEPLOY_PID ]] || kill "$DEPLOY_PID" 2>/dev/null || true
  if [[ -n $SERVE_PID ]]; then
    kill -TERM "$SERVE_PID" 2>/dev/null || true
    wait "$SERVE_PID" 2>/dev/null || true
  fi
  [[ ! -d $WORK/m ]] || "$CODEB" delete -f "$WORK/m" >/dev/null 2>&1 || true
  rm -rf "$WORK"
}
trap cleanup EXIT

# bench_project NAME IMAGE: environment `bench` (ports 5000-5499, away from the tests' range).
bench_project() {
  project_yaml "$1" "$2" | sed 's/^    production:/    bench:/'
}

mkdir -p "$WORK/m"
{
  host_yaml
  for i in $(seq 1 "$PROJECTS"); do bench_project "bserve$i" localhost/codeb-test-app:v1; done
} >"$WORK/m/all.yaml"

"$CODEB" serve -f "$WORK/m" --listen "$LISTEN" --rate-limit 0 2>"$WORK/serve.log" &
SERVE_PID=$!
for _ in $(seq 100); do
  curl -sf "http://$LISTEN/health" >/dev/null && break
  sleep 0.1
done
t0=$(now_ns)
for i in $(seq 1 "$PROJECTS"); do
  for _ in $(seq 3000); do
    [[ $(get "bserve$i-bench.codeb.test" /) == v1 ]] && break
    sleep 0.1
  done
done
echo "setup: $PROJECTS projects serving after $(ms_since "$t0") ms"
KEY=$("$CODEB" key create --role admin --name bench | head -n 1)

# Deploys v2, v3, v2, ... of one project through the API until killed.
deploy_loop() {
  local v=2
  while true; do
    curl -s --max-time 120 -H "X-API-Key: $KEY" \
      -d "{\"tool\":\"deploy\",\"project\":\"bserve1\",\"environment\":\"bench\",\"image\":\"localhost/codeb-test-app:v$v\"}" \
      "http://$LISTEN/api/tool" >>"$WORK/deploys.txt"
    echo >>"$WORK/deploys.txt"
    v=$((5 - v))
  done
}


read_bench() { # label hey-args...
  local label=$1
  shift
  : >"$WORK/deploys.txt"
  deploy_loop &
  DEPLOY_PID=$!
  sleep 0.5
  hey -z 10s -c 16 -H "X-API-Key: $KEY" "$@" >"$WORK/hey.txt" 2>&1
  kill "$DEPLOY_PID" 2>/dev/null || true
  wait "$DEPLOY_PID" 2>/dev/null || true
  DEPLOY_PID=""
  local deploys ok
  deploys=$(grep -c '"tool"\|"ok"' "$WORK/deploys.txt" || true)
  ok=$(grep -c '"ok":true' "$WORK/deploys.txt" || true)
  printf '%s: %s; deploys meanwhile: %d answered, %d ok\n' "$label" "$(hey_summary "$WORK/hey.txt")" "$deploys" "$ok"
  grep -A10 '^Error distribution' "$WORK/hey.txt" || true
}

hey_summary() { # file
  awk '
    /^Error distribution:/ { in_err = 1; next }
    !in_err && /^  \[[0-9]+\]/ { code = substr($1, 2, 3); n = $2; total += n; if (code !~ /^2/) bad += n }
    in_err && /^  \[[0-9]+\]/ { errors += substr($1, 2, length($1) - 2) }
    /Requests\/sec:/ { rps = $2 }
    / 50% in / { p50 = $3 * 1000 } / 99% in / { p99 = $3 * 1000 }
    END { printf "%d requests, %.0f/s, %d non-2xx, %d errors, p50 %.2f ms, p99 %.2f ms",
      total, rps, bad, errors, p50, p99 }' "$1"
}

# One client, no deploy: the cost of one request.
hey -n 2000 -c 1 -H "X-API-Key: $KEY" "http://$LISTEN/api/v1/projects" >"$WORK/hey1.txt" 2>&1
printf 'GET /api/v1/projects, one client, idle: %s\n' "$(hey_summary "$WORK/hey1.txt")"
read_bench "GET /api/v1/projects" "http://$LISTEN/api/v1/projects"
read_bench "POST /api/tool status" -m POST -T application/json -d '{"tool":"status"}' "http://$LISTEN/api/tool"

# Footprint: converged and idle.
sleep 2
ticks() { awk '{ print $14 + $15 }' "/proc/$SERVE_PID/stat"; }
hz=$(getconf CLK_TCK)
t_start=$(ticks)
sleep "$IDLE_S"
t_end=$(ticks)
rss=$(awk '/VmRSS/ { print $2 }' "/proc/$SERVE_PID/status")
hwm=$(awk '/VmHWM/ { print $2 }' "/proc/$SERVE_PID/status")
awk -v t=$((t_end - t_start)) -v hz="$hz" -v s="$IDLE_S" -v rss="$rss" -v hwm="$hwm" -v n="$PROJECTS" 'BEGIN {
  printf "footprint: %d projects: RSS %.1f MiB (peak %.1f MiB); idle CPU %.2f %% of one core over %d s (%d ticks)\n",
    n, rss / 1024, hwm / 1024, 100 * t / hz / s, s, t }'
