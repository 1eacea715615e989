#!/usr/bin/env bash
# Time from `codeb env set` to the new release serving through Caddy, beside a plain image change
# (`codeb deploy --image`), on one project with `promotion: auto`.
#
# Usage: benches/env-rollout.sh [RUNS]   (default 10; brings the local stack up through benches/lib.sh;
#        CODEB_BENCH_STACK_UP=0 uses the stack CODEB_STACK_DIR names as it runs)
#
# Each run, alternately:
#   env    `codeb env set P N=i`: a new env version, a new release in the idle slot, health-gated,
#          promoted. Timed from the command's start until a fresh GET through Caddy answers 200 after
#          the command returned (the command returns once traffic moved); then checked inside the
#          serving container (`podman exec … env`, not timed) that it has N=i.
#   image  `codeb deploy P --image v2|v1`: the same path for a new image. Timed from the command's
#          start until a fresh GET through Caddy answers the new version (polled).
# Prints the median, min and max of each (ms) and of the command alone.
source "$(dirname "$0")/lib.sh"

RUNS=${1:-10}
[[ $RUNS =~ ^[0-9]+$ ]] || {
  echo "usage: benches/env-rollout.sh [RUNS]" >&2
  exit 2
}
P="envbench-$$"
HOST="$P.codeb.test"
trap 'cleanup_projects "$P"; rm -rf "$WORK"' EXIT

{
  host_yaml
  project_yaml "$P" localhost/codeb-test-app:v1 auto
} >"$WORK/m.yaml"
"$CODEB" apply -f "$WORK/m.yaml" >/dev/null
"$CODEB" env set "$P" N=0 >/dev/null

# wait_body WANT: polls fresh GETs until the body is WANT (at most 10 s).
wait_body() {
  local i
  for i in $(seq 1 5000); do
    [[ $(get "$HOST" /) == "$1" ]] && return 0
    sleep 0.002
  done
  echo "timeout waiting for $1" >&2
  return 1
}

# serving_env NAME: NAME's value inside the container that serves the hostname.
serving_env() {
  local c
  c=$("$CODEB" get slots -o json | python3 -c "import json,sys; print(next(s['container'] for s in json.load(sys.stdin) if s['project']=='$P' and s['state']=='active'))")
  podman exec "$c" /bin/busybox env | sed -n "s/^$1=//p"
}

: >"$WORK/env.ms"
: >"$WORK/env-cmd.ms"
: >"$WORK/image.ms"
: >"$WORK/image-cmd.ms"
image=v1
for i in $(seq 1 "$RUNS"); do
  t=$(now_ns)
  "$CODEB" env set "$P" "N=$i" >/dev/null
  ms_since "$t" >>"$WORK/env-cmd.ms"
  wait_body "$image"
  ms_since "$t" >>"$WORK/env.ms"
  got=$(serving_env N)
  [[ $got == "$i" ]] || {
    echo "run $i: the serving container has N=$got" >&2
    exit 1
  }

  image=$([[ $image == v1 ]] && echo v2 || echo v1)
  t=$(now_ns)
  "$CODEB" deploy "$P" --image "localhost/codeb-test-app:$image" >/dev/null
  ms_since "$t" >>"$WORK/image-cmd.ms"
  wait_body "$image"
  ms_since "$t" >>"$WORK/image.ms"
done

stats() { sort -n "$1" | awk '{a[NR]=$1} END {printf "median %s ms, min %s, max %s", (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2), a[1], a[NR]}'; }
echo "runs: $RUNS (commit $(git -C "$ROOT" rev-parse --short HEAD), $(date -u +%F))"
echo "env set → serving:      $(stats "$WORK/env.ms")   (command alone: $(stats "$WORK/env-cmd.ms"))"
echo "image change → serving: $(stats "$WORK/image.ms")   (command alone: $(stats "$WORK/image-cmd.ms"))"
