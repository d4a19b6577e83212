"""Render a site into the files the packages ship: a pure function, no I/O.

`render(site)` returns {relative path: text}.  The role (relay, smarthost) is
data: each role is a set of files under its own directory.  Everything is
computed here in Python; the Jinja2 templates only lay the values out.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import PurePosixPath

import jinja2

from oignons_mail import postfix
from oignons_mail.site import Site

RenderedTree = dict[str, str]

ROLES = ("smarthost", "relay")

_ENVIRONMENT = jinja2.Environment(
    loader=jinja2.PackageLoader("oignons_mail", "templates"),
    undefined=jinja2.StrictUndefined,
    autoescape=False,  # noqa: S701 - these are configuration files, not HTML
    keep_trailing_newline=True,
    trim_blocks=True,
    lstrip_blocks=True,
)


@dataclass(frozen=True)
class Table:
    """A Postfix lookup table the package manages, and the command that builds it."""

    name: str
    build_command: str  # postalias for aliases(5) files, postmap for the others
    entries: list[str]

    @property
    def postfix_name(self) -> str:
        return postfix.table(self.name)


def render(site: Site) -> RenderedTree:
    """Every file of every role, keyed by `<role>/<name>`."""
    files: RenderedTree = {}
    files.update(_role_files("smarthost", site, smarthost_settings(site), smarthost_tables(site)))
    files["smarthost/debconf.templates"] = _template(
        "smarthost.templates.j2",
        domain=site.domain,
        relay=site.relay.hostname,
        digest=site.smarthost.fingerprint_digest,
        pins=" ".join(site.smarthost.relay_pins),
    )
    return files


def _role_files(role: str, site: Site, settings: list[tuple[str, str]], tables: list[Table]) -> RenderedTree:
    source = PurePosixPath(site.source).name
    files = {
        f"{role}/main.cf": _template("main.cf.j2", role=role, source=source, lines=postfix.main_cf_lines(settings)),
        f"{role}/tables": _template(
            "tables.j2", role=role, source=source, tables=[(t.build_command, t.postfix_name) for t in tables]
        ),
    }
    for t in tables:
        files[f"{role}/tables.d/{t.name}"] = _template(
            "table.j2",
            role=role,
            source=source,
            name=t.name,
            command=f"{t.build_command} {t.postfix_name}",
            entries=t.entries,
        )
    return files


def _template(template_name: str, **values: object) -> str:
    return _ENVIRONMENT.get_template(template_name).render(**values)


def alias_table(site: Site) -> Table:
    aliases = [(user, "root") for user in site.users_to_root] + [("root", site.root_alias)]
    return Table("aliases", "postalias", postfix.alias_lines(aliases))


def alias_settings() -> list[tuple[str, str]]:
    """Our alias table first (the first match wins), Debian's /etc/aliases after it.

    /etc/aliases is left as the administrator had it; newaliases rebuilds both.
    """
    ours = postfix.table("aliases")
    return [
        ("alias_maps", postfix.comma_list([ours, postfix.SYSTEM_ALIASES])),
        ("alias_database", postfix.comma_list([postfix.SYSTEM_ALIASES, ours])),
    ]


def tls_client_policy(site: Site) -> list[tuple[str, str]]:
    tls = site.tls
    return [
        ("smtp_tls_mandatory_protocols", tls.mandatory_protocols),
        ("smtp_tls_exclude_ciphers", postfix.comma_list(tls.exclude_ciphers)),
        ("smtp_tls_mandatory_ciphers", tls.mandatory_ciphers),
        ("smtp_tls_loglevel", str(tls.loglevel)),
        ("smtp_tls_note_starttls_offer", postfix.yes_no(tls.note_starttls_offer)),
    ]


def smarthost_settings(site: Site) -> list[tuple[str, str]]:
    """main.cf of a Tor node (wiki: "Configuration sur les nœuds Tor").

    myhostname is not here: it is this node's own name, a debconf answer the
    postinst adds.  The pins here are the site's; a debconf answer may replace them.
    """
    return [
        ("mydomain", site.domain),
        ("mydestination", "$myhostname, localhost.$mydomain, localhost"),
        ("myorigin", "$myhostname"),
        ("relayhost", postfix.relayhost_for(site.relay.hostname, site.domain)),
        ("mynetworks", postfix.LOOPBACK_NETWORKS),
        ("mynetworks_style", "host"),
        ("inet_interfaces", "loopback-only"),
        ("smtp_tls_security_level", "fingerprint"),
        ("smtp_tls_fingerprint_digest", site.smarthost.fingerprint_digest),
        ("smtp_tls_fingerprint_cert_match", " ".join(site.smarthost.relay_pins)),
        *tls_client_policy(site),
        *alias_settings(),
    ]


def smarthost_tables(site: Site) -> list[Table]:
    return [alias_table(site)]
