# oignons-mail: build and test.  On a fresh Debian bookworm machine, as root
# (after `apt-get install make git`, to clone and run this):
#   make deb     build dist/oignons-mail-*.deb for SITE (default: the association's)
#   make unit    unit, golden and QA-static tests: no root, no network (build-deps installed)
#   make check   every test: unit, golden, lint, lintian, installs into real systems,
#                mail between two booted systems (make e2e)
#   make sbuild, make piuparts   Debian QA (mk/qa.mk)
#   make repo REPO_URI=URI SITE=FILE   the site's signed APT repository in dist/repo (mk/repo.mk)
# Each but make unit installs what it needs with apt-get first.

SHELL = /bin/sh
# Debian's python3 and tools, whatever else PATH may put first.
export PATH := /usr/sbin:/usr/bin:/sbin:/bin
export DEBIAN_FRONTEND = noninteractive

SITE ?= sites/nos-oignons.toml
PYTHON = /usr/bin/python3
TOOL_PYTHONPATH = PYTHONPATH=src
# -P: the checkout's debian/ folder must not be taken for python3-debian's module.
TOOL = $(TOOL_PYTHONPATH) $(PYTHON) -P -m oignons_mail
VENV = build/venv
APT_INSTALL = apt-get install -y --no-install-recommends
# $(call apt_install_missing,PACKAGES): install those not installed yet (apt-get update first).
define apt_install_missing
	@missing=$$(for p in $(1); do dpkg-query -W -f='$${db:Status-Status}\n' $$p 2>/dev/null | grep -qx installed || echo $$p; done); \
	if [ -n "$$missing" ]; then apt-get update -q && $(APT_INSTALL) $$missing; fi
endef
# Lint tools pinned so that a new release cannot break `make check` by itself.
RUFF_VERSION = 0.17.6
MYPY_VERSION = 2.4.1

# What `make check` needs beyond the build-dependencies.
CHECK_PACKAGES = shellcheck lintian mmdebstrap python3-pytest python3-pytest-xdist python3-dnspython python3-venv python3-pip \
	debian-archive-keyring util-linux

SHELL_SCRIPTS = bin/oignons-mail scripts/postfix-apply scripts/postfix-apply-plan scripts/dkim-keys scripts/postsrsd-launcher scripts/heartbeat debian/*.postinst debian/*.prerm debian/*.postrm debian/*.config

.PHONY: deb check unit lint lintian system-test build-deps check-deps clean bench

# The unit tests are make check's (and sbuild's, which builds without
# nocheck): building the packages for a site does not run them again.
deb: build-deps
	DEB_BUILD_OPTIONS="nocheck $$DEB_BUILD_OPTIONS" $(TOOL) build --site $(SITE)

build-deps:
	@if ! command -v dpkg-checkbuilddeps >/dev/null || ! dpkg-checkbuilddeps 2>/dev/null; then \
		echo "Installing the build-dependencies"; \
		apt-get update -q && $(APT_INSTALL) dpkg-dev build-essential && apt-get build-dep -y ./ ; \
	fi

check-deps: build-deps
	$(call apt_install_missing,$(CHECK_PACKAGES))
	@if [ ! -x $(VENV)/bin/mypy ] || [ ! -x $(VENV)/bin/ruff ]; then \
		$(PYTHON) -m venv --system-site-packages $(VENV) && \
		$(VENV)/bin/pip install -q ruff==$(RUFF_VERSION) mypy==$(MYPY_VERSION); \
	fi

# The whole suite, the end-to-end mail tests included (mk/e2e.mk; minutes).
check: check-deps e2e-deps deb lint qa-lint lintian
	$(call pytest_with_e2e,tests)

# No root, no network, no apt-get: needs the build-dependencies already installed
# (python3-pytest, python3-debian, python3-jinja2, openssl; `make build-deps`, as root).
unit:
	$(PYTHON) -P -m pytest tests -m "not system"

lint: check-deps
	$(VENV)/bin/ruff check src tests bench scripts/oignons_mail_responder.py
	$(VENV)/bin/ruff format --check src tests bench scripts/oignons_mail_responder.py
	$(VENV)/bin/mypy
	shellcheck -s sh $(SHELL_SCRIPTS)
	$(TOOL) validate $(SITE)

# Errors and warnings fail; info and pedantic tags are shown (docs/testing.md, "Lintian", says why they remain).
# The keyring package too, built as `oignons-mail repo` builds it (tests/qa/keyring_deb.py).
lintian: check-deps
	rm -rf build/lintian
	$(TOOL_PYTHONPATH) $(PYTHON) -P tests/qa/keyring_deb.py $(SITE) build/lintian
	lintian --fail-on error,warning --display-info --pedantic dist/*.deb build/lintian/*.deb

system-test: check-deps deb
	$(PYTHON) -m pytest tests -m system

# dist/repo is the published repository (every version nodes may roll back to): kept.
clean:
	rm -rf build
	find dist -mindepth 1 -maxdepth 1 ! -name repo -exec rm -rf {} + 2>/dev/null || true

# QA (piuparts, sbuild, autopkgtest) and end-to-end mail tests live in their own files.
include $(wildcard mk/*.mk)

# Figures, not tests: timings of validation and rendering, package sizes,
# the responder's time on hostile messages at several sizes (linear growth).
# As root: builds, installs into chroots, boots test systems (docs/benchmarks.md).
# Installs what it needs first, as make check does (python3-debian, mmdebstrap, nspawn, ...).
bench: check-deps e2e-deps deb
	$(TOOL_PYTHONPATH) $(PYTHON) bench/bench.py
	PYTHONPATH=$(CURDIR) $(PYTHON) bench/responder_hostile.py
	$(PYTHON) bench/figures.py
