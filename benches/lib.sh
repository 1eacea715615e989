# Shared by the benchmark scripts: bring the local stack up, build codeb (release), and helpers to
# write manifests and time commands. Source it; it sets CODEB, STATE, WORK and the stack's env.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
if ! command -v cargo >/dev/null && [[ -x ${CARGO_HOME:-$HOME/.cargo}/bin/cargo ]]; then
  export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
fi
# CODEB_BENCH_STACK_UP=0: the stack is up already (another checkout's, named by CODEB_STACK_DIR):
# only its endpoints are read, so that no second stack is started beside it.
if [[ ${CODEB_BENCH_STACK_UP:-1} != 0 ]]; then
  ./deploy/stack.sh up >&2
  ./deploy/stack.sh images >&2
fi
stack_env=$(./deploy/stack.sh env)
eval "$stack_env"
# CODEB_BIN=/path/to/codeb: time that build instead of building this checkout (and, in
# switch.sh, the poller already built beside it).
if [[ -n ${CODEB_BIN-} ]]; then
  CODEB=$CODEB_BIN
else
  cargo build --release --quiet
  CODEB="${CARGO_TARGET_DIR:-$ROOT/target}/release/codeb"
fi
WORK=$(mktemp -d /tmp/codeb-bench.XXXXXX)
STATE="$WORK/state"
export CODEB_STATE_DIR="$STATE"
trap 'rm -rf "$WORK"' EXIT

# host_yaml: the Host and Zone documents for the local stack.
host_yaml() {
  cat <<YAML
apiVersion: codeb.kr/v1
kind: Host
metadata: {name: local}
spec:
  address: 127.0.0.1
  podman: $CODEB_TEST_PODMAN
  caddy: {admin: "$CODEB_TEST_CADDY_ADMIN", listen: ["$CODEB_TEST_HTTP"], tls: "off"}
---
apiVersion: codeb.kr/v1
kind: Zone
metadata: {name: codeb.test}
YAML
}

# project_yaml NAME IMAGE [PROMOTION]: one production environment.
project_yaml() {
  cat <<YAML
---
apiVersion: codeb.kr/v1
kind: Project
metadata: {name: $1}
spec:
  host: local
  zone: codeb.test
  environments:
    production:
      image: $2
      port: 8080
      healthCheck: {path: /health, timeout: 30s}
      promotion: ${3:-auto}
YAML
}

now_ns() { date +%s%N; }
ms_since() { echo $((($(now_ns) - $1) / 1000000)); }

# median of numbers on stdin
median() { sort -n | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }

# get HOST PATH: body of a GET through codeb's Caddy server.
get() { curl -s --max-time 5 -H "Host: $1" "http://$CODEB_TEST_HTTP$2"; }

cleanup_projects() {
  for p in "$@"; do "$CODEB" delete project "$p" >/dev/null 2>&1 || true; done
}
