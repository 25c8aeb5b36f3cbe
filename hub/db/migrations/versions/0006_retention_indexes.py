"""retention: indexes to find raw telemetry windows and events past their retention without a scan"""

from __future__ import annotations

from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_telemetry_window_end", "telemetry", ["window_end"])
    op.create_index("ix_events_ts", "events", ["ts"])
    op.create_index("ix_telemetry_hourly_window_end", "telemetry_hourly", ["window_end"])


def downgrade() -> None:
    op.drop_index("ix_telemetry_hourly_window_end", table_name="telemetry_hourly")
    op.drop_index("ix_events_ts", table_name="events")
    op.drop_index("ix_telemetry_window_end", table_name="telemetry")
