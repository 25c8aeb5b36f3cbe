"""blobs: TUF metadata and artifacts as PostgreSQL large objects (storage_backend=postgresql)"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import OID

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "blobs",
        sa.Column("path", sa.Text(), nullable=False),
        sa.Column("oid", sa.BigInteger().with_variant(OID(), "postgresql"), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("path"),
    )


def downgrade() -> None:
    # Unlink the large objects first: they belong to the database and would outlive their rows.
    if op.get_bind().dialect.name == "postgresql":
        op.execute("SELECT lo_unlink(oid) FROM blobs")
    op.drop_table("blobs")
