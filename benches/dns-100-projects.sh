#!/usr/bin/env bash
# Benchmark: `codeb apply` of 100 projects' DNS records against the real PowerDNS of deploy/stack.sh.
#
# Per run (RUNS, default 5), in a zone of its own seeded with foreign records (A, CNAME, TXT with an
# SPF string, MX, NS):
#   1. first apply: 100 projects = 300 rrsets (hostname + blue/green previews) -> expect 1 PATCH;
#   2. no-op apply: expect 0 PATCH and an unchanged SOA serial;
#   3. drift repair: 10 of codeb's records deleted by hand -> expect 1 PATCH restoring them.
# It reports the wall time of each codeb process, the time of the PATCH request itself (from codeb's
# own debug log), the PATCH count (also from that log) and the serial before/after.
#
# The Host is deliberately unreachable (Podman and Caddy on 127.0.0.1:1): the apply then does DNS
# work only (100 real containers would measure Podman, not DNS), host work is skipped with a note,
# and the exit status is 1 for that reason alone. That DNS goes ahead regardless is itself one of
# the issue's requirements.
#
# Usage: benches/dns-100-projects.sh (lib.sh brings the stack up and builds codeb --release).
# Environment: RUNS (5), PROJECTS (100).
source "$(dirname "$0")/lib.sh"
RUNS=${RUNS:-5}
PROJECTS=${PROJECTS:-100}
API="$CODEB_TEST_PDNS_API/api/v1/servers/localhost"
work=$WORK

pdns() { # method path [body]
  curl -sS --fail-with-body -X "$1" -H "X-API-Key: $PDNS_API_KEY" -H 'Content-Type: application/json' \
    "$API/$2" ${3:+--data "$3"}
}
serial() { pdns GET "zones/$1." | jq .serial; }
now_ms() { echo $(($(now_ns) / 1000000)); }

# Runs codeb with JSON debug logs; prints "wall_ms patches patch_ms".
timed_apply() { # zone dir label
  local start end log=$work/$3.log
  start=$(now_ms)
  "$CODEB" --state-dir "$work/state" -vv --log-format json apply -f "$2" >"$work/$3.out" 2>"$log" || true
  end=$(now_ms)
  jq -r 'select(.fields.message == "powerdns call" and .fields.method == "PATCH")
         | .fields.elapsed_ms' "$log" >"$work/$3.patches"
  printf '%s %s %s\n' "$((end - start))" "$(wc -l <"$work/$3.patches")" \
    "$(awk '{s += $1} END {printf "%.1f", s}' "$work/$3.patches")"
}

manifests() { # zone dir
  mkdir -p "$2"
  {
    cat <<EOF
apiVersion: codeb.kr/v1
kind: Host
metadata: {name: bench}
spec:
  address: 127.0.0.1
  podman: tcp://127.0.0.1:1
  caddy: {admin: "http://127.0.0.1:1", listen: ["127.0.0.1:18999"], tls: "off"}
---
apiVersion: codeb.kr/v1
kind: Zone
metadata: {name: $1}
spec:
  powerdns: {api: "$CODEB_TEST_PDNS_API", apiKeyEnv: PDNS_API_KEY}
EOF
    for i in $(seq 1 "$PROJECTS"); do
      printf -- '---\napiVersion: codeb.kr/v1\nkind: Project\nmetadata: {name: p%s}\n' "$i"
      printf 'spec:\n  host: bench\n  zone: %s\n  environments:\n' "$1"
      printf '    production: {image: localhost/codeb-test-app:v1, port: 8080}\n'
    done
  } >"$2/all.yaml"
}

printf '%s, %s projects (%s rrsets), PowerDNS at %s\n\n' "$("$CODEB" --version)" \
  "$PROJECTS" "$((PROJECTS * 3))" "$CODEB_TEST_PDNS_API"
printf '%-4s %-28s %-18s %-28s %s\n' run "first apply" "no-op apply" "repair 10 deleted" "serial (before, after 1st, after no-op)"
for run in $(seq 1 "$RUNS"); do
  zone="bench-$$-$run.test"
  rm -rf "$work/state"
  pdns POST zones "$(jq -nc --arg z "$zone." '{name: $z, kind: "Native", nameservers: ["ns1." + $z],
    rrsets: [
      {name: ("www." + $z), type: "A", ttl: 3600, records: [{content: "192.0.2.10", disabled: false}]},
      {name: ("alias." + $z), type: "CNAME", ttl: 3600, records: [{content: ("www." + $z), disabled: false}]},
      {name: $z, type: "TXT", ttl: 3600, records: [{content: "\"v=spf1 include:_spf.example.com ~all\"", disabled: false}]},
      {name: $z, type: "MX", ttl: 3600, records: [{content: ("10 mail." + $z), disabled: false}]}]}')" >/dev/null
  foreign_before=$(pdns GET "zones/$zone." | jq -S '[.rrsets[] | select(.type != "SOA" and ([.comments[].account] | index("codeb") | not))] | sort_by(.name, .type)')
  manifests "$zone" "$work/m"

  s0=$(serial "$zone")
  read -r first_ms first_patches first_patch_ms < <(timed_apply "$zone" "$work/m" "first-$run")
  s1=$(serial "$zone")
  owned=$(pdns GET "zones/$zone." | jq '[.rrsets[] | select([.comments[].account] | index("codeb"))] | length')
  [[ $owned == $((PROJECTS * 3)) ]] || { echo "expected $((PROJECTS * 3)) codeb rrsets, found $owned" >&2; exit 1; }
  [[ $(dig @"${CODEB_TEST_PDNS_DNS%:*}" -p "${CODEB_TEST_PDNS_DNS##*:}" +short "green.p$PROJECTS.$zone" A) == 127.0.0.1 ]] ||
    { echo "green.p$PROJECTS.$zone does not resolve" >&2; exit 1; }

  read -r noop_ms noop_patches _ < <(timed_apply "$zone" "$work/m" "noop-$run")
  s2=$(serial "$zone")

  deletes=$(jq -nc --arg z "$zone" '[range(1; 11) | {name: ("p\(.).\($z)."), type: "A", changetype: "DELETE"}] | {rrsets: .}')
  pdns PATCH "zones/$zone." "$deletes" >/dev/null
  read -r fix_ms fix_patches fix_patch_ms < <(timed_apply "$zone" "$work/m" "fix-$run")

  foreign_after=$(pdns GET "zones/$zone." | jq -S '[.rrsets[] | select(.type != "SOA" and ([.comments[].account] | index("codeb") | not))] | sort_by(.name, .type)')
  [[ $foreign_before == "$foreign_after" ]] || { echo "foreign rrsets changed!" >&2; exit 1; }
  pdns DELETE "zones/$zone." >/dev/null

  printf '%-4s %-28s %-18s %-28s %s\n' "$run" \
    "${first_ms} ms, ${first_patches} PATCH (${first_patch_ms} ms)" \
    "${noop_ms} ms, ${noop_patches} PATCH" \
    "${fix_ms} ms, ${fix_patches} PATCH (${fix_patch_ms} ms)" \
    "$s0, $s1, $s2$([[ $s1 == "$s2" ]] && echo ' (unchanged by the no-op)')"
  echo "$first_ms" >>"$work/first.ms"
  echo "$first_patch_ms" >>"$work/first-patch.ms"
  echo "$noop_ms" >>"$work/noop.ms"
  echo "$fix_ms" >>"$work/fix.ms"
  [[ $first_patches == 1 && $noop_patches == 0 && $fix_patches == 1 && $s1 == "$s2" ]] ||
    { echo "unexpected PATCH count or serial" >&2; exit 1; }
done
printf '\nmedian of %s runs: first apply %s ms (its PATCH %s ms), no-op apply %s ms, repair %s ms\n' "$RUNS" \
  "$(median <"$work/first.ms")" "$(median <"$work/first-patch.ms")" "$(median <"$work/noop.ms")" \
  "$(median <"$work/fix.ms")"
printf 'PATCH per apply: 1 (first), 0 (no-op, SOA serial unchanged), 1 (repair)\n'
printf 'foreign rrsets (A, CNAME, TXT/SPF, MX, NS) byte-for-byte unchanged in every run\n'
