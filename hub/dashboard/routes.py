"""Dashboard pages under /dashboard."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import RedirectResponse

router = APIRouter(prefix="/dashboard", include_in_schema=False)


@router.get("")
def index() -> RedirectResponse:
    """Placeholder until the pages land."""
    return RedirectResponse("/docs")
