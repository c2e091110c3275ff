# vmesh: `make demo` shows Bookinfo on local test VMs through Envoy sidecars; `make test` runs every test.
SHELL := /bin/bash
INVENTORY ?= examples/bookinfo/inventory
VENV := $(CURDIR)/.venv
export PATH := $(VENV)/bin:$(PATH)
export ANSIBLE_CONFIG := $(CURDIR)/ansible.cfg
export ANSIBLE_FORCE_COLOR ?= 0

.PHONY: setup image tools tool-jaeger tool-ratelimit prepare demo demo-vms demo-traffic demo-canary demo-ratelimit demo-down test test-unit lint bench clean

setup:
	@scripts/setup.sh

image: setup
	vmesh lab image
	vmesh lab image --minimal

## Jaeger and Envoy's rate-limit service, built from their Go modules (minutes the first time; kept in
## ~/.cache/vmesh/tools, as `vmesh tools` does).
tools: tool-jaeger tool-ratelimit

# One tool each. They need only Go and Python's standard library, not the set-up: Jaeger, the longest, builds
# while the set-up installs the packages and the project.
tool-jaeger:
	PYTHONPATH=src python3 -m vmesh.tools jaeger

tool-ratelimit:
	PYTHONPATH=src python3 -m vmesh.tools ratelimit ratelimit-check

# The set-up and test VM images beside the tools: the one mostly downloads, the other mostly compiling.
prepare:
	@$(MAKE) --no-print-directory -j2 image tool-jaeger tool-ratelimit

## The demo: six Bookinfo VMs, an ingress VM, the online CA VM, a monitoring VM (Prometheus, Jaeger) and a rate-limit VM, the mesh (STRICT mTLS) on them, and traffic a person can see. The VMs stay up.
## On a fresh machine the tools build while the VMs come up and get Bookinfo; the mesh goes on when both are done.
demo:
	@$(MAKE) --no-print-directory -j2 demo-vms tool-jaeger tool-ratelimit
	ansible-playbook -i $(INVENTORY) vmesh.mesh.site
	@$(MAKE) --no-print-directory demo-traffic

# The demo's VMs with Bookinfo on them, no mesh yet (part of make demo).
demo-vms: setup
	vmesh lab image
	scripts/demo-certs.sh
	vmesh lab up --inventory $(INVENTORY)
	ansible-playbook -i $(INVENTORY) examples/bookinfo/bookinfo.yml

demo-traffic:
	@ansible-playbook -i $(INVENTORY) examples/bookinfo/demo-traffic.yml

## A canary rollout of reviews v3 on the running demo (after `make demo`), under steady traffic; prints the step table.
## Each run starts afresh: the demo's earlier rollout state is removed first.
demo-canary: setup
	rm -f $(INVENTORY)/rollouts/reviews.json $(INVENTORY)/rollouts/reviews.txt $(INVENTORY)/rollouts/reviews.png
	ansible-playbook -i $(INVENTORY) examples/bookinfo/demo-canary.yml -e @examples/bookinfo/reviews-v3-rollout.yml

## The seed's global rate limit on the running demo (after `make demo`): Istio's EnvoyFilter sample on the ingress,
## the rate-limit VM counting; 5 requests a minute to /productpage, the 6th gets 429. The filter is removed after.
demo-ratelimit: setup
	ansible-playbook -i $(INVENTORY) examples/bookinfo/demo-ratelimit.yml

demo-down: setup
	vmesh lab down --inventory $(INVENTORY)

## All tests: lint, compiler and CLI (pytest), modules and data path in network namespaces, molecule on test VMs.
## The tests that need neither root nor VMs run on two workers; those in namespaces and on VMs one at a time, as they
## share the machine's network names.
test: prepare lint
	pytest -q -p no:cacheprovider -n 2 -m "not netns and not vm" tests
	pytest -q -p no:cacheprovider -m "netns or vm" tests
	cd $(CURDIR) && molecule test --all

lint: setup
	ansible-lint

test-unit: setup
	pytest -q -n 2 -m "not netns and not vm" tests

## Benchmarks that need no VMs: they print figures and ratios measured in one run, never a pass or a fail.
bench: setup
	python bench/compile_scale.py
	python bench/ansible_scale.py --hosts 20 80

clean: demo-down
	rm -rf .cache build *.egg-info
