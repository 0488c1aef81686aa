#!/usr/bin/env bash
# Builds the Kubernetes node and control-plane binaries that
# internal/kubecluster runs (kubelet, kube-proxy, kube-scheduler,
# kube-controller-manager) from the Go module proxy into a cache that
# survives on this machine, and prints the directory that holds them.
#
#   tools/kube/node/build.sh         build if missing, print the directory
#   tools/kube/node/build.sh --dir   print the directory only (no build)
#
# The directory is $AMBIT_CACHE (default /var/cache/ambit) /
# kube-node-<version>-<12 hex of sha256(go.mod go.sum)>. Cold (empty Go
# build cache): about 7 minutes on 2 cores; they share most packages with
# tools/kube's build. See tools/lib/cached-build.sh.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
cd "$here"
. ../../lib/cached-build.sh

version="$(awk '$1 == "require" && $2 == "k8s.io/kubernetes" {print $3; exit}
	$1 == "k8s.io/kubernetes" && $2 ~ /^v/ {print $2; exit}' go.mod)"
if [ -z "$version" ]; then
	echo "tools/kube/node/go.mod: no 'k8s.io/kubernetes vX.Y.Z' requirement" >&2
	exit 1
fi
name=kube-node
bins=(kubelet kube-proxy kube-scheduler kube-controller-manager)
pkgs=()
for b in "${bins[@]}"; do pkgs+=("k8s.io/kubernetes/cmd/$b"); done
# Version stamps: without them the binaries report v0.0.0-master, and the
# kubelet's version would not match the API server's.
minor="$(echo "$version" | cut -d. -f2)"
pkg=k8s.io/component-base/version
ldflags="-s -w -X $pkg.gitVersion=$version -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor -X $pkg.gitTreeState=clean"
ldflags="$ldflags -X k8s.io/client-go/pkg/version.gitVersion=$version -X k8s.io/client-go/pkg/version.gitMajor=1 -X k8s.io/client-go/pkg/version.gitMinor=$minor"
goflags=(-ldflags "$ldflags")
cached_build "$@"
