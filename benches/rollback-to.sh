#!/usr/bin/env bash
# `codeb rollback --to N` beside an ordinary deploy of the same image: from the command's start to
# the first answer of that image through Caddy. Each round deploys v2 and v3 (untimed), times
# `codeb deploy --image v1` (into the idle slot, replacing v2's grace container), deploys v2 and v3
# again so that the release just timed is in no slot, then times `codeb rollback --to` that
# release (the same rollout: the idle slot, v2's grace container replaced). Automatic promotion,
# no stored env (nothing to restore), the CLI without a daemon.
source "$(dirname "$0")/lib.sh"
ROUNDS=${ROUNDS:-10}
name=rollbackbench
host="$name.codeb.test"
dir="$WORK/m"
mkdir -p "$dir"
{ host_yaml; project_yaml "$name" localhost/codeb-test-app:v1; } >"$dir/all.yaml"
"$CODEB" apply -f "$dir" >/dev/null

deploy() { "$CODEB" deploy "$name" --image "localhost/codeb-test-app:$1" >/dev/null; }
# until_serving VERSION T0: ms from T0 until Caddy answers VERSION for the project.
until_serving() {
  until [[ $(get "$host" /) == "$1" ]]; do sleep 0.01; done
  ms_since "$2"
}
newest() { "$CODEB" releases "$name" -o json | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["number"])'; }

deploys=()
rollbacks=()
for _ in $(seq 1 "$ROUNDS"); do
  deploy v2
  deploy v3
  t0=$(now_ns)
  deploy v1
  deploys+=("$(until_serving v1 "$t0")")
  n=$(newest)
  deploy v2
  deploy v3
  t0=$(now_ns)
  "$CODEB" rollback "$name" --to "$n" >/dev/null
  rollbacks+=("$(until_serving v1 "$t0")")
done
echo "rounds: $ROUNDS (releases made: $(newest))"
echo "deploy --image v1 to serving, ms: median $(printf '%s\n' "${deploys[@]}" | median), all: ${deploys[*]}"
echo "rollback --to N (v1) to serving, ms: median $(printf '%s\n' "${rollbacks[@]}" | median), all: ${rollbacks[*]}"
cleanup_projects "$name"
