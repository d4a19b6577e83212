# End-to-end mail tests (tests/e2e): a relay and a Tor node booted with
# systemd-nspawn on a private test network, exchanging real mail; once with a
# trixie relay and a bookworm node, once the other way round.  As root:
#   make e2e    builds test packages into build/e2e (not dist/), boots, tests,
#               cleans up; prints the confinement's exposure scores at the end
# The base systems are cached mmdebstrap tarballs (tests/system), built the
# first time.  The tests skip themselves unless OIGNONS_MAIL_E2E=1 (set here and
# by `make check`), so that a plain `pytest tests` or `make unit` does not start them.

E2E_PACKAGES = systemd-container mmdebstrap debian-archive-keyring iproute2 util-linux openssl \
	swaks libnet-ssleay-perl python3-pytest
E2E_REPORT = build/e2e/report.txt

.PHONY: e2e e2e-deps

e2e-deps: build-deps
	@missing=$$(for p in $(E2E_PACKAGES); do dpkg-query -W -f='$${db:Status-Status}\n' $$p 2>/dev/null | grep -qx installed || echo $$p; done); \
	if [ -n "$$missing" ]; then apt-get update -q && $(APT_INSTALL) $$missing; fi

e2e: e2e-deps
	OIGNONS_MAIL_E2E=1 $(PYTHON) -m pytest -p no:cacheprovider --durations=5 tests/e2e; \
	status=$$?; [ ! -f $(E2E_REPORT) ] || cat $(E2E_REPORT); exit $$status
