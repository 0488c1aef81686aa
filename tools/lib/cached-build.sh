# Sourced by the tools/*/build.sh scripts that build programs from the Go
# module proxy into a cache that survives on this machine (the pattern of
# tools/kube/build.sh). The caller sets, then calls cached_build "$@":
#
#   name      cache directory prefix (kube-node, containerd, coredns)
#   version   the version the directory is named after
#   bins      the binaries that must exist in it (file names)
#   pkgs      the Go main packages to build (each gives the binary named
#             after its last path element)
#   goflags   extra `go build` flags (array; -tags, -ldflags)
#   cgo       CGO_ENABLED value (default 0)
#   hashed    files the cache key covers (array; default go.mod go.sum)
#   testbin   optional: also compile the test of package testpkg (default .)
#             with `go test -c` into this file name
#
# The directory is $AMBIT_CACHE (default /var/cache/ambit) /
# <name>-<version>-<12 hex of sha256 of the hashed files>, so a change of
# version or of any dependency builds anew. The build happens in a
# temporary directory beside it and is renamed into place, under a file
# lock, so concurrent builds never see half a binary and build only once.
#
#   build.sh          build if missing, print the directory
#   build.sh --dir    print the directory only (no build)

cached_build() {
	local go hash cache dir tmp start b ok
	go="${GO:-$(command -v go 2>/dev/null || echo /usr/local/go/bin/go)}"
	[ -n "${hashed+x}" ] || hashed=(go.mod go.sum)
	hash="$(cat "${hashed[@]}" | sha256sum | cut -c1-12)"
	cache="${AMBIT_CACHE:-/var/cache/ambit}"
	dir="$cache/$name-$version-$hash"

	if [ "${1:-}" = "--dir" ]; then
		echo "$dir"
		return 0
	fi
	_cached_complete() {
		for b in "${bins[@]}"; do [ -x "$1/$b" ] || return 1; done
	}
	if _cached_complete "$dir"; then
		echo "$dir"
		return 0
	fi

	mkdir -p "$cache"
	exec 9>"$cache/$name-$version-$hash.lock"
	echo "waiting for the $name build lock ($cache)..." >&2
	flock 9
	# Another build may have finished while this one waited.
	if _cached_complete "$dir"; then
		echo "$dir"
		return 0
	fi
	tmp="$(mktemp -d "$cache/.$name-$version-$hash.XXXXXX")"
	chmod 755 "$tmp"
	trap 'rm -rf "$tmp"' EXIT
	echo "building ${bins[*]} $version into $dir..." >&2
	start=$(date +%s)
	CGO_ENABLED="${cgo:-0}" "$go" build -trimpath "${goflags[@]}" -o "$tmp/" "${pkgs[@]}"
	if [ -n "${testbin:-}" ]; then
		CGO_ENABLED="${cgo:-0}" "$go" test -c -trimpath "${goflags[@]}" -o "$tmp/$testbin" "${testpkg:-.}"
	fi
	echo "built $name in $(($(date +%s) - start))s" >&2
	rm -rf "$dir"
	mv "$tmp" "$dir"
	trap - EXIT
	echo "$dir"
}
