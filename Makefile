# Two entry points on a fresh machine (as root): `make demo` and `make test`.
PYTHON ?= python3
PIP_FLAGS ?= -q --disable-pip-version-check --root-user-action=ignore
# frr: the peer router of the PIM interop tests (its daemons are started by the tests in their namespaces;
# policy-rc.d keeps the install from starting a host-wide FRR service)
DEB_PACKAGES = iproute2 ethtool tcpdump socat nftables smcroute tmux frr

.PHONY: deps demo test check bench fuzz

deps:
	@missing=""; for p in $(DEB_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		echo "installing:$$missing"; \
		guard=""; if [ ! -e /usr/sbin/policy-rc.d ]; then \
			printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod 755 /usr/sbin/policy-rc.d && guard=1; \
		fi; \
		rc=0; apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null || rc=$$?; \
		if [ -n "$$guard" ]; then rm -f /usr/sbin/policy-rc.d; fi; \
		exit $$rc; \
	fi
	$(PYTHON) -m pip install $(PIP_FLAGS) -e '.[test]'

demo: deps
	$(PYTHON) -m mcr demo

test: deps
	$(PYTHON) -m pytest

check: deps
	$(PYTHON) -m ruff check src tests
	$(PYTHON) -m ruff format --check src tests
	$(PYTHON) -m mypy

bench: deps
	$(PYTHON) -m pip install $(PIP_FLAGS) -e '.[test,bench]'
	$(PYTHON) bench/run.py

# The long fuzz: hypothesis with the `fuzz` profile (5,000 examples a property), then each atheris harness for
# FUZZ_SECONDS. Not part of `make test` or CI.
FUZZ_SECONDS ?= 180
fuzz: deps
	$(PYTHON) -m pip install $(PIP_FLAGS) -e '.[test,fuzz]'
	$(PYTHON) -m pytest tests/property --hypothesis-profile=fuzz --timeout=0 -q
	cd fuzz && $(PYTHON) fuzz_parse.py -max_total_time=$(FUZZ_SECONDS) -print_final_stats=1
	cd fuzz && $(PYTHON) fuzz_control.py -max_total_time=$(FUZZ_SECONDS) -dict=json.dict -print_final_stats=1
