#!/usr/bin/env bash
# Builds golangci-lint (github.com/golangci/golangci-lint/v2, the linter
# runner `make lint` uses with the repository's .golangci.yml) from the Go
# module proxy into a cache that survives on this machine, and prints the
# directory that holds it. The version is pinned in this directory's go.mod
# (a `tool` directive: `go get -tool ...@vX.Y.Z` here to move it).
#
#   tools/golangci/build.sh         build if missing, print the directory
#   tools/golangci/build.sh --dir   print the directory only (no build)
#
# The directory is $AMBIT_CACHE (default /var/cache/ambit) /
# golangci-lint-<version>-<12 hex of sha256(go.mod go.sum)>. Cold: a few
# minutes on two cores.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
cd "$here"
. ../lib/cached-build.sh

version="$(awk '$1 == "github.com/golangci/golangci-lint/v2" && $2 ~ /^v/ {print $2; exit}' go.mod)"
if [ -z "$version" ]; then
	echo "tools/golangci/go.mod: no 'github.com/golangci/golangci-lint/v2 vX.Y.Z' requirement" >&2
	exit 1
fi
name=golangci-lint
bins=(golangci-lint)
pkgs=(github.com/golangci/golangci-lint/v2/cmd/golangci-lint)
goflags=(-ldflags "-s -w")
cached_build "$@"
