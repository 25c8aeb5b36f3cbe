"""telemetry keys a pipeline's end-to-end windows as `pipeline:<name>`: room for it beside a 64-character name"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

WIDENED = ("telemetry", "telemetry_hourly", "drift_alerts")


def upgrade() -> None:
    for table in WIDENED:
        with op.batch_alter_table(table) as batch:
            batch.alter_column("model", type_=sa.String(length=80), existing_type=sa.String(length=64),
                               existing_nullable=False)  # fmt: skip


def downgrade() -> None:
    for table in WIDENED:
        with op.batch_alter_table(table) as batch:
            batch.alter_column("model", type_=sa.String(length=64), existing_type=sa.String(length=80),
                               existing_nullable=False)  # fmt: skip
