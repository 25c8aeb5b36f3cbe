"""The simulated device lives in edgefleet.simdevice (used by `edgefleet simulate` too)."""

from edgefleet.simdevice import SimDevice, now

__all__ = ["SimDevice", "now"]
