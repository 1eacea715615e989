#!/usr/bin/env bash
# Promote and rollback: the wall time of each command, and what a load generator (hey, HTTP/1.1
# keep-alive, 8 clients) sees through Caddy during SWITCHES switches.
source "$(dirname "$0")/lib.sh"
SWITCHES=${SWITCHES:-20}
name=switchbench
dir="$WORK/m"
mkdir -p "$dir"
{ host_yaml; project_yaml "$name" localhost/codeb-test-app:v1 manual; } >"$dir/all.yaml"
"$CODEB" apply -f "$dir" >/dev/null
{ host_yaml; project_yaml "$name" localhost/codeb-test-app:v2 manual; } >"$dir/all.yaml"
"$CODEB" apply -f "$dir" >/dev/null
"$CODEB" promote "$name" >/dev/null # v2 active, v1 in grace: rollback and promote alternate

hey -z 600s -c 8 -host "$name.codeb.test" "http://$CODEB_TEST_HTTP/" >"$WORK/hey.txt" 2>&1 &
hey_pid=$!
until [[ -n $(get "$name.codeb.test" /) ]]; do sleep 0.05; done
times=()
for i in $(seq 1 "$SWITCHES"); do
  cmd=$([[ $((i % 2)) == 1 ]] && echo rollback || echo promote)
  t0=$(now_ns)
  "$CODEB" "$cmd" "$name" >/dev/null
  times+=("$(ms_since "$t0")")
  sleep 0.25 # let traffic flow on the new slot before the next switch
done
kill -INT "$hey_pid"
wait "$hey_pid" || true
echo "switches: $SWITCHES; command wall time ms: median $(printf '%s\n' "${times[@]}" | median), all: ${times[*]}"
sed -n '/Summary:/,/Requests\/sec/p;/Status code distribution:/,$p' "$WORK/hey.txt"
cleanup_projects "$name"
