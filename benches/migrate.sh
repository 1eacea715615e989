#!/usr/bin/env bash
# How long a migration takes (issue #18): a project on host 1 of deploy/hosts.sh (A) moved to host 2
# (B) by changing `host:` and applying until converged, with a managed Zone in the stack's PowerDNS,
# then rolled back with `codeb rollback` during the grace period. Per run: the apply's wall time, and
# the time in each phase, from the outcomes of the migration's steps in the journal (`codeb describe
# -o json`'s history, unix ms):
#   deploying   the start recorded → A's route forwards to B (B deployed, health-gated, its routes)
#   forwarding  → phase dns recorded
#   dns         → the grace period begun (the records' PATCH naming B, then A's container stopped)
#   total       `codeb apply` started → the grace period begun (all traffic on B or forwarded)
#   rollback    `codeb rollback`'s wall time (A's kept container started and health-gated, its route
#               local, B forwarding, DNS back to A, B's grace begun)
#
# Usage: eval "$(deploy/stack.sh env)"; eval "$(deploy/hosts.sh env)"; benches/migrate.sh [RUNS] [CODEB]
#   RUNS   default 5; CODEB   the binary (default target/debug/codeb; the agent on the hosts is the same
#          file, they share the machine's filesystem). BENCH_VERBOSE=1 prints each run's steps with
#          their times since the apply started (stderr).
# Prints one line per run and the medians. Leaves nothing behind (projects deleted, zone removed).
set -euo pipefail
runs=${1:-5}
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
codeb=$(realpath "${2:-${CARGO_TARGET_DIR:-$root/target}/debug/codeb}")
: "${CODEB_HOST_1_ADDRESS:?run eval \"\$(deploy/hosts.sh env)\" first}"
: "${CODEB_TEST_PDNS_API:?run eval \"\$(deploy/stack.sh env)\" first}"
work=$(mktemp -d)
zone="mgbench-$$.test"
pdns() { curl -sf -H "X-API-Key: $PDNS_API_KEY" -H 'Content-Type: application/json' "$@"; }
cleanup() {
  for p in "${projects[@]-}"; do
    [[ -n $p ]] && "$codeb" --state-dir "$work/state" delete project "$p" --progress none >"$work/del" 2>&1 || { echo "cleanup: delete project $p failed:" >&2; cat "$work/del" >&2; }
  done
  pdns -X DELETE "$CODEB_TEST_PDNS_API/api/v1/servers/localhost/zones/$zone." >/dev/null 2>&1 || true
  rm -rf "$work"
}
projects=()
trap cleanup EXIT
mkdir -m 700 "$work/state"
printf 'endpoints:\n  ssh: ["root@%s", "root@%s"]\n' "$CODEB_HOST_1_ADDRESS" "$CODEB_HOST_2_ADDRESS" >"$work/state/config.yaml"
chmod 600 "$work/state/config.yaml"
pdns -X POST "$CODEB_TEST_PDNS_API/api/v1/servers/localhost/zones" \
  -d "{\"name\":\"$zone.\",\"kind\":\"Native\",\"nameservers\":[\"ns1.$zone.\"]}" >/dev/null

host_doc() { # name n
  local a="CODEB_HOST_$2_ADDRESS" s="CODEB_HOST_$2_PODMAN_SOCK" k="CODEB_HOST_$2_SSH_KEY"
  local kh="CODEB_HOST_$2_KNOWN_HOSTS" ad="CODEB_HOST_$2_CADDY_ADMIN"
  cat <<EOF
apiVersion: codeb.kr/v1
kind: Host
metadata: {name: $1}
spec:
  address: "${!a}"
  podman: unix://${!s}
  ssh: {target: "root@${!a}", identityFile: ${!k}, knownHosts: ${!kh}, agent: $codeb}
  caddy: {admin: "${!ad}", listen: ["${!a}:8088"], tls: off, accessLog: false}
  publishAddress: "${!a}"
---
EOF
}
manifests() { # project host
  mkdir -p "$work/m"
  {
    host_doc a 1
    host_doc b 2
    cat <<EOF
apiVersion: codeb.kr/v1
kind: Zone
metadata: {name: $zone}
spec: {powerdns: {api: "$CODEB_TEST_PDNS_API", apiKeyEnv: PDNS_API_KEY}, ttl: 300}
---
apiVersion: codeb.kr/v1
kind: Project
metadata: {name: $1}
spec:
  host: $2
  zone: $zone
  environments:
    production:
      image: localhost/codeb-test-app:v1
      port: 8080
      healthCheck: {path: /health, timeout: 15s}
      migrationGrace: 1h
EOF
  } >"$work/m/all.yaml"
}
converge() { # until "nothing to do"; prints nothing
  for _ in 1 2 3 4 5 6 7 8; do
    "$codeb" --state-dir "$work/state" apply -f "$work/m" --progress none >"$work/out" 2>&1 ||
      { cat "$work/out" >&2; exit 1; }
    grep -q "nothing to do" "$work/out" && return 0
  done
  echo "not converged" >&2
  exit 1
}
now_ms() { echo $((${EPOCHREALTIME/./} / 1000)); }

printf '%-6s %10s %10s %10s %10s %10s %10s\n' run apply_ms deploying forwarding dns total rollback
# Not in a pipeline: `projects` must be this shell's, for the cleanup.
for i in $(seq "$runs"); do
  p="mgb$$-$i"
  projects+=("$p")
  manifests "$p" a
  converge
  manifests "$p" b
  t0=$(now_ms)
  converge
  t1=$(now_ms)
  "$codeb" --state-dir "$work/state" describe "$p" -o json >"$work/d.json"
  r0=$(now_ms)
  "$codeb" --state-dir "$work/state" rollback "$p" --progress none >"$work/rb" 2>&1 || { cat "$work/rb" >&2; exit 1; }
  r1=$(now_ms)
  python3 - "$work/d.json" "$t0" "$t1" "$i" "$((r1 - r0))" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
t0, t1, run, rollback = int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5]
hist = [h for h in d.get("history", []) if h["ok"]]
def at(prefix):
    times = [h["atMs"] for h in hist if h["step"].startswith(prefix) or prefix in h["step"]]
    if not times:
        sys.exit(f"no step {prefix!r} in the history: {[h['step'] for h in hist]}")
    return min(times)
if __import__("os").environ.get("BENCH_VERBOSE"):
    for h in hist:
        if h["atMs"] >= t0:
            print(f"  +{h['atMs'] - t0:>6} ms  {h['step'][:110]}", file=sys.stderr)
begin = at("migrate from host a to host b")
forward = at("migration: forward")
dns = at("migration: record phase dns")
grace = at("migration: begin the grace period")
print(f"{run:<6} {t1 - t0:>10} {forward - begin:>10} {dns - forward:>10} {grace - dns:>10} {grace - t0:>10} {rollback:>10}")
PY
done >"$work/rows"
cat "$work/rows"
python3 - "$work/rows" <<'PY'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1]) if l.strip()]
cols = list(zip(*[[int(x) for x in r[1:]] for r in rows]))
print(f"{'median':<6}" + "".join(f" {int(statistics.median(c)):>10}" for c in cols))
PY
echo "load average: $(cut -d' ' -f1-3 /proc/loadavg)"
