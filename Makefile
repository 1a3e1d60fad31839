# ironic-edge developer entry points.
#
#   make build   cargo build --release
#   make run     local Redis + real Ironic (seeded demo nodes) + the gateway in the foreground
#   make stop    stop what `make run` started (by pid files under .run/)
#   make test    install the real Ironic/IPA venv if missing, then cargo test --all-targets
#   make bench   scripts/bench.sh
#   make lint    cargo fmt --check + cargo clippy --all-targets -- -D warnings
#
# Every port can be overridden: make run REDIS_PORT=16379 IRONIC_PORT=16385 GATEWAY_PORT=16380 OPS_PORT=19380
# The Ironic venv (ironic==39.0.0, ironic-python-agent==13.0.0) lives in $IRONIC_PEER_VENV
# (default ~/.cache/ironic-edge/venv),
# installed once and shared by make run, make test and CI.

SHELL := /bin/bash
.DEFAULT_GOAL := build

CARGO ?= cargo
REDIS_PORT ?= 6379
IRONIC_PORT ?= 6385
GATEWAY_PORT ?= 6380
OPS_PORT ?= 9380
DEMO_NODES ?= 3
DEMO_PORTS ?= 2
XDG_CACHE_HOME ?= $(HOME)/.cache
IRONIC_PEER_VENV ?= $(XDG_CACHE_HOME)/ironic-edge/venv
IRONIC_EDGE_SCRIPTS ?= $(CURDIR)/scripts

export REDIS_PORT IRONIC_PORT GATEWAY_PORT OPS_PORT DEMO_NODES DEMO_PORTS
export IRONIC_PEER_VENV IRONIC_EDGE_SCRIPTS

.PHONY: build run deps stop test venv bench fleet-bench sync-cost lint fmt clean-run help

help:
	@sed -n '3,13p' $(firstword $(MAKEFILE_LIST)) | sed 's/^# \{0,1\}//'

build:
	$(CARGO) build --release

# the Ironic/IPA virtualenv (no-op when it is already there)
venv:
	bash scripts/ironic-peer-up.sh --install-only >/dev/null

run: build
	bash scripts/run-local.sh run

# Redis + Ironic + the curl examples, without the gateway
deps:
	bash scripts/run-local.sh deps

stop:
	bash scripts/run-local.sh stop

# Test binaries run one after the other; within one, at most TEST_THREADS tests at once (the
# conformance and sync tests each run a real Ironic: more at once only slows a 2-core machine).
TEST_THREADS ?= 4
test: venv
	$(CARGO) test --all-targets -- --test-threads=$(TEST_THREADS)

bench:
	@test -f scripts/bench.sh || { echo "scripts/bench.sh is missing" >&2; exit 1; }
	bash scripts/bench.sh

# N simulated agents with IPA's timing, straight to Ironic and through the gateway, with an outage
fleet-bench:
	bash scripts/fleet-bench.sh

# what the node sync costs Ironic at 1,000 and 10,000 nodes
sync-cost:
	bash scripts/sync-cost.sh

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all

# remove the run folders of stopped services (config, db, logs, seed files)
clean-run: stop
	rm -rf .run
