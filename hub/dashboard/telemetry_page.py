"""Telemetry per model version (filled in once the hub's telemetry API is documented)."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter()
