#!/usr/bin/env bash
# Builds kube-apiserver and kubectl from the Go module proxy into a cache that
# survives on this machine, and prints the directory that holds them.
#
#   tools/kube/build.sh            build if missing, print the directory
#   tools/kube/build.sh --dir      print the directory only (no build)
#
# The directory is $AMBIT_CACHE (default /var/cache/ambit) /
# kube-<version>-<12 hex of sha256(go.mod go.sum)>, so a change of version or
# of any dependency builds anew. internal/kubetest computes the same name.
# The build happens in a temporary directory beside it and is renamed into
# place, under a file lock, so two test packages or two make runs that build
# at once never see half a binary and build only once.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
cd "$here"

go="${GO:-$(command -v go 2>/dev/null || echo /usr/local/go/bin/go)}"
version="$(awk '$1 == "require" && $2 == "k8s.io/kubernetes" {print $3; exit}
	$1 == "k8s.io/kubernetes" && $2 ~ /^v/ {print $2; exit}' go.mod)"
if [ -z "$version" ]; then
	echo "tools/kube/go.mod: no 'k8s.io/kubernetes vX.Y.Z' requirement" >&2
	exit 1
fi
hash="$(cat go.mod go.sum | sha256sum | cut -c1-12)"
cache="${AMBIT_CACHE:-/var/cache/ambit}"
dir="$cache/kube-$version-$hash"

if [ "${1:-}" = "--dir" ]; then
	echo "$dir"
	exit 0
fi

if [ -x "$dir/kube-apiserver" ] && [ -x "$dir/kubectl" ]; then
	echo "$dir"
	exit 0
fi

mkdir -p "$cache"
exec 9>"$cache/kube-$version-$hash.lock"
echo "waiting for the kube tools build lock ($cache)..." >&2
flock 9
# Another build may have finished while this one waited.
if [ -x "$dir/kube-apiserver" ] && [ -x "$dir/kubectl" ]; then
	echo "$dir"
	exit 0
fi

tmp="$(mktemp -d "$cache/.kube-$version-$hash.XXXXXX")"
chmod 755 "$tmp"
trap 'rm -rf "$tmp"' EXIT
# Version stamps: without them the binaries report v0.0.0-master.
minor="$(echo "$version" | cut -d. -f2)"
pkg=k8s.io/component-base/version
ldflags="-s -w -X $pkg.gitVersion=$version -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor -X $pkg.gitTreeState=clean"
ldflags="$ldflags -X k8s.io/client-go/pkg/version.gitVersion=$version -X k8s.io/client-go/pkg/version.gitMajor=1 -X k8s.io/client-go/pkg/version.gitMinor=$minor"
echo "building kube-apiserver and kubectl $version into $dir (cold: 10-18 minutes on 2 cores)..." >&2
start=$(date +%s)
CGO_ENABLED=0 "$go" build -trimpath -ldflags "$ldflags" -o "$tmp/" \
	k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kubectl
echo "built in $(( $(date +%s) - start ))s" >&2
rm -rf "$dir"
mv "$tmp" "$dir"
trap - EXIT
echo "$dir"
