#!/usr/bin/env bash
# Benchmarks of MCP on `codeb serve` (`POST /mcp`, stateless streamable HTTP) against the local
# stack (deploy/stack.sh): how much of an agent's context the tool list takes, and what a
# read-only tool call costs with 100 projects.
#
# Usage: benches/mcp.sh   (brings the local stack up through benches/lib.sh; release build;
#        CODEB_BENCH_STACK_UP=0 with CODEB_STACK_DIR uses a stack that is up already)
#
# With CODEB_BENCH_PROJECTS (default 100) projects of one tiny container each, served by one
# `codeb serve` (rate limit off), a viewer key and a developer key:
#   list   tools/list: bytes of the JSON-RPC answer and of its `tools`, tokens ≈ bytes / 4.
#   call   2,000 calls each from one client, idle (`hey -n 2000 -c 1`): tools/call list_projects
#          (every project: the answer's bytes too), tools/call describe_project, and
#          GET /api/v1/projects and /api/v1/projects/NAME for comparison: p50, p99, requests/s,
#          non-2xx.
#   load   tools/call list_projects under `hey -c 16 -z 10s`: p50, p99, requests/s, non-2xx.
#   steps  deploy's two steps through MCP for one project (v2, v3, v2, ...; automatic promotion):
#          the plan call and the confirmed call's wall time, CODEB_BENCH_STEPS (default 5) rounds.
# Every project it creates is deleted at the end, and the daemon is stopped.
source "$(dirname "$0")/lib.sh"

PROJECTS=${CODEB_BENCH_PROJECTS:-100}
STEPS=${CODEB_BENCH_STEPS:-5}
readonly LISTEN=127.0.0.1:19104
readonly URL="http://$LISTEN/mcp"
SERVE_PID=""

# shellcheck disable=SC2317 # called by the EXIT trap
cleanup() {
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
  for i in $(seq 1 "$PROJECTS"); do bench_project "bmcp$i" localhost/codeb-test-app:v1; done
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
    [[ $(get "bmcp$i-bench.codeb.test" /) == v1 ]] && break
    sleep 0.1
  done
done
echo "setup: $PROJECTS projects serving after $(ms_since "$t0") ms"
VIEWER=$("$CODEB" key create --role viewer --name bench-viewer | head -n 1)
DEV=$("$CODEB" key create --role developer --name bench-dev | head -n 1)

# rpc KEY JSON: one JSON-RPC message POSTed to /mcp; prints the answer.
rpc() {
  curl -s -H "X-API-Key: $1" -H 'Content-Type: application/json' \
    -H 'Accept: application/json, text/event-stream' -d "$2" "$URL"
}
call_json() { # tool arguments-json
  printf '{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"%s","arguments":%s}}' "$1" "$2"
}

# list: the tool list's size.
rpc "$VIEWER" '{"jsonrpc":"2.0","id":1,"method":"tools/list"}' >"$WORK/list.json"
answer=$(wc -c <"$WORK/list.json")
tools=$(jq -c '{tools: .result.tools}' "$WORK/list.json" | tr -d '\n' | wc -c)
count=$(jq '.result.tools | length' "$WORK/list.json")
echo "tools/list: $count tools; answer $answer bytes, tools $tools bytes; ≈ $((answer / 4)) tokens (bytes / 4)"

hey_summary() {
  awk '
    /^Error distribution:/ { in_err = 1; next }
    !in_err && /^  \[[0-9]+\]/ { code = substr($1, 2, 3); n = $2; total += n; if (code !~ /^2/) bad += n }
    in_err && /^  \[[0-9]+\]/ { errors += substr($1, 2, length($1) - 2) }
    /Requests\/sec:/ { rps = $2 }
    / 50% in / { p50 = $3 * 1000 } / 99% in / { p99 = $3 * 1000 }
    END { printf "%d requests, %.0f/s, %d non-2xx, %d errors, p50 %.2f ms, p99 %.2f ms",
      total, rps, bad, errors, p50, p99 }' "$1"
}

# hey_mcp LABEL HEY-ARGS BODY: tools/call with the viewer key.
hey_mcp() {
  local label=$1 args=$2 body=$3
  # shellcheck disable=SC2086 # args are hey's options, split on purpose
  hey $args -m POST -T application/json -H "Accept: application/json, text/event-stream" \
    -H "X-API-Key: $VIEWER" -d "$body" "$URL" >"$WORK/hey.txt" 2>&1
  printf '%s: %s\n' "$label" "$(hey_summary "$WORK/hey.txt")"
}

# call: one client, idle.
list_body=$(call_json list_projects '{}')
rpc "$VIEWER" "$list_body" >"$WORK/projects.json"
[[ $(jq '.result.isError' "$WORK/projects.json") == false ]] || { cat "$WORK/projects.json"; exit 1; }
bytes=$(wc -c <"$WORK/projects.json")
echo "list_projects answer with $PROJECTS projects: $bytes bytes (≈ $((bytes / 4)) tokens)"
hey_mcp "tools/call list_projects, one client, idle" "-n 2000 -c 1" "$list_body"
hey_mcp "tools/call describe_project, one client, idle" "-n 2000 -c 1" "$(call_json describe_project '{"project":"bmcp1"}')"
for path in /api/v1/projects /api/v1/projects/bmcp1; do
  hey -n 2000 -c 1 -H "X-API-Key: $VIEWER" "http://$LISTEN$path" >"$WORK/hey.txt" 2>&1
  printf 'GET %s, one client, idle: %s\n' "$path" "$(hey_summary "$WORK/hey.txt")"
done

# load: 16 clients for 10 s.
hey_mcp "tools/call list_projects under hey -c 16 -z 10s" "-z 10s -c 16" "$list_body"

# steps: deploy planned, then confirmed with its plan_id.
plan_ms=()
run_ms=()
v=2
for _ in $(seq "$STEPS"); do
  args="{\"project\":\"bmcp1\",\"environment\":\"bench\",\"image\":\"localhost/codeb-test-app:v$v\"}"
  t=$(now_ns)
  plan=$(rpc "$DEV" "$(call_json deploy "$args")")
  plan_ms+=("$(ms_since "$t")")
  id=$(jq -r '.result.content[0].text' <<<"$plan" | sed -n 's/^plan_id: //p')
  [[ -n $id ]] || { echo "no plan_id: $plan"; exit 1; }
  t=$(now_ns)
  done_=$(rpc "$DEV" "$(call_json deploy "${args%\}},\"plan_id\":\"$id\"}")")
  run_ms+=("$(ms_since "$t")")
  [[ $(jq '.result.isError' <<<"$done_") == false ]] || { echo "$done_"; exit 1; }
  v=$((5 - v))
done
printf 'deploy through MCP (%d rounds): plan call p50 %s ms (%s); confirmed call p50 %s ms (%s)\n' "$STEPS" \
  "$(printf '%s\n' "${plan_ms[@]}" | median)" "${plan_ms[*]}" \
  "$(printf '%s\n' "${run_ms[@]}" | median)" "${run_ms[*]}"
