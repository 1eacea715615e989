#!/usr/bin/env bash
# The README's first command: bring the local stack up (deploy/stack.sh), build codeb, apply the
# example manifests (manifests/examples/) to it, and print the URLs to try with curl.
#
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v cargo >/dev/null && [[ -x ${CARGO_HOME:-$HOME/.cargo}/bin/cargo ]]; then
  export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
fi

./deploy/stack.sh up
./deploy/stack.sh images
stack_env=$(./deploy/stack.sh env)
eval "$stack_env"

cargo build --quiet
codeb=target/debug/codeb
export CODEB_STATE_DIR="$CODEB_STACK_DIR/codeb-state"

# The examples' Host carries placeholder endpoints (manifests take no variables); render a copy with
# this stack's real ones.
rendered="$CODEB_STACK_DIR/examples"
rm -rf "$rendered" && mkdir -p "$rendered"
for f in manifests/examples/*.yaml; do
  sed -e "s#unix:///run/codeb-stack/podman.sock#$CODEB_TEST_PODMAN#" \
    -e "s#http://127.0.0.1:12019#$CODEB_TEST_CADDY_ADMIN#" \
    -e "s#127.0.0.1:18080#$CODEB_TEST_HTTP#" \
    -e "s#http://127.0.0.1:18081#$CODEB_TEST_PDNS_API#" \
    -e "s#postgres://codeb_admin@127.0.0.1:15432/postgres#$CODEB_TEST_PG_URL#" \
    -e "s#redis://127.0.0.1:16379#$CODEB_TEST_REDIS_URL#" \
    -e "s#10.89.0.1:15432#$CODEB_TEST_PG_APP_HOST#" \
    -e "s#10.89.0.1:16379#$CODEB_TEST_REDIS_APP_HOST#" "$f" >"$rendered/$(basename "$f")"
done

"$codeb" apply -f "$rendered"
echo
"$codeb" get projects
echo
echo "Try (Caddy listens on $CODEB_TEST_HTTP):"
"$codeb" get projects -o json | python3 -c '
import json, sys
http = sys.argv[1]
for p in json.load(sys.stdin):
    host = p["url"].split("://", 1)[1].split(":")[0]
    print(f"  curl -H \"Host: {host}\" http://{http}/")
' "$CODEB_TEST_HTTP"
echo "notes has a database and a cache of its own (credentials in its stored env, never printed):"
echo "  curl -H \"Host: notes.codeb.test\" http://$CODEB_TEST_HTTP/cgi-bin/db      # a row count"
echo "  curl -H \"Host: notes.codeb.test\" http://$CODEB_TEST_HTTP/cgi-bin/cache   # a hit count"
echo
echo "Names resolve through the stack's PowerDNS:"
echo "  dig @${CODEB_TEST_PDNS_DNS%:*} -p ${CODEB_TEST_PDNS_DNS##*:} +short hello.codeb.test"
echo
echo "State: CODEB_STATE_DIR=$CODEB_STATE_DIR $codeb get slots"

# The control plane: codeb serve keeps the examples converged and answers HTTP with API keys.
listen=127.0.0.1:19100
pkill -TERM -f "codeb serve -f $rendered" 2>/dev/null || true
setsid "$codeb" serve -f "$rendered" --listen "$listen" >"$CODEB_STACK_DIR/serve.log" 2>&1 </dev/null &
for _ in $(seq 100); do
  curl -sf "http://$listen/health" >/dev/null && break
  sleep 0.1
done
curl -sf "http://$listen/health" >/dev/null || {
  echo "codeb serve did not answer on $listen; its log:" >&2
  tail -20 "$CODEB_STACK_DIR/serve.log" >&2
  exit 1
}
key=$("$codeb" key create --role developer --name demo --project shop --expires 1d | head -n 1)
echo
echo "codeb serve answers on http://$listen (log: $CODEB_STACK_DIR/serve.log); a developer key for shop:"
echo "  KEY=$key"
echo "Deploy v2 of shop through the API, then promote it:"
echo "  curl -s -H \"X-API-Key: \$KEY\" -d '{\"tool\":\"deploy\",\"project\":\"shop\",\"image\":\"localhost/codeb-test-app:v2\"}' http://$listen/api/tool"
echo "  curl -s -H \"X-API-Key: \$KEY\" -X POST http://$listen/api/v1/projects/shop/environments/production/promote"
echo "  curl -s -H \"Host: shop.codeb.test\" http://$CODEB_TEST_HTTP/"
echo "Stop it with: pkill -TERM -f 'codeb serve -f $rendered'"
