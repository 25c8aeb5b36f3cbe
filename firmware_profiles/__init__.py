"""Firmware profiles: one TOML data file per device class, a schema and a loader."""

from firmware_profiles.loader import ProfileError, get_profile, load_profile_file, load_profiles
from firmware_profiles.schema import FirmwareProfile

__all__ = ["FirmwareProfile", "ProfileError", "get_profile", "load_profile_file", "load_profiles"]
