# meshvm: hostctl (workstation CLI) and vmagent (on-VM agent).
SHELL := /bin/bash
.DEFAULT_GOAL := help

VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
ARCHES  ?= amd64 arm64
GOBIN   ?= $(shell go env GOPATH)/bin
export PATH := $(GOBIN):$(PATH)

# Tools come from the Go module proxy at pinned versions (CI reaches nothing else).
BUF_VERSION                ?= v1.75.0
PROTOC_GEN_GO_VERSION      ?= v1.36.12
PROTOC_GEN_GO_GRPC_VERSION ?= v1.6.2
# nfpm v2.46.0 and later need go.digitalxero.dev modules, which the module
# proxy refuses (403); v2.45.2 is the newest that installs from it.
NFPM_VERSION               ?= v2.45.2
# staticcheck 2026.2.2: the v0.8 line is the first built for Go 1.26.
STATICCHECK_VERSION        ?= v0.8.2
# controller-gen v0.21.0 is the line built against Kubernetes 1.36, as go.mod is.
CONTROLLER_GEN_VERSION     ?= v0.21.0

# The .deb/.rpm version: git describe's "abc1234" or "v1.2.0-3-gabc1234" is
# valid for neither dpkg nor rpm, so version.sh maps it (0.0.0~git42.abc1234).
PKG_VERSION ?= $(shell sh packaging/version.sh)

# pkg/buildinfo.AgentTags (its test checks they agree): gRPC without x/net/trace.
GOTAGS  := grpcnotrace
LDFLAGS := -s -w -X github.com/meshvm/meshvm/pkg/buildinfo.Version=$(VERSION)

.PHONY: help
help: ## Show this help
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-16s %s\n", $$1, $$2}'

.PHONY: tools
tools: ## Install buf, protoc plugins, nfpm, staticcheck and controller-gen at pinned versions
	@command -v buf >/dev/null && buf --version | grep -qx '$(BUF_VERSION:v%=%)' || go install github.com/bufbuild/buf/cmd/buf@$(BUF_VERSION)
	@command -v protoc-gen-go >/dev/null && protoc-gen-go --version | grep -q '$(PROTOC_GEN_GO_VERSION)' || go install google.golang.org/protobuf/cmd/protoc-gen-go@$(PROTOC_GEN_GO_VERSION)
	@command -v protoc-gen-go-grpc >/dev/null && protoc-gen-go-grpc --version | grep -q '$(PROTOC_GEN_GO_GRPC_VERSION:v%=%)' || go install google.golang.org/grpc/cmd/protoc-gen-go-grpc@$(PROTOC_GEN_GO_GRPC_VERSION)
	@command -v nfpm >/dev/null && go version -m "$$(command -v nfpm)" | grep -q 'nfpm/v2[[:space:]]*$(NFPM_VERSION)[[:space:]]' || go install github.com/goreleaser/nfpm/v2/cmd/nfpm@$(NFPM_VERSION)
	@command -v staticcheck >/dev/null && staticcheck -version | grep -q '($(STATICCHECK_VERSION:v%=%))' || go install honnef.co/go/tools/cmd/staticcheck@$(STATICCHECK_VERSION)
	@command -v controller-gen >/dev/null && controller-gen --version | grep -qx 'Version: $(CONTROLLER_GEN_VERSION)' || go install sigs.k8s.io/controller-tools/cmd/controller-gen@$(CONTROLLER_GEN_VERSION)

# hostctl embeds the agents make build copies here (git-ignored), so one
# downloaded hostctl is all a user needs; HOSTCTL_TARGETS are the
# workstations it is built for, bin/hostctl the one for this machine.
AGENT_EMBED     := hostctl/internal/agentbin/vmagent
# The controller of fleet mode, for hostctl fleet install to build its image from.
CONTROLLER_EMBED := hostctl/internal/agentbin/controller
HOSTCTL_TARGETS ?= darwin/arm64 darwin/amd64 linux/amd64 linux/arm64
GOOS_HOST       := $(shell go env GOOS)
GOARCH_HOST     := $(shell go env GOARCH)

.PHONY: build
build: ## Static vmagent and controller for linux/amd64 and arm64, then hostctl (embedding them) for macOS and Linux, into bin/
	@set -e; for arch in $(ARCHES); do \
	  echo "build bin/vmagent-linux-$$arch"; \
	  CGO_ENABLED=0 GOOS=linux GOARCH=$$arch go build -trimpath -tags '$(GOTAGS)' -ldflags '$(LDFLAGS)' -o bin/vmagent-linux-$$arch ./vmagent; \
	done
	@go run ./packaging/checkstatic bin/vmagent-linux-*
	@rm -f $(AGENT_EMBED)/vmagent-linux-*; set -e; for arch in $(ARCHES); do cp bin/vmagent-linux-$$arch $(AGENT_EMBED)/; done
	@rm -f $(CONTROLLER_EMBED)/meshvm-controller-linux-*; set -e; if [ -d controller ]; then for arch in $(ARCHES); do \
	  echo "build bin/meshvm-controller-linux-$$arch"; \
	  CGO_ENABLED=0 GOOS=linux GOARCH=$$arch go build -trimpath -tags '$(GOTAGS)' -ldflags '$(LDFLAGS)' -o bin/meshvm-controller-linux-$$arch ./controller; \
	  go run ./packaging/checkstatic bin/meshvm-controller-linux-$$arch; gzip -9 -n -c bin/meshvm-controller-linux-$$arch > $(CONTROLLER_EMBED)/meshvm-controller-linux-$$arch.gz; \
	done; else echo "no ./controller yet: hostctl is built without fleet mode's controller (hostctl fleet install says so)"; fi
	@set -e; for target in $(HOSTCTL_TARGETS); do \
	  os=$${target%/*}; arch=$${target#*/}; \
	  echo "build bin/hostctl-$$os-$$arch"; \
	  CGO_ENABLED=0 GOOS=$$os GOARCH=$$arch go build -trimpath -tags '$(GOTAGS)' -ldflags '$(LDFLAGS)' -o bin/hostctl-$$os-$$arch ./hostctl; \
	done
	ln -sf hostctl-$(GOOS_HOST)-$(GOARCH_HOST) bin/hostctl

# vet-darwin keeps the workstation side (hostctl and the pkg/ groups it
# builds on, tests included) building on macOS, both arches: a Linux-only
# call outside a build constraint fails here, not on a user's Mac.
WORKSTATION := ./hostctl/... ./pkg/host/... ./pkg/mesh/... ./pkg/machine/... ./lab/...
.PHONY: vet-darwin
vet-darwin: ## go vet hostctl and the workstation packages for darwin/arm64 and darwin/amd64
	@set -e; for arch in arm64 amd64; do \
	  echo "vet the workstation side for darwin/$$arch"; \
	  CGO_ENABLED=0 GOOS=darwin GOARCH=$$arch go vet $(WORKSTATION); \
	done

# staticcheck runs its default checks on the whole tree for Linux, and on
# the workstation side for darwin/arm64 (its build-constrained files).
# Findings are fixed; the few that are wrong carry a //lint:ignore with
# the reason.
.PHONY: staticcheck
staticcheck: tools ## staticcheck the tree, and the workstation side for darwin
	staticcheck ./...
	CGO_ENABLED=0 GOOS=darwin GOARCH=arm64 staticcheck $(WORKSTATION)

.PHONY: generate
generate: tools ## Regenerate Go code from proto/ with buf, and the MeshVM API's deepcopy and CRD with controller-gen
	buf format -w
	buf generate
	controller-gen object paths=./api/... crd:crdVersions=v1 output:crd:dir=./api/meshvm/crd

.PHONY: check-generate
check-generate: generate ## Fail if generated code or formatting is out of date
	@git diff --exit-code -- proto api || { echo "generated code is stale: run 'make generate' and commit the result"; exit 1; }
	@test -z "$$(git status --porcelain -- proto api)" || { git status --porcelain -- proto api; echo "untracked generated files: run 'make generate' and commit them"; exit 1; }

.PHONY: proto-lint
proto-lint: tools ## Lint the API with buf (STANDARD)
	buf lint

# PROTO_BASELINE is the API as it last shipped (a landed commit): agents and
# hostctls built from it must keep working with this tree's. Comparing
# against main compared main with itself. Move it forward when a stop lands.
PROTO_BASELINE ?= ddf4bfc
.PHONY: proto-breaking
proto-breaking: tools ## Check the API against PROTO_BASELINE (the last shipped commit) for breaking changes
	@git cat-file -e '$(PROTO_BASELINE)^{commit}' 2>/dev/null || { echo "proto-breaking: baseline $(PROTO_BASELINE) is not in this clone: git fetch --unshallow, or set PROTO_BASELINE=<commit>" >&2; exit 1; }
	buf breaking --against '.git#ref=$(PROTO_BASELINE)'

.PHONY: vet
vet: ## go vet
	go vet ./...

# MESHVM_LAB=1 turns on the tests that boot systemd VMs (systemd-nspawn in
# network namespaces); MESHVM_LAB_BUILD=1 the ones that build the lab's
# control plane from source (minutes the first time, cached in MESHVM_CACHE)
# and run it. Each lab claims an instance (its own ports, addresses and
# names), but the machine has 2 cores: -p 1 runs the packages one at a time.
# BESIDE are lab tests that mostly wait (TestFleetOnLab waits out the API
# server's 10-minute token floor): make test runs them in a second go test
# process beside the rest, each lab in an instance of its own (lab/instance),
# and prints their output, prefixed, when both are done.
BESIDE     ?= ^TestFleetOnLab$$
BESIDE_PKG ?= ./hostctl/internal/cli
LAB_ENV    := MESHVM_LAB=1 MESHVM_LAB_BUILD=1

.PHONY: test
test: check-generate proto-lint vet vet-darwin staticcheck build ## Run every check and test, the lab end to end included (what CI runs)
	@log=$$(mktemp); start=$$SECONDS; \
	echo "go test -run '$(BESIDE)' $(BESIDE_PKG) runs beside the rest; its output follows theirs"; \
	$(LAB_ENV) go test -race -count=1 -timeout 60m -run '$(BESIDE)' $(BESIDE_PKG) >$$log 2>&1 & beside=$$!; \
	$(LAB_ENV) go test -race -count=1 -p 1 -timeout 60m -skip '$(BESIDE)' ./...; rest=$$?; \
	echo "== the rest: exit $$rest after $$((SECONDS - start))s; waiting for $(BESIDE)"; \
	wait $$beside; besiderc=$$?; \
	echo "== $(BESIDE) in $(BESIDE_PKG): exit $$besiderc after $$((SECONDS - start))s"; \
	sed 's/^/[beside] /' $$log; rm -f $$log; \
	test $$rest -eq 0 && test $$besiderc -eq 0

.PHONY: test-multipass
test-multipass: build ## Only the Multipass lab tests (root; make test runs them too): the stand-in's every command, and hostctl up through it
	MESHVM_LAB=1 MESHVM_LAB_BUILD=1 go test -count=1 -p 1 -timeout 60m -run 'TestStandinOnLabVM|TestUpOnMultipass' ./lab/multipass ./hostctl/internal/cli

.PHONY: test-proxyless
test-proxyless: ## Only the proxyless lab test (root; make test runs it too): two VMs calling each other over Istio's mTLS, without Envoy
	MESHVM_LAB=1 MESHVM_LAB_BUILD=1 go test -count=1 -p 1 -timeout 30m -run 'TestProxylessOnLab' ./hostctl/internal/cli

.PHONY: test-short
test-short: ## Unit tests only, no race detector
	go test -short ./...

.PHONY: bench
bench: ## Agent benchmarks: delivery throughput vs local copy, RSS, binary size, 200 concurrent and 200 stalled deliveries; then every flood (peak RSS, fds, children, a valid caller served)
	go run ./bench/agentbench
	go run ./bench/floodbench

.PHONY: bench-status
bench-status: ## vm status fan-out over 100 real agents on loopback vs one after another
	go run ./bench/statusbench

# Fleet sizes of make bench-fleet: FLEET_VMS for every row, FLEET_CONTROLLER_VMS
# for the controller rows (e.g. FLEET_CONTROLLER_VMS=1000,5000: the stretch row).
FLEET_VMS ?= 100,1000
FLEET_CONTROLLER_VMS ?= $(FLEET_VMS)

.PHONY: bench-fleet
bench-fleet: ## Fleet scale harness (root): 100 and 1,000 simulated agents on loopback, the lab's API server, istiod's autoregistration stood in: memory per agent, Watch vs GetStatus polling, the core onboarding all VMs; the controller (2 replicas): all Ready, writes per VM, at rest, sidecar stop, forced rotation, the leader killed (FLEETBENCH_FLAGS=-help)
	go run ./bench/fleetbench -vms $(FLEET_VMS) -controller-vms $(FLEET_CONTROLLER_VMS) $(FLEETBENCH_FLAGS)

.PHONY: bench-link
bench-link: ## Sidecar delivery over a veth link shaped by tc tbf (100 Mbit, 1 Gbit, unshaped) vs scp and scp -C (root, openssh-server)
	go run ./bench/linkbench

.PHONY: bench-lab
bench-lab: ## Lab benchmarks (root): re-onboard vs reinstall, onboarding 1/10/50 VMs, agent RSS on a VM, rolling vm upgrade of 10 VMs
	go run ./bench/labbench

.PHONY: fuzz
fuzz: ## Fuzz the /etc/hosts merge and the file delivery policy, 60s each
	go test ./vmagent/internal/hostsfile -run '^$$' -fuzz FuzzMerge -fuzztime 60s
	go test ./vmagent/internal/vmfiles -run '^$$' -fuzz FuzzPolicy -fuzztime 60s

.PHONY: package
package: tools build ## Build vmagent .deb and .rpm for amd64 and arm64 into dist/
	@rm -rf dist; mkdir -p dist; set -e; for arch in $(ARCHES); do for fmt in deb rpm; do \
	  ARCH=$$arch VERSION='$(PKG_VERSION)' nfpm package -f packaging/nfpm.yaml -p $$fmt -t dist/; \
	done; done; ls -l dist

HOSTCTL := bin/hostctl

.PHONY: lab-deps
lab-deps: ## Install what the lab needs (Debian/Ubuntu, as root)
	@missing=""; for t in etcd debootstrap systemd-nspawn nsenter iptables ip; do command -v $$t >/dev/null || missing="$$missing $$t"; done; \
	if [ -n "$$missing" ]; then echo "lab: installing what provides:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
	    etcd-server debootstrap systemd-container util-linux iptables iproute2 ca-certificates >/dev/null; fi

# The lab needs hostctl for this machine only.
lab: HOSTCTL_TARGETS := $(GOOS_HOST)/$(GOARCH_HOST)
.PHONY: lab
lab: lab-deps build ## Bring up the local lab in fleet mode: control plane built from source, a systemd VM declared as a MeshVM and kept Ready by the controller
	MESHVM_SOURCE=$(CURDIR) $(HOSTCTL) up --provider lab --timeout 60m   # fleet mode is the lab's default: the controller (a lab process) onboards the VM
	$(HOSTCTL) vm status   # no flags: hostctl remembers the site up used; READY is the MeshVM's
	$(HOSTCTL) fleet status   # what kubectl get meshvms shows

.PHONY: lab-down
lab-down: ## Remove the lab's VMs and control plane
	MESHVM_SOURCE=$(CURDIR) $(HOSTCTL) down --provider lab

.PHONY: clean
clean: ## Remove build output
	rm -rf bin dist $(AGENT_EMBED)/vmagent-linux-*
