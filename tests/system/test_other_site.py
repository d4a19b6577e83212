"""A second site, built and published as its administrator would: none of its packages names the first site.

The site is tests/golden/other-site/in/site.toml (another domain, relay host,
two nodes, no Mailman, no Schleuder, one slow transport), copied beside its
own changelog, which `oignons-mail release --site` starts.  Then `oignons-mail
build` and `oignons-mail repo` (what `make deb` and `make repo` run) make its
repository; every file of every .deb in it, the keyring package's included,
is searched for the default site's names; lintian checks each .deb; and
publishing the default site into that repository (with --site, or with no
site at all, through `make repo-site`) is refused, the repository unchanged
byte for byte.
"""

from __future__ import annotations

import gzip
import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REPOSITORY = Path(__file__).resolve().parents[2]
OTHER_SITE = REPOSITORY / "tests" / "golden" / "other-site" / "in" / "site.toml"
DEFAULT_SITE_FIXTURE = REPOSITORY / "tests" / "golden" / "nos-oignons" / "in" / "site.toml"
TOOL = ["/usr/bin/python3", "-P", "-m", "oignons_mail"]
URI = "http://apt.potager.example.org/mail/"
TIMEOUT = 600
# The default site's names: its domains, hosts, nodes, organisation, banner.
FIRST_SITE_NAMES = ("nos-oignons", "nos oignons", "bulbe", "marcuse", "ekumen", "tetaneutral", "gnu/oignons")
# What the software itself says of its authors and of its checkout: debian/copyright's
# Copyright and Source lines, and the tool's own code and manual page (the
# checkout's default site file is sites/nos-oignons.toml).
SOFTWARE_LINES = (
    "Copyright: 2013-2026 Nos oignons",
    "Source: https://git.nos-oignons.net/oignons-mail",
)
# Its documentation too: README.md and docs/ (debian/oignons-mail.docs) and oignons-mail-site(5), whose examples are
# the default site's.
TOOL_DOCS = tuple(
    f"usr/share/doc/oignons-mail/{Path(line).name}"
    for line in (REPOSITORY / "debian" / "oignons-mail.docs").read_text(encoding="utf-8").split()
)
TOOL_FILES = (
    "usr/lib/python3/dist-packages/oignons_mail/",
    "usr/share/man/man1/oignons-mail.1.gz",
    "usr/share/man/man5/oignons-mail-site.5.gz",
    *TOOL_DOCS,
)


@dataclass(frozen=True)
class Published:
    work: Path
    site: Path
    repository: Path
    environment: dict[str, str]


def run(argv: list[str], environment: dict[str, str], cwd: Path = REPOSITORY) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, cwd=cwd, env=environment, capture_output=True, text=True, timeout=TIMEOUT, check=False)


@pytest.fixture(scope="module")
def published(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Published]:
    work = tmp_path_factory.mktemp("other-site")
    site = work / "sites" / "potager.toml"
    site.parent.mkdir()
    shutil.copyfile(OTHER_SITE, site)
    environment = {
        key: value for key, value in os.environ.items() if key not in ("DEBFULLNAME", "DEBEMAIL", "OIGNONS_MAIL_SITE")
    }
    environment |= {
        "PYTHONPATH": str(REPOSITORY / "src"),
        "OIGNONS_MAIL_GNUPGHOME": str(work / "gnupg"),
        "DEB_BUILD_OPTIONS": "nocheck",
    }
    steps = [
        [*TOOL, "release", "--site", str(site), "0.1.0", "--message", "First release for Le Potager."],
        [*TOOL, "build", "--site", str(site), "--work", str(work / "pkg"), "--dist", str(work / "dist")],
        [*TOOL, "repo", "--uri", URI, "--site", str(site), "--dist", str(work / "dist"), "--repo", str(work / "repo")],
    ]
    try:
        for argv in steps:
            result = run(argv, environment)
            assert result.returncode == 0, f"{argv[4]}: {result.stdout[-3000:]}\n{result.stderr[-3000:]}"
        yield Published(work, site, work / "repo", environment)
    finally:
        subprocess.run(["gpgconf", "--homedir", str(work / "gnupg"), "--kill", "all"], capture_output=True, check=False)


def pool_debs(repository: Path) -> list[Path]:
    return sorted((repository / "pool").rglob("*.deb"))


def test_every_package_is_published_with_the_sites_version(published: Published) -> None:
    names = [deb.name for deb in pool_debs(published.repository)]
    assert names == [
        "oignons-mail-archive-keyring_0.1.0_all.deb",
        "oignons-mail-relay_0.1.0_all.deb",
        "oignons-mail-smarthost_0.1.0_all.deb",
        "oignons-mail_0.1.0_all.deb",
    ]
    release = (published.repository / "dists" / "stable" / "Release").read_text(encoding="utf-8")
    assert "Origin: potager.example.org\n" in release


def _texts(tree: Path) -> Iterator[tuple[str, str]]:
    for path in sorted(tree.rglob("*")):
        if not path.is_file() or path.is_symlink():
            continue
        data = path.read_bytes()
        if path.suffix == ".gz":
            data = gzip.decompress(data)
        # roff writes a hyphen as \-, so "nos\-oignons" must match too.
        yield str(path.relative_to(tree)), data.decode("utf-8", errors="replace").replace("\\-", "-")


def test_no_package_names_the_first_site(published: Published) -> None:
    found = []
    for deb in pool_debs(published.repository):
        tree = published.work / "unpacked" / deb.stem
        tree.parent.mkdir(exist_ok=True)
        subprocess.run(["dpkg-deb", "-R", str(deb), str(tree)], check=True, timeout=60)
        for relative, text in _texts(tree):
            if relative.startswith(TOOL_FILES):
                continue
            for number, line in enumerate(text.splitlines(), 1):
                if line.strip() in SOFTWARE_LINES:
                    continue
                if any(name in line.lower() for name in FIRST_SITE_NAMES):
                    found.append(f"{deb.name}: {relative}:{number}: {line.strip()}")
    assert found == []


def test_the_relay_carries_its_site_and_the_changelog_is_the_sites(published: Published) -> None:
    relay = next(d for d in pool_debs(published.repository) if d.name.startswith("oignons-mail-relay_"))
    tree = published.work / "relay"
    subprocess.run(["dpkg-deb", "-R", str(relay), str(tree)], check=True, timeout=60)
    assert (tree / "usr/share/oignons-mail-relay/site.toml").read_bytes() == OTHER_SITE.read_bytes()
    changelog = gzip.decompress((tree / "usr/share/doc/oignons-mail-relay/changelog.gz").read_bytes()).decode()
    assert changelog.startswith("oignons-mail (0.1.0) unstable; urgency=medium\n\n  * First release for Le Potager.")
    assert changelog.count("oignons-mail (") == 1
    assert " -- Le Potager <admins@potager.example.org>  " in changelog
    control = (tree / "DEBIAN" / "control").read_text(encoding="utf-8")
    assert "mailman3" not in control
    assert "schleuder" not in control


def test_lintian_is_clean_for_every_published_package(published: Published) -> None:
    result = run(
        ["lintian", "--fail-on", "error,warning", *map(str, pool_debs(published.repository))], dict(os.environ)
    )
    assert result.returncode == 0, result.stdout + result.stderr


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() if p.is_file() else b"/" for p in sorted(root.rglob("*"))}


@pytest.mark.parametrize("how", ["--site of the default site", "make repo-site without SITE="])
def test_publishing_another_site_into_it_is_refused_and_changes_nothing(published: Published, how: str) -> None:
    before = _tree(published.repository)
    if how.startswith("make"):
        argv = ["make", "-s", "repo-site", f"REPO_URI={URI}", f"REPO_DIR={published.repository}"]
    else:
        argv = [*TOOL, "repo", "--uri", URI, "--site", str(DEFAULT_SITE_FIXTURE), "--repo", str(published.repository),
                "--dist", str(published.work / "dist")]  # fmt: skip
    result = run(argv, published.environment)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "this repository belongs to the site potager.example.org (Origin: potager.example.org)" in result.stderr
    assert "(site.domain = nos-oignons.net); nothing was changed\n  hint: " in result.stderr
    assert _tree(published.repository) == before
