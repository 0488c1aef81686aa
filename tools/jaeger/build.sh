#!/usr/bin/env bash
# Builds the Jaeger all-in-one (github.com/jaegertracing/jaeger/cmd/jaeger,
# Jaeger v2 on the OpenTelemetry Collector: OTLP receivers, in-memory
# storage, the query API) from the Go module proxy into a cache that
# survives on this machine, and prints the directory that holds it. The
# tracing lab test (internal/e2e, TestPrivilegedTracingJaeger) runs it.
#
#   tools/jaeger/build.sh         build if missing, print the directory
#   tools/jaeger/build.sh --dir   print the directory only (no build)
#
# The directory is $AMBIT_CACHE (default /var/cache/ambit) /
# jaeger-<version>-<12 hex of sha256(go.mod go.sum)>. Cold (empty Go
# build cache): about 6 minutes on 2 cores. See tools/lib/cached-build.sh.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
cd "$here"
. ../lib/cached-build.sh

version="$(awk '$1 == "require" && $2 == "github.com/jaegertracing/jaeger" {print $3; exit}
	$1 == "github.com/jaegertracing/jaeger" && $2 ~ /^v/ {print $2; exit}' go.mod)"
if [ -z "$version" ]; then
	echo "tools/jaeger/go.mod: no 'github.com/jaegertracing/jaeger vX.Y.Z' requirement" >&2
	exit 1
fi
name=jaeger
bins=(jaeger)
pkgs=(github.com/jaegertracing/jaeger/cmd/jaeger)
# The module tag v1.75.0 carries the Jaeger v2 binary (cmd/jaeger); the
# version package reports what -X sets.
goflags=(-ldflags "-s -w -X github.com/jaegertracing/jaeger/internal/version.latestVersion=$version -X github.com/jaegertracing/jaeger/internal/version.commitSHA=module-proxy")
cached_build "$@"
