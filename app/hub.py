"""In-process fan-out of job events to subscribers.

Each job with subscribers or a local run has a Channel: a bounded, contiguous window of
its most recent stored events. Publishing appends to the window and resolves one shared
future, so it costs the same with one subscriber or a thousand. Each subscriber keeps
only a cursor and copies what it has not sent yet. Nothing here waits for a subscriber.

Only stored events are published, so the database is always a superset of a window and
a subscriber that is behind the window catches up from the store.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence

from app.jobs import StoredEvent
from app.storage import Storage

logger = logging.getLogger(__name__)

TAIL_BATCH = 1000


class Channel:
    """The event window of one job, and the waiters for its next change."""

    def __init__(self, job_id: str, window: int) -> None:
        self.job_id = job_id
        self.window = window
        self.first_id = 0  # id of _events[0]; 0 while the window is empty
        self.last_id = 0
        self.subscribers = 0
        self.publishers = 0
        self.closed = False
        self.ended = False
        self._events: list[StoredEvent] = []
        self._changed: asyncio.Future[None] | None = None
        self.tail_task: asyncio.Task[None] | None = None

    def publish(self, events: Sequence[StoredEvent]) -> None:
        """Append stored events; ids already present are skipped, and a gap restarts the window."""
        fresh = [event for event in events if event.id > self.last_id]
        if not fresh:
            return
        if self._events and fresh[0].id != self.last_id + 1:
            # Events between the window and this batch exist only in the store.
            self._events.clear()
        if not self._events:
            self.first_id = fresh[0].id
        self._events.extend(fresh)
        self.last_id = fresh[-1].id
        self.ended = self.ended or any(event.event == "end" for event in fresh)

        # Keep at least this whole batch, so a subscriber that was caught up before the
        # publish can read all of it even when one token flush exceeds the window.
        excess = len(self._events) - max(self.window, len(fresh))
        if excess > self.window // 4:
            del self._events[:excess]
            self.first_id = self._events[0].id
        self._wake()

    def since(self, cursor: int) -> list[StoredEvent] | None:
        """Return events after `cursor`, or None when the window no longer reaches back to it."""
        if not self._events or cursor >= self.last_id:
            return []
        if cursor + 1 < self.first_id:
            return None
        return self._events[cursor + 1 - self.first_id :]

    async def wait(self) -> None:
        """Wait until the next publish or close.

        Every waiter awaits one shared future through its own shield, so cancelling one
        subscriber (a client disconnect) leaves the others waiting.
        """
        if self.closed:
            return
        if self._changed is None or self._changed.done():
            self._changed = asyncio.get_running_loop().create_future()
        await asyncio.shield(self._changed)

    def close(self) -> None:
        self.closed = True
        self._wake()

    def _wake(self) -> None:
        if self._changed is not None and not self._changed.done():
            self._changed.set_result(None)
        self._changed = None


class Hub:
    """The channels of this process; a channel lives while it has a subscriber or a publisher."""

    def __init__(self, storage: Storage, window: int, poll_s: float) -> None:
        self.storage = storage
        self.window = window
        self.poll_s = poll_s
        self.closing = False
        self._channels: dict[str, Channel] = {}

    @property
    def channel_count(self) -> int:
        return len(self._channels)

    @property
    def subscriber_count(self) -> int:
        return sum(channel.subscribers for channel in self._channels.values())

    def publish(self, job_id: str, events: Sequence[StoredEvent]) -> None:
        channel = self._channels.get(job_id)
        if channel is not None and events:
            channel.publish(events)

    @contextlib.contextmanager
    def publishing(self, job_id: str):  # type: ignore[no-untyped-def]
        """Mark a local run as the source of a job's events while the block runs."""
        channel = self._acquire(job_id)
        channel.publishers += 1
        try:
            yield channel
        finally:
            channel.publishers -= 1
            self._release(channel)

    @contextlib.contextmanager
    def subscription(self, job_id: str):  # type: ignore[no-untyped-def]
        """Hold a subscriber's place on a job's channel; leaving the block frees it."""
        channel = self._acquire(job_id)
        channel.subscribers += 1
        if channel.tail_task is None and not channel.ended:
            channel.tail_task = asyncio.create_task(self._tail(channel), name=f"tail-{job_id}")
        try:
            yield channel
        finally:
            channel.subscribers -= 1
            self._release(channel)

    def close(self) -> None:
        """End every subscription at once; used when the server shuts down."""
        self.closing = True
        for channel in list(self._channels.values()):
            channel.close()

    def _acquire(self, job_id: str) -> Channel:
        channel = self._channels.get(job_id)
        if channel is None:
            channel = self._channels[job_id] = Channel(job_id, self.window)
            if self.closing:
                channel.close()
        return channel

    def _release(self, channel: Channel) -> None:
        if channel.subscribers or channel.publishers:
            return
        if channel.tail_task is not None:
            channel.tail_task.cancel()
            channel.tail_task = None
        self._channels.pop(channel.job_id, None)

    async def _tail(self, channel: Channel) -> None:
        """Follow a job that runs in no local task by reading new events from the store.

        NOTE: SQLite cannot notify another process, so this polls every `poll_s` seconds
        while a subscriber waits for a job that this process does not run. A database with
        notifications (PostgreSQL LISTEN/NOTIFY) would wake it instead.
        """
        try:
            record = await self.storage.get_job(channel.job_id)
            if record is None or record.terminal:
                return
            # Subscribers replay history from the store; the tail only follows what comes next.
            cursor = record.last_event_id
            while not channel.closed and not channel.ended:
                if channel.publishers == 0:
                    cursor = max(cursor, channel.last_id)
                    events = await self.storage.read_events(channel.job_id, cursor, TAIL_BATCH)
                    channel.publish(events)
                    if len(events) == TAIL_BATCH:
                        continue
                await asyncio.sleep(self.poll_s)
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception("job=%s event tail failed", channel.job_id)
