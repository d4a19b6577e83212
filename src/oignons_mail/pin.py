"""Public-key pins of the relay, as the smarthosts' smtp_tls_fingerprint_cert_match wants them.

The wiki's pipeline (`openssl x509 -pubkey | openssl pkey -pubin -outform DER
| openssl dgst -sha1 -c`) digests the certificate's SubjectPublicKeyInfo;
this does the same in Python, from a PEM file or from the certificate a live
server presents after STARTTLS.
"""

from __future__ import annotations

import hashlib
import smtplib
import ssl
from pathlib import Path

from oignons_mail.errors import UserMessageError

DIGESTS = ("sha256", "sha1")


class PinError(UserMessageError):
    """The certificate could not be read or fetched."""


def _der_element(data: bytes, offset: int) -> tuple[int, int, int]:
    """(tag, start of content, end of element) of the DER element at offset."""
    if offset + 2 > len(data):
        raise PinError("not a DER certificate: truncated")
    tag, length = data[offset], data[offset + 1]
    start = offset + 2
    if length & 0x80:
        count = length & 0x7F
        if count == 0 or count > 4 or start + count > len(data):
            raise PinError("not a DER certificate: bad length")
        length = int.from_bytes(data[start : start + count], "big")
        start += count
    end = start + length
    if end > len(data):
        raise PinError("not a DER certificate: truncated")
    return tag, start, end


def subject_public_key_info(certificate_der: bytes) -> bytes:
    """The DER SubjectPublicKeyInfo of an X.509 certificate (RFC 5280, 4.1)."""
    tag, start, _ = _der_element(certificate_der, 0)  # Certificate
    if tag != 0x30:
        raise PinError("not a DER certificate: no outer SEQUENCE")
    tag, offset, tbs_end = _der_element(certificate_der, start)  # tbsCertificate
    if tag != 0x30:
        raise PinError("not a DER certificate: no tbsCertificate")
    if certificate_der[offset] == 0xA0:  # [0] version, present from v2 on
        offset = _der_element(certificate_der, offset)[2]
    # serialNumber, signature, issuer, validity, subject: then the key.
    for _ in range(5):
        offset = _der_element(certificate_der, offset)[2]
    tag, _, end = _der_element(certificate_der, offset)
    if tag != 0x30 or end > tbs_end:
        raise PinError("not a DER certificate: no subjectPublicKeyInfo")
    return certificate_der[offset:end]


def pins(spki_der: bytes) -> dict[str, str]:
    """{digest: aa:bb:...} for each digest the smarthost accepts."""
    result = {}
    for digest in DIGESTS:
        hexdigest = hashlib.new(digest, spki_der).hexdigest()
        result[digest] = ":".join(hexdigest[i : i + 2] for i in range(0, len(hexdigest), 2))
    return result


def certificate_from_file(path: Path) -> bytes:
    try:
        text = path.read_text(encoding="ascii")
    except (OSError, UnicodeDecodeError) as error:
        raise PinError(f"{path}: cannot be read as a PEM certificate: {error}") from None
    begin = text.find("-----BEGIN CERTIFICATE-----")
    end = text.find("-----END CERTIFICATE-----", begin)
    if begin < 0 or end < 0:
        raise PinError(f"{path}: no PEM certificate in it (-----BEGIN CERTIFICATE-----)")
    # The first certificate of a chain file is the server's own.
    return ssl.PEM_cert_to_DER_cert(text[begin : end + len("-----END CERTIFICATE-----")])


def certificate_from_server(host: str, port: int, timeout: float = 20.0) -> bytes:
    """The certificate a mail server presents: STARTTLS on 25/587, TLS at once on 465."""
    context = ssl.create_default_context()
    # Pinning is the point: the certificate is not trusted here, only digested.
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    try:
        if port == 465:
            with smtplib.SMTP_SSL(host, port, timeout=timeout, context=context) as client:
                sock = client.sock
                assert isinstance(sock, ssl.SSLSocket)
                der = sock.getpeercert(binary_form=True)
        else:
            with smtplib.SMTP(host, port, timeout=timeout) as client:
                client.starttls(context=context)
                sock = client.sock
                assert isinstance(sock, ssl.SSLSocket)
                der = sock.getpeercert(binary_form=True)
    except (OSError, smtplib.SMTPException) as error:
        raise PinError(f"{host}:{port}: no certificate: {error}") from None
    if not der:
        raise PinError(f"{host}:{port}: the server presented no certificate")
    return der
