# Two entry points on a fresh machine (as root): `make demo` and `make test`.
# Everything Python runs from the project's own virtual environment, $(VENV) (made with $(PYTHON) -m venv):
# nothing is installed into the system interpreter (PEP 668), so the distribution's python3 works as well as any.
PYTHON ?= python3
VENV ?= .venv
VPY = $(VENV)/bin/python
# frr: the peer router of the PIM/MSDP interop tests (the tests start its daemons in their namespaces;
# policy-rc.d keeps the install from starting a host-wide FRR service)
DEB_PACKAGES = iproute2 ethtool tcpdump socat nftables smcroute tmux frr

# `make install`: MCR in its own virtual environment under PREFIX, its commands linked into BINDIR, the
# systemd unit into UNITDIR, the sample config into CONFDIR (if none), the control group MCR_GROUP (empty:
# none). `make uninstall` removes what the install added (PREFIX/install-manifest lists it).
PREFIX ?= /opt/mcr
BINDIR ?= /usr/local/bin
UNITDIR ?= /etc/systemd/system
CONFDIR ?= /etc/mcr
MCR_GROUP ?= mcr
INSTALL_ENV = PYTHON=$(PYTHON) PREFIX=$(PREFIX) BINDIR=$(BINDIR) UNITDIR=$(UNITDIR) CONFDIR=$(CONFDIR) MCR_GROUP=$(MCR_GROUP)

.PHONY: deps debs venv demo test check bench fuzz install uninstall

deps: debs venv

debs:
	@missing=""; for p in $(DEB_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		echo "installing:$$missing"; \
		guard=""; if [ ! -e /usr/sbin/policy-rc.d ]; then \
			printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod 755 /usr/sbin/policy-rc.d && guard=1; \
		fi; \
		rc=0; { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; } || rc=1; \
		if [ -n "$$guard" ]; then rm -f /usr/sbin/policy-rc.d; fi; \
		if [ $$rc -ne 0 ]; then \
			echo "error: could not install$$missing with apt-get (run as root, with a reachable package mirror)" >&2; exit 1; \
		fi; \
	fi

# The stamp is rebuilt when pyproject.toml changes (new dependencies).
venv: $(VENV)/.mcr-test
$(VENV)/.mcr-test: pyproject.toml packaging/venv.sh
	@packaging/venv.sh $(PYTHON) $(VENV) -e '.[test]'
	@touch $@

demo: deps
	$(VPY) -m mcr demo

test: deps
	$(VPY) -m pytest

check: deps
	$(VPY) -m ruff check src tests
	$(VPY) -m ruff format --check src tests
	$(VPY) -m mypy

bench: deps
	@packaging/venv.sh $(PYTHON) $(VENV) -e '.[test,bench]'
	$(VPY) bench/run.py

# The long fuzz: hypothesis with the `fuzz` profile (5,000 examples a property), then each atheris harness for
# FUZZ_SECONDS. Not part of `make test` or CI.
FUZZ_SECONDS ?= 180
fuzz: deps
	@packaging/venv.sh $(PYTHON) $(VENV) -e '.[test,fuzz]'
	$(VPY) -m pytest tests/property --hypothesis-profile=fuzz --timeout=0 -q
	cd fuzz && $(abspath $(VPY)) fuzz_parse.py -max_total_time=$(FUZZ_SECONDS) -print_final_stats=1
	cd fuzz && $(abspath $(VPY)) fuzz_control.py -max_total_time=$(FUZZ_SECONDS) -dict=json.dict -print_final_stats=1
	cd fuzz && $(abspath $(VPY)) fuzz_routing.py -max_total_time=$(FUZZ_SECONDS) -print_final_stats=1
	cd fuzz && $(abspath $(VPY)) fuzz_membership.py -max_total_time=$(FUZZ_SECONDS) -print_final_stats=1

install:
	@$(INSTALL_ENV) packaging/install.sh install

uninstall:
	@$(INSTALL_ENV) packaging/install.sh uninstall
