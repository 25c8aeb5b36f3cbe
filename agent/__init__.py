"""EdgeFleet agent: the device daemon (reconcile, verify, activate A/B, self-test, serve, roll back)."""

AGENT_VERSION = "0.1.0"
