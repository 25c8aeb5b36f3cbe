"""Every error the agent raises, as one tree.

AgentError
├── ConfigError              settings, identity or profile unusable
├── EnrollmentError          the hub refused or did not answer enrollment
├── RuntimeUnavailable       no runtime installed for this artifact format
├── ModelLoadError           the runtime could not load the artifact
├── InputError               predict inputs of the wrong name, shape, dtype or size
├── DownloadError            network failure after all retries (the .part file is kept)
├── RefusedUpdate            verification said no; the running model keeps serving
│   ├── DigestMismatch       length or sha256 differs from the signed metadata
│   ├── MetadataRefused      expired, bad signature, rolled back or unreachable TUF metadata
│   ├── ProfileMismatch      the manifest was built for another device profile
│   └── OlderVersion         older than the installed version and not an explicit rollback
├── SelfTestFailed           golden cases, NaN/inf or latency budget failed
├── StoreError               the on-disk model store is inconsistent
└── LifecycleError           an impossible transition or a runaway loop
"""

from __future__ import annotations


class AgentError(Exception):
    """Base of every agent error."""


class ConfigError(AgentError):
    """Settings, identity or profile unusable."""


class EnrollmentError(AgentError):
    """The hub refused or did not answer enrollment."""


class RuntimeUnavailable(AgentError):
    """No runtime is installed for this artifact format."""


class ModelLoadError(AgentError):
    """The runtime could not load the artifact."""


class InputError(AgentError):
    """Predict inputs of the wrong name, shape, dtype or size."""


class DownloadError(AgentError):
    """The network failed after all retries; the partial file is kept for resume."""


class Unreachable(DownloadError):
    """One request for update metadata or a manifest failed (refused, cut, timed out): retried with backoff."""


class RefusedUpdate(AgentError):
    """Verification refused an update; the running model keeps serving."""


class DigestMismatch(RefusedUpdate):
    """Length or sha256 differs from the hub's signed metadata."""


class MetadataRefused(RefusedUpdate):
    """TUF metadata expired, badly signed, rolled back or unreachable."""


class ProfileMismatch(RefusedUpdate):
    """The manifest was built for another device profile."""


class RuntimeMissing(RefusedUpdate):
    """This device has no runtime for the artifact's format (refused before downloading it)."""


class OlderVersion(RefusedUpdate):
    """Older than the installed version and not an explicit rollback."""


class SelfTestFailed(AgentError):
    """The self-test (golden cases, NaN/inf, latency budget) failed."""


class OutputMismatch(AgentError):
    """A shadow candidate's outputs do not line up with the serving version's (names, count or shapes)."""


class StoreError(AgentError):
    """The on-disk model store is inconsistent."""


class LifecycleError(AgentError):
    """An impossible lifecycle transition or a runaway loop."""


class Superseded(AgentError):
    """A newer desired state no longer asks for the update under way: it ends (failed, with the reason)."""


class Interrupted(AgentError):
    """The agent is stopping; the persisted step resumes at the next start."""
