"""TUF signing keys on disk: ed25519 private keys as PEM files (0600), read back as signers.

A key file is written once, exclusively (`O_EXCL`), and fsynced with its directory before any metadata
names its public key: a crash can leave a key that nothing trusts yet, never trusted metadata whose key is
lost. Rotation (TufRepository.rotate_key) writes the new key as `keys/<role>.pem.next` and renames it over
`keys/<role>.pem` once the new root that trusts it is published; the old private key is gone at that rename.
"""

from __future__ import annotations

import os
from pathlib import Path

from cryptography.hazmat.primitives.serialization import load_pem_private_key
from securesystemslib.signer import CryptoSigner, SSlibKey  # type: ignore[attr-defined]

from hub.errors import SigningKeyMissing, TufRepositoryError


def load_signer(key_file: Path, role: str) -> CryptoSigner:
    """The signer in a PEM file; SigningKeyMissing if there is no such file."""
    if not key_file.exists():
        raise SigningKeyMissing(f"the {role} key is not at {key_file} (offline?): see docs/hub.md")
    return signer_from_pem(key_file.read_bytes(), source=str(key_file))


def signer_from_pem(pem: bytes, *, source: str) -> CryptoSigner:
    """The signer of an unencrypted PEM private key (`source` names it in the error)."""
    try:
        private_key = load_pem_private_key(pem, password=None)
        return CryptoSigner(private_key, SSlibKey.from_crypto(private_key.public_key()))
    except (ValueError, TypeError) as e:
        raise TufRepositoryError(f"{source} is not an unencrypted ed25519 PEM private key: {e}") from e


def create_key_file(key_file: Path) -> CryptoSigner:
    """Generate an ed25519 key and write it to `key_file` (which must not exist), 0600, fsynced."""
    signer = CryptoSigner.generate_ed25519()
    key_file.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError as e:
        raise TufRepositoryError(f"{key_file} already exists; not overwriting a key") from e
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(signer.private_bytes)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(key_file, 0o600)  # whatever the umask was
    except BaseException:
        key_file.unlink(missing_ok=True)
        raise
    fsync_dir(key_file.parent)
    return signer


def fsync_dir(directory: Path) -> None:
    """Make renames and new entries in `directory` durable."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
