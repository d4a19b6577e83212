"""The pure string functions of src/oignons_mail/postfix.py."""

from __future__ import annotations

import pytest

from oignons_mail import postfix


@pytest.mark.parametrize(
    ("relay", "domain", "expected"),
    [
        ("bulbe.nos-oignons.net", "nos-oignons.net", "bulbe.$mydomain"),
        ("mx.relay.nos-oignons.net", "nos-oignons.net", "mx.relay.$mydomain"),
        # Outside the domain: the name as it is.
        ("bulbe.tetaneutral.net", "nos-oignons.net", "bulbe.tetaneutral.net"),
        # A suffix that is not a whole label does not count.
        ("bulbe.notnos-oignons.net", "nos-oignons.net", "bulbe.notnos-oignons.net"),
        # The domain itself has no label to keep.
        ("nos-oignons.net", "nos-oignons.net", "nos-oignons.net"),
    ],
)
def test_relayhost_for(relay: str, domain: str, expected: str) -> None:
    assert postfix.relayhost_for(relay, domain) == expected


def test_main_cf_lines() -> None:
    assert postfix.main_cf_lines([("mydomain", "nos-oignons.net"), ("relayhost", "bulbe.$mydomain")]) == [
        "mydomain = nos-oignons.net",
        "relayhost = bulbe.$mydomain",
    ]


def test_main_cf_lines_keeps_order_and_repeated_keys() -> None:
    assert postfix.main_cf_lines([("b", "2"), ("a", "x y"), ("b", "3")]) == ["b = 2", "a = x y", "b = 3"]


def test_main_cf_lines_empty_value_as_postconf_prints_it() -> None:
    assert postfix.main_cf_lines([("smtp_tls_exclude_ciphers", "")]) == ["smtp_tls_exclude_ciphers ="]


def test_main_cf_lines_empty() -> None:
    assert postfix.main_cf_lines([]) == []


def test_main_cf_lines_refuses_a_multi_line_value() -> None:
    with pytest.raises(ValueError, match=r"not a one-line main\.cf setting: 'smtpd_banner' = 'a\\nb'"):
        postfix.main_cf_lines([("mydomain", "nos-oignons.net"), ("smtpd_banner", "a\nb")])


@pytest.mark.parametrize("key", ["my domain", "my-domain", "", "1st", "key\n"])
def test_main_cf_lines_refuses_a_bad_key(key: str) -> None:
    with pytest.raises(ValueError, match=r"not a one-line main\.cf setting"):
        postfix.main_cf_lines([(key, "x")])


def test_master_cf_entry_defaults() -> None:
    assert postfix.master_cf_entry("slow", "unix", "smtp") == "slow/unix = slow unix - - n - - smtp"


def test_master_cf_entry_all_fields_and_arguments() -> None:
    entry = postfix.master_cf_entry(
        "schleuder",
        "unix",
        "pipe",
        private="-",
        unprivileged="n",
        chroot="y",
        wakeup="60",
        process_limit="5",
        arguments=("flags=DRhu", "user=schleuder", "argv=/usr/bin/schleuder", "work", "${recipient}"),
    )
    assert entry == (
        "schleuder/unix = schleuder unix - n y 60 5 pipe flags=DRhu user=schleuder argv=/usr/bin/schleuder work "
        "${recipient}"
    )


def test_master_cf_entry_inet_service() -> None:
    entry = postfix.master_cf_entry(
        "smtps", "inet", "smtpd", private="n", arguments=("-o", "smtpd_tls_wrappermode=yes")
    )
    assert entry == "smtps/inet = smtps inet n - n - - smtpd -o smtpd_tls_wrappermode=yes"


@pytest.mark.parametrize(
    ("service", "kind", "command", "process_limit"),
    [
        ("", "unix", "smtp", "-"),
        ("slow lane", "unix", "smtp", "-"),
        ("slow", "unix", "", "-"),
        ("slow", "un\tix", "smtp", "-"),
        ("slow", "unix", "smtp", ""),
        ("slow", "unix", "smtp", "5 "),
    ],
)
def test_master_cf_entry_refuses_empty_or_spaced_fields(
    service: str, kind: str, command: str, process_limit: str
) -> None:
    with pytest.raises(ValueError, match=r"a master\.cf field is empty or has spaces"):
        postfix.master_cf_entry(service, kind, command, process_limit=process_limit)


def test_alias_lines() -> None:
    assert postfix.alias_lines([("postmaster", "root"), ("root", "machines@nos-oignons.net")]) == [
        "postmaster: root",
        "root: machines@nos-oignons.net",
    ]


def test_alias_lines_empty() -> None:
    assert postfix.alias_lines([]) == []


def test_map_lines_aligns_keys() -> None:
    assert postfix.map_lines([("orange.fr", "slow:"), ("yahoo.com", "yahoo:"), ("free.fr", "slow:")]) == [
        "orange.fr  slow:",
        "yahoo.com  yahoo:",
        "free.fr    slow:",
    ]


def test_map_lines_longest_key_sets_the_width() -> None:
    assert postfix.map_lines([("a@x.net", "schleuder:"), ("a-request@x.net", "schleuder:")]) == [
        "a@x.net          schleuder:",
        "a-request@x.net  schleuder:",
    ]


def test_map_lines_empty() -> None:
    assert postfix.map_lines([]) == []


def test_table() -> None:
    assert postfix.table("aliases") == "hash:/etc/postfix/oignons-mail/aliases"
    assert postfix.table("transport", "lmdb") == "lmdb:/etc/postfix/oignons-mail/transport"


def test_yes_no_and_comma_list() -> None:
    assert postfix.yes_no(True) == "yes"
    assert postfix.yes_no(False) == "no"
    assert postfix.comma_list(["NULL", "MD5"]) == "NULL, MD5"
    assert postfix.comma_list([]) == ""


def test_loopback_networks() -> None:
    # The wiki's [::ffff:127.0.0.0]/124 was a typo: 127.0.0.0/8 mapped into IPv6 is /104.
    assert postfix.LOOPBACK_NETWORKS == "127.0.0.0/8 [::ffff:127.0.0.0]/104 [::1]/128"
