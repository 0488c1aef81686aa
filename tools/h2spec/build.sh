#!/usr/bin/env bash
# Builds h2spec (github.com/summerwind/h2spec, the HTTP/2 conformance tool)
# from the Go module proxy into a cache that survives on this machine, and
# prints the directory that holds it. The tunnel's conformance test
# (internal/tunnel, TestH2SpecAgainstTunnelServer) runs it.
#
#   tools/h2spec/build.sh         build if missing, print the directory
#   tools/h2spec/build.sh --dir   print the directory only (no build)
#
# The directory is $AMBIT_CACHE (default /var/cache/ambit) /
# h2spec-<version>-<12 hex of sha256(go.mod go.sum)>. Cold: about 20 s.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
cd "$here"
. ../lib/cached-build.sh

version="$(awk '$1 == "github.com/summerwind/h2spec" && $2 ~ /^v/ {print $2; exit}' go.mod)"
if [ -z "$version" ]; then
	echo "tools/h2spec/go.mod: no 'github.com/summerwind/h2spec vX.Y.Z' requirement" >&2
	exit 1
fi
name=h2spec
bins=(h2spec)
pkgs=(github.com/summerwind/h2spec/cmd/h2spec)
goflags=(-ldflags "-s -w")
cached_build "$@"
