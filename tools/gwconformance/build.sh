#!/usr/bin/env bash
# Builds the Gateway API conformance suite as Ambit runs it
# (gwconformance.test, from conformance_test.go and ambit_test.go), the
# MESH tests' application meshecho (Ambit's own, served under the name of
# the upstream echo-advanced image) and the GATEWAY tests' echo-basic
# (sigs.k8s.io/gateway-api/conformance/echo-basic, the suite's own), from
# the Go module proxy into a cache that survives on this machine, and
# prints the directory that holds them.
#
#   tools/gwconformance/build.sh         build if missing, print the directory
#   tools/gwconformance/build.sh --dir   print the directory only (no build)
#
# The directory is $AMBIT_CACHE (default /var/cache/ambit) /
# gwconformance-<version>-<12 hex of sha256 of go.mod, go.sum and the
# sources>. Cold: about 2 minutes on 2 cores.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
cd "$here"
. ../lib/cached-build.sh

version="$(awk '$1 == "sigs.k8s.io/gateway-api/conformance" && $2 ~ /^v/ {print $2; exit}' go.mod)"
if [ -z "$version" ]; then
	echo "tools/gwconformance/go.mod: no 'sigs.k8s.io/gateway-api/conformance vX.Y.Z' requirement" >&2
	exit 1
fi
name=gwconformance
bins=(meshecho echo-basic gwconformance.test)
pkgs=(./meshecho sigs.k8s.io/gateway-api/conformance/echo-basic)
hashed=(go.mod go.sum *.go meshecho/*.go)
goflags=(-ldflags "-s -w")
testbin=gwconformance.test
testpkg=.
cached_build "$@"
