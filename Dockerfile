# Ambit's images, one Dockerfile, one target each:
#
#   docker build --target controller -t ghcr.io/ambit-mesh/ambit-controller:v0.1.0 --build-arg VERSION=v0.1.0 .
#   docker build --target nodeproxy  -t ghcr.io/ambit-mesh/ambit-nodeproxy:v0.1.0 --build-arg VERSION=v0.1.0 .
#   docker build --target cni        -t ghcr.io/ambit-mesh/ambit-cni:v0.1.0 --build-arg VERSION=v0.1.0 .
#
# Without Docker: `make images` builds the same static binaries (plus the
# lab's ambit-echo and the ambit-pause sandbox image) and writes each image
# as an OCI archive in bin/images/ for `ctr -n k8s.io images import`
# (cmd/ambit-image). The binaries are static Go (CGO off); the eBPF objects
# are committed and embedded, so the build needs no clang. deploy/profiles
# sets the tags.

FROM golang:1.26-bookworm AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
ARG VERSION=dev
# grpcnotrace: see GO_TAGS in the Makefile.
RUN CGO_ENABLED=0 go build -tags grpcnotrace -trimpath -buildvcs=false \
    -ldflags "-s -w -X github.com/ambit-mesh/ambit/internal/nodeproxy.Version=${VERSION}" \
    -o /out/ ./cmd/controller ./cmd/nodeproxy ./cmd/ambit-cni

# The controller: no shell, no package manager, a non-root user (65532).
FROM gcr.io/distroless/static-debian12:nonroot AS controller
COPY --from=build /out/controller /controller
USER 65532:65532
EXPOSE 15010 15020 15021
ENTRYPOINT ["/controller"]
CMD ["run", "--source=kubernetes"]

# The CNI installer runs as root in a DaemonSet with the node's CNI
# directories mounted; it copies itself there as the chained plugin.
FROM gcr.io/distroless/static-debian12 AS cni
COPY --from=build /out/ambit-cni /ambit-cni
ENTRYPOINT ["/ambit-cni"]
CMD ["install"]

# The node proxy runs as root with the capabilities the DaemonSet grants
# (see deploy/base/node/nodeproxy.yaml); the debug CLI is the same binary:
# kubectl exec ds/ambit-nodeproxy -n ambit-system -- /nodeproxy debug workloads
FROM gcr.io/distroless/static-debian12 AS nodeproxy
COPY --from=build /out/nodeproxy /nodeproxy
ENTRYPOINT ["/nodeproxy"]
CMD ["run"]
