"""The fleet repository's pure parts (src/oignons_mail/repo.py), and one real publication."""

from __future__ import annotations

import gzip
import hashlib
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from oignons_mail import repo

ARCHIVE = repo.Archive("http://apt.example.org/oignons/", "nos-oignons.net", "Nos oignons <contact@nos-oignons.net>")


def test_sources_file_is_deb822_signed_by_the_keyring() -> None:
    assert repo.sources_file(ARCHIVE).splitlines()[1:] == [
        "Types: deb",
        "URIs: http://apt.example.org/oignons/",
        "Suites: stable",
        "Components: main",
        "Signed-By: /usr/share/keyrings/oignons-mail-archive-keyring.gpg",
    ]


def test_snippet_matches_the_release_origin_and_label() -> None:
    snippet = repo.unattended_upgrades_snippet(ARCHIVE)
    fields = repo.release_fields(ARCHIVE)
    assert '\t"origin=nos-oignons.net,label=oignons-mail";\n' in snippet
    assert (fields["Origin"], fields["Label"]) == ("nos-oignons.net", "oignons-mail")
    assert snippet.count("Unattended-Upgrade::Origins-Pattern {") == 1


def test_snippet_escapes_commas() -> None:
    archive = repo.Archive("http://a/", "a,b", "M <m@a>")
    assert '"origin=a\\,b,label=oignons-mail";' in repo.unattended_upgrades_snippet(archive)


def test_release_fields_name_one_suite_for_architecture_all() -> None:
    assert repo.release_fields(ARCHIVE) == {
        "Origin": "nos-oignons.net",
        "Label": "oignons-mail",
        "Suite": "stable",
        "Codename": "stable",
        "Architectures": "all",
        "Components": "main",
        "Description": "nos-oignons.net mail packages (oignons-mail)",
    }


@pytest.mark.parametrize("uri", ["ftp://x/", "apt.example.org", "http://a b/"])
def test_uri_must_be_http(uri: str) -> None:
    with pytest.raises(repo.RepositoryError, match="not an http:// or https:// URI"):
        repo.check_uri(uri)


def test_uri_gets_a_trailing_slash() -> None:
    assert repo.check_uri("https://apt.example.org/o") == "https://apt.example.org/o/"


def test_keyring_package_tree() -> None:
    files = repo.keyring_package_files(ARCHIVE, "1.2", b"KEY", "Wed, 25 Nov 2026 12:00:00 +0000")
    assert files["usr/share/keyrings/oignons-mail-archive-keyring.gpg"] == b"KEY"
    assert files["etc/apt/sources.list.d/oignons-mail.sources"] == repo.sources_file(ARCHIVE).encode()
    assert files[repo.UNATTENDED_PATH.lstrip("/")] == repo.unattended_upgrades_snippet(ARCHIVE).encode()
    assert files["DEBIAN/conffiles"].decode().split() == [repo.SOURCES_PATH, repo.UNATTENDED_PATH]
    control = files["DEBIAN/control"].decode()
    assert "Package: oignons-mail-archive-keyring\nVersion: 1.2\nArchitecture: all\n" in control
    assert "Origins-Pattern origin=nos-oignons.net," in control  # the description says what it installs
    assert all(len(line) <= 80 for line in control.splitlines())
    changelog = gzip.decompress(files["usr/share/doc/oignons-mail-archive-keyring/changelog.gz"]).decode()
    assert changelog.startswith("oignons-mail-archive-keyring (1.2) stable; urgency=medium\n")
    md5sums = files["DEBIAN/md5sums"].decode().splitlines()
    assert [line.split("  ")[1] for line in md5sums] == sorted(
        p for p in files if not p.startswith(("DEBIAN/", "etc/"))
    )


@pytest.fixture
def gnupg_home(tmp_path: Path) -> Iterator[Path]:
    """A GnuPG home for the test; the gpg-agent that signing starts there is stopped after it."""
    home = tmp_path / "gnupg"
    yield home
    subprocess.run(["gpgconf", "--homedir", str(home), "--kill", "all"], capture_output=True, check=False)


@pytest.mark.skipif(
    any(shutil.which(tool) is None for tool in ("gpg", "gpgv", "apt-ftparchive", "dpkg-deb")),
    reason="needs gpg, gpgv, apt-ftparchive (apt-utils) and dpkg-deb",
)
def test_publish_signs_and_keeps_every_version(tmp_path: Path, gnupg_home: Path) -> None:
    home, repository = gnupg_home, tmp_path / "repo"
    debs = [_tiny_deb(tmp_path, "1.0"), _tiny_deb(tmp_path, "1.1")]
    date = "Wed, 25 Nov 2026 12:00:00 +0000"
    repo.publish(debs[:1], repository, archive=ARCHIVE, version="1.0", date=date, home=home)
    repo.publish(debs[1:], repository, archive=ARCHIVE, version="1.1", date=date, home=home)
    packages = (repository / "dists/stable/main/binary-all/Packages").read_text()
    versions = sorted(line for line in packages.splitlines() if line.startswith("Version:"))
    # Both versions of the package and of the keyring package stay listed.
    assert versions == ["Version: 1.0", "Version: 1.0", "Version: 1.1", "Version: 1.1"]
    keyring = repository / "oignons-mail-archive-keyring.gpg"
    verified = subprocess.run(
        ["gpgv", "--keyring", str(keyring), str(repository / "dists/stable/InRelease")],
        capture_output=True,
        check=False,
    )
    assert verified.returncode == 0, verified.stderr
    # The same version with other contents is refused.
    with pytest.raises(repo.RepositoryError, match="already published with other contents"):
        repo.publish([_tiny_deb(tmp_path, "1.1", "changed")], repository, archive=ARCHIVE, version="1.1", date=date,
                     home=home)  # fmt: skip


def _tiny_deb(directory: Path, version: str, text: str = "data") -> Path:
    tree = directory / f"tree-{version}-{text}"
    (tree / "DEBIAN").mkdir(parents=True)
    (tree / "usr/share/tiny").mkdir(parents=True)
    (tree / "usr/share/tiny/file").write_text(text)
    (tree / "DEBIAN/control").write_text(
        f"Package: tiny\nVersion: {version}\nArchitecture: all\nMaintainer: M <m@example.org>\n"
        "Description: tiny\n tiny test package\n"
    )
    digest = hashlib.md5(text.encode(), usedforsecurity=False).hexdigest()
    (tree / "DEBIAN/md5sums").write_text(f"{digest}  usr/share/tiny/file\n")
    output = directory / text / f"tiny_{version}_all.deb"
    output.parent.mkdir(exist_ok=True)
    subprocess.run(["dpkg-deb", "--root-owner-group", "--build", str(tree), str(output)], check=True,
                   capture_output=True)  # fmt: skip
    return output


# -- whose repository ----------------------------------------------------------------

OTHER = repo.Archive(
    "http://apt.example.org/potager/", "potager.example.org", "Le Potager <admins@potager.example.org>"
)
DATE = "Wed, 25 Nov 2026 12:00:00 +0000"
needs_publishing_tools = pytest.mark.skipif(
    any(shutil.which(tool) is None for tool in ("gpg", "apt-ftparchive", "dpkg-deb")),
    reason="needs gpg, apt-ftparchive (apt-utils) and dpkg-deb",
)


def tree_bytes(root: Path) -> dict[str, bytes]:
    """Every file under root, byte for byte (and every directory, as b'/')."""
    return {
        str(path.relative_to(root)): b"/" if path.is_dir() else path.read_bytes()
        for path in sorted(root.rglob("*"))
        if path.is_dir() or path.is_file()
    }


def _key_files(home: Path) -> dict[str, bytes]:
    """The signing home's key files (not the agent's sockets, nor its trust database's timestamps)."""
    return {k: v for k, v in tree_bytes(home).items() if k.startswith(("pubring", "private-keys"))}


def test_the_repository_of_no_site_and_of_the_same_site_are_accepted(tmp_path: Path) -> None:
    repo.check_repository_site(tmp_path / "none", "potager.example.org", "potager.toml")
    suite = tmp_path / "dists" / "stable"
    suite.mkdir(parents=True)
    (suite / "Release").write_text("Origin: potager.example.org\nLabel: oignons-mail\n")
    assert repo.repository_origin(tmp_path) == "potager.example.org"
    repo.check_repository_site(tmp_path, "potager.example.org", "potager.toml")


def test_another_sites_repository_is_refused_with_what_it_belongs_to(tmp_path: Path) -> None:
    suite = tmp_path / "dists" / "stable"
    suite.mkdir(parents=True)
    (suite / "Release").write_text("Origin: potager.example.org\nLabel: oignons-mail\n")
    with pytest.raises(repo.WrongSiteError) as refused:
        repo.check_repository_site(tmp_path, "nos-oignons.net", "sites/nos-oignons.toml")
    assert str(refused.value) == (
        f"{suite / 'Release'}: this repository belongs to the site potager.example.org (Origin: "
        "potager.example.org), not to sites/nos-oignons.toml (site.domain = nos-oignons.net); nothing was changed\n"
        "  hint: publish with the site file of potager.example.org (make repo SITE=path/to/its.toml), or into "
        "another repository (make repo REPO_DIR=dist/repo-nos-oignons.net ..., oignons-mail repo --repo DIR)"
    )
    assert refused.value.exit_status == 2


@needs_publishing_tools
def test_publishing_another_site_into_a_repository_changes_nothing(tmp_path: Path, gnupg_home: Path) -> None:
    repository = tmp_path / "repo"
    repo.publish([_tiny_deb(tmp_path, "1.0")], repository, archive=OTHER, version="1.0", date=DATE, home=gnupg_home)
    before = tree_bytes(repository)
    home_before = _key_files(gnupg_home)
    with pytest.raises(repo.WrongSiteError, match=r"belongs to the site potager\.example\.org"):
        repo.publish([_tiny_deb(tmp_path, "1.1", "nos")], repository, archive=ARCHIVE, version="1.1", date=DATE,
                     home=gnupg_home, site_file="sites/nos-oignons.toml")  # fmt: skip
    assert tree_bytes(repository) == before
    assert _key_files(gnupg_home) == home_before


@needs_publishing_tools
def test_a_signing_home_made_for_another_site_is_refused(tmp_path: Path, gnupg_home: Path) -> None:
    repo.publish([_tiny_deb(tmp_path, "1.0")], tmp_path / "potager", archive=OTHER, version="1.0", date=DATE,
                 home=gnupg_home)  # fmt: skip
    fresh = tmp_path / "fresh"
    with pytest.raises(repo.WrongSiteError, match=r"signing key was made for the repository of potager\.example\.org"):
        repo.publish([_tiny_deb(tmp_path, "1.0", "nos")], fresh, archive=ARCHIVE, version="1.0", date=DATE,
                     home=gnupg_home)  # fmt: skip
    assert not fresh.exists()
