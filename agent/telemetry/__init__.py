"""On-device telemetry: cheap per-inference recording, windowed summaries, a store-and-forward outbox."""

from agent.telemetry.outbox import Outbox, OutboxRow
from agent.telemetry.recorder import WindowRecorder

__all__ = ["Outbox", "OutboxRow", "WindowRecorder"]
