"""A private CA for TLS tests: a broker/server certificate it signed, and an unrelated CA (PEM files)."""

from __future__ import annotations

import ipaddress
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


def make_ca(name: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A self-signed CA certificate (valid for a day) and its key."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.now(UTC)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - timedelta(minutes=1))
            .not_valid_after(now + timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .sign(key, hashes.SHA256()))  # fmt: skip
    return key, cert


def tls_files(folder: Path) -> dict[str, Path]:
    """A CA, a server certificate it signed for 127.0.0.1 / localhost, and an unrelated CA, written to `folder`.

    Keys: `ca`, `other_ca`, `cert` (CN "broker"), `key` (PKCS#8, unencrypted).
    """
    ca_key, ca = make_ca("edgefleet test CA")
    _, other = make_ca("someone else's CA")
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(UTC)
    san = x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
    cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "broker")]))
            .issuer_name(ca.subject).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(minutes=1)).not_valid_after(now + timedelta(days=1))
            .add_extension(san, critical=False).sign(ca_key, hashes.SHA256()))  # fmt: skip
    pem = serialization.Encoding.PEM
    folder.mkdir(parents=True, exist_ok=True)
    files = {"ca": folder / "ca.pem", "other_ca": folder / "other-ca.pem", "cert": folder / "broker.pem",
             "key": folder / "broker.key"}  # fmt: skip
    files["ca"].write_bytes(ca.public_bytes(pem))
    files["other_ca"].write_bytes(other.public_bytes(pem))
    files["cert"].write_bytes(cert.public_bytes(pem))
    files["key"].write_bytes(key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return files
