# Ambit's images, one Dockerfile, one target each:
#
#   docker build --target controller -t ghcr.io/ambit-mesh/ambit-controller:v0.1.0 .
#   docker build --target nodeproxy  -t ghcr.io/ambit-mesh/ambit-nodeproxy:v0.1.0 .
#
# The binaries are static Go (CGO off); the eBPF objects are committed and
# embedded, so the build needs no clang. deploy/daemonset sets the tags.

FROM golang:1.26-bookworm AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
RUN CGO_ENABLED=0 go build -trimpath -buildvcs=false -ldflags "-s -w" -o /out/ ./cmd/controller ./cmd/nodeproxy

# The controller: no shell, no package manager, a non-root user (65532).
FROM gcr.io/distroless/static-debian12:nonroot AS controller
COPY --from=build /out/controller /controller
USER 65532:65532
EXPOSE 15010 15020 15021
ENTRYPOINT ["/controller"]
CMD ["run", "--source=kubernetes"]

# The node proxy runs as root with the capabilities the DaemonSet grants
# (see deploy/daemonset/nodeproxy.yaml); the debug CLI is the same binary:
# kubectl exec ds/ambit-nodeproxy -n ambit-system -- /nodeproxy debug workloads
FROM gcr.io/distroless/static-debian12 AS nodeproxy
COPY --from=build /out/nodeproxy /nodeproxy
ENTRYPOINT ["/nodeproxy"]
CMD ["run"]
