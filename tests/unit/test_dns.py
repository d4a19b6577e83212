"""`oignons-mail dns` (src/oignons_mail/dns.py): the records, their zone-file lines, the check's logic.

The check runs here against a fake lookup (a dict of what "DNS" serves); the
real DNS check is exercised end to end (tests/e2e/test_deliverability.py).
"""

from __future__ import annotations

import base64
import copy
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest

from oignons_mail import dns, pin
from oignons_mail.cli import main
from oignons_mail.errors import SiteError
from oignons_mail.site import Site, load_site, parse_site

REPO = Path(__file__).resolve().parents[2]
SITE_FILE = REPO / "sites" / "nos-oignons.toml"
RELAY_SPKI = b"relay key"
NEXT_SPKI = b"next relay key"
DKIM = {
    d: dns.DkimKey(d, "bulbe1", f"dkim key of {d}".encode())
    for d in ("nos-oignons.net", "nos-oignons.org", "nos-oignons.fr")
}


@pytest.fixture
def site() -> Site:
    return load_site(SITE_FILE)


def records(site: Site) -> list[dns.DnsRecord]:
    return dns.site_records(site, [RELAY_SPKI], list(DKIM.values()))


def test_every_destination_gets_mx_and_spf(site: Site) -> None:
    found = records(site)
    for destination in site.relay.destinations:
        assert dns.DnsRecord(f"{destination}.", "MX", "10 bulbe.nos-oignons.net.", f"MX of {destination}") in found
        assert dns.DnsRecord(f"{destination}.", "TXT", "v=spf1 mx -all", f"SPF of {destination}") in found


def test_tlsa_is_the_sha256_pin_of_the_relay_key_on_25_and_465(site: Site) -> None:
    sha256 = pin.pins(RELAY_SPKI)["sha256"].replace(":", "")
    tlsa = [r for r in records(site) if r.type == "TLSA"]
    assert [(r.name, r.value) for r in tlsa] == [
        ("_25._tcp.bulbe.nos-oignons.net.", f"3 1 1 {sha256}"),
        ("_465._tcp.bulbe.nos-oignons.net.", f"3 1 1 {sha256}"),
    ]


def test_a_next_relay_key_adds_its_tlsa_beside_the_current_one(site: Site) -> None:
    tlsa = [r for r in dns.site_records(site, [RELAY_SPKI, NEXT_SPKI], []) if r.type == "TLSA"]
    assert len(tlsa) == 4
    assert {r.value for r in tlsa} == {dns.tlsa_value(RELAY_SPKI), dns.tlsa_value(NEXT_SPKI)}


def test_dkim_and_dmarc_for_each_signing_domain(site: Site) -> None:
    found = {r.name: r.value for r in records(site) if r.type == "TXT" and "_" in r.name}
    for domain, key in DKIM.items():
        assert found[f"bulbe1._domainkey.{domain}."] == "v=DKIM1; k=rsa; p=" + base64.b64encode(key.public_key).decode(
            "ascii"
        )
        assert found[f"_dmarc.{domain}."] == "v=DMARC1; p=none; rua=mailto:postmaster@nos-oignons.net"
    assert "_dmarc.bulbe.tetaneutral.net." not in found


def test_long_txt_values_are_split_into_strings_of_255_bytes() -> None:
    record = dns.DnsRecord("x.example.org.", "TXT", "a" * 300 + '"', "test")
    line = dns.zone_line(record, 60)
    assert line == 'x.example.org. 60 IN TXT "' + "a" * 255 + '" "' + "a" * 45 + '\\""'


def test_site_defaults_without_dkim_and_dns_tables() -> None:
    with SITE_FILE.open("rb") as file:
        data: dict[str, Any] = tomllib.load(file)
    del data["dkim"], data["dns"]
    site = parse_site(data, "site.toml")
    assert (site.dkim.selector, site.dkim.key_bits, site.dkim.domains) == ("dkim", 2048, ("nos-oignons.net",))
    assert (site.dns.spf, site.dns.dmarc_policy, site.dns.dmarc_rua) == (
        "v=spf1 mx -all",
        "none",
        "postmaster@nos-oignons.net",
    )


@pytest.mark.parametrize(
    ("table", "key", "value", "rule"),
    [
        ("dkim", "selector", "two.labels", "not a DKIM selector"),
        ("dkim", "key_bits", 1000, "not an RSA key size"),
        ("dkim", "domains", ["example.org"], "is not in relay.destinations"),
        ("dns", "spf", "mx -all", "not an SPF record"),
        ("dns", "dmarc_policy", "strict", "not a DMARC policy"),
        ("dns", "colour", "blue", "unknown key"),
    ],
)
def test_broken_dkim_and_dns_settings_are_refused(table: str, key: str, value: object, rule: str) -> None:
    with SITE_FILE.open("rb") as file:
        data: dict[str, Any] = copy.deepcopy(tomllib.load(file))
    data[table][key] = value
    with pytest.raises(SiteError) as error:
        parse_site(data, "site.toml")
    assert error.value.key.startswith(f"{table}.{key}")
    assert rule in error.value.rule


# --- the check, against a fake DNS ------------------------------------------


def serving(site: Site) -> dict[tuple[str, str], list[str]]:
    """What a DNS serving exactly our records answers, in the forms DNS gives them back."""
    answers: dict[tuple[str, str], list[str]] = {}
    for record in records(site):
        answers.setdefault((record.name, record.type), []).append(record.value)
    return answers


def lookup_in(answers: dict[tuple[str, str], list[str]]) -> dns.Lookup:
    def lookup(name: str, record_type: str) -> list[str]:
        return list(answers.get((name, record_type), []))

    return lookup


def validated(name: str, record_type: str) -> bool:
    return True


def statuses(site: Site, answers: dict[tuple[str, str], list[str]]) -> dict[str, str]:
    return {f.record.what: f.status for f in dns.check_records(records(site), lookup_in(answers), validated)}


def test_check_finds_every_record_fine(site: Site) -> None:
    assert set(statuses(site, serving(site)).values()) == {"fine"}


def test_check_ignores_case_spacing_tag_order_and_other_txt_records(site: Site) -> None:
    answers = serving(site)
    answers[("nos-oignons.net.", "MX")] = ["20 backup.example.org.", "10 BULBE.nos-oignons.net"]
    answers[("nos-oignons.net.", "TXT")] = ["google-site-verification=abc", "v=spf1  mx -all"]
    answers[("_dmarc.nos-oignons.net.", "TXT")] = ["v=DMARC1;rua=mailto:postmaster@nos-oignons.net; p=none"]
    tlsa = answers[("_25._tcp.bulbe.nos-oignons.net.", "TLSA")][0]
    answers[("_25._tcp.bulbe.nos-oignons.net.", "TLSA")] = [tlsa.upper().replace("3 1 1 ", "3 1 1 ")]
    assert set(statuses(site, answers).values()) == {"fine"}


def test_check_names_a_missing_and_a_different_record(site: Site) -> None:
    answers = serving(site)
    del answers[("bulbe1._domainkey.nos-oignons.org.", "TXT")]
    answers[("nos-oignons.fr.", "TXT")] = ["v=spf1 a ~all", "unrelated"]
    answers[("_465._tcp.bulbe.nos-oignons.net.", "TLSA")] = [dns.tlsa_value(NEXT_SPKI)]
    wrong = {what: status for what, status in statuses(site, answers).items() if status != "fine"}
    assert wrong == {
        "DKIM key bulbe1 of nos-oignons.org": "missing",
        "SPF of nos-oignons.fr": "different",
        "TLSA of bulbe.nos-oignons.net port 465": "different",
    }
    finding = next(
        f for f in dns.check_records(records(site), lookup_in(answers), validated) if f.status == "different"
    )
    assert "found:    v=spf1 a ~all" in finding.line()


def test_check_of_an_unanswering_server_is_an_error_not_a_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    keys, certificate = make_key_files(tmp_path)
    # 192.0.2.1 (TEST-NET-1) never answers; a short lifetime keeps the test fast.
    status = main(["dns", "--site", str(SITE_FILE), "--cert", str(certificate), "--dkim-dir", str(keys),
                   "--check", "--server", "127.0.0.254"])  # fmt: skip
    captured = capsys.readouterr()
    assert status == 1
    assert "oignons-mail: error: 127.0.0.254 did not answer nos-oignons.net. MX" in captured.err
    assert "Traceback" not in captured.err


def site_with(**dns_keys: object) -> Site:
    with SITE_FILE.open("rb") as file:
        data: dict[str, Any] = copy.deepcopy(tomllib.load(file))
    data["dns"].update(dns_keys)
    return parse_site(data, "site.toml")


def findings_of(
    site: Site, answers: dict[tuple[str, str], list[str]], name: str, record_type: str
) -> list[dns.Finding]:
    found = dns.check_records(records(site), lookup_in(answers), validated)
    return [f for f in found if f.record.name == name and f.record.type == record_type]


@pytest.mark.parametrize(
    ("name", "second"),
    [
        ("nos-oignons.org.", "v=spf1 a -all"),
        ("nos-oignons.org.", "v=spf1 mx -all"),  # the same twice is a permerror too
        ("_dmarc.nos-oignons.fr.", "v=DMARC1; p=reject"),
    ],
)
def test_check_calls_two_spf_or_dmarc_records_at_one_name_different(site: Site, name: str, second: str) -> None:
    answers = serving(site)
    assert [f.status for f in findings_of(site, answers, name, "TXT")] == ["fine"]  # positive control
    answers[(name, "TXT")] = [*answers[(name, "TXT")], second]
    (finding,) = findings_of(site, answers, name, "TXT")
    assert finding.status == "different"
    assert finding.found == tuple(answers[(name, "TXT")])
    assert "2 v=" in finding.line()
    assert "receivers use none of them" in finding.line()


def test_check_calls_a_tlsa_answer_without_the_ad_bit_unsigned(site: Site) -> None:
    answers = serving(site)
    name = "_25._tcp.bulbe.nos-oignons.net."

    def only_dkim_validated(lookup_name: str, record_type: str) -> bool:
        return record_type != "TLSA"

    signed = dns.check_records(records(site), lookup_in(answers), validated)
    unsigned = dns.check_records(records(site), lookup_in(answers), only_dkim_validated)
    assert {f.status for f in signed if f.record.type == "TLSA"} == {"fine"}
    assert {f.status for f in unsigned if f.record.type == "TLSA"} == {"unsigned"}
    assert {f.status for f in unsigned if f.record.type != "TLSA"} == {"fine"}  # only TLSA needs DNSSEC
    line = next(f.line() for f in unsigned if f.record.name == name)
    assert line.startswith(f"unsigned  TLSA of bulbe.nos-oignons.net port 25: {name} TLSA")
    assert "not DNSSEC-validated" in line
    # Without a way to know, nothing is validated: the default is unsigned, never fine.
    assert {f.status for f in dns.check_records(records(site), lookup_in(answers)) if f.record.type == "TLSA"} == {
        "unsigned"
    }
    # A wrong TLSA is different, signed or not.
    answers[(name, "TLSA")] = [dns.tlsa_value(NEXT_SPKI)]
    assert [f.status for f in dns.check_records(records(site), lookup_in(answers)) if f.record.name == name] == [
        "different"
    ]


RELAY_IPV4 = "192.0.2.25"
RELAY_IPV6 = "2001:db8::25"
PTR_IPV4 = "25.2.0.192.in-addr.arpa."
PTR_IPV6 = "5.2.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.ip6.arpa."


def reverse_dns(**changes: list[str]) -> dict[tuple[str, str], list[str]]:
    answers = {
        ("bulbe.nos-oignons.net.", "A"): [RELAY_IPV4],
        ("bulbe.nos-oignons.net.", "AAAA"): [RELAY_IPV6],
        (PTR_IPV4, "PTR"): ["bulbe.nos-oignons.net."],
        (PTR_IPV6, "PTR"): ["BULBE.nos-oignons.net"],
    }
    for key, value in changes.items():
        kind, _, family = key.partition("_")
        name = "bulbe.nos-oignons.net." if kind == "forward" else PTR_IPV4 if family == "4" else PTR_IPV6
        record_type = {"forward_4": "A", "forward_6": "AAAA"}.get(key, "PTR")
        answers[(name, record_type)] = value
    return answers


def reverse_statuses(site: Site, answers: dict[tuple[str, str], list[str]]) -> list[tuple[str, str]]:
    return [(f.record.name, f.status) for f in dns.check_reverse(site, lookup_in(answers))]


def test_reverse_dns_of_each_relay_address_is_fine_when_forward_confirmed(site: Site) -> None:
    assert reverse_statuses(site, reverse_dns()) == [(PTR_IPV4, "fine"), (PTR_IPV6, "fine")]


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"reverse_4": []}, [(PTR_IPV4, "missing"), (PTR_IPV6, "fine")]),
        ({"reverse_6": ["host-25.provider.example."]}, [(PTR_IPV4, "fine"), (PTR_IPV6, "different")]),
        ({"reverse_4": ["bulbe.nos-oignons.net.", "other.example."]}, [(PTR_IPV4, "different"), (PTR_IPV6, "fine")]),
        ({"forward_6": []}, [(PTR_IPV4, "fine")]),  # no AAAA: only the IPv4 address is the relay's
    ],
)
def test_reverse_dns_names_a_missing_or_wrong_ptr(
    site: Site, changes: dict[str, list[str]], expected: list[tuple[str, str]]
) -> None:
    assert reverse_statuses(site, reverse_dns(**changes)) == expected


def test_reverse_dns_of_the_site_addresses_must_be_confirmed_by_the_forward_name() -> None:
    site = site_with(relay_addresses=[RELAY_IPV4, RELAY_IPV6])
    assert reverse_statuses(site, reverse_dns()) == [(PTR_IPV4, "fine"), (PTR_IPV6, "fine")]
    # The PTR names the relay, but the relay's name does not have that address: not confirmed.
    (finding, _) = dns.check_reverse(site, lookup_in(reverse_dns(forward_4=["192.0.2.99"])))
    assert finding.status == "different"
    assert "bulbe.nos-oignons.net. has no A record 192.0.2.25" in finding.line()
    # The site's addresses are printed and checked as A and AAAA of the relay.
    published = [(r.name, r.type, r.value) for r in records(site) if r.type in ("A", "AAAA")]
    assert published == [
        ("bulbe.nos-oignons.net.", "A", RELAY_IPV4),
        ("bulbe.nos-oignons.net.", "AAAA", RELAY_IPV6),
    ]


def test_a_relay_without_an_address_is_missing(site: Site) -> None:
    (finding,) = dns.check_reverse(site, lookup_in({}))
    assert (finding.status, finding.record.type) == ("missing", "A")


def test_zone_text_prints_the_relay_addresses_and_the_ptr_to_ask_for() -> None:
    site = site_with(relay_addresses=[RELAY_IPV4, "2001:DB8:0::25"])
    lines = dns.zone_text(site, records(site)).splitlines()
    assert "bulbe.nos-oignons.net. 3600 IN A 192.0.2.25" in lines
    assert "bulbe.nos-oignons.net. 3600 IN AAAA 2001:db8::25" in lines
    assert f"; {PTR_IPV4} 3600 IN PTR bulbe.nos-oignons.net." in lines
    assert f"; {PTR_IPV6} 3600 IN PTR bulbe.nos-oignons.net." in lines
    plain = load_site(SITE_FILE)
    assert not any(" PTR " in line or " A " in line for line in dns.zone_text(plain, records(plain)).splitlines())


def test_each_node_that_may_send_anywhere_gets_an_spf_record_including_the_site_domain() -> None:
    with SITE_FILE.open("rb") as file:
        data: dict[str, Any] = copy.deepcopy(tomllib.load(file))
    assert data["relay"]["node_pins"] == {}
    assert [r for r in records(parse_site(data, "site.toml")) if r.what.startswith("SPF of node")] == []
    data["relay"]["node_pins"] = {"marcuse": "aa:" * 31 + "aa", "ekumen": "bb:" * 31 + "bb"}
    found = [(r.name, r.value) for r in records(parse_site(data, "site.toml")) if r.what.startswith("SPF of node")]
    assert found == [
        ("ekumen.nos-oignons.net.", "v=spf1 include:nos-oignons.net -all"),
        ("marcuse.nos-oignons.net.", "v=spf1 include:nos-oignons.net -all"),
    ]


def test_the_site_domain_has_a_dmarc_record_when_nodes_send_out_though_it_does_not_sign() -> None:
    """A node's mail passes DMARC by SPF: the policy at the site's domain must exist, signed or not."""
    with SITE_FILE.open("rb") as file:
        data: dict[str, Any] = copy.deepcopy(tomllib.load(file))
    data["dkim"]["domains"] = ["nos-oignons.org"]
    dmarc = [r.name for r in records(parse_site(data, "site.toml")) if r.what.startswith("DMARC of")]
    assert dmarc == ["_dmarc.nos-oignons.org."]
    data["relay"]["node_pins"] = {"marcuse": "aa:" * 31 + "aa"}
    found = [(r.name, r.value) for r in records(parse_site(data, "site.toml")) if "_dmarc" in r.name]
    assert found == [
        ("_dmarc.nos-oignons.org.", "v=DMARC1; p=none; rua=mailto:postmaster@nos-oignons.net"),
        ("_dmarc.nos-oignons.net.", "v=DMARC1; p=none; rua=mailto:postmaster@nos-oignons.net"),
        ("nos-oignons.org._report._dmarc.nos-oignons.net.", "v=DMARC1;"),
    ]


def test_dmarc_reports_to_another_domain_print_its_authorisation(site: Site) -> None:
    found = [(r.name, r.value) for r in records(site) if "_report._dmarc" in r.name]
    # rua is postmaster@nos-oignons.net: .org and .fr must authorise it, .net needs nothing.
    assert found == [
        ("nos-oignons.org._report._dmarc.nos-oignons.net.", "v=DMARC1;"),
        ("nos-oignons.fr._report._dmarc.nos-oignons.net.", "v=DMARC1;"),
    ]
    answers = serving(site)
    assert set(statuses(site, answers).values()) == {"fine"}
    del answers[("nos-oignons.fr._report._dmarc.nos-oignons.net.", "TXT")]
    wrong = {what: status for what, status in statuses(site, answers).items() if status != "fine"}
    assert wrong == {"DMARC report authorisation of nos-oignons.fr at nos-oignons.net": "missing"}


def test_dmarc_reports_within_the_domain_or_its_parent_need_no_authorisation() -> None:
    for rua in ("dmarc@bulbe.nos-oignons.net", "dmarc@nos-oignons.net"):
        with SITE_FILE.open("rb") as file:
            data: dict[str, Any] = copy.deepcopy(tomllib.load(file))
        data["dns"]["dmarc_rua"] = rua
        data["dkim"]["domains"] = ["nos-oignons.net", "bulbe.nos-oignons.net"]
        site = parse_site(data, "site.toml")
        assert [r for r in records(site) if "_report._dmarc" in r.name] == []


def test_tlsrpt_only_when_the_site_asks_for_it(site: Site) -> None:
    assert [r for r in records(site) if r.name.startswith("_smtp._tls.")] == []
    for rua, value in [
        ("tls-reports@nos-oignons.net", "v=TLSRPTv1; rua=mailto:tls-reports@nos-oignons.net"),
        ("https://reports.nos-oignons.net/tlsrpt", "v=TLSRPTv1; rua=https://reports.nos-oignons.net/tlsrpt"),
    ]:
        with_tlsrpt = site_with(tlsrpt_rua=rua)
        tlsrpt = [(r.name, r.value) for r in records(with_tlsrpt) if r.name.startswith("_smtp._tls.")]
        assert tlsrpt == [(f"_smtp._tls.{d}.", value) for d in site.relay.destinations]


def test_txt_strings_are_cut_at_255_bytes_not_characters() -> None:
    text = "v=spf1 " + "é" * 200  # 407 bytes of UTF-8, 207 characters
    chunks = dns.txt_chunks(text)
    assert [len(c.encode("utf-8")) for c in chunks] == [255, 152]
    assert "".join(chunks) == text
    assert dns.txt_chunks("a" * 255) == ["a" * 255]
    assert dns.txt_chunks("") == [""]


@pytest.mark.parametrize(
    ("key", "value", "rule"),
    [
        ("tlsrpt_rua", "mailto:x@nos-oignons.net", "neither a mail address nor an https: URI"),
        ("relay_addresses", ["bulbe.nos-oignons.net"], "not an IPv4 or IPv6 address"),
        ("relay_addresses", ["127.0.0.1"], "not an address others can reach"),
    ],
)
def test_broken_report_and_address_settings_are_refused(key: str, value: object, rule: str) -> None:
    with pytest.raises(SiteError) as error:
        site_with(**{key: value})
    assert error.value.key.startswith(f"dns.{key}")
    assert rule in error.value.rule


# --- the key files and the CLI's zone lines -------------------------------------


def make_key_files(directory: Path) -> tuple[Path, Path]:
    keys = directory / "dkim"
    keys.mkdir()
    for domain in DKIM:
        private = keys / f"{domain}.bulbe1.key"
        subprocess.run(["openssl", "genrsa", "-out", str(private), "1024"], check=True, capture_output=True)
        subprocess.run(
            ["openssl", "pkey", "-in", str(private), "-pubout", "-out", str(keys / f"{domain}.bulbe1.pub")], check=True
        )
    certificate = directory / "relay.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=bulbe",
         "-keyout", str(directory / "relay.key"), "-out", str(certificate)],
        check=True, capture_output=True,
    )  # fmt: skip
    return keys, certificate


def test_cli_prints_zone_lines_from_the_key_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    keys, certificate = make_key_files(tmp_path)
    (keys / "nos-oignons.net.old0.pub").write_bytes((keys / "nos-oignons.net.bulbe1.pub").read_bytes())
    (keys / "example.org.bulbe1.pub").write_bytes((keys / "nos-oignons.net.bulbe1.pub").read_bytes())
    assert main(["dns", "--site", str(SITE_FILE), "--cert", str(certificate), "--dkim-dir", str(keys)]) == 0
    lines = capsys.readouterr().out.splitlines()
    der = subprocess.run(
        ["openssl", "pkey", "-in", str(keys / "nos-oignons.net.bulbe1.key"), "-pubout", "-outform", "DER"],
        check=True,
        capture_output=True,
    ).stdout
    p = base64.b64encode(der).decode("ascii")
    expected = f'bulbe1._domainkey.nos-oignons.net. 3600 IN TXT "{("v=DKIM1; k=rsa; p=" + p)[:255]}"'
    assert any(line.startswith(expected) for line in lines), "\n".join(lines)
    # The previous selector's key stays published during a rotation; other domains' keys are not ours.
    assert any(line.startswith("old0._domainkey.nos-oignons.net. ") for line in lines)
    assert not any("example.org" in line for line in lines)
    spki = pin.subject_public_key_info(pin.certificate_from_file(certificate))
    sha256 = pin.pins(spki)["sha256"].replace(":", "")
    assert f"_25._tcp.bulbe.nos-oignons.net. 3600 IN TLSA 3 1 1 {sha256}" in lines


def test_cli_without_the_keys_says_where_to_run_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _, certificate = make_key_files(tmp_path)
    status = main(["dns", "--site", str(SITE_FILE), "--cert", str(certificate), "--dkim-dir", str(tmp_path / "none")])
    # Exit status 1 (incomplete), but every record that needs no key is printed.
    assert status == 1
    out, err = capsys.readouterr()
    assert "oignons-mail: incomplete: no DKIM public key for selector bulbe1 of nos-oignons.net" in err
    assert "nos-oignons.net. 3600 IN MX 10 bulbe.nos-oignons.net." in out
    assert '_dmarc.nos-oignons.net. 3600 IN TXT "v=DMARC1; p=none; rua=mailto:postmaster@nos-oignons.net"' in out
    assert "_25._tcp.bulbe.nos-oignons.net. 3600 IN TLSA 3 1 1 " in out
    assert "_domainkey" not in out


def test_cli_without_the_relays_certificate_prints_the_rest(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    text = SITE_FILE.read_text(encoding="utf-8").replace(
        'tls_cert_file = "/etc/ssl/certs/ssl-cert-snakeoil.pem"', f'tls_cert_file = "{tmp_path}/absent.pem"', 1
    )
    site_file = tmp_path / "site.toml"
    site_file.write_text(text, encoding="utf-8")
    assert main(["dns", "--site", str(site_file), "--dkim-dir", str(tmp_path / "none")]) == 1
    out, err = capsys.readouterr()
    assert f"no TLSA records: the relay's certificate {tmp_path}/absent.pem (relay.tls_cert_file)" in err
    assert "TLSA" not in out
    assert "nos-oignons.net. 3600 IN MX 10 bulbe.nos-oignons.net." in out


def test_a_key_file_not_named_domain_selector_pub_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "key.pem"
    path.write_text("-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n")
    with pytest.raises(dns.DnsError, match=r"not named DOMAIN\.SELECTOR\.pub"):
        dns.dkim_key_from_file(path)
