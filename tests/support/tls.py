"""A private PKI for TLS failure tests: on top of tests/support/tlsfiles.py's CA, the certificates a device
must refuse (expired, another host name, an unknown CA) and device (client) certificates for mTLS."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tests.support.tlsfiles import make_ca

LOOPBACK_NAMES = ("localhost", "127.0.0.1")


@dataclass(frozen=True)
class KeyPair:
    """A certificate and its private key, as PEM files."""

    cert: Path
    key: Path


@dataclass(frozen=True)
class Pki:
    """Every file a TLS test needs, written into one folder."""

    ca: Path  # the CA the device trusts (hub_ca_file / mqtt_ca_file); it also signs device certificates
    other_ca: Path  # a CA nobody here trusts
    server: KeyPair  # for 127.0.0.1 / localhost, signed by `ca`
    expired: KeyPair  # the same names, signed by `ca`, expired yesterday
    wrong_host: KeyPair  # signed by `ca`, for other.example only
    untrusted: KeyPair  # for 127.0.0.1 / localhost, signed by `other_ca`
    client: KeyPair  # a device certificate (clientAuth) signed by `ca`
    other_client: KeyPair  # a device certificate signed by `other_ca`


def issue(
    folder: Path,
    name: str,
    issuer: tuple[ec.EllipticCurvePrivateKey, x509.Certificate],
    *,
    hosts: tuple[str, ...] = LOOPBACK_NAMES,
    client: bool = False,
    expired: bool = False,
) -> KeyPair:
    """A leaf certificate for `hosts` (DNS names or IP addresses) signed by `issuer`, written as NAME.pem/.key."""
    ca_key, ca = issuer
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(UTC)
    start, end = now - timedelta(minutes=1), now + timedelta(days=1)
    if expired:
        start, end = now - timedelta(days=3), now - timedelta(days=1)
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    usage = ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH
    builder = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
               .issuer_name(ca.subject).public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(start).not_valid_after(end)
               .add_extension(x509.ExtendedKeyUsage([usage]), critical=False))  # fmt: skip
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    pem = serialization.Encoding.PEM
    pair = KeyPair(folder / f"{name}.pem", folder / f"{name}.key")
    pair.cert.write_bytes(cert.public_bytes(pem))
    pair.key.write_bytes(key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return pair


def make_pki(folder: Path) -> Pki:
    """A trusted CA, an unrelated one, and every server and device certificate the TLS tests use."""
    folder.mkdir(parents=True, exist_ok=True)
    trusted, other = make_ca("edgefleet test CA"), make_ca("someone else's CA")
    pem = serialization.Encoding.PEM
    (folder / "ca.pem").write_bytes(trusted[1].public_bytes(pem))
    (folder / "other-ca.pem").write_bytes(other[1].public_bytes(pem))
    return Pki(
        ca=folder / "ca.pem",
        other_ca=folder / "other-ca.pem",
        server=issue(folder, "server", trusted),
        expired=issue(folder, "expired", trusted, expired=True),
        wrong_host=issue(folder, "wrong-host", trusted, hosts=("other.example",)),
        untrusted=issue(folder, "untrusted", other),
        client=issue(folder, "device", trusted, hosts=(), client=True),
        other_client=issue(folder, "other-device", other, hosts=(), client=True),
    )
