"""The pin helper against the wiki's openssl pipeline, on certificates made here."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from oignons_mail.cli import main
from oignons_mail.pin import PinError, certificate_from_file, pins, subject_public_key_info

KEYS = {"rsa": ["-newkey", "rsa:2048"], "ec": ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"]}


def make_certificate(tmp_path: Path, kind: str) -> Path:
    cert = tmp_path / f"{kind}.pem"
    key = tmp_path / "key.pem"
    subject = ["-subj", "/CN=bulbe.example.org", "-days", "1"]
    subprocess.run(
        ["openssl", "req", "-x509", *KEYS[kind], *subject, "-nodes", "-keyout", str(key), "-out", str(cert)],
        check=True,
        capture_output=True,
    )
    return cert


def openssl_pin(cert: Path, digest: str) -> str:
    """The wiki's pipeline: x509 -pubkey | pkey -pubin -outform DER | dgst -c."""
    public_key = subprocess.run(
        ["openssl", "x509", "-in", str(cert), "-pubkey", "-noout"], check=True, capture_output=True
    ).stdout
    der = subprocess.run(
        ["openssl", "pkey", "-pubin", "-outform", "DER"], input=public_key, check=True, capture_output=True
    ).stdout
    out = subprocess.run(["openssl", "dgst", f"-{digest}", "-c"], input=der, check=True, capture_output=True)
    return out.stdout.decode().split("= ")[1].strip()


@pytest.mark.parametrize("kind", sorted(KEYS))
def test_pins_match_the_wikis_openssl_pipeline(tmp_path: Path, kind: str) -> None:
    cert = make_certificate(tmp_path, kind)
    computed = pins(subject_public_key_info(certificate_from_file(cert)))
    assert computed == {"sha256": openssl_pin(cert, "sha256"), "sha1": openssl_pin(cert, "sha1")}


def test_pin_command_prints_both_digests(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cert = make_certificate(tmp_path, "ec")
    assert main(["pin", "--cert", str(cert)]) == 0
    assert capsys.readouterr().out == f"sha256 {openssl_pin(cert, 'sha256')}\nsha1 {openssl_pin(cert, 'sha1')}\n"


def test_a_file_without_a_certificate_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    not_a_cert = tmp_path / "key.pem"
    not_a_cert.write_text("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")
    assert main(["pin", "--cert", str(not_a_cert)]) == 1
    assert f"{not_a_cert}: no PEM certificate in it" in capsys.readouterr().err


def test_truncated_der_is_refused() -> None:
    with pytest.raises(PinError, match="truncated"):
        subject_public_key_info(b"\x30\x82\x05\x00\x30")
