"""Keyword-only store functions over SQLAlchemy Core connections, one module per resource."""
