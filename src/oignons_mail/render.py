"""Render a site into the files the packages ship: a pure function, no I/O.

`render(site)` returns {relative path: text}.  The role (relay, smarthost) is
data: each role is a set of files under its own directory.  Everything is
computed here in Python; the Jinja2 templates only lay the values out.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import PurePosixPath

import jinja2

from oignons_mail import health, postfix
from oignons_mail.site import ARC_SELECTOR, SCHLEUDER_SUFFIXES, Site

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
        example_node=example_node_name(site),
    )
    files.update(_role_files("relay", site, relay_settings(site), relay_tables(site)))
    files["relay/master.cf"] = _template(
        "master.cf.j2", role="relay", source=PurePosixPath(site.source).name, lines=relay_master_cf(site)
    )
    files["relay/responder.json"] = responder_config(site)
    files["relay/dkim_signing.conf"] = dkim_signing_config(site)
    files["relay/dkim-keys"] = dkim_key_list(site)
    files["relay/postsrsd"] = srs_config(site)
    files["relay/arc.conf"] = arc_config(site)
    files["relay/arc-keys"] = arc_key_list(site)
    files.update(fleet_files(site))
    files["relay/rspamd-options.inc"] = rspamd_options(site)
    files["relay/rspamd-multimap.conf"] = rspamd_multimap(site)
    files["relay/rspamd-force-actions.conf"] = rspamd_force_actions(site)
    files["relay/rspamd-ratelimit.conf"] = rspamd_ratelimit(site)
    files["relay/list_commands.regexp"] = list_commands_table(site)
    files["relay/own_domains.regexp"] = own_domains_table(site)
    files["relay/recipient_extensions.regexp"] = recipient_extensions_table(site)
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
            database=f"{postfix.TABLE_DIRECTORY}/{t.name}.db",
            local_aliases=f"{postfix.TABLE_DIRECTORY}/{postfix.LOCAL_ALIASES}" if t.name == "aliases" else None,
            entries=t.entries,
        )
    return files


def _template(template_name: str, **values: object) -> str:
    return _ENVIRONMENT.get_template(template_name).render(**values)


def alias_table(site: Site) -> Table:
    aliases = [(user, "root") for user in site.users_to_root] + [("root", site.root_alias)]
    return Table("aliases", "postalias", postfix.alias_lines(aliases))


def alias_settings() -> list[tuple[str, str]]:
    """The administrator's local aliases first (the first match wins), then ours, then /etc/aliases.

    Local additions live in a file the packages never ship, so an upgrade
    never asks about a conffile.  newaliases rebuilds the administrator's two
    files; ours is built by postfix-apply from the package's data.
    """
    local = postfix.table(postfix.LOCAL_ALIASES)
    ours = postfix.table("aliases")
    return [
        ("alias_maps", postfix.comma_list([local, ours, postfix.SYSTEM_ALIASES])),
        ("alias_database", postfix.comma_list([postfix.SYSTEM_ALIASES, local])),
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
        # A client certificate, for the relay's relay_clientcerts.
        ("smtp_tls_cert_file", site.smarthost.tls_cert_file),
        ("smtp_tls_key_file", site.smarthost.tls_key_file),
        *tls_client_policy(site),
        *alias_settings(),
    ]


def smarthost_tables(site: Site) -> list[Table]:
    return [alias_table(site)]


# The relay's own pieces: services it adds to master.cf, and where the
# responder keeps its state.
RESPONDER_USER = "oignons-responder"
RESPONDER_COMMAND = "/usr/lib/oignons-mail-relay/responder"
RESPONDER_CONFIG = "/usr/share/oignons-mail-relay/responder.json"
RESPONDER_STATE = "/var/lib/oignons-mail-relay/responder"
# The heartbeat receiver (oignons_mail/health.py, installed as a script) and its user.
HEARTBEAT_USER = "oignons-heartbeat"
HEARTBEAT_COMMAND = "/usr/lib/oignons-mail-relay/heartbeat-receiver"
HEARTBEAT_PROCESS_LIMIT = "2"
HEARTBEAT_TIME_LIMIT = "60s"
# check_ccert_access: node pin -> PREPEND of the node's name (health.NODE_HEADER).
HEARTBEAT_NODES = "heartbeat_nodes"
# TLS 1.2 ciphers with an ephemeral key exchange and an AEAD mode (OpenSSL
# cipher string, both releases' OpenSSL 3): no static RSA, no CBC.
SMTPS_CIPHER_LIST = "ECDHE+AESGCM:ECDHE+CHACHA20:DHE+AESGCM:DHE+CHACHA20"
# Only the nodes relay on port 465: forward-secret AEAD ciphers only, in TLS
# 1.2 (TLS 1.3's are all forward-secret and AEAD anyway).  Port 25 keeps
# Postfix's default list: opportunistic TLS with an old server beats plain text.
SMTPS_ARGUMENTS = (
    "-o", "syslog_name=postfix/smtps", "-o", "smtpd_tls_wrappermode=yes",
    "-o", "smtpd_tls_ciphers=high", "-o", "smtpd_tls_mandatory_ciphers=high",
    "-o", f"tls_high_cipherlist={SMTPS_CIPHER_LIST}",
)  # fmt: skip
# RFC 2142's mailbox names: the only system aliases the outside world may
# write to (site.users_to_root lists the others for the host's own mail).
RFC2142_MAILBOXES = frozenset(
    "info marketing sales support abuse noc security postmaster hostmaster usenet news webmaster www uucp ftp".split()
)
# Schleuder's default superadmin (schleuder.yml): its notices about a list that
# fails would reach the list again through root.
SCHLEUDER_SUPERADMIN = "root@localhost"
# The same reply as for an address that does not exist: nothing tells the
# outside which system users the host has.
UNKNOWN_USER_REPLY = "550 5.1.1 User unknown in local recipient table"
# Schleuder's documented pipe transport (one recipient per delivery: flag D).
SCHLEUDER_ARGUMENTS = ("flags=DRhu", "user=schleuder", "argv=/usr/bin/schleuder", "work", "${recipient}")


def relay_settings(site: Site) -> list[tuple[str, str]]:
    """main.cf of the relay (wiki: "Configuration sur bulbe" to "slow transports")."""
    relay = site.relay
    # A site without Schleuder lists has no Schleuder table, transport or limit.
    schleuder = [postfix.table("schleuder")] if relay.schleuder_lists else []
    responder = postfix.table("responder")
    heartbeat = postfix.table("heartbeat")
    client_limits = relay.client_limits
    exempt = "permit_mynetworks, permit_tls_clientcerts"
    # The site's own domains as envelope senders only from its own hosts.
    own_senders = f"check_sender_access regexp:{OWN_DOMAINS_FILE}"
    sender_restrictions = f"{exempt}, {own_senders}, reject_non_fqdn_sender, reject_unknown_sender_domain"
    recipient_restrictions = postfix.comma_list(
        [
            f"check_recipient_access {postfix.table('schleuder_superadmin')}",
            exempt,
            f"check_recipient_access {postfix.table('local_only_recipients')}",
            f"check_recipient_access regexp:{LIST_COMMANDS_FILE}",
        ]
    )
    settings = [
        ("myhostname", relay.hostname),
        ("mydomain", relay.mydomain),
        ("mydestination", postfix.comma_list([*relay.destinations, "localhost"])),
        ("mynetworks", postfix.LOOPBACK_NETWORKS),
        ("recipient_delimiter", relay.recipient_delimiter),
        # Only aliases, Schleuder lists and the responder receive mail: no
        # passwd lookup.  The postinst appends Mailman 3's table while mailman3 is installed.
        ("local_recipient_maps", postfix.comma_list(["$alias_maps", *schleuder, responder, heartbeat])),
        ("smtpd_banner", f"$myhostname ESMTP $mail_name ({relay.banner_suffix})"),
        # Closed relay: only local programs and the fleet's nodes (by their
        # client certificate) relay; everyone else gets a hard 5xx, not
        # Debian's soft 454 that makes senders retry for days.
        ("smtpd_relay_restrictions", "permit_mynetworks, permit_tls_clientcerts, reject_unauth_destination"),
        # SMTP smuggling (CVE-2023-51764): a bare LF in DATA is read as a line
        # end, never as the end of the message.  trixie's default already;
        # bookworm's backport keeps "no" for compatibility.
        ("smtpd_forbid_bare_newline", "normalize"),
        ("smtpd_forbid_bare_newline_exclusions", "$mynetworks"),
        # A client that sends DATA before the server's replies invited it
        # (without PIPELINING) is a spam engine, or a smuggling attempt.
        # A node's mail gets its name from relay.node_pins by its certificate, in
        # a header above the relay's Received: (the heartbeat receiver trusts
        # only that copy); mail from outside (neither a local program nor a
        # node) is marked with a header only Postfix writes, and rspamd refuses
        # it if its From: header names the site's domains (open_internet_settings).
        # PREPEND does not end the restrictions: both apply.
        (
            "smtpd_data_restrictions",
            f"reject_unauth_pipelining, check_ccert_access {postfix.table(HEARTBEAT_NODES)}, {exempt},"
            f" {OUTSIDE_MARK_RESTRICTION}",
        ),
        # VRFY would tell which aliases exist (the relay answered 252 to all).
        ("disable_vrfy_command", "yes"),
        ("smtpd_helo_required", "yes"),
        # Senders must be full addresses in domains that exist; local programs
        # and the nodes (by certificate) are exempt: they send as their host.
        ("smtpd_sender_restrictions", sender_restrictions),
        # A domain that does not exist (NXDOMAIN) is a definite answer: 550, so
        # that forgers go away; a DNS failure still gets a 4xx (Postfix's
        # unknown_address_tempfail_action).
        ("unknown_address_reject_code", "550"),
        # The host's system aliases (debian-tor, _apt, root...) take mail from
        # the host and the nodes only; from outside only the RFC 2142
        # addresses (postmaster, abuse, ...) are public.  Schleuder's notices
        # to its superadmin, root@localhost, are discarded (logged): they would
        # go back into the list that failed (a mail loop, docs/administration.md).
        ("smtpd_recipient_restrictions", recipient_restrictions),
        # anvil(8) limits per client address (mynetworks is exempt).
        ("smtpd_client_connection_rate_limit", str(client_limits.connection_rate_limit)),
        ("smtpd_client_message_rate_limit", str(client_limits.message_rate_limit)),
        ("smtpd_client_connection_count_limit", str(client_limits.connection_count_limit)),
        *open_internet_settings(site),
        ("smtpd_tls_ask_ccert", "yes"),
        ("smtpd_tls_fingerprint_digest", "sha256"),
        ("relay_clientcerts", postfix.table("relay_clientcerts")),
        ("smtpd_sasl_auth_enable", "no"),
        ("smtpd_tls_cert_file", relay.tls_cert_file),
        ("smtpd_tls_key_file", relay.tls_key_file),
        ("smtpd_tls_security_level", "may"),
        # The site's protocol floor on the server side too (port 25 and 465).
        ("smtpd_tls_protocols", site.tls.mandatory_protocols),
        ("smtpd_tls_mandatory_protocols", site.tls.mandatory_protocols),
        # The server picks the cipher by its own order (strongest first), not
        # the client's: a client offering a weak cipher first does not get it.
        ("tls_preempt_cipherlist", "yes"),
        ("smtpd_tls_session_cache_database", "btree:${data_directory}/smtpd_scache"),
        ("smtp_tls_session_cache_database", "btree:${data_directory}/smtp_scache"),
        ("smtp_tls_security_level", "dane"),
        ("smtp_dns_support_level", "dnssec"),
        *tls_client_policy(site),
        # Postfix is not chrooted on the relay: the socket path is the real one.
        ("smtpd_milters", f"unix:{relay.rspamd_milter_socket}"),
        ("non_smtpd_milters", "$smtpd_milters"),
        # Mail keeps flowing, unscanned, when rspamd is down or not installed.
        ("milter_default_action", "accept"),
        ("transport_maps", postfix.comma_list([postfix.table("transport"), *schleuder, responder, heartbeat])),
        *([("schleuder_destination_recipient_limit", "1")] if schleuder else []),
        ("responder_destination_recipient_limit", "1"),
        # pipe(8) kills a responder that runs longer (the default, 1000s, let
        # hostile messages hold a process for minutes).
        ("responder_time_limit", f"{relay.responder.time_limit_seconds}s"),
        ("heartbeat_destination_recipient_limit", "1"),
        ("heartbeat_time_limit", HEARTBEAT_TIME_LIMIT),
        ("default_destination_concurrency_limit", str(relay.default_destination_concurrency_limit)),
        *alias_settings(),
        *srs_settings(),
    ]
    for transport in relay.transports:
        limits = [
            ("initial_destination_concurrency", transport.initial_destination_concurrency),
            ("destination_concurrency_limit", transport.destination_concurrency_limit),
            ("destination_recipient_limit", transport.destination_recipient_limit),
            ("destination_rate_delay", transport.destination_rate_delay),
        ]
        settings += [(f"{transport.name}_{name}", str(value)) for name, value in limits if value is not None]
    return settings


def relay_master_cf(site: Site) -> list[str]:
    """master.cf of the relay, as `postconf` options and arguments, one per line."""
    entries = [
        postfix.master_cf_entry(
            "smtps",
            "inet",
            "smtpd",
            private="n",
            arguments=SMTPS_ARGUMENTS,
        ),
        *(
            [
                postfix.master_cf_entry(
                    "schleuder", "unix", "pipe", private="-", unprivileged="n", arguments=SCHLEUDER_ARGUMENTS
                )
            ]
            if site.relay.schleuder_lists
            else []
        ),
        postfix.master_cf_entry(
            "responder",
            "unix",
            "pipe",
            unprivileged="n",
            process_limit=str(site.relay.responder.process_limit),
            arguments=(
                "flags=Rq",
                f"user={RESPONDER_USER}",
                "null_sender=",
                f"argv={RESPONDER_COMMAND}",
                "--config",
                RESPONDER_CONFIG,
                "--sender",
                "${sender}",
                "--recipient",
                "${original_recipient}",
                # rspamd's verdict headers count only if they name this queue ID.
                "--queue-id",
                "${queue_id}",
            ),
        ),
        postfix.master_cf_entry(
            "heartbeat",
            "unix",
            "pipe",
            unprivileged="n",
            process_limit=HEARTBEAT_PROCESS_LIMIT,
            arguments=("flags=Rq", f"user={HEARTBEAT_USER}", f"argv={HEARTBEAT_COMMAND}"),
        ),
        # Each throttled transport logs under its own name (postfix/slow/smtp),
        # so that the mail log tells which deliveries it carried.
        *(
            postfix.master_cf_entry(
                t.name,
                "unix",
                "smtp",
                process_limit=str(t.process_limit),
                arguments=("-o", f"syslog_name=postfix/{t.name}"),
            )
            for t in site.relay.transports
        ),
        *srs_master_cf(),
        *recipient_extension_cleanup(site),
    ]
    # Every service un-chrooted: systemd confines Postfix instead (wiki, point 5).
    return [f"-M {entry}" for entry in entries] + ["-F */*/chroot = n"]


def relay_tables(site: Site) -> list[Table]:
    relay = site.relay
    routes = [(domain, f"{t.name}:") for t in relay.transports for domain in t.destinations]
    schleuder = [
        (f"{local}{suffix}@{domain}", "schleuder:")
        for local, _, domain in (address.partition("@") for address in relay.schleuder_lists)
        for suffix in SCHLEUDER_SUFFIXES
    ]
    responder = [
        (f"{local}@{domain}", "responder:") for local in relay.responder.local_parts for domain in relay.destinations
    ]
    local_only = sorted({*site.users_to_root, "root"} - RFC2142_MAILBOXES)
    # The heartbeat address, too, takes mail from the host and the nodes only
    # (its local part at every domain: none of its other forms exists).
    local_only_entries = [(f"{u}@", UNKNOWN_USER_REPLY) for u in local_only]
    local_only_entries.append((site.fleet.heartbeat_address.rpartition("@")[0] + "@", UNKNOWN_USER_REPLY))
    return [
        alias_table(site),
        # user@ matches the local part at every domain (access(5)).
        Table("local_only_recipients", "postmap", postfix.map_lines(local_only_entries)),
        Table(
            "schleuder_superadmin",
            "postmap",
            postfix.map_lines(
                [
                    (
                        SCHLEUDER_SUPERADMIN,
                        "DISCARD Schleuder superadmin notice, logged by Schleuder (journalctl -t Schleuder)",
                    )
                ]
            ),
        ),
        Table("relay_clientcerts", "postmap", postfix.map_lines([(pin, node) for node, pin in relay.node_pins])),
        Table("transport", "postmap", postfix.map_lines(routes)),
        *([Table("schleuder", "postmap", postfix.map_lines(schleuder))] if schleuder else []),
        Table("responder", "postmap", postfix.map_lines(responder)),
        Table("heartbeat", "postmap", postfix.map_lines([(site.fleet.heartbeat_address, "heartbeat:")])),
        Table(
            HEARTBEAT_NODES,
            "postmap",
            postfix.map_lines([(pin, f"PREPEND {health.NODE_HEADER}: {node}") for node, pin in relay.node_pins]),
        ),
    ]


# --- What an outside client can make the relay do (docs/open-internet.md) ---

# A regexp table, not hash: with Postfix's default parent_domain_matches_subdomains
# a hash key "example.org" also matches every subdomain, which must stay open.
OWN_DOMAINS_FILE = "/usr/share/oignons-mail-relay/own_domains.regexp"
# The header Postfix prepends to mail from outside clients, and its value.
OUTSIDE_MARK_HEADER = "X-Oignons-Origin"
OUTSIDE_MARK_VALUE = "outside"
OUTSIDE_MARK_RESTRICTION = f"check_client_access static:{{PREPEND {OUTSIDE_MARK_HEADER}: {OUTSIDE_MARK_VALUE}}}"
OWN_SENDER_REPLY = "REJECT the site's own domains send only from its relay and its nodes"
FORGED_FROM_REPLY = "the From: header names this site's domains, from a client outside them"
# rspamd's symbols (local.d/multimap.conf) and the rule that refuses on them.
OUTSIDE_SYMBOL = "OIGNONS_FROM_OUTSIDE"
OWN_FROM_SYMBOL = "OIGNONS_OWN_FROM"
LOCAL_CLIENT_SYMBOL = "OIGNONS_LOCAL_CLIENT"


def own_domains(site: Site) -> list[str]:
    """The relay's destinations and the DKIM domains, each once (subdomains included where used)."""
    return list(dict.fromkeys([*site.relay.destinations, *site.dkim.domains]))


def own_domains_table(site: Site) -> str:
    """regexp:OWN_DOMAINS_FILE, for check_sender_access: the site's domains, refused as senders from outside.

    With relay.subdomain_senders = "anyone", the domains themselves, not their
    subdomains: a node whose certificate the relay does not know (no pin yet,
    a new key) is an outside client, and its own mail (root@marcuse.<domain>)
    must still reach root's list; refused, it would bounce to the same broken
    path.  With "pinned-nodes", their subdomains too.
    """
    source = PurePosixPath(site.source).name
    refused = _subdomains_refused(site)
    which = "and their subdomains" if refused else "themselves (not their subdomains)"
    lines = [
        f"# own_domains.regexp: a table of oignons-mail-relay, generated from {source}.",
        "# Package data, read by smtpd for clients outside mynetworks without a node",
        f"# certificate: the site's domains {which} as senders.",
    ]
    reply = OWN_SENDER_REPLY
    subdomains = r"([^@]+\.)?" if refused else ""
    lines += [f"/@{subdomains}{_regexp_literal(domain)}$/  {reply}" for domain in own_domains(site)]
    return "\n".join(lines) + "\n"


def _subdomains_refused(site: Site) -> bool:
    return site.relay.subdomain_senders == "pinned-nodes"


def open_internet_settings(site: Site) -> list[tuple[str, str]]:
    """Bounds on what one outside client makes the relay do (mynetworks is exempt from the rate).

    smtpd_recipient_limit holds for every client, local programs included;
    an outside client's recipients are bounded more tightly by the rate.
    """
    limits = site.relay.client_limits
    return [
        ("smtpd_client_recipient_rate_limit", str(limits.recipient_rate_limit)),
        ("smtpd_recipient_limit", str(limits.recipients_per_message)),
        # No DSN extension: NOTIFY=SUCCESS from a forged sender would make the
        # relay mail a report to whoever the client named.
        ("smtpd_discard_ehlo_keywords", "silent-discard, dsn"),
        *recipient_extension_settings(site),
    ]


# One message to user+1 ... user+100 is one delivery to user's destination:
# cleanup(8) drops the extension of the site's addresses (envelope only: the
# headers, which the sender's DKIM signature covers, stay as they came), then
# its duplicate filter keeps one copy of each recipient.  That filter compares
# the rewritten recipient alone only without original-recipient records.
RECIPIENT_EXTENSIONS_FILE = "/usr/share/oignons-mail-relay/recipient_extensions.regexp"
# Mailman 3's own extensions carry data (VERP bounces, confirmation tokens).
MAILMAN_EXTENDED_SUFFIXES = ("-bounces", "-confirm")


def recipient_extension_settings(site: Site) -> list[tuple[str, str]]:
    """main.cf's part of the extension merge (the cleanup service has the map: recipient_extension_cleanup)."""
    if site.relay.recipient_delimiter != "+":
        return []
    return [("enable_original_recipient", "no")]


def recipient_extension_cleanup(site: Site) -> list[str]:
    """The cleanup service with the extension map, in master.cf: smtpd never sees it.

    smtpd counts an address that canonical_maps maps as a known recipient: in
    main.cf, the map would make every user+extension@<destination> (an unknown
    user's too) and every SRS address (a forged one too) pass RCPT, then
    bounce.  smtpd tries user+extension, then user, in its own recipient tables.
    """
    if site.relay.recipient_delimiter != "+":
        return []
    arguments = (
        "-o",
        f"canonical_maps=regexp:{RECIPIENT_EXTENSIONS_FILE}",
        "-o",
        "canonical_classes=envelope_recipient",
    )
    return [postfix.master_cf_entry("cleanup", "unix", "cleanup", private="n", process_limit="0", arguments=arguments)]


def recipient_extensions_table(site: Site) -> str:
    """regexp:RECIPIENT_EXTENSIONS_FILE (canonical_maps): user+extension@<destination> -> user@<destination>."""
    source = PurePosixPath(site.source).name
    lines = [
        f"# recipient_extensions.regexp: a table of oignons-mail-relay, generated from {source}.",
        "# Package data, read by cleanup for envelope recipients: the extension of an",
        "# address of the site's domains is dropped, so that one message reaches each",
        "# destination once however many extensions it names (docs/open-internet.md).",
    ]
    if site.relay.recipient_delimiter != "+":
        return "\n".join([*lines, '# Not used: relay.recipient_delimiter is not "+".']) + "\n"
    suffixes = "|".join(suffix.lstrip("-") for suffix in MAILMAN_EXTENDED_SUFFIXES)
    domains = "|".join(_regexp_literal(domain) for domain in site.relay.destinations)
    lines += [
        "# Mailman 3's VERP bounces and confirmation tokens, and SRS addresses (a bounce",
        "# to a forwarded sender, user+tag's included, which postsrsd's hash covers): kept.",
        f"/^(.+-({suffixes})\\+.*)$/  ${{1}}",
        "/^(SRS[01][-+=].*)$/  ${1}",
        f"/^([^+@]+)\\+[^@]*@({domains})$/  ${{1}}@${{2}}",
    ]
    return "\n".join(lines) + "\n"


def rspamd_local_addrs() -> list[str]:
    """rspamd's local networks: the relay's mynetworks (one source), without Postfix's brackets."""
    return [network.replace("[", "").replace("]", "") for network in postfix.LOOPBACK_NETWORKS.split()]


def rspamd_options(site: Site) -> str:
    """override.d/options.inc: only what the relay declares local is local (signed, not checked)."""
    source = PurePosixPath(site.source).name
    networks = ", ".join(f'"{network}"' for network in rspamd_local_addrs())
    return (
        f"# oignons-mail-relay: rspamd's local networks, generated from {source}.\n"
        "# rspamd's default also counts 10/8, 172.16/12, 192.168/16, fd00::/8 and\n"
        "# link-local as local: mail from there would be DKIM-signed and skip the\n"
        "# SPF, DKIM and DMARC checks.  Only the relay's mynetworks are local here.\n"
        f"local_addrs = [{networks}];\n"
    )


def rspamd_multimap(site: Site) -> str:
    """local.d/multimap.conf: the symbols of forged own From: headers from outside."""
    source = PurePosixPath(site.source).name
    local = ", ".join(f'"{network}"' for network in rspamd_local_addrs())
    # Bare regular expressions: rspamd 3.12 takes a list entry that starts with "/" for a file.
    # The domains themselves, and their subdomains as own_domains_table decides.
    subdomains = "(.+\\\\.)?" if _subdomains_refused(site) else ""
    patterns = ", ".join('"(?i)^' + subdomains + domain.replace(".", "\\\\.") + '$"' for domain in own_domains(site))
    return (
        f"# oignons-mail-relay: symbols for forged own domains, generated from {source}.\n"
        f"# {OUTSIDE_MARK_HEADER}: {OUTSIDE_MARK_VALUE} is prepended by Postfix to mail from\n"
        "# outside clients (not mynetworks, no node certificate).\n"
        f"{OUTSIDE_SYMBOL} {{\n"
        '  type = "header";\n'
        f'  header = "{OUTSIDE_MARK_HEADER}";\n'
        "  regexp = true;\n"
        f'  map = ["^{OUTSIDE_MARK_VALUE}$"];\n'
        '  description = "Mail from a client outside the site";\n'
        "  score = 0.0;\n"
        "}\n"
        f"{OWN_FROM_SYMBOL} {{\n"
        '  type = "header";\n'
        '  header = "From";\n'
        '  filter = "email:domain";\n'
        "  regexp = true;\n"
        f"  map = [{patterns}];\n"
        '  description = "From: names one of the site\'s domains";\n'
        "  score = 0.0;\n"
        "}\n"
        # A mark that came in with a post is still there when a list program
        # sends its copy from 127.0.0.1: that copy is the relay's own.
        f"{LOCAL_CLIENT_SYMBOL} {{\n"
        '  type = "ip";\n'
        f"  map = [{local}];\n"
        '  description = "Mail from a local program";\n'
        "  score = 0.0;\n"
        "}\n"
    )


# The list addresses whose every message makes the list program answer its
# sender (Mailman 3: command results; Schleuder: the list's key), refused
# from outside: read from /usr/share, never built (a regexp table).
LIST_COMMANDS_FILE = "/usr/share/oignons-mail-relay/list_commands.regexp"
MAILMAN_COMMAND_SUFFIXES = ("-request", "-join", "-subscribe")
LIST_COMMANDS_REPLY = "550 5.7.1 this list address answers mail from the site's own hosts only"


def _regexp_literal(text: str) -> str:
    """text matched literally by a POSIX extended regular expression (Postfix's regexp tables)."""
    return "".join(f"\\{c}" if c in ".^$*+?()[]{}|\\" else c for c in text)


def list_commands_table(site: Site) -> str:
    """regexp:LIST_COMMANDS_FILE, for check_recipient_access after the site's own hosts are let through."""
    source = PurePosixPath(site.source).name
    delimiter = _regexp_literal(site.relay.recipient_delimiter)
    extension = f"({delimiter}[^@]*)?"
    lines = [
        f"# list_commands.regexp: a table of oignons-mail-relay, generated from {source}.",
        "# Package data, read by smtpd for clients outside mynetworks without a node",
        "# certificate.  Schleuder's -request answers only a valid signature of a",
        "# subscriber: kept; its -sendkey answers anyone with the list's key: refused.",
    ]
    for address in site.relay.schleuder_lists:
        local, _, domain = address.partition("@")
        lines.append(f"/^{_regexp_literal(local)}-request{extension}@{_regexp_literal(domain)}$/  DUNNO")
        lines.append(
            f"/^{_regexp_literal(local)}-sendkey{extension}@{_regexp_literal(domain)}$/  {LIST_COMMANDS_REPLY}"
        )
    suffixes = "|".join(suffix.lstrip("-") for suffix in MAILMAN_COMMAND_SUFFIXES)
    lines.append(f"/^[^@]+-({suffixes}){extension}@/  {LIST_COMMANDS_REPLY}")
    return "\n".join(lines) + "\n"


# Mailman 3 answers mail to these addresses on error only (a non-member
# leaving, a wrong token), but to whoever the message names, signed with the
# site's key; they stay open from outside (unsubscribing by mail must work),
# bounded by rspamd's ratelimit module instead (docs/open-internet.md).
MAILMAN_ERROR_ANSWER_SUFFIXES = ("-leave", "-unsubscribe", "-confirm")
# At most this many messages an hour to those addresses per sender (the
# envelope's and each From: address, which Mailman answers), and in all.
LIST_ANSWERS_PER_SENDER_AN_HOUR = 3
LIST_ANSWERS_AN_HOUR = 30


def rspamd_ratelimit(site: Site) -> str:
    """local.d/ratelimit.conf: Mailman's answers to strangers, bounded per sender and in all, per hour.

    Keys are built by rspamd selectors (rspamd 3.4 and 3.12): the recipients
    joined by commas, searched for a command address of the site's domains;
    no match gives no key, and the message is not counted.
    """
    source = PurePosixPath(site.source).name
    suffixes = "|".join(suffix.lstrip("-") for suffix in MAILMAN_ERROR_ANSWER_SUFFIXES)
    # "[.]" and "[+]", not backslashes: the pattern is inside a selector inside a UCL string.
    domains = "|".join(domain.replace(".", "[.]") for domain in site.relay.destinations)
    command = f"rcpts('smtp'):addr.lower.join(',').regexp('/(^|,)[^@,]+-({suffixes})([+][^@,]*)?@({domains})(,|$)/')"
    per_sender = LIST_ANSWERS_PER_SENDER_AN_HOUR
    in_all = LIST_ANSWERS_AN_HOUR
    return (
        f"# oignons-mail-relay: bounds on Mailman 3's answers to strangers, generated from {source}.\n"
        f"# Mailman answers mail to list{', list'.join(MAILMAN_ERROR_ANSWER_SUFFIXES)}+TOKEN on error\n"
        "# (a non-member leaving, a wrong token), to the sender it names, signed with\n"
        f"# the site's key: at most {per_sender} such messages an hour per sender (envelope and From:)\n"
        f"# and {in_all} an hour in all; the others get 451 4.7.1 at the end of DATA (try later).\n"
        "# The buckets are in Redis (local.d/redis.conf); without it rspamd disables the module.\n"
        "# Not postmaster and mailer-daemon (rspamd's default): a second recipient\n"
        "# postmaster@ would lift every bound of the message.\n"
        'whitelisted_rcpts = ["nobody@invalid"];\n'
        "# Fixed bounds: rspamd would otherwise raise them with each message it finds ham.\n"
        "ham_factor_rate = 1.0;\nspam_factor_rate = 1.0;\nham_factor_burst = 1.0;\nspam_factor_burst = 1.0;\n"
        "rates {\n"
        + _ratelimit_rate(
            "oignons_list_answers_per_envelope_sender", f"from('smtp'):addr.lower;{command}.id('envelope')", per_sender
        )
        + _ratelimit_rate("oignons_list_answers_per_from", f"from('mime'):addr.lower;{command}.id('from')", per_sender)
        + _ratelimit_rate("oignons_list_answers", f"{command}.id('oignons-list-answers')", in_all)
        + "}\n"
    )


def _ratelimit_rate(name: str, selector: str, an_hour: int) -> str:
    """One rate of rspamd's ratelimit: a bucket of `an_hour` messages an hour, per message (not per recipient)."""
    return (
        f"  {name} {{\n"
        f'    selector = "{selector}";\n'
        f'    bucket = {{ burst = {an_hour}; rate = "{an_hour} / 1h"; skip_recipients = true; }}\n'
        "  }\n"
    )


def rspamd_force_actions(site: Site) -> str:
    """local.d/force_actions.conf: a forged own From: from outside is refused whatever its score.

    Refused at the end of DATA rather than marked: the client gets the 5xx,
    nobody gets a bounce, and no list or alias hands the message on as if
    the association had written it.
    """
    source = PurePosixPath(site.source).name
    return (
        f"# oignons-mail-relay: mail rspamd refuses whatever its score, generated from {source}.\n"
        "rules {\n"
        "  OIGNONS_FORGED_OWN_FROM {\n"
        '    action = "reject";\n'
        f'    expression = "{OUTSIDE_SYMBOL} & {OWN_FROM_SYMBOL} & !{LOCAL_CLIENT_SYMBOL}";\n'
        f'    message = "{FORGED_FROM_REPLY}";\n'
        "  }\n"
        "}\n"
    )


def responder_config(site: Site) -> str:
    responder = site.relay.responder
    config = {
        "from_address": responder.from_address,
        "subject": responder.subject,
        "body": responder.text,
        "rate_limit_seconds": responder.rate_limit_seconds,
        "global_rate_limit": responder.global_rate_limit,
        "global_rate_window_seconds": responder.global_rate_window_seconds,
        # The per-sender limit counts a+1@x and a+2@x as a@x.
        "recipient_delimiter": site.relay.recipient_delimiter,
        # Every address there is one of the site's lists or aliases: never answered.
        "own_domains": list(site.relay.destinations),
        "state_directory": RESPONDER_STATE,
        "smtp_host": "127.0.0.1",
        "smtp_port": 25,
    }
    return json.dumps(config, indent=2, ensure_ascii=False) + "\n"


def render_source_package(site: Site) -> RenderedTree:
    """The source package's files that name the organisation: debian/control and debian/copyright.

    `oignons-mail build` writes them into its copy of the tree; the committed
    ones are the default site's rendering (tests/unit/test_golden.py).
    """
    package = site.package
    values: dict[str, object] = {
        "maintainer": package.maintainer,
        "homepage": package.homepage,
        "organisation": package.organisation,
        **package_description_values(site),
    }
    return {name: _template(f"{name.replace('/', '-')}.j2", **values) for name in SOURCE_PACKAGE_FILES}


# The debconf question's example of a node name, when the site names no node.
GENERIC_NODE_NAME = "node1"


def example_node_name(site: Site) -> str:
    """A node name of this site (the first of relay.node_pins, by name), for the debconf question's example."""
    return site.relay.node_pins[0][0] if site.relay.node_pins else GENERIC_NODE_NAME


def package_description_values(site: Site) -> dict[str, object]:
    """What the packages' relations and descriptions say of this site: only what it has."""
    relay = site.relay
    recipients = ["aliases"]
    recipients += ["Schleuder lists"] if relay.schleuder_lists else []
    recipients += ["Mailman lists"] if relay.mailman else []
    return {
        "relay": relay.hostname,
        "root_alias": site.root_alias,
        # mailman3 and schleuder only for a site that has such lists.
        "relay_recommends": sorted(
            ["oignons-mail", "postsrsd", "redis-server", "rspamd", "unbound"]
            + (["mailman3"] if relay.mailman else [])
            + (["schleuder"] if relay.schleuder_lists else [])
        ),
        "transports": bool(relay.transports),
        "recipients": ", ".join(recipients[:-1]) + " and " + recipients[-1] if len(recipients) > 1 else recipients[0],
    }


SOURCE_PACKAGE_FILES = ("debian/control", "debian/copyright")


# Where rspamd's DKIM keys live (the layout of rspamd's own documentation).
DKIM_KEY_PATH = "/var/lib/rspamd/dkim/$domain.$selector.key"


def dkim_key_path(domain: str, selector: str) -> str:
    return DKIM_KEY_PATH.replace("$domain", domain).replace("$selector", selector)


def dkim_signing_config(site: Site) -> str:
    """rspamd's local.d/dkim_signing.conf: sign the site's domains, and only them.

    A conffile: local changes belong in override.d/dkim_signing.conf, so that a
    new selector from the site reaches the relay without a conffile prompt
    (which unattended-upgrades would stop at).
    """
    source = PurePosixPath(site.source).name
    return (
        f"# oignons-mail-relay: DKIM signing, generated from {source}.  Do not edit this\n"
        "# conffile: put local changes in /etc/rspamd/override.d/dkim_signing.conf.\n"
        "# The keys are made on this relay by /usr/lib/oignons-mail-relay/dkim-keys.\n"
        "enabled = true;\n"
        "# Mail from local programs (Schleuder, the responder, cron) and authenticated users.\n"
        "sign_local = true;\n"
        "sign_authenticated = true;\n"
        "# The From: header's domain, reduced to its registered domain (mail from\n"
        "# root@host.example.org is signed as example.org).\n"
        'use_domain = "header";\n'
        "use_esld = true;\n" + rspamd_key_settings(site.dkim.domains, site.dkim.selector)
    )


def rspamd_key_settings(domains: Sequence[str], selector: str) -> str:
    """The key settings of rspamd's dkim_signing and arc modules: a key per domain, and none for others."""
    blocks = "".join(
        f'  "{d}" {{\n    selector = "{selector}";\n    path = "{dkim_key_path(d, selector)}";\n  }}\n' for d in domains
    )
    return (
        "# Only the site's domains below: no key is looked for any other.\n"
        "try_fallback = false;\n"
        f'selector = "{selector}";\n'
        f'path = "{DKIM_KEY_PATH}";\n'
        f"domain {{\n{blocks}}}\n"
    )


def dkim_key_list(site: Site) -> str:
    """The keys the relay's postinst makes when they are missing: `domain selector bits` lines."""
    return key_list(site, "DKIM", site.dkim.selector)


def key_list(site: Site, kind: str, selector: str) -> str:
    source = PurePosixPath(site.source).name
    lines = [f"# oignons-mail-relay: {kind} keys to make (domain selector bits), from {source}"]
    lines += [f"{domain} {selector} {site.dkim.key_bits}" for domain in site.dkim.domains]
    return "\n".join(lines) + "\n"


# -- SRS: forwarded mail leaves with an envelope sender of the site's domain ---

# The cleanup(8) that local(8) hands the mail it forwards (aliases to other
# domains) to: only there is the envelope sender rewritten, never for mail
# received from outside, nor for local programs, lists or the responder.
SRS_CLEANUP = "srs-cleanup"
# Its sender_canonical_maps: empty here; the postinst sets postsrsd's tcp table
# while postsrsd is installed (an unreachable table would defer the mail).
SRS_SENDER_MAPS = "oignons_srs_sender_maps"


def srs_settings() -> list[tuple[str, str]]:
    return [(SRS_SENDER_MAPS, "")]


def srs_master_cf() -> list[str]:
    return [
        postfix.master_cf_entry(
            SRS_CLEANUP,
            "unix",
            "cleanup",
            private="n",
            process_limit="0",
            arguments=(
                "-o",
                f"syslog_name=postfix/{SRS_CLEANUP}",
                "-o",
                f"sender_canonical_maps=${SRS_SENDER_MAPS}",
                "-o",
                "sender_canonical_classes=envelope_sender",
            ),
        ),
        postfix.master_cf_entry(
            "local", "unix", "local", unprivileged="n", arguments=("-o", f"cleanup_service_name={SRS_CLEANUP}")
        ),
    ]


def srs_config(site: Site) -> str:
    """postsrsd's settings from the site, read by the package's postsrsd launcher after /etc/default/postsrsd.

    The SRS domain is the site's: its SPF lets the relay send, its MX brings
    the bounces back.  The relay's destinations are never rewritten: their
    mail already passes SPF from the relay.
    """
    source = PurePosixPath(site.source).name
    return (
        f"# oignons-mail-relay: postsrsd's SRS domain and the domains it never rewrites, from {source}.\n"
        f"SRS_DOMAIN={site.domain}\n"
        f"SRS_EXCLUDE_DOMAINS={','.join(site.relay.destinations)}\n"
    )


# -- ARC: the relay seals the mail it receives for the site's domains ----------

# One selector for the ARC keys of every signing domain, beside the DKIM keys
# (so that `oignons-mail dns` publishes them with those): site.ARC_SELECTOR.


def arc_config(site: Site) -> str:
    """rspamd's local.d/arc.conf: seal mail from other servers to the site's signing domains.

    That is the mail the relay forwards: the next receiver can see, in the
    seal, the SPF, DKIM and DMARC results the relay found before forwarding.
    A conffile: local changes belong in override.d/arc.conf.
    """
    source = PurePosixPath(site.source).name
    return (
        f"# oignons-mail-relay: ARC sealing, generated from {source}.  Do not edit this\n"
        "# conffile: put local changes in /etc/rspamd/override.d/arc.conf.\n"
        "# The keys are made on this relay by /usr/lib/oignons-mail-relay/dkim-keys.\n"
        "enabled = true;\n"
        "# Mail received from other servers, sealed with the key of its recipient's\n"
        "# domain (its registered domain): what the relay forwards carries the seal.\n"
        "# Local programs' mail is DKIM-signed instead (dkim_signing.conf).\n"
        "sign_inbound = true;\n"
        "sign_local = false;\n"
        "sign_authenticated = false;\n"
        'use_domain = "recipient";\n'
        "use_esld = true;\n"
        "allow_hdrfrom_mismatch = true;\n"
        "allow_envfrom_empty = true;\n" + rspamd_key_settings(site.dkim.domains, ARC_SELECTOR)
    )


def arc_key_list(site: Site) -> str:
    """The ARC keys the relay makes when they are missing: `domain selector bits` lines (never rotated)."""
    return key_list(site, "ARC", ARC_SELECTOR)


def fleet_files(site: Site) -> RenderedTree:
    """The heartbeat sender's settings (both roles) and `oignons-mail fleet`'s (the relay)."""
    fleet = site.fleet
    sender = health.sender_config(fleet.heartbeat_address)
    config = {
        "heartbeat_address": fleet.heartbeat_address,
        "late_after_seconds": fleet.late_after_seconds,
        "queue_after_seconds": fleet.queue_after_seconds,
        "nodes": list(fleet.nodes),
    }
    return {
        "smarthost/heartbeat.conf": sender,
        "relay/heartbeat.conf": sender,
        "relay/fleet.json": json.dumps(config, indent=2) + "\n",
    }
