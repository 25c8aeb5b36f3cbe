"""Load firmware profiles from TOML files: the bundled ones and, optionally, a user directory."""

from __future__ import annotations

import tomllib
from pathlib import Path

from pydantic import ValidationError

from firmware_profiles.schema import FirmwareProfile

BUNDLED_DIR = Path(__file__).resolve().parent


class ProfileError(ValueError):
    """A profile that does not exist, does not parse, or breaks the schema."""


def _describe(err: ValidationError) -> str:
    first = err.errors()[0]
    loc = ".".join(str(p) for p in first["loc"]) or "profile"
    msg = first["msg"]
    if first["type"] == "extra_forbidden":
        msg = "unknown field"
    elif msg.startswith("Value error, "):
        msg = msg.removeprefix("Value error, ")
        if ":" in msg.split(" ", 1)[0]:  # the validator already names the field
            return msg
    return f"{loc}: {msg}"


def load_profile_file(path: Path) -> FirmwareProfile:
    """Parse one TOML file; `ProfileError` names the file and the offending field."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as e:
        raise ProfileError(f"{path}: cannot read: {e}") from e
    except tomllib.TOMLDecodeError as e:
        raise ProfileError(f"{path}: not valid TOML: {e}") from e
    try:
        profile = FirmwareProfile.model_validate(data)
    except ValidationError as e:
        raise ProfileError(f"{path.name}: {_describe(e)}") from e
    if profile.name != path.stem:
        raise ProfileError(f"{path.name}: name: {profile.name!r} must match the file name {path.stem!r}")
    return profile


def load_profiles(extra_dir: Path | None = None) -> dict[str, FirmwareProfile]:
    """All profiles by name; files in `extra_dir` add to (or override) the bundled ones."""
    dirs = [BUNDLED_DIR] + ([extra_dir] if extra_dir else [])
    profiles: dict[str, FirmwareProfile] = {}
    for d in dirs:
        for path in sorted(d.glob("*.toml")):
            profile = load_profile_file(path)
            profiles[profile.name] = profile
    return profiles


def get_profile(name: str, extra_dir: Path | None = None) -> FirmwareProfile:
    """One profile by name; `ProfileError` lists the known names when it does not exist."""
    profiles = load_profiles(extra_dir)
    try:
        return profiles[name]
    except KeyError:
        raise ProfileError(f"unknown profile {name!r}; known: {', '.join(sorted(profiles))}") from None
