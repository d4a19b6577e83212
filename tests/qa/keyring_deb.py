"""Build the fleet's keyring package as `oignons-mail repo` does, without publishing it: for `make lintian`.

    PYTHONPATH=src python3 -P tests/qa/keyring_deb.py SITE OUTPUT_DIRECTORY

The same functions as `oignons-mail repo` (repo.keyring_package_files,
repo.build_keyring_deb), the version and maintainer of debian/changelog, the
site's domain; a throwaway key, made in a temporary GNUPGHOME, stands for the
fleet's signing key.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

from oignons_mail import repo
from oignons_mail.build import release_entry
from oignons_mail.site import load_site

URI = "http://apt.example.org/oignons/"


def throwaway_public_key() -> bytes:
    with tempfile.TemporaryDirectory(prefix="oignons-lintian-gnupg-") as home:
        gpg = ["gpg", "--homedir", home, "--batch", "--quiet", "--passphrase", ""]
        user = "lintian <lintian@example.org>"
        subprocess.run([*gpg, "--quick-gen-key", user, "ed25519", "sign", "never"], check=True)
        return subprocess.run([*gpg, "--export"], check=True, capture_output=True).stdout


def main(argv: list[str] | None = None) -> int:
    site_file, output = argv if argv is not None else sys.argv[1:]
    site = load_site(Path(site_file))
    entry = release_entry(Path("."))
    archive = repo.Archive(URI, site.domain, entry.maintainer)
    files = repo.keyring_package_files(archive, entry.version, throwaway_public_key(), entry.date)
    built = repo.build_keyring_deb(files, Path(output) / f"{repo.KEYRING_PACKAGE}_{entry.version}_all.deb")
    print(built)
    return 0


if __name__ == "__main__":
    sys.exit(main())
