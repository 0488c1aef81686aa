#!/usr/bin/env bash
# Builds the CoreDNS of the Gateway API conformance suite's base manifests
# (main.go: the version they name, the plugins their Corefile uses) from
# the Go module proxy into a cache that survives on this machine, and
# prints the directory that holds it. `make conformance-images` packages it
# as registry.k8s.io/coredns/coredns:v1.12.2.
#
#   tools/gwconformance/coredns/build.sh         build if missing, print the directory
#   tools/gwconformance/coredns/build.sh --dir   print the directory only (no build)
#
# The directory is $AMBIT_CACHE (default /var/cache/ambit) /
# gwc-coredns-<version>-<12 hex of sha256(go.mod go.sum main.go)>. Cold:
# about a minute on 2 cores.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
cd "$here"
. ../../lib/cached-build.sh

version="$(awk '$1 == "require" && $2 == "github.com/coredns/coredns" {print $3; exit}
	$1 == "github.com/coredns/coredns" && $2 ~ /^v/ {print $2; exit}' go.mod)"
if [ -z "$version" ]; then
	echo "tools/gwconformance/coredns/go.mod: no 'github.com/coredns/coredns vX.Y.Z' requirement" >&2
	exit 1
fi
name=gwc-coredns
bins=(coredns)
pkgs=(.)
hashed=(go.mod go.sum main.go)
goflags=(-ldflags "-s -w -X github.com/coredns/coredns/coremain.GitCommit=${version#v}")
cached_build "$@"
