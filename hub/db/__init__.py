"""Hub storage: SQLAlchemy 2 Core tables, engine set-up and alembic migrations."""
