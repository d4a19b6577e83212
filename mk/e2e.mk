# End-to-end mail tests (tests/e2e): a relay and a Tor node booted with
# systemd-nspawn on a private test network, exchanging real mail; once with a
# trixie relay and a bookworm node, once the other way round.  As root:
#   make e2e    builds test packages into build/e2e (not dist/), boots, tests,
#               cleans up; prints the confinement's exposure scores at the end
# The base systems are cached mmdebstrap tarballs (tests/system), built the
# first time.  The tests skip themselves unless OIGNONS_MAIL_E2E=1 (set here and
# by `make check`), so that a plain `pytest tests` or `make unit` does not start them.

E2E_PACKAGES = systemd-container mmdebstrap debian-archive-keyring iproute2 util-linux openssl \
	swaks libnet-ssleay-perl python3-pytest python3-pytest-xdist python3-dnspython python3-dkim python3-spf ldnsutils \
	testssl.sh apt-utils gnupg python3-prometheus-client nmap
# Each pytest-xdist worker (or a run without it: main) writes its own report.
E2E_REPORTS = build/e2e/*/report.txt
# Test files run side by side, each whole in one worker (its test beds are
# per file): most of their time is spent waiting for systems and mail, so
# three workers on two cores take well under half the time of one.
PYTEST_WORKERS = -n 3 --dist loadfile

.PHONY: e2e e2e-deps

# $(call pytest_with_e2e,ARGUMENTS): pytest with the end-to-end tests enabled;
# the runs' reports (exposure scores, the attacks' answers, ...) are printed
# whatever the outcome, then pytest's closing summary line again, the status kept.
define pytest_with_e2e
	rm -f $(E2E_REPORTS) build/pytest.log build/pytest.status; mkdir -p build; \
	{ OIGNONS_MAIL_E2E=1 $(PYTHON) -m pytest $(PYTEST_WORKERS) $(1); echo $$? > build/pytest.status; } 2>&1 \
		| tee build/pytest.log; \
	cat $(E2E_REPORTS) 2>/dev/null; tail -n 1 build/pytest.log; exit $$(cat build/pytest.status)
endef

e2e-deps: build-deps
	$(call apt_install_missing,$(E2E_PACKAGES))

e2e: e2e-deps
	$(call pytest_with_e2e,-p no:cacheprovider --durations=5 tests/e2e)
