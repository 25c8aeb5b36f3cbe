"""telemetry: hourly rollups per model version and profile; raw rows remember they were rolled up"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("telemetry") as batch:
        batch.add_column(sa.Column("rolled_up", sa.Boolean(), nullable=False, server_default=sa.false()))
    op.create_index("ix_telemetry_rolled_up", "telemetry", ["rolled_up", "id"])
    op.create_table(
        "telemetry_hourly",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("model", sa.String(length=64), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("profile", sa.String(length=64), nullable=False),
        sa.Column("hour", sa.DateTime(timezone=True), nullable=False),
        sa.Column("window_start", sa.DateTime(timezone=True), nullable=False),
        sa.Column("window_end", sa.DateTime(timezone=True), nullable=False),
        sa.Column("rows", sa.Integer(), nullable=False),
        sa.Column("skipped", sa.Integer(), nullable=False),
        sa.Column("summary", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("model", "version", "profile", "hour", name="uq_telemetry_hourly"),
    )
    op.create_index("ix_telemetry_hourly_version_hour", "telemetry_hourly", ["model", "version", "hour"])


def downgrade() -> None:
    op.drop_index("ix_telemetry_hourly_version_hour", table_name="telemetry_hourly")
    op.drop_table("telemetry_hourly")
    op.drop_index("ix_telemetry_rolled_up", table_name="telemetry")
    with op.batch_alter_table("telemetry") as batch:
        batch.drop_column("rolled_up")
