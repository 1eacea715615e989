#!/usr/bin/env bash
# Container start time with codeb's confinement against without it: `podman run -d` of the stack's
# busybox httpd image until it answers HTTP 200, with the HostConfig codeb's Podman adapter sends
# (CapDrop ALL + the kept capabilities, no-new-privileges, memory = memory-swap 1 GiB, 1 CPU, 512
# pids: codeb's defaults) and with Podman's defaults, alternating, RUNS each; prints the medians.
# Needs the stack's environment (`eval "$(deploy/stack.sh env)"`) and its test images; touches
# only its own containers (named codeb-bench-confinement-*).
set -euo pipefail
: "${CONTAINERS_CONF:?load the stack env first: eval \"\$(deploy/stack.sh env)\"}"
RUNS=${RUNS:-10}
PORT=${PORT:-5496}
IMAGE=localhost/codeb-test-app:v1
CONFINED=(--cap-drop ALL
  --cap-add CHOWN,DAC_OVERRIDE,FOWNER,KILL,NET_BIND_SERVICE,SETGID,SETUID
  --security-opt no-new-privileges --memory 1g --memory-swap 1g --cpus 1 --pids-limit 512)

now_ns() { date +%s%N; }
median() { sort -n | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }

start() { # MODE: ms from `podman run` until the app answers 200
  local mode=$1 name="codeb-bench-confinement-$1-$$" t0 flags=()
  [[ $mode == confined ]] && flags=("${CONFINED[@]}")
  t0=$(now_ns)
  podman run -d --init --name "$name" -p "127.0.0.1:$PORT:8080" "${flags[@]}" "$IMAGE" >/dev/null
  until [[ $(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$PORT/health") == 200 ]]; do
    sleep 0.005
  done
  echo $((($(now_ns) - t0) / 1000000))
  podman rm -f "$name" >/dev/null
}

plain=() confined=()
for _ in $(seq 1 "$RUNS"); do
  plain+=("$(start plain)")
  confined+=("$(start confined)")
done
p=$(printf '%s\n' "${plain[@]}" | median)
c=$(printf '%s\n' "${confined[@]}" | median)
echo "podman defaults: ${plain[*]} ms (median $p)"
echo "codeb confined:  ${confined[*]} ms (median $c)"
awk -v p="$p" -v c="$c" 'BEGIN {printf "ratio confined/defaults: %.2f\n", c / p}'
