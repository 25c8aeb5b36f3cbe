"""The telemetry uplink: close windows into the outbox, send pending rows in order, delete them on ack.

One thread owns the outbox (its SQLite connection is used from that thread only). The serving path
only touches in-memory recorders; closing windows, writing the outbox, publishing and deleting acked
rows all happen here, so a backlog of any size costs inference nothing and start-up reads two counters.

Sending: rows go out in id order, at most `max_inflight` unacknowledged at a time. After a reconnect,
or when the oldest unacked row waited longer than `ack_timeout_s`, sending restarts from the oldest
pending row (the hub stores each id once). `dropped_before` carries `Outbox.unreported_drops()` on the
first row sent after drops; it is marked reported only when that row is acknowledged.

Lifecycle events (agent.reporting.EventLog) have their own outbox file; this thread sends them the
same way (in seq order, `max_inflight` at a time, from the oldest again after a reconnect or an ack
timeout) and deletes them when the hub acknowledges their seqs.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent.settings import TelemetrySettings
from agent.telemetry.outbox import Outbox
from agent.telemetry.recorders import Recorders
from protocol.telemetry import TelemetryMessage, TelemetrySummary, encode_message

if TYPE_CHECKING:
    from agent.reporting import EventLog

log = logging.getLogger(__name__)
CHANNEL = "telemetry"
FRESH_KEPT = 8  # summaries kept in memory for their first send (see TelemetryUplink._fresh)


class TelemetryUplink:
    """Outbox owner and sender thread for one device."""

    def __init__(
        self,
        settings: TelemetrySettings,
        recorders: Recorders,
        *,
        outbox_path: Path,
        device_id: str,
        publish: Callable[[bytes], None],
        connected: Callable[[], bool],
        on_closed: Callable[[TelemetrySummary], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        events: EventLog | None = None,
        publish_event: Callable[[bytes], None] | None = None,
    ) -> None:
        self.settings = settings
        self.outbox_path = outbox_path
        self.recorders = recorders
        self.device_id = device_id
        self._publish = publish
        self._connected = connected
        self._on_closed = on_closed
        self._clock = clock
        self._acks: queue.SimpleQueue[list[int]] = queue.SimpleQueue()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._flush = threading.Event()
        self._restart = True  # send from the oldest pending row
        self._sent_upto = 0
        self._inflight: dict[int, float] = {}
        self._carried: dict[int, int] = {}
        # Summaries just stored, by row id: their first send skips parsing the row back (milliseconds of GIL
        # for a few hundred features). A row sent again, or after a restart, is read from the outbox.
        self._fresh: dict[int, TelemetrySummary] = {}
        self.sent = 0
        self.acked = 0
        self.corrupt = 0
        self.stats: dict[str, int] = {}
        self.events = events
        self._publish_event = publish_event
        self._event_acks: queue.SimpleQueue[list[int]] = queue.SimpleQueue()
        self._event_rows: dict[int, int] = {}  # seq -> row id, for rows sent and not yet acknowledged
        self._event_sent: dict[int, float] = {}  # seq -> when it was (last) sent
        self._event_upto = 0
        self._event_restart = True
        self.events_sent = 0
        self.events_acked = 0
        if events is not None:
            events.on_stored = self.wake
        self.ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="telemetry", daemon=True)
        # Wakes for binning only (every few predictions) count rows and skip the outbox work of a step.
        self._step_wanted = threading.Event()
        recorders.on_pending = self._wake.set

    # ---- called from other threads ----------------------------------------------------------------
    def start(self) -> None:
        """Open the outbox here, so an unusable one stops the start with its reason; the thread then owns it."""
        s = self.settings
        self._outbox = Outbox(self.outbox_path, max_bytes=s.outbox_max_bytes, max_age_s=s.outbox_max_age_s,
                              policy=s.policy, shared=True)  # fmt: skip
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._signal()
        self._thread.join(timeout)

    def ack(self, ids: Iterable[int]) -> None:
        """The hub stored these ids (MQTT thread): delete them from the outbox soon."""
        self._acks.put(list(ids))
        self._signal()

    def ack_events(self, seqs: Iterable[int]) -> None:
        """The hub stored these events (MQTT thread): delete them from the events outbox soon."""
        self._event_acks.put(list(seqs))
        self._signal()

    def reconnected(self) -> None:
        """A new MQTT connection: resend everything still unacknowledged, in order."""
        self._restart = True
        self._event_restart = True
        self._signal()

    def wake(self) -> None:
        """Look at the windows now (one is full)."""
        self._signal()

    def flush(self) -> None:
        """Close every open window and send now (the `flush_telemetry` command)."""
        self._flush.set()
        self._signal()

    def _signal(self) -> None:
        self._step_wanted.set()
        self._wake.set()

    # ---- the thread ----------------------------------------------------------------------------
    def _run(self) -> None:
        s = self.settings
        outbox = self._outbox
        self.stats = outbox.stats()
        self.ready.set()
        try:
            next_step = time.monotonic() + s.tick_s
            while not self._stop.is_set():
                self._wake.wait(max(0.0, next_step - time.monotonic()))
                self._wake.clear()
                try:
                    self.recorders.bin_pending()
                    if self._step_wanted.is_set() or time.monotonic() >= next_step or self._stop.is_set():
                        self._step_wanted.clear()
                        self._step(outbox, final=self._stop.is_set())
                        next_step = time.monotonic() + s.tick_s
                except Exception:  # a failing step must not end telemetry; it is logged with its traceback
                    log.exception("telemetry step failed")
        finally:
            outbox.close()

    def _step(self, outbox: Outbox, final: bool = False) -> None:
        self._apply_acks(outbox)
        flush = self._flush.is_set() or final
        self._flush.clear()
        summaries = self.recorders.close(all_windows=flush)
        if summaries:
            payloads = [(CHANNEL, s.to_json()) for s in summaries]
            for row_id, summary in zip(outbox.put_many(payloads), summaries, strict=True):
                if row_id is not None:
                    self._fresh[row_id] = summary
            while len(self._fresh) > FRESH_KEPT:  # offline for long: keep only the newest
                del self._fresh[next(iter(self._fresh))]
            for summary in summaries:
                if self._on_closed is not None:
                    self._on_closed(summary)
        self._apply_event_acks()
        if self._connected() and not final:
            self._send_events()
            self._send(outbox)
        self.stats = outbox.stats()

    def _apply_acks(self, outbox: Outbox) -> None:
        ids = _drain(self._acks)
        if not ids:
            return
        self.acked += outbox.ack(ids)
        reported = sum(self._carried.pop(i, 0) for i in ids)
        if reported:
            outbox.mark_reported(reported)
        for i in ids:
            self._inflight.pop(i, None)

    def _send(self, outbox: Outbox) -> None:
        now = self._clock()
        oldest = min(self._inflight.values(), default=now)
        if self._restart or now - oldest > self.settings.ack_timeout_s:
            self._restart = False
            self._sent_upto = 0
            self._inflight.clear()
            self._carried.clear()
        room = self.settings.max_inflight - len(self._inflight)
        if room <= 0:
            return
        dropped = outbox.unreported_drops() - sum(self._carried.values())
        for row in outbox.pending(limit=room, after=self._sent_upto, channel=CHANNEL):
            if dropped > 0:  # carried by the first row sent after the loss
                self._carried[row.id] = dropped
            try:
                summary = self._fresh.pop(row.id, None) or TelemetrySummary.model_validate_json(row.payload)
            except ValueError as e:  # a row we cannot parse would block the queue forever: drop and count it
                log.error("outbox row %d is not a telemetry summary, deleted: %s", row.id, str(e).splitlines()[0])
                outbox.ack([row.id])
                self.corrupt += 1
                continue
            message = TelemetryMessage(
                id=row.id, device_id=self.device_id, summary=summary, dropped_before=max(dropped, 0)
            )
            dropped = 0
            self._publish(encode_message(message))
            self._inflight[row.id] = now
            self._sent_upto = row.id
            self.sent += 1

    def _apply_event_acks(self) -> None:
        if self.events is None:
            return
        seqs = _drain(self._event_acks)
        rows = [self._event_rows.pop(seq) for seq in seqs if seq in self._event_rows]
        for seq in seqs:
            self._event_sent.pop(seq, None)
        if rows:
            self.events_acked += self.events.delete(rows)

    def _send_events(self) -> None:
        if self.events is None or self._publish_event is None:
            return
        now = self._clock()
        oldest = min(self._event_sent.values(), default=now)
        if self._event_restart or now - oldest > self.settings.ack_timeout_s:
            self._event_restart = False
            self._event_upto = 0
            self._event_sent.clear()  # the seq -> row map stays: a late ack still deletes its row
        room = self.settings.max_inflight - len(self._event_sent)
        if room <= 0:
            return
        for row_id, seq, payload in self.events.pending(after=self._event_upto, limit=room):
            self._publish_event(payload.encode())
            self._event_rows[seq] = row_id
            self._event_sent[seq] = now
            self._event_upto = row_id
            self.events_sent += 1

    def view(self) -> dict[str, Any]:
        """Outbox counters for /healthz and metrics."""
        out: dict[str, Any] = {
            **self.stats,
            "inflight": len(self._inflight),
            "sent": self.sent,
            "acked": self.acked,
            "corrupt": self.corrupt,
        }
        if self.events is not None:
            out["events"] = {**self.events.stats(), "sent": self.events_sent, "acked": self.events_acked,
                             "inflight": len(self._event_sent)}
        return out


def _drain(acks: queue.SimpleQueue[list[int]]) -> list[int]:
    """Every id queued so far (acks arrive on the MQTT thread)."""
    ids: list[int] = []
    while True:
        try:
            ids += acks.get_nowait()
        except queue.Empty:
            return ids
