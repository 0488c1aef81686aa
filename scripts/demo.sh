#!/usr/bin/env bash
# The README's demo: build the lab with a node proxy on each node, send
# traffic through the mesh, show what the proxies saw, tear it down.
# Run as root from the repository root after `make build`.
set -euo pipefail
BIN=${BIN:-./bin}
STATE=${MESHLAB_STATE:-/run/meshlab}
export MESHLAB_STATE=$STATE

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
ip_of() { "$BIN/meshlab" status | awk -v p="$1" '$1==p {split($4, a, ","); print a[1]}'; }
node_ns() { "$BIN/meshlab" status -o json | grep -o "\"/run/netns/ml-[0-9a-f]*-$1\"" | tr -d '"' | head -n 1; }
on_node() { local ns; ns=$(node_ns "$1"); shift; nsenter --net="$ns" "$@"; }

step "meshlab up: 2 nodes, the controller (own netns on the underlay), a node proxy on each fed by it, 4 pods in the mesh (namespace demo), 2 outside (legacy)"
"$BIN/meshlab" up -f examples/lab/demo.yaml
# Only now is the lab ours to remove: an `up` that found a lab already
# running must not tear that lab down.
trap '"$BIN/meshlab" down' EXIT

OUT1=$(ip_of outside-1)
SRV2=$(ip_of server-2)
"$BIN/meshlab" exec outside-1 -- "$BIN/ambit-echo" serve -name outside-1 :8080 >/dev/null &
"$BIN/meshlab" exec server-2 -- "$BIN/ambit-echo" serve -name server-2 :8080 >/dev/null &
sleep 0.5

step "client-1 (node-1) -> server-2 (node-2, $SRV2:8080): through the mTLS tunnel; server-2 sees client-1's own address"
"$BIN/meshlab" exec client-1 -- "$BIN/ambit-echo" dial "$SRV2:8080"

step "outside-2 -> server-2: plaintext from outside the mesh; namespace demo is permissive, so it is accepted and reported"
"$BIN/meshlab" exec outside-2 -- "$BIN/ambit-echo" dial "$SRV2:8080"

step "outside-2 -> outside-1: neither is in the mesh, the proxies stay out of the way"
"$BIN/meshlab" exec outside-2 -- "$BIN/ambit-echo" dial "$OUT1:8080"

step "a DENY policy: no client of namespace demo may reach the servers"
cat > "$STATE/mesh/deny.yaml" <<'YAML'
apiVersion: ambit.dev/v1alpha1
kind: AccessPolicy
metadata: {name: no-clients, namespace: demo}
spec:
  selector: {matchLabels: {app: server}}
  action: DENY
  rules:
  - from: [{serviceAccounts: [demo/client]}]
YAML
sleep 1 # the proxies reload their configuration within a second
"$BIN/meshlab" exec client-1 -- "$BIN/ambit-echo" dial "$SRV2:8080" || echo "(refused, as the policy says)"
rm "$STATE/mesh/deny.yaml"

step "node-2's proxy: nodeproxy debug certs / connections are node-local (admin on 127.0.0.1:15000)"
on_node node-2 "$BIN/nodeproxy" debug certs
step "node-2's access log (last lines)"
tail -n 4 "$STATE/logs/nodeproxy-node-2.log"
step "meshlab down: remove everything the lab made"
