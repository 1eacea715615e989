#!/usr/bin/env bash
# A no-op apply reads each backend with a constant number of calls, however many projects. Times the
# no-op apply of 1 project and of 30 (median of RUNS each, alternating) on the same host, and Podman's
# own list call for context: Podman's list costs about 1 ms per container on this machine, so the
# host's container count, not codeb's project count, sets most of a no-op apply's time.
source "$(dirname "$0")/lib.sh"
RUNS=${RUNS:-15}

deploy_set() { # N: writes and applies N projects under their own state dir, prints nothing
  local n=$1 dir="$WORK/m$1" i
  mkdir -p "$dir"
  { host_yaml; for i in $(seq 1 "$n"); do project_yaml "noop$n-$i" localhost/codeb-test-app:v1; done; } >"$dir/all.yaml"
  CODEB_STATE_DIR="$WORK/state$n" "$CODEB" apply -f "$dir" >/dev/null
  CODEB_STATE_DIR="$WORK/state$n" "$CODEB" apply -f "$dir" | grep -q "nothing to do" || { echo "set $n did not converge" >&2; exit 1; }
}
noop_us() { # N: one no-op apply of set N, in µs
  local t0; t0=$(now_ns)
  CODEB_STATE_DIR="$WORK/state$1" "$CODEB" apply -f "$WORK/m$1" >/dev/null
  echo $((($(now_ns) - t0) / 1000))
}
list_us() {
  local t0; t0=$(now_ns)
  curl -s -o /dev/null --unix-socket "${CODEB_TEST_PODMAN#unix://}" \
    'http://d/v1.41/containers/json?all=true&filters=%7B%22label%22%3A%5B%22codeb.project%22%5D%7D'
  echo $((($(now_ns) - t0) / 1000))
}

# Alone on the host: 1 project (1 container).
deploy_set 1
alone=$(for i in $(seq 1 "$RUNS"); do noop_us 1; done | median)
alone_list=$(for i in $(seq 1 "$RUNS"); do list_us; done | median)
# Then with the 30-project set deployed beside it: both measured against the same host.
deploy_set 30
one=""; thirty=""
for i in $(seq 1 "$RUNS"); do one+="$(noop_us 1) "; thirty+="$(noop_us 30) "; done
one=$(tr ' ' '\n' <<<"$one" | grep . | median)
thirty=$(tr ' ' '\n' <<<"$thirty" | grep . | median)
full_list=$(for i in $(seq 1 "$RUNS"); do list_us; done | median)

echo "Podman list call: ${alone_list} µs with 1 container, ${full_list} µs with 31"
echo "no-op apply, 1 project, alone on the host:         ${alone} µs"
echo "no-op apply, 1 project, 31 containers on the host: ${one} µs"
echo "no-op apply, 30 projects, same host:               ${thirty} µs"
awk -v a="$one" -v b="$thirty" 'BEGIN {printf "ratio 30/1 on the same host: %.2f (target <= 1.5)\n", b/a}'
awk -v a="$alone" -v b="$thirty" 'BEGIN {printf "ratio 30/1 against 1 alone:  %.2f (Podman list grows with containers)\n", b/a}'
for i in $(seq 1 30); do CODEB_STATE_DIR="$WORK/state30" "$CODEB" delete project "noop30-$i" >/dev/null; done
CODEB_STATE_DIR="$WORK/state1" "$CODEB" delete project noop1-1 >/dev/null
