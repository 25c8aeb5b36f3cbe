"""Cloud fallback: ask TF Serving, TorchServe or a KServe v2 server when the device cannot answer."""

from typing import TYPE_CHECKING, Any

from agent.fallback.breaker import BreakerState, CircuitBreaker
from agent.fallback.config import EndpointConfig, FallbackPolicy
from agent.fallback.errors import (
    FallbackBadResponse,
    FallbackError,
    FallbackHTTPError,
    FallbackTimeout,
    FallbackUnavailable,
)
from agent.fallback.router import Answer, FallbackReason, FallbackRouter, FallbackStats

if TYPE_CHECKING:
    from agent.fallback.client import CloudClient, OutputShape


def __getattr__(name: str) -> Any:
    """CloudClient and OutputShape load on first use: their module imports httpx (~11 MB with its CLI deps)."""
    if name in ("CloudClient", "OutputShape"):
        from agent.fallback import client

        return getattr(client, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "Answer",
    "BreakerState",
    "CircuitBreaker",
    "CloudClient",
    "EndpointConfig",
    "FallbackBadResponse",
    "FallbackError",
    "FallbackHTTPError",
    "FallbackPolicy",
    "FallbackReason",
    "FallbackRouter",
    "FallbackStats",
    "FallbackTimeout",
    "FallbackUnavailable",
    "OutputShape",
]
