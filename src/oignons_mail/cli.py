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

from oignons_mail import dns, health_cli, pin, release, repo
from oignons_mail.build import build_packages, release_entry
from oignons_mail.errors import EXIT_FAILURE, EXIT_OK, UsageError, UserMessageError
from oignons_mail.render import render, render_source_package
from oignons_mail.site import load_site
from oignons_mail.writer import diff_tree, write_tree

DEFAULT_SITE = Path("sites/nos-oignons.toml")


def cmd_validate(args: argparse.Namespace) -> int:
    site = load_site(args.site)
    relay, smarthost = site.relay, site.smarthost
    print(
        f"{args.site}: valid ({len(relay.destinations)} relay destinations, {len(smarthost.relay_pins)} relay pin(s))"
    )
    return EXIT_OK


def cmd_render(args: argparse.Namespace) -> int:
    if args.check and not args.diff:
        raise UsageError("render: --check compares, so it needs --diff (render --diff --check ...)")
    files = render(load_site(args.site))
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
    site = load_site(args.site)  # a broken site stops here, before anything is copied or built
    for product in build_packages(args.source, args.site, render_source_package(site), args.work, args.dist):
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
    site = load_site(args.site)
    entry_author = release.author(site.package.maintainer, os.environ)
    now = datetime.now(UTC).astimezone()
    print(release.add_release(args.changelog, args.version, args.message, entry_author, now))
    return EXIT_OK


def cmd_dns(args: argparse.Namespace) -> int:
    site = load_site(args.site)
    certificates = args.cert or [Path(site.relay.tls_cert_file)]
    relay_keys = [pin.subject_public_key_info(pin.certificate_from_file(path)) for path in certificates]
    records = dns.site_records(site, relay_keys, dns.site_dkim_keys(site, args.dkim_dir, args.dkim_key))
    if not args.check:
        sys.stdout.write(dns.zone_text(site, records))
        return EXIT_OK
    findings = dns.check_records(records, dns.resolver_lookup(args.server))
    for finding in findings:
        print(finding.line())
    wrong = [f for f in findings if f.status != "fine"]
    print(f"{len(findings) - len(wrong)} fine, {len(wrong)} missing or different")
    return EXIT_FAILURE if wrong else EXIT_OK


def cmd_repo(args: argparse.Namespace) -> int:
    site = load_site(args.site)
    entry = release_entry(args.source)
    archive = repo.Archive(repo.check_uri(args.uri), site.domain, entry.maintainer)
    debs = sorted(args.dist.glob("*_all.deb"))
    home = repo.gnupg_home()
    for path in repo.publish(
        debs,
        args.repo,
        archive=archive,
        version=entry.version,
        date=entry.date,
        home=home,
        wanted_key=os.environ.get(repo.SIGNING_KEY_VARIABLE),
    ):
        print(path)
    return EXIT_OK


def add_site_option(command: argparse.ArgumentParser) -> None:
    """The --site option of the commands that read a site file."""
    command.add_argument("--site", type=Path, default=DEFAULT_SITE, help="site file (default: %(default)s)")


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog="oignons-mail",
        description="Build the oignons-mail Debian packages (Postfix relay and smarthost) from a site file.",
    )
    commands = top.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, function: Callable[[argparse.Namespace], int], help_text: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text, description=help_text)
        sub.set_defaults(function=function)
        return sub

    validate = add("validate", cmd_validate, "check a site file and report the first broken rule")
    validate.add_argument("site", type=Path, nargs="?", default=DEFAULT_SITE, help="site file (default: %(default)s)")

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

    release_parser = add("release", cmd_release, "add a debian/changelog entry for a new version (then: make deb)")
    release_parser.add_argument("version", help="the new version, greater than the last one (e.g. 0.2.0)")
    release_parser.add_argument("--message", required=True, help="what changed (the entry's text)")
    release_parser.add_argument(
        "--changelog", type=Path, default=Path("debian/changelog"), help="changelog to edit (default: %(default)s)"
    )
    release_parser.add_argument(
        "--site",
        type=Path,
        default=DEFAULT_SITE,
        help="site file whose package.maintainer signs the entry, unless DEBFULLNAME and DEBEMAIL are set "
        "(default: %(default)s)",
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
    except BrokenPipeError:
        # The reader went away (`render --diff ... | head -1`): nothing more can be written to it,
        # and Python must not try again at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        print("oignons-mail: error: standard output was closed before everything was written", file=sys.stderr)
        return EXIT_FAILURE
    return status
