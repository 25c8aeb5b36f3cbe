"""A robust client for one cloud endpoint: timeouts, bounded retries with backoff, circuit breaker."""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import httpx
import numpy as np

from agent.fallback.breaker import BreakerState, CircuitBreaker
from agent.fallback.config import EndpointConfig
from agent.fallback.errors import (
    FallbackBadResponse,
    FallbackError,
    FallbackHTTPError,
    FallbackTimeout,
    FallbackUnavailable,
)
from agent.fallback.protocols import PROTOCOLS, Arrays

RETRYABLE_STATUS = frozenset({429, 502, 503, 504})


@dataclass(frozen=True)
class OutputShape:
    """What the answer must look like: per-sample dims (None = any) for one named output."""

    name: str
    sample_shape: tuple[int | None, ...] | None  # None: no manifest yet, only the batch size is checked


class CloudClient:
    """Calls one endpoint; fails fast when offline or when the breaker is open."""

    def __init__(
        self,
        cfg: EndpointConfig,
        outputs: Sequence[OutputShape],
        *,
        transport: httpx.BaseTransport | None = None,
        online: Callable[[], bool] = lambda: True,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.cfg = cfg
        self.outputs = list(outputs)
        self.protocol = PROTOCOLS[cfg.type]
        self.breaker = CircuitBreaker(cfg.breaker_failures, cfg.breaker_reset_s, clock)
        self._online = online
        self._sleep = sleep
        headers = {"Content-Type": "application/json"}
        if cfg.auth_token is not None:
            headers[cfg.auth_header] = f"{cfg.auth_scheme} {cfg.auth_token.get_secret_value()}".strip()
        verify: bool | str = str(cfg.ca_file) if cfg.ca_file else cfg.verify_tls
        self._http = httpx.Client(
            base_url=cfg.url.rstrip("/"),
            headers=headers,
            timeout=httpx.Timeout(cfg.timeout_s, connect=cfg.connect_timeout_s),
            verify=verify,
            transport=transport,
        )

    @property
    def url(self) -> str:
        return f"{self.cfg.url.rstrip('/')}{self.protocol.path(self.cfg)}"

    def close(self) -> None:
        self._http.close()

    def predict(self, inputs: Arrays) -> Arrays:
        """Outputs by name for a batch of float inputs; raises a FallbackError subclass, never hangs."""
        if not self._online():
            raise FallbackUnavailable(f"device offline: not calling {self.url}")
        if not self.breaker.allow():
            raise FallbackUnavailable(
                f"circuit open for {self.url} after repeated failures; next probe in {self.breaker.retry_in_s():.1f}s"
            )
        body = json.dumps(self.protocol.encode(inputs)).encode()
        last: FallbackError | None = None
        for attempt in range(self.cfg.retries + 1):
            if attempt:
                self._sleep(self.cfg.backoff_s * (2 ** (attempt - 1)) * (0.5 + random.random()))
            try:
                outputs = self._once(body, len(next(iter(inputs.values()))))
            except (FallbackTimeout, FallbackHTTPError) as e:
                last = e
                retryable = isinstance(e, FallbackTimeout) or e.status in RETRYABLE_STATUS
                if not retryable or self.breaker.state is not BreakerState.CLOSED:
                    break
                continue
            except FallbackError as e:
                last = e
                break
            self.breaker.record_success()
            return outputs
        self.breaker.record_failure()
        assert last is not None
        raise last

    def _once(self, body: bytes, batch: int) -> Arrays:
        path = self.protocol.path(self.cfg)
        try:
            resp = self._http.post(path, content=body)
        except httpx.TimeoutException as e:
            raise FallbackTimeout(f"{self.url}: no answer within {self.cfg.timeout_s:g}s ({type(e).__name__})") from e
        except httpx.TransportError as e:
            # Connection refused / reset: the endpoint is down or the network is.
            raise FallbackTimeout(f"{self.url}: {type(e).__name__}: {e}") from e
        if resp.status_code >= 400:
            raise FallbackHTTPError(f"{self.url}: HTTP {resp.status_code}: {_error_text(resp)}", resp.status_code)
        try:
            payload = resp.json()
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise FallbackBadResponse(f"{self.url}: answer is not JSON: {resp.text[:120]!r}") from e
        outputs = self.protocol.decode(payload, [o.name for o in self.outputs])
        for spec in self.outputs:
            _check_shape(outputs[spec.name], spec, batch, self.url)
        return outputs


def _error_text(resp: httpx.Response) -> str:
    try:
        data = resp.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        return resp.text[:200]
    if isinstance(data, dict):
        return str(data.get("error") or data.get("message") or data)[:200]
    return str(data)[:200]


def _check_shape(arr: np.ndarray, spec: OutputShape, batch: int, url: str) -> None:
    if spec.sample_shape is None:
        if arr.ndim < 1 or arr.shape[0] != batch:
            raise FallbackBadResponse(f"{url}: output {spec.name!r} has shape {list(arr.shape)}, expected {batch} rows")
        return
    want = (batch, *spec.sample_shape)
    if arr.ndim != len(want) or any(w is not None and w != g for w, g in zip(want, arr.shape, strict=True)):
        shown = ", ".join("?" if d is None else str(d) for d in want)
        raise FallbackBadResponse(f"{url}: output {spec.name!r} has shape {list(arr.shape)}, expected ({shown})")
