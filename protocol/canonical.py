"""Canonical JSON: sorted keys, no insignificant whitespace, UTF-8 — stable byte for byte."""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel


def canonical_json(value: BaseModel | Any) -> str:
    """Serialise a model (or plain JSON value) the same way every time."""
    data = value.model_dump(mode="json") if isinstance(value, BaseModel) else value
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def canonical_bytes(value: BaseModel | Any) -> bytes:
    """`canonical_json` encoded as UTF-8."""
    return canonical_json(value).encode("utf-8")
