"""Base model for every contract that crosses a trust boundary."""

from __future__ import annotations

from typing import Annotated, Self

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from protocol.canonical import canonical_json

# Names used in topics, paths and file names: no slashes, no wildcards, no dots at the start.
Identifier = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_-]{1,64}$")]
ModelName = Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9_-]{0,63}$")]
Sha256Hex = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]
Version = Annotated[int, Field(ge=1, le=2**31 - 1)]


class Contract(BaseModel):
    """A strict, frozen pydantic model with canonical JSON in and out."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=False)

    def to_json(self) -> str:
        """Canonical JSON (sorted keys, compact): identical bytes for identical content."""
        return canonical_json(self)

    def to_bytes(self) -> bytes:
        return self.to_json().encode("utf-8")

    @classmethod
    def from_json(cls, data: str | bytes) -> Self:
        """Parse and validate; raises pydantic.ValidationError on anything malformed."""
        return cls.model_validate_json(data)
