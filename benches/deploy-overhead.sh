#!/usr/bin/env bash
# Deploy overhead: a new release applied with codeb, from the command until it serves through Caddy
# (a poller runs beside the apply), against a bare `podman run` of the same image plus polling it
# until it answers (target: codeb <= 1.3x). Two cases:
#   grace 1h: the idle slot still runs the previous release (kept for rollback); with fixed slot ports
#             it must be removed before the new container can publish its port.
#   grace 0s: the previous slot is retired after the switch, so the next release goes into an empty slot.
# A second bare case does the same work as the first codeb case by hand: `podman rm -f` of a running
# container that publishes the port, then `podman run` on that port plus polling.
# Each run is a new release (RUN changes): a real deploy, never a switch back to a grace slot.
source "$(dirname "$0")/lib.sh"
RUNS=${RUNS:-8}
dir="$WORK/m"
mkdir -p "$dir"
write() { # NAME IMAGE-TAG RUN GRACE
  { host_yaml; project_yaml "$1" "localhost/codeb-test-app:$2"; printf '      gracePeriod: %s\n      env: {RUN: "%s"}\n' "$4" "$3"; } >"$dir/all.yaml"
}

bare() { # podman run + poll until 200, in ms
  local port=4998 t0 id
  t0=$(now_ns)
  id=$(podman run -d --init -p "127.0.0.1:$port:8080" localhost/codeb-test-app:v2)
  until [[ $(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port/health") == 200 ]]; do sleep 0.01; done
  ms_since "$t0"
  podman rm -f "$id" >/dev/null
}

bare_replace() { # podman rm -f of a container holding the port, then run + poll, in ms
  local port=4998 t0 id old
  old=$(podman run -d --init -p "127.0.0.1:$port:8080" localhost/codeb-test-app:v1)
  until [[ $(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port/health") == 200 ]]; do sleep 0.01; done
  t0=$(now_ns)
  podman rm -f "$old" >/dev/null
  id=$(podman run -d --init -p "127.0.0.1:$port:8080" localhost/codeb-test-app:v2)
  until [[ $(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port/health") == 200 ]]; do sleep 0.01; done
  ms_since "$t0"
  podman rm -f "$id" >/dev/null
}

codeb_case() { # NAME GRACE: prints the median time to serve, in ms
  local name=$1 grace=$2 i v t0 times=()
  write "$name" v1 0 "$grace"
  "$CODEB" apply -f "$dir" >/dev/null
  for i in $(seq 1 "$RUNS"); do
    v=$([[ $((i % 2)) == 1 ]] && echo v2 || echo v3)
    write "$name" "$v" "$i" "$grace"
    t0=$(now_ns)
    "$CODEB" apply -f "$dir" >/dev/null &
    until [[ $(get "$name.codeb.test" /) == "$v" ]]; do sleep 0.005; done
    times+=("$(ms_since "$t0")")
    wait $!
  done
  echo "${times[*]}" >"$WORK/$name.times"
  printf '%s\n' "${times[@]}" | median
  cleanup_projects "$name"
}

with_grace=$(codeb_case deploygrace 1h)
empty_slot=$(codeb_case deployempty 0s)
bare_times=()
for i in $(seq 1 "$RUNS"); do bare_times+=("$(bare)"); done
b=$(printf '%s\n' "${bare_times[@]}" | median)
replace_times=()
for i in $(seq 1 "$RUNS"); do replace_times+=("$(bare_replace)"); done
r=$(printf '%s\n' "${replace_times[@]}" | median)
echo "bare podman run + poll until it answers:             ${b} ms (median of $RUNS: ${bare_times[*]})"
echo "bare podman rm -f (port holder) + run + poll:         ${r} ms (median of $RUNS: ${replace_times[*]})"
echo "codeb, idle slot runs the previous release (1h grace): ${with_grace} ms (median of $RUNS: $(cat "$WORK/deploygrace.times"))"
echo "codeb, idle slot empty (0s grace):                     ${empty_slot} ms (median of $RUNS: $(cat "$WORK/deployempty.times"))"
awk -v g="$with_grace" -v e="$empty_slot" -v b="$b" -v r="$r" 'BEGIN {printf "ratio to bare run: %.2f with a previous release to remove, %.2f into an empty slot (target <= 1.3); to bare rm -f + run: %.2f\n", g/b, e/b, g/r}'
