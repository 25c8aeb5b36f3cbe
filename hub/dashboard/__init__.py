"""The operator dashboard: server-rendered pages over the hub's own JSON API (see docs/dashboard.md)."""
