#!/usr/bin/env bash
# The README's demo: build the lab, show what capture does, tear it down.
# Run as root from the repository root after `make build`.
set -euo pipefail
BIN=${BIN:-./bin}
STATE=${MESHLAB_STATE:-/run/meshlab}
export MESHLAB_STATE=$STATE

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
ip_of() { "$BIN/meshlab" status | awk -v p="$1" '$1==p {split($4, a, ","); print a[1]}'; }

step "meshlab up: 2 nodes, 4 pods enrolled in namespace demo, 2 pods outside the mesh"
"$BIN/meshlab" up -f examples/lab/demo.yaml
# Only now is the lab ours to remove: an `up` that found a lab already
# running must not tear that lab down.
trap '"$BIN/meshlab" down' EXIT

step "what capture attached (nodeproxy capture list)"
"$BIN/nodeproxy" capture list --pin-path "$STATE/bpffs/ambit"

OUT1=$(ip_of outside-1)
SRV2=$(ip_of server-2)
"$BIN/meshlab" exec outside-1 -- "$BIN/ambit-echo" serve -name outside-1 :8080 >/dev/null &
"$BIN/meshlab" exec server-2 -- "$BIN/ambit-echo" serve -name server-2 :8080 >/dev/null &
sleep 0.5

step "outside-2 -> outside-1 ($OUT1:8080): neither enrolled, traffic flows across nodes"
"$BIN/meshlab" exec outside-2 -- "$BIN/ambit-echo" dial "$OUT1:8080"

step "client-1 -> outside-1 ($OUT1:8080): client-1 is enrolled, capture sends it to the node proxy's 15001"
echo "(no node proxy runs yet, so capture fails closed: refused, never plaintext)"
"$BIN/meshlab" exec client-1 -- "$BIN/ambit-echo" dial "$OUT1:8080" || true

step "outside-2 -> server-2 ($SRV2:8080): server-2 is enrolled, inbound goes to the node proxy's 15006"
echo "(no node proxy listening: the SYN is dropped, the app never sees plaintext)"
"$BIN/meshlab" exec outside-2 -- "$BIN/ambit-echo" dial -timeout 2s "$SRV2:8080" || true

step "meshlab down: remove everything the lab made"
