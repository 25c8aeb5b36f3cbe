"""EdgeFleet wire contracts shared by converter, hub and agent (pydantic, no heavy deps)."""

from protocol.canonical import canonical_json

WIRE_VERSION = 1

__all__ = ["WIRE_VERSION", "canonical_json"]
