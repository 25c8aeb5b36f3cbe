"""Cloud fallback: ask TF Serving, TorchServe or a KServe v2 server when the device cannot answer."""

from agent.fallback.breaker import BreakerState, CircuitBreaker
from agent.fallback.client import CloudClient, OutputShape
from agent.fallback.config import EndpointConfig, FallbackPolicy
from agent.fallback.errors import (
    FallbackBadResponse,
    FallbackError,
    FallbackHTTPError,
    FallbackTimeout,
    FallbackUnavailable,
)
from agent.fallback.router import Answer, FallbackReason, FallbackRouter, FallbackStats

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
