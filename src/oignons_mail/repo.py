"""The fleet's signed APT repository: `oignons-mail repo` (`make repo`).

Pure parts (the deb822 sources file, the unattended-upgrades snippet, the
Release fields, the keyring package's files) are string functions; the rest
runs gpg, dpkg-deb and apt-ftparchive.  The repository is a plain directory
(dist/repo) to copy to any static web server:

    dists/stable/InRelease, Release, Release.gpg
    dists/stable/main/binary-all/Packages{,.gz}
    pool/main/o/oignons-mail/*.deb          every version ever published
    oignons-mail.sources, oignons-mail-archive-keyring.deb   for the first install

apt-ftparchive lists every .deb found in the pool, so older versions stay
installable (`apt-get install --allow-downgrades PKG=OLD`) for as long as the
pool keeps them: the published directory is the repository's only state.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import shutil
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from oignons_mail.errors import EXIT_USAGE, UserMessageError

KEYRING_PACKAGE = "oignons-mail-archive-keyring"
KEYRING_PATH = f"/usr/share/keyrings/{KEYRING_PACKAGE}.gpg"
SOURCES_NAME = "oignons-mail.sources"
SOURCES_PATH = f"/etc/apt/sources.list.d/{SOURCES_NAME}"
UNATTENDED_PATH = "/etc/apt/apt.conf.d/51oignons-mail-unattended-upgrades"
LABEL = "oignons-mail"
SUITE = "stable"
COMPONENT = "main"
# Every package is Architecture: all; apt fetches binary-all when Release lists it.
ARCHITECTURES = "all"
POOL = Path("pool") / COMPONENT / "o" / "oignons-mail"
GNUPGHOME_VARIABLE = "OIGNONS_MAIL_GNUPGHOME"
SIGNING_KEY_VARIABLE = "OIGNONS_MAIL_SIGNING_KEY"
DEFAULT_GNUPGHOME = Path("~/.local/share/oignons-mail/gnupg")
COMMAND_TIMEOUT = 300


class RepositoryError(UserMessageError):
    """The repository cannot be published as asked."""


@dataclass(frozen=True)
class Archive:
    """What identifies the repository to apt and to unattended-upgrades."""

    uri: str
    origin: str  # the site's domain
    maintainer: str  # "Name <address>", the source package's maintainer
    label: str = LABEL
    suite: str = SUITE
    component: str = COMPONENT


# --- Pure parts ---------------------------------------------------------------


def check_uri(uri: str) -> str:
    if not uri.startswith(("http://", "https://")) or any(c.isspace() for c in uri):
        raise RepositoryError(
            f"REPO_URI = {uri!r}: not an http:// or https:// URI\n"
            "  hint: the address where dist/repo is published, e.g. make repo REPO_URI=https://apt.example.org/oignons"
        )
    return uri.rstrip("/") + "/"


def sources_file(archive: Archive) -> str:
    """The deb822 sources file nodes install (/etc/apt/sources.list.d/oignons-mail.sources)."""
    return (
        f"# {archive.origin} mail packages (oignons-mail), from {KEYRING_PACKAGE}.\n"
        "Types: deb\n"
        f"URIs: {archive.uri}\n"
        f"Suites: {archive.suite}\n"
        f"Components: {archive.component}\n"
        f"Signed-By: {KEYRING_PATH}\n"
    )


def unattended_upgrades_snippet(archive: Archive) -> str:
    """apt.conf snippet letting unattended-upgrades take this repository's packages."""
    return (
        f"// Installed by {KEYRING_PACKAGE}: unattended-upgrades takes new versions\n"
        f"// of the {archive.origin} mail packages (Origin {archive.origin}, Label {archive.label}).\n"
        "Unattended-Upgrade::Origins-Pattern {\n"
        f'\t"origin={_pattern_value(archive.origin)},label={_pattern_value(archive.label)}";\n'
        "};\n"
    )


def _pattern_value(value: str) -> str:
    # unattended-upgrades splits patterns on commas; "\," is a literal comma.
    return value.replace(",", "\\,")


def release_fields(archive: Archive) -> dict[str, str]:
    """The Release file's identifying fields (apt-ftparchive adds Date and the checksums)."""
    return {
        "Origin": archive.origin,
        "Label": archive.label,
        "Suite": archive.suite,
        "Codename": archive.suite,
        "Architectures": ARCHITECTURES,
        "Components": archive.component,
        "Description": f"{archive.origin} mail packages (oignons-mail)",
    }


def keyring_package_files(archive: Archive, version: str, keyring: bytes, date: str) -> dict[str, bytes]:
    """The keyring package's tree: {path in the .deb: content}; DEBIAN/ holds the control files.

    `keyring`: the binary OpenPGP public keys (gpg --export); `date`: RFC 5322
    date of the changelog entry.
    """
    doc = f"usr/share/doc/{KEYRING_PACKAGE}"
    data: dict[str, bytes] = {
        KEYRING_PATH.lstrip("/"): keyring,
        SOURCES_PATH.lstrip("/"): sources_file(archive).encode(),
        UNATTENDED_PATH.lstrip("/"): unattended_upgrades_snippet(archive).encode(),
        f"{doc}/copyright": _copyright(archive).encode(),
        f"{doc}/changelog.gz": _gzip(_changelog(archive, version, date).encode()),
        f"usr/share/lintian/overrides/{KEYRING_PACKAGE}": _LINTIAN_OVERRIDES.encode(),
    }
    installed_kib = sum((len(content) + 1023) // 1024 for content in data.values())
    control = {
        "DEBIAN/control": _control(archive, version, installed_kib).encode(),
        "DEBIAN/conffiles": f"{SOURCES_PATH}\n{UNATTENDED_PATH}\n".encode(),
        "DEBIAN/md5sums": "".join(
            f"{hashlib.md5(content, usedforsecurity=False).hexdigest()}  {path}\n"
            for path, content in sorted(data.items())
            if not path.startswith("etc/")
        ).encode(),
    }
    return {**data, **control}


def _control(archive: Archive, version: str, installed_kib: int) -> str:
    return (
        f"Package: {KEYRING_PACKAGE}\n"
        f"Version: {version}\n"
        "Architecture: all\n"
        f"Maintainer: {archive.maintainer}\n"
        f"Installed-Size: {installed_kib}\n"
        "Section: misc\n"
        "Priority: optional\n"
        "Multi-Arch: foreign\n"
        # The snippet below is unattended-upgrades' setting: a node bootstrapped
        # with this package gets it (apt installs Recommends).
        "Recommends: unattended-upgrades\n"
        f"Description: APT source and keyring of the {archive.origin} mail packages\n"
        f" Lets apt install and upgrade the {archive.origin} mail packages\n"
        " (oignons-mail-smarthost, oignons-mail-relay) from the association's\n"
        " signed repository. It installs:\n"
        "  - the repository's OpenPGP signing key(s), in\n"
        f"    {KEYRING_PATH};\n"
        f"  - the APT source {SOURCES_PATH},\n"
        "    trusted only with that key (Signed-By), for\n"
        f"    {archive.uri};\n"
        "  - an unattended-upgrades setting that installs new versions from\n"
        f"    this repository (Origins-Pattern origin={archive.origin},\n"
        f"    label={archive.label}), in\n"
        f"    {UNATTENDED_PATH}.\n"
    )


def _copyright(archive: Archive) -> str:
    return (
        "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\n"
        "Upstream-Name: oignons-mail\n"
        f"Upstream-Contact: {archive.maintainer}\n"
        "\n"
        "Files: *\n"
        f"Copyright: {archive.origin}\n"
        "License: public-domain\n"
        " The OpenPGP public key and the APT settings in this package are\n"
        " generated data, not a creative work; no rights are claimed.\n"
    )


def _changelog(archive: Archive, version: str, date: str) -> str:
    return (
        f"{KEYRING_PACKAGE} ({version}) {archive.suite}; urgency=medium\n\n"
        # The URI on a line of its own: changelog lines stay under 80 columns.
        f"  * Published with oignons-mail {version}, for the repository at\n    {archive.uri}\n\n"
        f" -- {archive.maintainer}  {date}\n"
    )


_LINTIAN_OVERRIDES = (
    "# This package is the fleet's APT source by design: installing the deb822\n"
    "# file is its purpose (the -apt-source exception's), see its description.\n"
    f"{KEYRING_PACKAGE}: package-installs-apt-sources [{SOURCES_PATH.lstrip('/')}]\n"
)


def _gzip(content: bytes) -> bytes:
    buffer = io.BytesIO()
    with gzip.GzipFile(fileobj=buffer, mode="wb", compresslevel=9, mtime=0) as handle:
        handle.write(content)
    return buffer.getvalue()


def apt_ftparchive_release_options(archive: Archive) -> list[str]:
    options = []
    for field, value in release_fields(archive).items():
        options += ["-o", f"APT::FTPArchive::Release::{field}={value}"]
    return options


# --- gpg -----------------------------------------------------------------------


def gnupg_home(environment: Mapping[str, str] = os.environ) -> Path:
    configured = environment.get(GNUPGHOME_VARIABLE)
    return Path(configured).expanduser() if configured else DEFAULT_GNUPGHOME.expanduser()


def _run(argv: Sequence[str], what: str, *, input_bytes: bytes | None = None, cwd: Path | None = None) -> bytes:
    try:
        result = subprocess.run(
            list(argv), input=input_bytes, capture_output=True, timeout=COMMAND_TIMEOUT, check=False, cwd=cwd
        )
    except FileNotFoundError:
        raise RepositoryError(f"{what}: {argv[0]} is not installed (make repo installs it)") from None
    if result.returncode != 0:
        raise RepositoryError(f"{what} failed (status {result.returncode}):\n{result.stderr.decode(errors='replace')}")
    return result.stdout


def _gpg(home: Path, *arguments: str, what: str, input_bytes: bytes | None = None) -> bytes:
    return _run(["gpg", "--homedir", str(home), "--batch", "--no-tty", *arguments], what, input_bytes=input_bytes)


def secret_key_fingerprints(home: Path) -> list[str]:
    output = _gpg(home, "--with-colons", "--list-secret-keys", what="gpg --list-secret-keys").decode()
    fingerprints, in_primary = [], False
    for line in output.splitlines():
        fields = line.split(":")
        if fields[0] == "sec":
            in_primary = True
        elif fields[0] == "fpr" and in_primary:
            fingerprints.append(fields[9])
            in_primary = False
    return fingerprints


def signing_key(home: Path, user_id: str, wanted: str | None) -> str:
    """The fingerprint of the key that signs; a passphrase-less key is made when the home is new."""
    if not home.exists():
        home.mkdir(mode=0o700, parents=True)
        _gpg(home, "--passphrase", "", "--quick-generate-key", user_id, "ed25519", "sign", "never",
             what=f"creating the repository's signing key in {home}")  # fmt: skip
        print(f"created the repository's signing key in {home}: keep a copy of this directory, off the tree")
    fingerprints = secret_key_fingerprints(home)
    if wanted:
        matches = [f for f in fingerprints if f.upper().endswith(wanted.replace(" ", "").upper())]
        if len(matches) != 1:
            raise RepositoryError(
                f"{SIGNING_KEY_VARIABLE} = {wanted!r}: not one of the secret keys in {home}: {', '.join(fingerprints)}"
            )
        return matches[0]
    if len(fingerprints) != 1:
        raise RepositoryError(
            f"{home} holds {len(fingerprints)} secret keys ({', '.join(fingerprints) or 'none'})\n"
            f"  hint: choose the one that signs with {SIGNING_KEY_VARIABLE}=FINGERPRINT (a key rotation: docs/fleet.md)"
        )
    return fingerprints[0]


# --- Whose repository ----------------------------------------------------------
# A repository publishes one site's packages: its Release's Origin is the
# site's domain, which every node's unattended-upgrades pattern names, and its
# signing key's user ID names the same domain.  Publishing another site's
# packages into it would change both for every node: refused, nothing written.

SIGNING_KEY_USER_ID = "{origin} archive signing key (oignons-mail)"
_USER_ID_SUFFIX = SIGNING_KEY_USER_ID.removeprefix("{origin}")


class WrongSiteError(RepositoryError):
    """The repository, or its signing key, belongs to another site."""

    exit_status = EXIT_USAGE


def repository_origin(repository: Path, suite: str = SUITE) -> str | None:
    """The Origin of the published Release (the site the repository belongs to), None when unpublished."""
    try:
        text = (repository / "dists" / suite / "Release").read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return None
    for line in text.splitlines():
        field, _, value = line.partition(":")
        if field == "Origin":
            return value.strip()
    return None


def check_repository_site(repository: Path, origin: str, site_file: str) -> None:
    """Refuse to publish the site `site_file` (domain `origin`) into another site's repository."""
    owner = repository_origin(repository)
    if owner is None or owner == origin:
        return
    raise WrongSiteError(
        f"{repository / 'dists' / SUITE / 'Release'}: this repository belongs to the site {owner} "
        f"(Origin: {owner}), not to {site_file} (site.domain = {origin}); nothing was changed\n"
        f"  hint: publish with the site file of {owner} (make repo SITE=path/to/its.toml), "
        f"or into another repository (make repo REPO_DIR=dist/repo-{origin} ..., oignons-mail repo --repo DIR)"
    )


def check_home_site(home: Path, origin: str) -> None:
    """Refuse a signing home whose oignons-mail keys were all made for another site's repository."""
    output = _gpg(home, "--with-colons", "--list-secret-keys", what="gpg --list-secret-keys").decode()
    owners = {
        user_id.removesuffix(_USER_ID_SUFFIX)
        for user_id in (line.split(":")[9] for line in output.splitlines() if line.startswith("uid:"))
        if user_id.endswith(_USER_ID_SUFFIX)
    }
    if owners and origin not in owners:
        raise WrongSiteError(
            f"{home}: its signing key was made for the repository of {', '.join(sorted(owners))}, "
            f"not of {origin}; nothing was changed\n"
            f"  hint: give each site its own signing home: {GNUPGHOME_VARIABLE}=~/.local/share/oignons-mail/"
            f"gnupg-{origin} (made on first use)"
        )


# --- Publishing ---------------------------------------------------------------


def _member_fingerprint(deb: Path) -> tuple[bytes, bytes]:
    """What a .deb ships, for comparing two builds: its control file and its md5sums."""
    control = _run(["dpkg-deb", "--field", str(deb)], f"dpkg-deb --field {deb}")
    md5sums = _run(["dpkg-deb", "--info", str(deb), "md5sums"], f"dpkg-deb --info {deb} md5sums")
    return control, md5sums


def add_to_pool(deb: Path, repository: Path) -> Path:
    """Copy a .deb into the pool; a version already there must be the same build."""
    target = repository / POOL / deb.name
    if target.exists():
        if _member_fingerprint(target) != _member_fingerprint(deb):
            raise RepositoryError(
                f"{target.relative_to(repository)} is already published with other contents\n"
                "  hint: a change is a new version: add a changelog entry (oignons-mail release VERSION) and rebuild"
            )
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(deb, target)
    return target


def build_keyring_deb(files: Mapping[str, bytes], output: Path) -> Path:
    """dpkg-deb of a generated tree (root-owned, 0644 files, 0755 directories)."""
    with tempfile.TemporaryDirectory(prefix="oignons-keyring-") as tree_name:
        tree = Path(tree_name)
        for relative, content in files.items():
            path = tree / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(content)
            path.chmod(0o644)
        for directory in [tree, *(p for p in tree.rglob("*") if p.is_dir())]:
            directory.chmod(0o755)
        output.parent.mkdir(parents=True, exist_ok=True)
        _run(["dpkg-deb", "--root-owner-group", "-Zxz", "--build", str(tree), str(output)], "dpkg-deb --build")
    return output


def write_indexes(repository: Path, archive: Archive, home: Path, fingerprint: str) -> None:
    """Packages, Release, InRelease and Release.gpg for everything in the pool."""
    suite = repository / "dists" / archive.suite
    binary = suite / archive.component / f"binary-{ARCHITECTURES}"
    binary.mkdir(parents=True, exist_ok=True)
    packages = _run(["apt-ftparchive", "packages", str(POOL)], "apt-ftparchive packages", cwd=repository)
    (binary / "Packages").write_bytes(packages)
    (binary / "Packages.gz").write_bytes(_gzip(packages))
    for stale in ("Release", "InRelease", "Release.gpg"):
        (suite / stale).unlink(missing_ok=True)
    release = _run(
        ["apt-ftparchive", *apt_ftparchive_release_options(archive), "release", "."],
        "apt-ftparchive release",
        cwd=suite,
    )
    (suite / "Release").write_bytes(release)
    sign = ("--local-user", fingerprint, "--digest-algo", "SHA512")
    (suite / "InRelease").write_bytes(_gpg(home, *sign, "--clearsign", what="signing InRelease", input_bytes=release))
    (suite / "Release.gpg").write_bytes(
        _gpg(home, *sign, "--armor", "--detach-sign", what="signing Release", input_bytes=release)
    )


def publish(
    debs: Sequence[Path],
    repository: Path,
    *,
    archive: Archive,
    version: str,
    date: str,
    home: Path,
    wanted_key: str | None = None,
    site_file: str = "the site file",
) -> list[Path]:
    """Publish the .debs (and a keyring package of `version`) into `repository`; return what was written.

    `version`, `date`: the release's (debian/changelog), so that publishing
    the same release again builds the same keyring package.
    """
    if not debs:
        raise RepositoryError("no .deb to publish: run make deb first")
    check_repository_site(repository, archive.origin, site_file)
    fingerprint = signing_key(home, SIGNING_KEY_USER_ID.format(origin=archive.origin), wanted_key)
    check_home_site(home, archive.origin)
    # Every public key in the home: during a rotation, the old and the new one.
    keyring = _gpg(home, "--export", what="gpg --export")
    keyring_files = keyring_package_files(archive, version, keyring, date)
    written = [add_to_pool(deb, repository) for deb in debs]
    with tempfile.TemporaryDirectory(prefix="oignons-keyring-deb-") as scratch:
        built = build_keyring_deb(keyring_files, Path(scratch) / f"{KEYRING_PACKAGE}_{version}_all.deb")
        written.append(add_to_pool(built, repository))
    shutil.copyfile(written[-1], repository / f"{KEYRING_PACKAGE}.deb")
    (repository / SOURCES_NAME).write_text(sources_file(archive), encoding="utf-8")
    (repository / f"{KEYRING_PACKAGE}.gpg").write_bytes(keyring)
    write_indexes(repository, archive, home, fingerprint)
    print(f"signed with {fingerprint}")
    return [*written, repository / f"{KEYRING_PACKAGE}.deb", repository / SOURCES_NAME]
