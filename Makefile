# Ambit. `make help` lists the targets. Privileged targets (test, demo, bench)
# run as root: they build network namespaces and load eBPF programs.

# Go from PATH, else the standard install location: `sudo` resets PATH to a
# secure_path that usually lacks /usr/local/go/bin.
GO        ?= $(or $(shell command -v go 2>/dev/null),/usr/local/go/bin/go)
BIN       := bin
STATE     ?= /run/meshlab
APT_PKGS  := clang llvm libbpf-dev bpftool iproute2 tcpdump git make iperf3 nginx libnginx-mod-stream
# etcd for the Kubernetes tests (internal/kubetest)
APT_PKGS  += etcd-server
# protoc for the control API (api/v1alpha1); its Go plugins are pinned in go.mod
APT_PKGS  += protobuf-compiler
# the CNI reference plugins (bridge, host-local) for the ambit-cni chain tests
APT_PKGS  += containernetworking-plugins
# the local cluster's nodes (internal/kubecluster): runc, and the netfilter
# tools kube-proxy and the CNI portmap plugin run (the CNI plugins are above)
APT_PKGS  += runc iptables conntrack
# a real OCI tool that reads `make images`' archives (internal/ociimage)
APT_PKGS  += skopeo
# promtool and a Prometheus server for the observability tests (deploy/observability)
APT_PKGS  += prometheus
# headless Chromium for the mesh console's browser test (internal/e2e/console_test.go)
APT_PKGS  += chromium
GENERATED := internal/redirect/capture_bpfel.go internal/redirect/capture_bpfel.o internal/redirect/hop_bpfel.go internal/redirect/hop_bpfel.o
GENERATED += $(wildcard api/v1alpha1/*.pb.go)
# CRDs and deep-copy functions from api/crd (controller-gen, pinned in go.mod)
GENERATED += deploy/base/control-plane/crds $(wildcard api/crd/*/zz_generated.deepcopy.go)

.DEFAULT_GOAL := help

.PHONY: help
help: ## list the targets
	@awk 'BEGIN{FS=":.*## "} /^[a-z-]+:.*## /{printf "  %-16s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

.PHONY: deps
deps: ## install the system packages the build and tests need (Debian/Ubuntu, as root)
	@missing=""; for p in $(APT_PKGS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		echo "installing:$$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	fi

# How every binary is built, in bin/ as in the images: static (CGO off,
# no libc mapped next to it), and with the build tag grpcnotrace, which
# leaves out grpc's golang.org/x/net/trace and with it text/template and
# html/template: their reflect.Value.MethodByName makes the linker keep
# every exported method of every type, a seventh of the node proxy's
# binary, all of it mapped into memory (docs/benchmarks.md, 2026-12-07
# "node proxy memory"). internal/fence checks that the tag keeps them
# out.
GO_TAGS   := grpcnotrace
GO_BUILD  := CGO_ENABLED=0 $(GO) build -tags $(GO_TAGS)

.PHONY: build
build: ## build nodeproxy, meshlab and the lab tools into bin/
	$(GO_BUILD) -o $(BIN)/ ./cmd/...

.PHONY: generate
generate: ## regenerate eBPF objects and Go bindings (clang, libbpf-dev), the control API's protobuf code (protoc) and the CRDs (controller-gen)
	PATH="$(dir $(GO)):$$PATH" $(GO) generate ./...

.PHONY: crds
crds: ## regenerate the CRDs (deploy/base/control-plane/crds) and deep-copy functions from api/crd (controller-gen)
	PATH="$(dir $(GO)):$$PATH" $(GO) generate ./api/crd/...

.PHONY: check-generate
check-generate: generate ## fail when committed generated files (eBPF, protobuf, CRDs) are stale or the C no longer builds
	@git diff --exit-code --stat -- $(GENERATED) || { echo "generated files are stale: run 'make generate' and commit them"; exit 1; }
	@new=$$(git ls-files --others --exclude-standard -- 'api/*.pb.go' 'api/crd/*/zz_generated*.go' 'deploy/base/control-plane/crds/*.yaml'); if [ -n "$$new" ]; then echo "generated files not committed: $$new"; exit 1; fi

# golangci-lint is pinned in tools/golangci/go.mod and built once into
# /var/cache/ambit (cold: a few minutes); .golangci.yml lists its linters.
.PHONY: lint
lint: ## gofmt, go mod tidy check, go vet, golangci-lint (.golangci.yml)
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	@$(GO) mod tidy -diff >/dev/null || { $(GO) mod tidy -diff; echo "go.mod/go.sum are not tidy: run 'go mod tidy' and commit go.mod and go.sum"; exit 1; }
	$(GO) vet ./...
	@dir=$$(GO=$(GO) tools/golangci/build.sh) && echo "golangci-lint run ./... ($$dir)" && PATH="$(dir $(GO)):$$PATH" "$$dir/golangci-lint" run ./...

.PHONY: kube-tools
kube-tools: ## build kube-apiserver and kubectl for the Kubernetes tests (cached per version; cold 10-18 min)
	@GO=$(GO) tools/kube/build.sh >/dev/null

.PHONY: jaeger-tools
jaeger-tools: ## build the Jaeger all-in-one that the tracing test exports the waypoint's spans to (tools/jaeger; cached per version; cold about 6 min)
	@GO=$(GO) tools/jaeger/build.sh >/dev/null

# The slowest package, internal/kubee2e (the mesh on the real cluster, then
# the Gateway API conformance suite on another, taking turns with
# internal/kubecluster), takes about 15 minutes on 2 shared cores (8 + 7 on
# 2026-12-07): 30m leaves room.
.PHONY: test
test: lint check-generate kube-tools cluster-tools cluster-images conformance-images jaeger-tools ## lint, check generated code, run every test (as root: privileged tests run, the local cluster too)
	$(GO) test -count=1 -timeout 30m ./...

FUZZTIME ?= 30s
FUZZ_TARGETS := ./internal/l7:FuzzParseRequestHead ./internal/l7:FuzzParseResponseHead ./internal/meshspec:FuzzParse ./internal/tunnel:FuzzParseForwarded
FUZZ_TARGETS += ./internal/controller:FuzzCreateCertificate ./internal/controller:FuzzConfigStreamRequests
FUZZ_TARGETS += ./internal/l7/authz:FuzzNormalizePath ./internal/kubesource:FuzzCustomResource
FUZZ_TARGETS += ./internal/tunnel:FuzzConnectRequest ./internal/tunnel:FuzzServerFrames

.PHONY: fuzz
fuzz: ## run each fuzz target for FUZZTIME (default 30s); `make test` replays their seeds
	@set -e; for t in $(FUZZ_TARGETS); do pkg=$${t%%:*}; fn=$${t##*:}; \
		echo "fuzz $$fn ($$pkg, $(FUZZTIME))"; \
		$(GO) test -run '^$$' -fuzz "^$$fn\$$" -fuzztime $(FUZZTIME) $$pkg; done

.PHONY: test-unit
test-unit: ## run the tests that need no privileges
	$(GO) test -count=1 -short ./...

.PHONY: demo
demo: build ## bring the lab up, show capture at work, tear it down (as root)
	./scripts/demo.sh

.PHONY: bench
bench: build ## Go benchmarks, then the lab benchmark: direct vs mesh (h2, QUIC) vs nginx mTLS, waypoint vs nginx http, ingress gateway vs nginx terminating TLS, and 10,000 idle connections (as root)
	$(GO) test -run '^$$' -bench . -benchtime 3000x -count 3 ./internal/redirect/
	$(GO) test -run '^$$' -bench . -benchtime 2000x -count 3 ./internal/tunnel/
	$(BIN)/ambit-bench -o bench/out/bench.json $(BENCH_FLAGS)
	$(BIN)/ambit-bench -idle 10000 -o bench/out/idle.json

# Images without Docker (cmd/ambit-image, internal/ociimage): static binaries in
# bin/static/, one OCI archive per image in bin/images/ for
# `ctr -n k8s.io images import bin/images/NAME.tar`. The pause image keeps
# the tag the cluster's containerd config names as its sandbox image.
# `make images IMAGES="ambit-controller ambit-pause"` builds some of them.
TAG        ?= $(shell git describe --always --dirty 2>/dev/null || echo dev)
REVISION   ?= $(shell git rev-parse HEAD 2>/dev/null || echo unknown)
REGISTRY   ?= ghcr.io/ambit-mesh
IMAGE_ARCH ?= $(shell $(GO) env GOARCH)
IMAGES     ?= ambit-controller ambit-nodeproxy ambit-cni ambit-echo ambit-pause
IMAGE_BIN_ambit-controller  := controller
IMAGE_ARGS_ambit-controller := --cmd=run --cmd=--source=kubernetes --user=65532:65532
IMAGE_BIN_ambit-nodeproxy   := nodeproxy
IMAGE_ARGS_ambit-nodeproxy  := --cmd=run --user=0
IMAGE_BIN_ambit-cni         := ambit-cni
IMAGE_ARGS_ambit-cni        := --cmd=install --user=0
IMAGE_BIN_ambit-echo        := ambit-echo
IMAGE_ARGS_ambit-echo       := --user=65532:65532
IMAGE_BIN_ambit-pause       := ambit-pause
IMAGE_ARGS_ambit-pause      := --user=65535:65535
IMAGE_TAG_ambit-pause       := 3.10

.PHONY: images
images: ## build OCI image archives (bin/images/*.tar) without Docker: controller, node proxy, CNI, echo, pause
	$(foreach i,$(IMAGES),$(if $(IMAGE_BIN_$(i)),,$(error IMAGES: unknown image "$(i)"; Ambit's are ambit-controller ambit-nodeproxy ambit-cni ambit-echo ambit-pause)))
	@set -e; tag='$(TAG)'; rev='$(REVISION)'; \
	echo "static binaries (linux/$(IMAGE_ARCH), version $$tag) -> $(BIN)/static/"; \
	CGO_ENABLED=0 GOOS=linux GOARCH=$(IMAGE_ARCH) $(GO) build -tags $(GO_TAGS) -trimpath \
		-ldflags "-s -w -X github.com/ambit-mesh/ambit/internal/nodeproxy.Version=$$tag" \
		-o $(BIN)/static/ $(foreach i,$(IMAGES),./cmd/$(IMAGE_BIN_$(i))); \
	GOOS= GOARCH= $(GO) build -o $(BIN)/ambit-image ./cmd/ambit-image; \
	$(foreach i,$(IMAGES),$(BIN)/ambit-image build --binary=$(BIN)/static/$(IMAGE_BIN_$(i)) \
		--ref=$(REGISTRY)/$(i):$(or $(IMAGE_TAG_$(i)),$$tag) --revision=$$rev --arch=$(IMAGE_ARCH) \
		$(IMAGE_ARGS_$(i)) -o $(BIN)/images/$(i).tar;)

# The local Kubernetes cluster (internal/kubecluster, cmd/ambit-cluster): two
# real nodes (kubelet, containerd, runc, CNI, kube-proxy) and CoreDNS in
# network and mount namespaces of their own, no registry. Its programs build
# from the Go module proxy into the cache kube-tools uses (tools/kube/node,
# tools/containerd, tools/coredns); `make cluster-images` adds CoreDNS's image
# to `make images`'s. The state lives in $(CLUSTER_STATE).
CLUSTER_STATE   ?= /run/ambit-cluster
COREDNS_VERSION := $(shell awk '$$1 == "require" && $$2 == "github.com/coredns/coredns" {print $$3}' tools/coredns/go.mod)

.PHONY: cluster-tools
cluster-tools: kube-tools ## build kubelet, kube-proxy, scheduler, controller-manager, containerd and CoreDNS for the local cluster (cached; cold about 11 min)
	@GO=$(GO) tools/kube/node/build.sh >/dev/null
	@GO=$(GO) tools/containerd/build.sh >/dev/null
	@GO=$(GO) tools/coredns/build.sh >/dev/null

.PHONY: cluster-images
cluster-images: images ## the local cluster's images: `make images` plus CoreDNS (bin/images/coredns.tar)
	@dir=$$(GO=$(GO) tools/coredns/build.sh) && \
	$(BIN)/ambit-image build --binary=$$dir/coredns --ref=ghcr.io/ambit-mesh/coredns:$(COREDNS_VERSION) \
		--user=65532:65532 -o $(BIN)/images/coredns.tar

# Gateway API conformance (tools/gwconformance, docs/conformance): the
# upstream suite, built with Ambit's claims into /var/cache/ambit, and the
# images its manifests name, built here: meshecho (Ambit's own MESH test
# application) as echo-advanced; for the GATEWAY profiles the suite's
# echo-basic and CoreDNS 1.12.2 (tools/gwconformance/coredns; as root: the
# suite's manifest gives it NET_BIND_SERVICE alone for port 53, and an
# image of ours carries no file capabilities).
# GWC_PROFILES picks the profiles (docs/conformance/README.md).
GWC_PROFILES ?= GATEWAY-HTTP,GATEWAY-GRPC,GATEWAY-TLS,GATEWAY-TCP,MESH-HTTP,MESH-GRPC

.PHONY: conformance-tools
conformance-tools: ## build the Gateway API conformance suite with Ambit's options and its test applications (cached; cold about 3 min)
	@GO=$(GO) tools/gwconformance/build.sh >/dev/null
	@GO=$(GO) tools/gwconformance/coredns/build.sh >/dev/null

.PHONY: conformance-images
conformance-images: images conformance-tools ## the conformance suite's images under the names its manifests use (bin/images/gwc-*.tar)
	@set -e; dir=$$(GO=$(GO) tools/gwconformance/build.sh); \
	$(BIN)/ambit-image build --binary=$$dir/meshecho --name=client --ref=registry.k8s.io/gateway-api/echo-advanced:v1.5.1 \
		--user=65532:65532 -o $(BIN)/images/gwc-echo-advanced.tar; \
	$(BIN)/ambit-image build --binary=$$dir/echo-basic --ref=registry.k8s.io/gateway-api/echo-basic:v1.5.1 \
		--user=65532:65532 -o $(BIN)/images/gwc-echo-basic.tar; \
	$(BIN)/ambit-image build --binary=$$dir/echo-basic --ref=registry.k8s.io/gateway-api/echo-basic:v1.6.0-dev.3 \
		--user=65532:65532 -o $(BIN)/images/gwc-echo-basic-dev.tar; \
	$(BIN)/ambit-image build --binary=$$dir/echo-basic --ref=registry.k8s.io/gateway-api/echo-basic:v1.6.0-dev.2 \
		--user=65532:65532 -o $(BIN)/images/gwc-echo-basic-dev2.tar; \
	dir=$$(GO=$(GO) tools/gwconformance/coredns/build.sh); \
	$(BIN)/ambit-image build --binary=$$dir/coredns --ref=registry.k8s.io/coredns/coredns:v1.12.2 \
		--user=0:0 -o $(BIN)/images/gwc-coredns.tar

.PHONY: gateway-conformance
gateway-conformance: cluster-tools cluster-images conformance-images ## run the Gateway API conformance suite (GWC_PROFILES, default GATEWAY-HTTP/GRPC/TLS/TCP and MESH-HTTP/GRPC) on the local cluster and write its report to docs/conformance/ (as root)
	CI=true AMBIT_GWC_PROFILES=$(GWC_PROFILES) AMBIT_GWC_UPDATE=1 $(GO) test -count=1 -timeout 45m -v \
		-run '^TestPrivilegedGatewayConformance$$' ./internal/kubee2e

.PHONY: cluster-up
cluster-up: cluster-tools cluster-images ## bring up a real two-node Kubernetes on this machine, offline (as root; see `bin/ambit-cluster help`)
	$(GO) build -o $(BIN)/ ./cmd/ambit-cluster
	$(BIN)/ambit-cluster up --state-dir $(CLUSTER_STATE) --images $(BIN)/images

.PHONY: cluster-down
cluster-down: ## remove the local cluster and restore the host, also after a failed cluster-up (as root)
	$(GO) build -o $(BIN)/ ./cmd/ambit-cluster
	$(BIN)/ambit-cluster down --state-dir $(CLUSTER_STATE)

.PHONY: clean
clean: ## remove build output
	rm -rf $(BIN)
