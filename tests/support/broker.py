"""Tests use the same private-Mosquitto launcher as the demo (the real binary, never a mock)."""

from edgefleet.brokers import MOSQUITTO, Broker, free_port, start_broker, wait_port

__all__ = ["MOSQUITTO", "Broker", "free_port", "start_broker", "wait_port"]
