"""The hub's HTTP API (FastAPI): operator routes, device routes, the TUF repository."""
