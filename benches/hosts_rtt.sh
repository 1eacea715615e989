#!/usr/bin/env bash
# Round trips into a simulated host of deploy/hosts.sh over SSH (issue #18's transport choice,
# docs/multi-host.md): what one request costs over a new ssh connection per call, over a kept
# `ssh -L` forward of the host's Podman socket, and over a kept ssh session carrying JSON lines (the
# shape of `codeb agent --stdio`, here with `cat` as the far end, so it measures the transport alone).
#
# Usage: eval "$(deploy/hosts.sh env)"; benches/hosts_rtt.sh [N]   (host N, default 1)
# Prints one line per measurement: name, count, p50 and p95 in ms.
set -euo pipefail
n=${1:-1}
addr_var="CODEB_HOST_${n}_ADDRESS" key_var="CODEB_HOST_${n}_SSH_KEY" kh_var="CODEB_HOST_${n}_KNOWN_HOSTS"
pid_var="CODEB_HOST_${n}_PID"
addr=${!addr_var:?run eval "\$(deploy/hosts.sh env)" first}
ssh_opts=(-F /dev/null -i "${!key_var}" -o "UserKnownHostsFile=${!kh_var}" -o StrictHostKeyChecking=yes
  -o BatchMode=yes -o ServerAliveInterval=1 -o ServerAliveCountMax=3)
work=$(mktemp -d)
trap 'kill "${fwd:-0}" 2>/dev/null || true; rm -rf "$work"' EXIT

stats() { # name: ms values on stdin
  sort -n | awk -v name="$1" '{ v[NR] = $1 } END {
    printf "%-44s n=%-4d p50 %7.2f ms  p95 %7.2f ms\n", name, NR, v[int(NR * 0.5 + 0.5)], v[int(NR * 0.95 + 0.5)] }'
}
ms() { # command...: prints its wall time in ms
  local t0=${EPOCHREALTIME/./}
  "$@" >/dev/null
  echo "$((${EPOCHREALTIME/./} - t0))" | awk '{ printf "%.3f\n", $1 / 1000 }'
}

# A new connection per call (key exchange, auth, session): what `ssh host cmd` per request costs.
for _ in $(seq 10); do ms ssh "${ssh_opts[@]}" "root@$addr" true; done | stats "new ssh connection per call (true)"
for _ in $(seq 10); do
  ms ssh "${ssh_opts[@]}" "root@$addr" curl -s --unix-socket /run/podman/podman.sock http://d/_ping
done | stats "new ssh connection per call (curl _ping)"

# Baseline: the same curl on the host's socket directly (through /proc, the root's view of its /run).
sock="/proc/${!pid_var}/root/run/podman/podman.sock"
for _ in $(seq 50); do ms curl -sf --unix-socket "$sock" http://d/_ping; done | stats "curl _ping on the host's socket (no ssh)"

# A kept forward: each curl opens a new stream (a channel) over the one ssh connection.
ssh "${ssh_opts[@]}" -N -o ExitOnForwardFailure=yes -L "$work/p.sock:/run/podman/podman.sock" "root@$addr" &
fwd=$!
for _ in $(seq 100); do [[ -S $work/p.sock ]] && break; sleep 0.05; done
for _ in $(seq 50); do ms curl -sf --unix-socket "$work/p.sock" http://d/_ping; done | stats "kept ssh -L forward, curl _ping"
for _ in $(seq 20); do ms curl -sf --unix-socket "$work/p.sock" 'http://d/v4.0.0/libpod/containers/json?all=true'; done |
  stats "kept ssh -L forward, containers/json"

# One process, one kept HTTP connection (no curl spawn per call): the request's own round trip,
# on the host's socket directly and through the kept forward.
keepalive_ping() { # socket name
  python3 - "$1" <<'PY' | stats "$2"
import http.client, socket, sys, time
class Conn(http.client.HTTPConnection):
    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(sys.argv[1])
c = Conn("d")
for i in range(220):
    t0 = time.perf_counter()
    c.request("GET", "/_ping")
    r = c.getresponse()
    assert r.read() == b"OK"
    if i >= 20:
        print("%.3f" % ((time.perf_counter() - t0) * 1000))
PY
}
keepalive_ping "$sock" "kept HTTP connection, _ping, no ssh"
keepalive_ping "$work/p.sock" "kept HTTP connection, _ping, kept ssh -L"

# A kept session, one JSON line out and one back per request, from one process (no spawn per call).
python3 - "${ssh_opts[@]}" "root@$addr" <<'PY' | stats "kept ssh session, JSON line echo (cat)"
import subprocess, sys, time
p = subprocess.Popen(["ssh"] + sys.argv[1:] + ["cat"], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
line = b'{"v":1,"id":0,"method":"GET","path":"/_ping"}\n'
for i in range(220):
    t0 = time.perf_counter()
    p.stdin.write(line); p.stdin.flush()
    assert p.stdout.readline() == line
    if i >= 20:  # the first requests include the session's start
        print("%.3f" % ((time.perf_counter() - t0) * 1000))
p.stdin.close(); p.wait()
PY
