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
GENERATED := internal/redirect/capture_bpfel.go internal/redirect/capture_bpfel.o
GENERATED += $(wildcard api/v1alpha1/*.pb.go)
# CRDs and deep-copy functions from api/crd (controller-gen, pinned in go.mod)
GENERATED += deploy/daemonset/crds $(wildcard api/crd/*/zz_generated.deepcopy.go)

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

.PHONY: build
build: ## build nodeproxy, meshlab and the lab tools into bin/
	$(GO) build -o $(BIN)/ ./cmd/...

.PHONY: generate
generate: ## regenerate eBPF objects and Go bindings (clang, libbpf-dev), the control API's protobuf code (protoc) and the CRDs (controller-gen)
	PATH="$(dir $(GO)):$$PATH" $(GO) generate ./...

.PHONY: crds
crds: ## regenerate the CRDs (deploy/daemonset/crds) and deep-copy functions from api/crd (controller-gen)
	PATH="$(dir $(GO)):$$PATH" $(GO) generate ./api/crd/...

.PHONY: check-generate
check-generate: generate ## fail when committed generated files (eBPF, protobuf, CRDs) are stale or the C no longer builds
	@git diff --exit-code --stat -- $(GENERATED) || { echo "generated files are stale: run 'make generate' and commit them"; exit 1; }
	@new=$$(git ls-files --others --exclude-standard -- 'api/*.pb.go' 'api/crd/*/zz_generated*.go' 'deploy/daemonset/crds/*.yaml'); if [ -n "$$new" ]; then echo "generated files not committed: $$new"; exit 1; fi

.PHONY: lint
lint: ## gofmt, go vet
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...

.PHONY: kube-tools
kube-tools: ## build kube-apiserver and kubectl for the Kubernetes tests (cached per version; cold 10-18 min)
	@GO=$(GO) tools/kube/build.sh >/dev/null

.PHONY: test
test: lint check-generate kube-tools ## lint, check generated code, run every test (as root: privileged tests run)
	$(GO) test -count=1 -timeout 20m ./...

.PHONY: test-unit
test-unit: ## run the tests that need no privileges
	$(GO) test -count=1 -short ./...

.PHONY: demo
demo: build ## bring the lab up, show capture at work, tear it down (as root)
	./scripts/demo.sh

.PHONY: bench
bench: build ## Go benchmarks, then the lab benchmark: direct vs mesh (h2, QUIC) vs nginx mTLS (as root)
	$(GO) test -run '^$$' -bench . -benchtime 3000x -count 3 ./internal/redirect/
	$(GO) test -run '^$$' -bench . -benchtime 2000x -count 3 ./internal/tunnel/
	$(BIN)/ambit-bench -o bench/out/bench.json $(BENCH_FLAGS)

.PHONY: clean
clean: ## remove build output
	rm -rf $(BIN)
