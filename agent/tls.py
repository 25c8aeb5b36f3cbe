"""TLS for the agent's two connections, the hub's HTTPS and the broker's MQTT over TLS: one way to build the
client context, and one way to tell in one line why a handshake failed."""

from __future__ import annotations

import re
import ssl
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from agent.settings import AgentSettings

# OpenSSL verify codes (X509_V_ERR_*) for "no chain to a CA this device trusts".
_UNTRUSTED = {2, 18, 19, 20, 21}
# Alerts a server sends when it wants a client certificate and got none.
_CERTIFICATE_WANTED = {"TLSV13_ALERT_CERTIFICATE_REQUIRED", "SSLV3_ALERT_HANDSHAKE_FAILURE"}
_SSL_TEXT = re.compile(r"^\[SSL(?:: (?P<reason>\w+))?\] (?P<text>.*?)(?: \(_ssl\.c:\d+\))?$")


def client_context(ca_file: Path | None, cert_file: Path | None = None, key_file: Path | None = None) -> ssl.SSLContext:
    """A client context that verifies the chain and the host name (TLS 1.2 or newer) against `ca_file` (default:
    the system's trusted CAs) and presents the device's certificate `cert_file` / `key_file` when given."""
    context = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if cert_file is not None:
        context.load_cert_chain(str(cert_file), str(key_file) if key_file else None, password=b"")  # never prompt
    return context


def hub_context(settings: AgentSettings) -> ssl.SSLContext:
    """The context for the hub's HTTPS (enrollment, TUF metadata, artifacts)."""
    return client_context(settings.hub_ca_file, settings.client_cert_file, settings.client_key_file)


def hub_failure(error: BaseException, settings: AgentSettings, url: str) -> str | None:
    """One line for a request to the hub at `url` that TLS refused; None when TLS is not why it failed."""
    client_cert = settings.client_cert_file is not None
    line = tls_failure(error, peer="hub", ca_setting="hub_ca_file", ca_file=settings.hub_ca_file,
                       client_cert=client_cert)  # fmt: skip
    if line is None and url.lower().startswith("https://") and "without sending a response" in str(error):
        return closed_during_tls(peer="hub", client_cert=client_cert)
    return line


def ssl_error_in(error: BaseException) -> ssl.SSLError | None:
    """The `ssl.SSLError` that caused `error` (httpx wraps it twice), if one did."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        if isinstance(current, ssl.SSLError):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def tls_failure(
    error: BaseException | str, *, peer: str, ca_setting: str, ca_file: Path | None, client_cert: bool
) -> str | None:
    """Why a TLS connection to `peer` ("hub", "broker") failed, in one line; None when `error` is no TLS error.

    `error` is an exception (or the text of one, as paho logs it). The line says which check failed (the
    certificate expired, a CA this device does not trust, another host name; a client certificate wanted or
    refused) and ends with OpenSSL's reason code, as in `certificate verify failed: certificate has expired
    (CERTIFICATE_VERIFY_FAILED)`.
    """
    if isinstance(error, str):
        match = _SSL_TEXT.match(error.strip())
        if match is None:
            return None
        reason, text = match["reason"] or "", match["text"]
    else:
        found = ssl_error_in(error)
        if found is None:
            return None
        if isinstance(found, ssl.SSLCertVerificationError):
            return _verify_failure(found, peer=peer, ca_setting=ca_setting, ca_file=ca_file)
        reason = str(getattr(found, "reason", None) or "")
        match = _SSL_TEXT.match(str(found))
        text = match["text"] if match else (found.strerror or str(found))
    if reason == "CERTIFICATE_VERIFY_FAILED":
        return f"{text} ({reason})"
    if reason in _CERTIFICATE_WANTED and not client_cert:
        return (f"the {peer} wants a client certificate and this device has none: set client_cert_file and "
                f"client_key_file ({reason})")  # fmt: skip
    if "ALERT" in reason and client_cert:
        return f"the {peer} refused this device's client certificate (client_cert_file): {text} ({reason})"
    return f"{text} ({reason})" if reason else text


def _verify_failure(error: ssl.SSLCertVerificationError, *, peer: str, ca_setting: str, ca_file: Path | None) -> str:
    message = str(error.verify_message or "").rstrip(".") or "certificate verify failed"
    if error.verify_code in _UNTRUSTED:
        trusted = f"the CA in {ca_setting} ({ca_file})" if ca_file else f"the system's CAs (set {ca_setting})"
        message += f"; the {peer}'s certificate is not signed by {trusted}"
    return f"certificate verify failed: {message} ({error.reason or 'CERTIFICATE_VERIFY_FAILED'})"


def closed_during_tls(*, peer: str, client_cert: bool) -> str:
    """The line for an HTTPS peer that hung up before answering: a TLS 1.3 server refuses a client certificate
    (or its absence) after the client's side of the handshake is done, and Python's servers send no alert."""
    if client_cert:
        return (f"the {peer} closed the connection without answering: it may not accept this device's client "
                "certificate (client_cert_file)")  # fmt: skip
    return (f"the {peer} closed the connection without answering: it may require a client certificate "
            "(set client_cert_file and client_key_file)")  # fmt: skip
