#!/usr/bin/env bash
# Builds containerd, ctr and containerd-shim-runc-v2 (the runtime that
# internal/kubecluster's nodes run; runc itself is Debian's) from the Go
# module proxy into a cache that survives on this machine, and prints the
# directory that holds them.
#
#   tools/containerd/build.sh         build if missing, print the directory
#   tools/containerd/build.sh --dir   print the directory only (no build)
#
# The directory is $AMBIT_CACHE (default /var/cache/ambit) /
# containerd-<version>-<12 hex of sha256(go.mod go.sum)>. Cold (empty Go
# build cache): about 2 minutes on 2 cores. See tools/lib/cached-build.sh.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
cd "$here"
. ../lib/cached-build.sh

version="$(awk '$1 == "require" && $2 == "github.com/containerd/containerd/v2" {print $3; exit}
	$1 == "github.com/containerd/containerd/v2" && $2 ~ /^v/ {print $2; exit}' go.mod)"
if [ -z "$version" ]; then
	echo "tools/containerd/go.mod: no 'github.com/containerd/containerd/v2 vX.Y.Z' requirement" >&2
	exit 1
fi
name=containerd
bins=(containerd ctr containerd-shim-runc-v2)
pkgs=()
for b in "${bins[@]}"; do pkgs+=("github.com/containerd/containerd/v2/cmd/$b"); done
# Static, without cgo: no btrfs snapshotter (it needs libbtrfs headers);
# overlayfs and native are what the nodes use.
goflags=(-tags "no_btrfs urfave_cli_no_docs"
	-ldflags "-s -w -X github.com/containerd/containerd/v2/version.Version=$version -X github.com/containerd/containerd/v2/version.Revision=module-proxy")
cached_build "$@"
