"""Cloud-fallback errors (a branch of the agent's tree in agent/errors.py).

AgentError
└── FallbackError            the cloud could not answer; the message says why
    ├── FallbackUnavailable  no endpoint configured, device offline, or circuit breaker open (fails fast)
    ├── FallbackTimeout      the endpoint did not answer within the timeout, after all retries
    ├── FallbackHTTPError    the endpoint answered with an error status
    └── FallbackBadResponse  the answer was not JSON, or had the wrong outputs or shape
"""

from __future__ import annotations

from agent.errors import AgentError


class FallbackError(AgentError):
    """The cloud copy could not answer; `reason` is why the cloud was asked (set by the router)."""

    reason: str | None = None


class FallbackUnavailable(FallbackError):
    """No endpoint, device offline, or breaker open: failed without calling the network."""


class FallbackTimeout(FallbackError):
    """No answer within the timeout after all retries."""


class FallbackHTTPError(FallbackError):
    """The endpoint answered with an error status."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


class FallbackBadResponse(FallbackError):
    """Malformed JSON, missing outputs, or outputs of the wrong shape."""
