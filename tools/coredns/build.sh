#!/usr/bin/env bash
# Builds CoreDNS with the plugins the local cluster's kube-dns uses
# (main.go) from the Go module proxy into a cache that survives on this
# machine, and prints the directory that holds it.
#
#   tools/coredns/build.sh         build if missing, print the directory
#   tools/coredns/build.sh --dir   print the directory only (no build)
#
# The directory is $AMBIT_CACHE (default /var/cache/ambit) /
# coredns-<version>-<12 hex of sha256(go.mod go.sum main.go)>. Cold
# (empty Go build cache): about 2 minutes on 2 cores. See
# tools/lib/cached-build.sh.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
cd "$here"
. ../lib/cached-build.sh

version="$(awk '$1 == "require" && $2 == "github.com/coredns/coredns" {print $3; exit}
	$1 == "github.com/coredns/coredns" && $2 ~ /^v/ {print $2; exit}' go.mod)"
if [ -z "$version" ]; then
	echo "tools/coredns/go.mod: no 'github.com/coredns/coredns vX.Y.Z' requirement" >&2
	exit 1
fi
name=coredns
bins=(coredns)
pkgs=(.)
hashed=(go.mod go.sum main.go)
goflags=(-ldflags "-s -w -X github.com/coredns/coredns/coremain.GitCommit=${version#v}")
cached_build "$@"
