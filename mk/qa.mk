# Debian QA: sbuild, autopkgtest and piuparts (docs/testing.md, "Debian QA").  As root:
#   make sbuild       source package (build/qa/source), sbuild in unshare mode for each
#                     release, then debian/tests with autopkgtest in an unshare testbed
#   make autopkgtest  only the autopkgtests, on the .debs of the last `make sbuild`
#   make piuparts     install/purge and upgrade tests of dist/*.deb, each package, each release
#   make qa-lint      shellcheck, ruff and mypy --strict on tests/qa and debian/tests (seconds)
# One release or package: make sbuild QA_RELEASES=trixie, make piuparts QA_PACKAGES=oignons-mail-relay.
# Releases and packages are independent targets: `make -j4 piuparts` runs them side by side.
# tests/qa/debian-qa does the work; it installs what it needs with apt-get.

QA_TOOL = tests/qa/debian-qa
QA_RELEASES = bookworm trixie
QA_PACKAGES = oignons-mail-smarthost oignons-mail-relay oignons-mail oignons-mail-archive-keyring

QA_SBUILD = $(QA_RELEASES:%=sbuild-%)
QA_AUTOPKGTEST = $(QA_RELEASES:%=autopkgtest-%)
QA_PIUPARTS_BASES = $(QA_RELEASES:%=piuparts-base-%)
QA_PIUPARTS = $(foreach release,$(QA_RELEASES),$(QA_PACKAGES:%=piuparts-$(release)-%))

QA_AUTOPKGTEST_SCRIPTS = debian/tests/smarthost debian/tests/relay debian/tests/tool

.PHONY: sbuild autopkgtest piuparts qa-lint qa-deps qa-user qa-source piuparts-prev \
	$(QA_SBUILD) $(QA_AUTOPKGTEST) $(QA_PIUPARTS_BASES) $(QA_PIUPARTS)

qa-deps:
	$(QA_TOOL) deps

qa-user: qa-deps
	$(QA_TOOL) user

qa-source: qa-deps
	$(QA_TOOL) source

sbuild: $(QA_SBUILD)

$(QA_SBUILD): sbuild-%: qa-user qa-source
	$(QA_TOOL) sbuild $*
	$(QA_TOOL) autopkgtest $*

autopkgtest: $(QA_AUTOPKGTEST)

$(QA_AUTOPKGTEST): autopkgtest-%: qa-user qa-source
	$(QA_TOOL) autopkgtest $*

piuparts: $(QA_PIUPARTS)

$(QA_PIUPARTS_BASES): piuparts-base-%: qa-deps
	$(QA_TOOL) piuparts-base $*

piuparts-prev: qa-deps deb
	$(QA_TOOL) piuparts-prev

define QA_PIUPARTS_RULE
piuparts-$(1)-$(2): piuparts-base-$(1) piuparts-prev
	$$(QA_TOOL) piuparts $(1) $(2)
endef
$(foreach release,$(QA_RELEASES),$(foreach package,$(QA_PACKAGES),\
	$(eval $(call QA_PIUPARTS_RULE,$(release),$(package)))))

# debian/tests' scripts have no .py suffix: mypy checks them one at a time.
qa-lint: check-deps
	shellcheck -s sh $(QA_TOOL)
	$(VENV)/bin/ruff check tests/qa debian/tests/oignons_autopkgtest.py $(QA_AUTOPKGTEST_SCRIPTS)
	$(VENV)/bin/ruff format --check tests/qa debian/tests/oignons_autopkgtest.py $(QA_AUTOPKGTEST_SCRIPTS)
	for script in $(QA_AUTOPKGTEST_SCRIPTS); do \
		MYPYPATH=debian/tests $(VENV)/bin/mypy --strict --python-version 3.11 $$script || exit 1; \
	done
