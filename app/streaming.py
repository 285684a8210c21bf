"""A subscriber's Server-Sent Events stream: stored history first, then live events."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import orjson

from app.hub import Hub
from app.storage import Storage

logger = logging.getLogger(__name__)

REPLAY_BATCH = 500
RETRY_MS = 2000
LINGER_PER_SUBSCRIBER_S = 0.0002
MAX_LINGER_S = 0.2


def linger_s(subscribers: int) -> float:
    """Return how long a woken subscriber waits so that more events go out in one write.

    Each write to a subscriber costs the event loop time that the job's own run then
    waits for. Growing the wait with the subscriber count caps the writes per second
    of one job near 1 / LINGER_PER_SUBSCRIBER_S, whatever the fan-out: 0.2 ms for one
    subscriber, 200 ms for a thousand.
    """
    return min(MAX_LINGER_S, subscribers * LINGER_PER_SUBSCRIBER_S)


def reconnect_frame(last_event_id: int, reason: str) -> bytes:
    """Build the final `reconnect` event; it has no id, so the client's last id stays valid."""
    data = orjson.dumps({"last_event_id": last_event_id, "reason": reason})
    return b"event: reconnect\ndata: %s\n\n" % data


async def job_events(storage: Storage, hub: Hub, job_id: str, cursor: int) -> AsyncIterator[bytes]:
    """Yield every event after `cursor` once, in order, and end after the job's `end` event.

    The subscription is taken before the replay, so nothing published meanwhile is missed.
    A subscriber that falls behind the in-memory window, or a server that shuts down,
    gets a `reconnect` event and the stream ends.
    """
    yield b"retry: %d\n\n" % RETRY_MS
    with hub.subscription(job_id) as channel:
        logger.debug("job=%s subscriber joined after event %d", job_id, cursor)

        # Replay what is stored, in pages, until the store has nothing newer.
        while True:
            stored = await storage.read_events(job_id, cursor, REPLAY_BATCH)
            if stored:
                yield b"".join(event.frame for event in stored)
                cursor = stored[-1].id
                if stored[-1].event == "end":
                    return
            if len(stored) < REPLAY_BATCH:
                break

        # A finished job stores nothing more, so a client that resumes after its `end`
        # event (a browser's EventSource reconnects by itself) gets a closed stream.
        record = await storage.get_job(job_id)
        if record is not None and record.terminal:
            remaining = await storage.read_events(job_id, cursor, REPLAY_BATCH)
            if remaining:
                yield b"".join(event.frame for event in remaining)
            return

        # Follow the channel; each wake-up sends everything published since the last one.
        while True:
            events = channel.since(cursor)
            if events is None:
                logger.info(
                    "job=%s subscriber fell behind at event %d; asked to reconnect", job_id, cursor
                )
                yield reconnect_frame(cursor, "fell behind the live window")
                return
            if events:
                yield b"".join(event.frame for event in events)
                cursor = events[-1].id
                if events[-1].event == "end":
                    return
                continue
            if channel.closed:
                yield reconnect_frame(cursor, "server shutting down")
                return
            await channel.wait()
            await asyncio.sleep(linger_s(channel.subscribers))
