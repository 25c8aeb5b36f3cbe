"""Hub exceptions. Routes turn them into HTTP status codes; the CLI into one readable line.

HubError
├── NotFound                 (404) a model, device, rollout or token that does not exist
├── Conflict                 (409) an immutable version pushed again with other bytes, a duplicate id
├── InvalidInput             (422/400) a malformed upload, manifest or request
├── AuthError                (401) missing or wrong bearer token
│   └── Forbidden            (403) a valid token that may not do this
├── TufRepositoryError       the signed metadata cannot be produced or read
│   └── SigningKeyMissing    a role key (e.g. the offline root key) is not in the data dir
├── StorageError             (500) the metadata/artifact store cannot be used (wrong database for it, I/O)
│   └── BlobNotFound         (404) nothing stored under that key
├── BrokerConfigError        (503) a Mosquitto password/ACL candidate failed validation; nothing replaced
└── RolloutError
    └── InvalidTransition    (409) the rollout's state machine has no such transition
"""

from __future__ import annotations


class HubError(Exception):
    """Base of every error the hub raises on purpose."""

    status_code = 400


class NotFound(HubError):
    """The thing asked for does not exist."""

    status_code = 404


class Conflict(HubError):
    """The request conflicts with stored state (immutable versions, duplicate ids)."""

    status_code = 409


class InvalidInput(HubError):
    """A malformed upload, manifest or request."""

    status_code = 422


class AuthError(HubError):
    """Missing or unknown bearer token."""

    status_code = 401


class Forbidden(AuthError):
    """A valid token that may not act on this resource."""

    status_code = 403


class TufRepositoryError(HubError):
    """The TUF metadata cannot be produced or read."""

    status_code = 500


class SigningKeyMissing(TufRepositoryError):
    """A role's private key is not available (e.g. the root key is kept offline)."""


class StorageError(HubError):
    """The store of TUF metadata and targets (hub/storage/) cannot be used as asked."""

    status_code = 500


class BlobNotFound(StorageError):
    """Nothing is stored under the key asked for."""

    status_code = 404


class BrokerConfigError(HubError):
    """A candidate Mosquitto password/ACL configuration was rejected; the live files are untouched."""

    status_code = 503


class RolloutError(HubError):
    """Base of rollout engine errors."""

    status_code = 409


class InvalidTransition(RolloutError):
    """The rollout state machine has no transition for this (state, event)."""
