# The fleet's signed APT repository (src/oignons_mail/repo.py; docs/fleet.md, "Running a fleet").
#   make repo REPO_URI=https://apt.example.org/oignons SITE=path/to/site.toml
# builds the packages (make deb) and publishes them, with every version
# published before, into dist/repo, signed with the key in
# $OIGNONS_MAIL_GNUPGHOME (default ~/.local/share/oignons-mail/gnupg, made on
# first use; never in the tree).  Copy dist/repo to the web server as it is.

REPO_PACKAGES = apt-utils gnupg dpkg-dev
REPO_DIR = dist/repo

.PHONY: repo repo-site

# dist/repo belongs to the site it was first published for (its Release's
# Origin): another site, or no SITE= for another site's repository, is
# refused before anything is built or written.
repo-site:
	@if [ -z "$(REPO_URI)" ]; then echo "make repo: set REPO_URI=<http URI where $(REPO_DIR) will be served>" >&2; exit 2; fi
	$(TOOL) repo --check-site --uri '$(REPO_URI)' --site $(SITE) --repo $(REPO_DIR)

repo: repo-site deb
	$(call apt_install_missing,$(REPO_PACKAGES))
	$(TOOL) repo --uri '$(REPO_URI)' --site $(SITE) --repo $(REPO_DIR)
