"""The command line: `oignons-mail validate | render | pin | dns | release | build | repo`.

Each subcommand is one function; errors become exit statuses only here.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path

import oignons_mail
from oignons_mail import changelog, dns, health_cli, pin, repo
from oignons_mail.errors import EXIT_FAILURE, EXIT_OK, UsageError, UserMessageError
from oignons_mail.site import INSTALLED_RELAY_SITE, load_site

# The modules that need python3-jinja2 (render, writer), python3-debian
# (build, release) or python3-dnspython (dns --check) are imported by the
# commands that use them: pin, dns, validate run with python3 alone (a node).
DEFAULT_SITE = Path("sites/nos-oignons.toml")
# The site an installed relay speaks for (oignons-mail-relay installs it).
INSTALLED_SITE = Path(INSTALLED_RELAY_SITE)
SITE_DEFAULT_HELP = f"default: {INSTALLED_SITE} when oignons-mail-relay is installed, else {DEFAULT_SITE}"
# Top-level module -> the Debian package that provides it.
OPTIONAL_MODULES = {"jinja2": "python3-jinja2", "debian": "python3-debian", "dns": "python3-dnspython"}


def default_site() -> Path:
    """The installed relay's site, else the default site of a checkout."""
    for candidate in (INSTALLED_SITE, DEFAULT_SITE):
        if candidate.exists():
            return candidate
    raise UsageError(
        f"no site file given, and neither {INSTALLED_SITE} (installed by oignons-mail-relay) "
        f"nor {DEFAULT_SITE} (in a checkout, from its top directory) exists\n"
        "  hint: name the site file: --site path/to/site.toml (validate: its argument)"
    )


def site_path(args: argparse.Namespace) -> Path:
    given: Path | None = args.site
    return given if given is not None else default_site()


def missing_module_message(command: str, missing: ModuleNotFoundError) -> str | None:
    """What to install when a command's module is missing; None when it is not one of ours."""
    name = (missing.name or "").partition(".")[0]
    package = OPTIONAL_MODULES.get(name)
    if package is None:
        return None
    return (
        f"{command} needs {package} (cannot import {missing.name} with {sys.executable})\n"
        f"  hint: apt install {package} (on a build machine: make build-deps)"
    )


def cmd_validate(args: argparse.Namespace) -> int:
    path = site_path(args)
    site = load_site(path)
    relay, smarthost = site.relay, site.smarthost
    print(f"{path}: valid ({len(relay.destinations)} relay destinations, {len(smarthost.relay_pins)} relay pin(s))")
    return EXIT_OK


def cmd_render(args: argparse.Namespace) -> int:
    if args.check and not args.diff:
        raise UsageError("render: --check compares, so it needs --diff (render --diff --check ...)")
    from oignons_mail.render import render  # noqa: PLC0415 - python3-jinja2
    from oignons_mail.writer import diff_tree, write_tree  # noqa: PLC0415

    files = render(load_site(site_path(args)))
    if args.diff:
        difference = diff_tree(files, args.dest)
        sys.stdout.write(difference)
        return EXIT_FAILURE if difference and args.check else EXIT_OK
    changes = write_tree(files, args.dest)
    for relative in changes.written:
        print(f"wrote {args.dest / relative}")
    for relative in changes.removed:
        print(f"removed {args.dest / relative}")
    return EXIT_OK


def cmd_build(args: argparse.Namespace) -> int:
    from oignons_mail.build import build_packages  # noqa: PLC0415 - python3-debian
    from oignons_mail.render import render_source_package  # noqa: PLC0415 - python3-jinja2

    path = site_path(args)
    site = load_site(path)  # a broken site stops here, before anything is copied or built
    history = changelog.require(path, site.package.maintainer, args.source)
    files = render_source_package(site)
    for product in build_packages(args.source, path, files, args.work, args.dist, changelog=history):
        print(product)
    return EXIT_OK


def cmd_pin(args: argparse.Namespace) -> int:
    if args.cert:
        certificate = pin.certificate_from_file(args.cert)
    else:
        host, _, port = args.connect.rpartition(":") if ":" in args.connect else (args.connect, "", "25")
        if not port.isdigit():
            raise UserMessageError(f"--connect {args.connect}: the port is not a number")
        certificate = pin.certificate_from_server(host, int(port))
    for digest, value in pin.pins(pin.subject_public_key_info(certificate)).items():
        print(f"{digest} {value}")
    return EXIT_OK


def cmd_release(args: argparse.Namespace) -> int:
    from oignons_mail import release  # noqa: PLC0415 - python3-debian

    path = site_path(args)
    site = load_site(path)
    repo.check_repository_site(args.repo, site.domain, str(path))
    if args.changelog is not None:
        target, create = args.changelog, False
    else:  # the site's own, started by its first release
        found = changelog.site_changelog(path, site.package.maintainer, Path("."))
        target, create = found.path, not found.exists
    entry_author = release.author(site.package.maintainer, os.environ)
    now = datetime.now(UTC).astimezone()
    print(release.add_release(target, args.version, args.message, entry_author, now, create=create))
    return EXIT_OK


def cmd_dns(args: argparse.Namespace) -> int:
    """The records, or their check; what cannot be computed here is said on stderr, and the status is 1."""
    site = load_site(site_path(args))
    relay_keys, missing = dns.relay_keys(site, args.cert)
    dkim_keys = dns.site_dkim_keys(site, args.dkim_dir, args.dkim_key, require=False)
    dkim_missing = dns.missing_dkim_keys(site, dkim_keys, args.dkim_dir)
    missing += [dkim_missing] if dkim_missing else []
    records = dns.site_records(site, relay_keys, dkim_keys)
    if not args.check:
        sys.stdout.write(dns.zone_text(site, records))
    else:
        findings = dns.check_site(site, records, dns.resolver(args.server))
        for finding in findings:
            print(finding.line())
        wrong = [f for f in findings if f.status != dns.FINE]
        print(f"{len(findings) - len(wrong)} fine, {len(wrong)} missing, different or unsigned")
        missing += ["some records are missing, different or unsigned in DNS (above)"] if wrong else []
    sys.stdout.flush()
    for problem in missing:
        print(f"oignons-mail: incomplete: {problem}", file=sys.stderr)
    return EXIT_FAILURE if missing else EXIT_OK


def cmd_repo(args: argparse.Namespace) -> int:
    site_file = site_path(args)
    site = load_site(site_file)
    repo.check_repository_site(args.repo, site.domain, str(site_file))
    home = repo.gnupg_home()
    if args.check_site:  # make repo, before it builds
        if home.exists():
            repo.check_home_site(home, site.domain)
        return EXIT_OK
    from oignons_mail.build import release_entry  # noqa: PLC0415 - python3-debian

    entry = release_entry(args.source, changelog.require(site_file, site.package.maintainer, args.source))
    archive = repo.Archive(repo.check_uri(args.uri), site.domain, site.package.maintainer)
    debs = sorted(args.dist.glob("*_all.deb"))
    for path in repo.publish(
        debs,
        args.repo,
        archive=archive,
        version=entry.version,
        date=entry.date,
        home=home,
        wanted_key=os.environ.get(repo.SIGNING_KEY_VARIABLE),
        site_file=str(site_file),
    ):
        print(path)
    return EXIT_OK


def add_site_option(command: argparse.ArgumentParser) -> None:
    """The --site option of the commands that read a site file."""
    command.add_argument("--site", type=Path, help=f"site file ({SITE_DEFAULT_HELP})")


class VersionAction(argparse.Action):
    """--version: the version is looked up only when asked for (installed: the package's metadata)."""

    def __init__(self, option_strings: Sequence[str], dest: str, help: str | None = None) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, help=help)

    def __call__(self, parser: argparse.ArgumentParser, *_: object) -> None:
        print(f"{parser.prog} {oignons_mail.__version__}")
        parser.exit()


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog="oignons-mail",
        description="Build the oignons-mail Debian packages (Postfix relay and smarthost) from a site file.",
    )
    top.add_argument("--version", action=VersionAction, help="print the version of oignons-mail and exit")
    commands = top.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, function: Callable[[argparse.Namespace], int], help_text: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text, description=help_text)
        sub.set_defaults(function=function)
        return sub

    validate = add("validate", cmd_validate, "check a site file and report the first broken rule")
    validate.add_argument("site", type=Path, nargs="?", help=f"site file ({SITE_DEFAULT_HELP})")

    render_parser = add("render", cmd_render, "render a site into a folder of package data files")
    add_site_option(render_parser)
    render_parser.add_argument(
        "dest",
        type=Path,
        help="folder to write: new, empty, or rendered into before (only files it wrote there are removed)",
    )
    render_parser.add_argument("--diff", action="store_true", help="show the diff against the folder, write nothing")
    render_parser.add_argument("--check", action="store_true", help="with --diff: exit 1 when there is a difference")

    pin_parser = add("pin", cmd_pin, "print the sha256 and sha1 pins of a relay's public key")
    source = pin_parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--cert", type=Path, help="the relay's certificate (PEM), e.g. its ACME cert")
    source.add_argument("--connect", metavar="HOST[:PORT]", help="fetch it from a live server (STARTTLS; 465: TLS)")

    release_parser = add("release", cmd_release, "add a changelog entry for a new version of a site (then: make deb)")
    release_parser.add_argument("version", help="the new version, greater than the last one (e.g. 0.2.0)")
    release_parser.add_argument("--message", required=True, help="what changed (the entry's text)")
    release_parser.add_argument(
        "--changelog",
        type=Path,
        help="changelog to edit (default: the site's, SITE.changelog beside SITE.toml, made by the first release; "
        "debian/changelog for the site that signs it)",
    )
    release_parser.add_argument(
        "--site",
        type=Path,
        help="site file whose changelog gets the entry and whose package.maintainer signs it, unless DEBFULLNAME "
        f"and DEBEMAIL are set ({SITE_DEFAULT_HELP})",
    )
    release_parser.add_argument(
        "--repo",
        type=Path,
        default=Path("dist/repo"),
        help="repository the release is for: refused if it belongs to another site (default: %(default)s)",
    )

    dns_parser = add("dns", cmd_dns, "print the DNS records the site needs (zone-file lines), or --check them")
    add_site_option(dns_parser)
    dns_parser.add_argument(
        "--cert",
        type=Path,
        action="append",
        help="relay certificate for TLSA, repeat for the next key (default: the site's)",
    )
    dns_parser.add_argument(
        "--dkim-dir",
        type=Path,
        default=dns.DKIM_KEY_DIRECTORY,
        help="DKIM public keys DOMAIN.SELECTOR.pub (default: %(default)s)",
    )
    dns_parser.add_argument(
        "--dkim-key",
        type=Path,
        action="append",
        default=[],
        help="a DKIM public key file DOMAIN.SELECTOR.pub (repeatable)",
    )
    dns_parser.add_argument(
        "--check", action="store_true", help="query DNS and report each record; exit 1 if any is wrong"
    )
    dns_parser.add_argument(
        "--server", metavar="IP", help="with --check: ask this DNS server, not the system's resolver"
    )

    build = add("build", cmd_build, "build the .deb packages with dpkg-buildpackage")
    add_site_option(build)
    build.add_argument("--source", type=Path, default=Path("."), help="source package tree (default: .)")
    build.add_argument(
        "--work", type=Path, default=Path("build/pkg"), help="where the build runs (default: %(default)s)"
    )
    build.add_argument("--dist", type=Path, default=Path("dist"), help="where the .debs go (default: %(default)s)")
    repo_parser = add("repo", cmd_repo, "publish dist/*.deb into a signed APT repository for the fleet")
    repo_parser.add_argument("--uri", required=True, help="where the repository will be served (nodes' URIs:)")
    add_site_option(repo_parser)
    repo_parser.add_argument("--source", type=Path, default=Path("."), help="source package tree (default: .)")
    repo_parser.add_argument("--dist", type=Path, default=Path("dist"), help="the .debs (default: %(default)s)")
    repo_parser.add_argument("--repo", type=Path, default=Path("dist/repo"), help="repository (default: %(default)s)")
    repo_parser.add_argument(
        "--check-site",
        action="store_true",
        help="only check that the repository and the signing key belong to the site (make repo, before building)",
    )
    health_cli.add_parsers(add)
    return top


def main(argv: Sequence[str] | None = None) -> int:
    argument_parser = parser()
    args = argument_parser.parse_args(argv)
    try:
        status: int = args.function(args)
        sys.stdout.flush()  # a closed pipe shows here, not in the interpreter's exit
    except UserMessageError as error:
        print(f"oignons-mail: error: {error}", file=sys.stderr)
        return error.exit_status
    except ModuleNotFoundError as missing:
        message = missing_module_message(args.command, missing)
        if message is None:
            raise
        print(f"oignons-mail: error: {message}", file=sys.stderr)
        return EXIT_FAILURE
    except BrokenPipeError:
        # The reader went away (`render --diff ... | head -1`): nothing more can be written to it,
        # and Python must not try again at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        print("oignons-mail: error: standard output was closed before everything was written", file=sys.stderr)
        return EXIT_FAILURE
    return status
