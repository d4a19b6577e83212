# End-to-end mail tests (tests/e2e): a relay and a Tor node booted with
# systemd-nspawn on a private test network, exchanging real mail; once with a
# trixie relay and a bookworm node, once the other way round.  As root:
#   make e2e    builds test packages into build/e2e (not dist/), boots, tests,
#               cleans up; prints the confinement's exposure scores at the end
# The base systems are cached mmdebstrap tarballs (tests/system), built the
# first time.  The tests skip themselves unless OIGNONS_MAIL_E2E=1 (set here and
# by `make check`), so that a plain `pytest tests` or `make unit` does not start them.

E2E_PACKAGES = systemd-container mmdebstrap debian-archive-keyring iproute2 util-linux openssl \
	swaks libnet-ssleay-perl python3-pytest python3-dnspython python3-dkim ldnsutils testssl.sh apt-utils gnupg
E2E_REPORT = build/e2e/report.txt

.PHONY: e2e e2e-deps

# $(call pytest_with_e2e,ARGUMENTS): pytest with the end-to-end tests enabled;
# the exposure report is printed whatever the outcome, the status kept.
define pytest_with_e2e
	OIGNONS_MAIL_E2E=1 $(PYTHON) -m pytest $(1); \
	status=$$?; [ ! -f $(E2E_REPORT) ] || cat $(E2E_REPORT); exit $$status
endef

e2e-deps: build-deps
	$(call apt_install_missing,$(E2E_PACKAGES))

e2e: e2e-deps
	$(call pytest_with_e2e,-p no:cacheprovider --durations=5 tests/e2e)
