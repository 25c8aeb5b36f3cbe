"""Ports for test servers: below the kernel's ephemeral range (see edgefleet.brokers.free_port)."""

from __future__ import annotations

from edgefleet.brokers import free_port as listen_port

__all__ = ["listen_port"]
