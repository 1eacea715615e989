#!/usr/bin/env bash
# Databases and caches (docs/data.md). Two numbers:
# 1. A no-op apply of 30 projects that each have a database and a cache, against 30 without (the
#    same image, the same host): the data pass adds one catalog read per server and one ACL GETUSER
#    per cache, whatever the number of projects' containers. Median of RUNS each, alternating.
# 2. Provisioning: the apply of one new project with a database and a cache, against the apply of
#    one new project without (median of RUNS each); the difference is the provisioning's cost.
source "$(dirname "$0")/lib.sh"
RUNS=${RUNS:-9}

data_host_yaml() {
  host_yaml | sed "/^  caddy:/a\\
  postgres: {url: \"$CODEB_TEST_PG_URL\", passwordEnv: PG_ADMIN_PASSWORD, appHost: \"$CODEB_TEST_PG_APP_HOST\"}\\
  redis: {url: \"$CODEB_TEST_REDIS_URL\", passwordEnv: REDIS_ADMIN_PASSWORD, appHost: \"$CODEB_TEST_REDIS_APP_HOST\"}"
}
# data_project NAME: one project with a database and a cache, dropped with it.
data_project() {
  project_yaml "$1" localhost/codeb-test-app:v1
  printf '      database: postgres\n      cache: redis\n      onDelete: drop\n'
}
apply_us() { # STATE DIR: one apply, in µs
  local t0; t0=$(now_ns)
  CODEB_STATE_DIR="$1" "$CODEB" apply -f "$2" >/dev/null
  echo $((($(now_ns) - t0) / 1000))
}

mkdir -p "$WORK/plain" "$WORK/data"
{ data_host_yaml; for i in $(seq 1 30); do project_yaml "bplain-$i" localhost/codeb-test-app:v1; done; } >"$WORK/plain/all.yaml"
{ data_host_yaml; for i in $(seq 1 30); do data_project "bdata-$i"; done; } >"$WORK/data/all.yaml"
for set in plain data; do
  CODEB_STATE_DIR="$WORK/s-$set" "$CODEB" apply -f "$WORK/$set" >/dev/null
  CODEB_STATE_DIR="$WORK/s-$set" "$CODEB" apply -f "$WORK/$set" | grep -q "nothing to do" ||
    { echo "set $set did not converge" >&2; exit 1; }
done
plain=""; data=""
for i in $(seq 1 "$RUNS"); do
  plain+="$(apply_us "$WORK/s-plain" "$WORK/plain") "
  data+="$(apply_us "$WORK/s-data" "$WORK/data") "
done
plain=$(tr ' ' '\n' <<<"$plain" | grep . | median)
data=$(tr ' ' '\n' <<<"$data" | grep . | median)

# Provisioning: a new project each time, deleted after (the data one with onDelete: drop).
new_plain=""; new_data=""
for i in $(seq 1 "$RUNS"); do
  mkdir -p "$WORK/np$i" "$WORK/nd$i"
  { data_host_yaml; project_yaml "bnewp-$i" localhost/codeb-test-app:v1; } >"$WORK/np$i/all.yaml"
  { data_host_yaml; data_project "bnewd-$i"; } >"$WORK/nd$i/all.yaml"
  new_plain+="$(apply_us "$WORK/s-np" "$WORK/np$i") "
  new_data+="$(apply_us "$WORK/s-nd" "$WORK/nd$i") "
  CODEB_STATE_DIR="$WORK/s-np" "$CODEB" delete project "bnewp-$i" >/dev/null
  CODEB_STATE_DIR="$WORK/s-nd" "$CODEB" delete project "bnewd-$i" >/dev/null
done
new_plain=$(tr ' ' '\n' <<<"$new_plain" | grep . | median)
new_data=$(tr ' ' '\n' <<<"$new_data" | grep . | median)

echo "no-op apply, 30 projects without data:            ${plain} µs"
echo "no-op apply, 30 projects with a database and cache: ${data} µs"
awk -v a="$plain" -v b="$data" 'BEGIN {printf "ratio with/without: %.2f\n", b/a}'
echo "apply of a new project without data:   ${new_plain} µs"
echo "apply of a new project with db + cache: ${new_data} µs"
awk -v a="$new_plain" -v b="$new_data" 'BEGIN {printf "provisioning (the difference): %.1f ms\n", (b-a)/1000}'
for i in $(seq 1 30); do
  CODEB_STATE_DIR="$WORK/s-plain" "$CODEB" delete project "bplain-$i" >/dev/null
  CODEB_STATE_DIR="$WORK/s-data" "$CODEB" delete project "bdata-$i" >/dev/null
done
