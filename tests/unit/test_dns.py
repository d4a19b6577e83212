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


def statuses(site: Site, answers: dict[tuple[str, str], list[str]]) -> dict[str, str]:
    return {f.record.what: f.status for f in dns.check_records(records(site), lookup_in(answers))}


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
    finding = next(f for f in dns.check_records(records(site), lookup_in(answers)) if f.status == "different")
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
