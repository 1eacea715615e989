#!/usr/bin/env bash
# A no-op apply reads each backend with a constant number of calls, however many projects. Times the
# no-op apply of 1 project and of 30 (median of RUNS each, alternating) on the same host, and Podman's
# own list call for context: Podman's list costs about 1 ms per container on this machine, so the
# host's container count, not codeb's project count, sets most of a no-op apply's time.
#
# codeb's own share of a no-op apply is its wall time minus the one Podman list call it cannot
# avoid, timed beside it: in the same run, from the request to the whole answer, as codeb's debug
# log line "podman listed containers" reports it (each timed apply runs with CODEB_LOG=codeb=debug
# and JSON logs). The list call timed with curl is printed too, for context: it includes curl's
# own start, which is not Podman's and not codeb's.
#
# CODEB_BEFORE=/path/to/an/older/codeb: afterwards, the same 30-project no-op apply with that binary
# against the same host (its own state directory and projects, staging ports 4500-4999), alternating
# with this build's, for a before/after ratio in one run. Each build's set is deployed and deleted in
# turn: an older codeb would rewrite the newer one's host-wide kernel rules (the loopback guard).
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
own_us() { # N: one no-op apply of set N with its debug log: its wall time minus its Podman list, µs
  local t0 wall list
  t0=$(now_ns)
  CODEB_LOG=codeb=debug CODEB_STATE_DIR="$WORK/state$1" "$CODEB" --log-format json apply -f "$WORK/m$1" >/dev/null 2>"$WORK/own.log"
  wall=$((($(now_ns) - t0) / 1000))
  list=$(grep -F '"podman listed containers"' "$WORK/own.log" | grep -o '"elapsed_us":[0-9]*' | head -n 1 | cut -d: -f2)
  [[ -n $list ]] || { echo "no list call in the debug log of set $1" >&2; exit 1; }
  echo $((wall - list)) "$list"
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
own_alone=$(for i in $(seq 1 "$RUNS"); do own_us 1; done)
# Then with the 30-project set deployed beside it: both measured against the same host.
deploy_set 30
one=""; thirty=""
for i in $(seq 1 "$RUNS"); do one+="$(noop_us 1) "; thirty+="$(noop_us 30) "; done
one=$(tr ' ' '\n' <<<"$one" | grep . | median)
thirty=$(tr ' ' '\n' <<<"$thirty" | grep . | median)
full_list=$(for i in $(seq 1 "$RUNS"); do list_us; done | median)
own_thirty=$(for i in $(seq 1 "$RUNS"); do own_us 30; done)
own1=$(cut -d' ' -f1 <<<"$own_alone" | median) list1=$(cut -d' ' -f2 <<<"$own_alone" | median)
own30=$(cut -d' ' -f1 <<<"$own_thirty" | median) list30=$(cut -d' ' -f2 <<<"$own_thirty" | median)

echo "Podman list call: ${alone_list} µs with 1 container, ${full_list} µs with 31"
echo "no-op apply, 1 project, alone on the host:         ${alone} µs"
echo "no-op apply, 1 project, 31 containers on the host: ${one} µs"
echo "no-op apply, 30 projects, same host:               ${thirty} µs"
awk -v a="$one" -v b="$thirty" 'BEGIN {printf "ratio 30/1 on the same host: %.2f (target <= 1.5)\n", b/a}'
awk -v a="$alone" -v b="$thirty" 'BEGIN {printf "ratio 30/1 against 1 alone:  %.2f (Podman list grows with containers)\n", b/a}'
awk -v a="$alone" -v al="$alone_list" -v b="$thirty" -v bl="$full_list" 'BEGIN {
  printf "wall minus curl'"'"'s list (curl'"'"'s start included): 1 project alone %d µs, 30 projects %d µs: ratio %.2f\n", a-al, b-bl, (b-bl)/(a-al)}'
echo "Podman list call inside codeb's apply (its debug log, median): ${list1} µs with 1 container, ${list30} µs with 31"
awk -v a="$own1" -v b="$own30" 'BEGIN {
  printf "codeb own share (each apply'"'"'s wall time minus its own list call, median): 1 project alone %d µs, 30 projects %d µs: ratio %.2f (target <= 1.5)\n", a, b, b/a}'
for i in $(seq 1 30); do CODEB_STATE_DIR="$WORK/state30" "$CODEB" delete project "noop30-$i" >/dev/null; done
CODEB_STATE_DIR="$WORK/state1" "$CODEB" delete project noop1-1 >/dev/null

if [[ -n ${CODEB_BEFORE-} ]]; then
  # set_with BIN STATE ENV: the 30-project set, applied by BIN until converged.
  set_with() {
    local bin=$1 state=$2 env=$3 dir="$WORK/before-$3" i
    mkdir -p "$dir"
    { host_yaml; for i in $(seq 1 30); do project_yaml "noopb-$i" localhost/codeb-test-app:v1 | sed "s/^    production:/    $env:/"; done; } >"$dir/all.yaml"
    CODEB_STATE_DIR="$state" "$bin" apply -f "$dir" >/dev/null
    CODEB_STATE_DIR="$state" "$bin" apply -f "$dir" | grep -q "nothing to do" || { echo "$bin did not converge" >&2; exit 1; }
  }
  time_with() { # BIN STATE ENV: one no-op apply, µs
    local t0; t0=$(now_ns)
    CODEB_STATE_DIR="$2" "$1" apply -f "$WORK/before-$3" >/dev/null
    echo $((($(now_ns) - t0) / 1000))
  }
  measure() { # BIN STATE ENV: median of RUNS no-op applies, then the set deleted
    set_with "$@"
    local m; m=$(for i in $(seq 1 "$RUNS"); do time_with "$@"; done | median)
    for i in $(seq 1 30); do CODEB_STATE_DIR="$2" "$1" delete project "noopb-$i" >/dev/null; done
    echo "$m"
  }
  # Twice each, alternating, so that neither build has the machine's better minutes.
  before1=$(measure "$CODEB_BEFORE" "$WORK/state-before" staging)
  after1=$(measure "$CODEB" "$WORK/state-after" staging)
  before2=$(measure "$CODEB_BEFORE" "$WORK/state-before" staging)
  after2=$(measure "$CODEB" "$WORK/state-after" staging)
  before=$(printf '%s\n%s\n' "$before1" "$before2" | median)
  after=$(printf '%s\n%s\n' "$after1" "$after2" | median)
  echo "no-op apply, 30 projects: before ($("$CODEB_BEFORE" version 2>/dev/null | head -n 1)) ${before} µs ($before1, $before2), this build ${after} µs ($after1, $after2)"
  awk -v a="$before" -v b="$after" 'BEGIN {printf "ratio after/before: %.2f\n", b/a}'
fi
