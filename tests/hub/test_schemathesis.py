"""Schemathesis against the hub's OpenAPI schema: no 5xx, and every response matches the schema."""

from __future__ import annotations

import tempfile
from pathlib import Path

import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import response_schema_conformance

from hub.api.main import create_app
from hub.settings import HubSettings

TOKEN = "schemathesis-admin-token"
_DATA = Path(tempfile.mkdtemp(prefix="edgefleet-schemathesis-"))
app = create_app(HubSettings(data_dir=_DATA, admin_token=TOKEN, mqtt_enabled=False), background=False)
schema = schemathesis.openapi.from_asgi("/openapi.json", app)


@schema.parametrize()
@settings(max_examples=20, deadline=None, suppress_health_check=list(HealthCheck))
def test_api_conforms(case: schemathesis.Case) -> None:
    case.call_and_validate(
        headers={"Authorization": f"Bearer {TOKEN}"}, checks=[not_a_server_error, response_schema_conformance]
    )
