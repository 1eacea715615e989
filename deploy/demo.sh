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
    -e "s#http://127.0.0.1:18081#$CODEB_TEST_PDNS_API#" "$f" >"$rendered/$(basename "$f")"
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
    host = p["url"].split("://", 1)[1]
    print(f"  curl -H \"Host: {host}\" http://{http}/")
' "$CODEB_TEST_HTTP"
echo
echo "Names resolve through the stack's PowerDNS:"
echo "  dig @${CODEB_TEST_PDNS_DNS%:*} -p ${CODEB_TEST_PDNS_DNS##*:} +short hello.codeb.test"
echo
echo "State: CODEB_STATE_DIR=$CODEB_STATE_DIR $codeb get slots"
